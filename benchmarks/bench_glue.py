"""GLUE grid: a run-per-cell baseline vs `zoo glue --grid` on the 20-cell grid of bert-tiny, per task.

Baseline (Hugging Face course, chapter 3, one process per cell as a shell loop over a script would
run it): `Dataset.map` tokenization of the task in every cell, `DataCollatorWithPadding`,
`AutoModelForSequenceClassification`, the plain `Trainer` evaluating dev after every epoch with its
default evaluation batch size, accuracy in `compute_metrics`.
zoo: one `zoo glue MODEL --grid --tasks rte` invocation (tokenized once per task and cached,
length-grouped batches, dev sorted by length in large batches), with its default one worker and with
`--workers 2`.

Both sides fine-tune the same checkpoint on the same examples with the same cells (batch size x
learning rate), epochs, warm-up, weight decay and max length; the table gives the end-to-end wall time
of the whole grid and the best dev accuracy each found. The checkpoint is a bert-tiny built from its
config and saved once (pass --model for a pretrained one): speed does not depend on the weights.

zoo's sides: `--workers` values; `--full-vocabulary` and `--standard-last-layer` each add the one with the
most workers with one exact lever off, `train.prune_vocabulary=false` (zoo.glue.vocabulary) and
`train.first_token_last_layer=false` (zoo.model.first_token), so each lever is measured on its own.

    python benchmarks/bench_glue.py            # RTE: 20 cells (bs {8,..,128} x lr {1e-4,3e-4,3e-5,5e-5}), 4 epochs
    python benchmarks/bench_glue.py --tasks cola,mrpc,stsb,rte,wnli   # the five small tasks, 100 cells
    python benchmarks/bench_glue.py --quick    # 4 cells, 1 epoch, 256 training examples
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TARGET = 3.0
BASELINE = "baseline (process per cell)"


@dataclass(frozen=True)
class Grid:
    model: str
    tasks: list[str] = field(default_factory=lambda: ["rte"])
    batch_sizes: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    lrs: list[float] = field(default_factory=lambda: [1e-4, 3e-4, 3e-5, 5e-5])
    epochs: float = 4.0
    max_train_examples: int | None = None
    max_eval_examples: int | None = None
    max_length: int = 128
    warmup: float = 0.1
    weight_decay: float = 0.01
    seed: int = 42

    def zoo_overrides(self) -> list[str]:
        sets = [f"grid.batch_sizes={json.dumps(self.batch_sizes)}", f"grid.lrs={json.dumps(self.lrs)}",
                f"grid.seeds=[{self.seed}]", f"train.epochs={self.epochs}", f"train.warmup={self.warmup}",
                f"train.weight_decay={self.weight_decay}", f"task.max_length={self.max_length}"]
        if self.max_train_examples:
            sets.append(f"task.max_train_examples={self.max_train_examples}")
        if self.max_eval_examples:
            sets.append(f"task.max_eval_examples={self.max_eval_examples}")
        return sets


# --------------------------------------------------------------------------- baseline: one cell


def baseline_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """The course's fine-tuning recipe for one (task, batch size, lr) cell."""
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    from zoo.glue.metrics import predictions_from_outputs, task_metrics, task_score
    from zoo.glue.tasks import get_task

    grid, task = Grid(**spec["grid"]), get_task(spec["task"])
    tokenizer, tokenized_train, tokenized_dev = common.course_glue_splits(
        task.key, grid.model, grid.max_length, grid.max_train_examples, grid.max_eval_examples)

    def compute_metrics(prediction: Any) -> dict[str, float]:  # evaluate.load("glue", task)'s metrics
        metrics = task_metrics(task, predictions_from_outputs(task, prediction.predictions),
                               np.asarray(prediction.label_ids))
        return {**metrics, "score": task_score(metrics)}

    model = AutoModelForSequenceClassification.from_pretrained(grid.model, num_labels=task.num_labels)
    with common.scratch_dirs(own_cache=False) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "cell"), eval_strategy="epoch", save_strategy="no", report_to=[],
            learning_rate=spec["lr"], per_device_train_batch_size=spec["batch_size"], num_train_epochs=grid.epochs,
            weight_decay=grid.weight_decay, warmup_steps=grid.warmup, seed=grid.seed,
            use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=tokenized_train, eval_dataset=tokenized_dev,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=compute_metrics)
        trainer.train()
        score = trainer.evaluate()["eval_score"]  # the last epoch's model, as zoo's cell reports
    return {"score": score}


ARMS = {"baseline-cell": baseline_cell}


# --------------------------------------------------------------------------- the two sides


def run_baseline(grid: Grid) -> dict[str, Any]:
    """Every cell in its own fresh process, one after the other; wall time of the whole loop."""
    start = time.perf_counter()
    best: dict[str, float] = {}
    cells = 0
    for task in grid.tasks:
        for batch_size in grid.batch_sizes:
            for lr in grid.lrs:
                spec = {"grid": asdict(grid), "task": task, "batch_size": batch_size, "lr": lr}
                score = common.run_arm("bench_glue.py", "baseline-cell", spec)["score"]
                best[task], cells = max(best.get(task, float("-inf")), score), cells + 1
    return {"wall_s": time.perf_counter() - start, "cells": cells, "best_dev_score": best}


def run_zoo(grid: Grid, workers: int, overrides: tuple[str, ...] = ()) -> dict[str, Any]:
    """One `zoo glue MODEL --grid --tasks ...` invocation in fresh results/cache directories; the cells'
    own times from their records (in `run_cell`, and of that in `trainer.train()`)."""
    with common.scratch_dirs() as tmp:
        command = [sys.executable, "-m", "zoo", "glue", grid.model, "--grid", "--tasks", ",".join(grid.tasks),
                   "--workers", str(workers), "--smoke", "--set", *grid.zoo_overrides(), *overrides]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, env=dict(os.environ),
                              preexec_fn=common.CHILD_PREEXEC)
        wall = time.perf_counter() - start
        records = [json.loads(p.read_text()) for p in (tmp / "results").glob("glue/*/*/*/run.json")]
    ok = [r for r in records if r.get("status") == "ok"]
    if proc.returncode != 0 or len(ok) != len(records) or not ok:
        raise RuntimeError(f"zoo glue failed: {proc.stderr.strip().splitlines()[-3:]}")
    best: dict[str, float] = {}
    for record in ok:
        best[record["task"]] = max(best.get(record["task"], float("-inf")), record["metrics"]["score"])
    return {"wall_s": wall, "cells": len(ok), "best_dev_score": best,
            "cell_s": round(sum(r["wall_time_s"] for r in ok), 1),
            "train_s": round(sum(r["train_time_s"] for r in ok), 1),
            "vocabulary_rows": {r["task"]: r.get("data", {}).get("vocabulary", {}).get("rows") for r in ok}}


def make_checkpoint(directory: Path) -> str:
    """A bert-tiny MLM checkpoint from the registry config (random weights) plus its tokenizer."""
    import torch
    from transformers import BertConfig, BertForMaskedLM

    from zoo.data.tokenization import load_tokenizer
    from zoo.model.registry import MODELS

    tokenizer = load_tokenizer(MODELS["bert-tiny"].tokenizer)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, **MODELS["bert-tiny"].config)
    target = directory / "bert-tiny"
    BertForMaskedLM(config).save_pretrained(target)
    tokenizer.save_pretrained(target)
    return str(target)


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="checkpoint directory (default: a bert-tiny built from its config)")
    parser.add_argument("--workers", default="1,2", help="zoo --workers values to measure (default 1,2)")
    parser.add_argument("--tasks", default="rte", help="comma-separated GLUE tasks (default rte)")
    parser.add_argument("--skip-baseline", action="store_true",
                        help="zoo's sides only, ratios against the slowest of them")
    parser.add_argument("--full-vocabulary", action="store_true",
                        help="also the most-workers zoo side with train.prune_vocabulary=false")
    parser.add_argument("--standard-last-layer", action="store_true",
                        help="also the most-workers zoo side with train.first_token_last_layer=false")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](json.loads(args.arm_spec)))
        return 0
    print("machine:", json.dumps(common.machine()))
    with common.scratch_dirs() as tmp:
        model = args.model or make_checkpoint(tmp)
        tasks = args.tasks.split(",")
        grid = (Grid(model, tasks, batch_sizes=[16, 32], lrs=[1e-4, 3e-4], epochs=1, max_train_examples=256,
                     max_eval_examples=128) if args.quick else Grid(model, tasks))
        workers = [int(w) for w in args.workers.split(",")]
        sides: list[tuple[str, Any]] = [] if args.skip_baseline else [
            (BASELINE, lambda: run_baseline(grid))]
        sides += [(f"zoo glue --grid --workers {w}", lambda w=w: run_zoo(grid, w)) for w in workers]
        levers_off = {"full vocabulary": (args.full_vocabulary, "train.prune_vocabulary=false"),
                      "standard last layer": (args.standard_last_layer, "train.first_token_last_layer=false")}
        sides += [(f"zoo glue --grid --workers {max(workers)}, {label}",
                   lambda override=override: run_zoo(grid, max(workers), (override,)))
                  for label, (wanted, override) in levers_off.items() if wanted]
        runners = dict(sides)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in runners}
        for repeat, name in common.interleaved(list(runners), args.repeats or 1):
            result = runners[name]()
            results[name].append(result)
            print(f"  {name} #{repeat + 1}: {result['wall_s']:.0f} s for {result['cells']} cells, best dev score "
                  + ", ".join(f"{t} {v:.4f}" for t, v in result["best_dev_score"].items())
                  + "".join(f"; {k} {result[k]}" for k in ("cell_s", "train_s", "vocabulary_rows") if k in result),
                  flush=True)
            common.save_json(args.json, {"machine": common.machine(), "grid": asdict(grid), "raw": results})
    wall = {name: common.median([r["wall_s"] for r in rs]) for name, rs in results.items()}
    # without the baseline, ratios are against the slowest zoo side (what one lever is worth)
    base = wall.get(BASELINE, max(wall.values()))
    rows = [{"side": name, "cells": rs[0]["cells"], "wall s": round(wall[name], 1),
             "speedup": round(base / wall[name], 2),
             "best dev score": ", ".join(f"{t} {v:.4f}" for t, v in rs[0]["best_dev_score"].items())}
            for name, rs in results.items()]
    cells = len(grid.tasks) * len(grid.batch_sizes) * len(grid.lrs)
    common.print_table(rows, f"{','.join(grid.tasks)} grid, {cells} cells, {grid.epochs:g} epoch(s), bert-tiny: "
                             "end-to-end wall time")
    common.save_json(args.json, {"machine": common.machine(), "grid": asdict(grid), "rows": rows, "raw": results})
    if BASELINE not in wall:
        return 0
    best = max(rows[1:], key=lambda r: r["speedup"])
    verdict = "meets" if best["speedup"] >= TARGET else "MISSES"
    print(f"fastest zoo side ({best['side']}): {common.fmt_ratio(best['speedup'])} the baseline "
          f"({verdict} the {TARGET:.0f}x target)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

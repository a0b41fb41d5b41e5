"""Levers: each candidate speed-up measured alone against zoo's default path, to keep only what wins.

Every arm runs `zoo pretrain`'s training (`zoo.train.lm.run_lm`, the code behind the command) on the same
packed IMDB blocks, seed, batch and schedule, with exactly one thing changed from the default:

    default          zoo as shipped: SDPA attention, fused AdamW, no torch.compile, no DataLoader workers on CPU
    eager-attention  the models' plain PyTorch attention instead of SDPA
    adamw-unfused    torch's AdamW without the fused kernel (the Trainer's `adamw_torch`)
    torch-compile    train.compile=true (torch.compile with inductor; the fused loss is one opaque custom op)
    loader-workers   train.dataloader_workers=2

tokens/s is over `trainer.train()` (the record's train_time_s, compilation included); "steady tok/s" leaves
out the first WARMUP_STEPS optimizer steps (where torch.compile compiles and recompiles for the second
batch shape) and is the figure a long run approaches. The eval loss is on the same fixed-mask blocks; a
lever "wins" when its median steady tokens/s beats the default's by more than the spread of the default's
repeats. Each arm is a fresh process; repeats alternate the order.

    python benchmarks/bench_levers.py                   # bert-tiny and gpt2-mini, 2 repeats
    python benchmarks/bench_levers.py --quick           # bert-tiny, short runs, 1 repeat
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_pretrain import Setting, prepare_cache, zoo_recipe  # noqa: E402

LEVERS = ("default", "eager-attention", "adamw-unfused", "torch-compile", "loader-workers")
WARMUP_STEPS = 5


def apply_lever(lever: str) -> None:
    """Switch one lever in this (fresh) arm process by wrapping the function of zoo that decides it."""
    import zoo.train.hf_trainer as wiring
    import zoo.train.lm as train

    if lever == "eager-attention":
        build = train.build_model

        def eager_model(recipe: Any, tokenizer: Any) -> Any:
            model = build(recipe, tokenizer)
            model.set_attn_implementation("eager")
            return model

        train.build_model = eager_model
    elif lever == "adamw-unfused":
        arguments = wiring.optimisation_arguments
        wiring.optimisation_arguments = lambda t, eval_batch_size: {**arguments(t, eval_batch_size),
                                                                    "optim": "adamw_torch"}
    elif lever not in ("default", "loader-workers", "torch-compile"):
        raise ValueError(f"unknown lever {lever!r}")


def lever_arm(spec: dict[str, Any]) -> dict[str, Any]:
    import torch

    from zoo.train.lm import run_lm

    setting, lever = Setting(**spec["setting"]), spec["lever"]
    apply_lever(lever)
    clock = common.StepClock()
    common.clock_zoo_steps(clock)
    recipe = zoo_recipe(setting)
    if lever == "loader-workers":
        recipe.train.dataloader_workers = 2
    recipe.train.compile = lever == "torch-compile"
    with common.scratch_dirs(own_cache=False):
        record = run_lm(recipe)
    step_tokens = setting.batch_size * setting.block_size
    return {"tokens_per_s": record.tokens_seen / record.train_time_s, "train_s": record.train_time_s,
            "steady_tokens_per_s": step_tokens / clock.seconds_per_step(WARMUP_STEPS),
            "first_steps_s": clock.first_steps_s(WARMUP_STEPS),
            "eval_loss": record.metrics.eval_loss, "torch_threads": torch.get_num_threads()}


ARMS = {"lever": lever_arm}


def lever_rows(model: str, levers: list[str], runs: dict[str, list[dict[str, Any]]],
               failed: dict[str, str]) -> list[dict[str, Any]]:
    """One table row per lever: medians, the ratio of steady tokens/s to the default's, the verdict."""
    def med(lever: str, key: str) -> float:
        return common.median([r[key] for r in runs[lever]])

    steady = [r["steady_tokens_per_s"] for r in runs["default"]]
    base = common.median(steady)
    noise = (max(steady) - min(steady)) / base
    rows = []
    for lever in levers:
        if lever in failed:
            rows.append({"model": model, "lever": lever, "verdict": f"failed: {failed[lever][:120]}"})
            continue
        ratio = med(lever, "steady_tokens_per_s") / base
        verdict = "-" if lever == "default" else ("wins" if ratio - 1 > noise else "no gain")
        rows.append({"model": model, "lever": lever, "tok/s": round(med(lever, "tokens_per_s")),
                     "steady tok/s": round(med(lever, "steady_tokens_per_s")), "vs default": round(ratio, 3),
                     f"first {WARMUP_STEPS} steps s": round(med(lever, "first_steps_s"), 1), "verdict": verdict,
                     "eval loss": round(med(lever, "eval_loss"), 4)})
    return rows


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--models", help="comma-separated: bert-tiny, bert-mini, gpt2-mini")
    parser.add_argument("--levers", default=",".join(LEVERS[1:]), help="levers to measure against the default")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](json.loads(args.arm_spec)))
        return 0
    settings = {"bert-tiny": Setting("bert-tiny", steps=60, documents=3000),
                "bert-mini": Setting("bert-mini", steps=20, lr=3e-4, documents=1500),
                "gpt2-mini": Setting("gpt2-mini", steps=20, batch_size=32, lr=6e-4, documents=600, eval_blocks=128)}
    models = args.models.split(",") if args.models else (["bert-tiny"] if args.quick else ["bert-tiny", "gpt2-mini"])
    levers = ["default", *args.levers.split(",")]
    repeats = args.repeats or (1 if args.quick else 2)
    print("machine:", json.dumps(common.machine()))
    rows, raw = [], []
    with common.scratch_dirs() as tmp:
        env = {"ZOO_CACHE_DIR": str(tmp / "cache")}
        for model in models:
            setting = settings[model]
            if args.quick:
                setting = replace(setting, steps=max(4, setting.steps // 4), eval_blocks=32)
            prepare_cache(setting)
            runs: dict[str, list[dict[str, Any]]] = {lever: [] for lever in levers}
            failed: dict[str, str] = {}
            for repeat, lever in common.interleaved(levers, repeats):
                if lever in failed:
                    continue
                try:
                    result = common.run_arm("bench_levers.py", "lever", {"setting": asdict(setting), "lever": lever},
                                            env=env)
                except RuntimeError as exc:  # a lever that does not run here is a finding, not a crash
                    lines = str(exc).split(" | ")  # run_arm's message: the arm's last lines of output
                    failed[lever] = next((line for line in lines if "Error" in line), lines[-1])[:300]
                    print(f"  {model} {lever}: FAILED {failed[lever]}", flush=True)
                    continue
                runs[lever].append(result)
                print(f"  {model} {lever} #{repeat + 1}: {result['tokens_per_s']:.0f} tokens/s "
                      f"(steady {result['steady_tokens_per_s']:.0f}, first {WARMUP_STEPS} steps "
                      f"{result['first_steps_s']:.1f} s), eval loss {result['eval_loss']:.4f}", flush=True)
            rows += lever_rows(model, levers, runs, failed)
            raw.append({"setting": asdict(setting), "runs": runs})
    common.print_table(rows, "one lever at a time against zoo's default pretraining path (tokens/s over train())")
    common.save_json(args.json, {"machine": common.machine(), "rows": rows, "raw": raw})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Quality per CPU-hour: the perplexity the notebook recipe and `zoo pretrain` reach in the same wall time.

Each side first times a few steps (calibration), then trains for as many steps as fit its share of
the budget, with the same linear schedule stretched over those steps, the same seed, data,
batch, block and peak learning rate. Both final models are scored on the same fixed-mask evaluation
blocks (see bench_pretrain.py for the two recipes, which this script reuses).

    python benchmarks/bench_quality.py                # bert-tiny, 15 minutes of training per side
    python benchmarks/bench_quality.py --quick        # bert-tiny, 60 s per side
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_pretrain import Setting, prepare_cache  # noqa: E402

ARMS = ("baseline", "zoo")


def calibrate(setting: Setting, steps: int, env: dict[str, str]) -> dict[str, float]:
    """Seconds per optimizer step of each side (median of interleaved short runs)."""
    probe = replace(setting, steps=steps, eval_blocks=8)
    per_step: dict[str, list[float]] = {arm: [] for arm in ARMS}
    for _, arm in common.interleaved(list(ARMS), 2):
        result = common.run_arm("bench_pretrain.py", arm, asdict(probe), env=env)
        per_step[arm].append(result["train_s"] / steps)
    return {arm: common.median(values) for arm, values in per_step.items()}


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, help="torch threads of both sides (default: torch's, all cores)")
    parser.add_argument("--model", default="bert-tiny", help="bert-tiny, bert-mini or gpt2-mini")
    parser.add_argument("--budget", type=float, help="training seconds per side (default 900; quick 60)")
    args = parser.parse_args()
    budget = args.budget or (60.0 if args.quick else 900.0)
    base = {"bert-tiny": Setting("bert-tiny", steps=1), "bert-mini": Setting("bert-mini", steps=1, lr=3e-4),
            "gpt2-mini": Setting("gpt2-mini", steps=1, batch_size=32, lr=6e-4)}[args.model]
    base = replace(base, documents=3000 if args.quick else 20000, eval_blocks=128 if args.quick else 512)
    print("machine:", json.dumps(common.machine()))
    with common.scratch_dirs() as tmp:
        env = {"ZOO_CACHE_DIR": str(tmp / "cache"), **common.thread_env(args.threads)}
        prepare_cache(base)
        seconds_per_step = calibrate(base, 3 if args.quick else 8, env)
        print("calibration, s/step:", {k: round(v, 3) for k, v in seconds_per_step.items()}, flush=True)
        results: dict[str, dict[str, Any]] = {}
        for arm in ARMS:
            steps = max(1, int(budget / seconds_per_step[arm]))
            setting = replace(base, steps=steps)
            results[arm] = {"steps": steps, **common.run_arm("bench_pretrain.py", arm, asdict(setting), env=env)}
            print(f"  {arm}: {steps} steps in {results[arm]['train_s']:.0f} s, "
                  f"eval loss {results[arm]['eval_loss']:.4f}", flush=True)
    rows = [{"side": arm, "steps": r["steps"], "tokens": r["tokens"], "train s": round(r["train_s"], 1),
             "eval loss": round(r["eval_loss"], 4), "perplexity": round(math.exp(r["eval_loss"]), 2)}
            for arm, r in results.items()]
    common.print_table(rows, f"{args.model}: perplexity after ~{budget:.0f} s of training per side")
    better = results["zoo"]["eval_loss"] < results["baseline"]["eval_loss"]
    print(f"zoo reaches perplexity {rows[1]['perplexity']} vs the baseline's {rows[0]['perplexity']} in the same "
          f"time budget ({'better' if better else 'NOT better'}); "
          f"{results['zoo']['tokens'] / max(results['baseline']['tokens'], 1):.2f}x the tokens")
    common.save_json(args.json, {"machine": common.machine(), "budget_s": budget, "seconds_per_step": seconds_per_step,
                                 "rows": rows, "raw": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

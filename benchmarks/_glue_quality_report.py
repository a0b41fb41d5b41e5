"""The tables and verdicts of `bench_glue_quality.py` (parity: see that script's docstring)."""

from __future__ import annotations

import json
import statistics
from typing import Any

import _common as common


def spread(values: list[float], scale: float = 1.0, digits: int = 3) -> str:
    """`mean ± std (min..max)` of the seeds' values."""
    values = [v * scale for v in values if v is not None]
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    f = f"{{:.{digits}f}}"
    text = f"{f.format(statistics.mean(values))} ± {f.format(std)}"
    return text + (f" ({f.format(min(values))}..{f.format(max(values))})" if len(values) > 1 else "")


def side_name(lever: str) -> str:
    return {"plain": "plain Trainer", "default": "zoo",
            "trainer-groups": "zoo, Trainer's grouping"}.get(lever, f"zoo + {lever}")


def zoo_side(runs: dict[str, list[dict[str, Any]]]) -> str:
    """The arm the others are set against: zoo's default, or in runs from before 2026-12-02 (when the
    default was the Trainer's grouping) that arm."""
    return "default" if runs.get("default") else "trainer-groups"


def task_report(task_key: str, runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Print the per-epoch table, the timing table and the verdicts of one task; returns the verdicts."""
    from zoo.glue.tasks import get_task

    task = get_task(task_key)
    sides = [side for side in runs if runs[side]]
    if not sides:
        return {}
    n_epochs = min(len(r["epochs"]) for side in sides for r in runs[side])
    rows = []
    for e in range(n_epochs):
        for side in sides:
            rs = runs[side]
            row = {"epoch": e + 1, "side": side_name(side), "seeds": len(rs),
                   "train loss": spread([r["epochs"][e]["train_loss"] for r in rs])}
            for metric in task.metrics:
                row[f"dev {metric} %"] = spread([r["epochs"][e]["dev"][metric] for r in rs], 100, 1)
            row["score %"] = spread([r["epochs"][e]["score"] for r in rs], 100, 1)
            rows.append(row)
    common.print_table(rows, f"{task.name}: per epoch, mean ± std (min..max) over seeds")
    def seconds(side: str, key: str, how: Any = statistics.mean) -> float:
        return round(how(r[key] for r in runs[side]), 1)

    zoo = zoo_side(runs)
    base = {how: seconds(zoo, "train_s", how) for how in (statistics.mean, min)} if runs.get(zoo) else {}
    timing = [{"side": side_name(side), "seeds": len(runs[side]), "train s mean": seconds(side, "train_s"),
               "train s min": seconds(side, "train_s", min), "of which dev eval s (mean)": seconds(side, "eval_s"),
               "process s mean": seconds(side, "process_s"),
               "train s vs zoo (mean, min)": f"{seconds(side, 'train_s') / base[statistics.mean]:.2f}x, "
                                             f"{seconds(side, 'train_s', min) / base[min]:.2f}x" if base else "-"}
              for side in sides]
    common.print_table(timing, f"{task.name}: wall time (train s: trainer.train(), per-epoch dev evaluations included; "
                               "min over seeds: the run least disturbed by other load)")
    verdicts = {}
    plain = runs.get("plain", [])
    for side in sides:
        if side == "plain" or not plain:
            continue
        verdicts[side] = compare(task.name, side, runs[side], plain, n_epochs)
    identity_check(task.name, runs)
    facts_check(task.name, runs)
    return verdicts


def trajectory(run: dict[str, Any]) -> list[Any]:
    return [[e["train_loss"], e["dev"]] for e in run["epochs"]]


def relative_gap(run: dict[str, Any], other: dict[str, Any]) -> float:
    """The largest |a - b| / |b| over two runs' per-epoch train losses and dev metrics."""
    pairs = [(a["train_loss"], b["train_loss"]) for a, b in zip(run["epochs"], other["epochs"], strict=True)]
    pairs += [(a["dev"][m], b["dev"][m]) for a, b in zip(run["epochs"], other["epochs"], strict=True) for m in a["dev"]]
    return max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)


def identity_check(task_name: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Which arms of the same seed have bit-identical per-epoch train losses and dev metrics."""
    for side, rs in runs.items():
        for r in rs:
            same = [side_name(other) for other, others in runs.items() if other != side
                    for o in others if o["seed"] == r["seed"] and trajectory(o) == trajectory(r)]
            if same and side not in ("plain", zoo_side(runs)):
                print(f"  {task_name} seed {r['seed']} {side_name(side)}: every epoch's train loss and dev metrics "
                      f"identical (bit for bit) to {', '.join(same)}")
            elif side == "full-vocabulary":
                for o in (o for o in runs.get(zoo_side(runs), []) if o["seed"] == r["seed"]):
                    print(f"  {task_name} seed {r['seed']} zoo + full-vocabulary vs zoo: largest relative difference "
                          f"of a train loss or dev metric over the epochs {relative_gap(r, o):.1e}")


def compare(task_name: str, side: str, arm: list[dict[str, Any]], plain: list[dict[str, Any]], n_epochs: int) -> dict:
    """Parity of one zoo side against the plain side (see the module docstring)."""
    inside, deltas, spreads, higher, pairs = [], [], [], 0, 0
    by_seed = {r["seed"]: r for r in plain}
    for e in range(n_epochs):
        plain_scores = [r["epochs"][e]["score"] for r in plain]
        arm_scores = [r["epochs"][e]["score"] for r in arm]
        mean = statistics.mean(arm_scores)
        inside.append(min(plain_scores) <= mean <= max(plain_scores))
        deltas.append(mean - statistics.mean(plain_scores))
        variances = [statistics.variance(v) for v in (plain_scores, arm_scores) if len(v) > 1]
        spreads.append(statistics.mean(variances) ** 0.5 if variances else 0.0)
        for r in arm:
            if r["seed"] in by_seed:
                pairs += 1
                higher += r["epochs"][e]["train_loss"] > by_seed[r["seed"]]["epochs"][e]["train_loss"]
    loss_delta = [statistics.mean(r["epochs"][e]["train_loss"] for r in arm)
                  - statistics.mean(r["epochs"][e]["train_loss"] for r in plain) for e in range(n_epochs)]
    score_ok = abs(deltas[-1]) <= spreads[-1] + 1e-12
    systematic = pairs > 0 and higher == pairs
    parity = score_ok and not systematic
    print(f"{task_name} {side_name(side)} vs plain: last-epoch Δ mean dev score {100 * deltas[-1]:+.1f} points, "
          f"{'within' if score_ok else 'OUTSIDE'} the pooled seed spread ±{100 * spreads[-1]:.1f} (per epoch: "
          f"{', '.join(f'{100 * d:+.1f}/±{100 * sp:.1f}' for d, sp in zip(deltas, spreads, strict=True))}; mean inside "
          f"the plain side's seed range at {sum(inside)}/{len(inside)} epochs); train loss higher in {higher}/{pairs} "
          f"(seed, epoch) pairs (Δ mean {', '.join(f'{d:+.3f}' for d in loss_delta)}"
          f"{', systematically higher' if systematic else ''}) -> {'PARITY' if parity else 'NO PARITY'}")
    return {"score_delta": deltas, "score_spread": spreads, "score_within_spread": score_ok,
            "score_inside_plain_range": inside, "loss_higher_pairs": [higher, pairs], "loss_delta": loss_delta,
            "loss_systematically_higher": systematic, "parity": parity}


FACTS = ("total_steps", "warmup_steps", "decay_groups", "head_checksum", "head_digest", "dropout", "train_examples",
         "dev_examples", "grad_accum", "max_grad_norm", "adam", "optim", "schedule")


def facts_check(task_name: str, runs: dict[str, list[dict[str, Any]]]) -> None:
    """Whether the candidate causes other than batch order and evaluation are identical on every arm of a seed."""
    seeds = sorted({r["seed"] for rs in runs.values() for r in rs})
    for key in FACTS:
        differing = [seed for seed in seeds
                     if len({json.dumps(r["facts"].get(key), sort_keys=True) for rs in runs.values() for r in rs
                             if r["seed"] == seed}) > 1]
        example = next(r["facts"].get(key) for rs in runs.values() for r in rs)
        shown = json.dumps(example)[:110]
        print(f"  {task_name} {key}: {'identical on every arm' if not differing else f'DIFFERS (seeds {differing})'}"
              f" [{shown}]")
    for key in ("loss_gets_num_items", "sampler", "eval_batch"):
        values = {side_name(side): rs[0]["facts"].get(key) for side, rs in runs.items() if rs}
        print(f"  {task_name} {key}: {values}")


def report(payload: dict[str, Any]) -> dict[str, Any]:
    verdicts = {}
    for task_key, runs in payload["runs"].items():
        verdicts[task_key] = task_report(task_key, runs)
    return verdicts

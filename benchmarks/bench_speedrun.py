"""Speedrun: held-out Wikipedia MLM loss against training time, the notebook stack vs zoo's bert-tiny recipe.

Baseline: the notebook stack of bench_pretrain.py (plain `BertForMaskedLM`, `DataCollatorForLanguageModeling`,
the plain Trainer) with the bert-tiny-wikipedia hyper-parameters committed when issue 17 was filed (batch
64 x 128, peak lr 5e-4, warm-up 0.06, linear decay, weight decay 0.01, dropout 0.1; pinned in
bench_pretrain.Setting), its step count fitted to `--minutes` of training (so its schedule completes: that
recipe's 20,000 steps would still be warming up after 20 minutes). zoo: `zoo.train.lm.run_lm` (the code
behind `zoo pretrain bert-tiny wikipedia`) on today's committed recipe (its levers: lr 2e-3, batch 32,
trapezoid, dropout off) plus any `--zoo-set` overrides, its steps fitted to `--zoo-minutes`. Each side's seconds per
step come from a short probe run of that side first.

Both are scored during training, every `--eval-every` seconds of training time (evaluation excluded from
the clock), on the same fixed-mask held-out blocks (the committed recipe's: 15% masking, 80/10/10, 128
tokens, whatever the levers change in zoo's training). zoo stops once it reaches the baseline's final loss;
its time to that loss (interpolated between evaluations) against the baseline's budget is the speedup.
Target (issue 17): 10x. Wall time is training only on both sides: data preparation, model start and
evaluations are not counted.

    python benchmarks/bench_speedrun.py --png curves.png                  # 20-minute baseline
    python benchmarks/bench_speedrun.py --zoo-set train.lr=1e-3 --zoo-minutes 3   # another lever, a longer schedule
    python benchmarks/bench_speedrun.py --quick                           # about 2 minutes, tiny data
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402
from bench_pretrain import Setting, notebook_trainer, zoo_recipe  # noqa: E402

TARGET = 10.0
PROBE_STEPS = 30  # steps of each probe run; the first PROBE_SKIP are start-up and not timed
PROBE_SKIP = 5  # the median step of the rest is the probe's figure: a few slow steps (a noisy VM) do not move it


@dataclass(frozen=True)
class Run:
    """One side's run: the shared setting (data, eval blocks, seed), its budget and zoo's levers."""

    setting: Setting
    budget_s: float
    eval_every_s: float
    steps: int = 0  # 0: a probe of PROBE_STEPS steps
    target_loss: float | None = None
    zoo_set: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the clock both sides train under


class TrainingClock:
    """Trainer callback: evaluates every `every_s` seconds of training time (its own time not counted) and
    stops training at `budget_s` or, with `target`, at the first evaluation at or below it."""

    def __init__(self, evaluate: Any, every_s: float, budget_s: float, target: float | None = None) -> None:
        self.evaluate, self.every_s, self.budget_s, self.target = evaluate, every_s, budget_s, target
        self.curve: list[dict[str, float]] = []
        self.step_ends: list[float] = []
        self.start = self.paused = 0.0
        self.next_eval = every_s

    def training_s(self) -> float:
        return time.monotonic() - self.start - self.paused

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.start = time.monotonic()

    def on_step_end(self, args: Any, state: Any, control: Any, model: Any = None, **kwargs: Any) -> None:
        now = self.training_s()
        self.step_ends.append(now)
        last = state.global_step >= state.max_steps or now >= self.budget_s
        if now < self.next_eval and not last:
            return
        began = time.monotonic()
        loss = self.evaluate(model)
        self.paused += time.monotonic() - began
        self.curve.append({"train_s": round(now, 3), "step": state.global_step, "eval_loss": loss})
        self.next_eval = now + self.every_s
        if last or (self.target is not None and loss <= self.target):
            control.should_training_stop = True

    def __getattr__(self, event: str) -> Any:  # every other Trainer event: nothing to do
        if event.startswith("on_"):
            return lambda *args, **kwargs: None
        raise AttributeError(event)


def time_to_loss(curve: list[dict[str, float]], target: float) -> float | None:
    """Training seconds at which the curve first reaches `target`, linear between evaluations (None: never)."""
    previous = {"train_s": 0.0, "eval_loss": float("inf")}
    for point in curve:
        if point["eval_loss"] <= target:
            if previous["eval_loss"] == float("inf"):
                return point["train_s"]
            share = (previous["eval_loss"] - target) / (previous["eval_loss"] - point["eval_loss"])
            return previous["train_s"] + share * (point["train_s"] - previous["train_s"])
        previous = point
    return None


def held_out(setting: Setting) -> Any:
    """A function scoring a model on the committed recipe's fixed-mask evaluation blocks."""
    from zoo.data.tokenization import load_tokenizer
    from zoo.train.evaluation import lm_metrics
    from zoo.train.lm import lm_data

    reference = zoo_recipe(setting)
    data = lm_data(reference, load_tokenizer(reference.tokenizer.name))

    def evaluate(model: Any) -> float:
        device = next(model.parameters()).device
        return lm_metrics(model, data.eval, data.collate, setting.eval_batch_size, "mlm", device=device)["loss"]

    return evaluate


def clocked(run: Run, clock: TrainingClock) -> dict[str, Any]:
    ends = clock.step_ends[PROBE_SKIP:]
    per_step = statistics.median(b - a for a, b in zip(ends, ends[1:])) if len(ends) > 1 else None
    return {"steps": len(clock.step_ends), "train_s": clock.training_s(), "s_per_step": per_step,
            "curve": clock.curve}


# --------------------------------------------------------------------------- the two arms


def baseline_arm(spec: dict[str, Any]) -> dict[str, Any]:
    run = run_from(spec)
    steps = run.steps or PROBE_STEPS
    with common.scratch_dirs(own_cache=False) as tmp:
        trainer, _, _ = notebook_trainer(replace(run.setting, steps=steps), tmp / "baseline")
        clock = TrainingClock(held_out(run.setting), run.eval_every_s, run.budget_s)
        trainer.add_callback(clock)
        trainer.train()
    return clocked(run, clock)


def zoo_arm(spec: dict[str, Any]) -> dict[str, Any]:
    import zoo.train.lm as lm
    from zoo.recipe.lm import compose, resolve

    run = run_from(spec)
    clock = TrainingClock(held_out(run.setting), run.eval_every_s, run.budget_s, run.target_loss)
    common.clock_zoo_steps(clock)
    shared = [o for o in run.setting.overrides() if o.split("=")[0] in ("data.max_documents", "train.seed")]
    recipe, _ = compose("pretrain", run.setting.model, "wikipedia",
                        [*shared, *run.zoo_set, f"train.max_steps={run.steps or PROBE_STEPS}", "train.eval_every=0",
                         "train.save_every=0", "eval.max_blocks=8"])
    recipe.smoke = True
    with common.scratch_dirs(own_cache=False):
        record = lm.run_lm(resolve(recipe))
    return {**clocked(run, clock), "tokens_per_s": record.tokens_seen / record.train_time_s,
            "recipe_train": asdict(recipe.train), "recipe_objective": asdict(recipe.objective)}


ARMS = {"baseline": baseline_arm, "zoo": zoo_arm}


def run_from(spec: dict[str, Any]) -> Run:
    return Run(**{**spec, "setting": Setting(**spec["setting"])})


# --------------------------------------------------------------------------- driver

UNBOUNDED_S = 1e9


def fitted_steps(per_step: float, budget_s: float) -> int:
    return max(PROBE_STEPS, round(budget_s / per_step))


def plot(path: str, runs: dict[str, dict[str, Any]], target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    for side, result in runs.items():
        curve = result["curve"]
        axes.plot([p["train_s"] / 60 for p in curve], [p["eval_loss"] for p in curve], marker=".", label=side)
    axes.axhline(target, linestyle="--", color="grey", linewidth=0.8, label=f"baseline's final loss {target:.3f}")
    axes.set(xlabel="training minutes (evaluation excluded)", ylabel="held-out MLM loss (fixed masks)",
             title="bert-tiny on Wikipedia: loss against training time")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, help="the baseline's training minutes (default 20)")
    parser.add_argument("--zoo-minutes", type=float, help="zoo's schedule length (default: minutes / 10)")
    parser.add_argument("--eval-every", type=float, help="training seconds between evaluations (default: 1/20 of "
                                                         "the baseline's budget)")
    parser.add_argument("--eval-blocks", type=int, help="held-out blocks scored (default 512)")
    parser.add_argument("--documents", type=int, help="the first N Wikipedia documents (default 0: all)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--zoo-set", nargs="*", default=[], metavar="KEY=VALUE", help="zoo's recipe levers")
    parser.add_argument("--png", help="write both curves to this PNG")
    args = parser.parse_args()
    if args.arm:
        common.emit(ARMS[args.arm](json.loads(args.arm_spec)))
        return 0
    minutes = args.minutes or (0.5 if args.quick else 20.0)
    budget = minutes * 60
    zoo_budget = (args.zoo_minutes or minutes / TARGET) * 60
    every = args.eval_every or budget / 20
    setting = Setting("bert-tiny", steps=0, corpus="wikipedia", seed=args.seed,
                      documents=args.documents if args.documents is not None else (300 if args.quick else 0),
                      eval_blocks=args.eval_blocks or (32 if args.quick else 512))
    print("machine:", json.dumps(common.machine()))
    payload: dict[str, Any] = {"machine": common.machine(), "command": " ".join(sys.argv[1:]),
                               "setting": asdict(setting), "budget_s": budget, "zoo_budget_s": zoo_budget,
                               "zoo_set": args.zoo_set}
    with common.scratch_dirs() as tmp:
        env = {"ZOO_CACHE_DIR": str(tmp / "cache")}
        from bench_pretrain import prepare_cache

        prepare_cache(setting)  # tokenized and packed once, outside every clock

        def side(name: str, run: Run) -> dict[str, Any]:
            return common.run_arm("bench_speedrun.py", name, {**asdict(run), "setting": asdict(setting)}, env=env)

        probe = Run(setting, UNBOUNDED_S, UNBOUNDED_S, zoo_set=args.zoo_set)
        per_step = {name: side(name, probe)["s_per_step"] for name in ARMS}
        print(f"probes: baseline {per_step['baseline']:.3f} s/step, zoo {per_step['zoo']:.3f} s/step", flush=True)
        base = side("baseline", Run(setting, budget * 1.1, every, fitted_steps(per_step["baseline"], budget)))
        target = base["curve"][-1]["eval_loss"]
        print(f"baseline: {base['steps']} steps in {base['train_s']:.0f} s, held-out loss {target:.4f}", flush=True)
        zoo = side("zoo", Run(setting, base["train_s"], min(every, zoo_budget / 10),
                              fitted_steps(per_step["zoo"], zoo_budget), target, args.zoo_set))
    reached = time_to_loss(zoo["curve"], target)
    speedup = base["train_s"] / reached if reached else None
    payload["runs"] = {"baseline": base, "zoo": zoo}
    payload.update(target_loss=target, zoo_time_to_target_s=reached, speedup=speedup)
    common.print_table([
        {"side": "baseline (notebook stack)", "steps": base["steps"], "s/step": round(base["s_per_step"], 3),
         "train s": round(base["train_s"], 1), "final held-out loss": round(target, 4), "time to that loss s": "-"},
        {"side": "zoo", "steps": zoo["steps"], "s/step": round(zoo["s_per_step"], 3),
         "train s": round(zoo["train_s"], 1), "final held-out loss": round(zoo["curve"][-1]["eval_loss"], 4),
         "time to that loss s": round(reached, 1) if reached else "not reached"}],
        "speedrun: held-out MLM loss against training time (evaluation excluded)")
    print(f"zoo reaches the baseline's {minutes:g}-minute loss in {reached:.1f} s: {speedup:.2f}x (target {TARGET:g}x)"
          if reached else f"zoo did not reach the baseline's loss {target:.4f} within its {zoo['steps']} steps")
    if args.png:
        plot(args.png, {"baseline (notebook stack)": base, f"zoo {' '.join(args.zoo_set)}".strip(): zoo}, target)
    common.save_json(args.json, payload)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""bench_recipe.py's own logic: every lever is a valid recipe, the ramp's time fit, the verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_recipe  # noqa: E402


@pytest.mark.parametrize("lever", sorted(bench_recipe.LEVERS))
def test_every_lever_changes_the_committed_recipe_as_it_says(lever: str) -> None:
    train = bench_recipe.lever_train(bench_recipe.LEVERS[lever])
    assert (train.batch_size, train.lr) == ({"batch-16": 16, "seq-256": 16, "batch-64": 64}.get(lever, 32),
                                            {"lr-1e-3": 1e-3, "lr-4e-3": 4e-3}.get(lever, 2e-3))
    assert train.dropout == (-1.0 if lever == "dropout-on" else 0.0)


def test_the_ramp_is_fitted_with_its_cheaper_early_steps() -> None:
    ramp = bench_recipe.LEVERS["batch-ramp"]
    assert bench_recipe.ramp_time_share([], 1000) == 1.0
    share = bench_recipe.ramp_time_share(ramp, 1000)
    assert 0.9 < share < 1.0  # the first 10% of steps at 8..32 of 32
    plain, ramped = bench_recipe.ramp_fitted_steps(0.1, 100.0, []), bench_recipe.ramp_fitted_steps(0.1, 100.0, ramp)
    assert plain == 1000 and ramped * 0.1 * bench_recipe.ramp_time_share(ramp, ramped) == pytest.approx(100, rel=0.01)


def test_a_lever_wins_only_beyond_the_noise_of_both_sides() -> None:
    runs = [{"lever": lever, "seed": seed, "sets": [], "steps": 10, "train_s": 60.0, "final_loss": loss}
            for lever, seed, loss in [("current", 42, 6.00), ("current", 43, 6.04), ("lr-2e-3", 42, 5.90),
                                      ("lr-2e-3", 43, 5.92), ("wd-0", 42, 6.01), ("cosine", 42, 6.30)]]
    rows = {row["lever"]: row for row in bench_recipe.verdicts(runs)}
    assert rows["lr-2e-3"]["verdict"] == "wins" and rows["lr-2e-3"]["vs current"] == pytest.approx(-0.11)
    assert rows["wd-0"]["verdict"] == "within noise" and rows["cosine"]["verdict"] == "loses"
    assert rows["current"]["held-out loss"] == pytest.approx(6.02) and "verdict" not in rows["current"]
    assert rows["wd-0"]["noise"] == bench_recipe.ONE_SEED_NOISE  # one seed: the measured repeat spread
    assert rows["lr-2e-3"]["noise"] == pytest.approx(0.02)  # two seeds a side: the wider half-range


def test_probes_are_scaled_by_how_much_slower_the_finished_arms_ran() -> None:
    assert bench_recipe.probe_drift([]) == 1.0
    runs = [{"sets": [], "steps": 100, "train_s": 70.0, "probe_s_per_step": 0.65},
            {"sets": [], "steps": 100, "train_s": 72.0, "probe_s_per_step": 0.70},
            {"sets": [], "steps": 100, "train_s": 90.0, "probe_s_per_step": 0.60}]
    assert bench_recipe.probe_drift(runs) == pytest.approx(0.70 / 0.65)  # the median arm's ratio
    ramp = {"sets": bench_recipe.LEVERS["batch-ramp"], "steps": 1000, "train_s": 95.0, "probe_s_per_step": 0.1}
    assert bench_recipe.full_step_s(ramp) == pytest.approx(0.095 / bench_recipe.ramp_time_share(ramp["sets"], 1000))


def test_report_prints_the_verdicts_of_a_sweep_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    runs = [{"lever": "current", "seed": 42, "sets": ["train.lr=2e-3"], "steps": 400, "train_s": 300.0,
             "final_loss": 7.07},
            {"lever": "dropout-off", "seed": 42, "sets": ["train.lr=2e-3", "train.dropout=0"], "steps": 500,
             "train_s": 301.0, "final_loss": 6.95}]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"budget_s": 300.0, "base_set": ["train.lr=2e-3"], "runs": runs}))
    assert bench_recipe.report(str(path)) == 0
    out = capsys.readouterr().out
    assert "base overrides: train.lr=2e-3" in out
    row = next(line for line in out.splitlines() if line.startswith("| dropout-off"))
    assert [cell.strip() for cell in row.split("|")][-2] == "wins"


def test_resume_refuses_a_sweep_measured_against_another_recipe(tmp_path: Path) -> None:
    import json

    payload = {"setting": {"model": "bert-tiny"}, "budget_s": 300.0, "base_set": [],
               "base_recipe": bench_recipe.base_recipe_hash([])}
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({**payload, "runs": [{"lever": "current", "seed": 42}]}))
    assert bench_recipe.load_earlier(str(path), True, payload) == [{"lever": "current", "seed": 42}]
    other = {**payload, "base_recipe": bench_recipe.base_recipe_hash(["train.lr=1e-3"])}
    assert other["base_recipe"] != payload["base_recipe"]
    with pytest.raises(SystemExit, match="committed recipe"):
        bench_recipe.load_earlier(str(path), True, other)

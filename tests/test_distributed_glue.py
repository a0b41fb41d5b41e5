"""`zoo glue` in a multi-process launch (DeepSpeed, 2 processes on CPU): launch flags checked before anything
runs, the cell failure policy across ranks, and a 2-process grid that matches a 1-process one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import save_tiny_bert
from tests.test_distributed import RELATIVE_TOLERANCE, launch
from zoo.cli import main
from zoo.train.ranks import RankTerminated

GLUE_CELLS = ["--tasks", "rte", "--smoke", "--set", "task.max_train_examples=48", "task.max_eval_examples=41",
              "train.epochs=3", "grid.batch_sizes=[8,16]", "grid.lrs=[3e-3]"]


def glue_records(results: Path) -> dict[int, dict[str, Any]]:
    """batch size -> record of every GLUE cell under `results`."""
    found = [json.loads(p.read_text()) for p in sorted((results / "glue").glob("*/rte/*/run.json"))]
    return {r["hparams"]["batch_size"]: r for r in found}


def test_glue_launch_flags_are_checked_before_anything_runs(tmp_path: Path, isolated: Path, mirror: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    model = str(save_tiny_bert(tmp_path / "tiny-bert"))
    capsys.readouterr()
    for flags, message in ((["--workers", "2", "--nproc", "2"], "not both"),
                           (["--nproc", "3"], "batch size(s) [8, 16] cannot be split evenly over 3 processes")):
        assert main(["glue", model, "--grid", *GLUE_CELLS, *flags]) == 2
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1
    assert not (isolated / "results").exists()


def test_glue_cell_failure_policy_in_a_launch(tmp_path: Path, isolated: Path, mirror: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """In a launch a non-finite loss (stopped on every rank at once) is recorded and the grid goes on; any
    other failure ends the launch: rank 1 leaves its reason, rank 0 records the cell with it and re-raises."""
    import zoo.glue.finetune as finetune
    import zoo.train.lifecycle as lifecycle
    from zoo.glue.cell import Cell
    from zoo.recipe.glue import cell_recipe, load_glue_recipe
    from zoo.train.hf_trainer import NonFiniteLoss

    model = str(save_tiny_bert(tmp_path / "tiny-bert"))
    cell = Cell(cell_recipe(load_glue_recipe(None, [f"model.name={model}"]), "rte", 8, 1e-4, 42), model)
    failure: list[BaseException] = []

    def failing(*args: Any) -> None:
        raise failure[0]

    monkeypatch.setattr(finetune, "train_and_evaluate", failing)
    for handler in ("stop_on_sigterm", "ignore_sigterm"):  # pytest's own SIGTERM handling stays as it is
        monkeypatch.setattr(lifecycle, handler, lambda: None)
    monkeypatch.setenv("WORLD_SIZE", "2")

    monkeypatch.setenv("RANK", "1")
    failure[:] = [RuntimeError("out of memory on rank 1")]
    with pytest.raises(RuntimeError):
        finetune.run_cell(cell.to_spec(started="t0"))
    assert not (cell.directory / "run.json").exists()  # only rank 0 writes records

    monkeypatch.setenv("RANK", "0")
    failure[:] = [RankTerminated("stopped by the launcher")]
    with pytest.raises(RankTerminated):
        finetune.run_cell(cell.to_spec(started="t0"))
    record = json.loads((cell.directory / "run.json").read_text())
    assert record["status"] == "failed" and record["reason"] == "rank 1: RuntimeError: out of memory on rank 1"

    failure[:] = [NonFiniteLoss("training loss became nan at step 3")]
    record = finetune.run_cell(cell.to_spec(started="t1"))  # returned, not raised: the grid goes on
    assert record["status"] == "failed" and record["reason"] == "NonFiniteLoss: training loss became nan at step 3"
    assert json.loads((cell.directory / "run.json").read_text())["reason"] == record["reason"]


@pytest.mark.slow
def test_glue_grid_on_two_processes_matches_one_process(tmp_path: Path, isolated: Path, mirror: Path) -> None:
    """`zoo glue --grid --nproc 2`: each cell trains data-parallel on both processes with the cell's batch
    size split between them (GLUE batch sizes are global), so its epochs match a 1-process run."""
    model = str(save_tiny_bert(tmp_path / "tiny-bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    assert main(["glue", model, "--grid", *GLUE_CELLS]) == 0
    single = glue_records(isolated / "results")

    command = [sys.executable, "-m", "zoo", "glue", model, "--grid", *GLUE_CELLS, "--nproc", "2"]
    result = launch(command, {"ZOO_RESULTS_DIR": str(isolated / "multi")})
    assert result.returncode == 0, result.stderr[-3000:]
    multi = glue_records(isolated / "multi")
    assert sorted(multi) == sorted(single) == [8, 16]  # exactly one record per cell
    for batch_size, record in multi.items():
        reference = single[batch_size]
        assert record["status"] == "ok" and record["run_id"] == reference["run_id"]  # the same cell
        assert record["launch"] == {"world_size": 2, "deepspeed": True, "zero_stage": 0}
        assert "launch" not in reference
        for epoch, expected in zip(record["epochs"], reference["epochs"], strict=True):
            assert epoch["epoch"] == expected["epoch"]
            assert epoch["train_loss"] == pytest.approx(expected["train_loss"], rel=RELATIVE_TOLERANCE)
            assert epoch["dev"] == pytest.approx(expected["dev"], abs=1e-9)  # 41 examples: uneven shards, exact counts
        config = json.loads((isolated / "multi" / "glue" / "tiny-bert" / "rte" / record["run_id"]
                             / "deepspeed.json").read_text())
        assert config["train_batch_size"] == batch_size and config["train_micro_batch_size_per_gpu"] == batch_size // 2
    assert result.stdout.count("rte bs") == 2  # rank 0 alone reports

    again = launch(command, {"ZOO_RESULTS_DIR": str(isolated / "multi")})
    assert again.returncode == 0 and "ran 0 cell(s)" in again.stdout, again.stderr[-3000:]

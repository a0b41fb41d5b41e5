"""Kills and bad outputs, for real: processes killed with SIGKILL at the stated moment, and what the next run does.

Each test drives `python -m zoo` in a subprocess on a tiny model and real data (a corpus the test writes,
the mirror's RTE), then checks what is left on disk and what a second run makes of it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml

from tests.conftest import TINY_BERT, save_tiny_bert

REPO = Path(__file__).resolve().parent.parent


def zoo(*argv: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([sys.executable, "-m", "zoo", *argv], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def start_zoo(*argv: str) -> subprocess.Popen:
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.Popen([sys.executable, "-m", "zoo", *argv], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)


def wait_for(condition, timeout: float, what: str, interval: float = 0.02) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def pretrain_args(corpus: Path, *extra: str) -> list[str]:
    return ["pretrain", "bert-tiny", "text", "--smoke", "--set", f"data.paths=[{corpus}]",
            f"model.config={yaml.safe_dump(TINY_BERT, default_flow_style=True).strip()}",
            "data.block_size=32", "data.validation_fraction=0.1", "train.batch_size=4", "train.log_every=1",
            "eval.max_blocks=24", "eval.batch_size=8", *extra]


def run_dirs(root: Path) -> list[Path]:
    return sorted(p for p in (root / "checkpoints").glob("*") if p.is_dir())


def record_of(root: Path) -> dict:
    (path,) = (root / "results" / "pretrain").glob("*/run.json")
    return json.loads(path.read_text())


def test_a_kill_while_a_checkpoint_is_saved_never_breaks_resume(text_corpus: Path, isolated: Path) -> None:
    """SIGKILL the moment checkpoint-8 appears (mid-save); `--resume` then continues from the newest complete
    checkpoint, to the same end as an uninterrupted run."""
    args = pretrain_args(text_corpus, "train.max_steps=12", "train.save_every=4", "train.save_total_limit=5")
    process = start_zoo(*args)
    wait_for(lambda: any((d / "checkpoint-8").exists() for d in run_dirs(isolated)), 180, "checkpoint-8")
    process.send_signal(signal.SIGKILL)
    process.wait()
    (run,) = run_dirs(isolated)
    resumed = zoo(*args, "--resume", run.name)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = record_of(isolated)
    assert record["status"] == "ok" and record["steps"] == 12 and record["run_id"] == run.name
    assert record["resumed_from_step"] in (4, 8)


def test_a_partial_checkpoint_is_skipped_with_a_line_saying_so(text_corpus: Path, isolated: Path) -> None:
    """What a kill during a save leaves (no trainer_state.json, a 0-byte optimizer.pt) is never resumed from."""
    args = pretrain_args(text_corpus, "train.max_steps=6", "train.save_every=3", "train.save_total_limit=5")
    assert zoo(*args).returncode == 0
    (run,) = run_dirs(isolated)
    partial = run / "checkpoint-6"
    (partial / "trainer_state.json").unlink()
    (partial / "optimizer.pt").write_bytes(b"")
    shutil.rmtree(isolated / "results")
    resumed = zoo(*args, "--resume", run.name)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"{partial} is incomplete (no trainer_state.json" in resumed.stderr
    record = record_of(isolated)
    assert record["status"] == "ok" and record["resumed_from_step"] == 3 and record["steps"] == 6


def test_resume_of_a_finished_run_leaves_it_alone(text_corpus: Path, isolated: Path) -> None:
    args = pretrain_args(text_corpus, "train.max_steps=3", "train.save_every=3")
    assert zoo(*args).returncode == 0
    (path,) = (isolated / "results" / "pretrain").glob("*/run.json")
    before = path.read_bytes()
    again = zoo(*args, "--resume")
    assert again.returncode == 0 and "is complete" in again.stdout, again.stderr[-2000:]
    assert path.read_bytes() == before
    assert zoo(*args, "--resume", path.parent.name).returncode == 0
    assert path.read_bytes() == before


def test_a_killed_run_resumes_with_both_segments_timed(text_corpus: Path, isolated: Path) -> None:
    """A run killed outright keeps a `running` record (written at each checkpoint); the resumed run's record
    lists both segments, starts when the first did and counts both in its wall time and its training time."""
    args = pretrain_args(text_corpus, "train.max_steps=40", "train.save_every=4", "train.save_total_limit=3")
    process = start_zoo(*args)

    def saved_once() -> bool:
        paths = list((isolated / "results" / "pretrain").glob("*/run.json"))
        return bool(paths) and (json.loads(paths[0].read_text()).get("steps") or 0) >= 4

    wait_for(saved_once, 180, "a checkpoint's progress record", interval=0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = record_of(isolated)
    assert killed["status"] == "running" and len(killed["segments"]) == 1
    assert killed["segments"][0]["train_time_s"] > 0  # training time to its last checkpoint
    resumed = zoo(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = record_of(isolated)
    assert record["status"] == "ok" and record["steps"] == 40 and len(record["segments"]) == 2
    first, second = record["segments"]
    assert record["started_at"] == first["started_at"] == killed["started_at"] and second["from_step"] >= 4
    assert record["wall_time_s"] == pytest.approx(first["wall_time_s"] + second["wall_time_s"], abs=0.02)
    assert first["train_time_s"] == killed["segments"][0]["train_time_s"] and second["train_time_s"] > 0
    assert record["train_time_s"] == pytest.approx(first["train_time_s"] + second["train_time_s"], abs=0.02)


def test_killing_a_glue_grid_leaves_no_worker_behind(tmp_path: Path, isolated: Path, mirror: Path) -> None:
    model = save_tiny_bert(tmp_path / "tiny-bert")
    process = start_zoo("glue", str(model), "--grid", "--tasks", "rte", "--workers", "2", "--smoke", "--set",
                        "task.max_train_examples=2000", "train.epochs=3", "grid.batch_sizes=[8,16]",
                        "grid.lrs=[1e-4,3e-4]")
    parent = psutil.Process(process.pid)

    def workers_training() -> list[psutil.Process]:
        return [p for p in parent.children(recursive=True) if "spawn_main" in " ".join(p.cmdline())]

    def statuses() -> list[str]:
        return [json.loads(p.read_text())["status"] for p in (isolated / "results" / "glue").glob("*/rte/*/run.json")]

    wait_for(lambda: len(workers_training()) == 2, 120, "two workers", interval=0.2)
    # a cell's record says `running` from its start: the workers are inside their first cells
    wait_for(lambda: statuses() == ["running", "running"], 120, "two running cell records", interval=0.2)
    descendants = parent.children(recursive=True)
    assert len([p for p in descendants if "spawn_main" in " ".join(p.cmdline())]) == 2
    process.send_signal(signal.SIGKILL)
    process.wait()
    gone, alive = psutil.wait_procs(descendants, timeout=30)
    assert alive == [], [p.cmdline() for p in alive]
    ok = [p for p in (isolated / "results" / "glue").glob("*/rte/*/run.json")
          if json.loads(p.read_text())["status"] == "ok"]
    time.sleep(2.0)
    assert [p for p in (isolated / "results" / "glue").glob("*/rte/*/run.json")
            if json.loads(p.read_text())["status"] == "ok"] == ok  # nobody writes records any more


@pytest.mark.parametrize("command", [
    lambda corpus, model: pretrain_args(corpus, "train.max_steps=2"),
    lambda corpus, model: ["glue", str(model), "--task", "rte", "--smoke", "--set", "task.max_train_examples=16"],
    lambda corpus, model: ["leaderboard"],
], ids=["pretrain", "glue", "leaderboard"])
def test_an_unwritable_results_directory_is_one_line_before_any_work(
        command, text_corpus: Path, tmp_path: Path, isolated: Path, mirror: Path,  # noqa: ANN001
        monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the results folder should be")  # unwritable even for root
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(blocker / "results"))
    model = save_tiny_bert(tmp_path / "tiny-bert")
    started = time.monotonic()
    result = zoo(*command(text_corpus, model))
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("zoo: error:")]
    assert len(errors) == 1 and "cannot write" in errors[0] and "Traceback" not in result.stderr
    assert not (isolated / "checkpoints").exists() or not any((isolated / "checkpoints").rglob("checkpoint-*"))
    assert time.monotonic() - started < 60

"""`--slurm` through submitit, against a fake Slurm: sbatch/srun/sacct/squeue/scancel scripts on PATH.

The fake (tests/fake_slurm.py, behind wrapper scripts in each test's tmp dir) does what submitit's own tests
rely on: `sbatch FILE` answers
"Submitted batch job N", reads the file's `#SBATCH --array=0-K%P` and `--nodes`/`--ntasks-per-node` lines
and runs its tasks here in the background (P at a time), each array task with SLURM_ARRAY_JOB_ID /
SLURM_ARRAY_TASK_ID / SLURM_JOB_ID / SLURM_NTASKS set; the file's `srun` line starts SLURM_NTASKS processes
with SLURM_PROCID / SLURM_LOCALID (a failing one stops the others: --kill-on-bad-exit); `sacct` and
`squeue` report the tasks' states (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED) as the real ones print
them. FAKE_SLURM_HOLD=1 keeps submitted jobs pending (to test what a rerun submits, without running it).

Measured on the 2-core development machine while other work shared it (load average 4.7): the whole file
in 97 s: the GLUE grid 41 s (three jobs, each task a fresh Python process), the 2-process pretraining job
25 s, the resume 21 s, the rest a few seconds; at load 6.8 the same took 182 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import save_tiny_bert
from tests.test_distributed import assert_same_training, losses, run_single, tiny_recipe
from zoo.cli import main
from zoo.glue.slurm_engine import glue_options
from zoo.train import slurm
from zoo.train.slurm import parse_slurm_options

COMMANDS = ("sbatch", "srun", "sacct", "squeue", "scancel")
TERMINAL = ("COMPLETED", "FAILED", "CANCELLED")


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake Slurm on PATH; its state folder (jobs/<id>/{script.sh,meta.json,task-N}, calls.log)."""
    from submitit.slurm.slurm import SlurmJob

    state, bin_dir = tmp_path / "slurm", tmp_path / "bin"
    state.mkdir()
    bin_dir.mkdir()
    program = Path(__file__).with_name("fake_slurm.py")
    for name in COMMANDS:
        wrapper = bin_dir / name
        wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{program}" {name} "$@"\n')
        wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SLURM_DIR", str(state))
    monkeypatch.setenv("FAKE_SLURM_FIRST", str(random.randrange(10_000, 9_000_000, 1000)))  # fresh ids per test
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    monkeypatch.setattr(slurm, "POLL_S", 1.0)  # each poll runs the fake sacct (a Python start)
    monkeypatch.setattr(slurm, "RECORD_GRACE_S", 2.0)
    SlurmJob.watcher.clear()  # submitit caches the states of ended jobs, by id, for the whole process
    yield state
    for job_id, job in jobs(state).items():  # stop the runners (and their tasks) a failing test left running
        pid = state / "jobs" / job_id / "runner.pid"
        if pid.exists() and not all(s in TERMINAL for s in job["states"]):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(int(pid.read_text()), signal.SIGKILL)


def jobs(state: Path) -> dict[str, dict]:
    """Submitted job id -> its sbatch flags, task states and script."""
    found = {}
    for folder in sorted((state / "jobs").glob("*")):
        meta = json.loads((folder / "meta.json").read_text())
        meta["states"] = [(folder / f"task-{i}").read_text() for i in range(meta["size"])]
        found[folder.name] = meta
    return found


def wait_for_jobs(state: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while not all(s in TERMINAL for job in jobs(state).values() for s in job["states"]):
        assert time.monotonic() < deadline, jobs(state)
        time.sleep(0.2)


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


# --------------------------------------------------------------------------- options


def test_slurm_options_map_to_submitit_parameters_and_are_checked_strictly() -> None:
    options = parse_slurm_options("partition=gpu,time=90,gpus=1,cpus=8,mem=32,account=lab,parallel=4,chunk=3,"
                                  "qos=high,constraint=a100", "glue")
    assert options.chunk == 3
    assert options.params == {"partition": "gpu", "time": 90, "gpus_per_node": 1, "cpus_per_task": 8, "mem": "32GB",
                              "account": "lab", "array_parallelism": 4, "qos": "high", "constraint": "a100"}
    assert parse_slurm_options("time=5,mem=1.5,gpus=0", "glue").params == {"time": 5, "mem": "1536MB"}
    assert slurm.lm_parameters(parse_slurm_options("nodes=2,gpus=4,time=60", "pretrain")) == {
        "nodes": 2, "gpus_per_node": 4, "time": 60, "ntasks_per_node": 4, "srun_args": ["--kill-on-bad-exit=1"]}
    with pytest.raises(slurm.ZooError, match="--slurm gpus=2: a GLUE cell trains in one process on one GPU"):
        glue_options("time=30,gpus=2")
    for text, command, message in (
        ("time=30,bogus=1", "glue", "unknown key 'bogus' for zoo glue"),
        ("time=30,nodes=2", "glue", "unknown key 'nodes'"),
        ("time=30,chunk=2", "pretrain", "unknown key 'chunk' for zoo pretrain"),
        ("time=1h", "glue", "--slurm time=1h: expected the time limit in whole minutes"),
        ("time=30,gpus=-1", "glue", "--slurm gpus=-1: expected a whole number >= 0"),
        ("time=30,parallel=0", "glue", "--slurm parallel=0: expected a whole number >= 1"),
        ("time=30,mem=lots", "glue", "--slurm mem=lots: expected the memory per node in GB"),
        ("time=30,partition=", "glue", "expected a non-empty value"),
        ("time=30,time=40", "glue", "time given twice"),
        ("time=30,gpu", "glue", "expected KEY=VALUE items"),
        ("partition=gpu", "glue", "time=MINUTES is required"),
    ):
        with pytest.raises(slurm.ZooError, match=message.replace("(", r"\(")):
            parse_slurm_options(text, command)


def test_slurm_mistakes_are_one_line_errors_before_anything_runs(tmp_path: Path, isolated: Path, mirror: Path,
                                                                  fake_slurm: Path,
                                                                  capsys: pytest.CaptureFixture[str],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = str(save_tiny_bert(tmp_path / "tiny-bert"))
    glue = ["glue", model, "--grid", "--tasks", "rte", "--smoke"]
    capsys.readouterr()
    for extra, message in ((["--slurm", "time=30,bogus=1"], "unknown key 'bogus'"),
                           (["--slurm", "time=soon"], "--slurm time=soon: expected the time limit in whole minutes"),
                           (["--slurm", "time=30", "--workers", "2"], "drop --workers")):
        assert main([*glue, *extra]) == 2
        assert message in one_line_error(capsys)
    pretrain = ["pretrain", "bert-tiny", "imdb"]
    for extra, message in ((["--slurm", "time=30", "--nproc", "2"], "--slurm starts the processes itself"),
                           (["--slurm", "time=30,tasks=0"], "--slurm tasks=0: expected a whole number >= 1"),
                           (["--slurm", "time=30,gpus=2,tasks=3"], "a node runs one process per GPU"),
                           (["--slurm", "time=30,parallel=2"], "unknown key 'parallel' for zoo pretrain"),
                           (["--wait"], "--wait goes with --slurm")):
        assert main([*pretrain, *extra]) == 2
        assert message in one_line_error(capsys)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "submitit" else real(name, *a))
    assert main([*pretrain, "--slurm", "time=30"]) == 2
    assert "--slurm needs submitit, which is not installed: pip install -e '.[slurm]'" in one_line_error(capsys)
    assert not (fake_slurm / "calls.log").exists() and not (isolated / "results" / "pretrain").exists()


# --------------------------------------------------------------------------- zoo glue --grid --slurm

GLUE_CELLS = ["--grid", "--tasks", "rte", "--smoke", "--set", "task.max_train_examples=48",
              "task.max_eval_examples=41", "train.epochs=2", "grid.batch_sizes=[8,16]", "grid.lrs=[3e-3]"]


def glue_records(results: Path) -> dict[int, dict]:
    found = [json.loads(p.read_text()) for p in sorted((results / "glue" / "tiny-bert" / "rte").glob("*/run.json"))]
    return {r["hparams"]["batch_size"]: r for r in found}


def test_glue_grid_on_slurm_submits_follows_and_resubmits_only_what_is_missing(
    tmp_path: Path, isolated: Path, mirror: Path, fake_slurm: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    model = str(save_tiny_bert(tmp_path / "tiny-bert"))
    command = ["glue", model, *GLUE_CELLS, "--slurm", "partition=debug,time=30,gpus=1,parallel=2,cpus=1"]
    capsys.readouterr()

    # submitted, not followed: the job id and how to follow it; the jobs run on without this process
    assert main(command) == 0
    out = capsys.readouterr().out
    (first,) = jobs(fake_slurm)
    assert f"submitted 2 cell(s) as Slurm job {first}: 2 task(s) of up to 1 cell(s), at most 2 at a time" in out
    assert f"squeue -j {first}" in out and f"scancel {first}" in out and "rerun this command with --wait" in out
    flags = jobs(fake_slurm)[first]["flags"]
    assert flags["array"] == "0-1%2" and flags["partition"] == "debug" and flags["gpus-per-node"] == "1"
    assert flags["time"] == "30" and flags["cpus-per-task"] == "1" and flags["job-name"] == "zoo-glue-tiny-bert"
    slurm_dir = isolated / "checkpoints" / "glue" / "tiny-bert" / "slurm"
    assert flags["output"] == f"{slurm_dir}/%A_%a_0_log.out"
    ledger = json.loads((isolated / "results" / "glue" / "tiny-bert" / ".slurm-jobs.json").read_text())
    assert [job["job_id"] for job in ledger["jobs"]] == [first]
    assert [len(task["cells"]) for task in ledger["jobs"][0]["tasks"]] == [1, 1]

    # the same command with --wait while they run: nothing is submitted twice; it follows both cells to the end
    assert main([*command, "--wait"]) == 0
    out = capsys.readouterr().out
    assert "2 cell(s) already queued or running in Slurm job(s)" in out and "as Slurm job" not in out
    assert re.search(r"\[[12]/2\] rte bs 8 lr 3e-03 seed 42( on \S+)?: ok, dev score", out), out  # either order
    assert re.search(r"\[[12]/2\] rte bs 16 lr 3e-03 seed 42( on \S+)?: ok, dev score", out), out
    assert f"slurm {first}: cells 2 done, 0 running, 0 failed, 0 left" in out
    assert "ran 2 cell(s) (2 ok, 0 failed), skipped 0 finished" in out and "rte: dev score" in out
    assert len(jobs(fake_slurm)) == 1
    records = glue_records(isolated / "results")
    assert sorted(records) == [8, 16] and all(r["status"] == "ok" for r in records.values())
    assert "launch" not in records[8]  # each cell trained single-process
    wait_for_jobs(fake_slurm)
    log = (slurm_dir / f"{first}_0_0_log.out").read_text()
    assert "rte bs 8 lr 3e-03 seed 42: ok, dev score" in log

    # a rerun submits only the missing cell: one task, and follows it
    cell16 = isolated / "results" / "glue" / "tiny-bert" / "rte" / records[16]["run_id"]
    (cell16 / "run.json").unlink()
    assert main([*command, "--wait"]) == 0
    out = capsys.readouterr().out
    second = max(jobs(fake_slurm))
    assert f"submitted 1 cell(s) as Slurm job {second}: 1 task(s)" in out
    assert "ran 1 cell(s) (1 ok, 0 failed), skipped 1 finished" in out
    assert glue_records(isolated / "results")[16]["status"] == "ok"
    assert glue_records(isolated / "results")[8] == records[8]  # the finished cell was left alone

    # a failed cell is submitted again, but not while a live job holds it (jobs kept pending here)
    wait_for_jobs(fake_slurm)  # --wait ends with the records; the task may still be exiting
    monkeypatch.setenv("FAKE_SLURM_HOLD", "1")
    cell8 = cell16.parent / records[8]["run_id"]
    failed = {**records[8], "status": "failed", "reason": "RuntimeError: out of memory"}
    (cell8 / "run.json").write_text(json.dumps(failed))
    assert main(command) == 0
    out = capsys.readouterr().out
    third = max(jobs(fake_slurm))
    assert f"submitted 1 cell(s) as Slurm job {third}" in out
    ledger = json.loads((isolated / "results" / "glue" / "tiny-bert" / ".slurm-jobs.json").read_text())
    assert [job["job_id"] for job in ledger["jobs"]] == [third]  # the ended jobs are dropped
    assert ledger["jobs"][0]["tasks"][0]["cells"] == [f"rte/{records[8]['run_id']}"]
    assert main(command) == 0
    out = capsys.readouterr().out
    assert "1 cell(s) already queued or running in Slurm job(s)" in out and "as Slurm job" not in out
    assert len(jobs(fake_slurm)) == 3


def test_following_reports_a_task_that_ended_without_a_record_and_stops_on_ctrl_c(
    isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from zoo.glue import slurm_engine
    from zoo.glue.cell import Cell
    from zoo.glue.grid import GridReport
    from zoo.recipe.glue import cell_recipe, load_glue_recipe

    base = load_glue_recipe()
    base.model.name = "bert-tiny"
    cells = [Cell(cell_recipe(base, "rte", bs, 1e-4, 42), "bert-tiny") for bs in (8, 16)]
    by_key = {slurm_engine.cell_key(c): c for c in cells}
    tasks = [slurm_engine.ArrayTask("77_0", [slurm_engine.cell_key(cells[0])]),
             slurm_engine.ArrayTask("77_1", [slurm_engine.cell_key(cells[1])])]
    monkeypatch.setattr(slurm, "RECORD_GRACE_S", 0.0)
    monkeypatch.setattr(slurm_engine, "job_states", lambda ids: {"77_0": "CANCELLED", "77_1": "RUNNING"})
    seen: list = []

    def interrupt(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(slurm_engine.time, "sleep", interrupt)
    report = slurm_engine.follow(tasks, by_key, dict.fromkeys(by_key), seen.append, GridReport(), isolated)
    (outcome,) = seen
    assert outcome.status == "failed" and outcome.reason.startswith(
        "Slurm task 77_0 ended (CANCELLED) without recording it: no result; log ")
    assert report.interrupted and report.outcomes == [outcome]
    captured = capsys.readouterr()
    assert "slurm 77: cells 1 done, 1 running, 1 failed, 0 left" in captured.out
    assert "stopped following; the jobs keep running (squeue -j 77; cancel: scancel 77)" in captured.err


# --------------------------------------------------------------------------- zoo pretrain --slurm


def only_record(results: Path) -> dict:
    (path,) = results.glob("pretrain/*/run.json")
    return json.loads(path.read_text())


def test_pretraining_job_of_two_tasks_matches_one_process(text_corpus: Path, isolated: Path, fake_slurm: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """Two Slurm tasks (gloo on CPU) of global batch 2 x 4 train as one process of batch 8 does."""
    raw = tiny_recipe("bert-tiny", text_corpus, "bert-slurm", batch_size=4)
    recipe = isolated / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    options = "time=10,tasks=2,cpus=1,partition=cpu"

    assert main(["pretrain", "--recipe", str(recipe), "--slurm", options]) == 0
    out = capsys.readouterr().out
    (job,) = jobs(fake_slurm)
    run_id = out.split("submitted run ", 1)[1].split()[0]
    assert f"submitted run {run_id} as Slurm job {job} (2 process(es))" in out
    assert f"squeue -j {job}" in out and f"zoo pretrain --resume {run_id} --slurm {options} --wait" in out
    flags = jobs(fake_slurm)[job]["flags"]
    assert "array" not in flags and flags["nodes"] == "1" and flags["ntasks-per-node"] == "2"
    assert flags["cpus-per-task"] == "1" and flags["partition"] == "cpu" and flags["time"] == "10"
    script = (fake_slurm / "jobs" / job / "script.sh").read_text()
    assert "srun --unbuffered" in script and "--kill-on-bad-exit=1" in script

    # --resume RUN_ID while its job is queued or running: submits nothing, follows it to the end
    assert main(["pretrain", "--resume", run_id, "--slurm", options, "--wait"]) == 0
    out = capsys.readouterr().out
    assert f"run {run_id} is already queued or running as Slurm job {job}: not submitted again" in out
    assert f"run {run_id}: perplexity" in out and f"record: results/pretrain/{run_id}/run.json" in out
    assert len(jobs(fake_slurm)) == 1
    record = only_record(isolated / "results")
    assert record["run_id"] == run_id and record["status"] == "ok" and sorted(losses(record)) == list(range(1, 9))
    assert record["launch"] == {"world_size": 2, "deepspeed": True, "zero_stage": 0, "engine": "DeepSpeedEngine"}
    single = run_single({**raw, "name": "bert-single", "train": {**raw["train"], "batch_size": 8}})
    assert_same_training(record, single)
    assert record["tokens_seen"] == single["tokens_seen"]
    wait_for_jobs(fake_slurm)


def test_resume_on_slurm_continues_from_the_checkpoint(text_corpus: Path, isolated: Path, fake_slurm: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import shutil

    raw = tiny_recipe("gpt2", text_corpus, "gpt2-slurm", batch_size=8, save_every=4)
    recipe = isolated / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(raw))
    assert main(["pretrain", "--recipe", str(recipe)]) == 0
    full = only_record(isolated / "results")
    run_id = full["run_id"]
    # a run stopped after its step-4 checkpoint (its job hit the time limit, say): resumed as a Slurm job
    shutil.rmtree(isolated / "checkpoints" / run_id / "checkpoint-8")
    shutil.rmtree(isolated / "checkpoints" / run_id / "final")
    failed = {**full, "status": "failed", "reason": "RankTerminated: stopped by Slurm (SIGUSR2: time limit near)"}
    (isolated / "results" / "pretrain" / run_id / "run.json").write_text(json.dumps(failed))
    capsys.readouterr()
    assert main(["pretrain", "--resume", run_id, "--slurm", "time=5,cpus=1", "--wait"]) == 0
    out = capsys.readouterr().out
    (job,) = jobs(fake_slurm)
    assert f"submitted run {run_id} as Slurm job {job} (1 process(es))" in out
    resumed = only_record(isolated / "results")
    assert resumed["status"] == "ok" and resumed["resumed"] is True and resumed["resumed_from_step"] == 4
    assert losses(resumed) == pytest.approx(losses(full), rel=1e-5)
    assert resumed["metrics"]["perplexity"] == pytest.approx(full["metrics"]["perplexity"], rel=1e-5)
    assert len(resumed["segments"]) == 2
    wait_for_jobs(fake_slurm)

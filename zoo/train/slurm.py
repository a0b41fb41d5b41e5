"""Slurm through submitit: the `--slurm KEY=VALUE,...` options, job states, and `zoo pretrain --slurm`.

`--slurm` takes comma-separated KEY=VALUE items, checked strictly (an unknown key, a bad value or a key
given twice is a one-line error): partition, account, qos, constraint, exclude, name (the job name),
time (the time limit in whole minutes; required), gpus (per node; 0: none), cpus (per task), mem (GB per
node); `zoo glue` adds parallel (array tasks at a time) and chunk (cells per array task), `zoo pretrain` /
`zoo finetune` add nodes and tasks (processes per node; default one per GPU, else 1).

`zoo pretrain ... --slurm nodes=N,gpus=G,time=M` submits one job of N x G tasks. Each task exports the
torch.distributed variables from the Slurm environment (submitit's TorchDistributedEnvironment: MASTER_ADDR
is the job's first node, RANK = SLURM_PROCID, ...; no pdsh, no hostfile) and calls `zoo.train.lm.run_lm`,
which agrees on the run id through rank 0 and turns DeepSpeed on when there are several ranks: the same
records, checkpoints and resume rule as a local launch. The run id is chosen at submission, so it can be
printed (and resumed: `zoo pretrain --resume RUN_ID --slurm ...`). The job id is kept in
checkpoints/<run>/slurm/job.json with submitit's files and logs; a `--resume` of a run whose job is still
queued or running submits nothing and, with `--wait`, follows that job. Every task's GPUs stay visible to
it (LOCAL_RANK picks one), as with the deepspeed launcher. results/, checkpoints/ and the data cache must
be on a filesystem the compute nodes share.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import TrainingFailed, ZooError
from zoo.files import atomic_write

POLL_S = 10.0  # how often a --wait asks Slurm about its jobs
RECORD_GRACE_S = 60.0  # a record written on another node may take this long to show here (NFS attribute caches)
LIVE_STATES = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "STOPPED",
               "COMPLETING", "CONFIGURING", "SIGNALING", "STAGE_OUT", "READY"}
PASSED_ENV = ("ZOO_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")  # given to the tasks as the submitting shell has them
LM_COMMANDS = ("pretrain", "finetune")


@dataclass(frozen=True)
class Key:
    """One --slurm key: the SlurmExecutor parameter it sets (None: zoo's own) and the kind of its value."""

    param: str | None
    kind: str  # text, minutes, count (>= 1), gpus (>= 0), gb
    commands: tuple[str, ...] = ("glue", *LM_COMMANDS)


KEYS = {
    "partition": Key("partition", "text"), "account": Key("account", "text"), "qos": Key("qos", "text"),
    "constraint": Key("constraint", "text"), "exclude": Key("exclude", "text"), "name": Key("job_name", "text"),
    "time": Key("time", "minutes"), "gpus": Key("gpus_per_node", "gpus"), "cpus": Key("cpus_per_task", "count"),
    "mem": Key("mem", "gb"),
    "parallel": Key("array_parallelism", "count", ("glue",)), "chunk": Key(None, "count", ("glue",)),
    "nodes": Key("nodes", "count", LM_COMMANDS), "tasks": Key("ntasks_per_node", "count", LM_COMMANDS),
}


@dataclass
class SlurmOptions:
    """A checked --slurm: SlurmExecutor parameters, plus the cells per array task (zoo glue)."""

    params: dict[str, Any] = field(default_factory=dict)
    chunk: int = 1


def parse_value(key: str, kind: str, value: str) -> Any:
    item = f"--slurm {key}={value}"
    if kind == "text":
        if not value or any(c.isspace() for c in value):
            raise ZooError(f"{item}: expected a non-empty value without spaces")
        return value
    if kind == "gb":
        gb = float(value) if re.fullmatch(r"\d+(\.\d+)?", value) else 0.0
        if not gb > 0:
            raise ZooError(f"{item}: expected the memory per node in GB, a number above 0 (e.g. mem=32)")
        return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"
    minimum = 0 if kind == "gpus" else 1
    if not value.isdigit() or int(value) < minimum:
        what = "the time limit in whole minutes (e.g. time=90)" if kind == "minutes" else f"a whole number >= {minimum}"
        raise ZooError(f"{item}: expected {what}")
    return int(value)


def parse_slurm_options(text: str, command: str) -> SlurmOptions:
    """The checked `--slurm` of `zoo COMMAND`, or a one-line ZooError."""
    options, seen = SlurmOptions(), set()
    known = [k for k, spec in KEYS.items() if command in spec.commands]
    for item in text.split(","):
        key, sep, value = item.strip().partition("=")
        if not sep or not key:
            raise ZooError(f"--slurm: expected KEY=VALUE items separated by commas, got {item.strip()!r}")
        if key not in known:
            raise ZooError(f"--slurm: unknown key {key!r} for zoo {command} (known: {', '.join(known)})")
        if key in seen:
            raise ZooError(f"--slurm: {key} given twice")
        seen.add(key)
        spec = KEYS[key]
        parsed = parse_value(key, spec.kind, value.strip())
        if spec.param is None:
            options.chunk = parsed
        elif not (key == "gpus" and parsed == 0):
            options.params[spec.param] = parsed
    if "time" not in seen:
        raise ZooError("--slurm: time=MINUTES is required (the job's time limit; submitit would otherwise ask for "
                       "5 minutes)")
    return options


def lm_parameters(options: SlurmOptions) -> dict[str, Any]:
    """An LM job's parameters: one task per GPU (tasks= on CPU), a failing task ending the whole step."""
    params = dict(options.params)
    gpus, tasks = params.get("gpus_per_node", 0), params.get("ntasks_per_node")
    if gpus and tasks not in (None, gpus):
        raise ZooError(f"--slurm tasks={tasks} with gpus={gpus}: a node runs one process per GPU; give one of them")
    params["ntasks_per_node"] = tasks or gpus or 1
    params["srun_args"] = ["--kill-on-bad-exit=1"]  # a rank that fails stops the others instead of hanging them
    return params


def check_lm_flags(args: argparse.Namespace) -> None:
    """`zoo pretrain/finetune --slurm`: not with a launch, submitit installed, options valid; --wait needs it."""
    if args.slurm is None:
        if args.wait:
            raise ZooError("--wait goes with --slurm")
        return
    if any(getattr(args, name, None) is not None for name in ("nproc", "gpus", "hostfile", "nodes")):
        raise ZooError("--slurm starts the processes itself: drop --nproc/--gpus/--hostfile/--nodes (use --slurm "
                       "nodes=N,gpus=G)")
    if importlib.util.find_spec("submitit") is None:
        raise ZooError("--slurm needs submitit, which is not installed: pip install -e '.[slurm]'")
    lm_parameters(parse_slurm_options(args.slurm, args.kind))


# --------------------------------------------------------------------------- submitting, asking, in a task


def require_tools() -> None:
    """A one-line error off a Slurm cluster (submitit needs sbatch and srun; sacct or squeue tell job states)."""
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ZooError("--slurm: sbatch/srun not found on PATH: run this on a machine that submits Slurm jobs")


def make_executor(folder: Path, params: dict[str, Any]) -> Any:
    """A submitit SlurmExecutor writing its files under `folder`."""
    require_tools()
    import submitit

    executor = submitit.SlurmExecutor(folder=folder)
    executor.update_parameters(**params)
    return executor


def submit(executor: Any, function: Callable[..., Any], specs: list[Any]) -> list[Any]:
    """Submit `function(spec)` for every spec (one job, or one array); sbatch's refusal as a one-line error."""
    try:
        if len(specs) == 1:
            return [executor.submit(function, *specs)]
        return executor.map_array(function, specs)
    except Exception as exc:  # submitit raises sbatch's stderr as FailedJobError
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        errors = [line for line in lines if "error" in line.lower()] or lines or [type(exc).__name__]
        hint = " (a cluster caps array sizes at MaxArraySize: pack cells with chunk=K)" if "array" in errors[-1] else ""
        raise ZooError(f"sbatch refused the job: {errors[-1]}{hint}") from None


def task_environment() -> dict[str, str]:
    """What a task needs of this process's environment: zoo's locations (resolved here) and hub settings."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    env.update(ZOO_RESULTS_DIR=str(paths.results_dir()), ZOO_CHECKPOINT_DIR=str(paths.checkpoints_dir()),
               ZOO_CACHE_DIR=str(paths.cache_dir()))
    data = paths.data_dir()
    if data is not None:
        env["ZOO_DATA_DIR"] = str(data)
    return env


def _stop(signum: int, frame: Any) -> None:
    from zoo.train.ranks import RankTerminated

    raise RankTerminated(f"stopped by Slurm ({signal.Signals(signum).name}: time limit near, preempted or cancelled)")


def enter_task(env: dict[str, str]) -> None:
    """In a task: the submitting shell's locations, torch threads = the task's CPUs, and Slurm's warning signal
    (time limit near) and SIGTERM stopping the run with a record instead of being ignored."""
    import torch

    os.environ.update(env)
    cpus = os.environ.get("SLURM_CPUS_PER_TASK", "")
    if cpus.isdigit() and int(cpus) > 0:
        torch.set_num_threads(int(cpus))
    warning = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), signal.SIGUSR2)
    for signum in {warning, signal.SIGTERM}:
        signal.signal(signum, _stop)


def is_live(state: str) -> bool:
    return state in LIVE_STATES


def _expand(ident: str) -> list[str]:
    """'12_[1-3%2]' -> ['12_1', '12_2', '12_3'] (squeue's way of listing pending array tasks)."""
    from submitit.slurm.slurm import read_job_id

    found = []
    for part in read_job_id(ident):
        if len(part) == 3:
            found += [f"{part[0]}_{i}" for i in range(int(part[1]), int(part[2]) + 1)]
        else:
            found.append("_".join(part))
    return found


def queue_states(job_ids: list[str]) -> dict[str, str]:
    """States from squeue, for jobs sacct does not know (yet, or at all); GONE when not in the queue."""
    found: dict[str, str] = {}
    for array in sorted({job.split("_")[0] for job in job_ids}):
        try:
            out = subprocess.run(["squeue", "-h", "-o", "%i|%T", "-j", array], capture_output=True, text=True,
                                 timeout=60)
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.stdout.splitlines() if out.returncode == 0 else []:
            ident, _, state = line.strip().partition("|")
            found.update(dict.fromkeys(_expand(ident), state.strip().upper()))
    return {job: found.get(job, "GONE") for job in job_ids}


def job_states(job_ids: list[str]) -> dict[str, str]:
    """Slurm's state of each job ('123' or array task '123_4'): one sacct call through submitit's watcher,
    squeue for those sacct does not know."""
    from submitit.slurm.slurm import SlurmJob

    watcher = SlurmJob.watcher
    for job in job_ids:
        watcher.register_job(job)
    if job_ids:
        watcher.update()
    states = {job: (watcher.get_state(job, mode="cache").split() or ["UNKNOWN"])[0].upper() for job in job_ids}
    unknown = [job for job, state in states.items() if state == "UNKNOWN"]
    return {**states, **(queue_states(unknown) if unknown else {})}


def job_paths(folder: Path, job_id: str) -> Any:
    """submitit's files of job `job_id`'s first task (its logs, its result) under `folder`."""
    from submitit.core.utils import JobPaths

    return JobPaths(folder, job_id=job_id, task_id=0)


# --------------------------------------------------------------------------- zoo pretrain / finetune --slurm


def run_lm_task(spec: dict[str, Any]) -> Any:
    """One task of an LM job: torch.distributed from the Slurm environment, then `run_lm`; rank 0's record."""
    enter_task(spec["env"])
    from submitit.helpers import TorchDistributedEnvironment

    from zoo.train.lm import run_lm
    from zoo.train.ranks import leave_launch

    dist = TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)
    record = run_lm(spec["recipe"], run_id=spec["run_id"], resume=spec["resume"])
    leave_launch()
    return record if dist.rank == 0 else None


def live_lm_job(folder: Path) -> str | None:
    """The run's recorded job when Slurm still has it queued or running."""
    try:
        job_id = str(json.loads((folder / "job.json").read_text(encoding="utf-8"))["job_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return job_id if is_live(job_states([job_id])[job_id]) else None


def run_lm_on_slurm(recipe: Any, run_id: str | None, resume: bool, text: str, wait: bool) -> Any:
    """Submit the LM run as one Slurm job (or find its live job); with `wait`, follow it and return its record
    (a failed run raises TrainingFailed, as a local run does); else None after saying how to follow it."""
    import submitit

    from zoo.recipe.lm import recipe_yaml
    from zoo.record.schema import RECIPE_FILE
    from zoo.record.store import new_run_id

    params = lm_parameters(parse_slurm_options(text, recipe.kind))
    require_tools()
    run_id = run_id or new_run_id(recipe.name)
    folder = paths.checkpoints_dir() / run_id / "slurm"
    before = lm_record_stamp(recipe.kind, run_id)
    job_id = live_lm_job(folder)
    if job_id is not None:
        print(f"run {run_id} is already queued or running as Slurm job {job_id}: not submitted again")
        job = submitit.SlurmJob(folder=folder, job_id=job_id)
    else:
        executor = make_executor(folder, {"job_name": f"zoo-{run_id}"[:64], **params})
        spec = {"recipe": recipe, "run_id": run_id, "resume": resume, "env": task_environment()}
        (job,) = submit(executor, run_lm_task, [spec])
        atomic_write(folder / "job.json", json.dumps({"job_id": job.job_id, "run_id": run_id, "resume": resume}))
        if not resume:  # what run_lm writes when it starts: `--resume RUN_ID` finds the run while it is queued
            atomic_write(folder.parent / RECIPE_FILE, recipe_yaml(recipe))
        tasks = params.get("nodes", 1) * params["ntasks_per_node"]
        print(f"submitted run {run_id} as Slurm job {job.job_id} ({tasks} process(es)); log: {job.paths.stdout}")
    if not wait:
        print(f"follow: squeue -j {job.job_id} (or sacct -j {job.job_id}); cancel: scancel {job.job_id}")
        print(f"follow to the end: zoo {recipe.kind} --resume {run_id} --slurm {text} --wait (it submits nothing "
              "while the job is queued or running; once it has stopped, it resumes the run from its last checkpoint)")
        return None
    follow_lm(job, run_id, recipe.kind, fresh=job_id is None)
    return finished_lm_record(job, recipe.kind, run_id, before)


def follow_lm(job: Any, run_id: str, kind: str, fresh: bool) -> None:
    """Relay rank 0's log and the job's state changes until the job ends; Ctrl-C stops following only."""
    log, offset, last = Path(job.paths.stdout), 0, None
    if not fresh and log.is_file():
        offset = log.stat().st_size
    try:
        while True:
            done = job.done()
            offset = relay(log, offset)
            state = job_states([job.job_id])[job.job_id]
            if state != last:
                print(f"slurm job {job.job_id}: {state}", flush=True)
                last = state
            if done or not is_live(state):
                return
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        print(f"\nstopped following; job {job.job_id} keeps running (scancel {job.job_id} stops it); re-attach: "
              f"zoo {kind} --resume {run_id} --slurm ... --wait", file=sys.stderr)
        raise


def relay(log: Path, offset: int) -> int:
    """Print what `log` gained since `offset`; the new offset."""
    try:
        with log.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except OSError:
        return offset
    if data:
        sys.stdout.write(data.decode("utf-8", errors="replace"))
        sys.stdout.flush()
    return offset + len(data)


def read_lm_record(kind: str, run_id: str) -> Any:
    from zoo.record.schema import RECORD_FILE, LMRecord
    from zoo.record.store import read_if_readable, run_dir

    return read_if_readable(run_dir(kind, run_id) / RECORD_FILE, LMRecord)


def lm_record_stamp(kind: str, run_id: str) -> str | None:
    record = read_lm_record(kind, run_id)
    return record.finished_at if record is not None else None


def finished_lm_record(job: Any, kind: str, run_id: str, before: str | None) -> Any:
    """The record the ended job left (results/ is shared); TrainingFailed when it failed or left none."""
    deadline = time.monotonic() + RECORD_GRACE_S
    while True:
        record = read_lm_record(kind, run_id)
        fresh = record is not None and record.finished and record.finished_at != before
        if fresh or time.monotonic() >= deadline or Path(job.paths.result_pickle).exists():
            break
        time.sleep(1)
    record = record if fresh else None
    if record is not None and record.ok:
        return record
    if record is not None and record.status == "failed":
        raise TrainingFailed(f"run {run_id} failed: {record.reason} (Slurm job {job.job_id}, log {job.paths.stderr})")
    raise TrainingFailed(f"Slurm job {job.job_id} ended without finishing run {run_id}: {job_failure(job)}; log "
                         f"{job.paths.stderr}")


def job_failure(job: Any) -> str:
    """One line on why a job ended without a record: its Python error, or what Slurm says."""
    text = str(job.exception() or "it reported no error")
    if "with trace:" in text:  # the task's traceback between two dashed lines: its last line is the error
        lines = [line.strip() for line in text.split("with trace:", 1)[1].split("-" * 22)[1].splitlines()]
        return next((line for line in reversed(lines) if line), "unknown error")
    return " ".join(text.split("\n")[:2])

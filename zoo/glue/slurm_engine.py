"""`zoo glue --grid --slurm ...`: the grid's cells as a Slurm job array, submitted through submitit.

The driver (the `zoo glue` process) plans the cells as every engine does, then:

1. skips every cell with an ok record (all of them are run again with --force) and every cell that a live
   job of the ledger holds: `results/glue/<tag>/.slurm-jobs.json` lists each submitted job with the cells
   of each of its array tasks; a task Slurm still has queued or running (sacct, squeue for jobs sacct does
   not know) keeps its cells, so a rerun never submits a cell twice; jobs that have ended are dropped;
2. tokenizes what the cells need once, here (as a local grid does);
3. submits the rest as one job array, `chunk` cells per array task, `parallel` tasks at a time
   (`#SBATCH --array=0-<tasks-1>%<parallel>`); submitit's pickles, sbatch file and logs go to
   `checkpoints/glue/<tag>/slurm/` (`<job>_<task>_0_log.out` / `.err`);
4. without --wait, prints the job id and how to follow it, and exits: the jobs run on without it. With
   --wait (also on a rerun: it re-attaches to the live jobs holding the grid's cells, and submits only the
   cells that are missing or failed), it follows every cell to its record, with the same progress view
   as a local grid, and ends with the summary. Ctrl-C stops following; the jobs go on.

Each array task (`run_chunk`, on a compute node) runs its cells one after another with the local grid's
run-one-cell function, `zoo.glue.finetune.run_cell`, single-process on the GPUs Slurm gave it
(CUDA_VISIBLE_DEVICES as Slurm sets it; gpus=0 or 1 per cell: GLUE batch sizes are per cell, and one
process on several GPUs would multiply them). Records are written by the tasks, so results/, checkpoints/
(submitit's files) and the data cache must be on a filesystem the compute nodes share. File locks do not
hold across nodes: the ledger is what keeps two submissions apart.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue.cell import Cell, is_done, read_cell_record
from zoo.glue.grid import GridReport, Outcome
from zoo.record.store import now_iso
from zoo.train import slurm
from zoo.train.slurm import is_live, job_paths, job_states

LEDGER_FILE = ".slurm-jobs.json"


@dataclass
class ArrayTask:
    """One array task (or the one job, when a single task was submitted): its id and its cells, in order."""

    job_id: str  # '<job>_<index>' ('<job>' for a single task)
    cells: list[str]  # '<task>/<cell id>'


def cell_key(cell: Cell) -> str:
    return f"{cell.task.key}/{cell.run_id}"


def slurm_folder(cells: list[Cell]) -> Path:
    """checkpoints/glue/<tag>/slurm: submitit's pickles, sbatch files and the tasks' logs."""
    return cells[0].work_dir.parent.parent / "slurm"


def ledger_path(cells: list[Cell]) -> Path:
    return cells[0].directory.parent.parent / LEDGER_FILE


# --------------------------------------------------------------------------- the ledger of submitted jobs


@contextlib.contextmanager
def ledger_lock(folder: Path) -> Iterator[None]:
    """One submission at a time on this machine (read the ledger, submit, write it); the lock file is kept in
    submitit's folder, out of results/."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".ledger.lock", "a") as handle:
        with contextlib.suppress(OSError):  # a filesystem without flock: the ledger still does its job
            fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def read_ledger(path: Path) -> list[dict[str, Any]]:
    try:
        jobs = json.loads(path.read_text(encoding="utf-8"))["jobs"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [job for job in jobs if isinstance(job, dict) and isinstance(job.get("tasks"), list)]


def array_tasks(jobs: list[dict[str, Any]]) -> list[ArrayTask]:
    return [ArrayTask(str(task["id"]), [str(c) for c in task["cells"]]) for job in jobs for task in job["tasks"]]


def live_tasks(jobs: list[dict[str, Any]]) -> tuple[list[ArrayTask], set[str]]:
    """The ledger's tasks Slurm still has queued or running, and the jobs they belong to."""
    tasks = array_tasks(jobs)
    states = job_states([t.job_id for t in tasks])
    live = [t for t in tasks if is_live(states[t.job_id])]
    return live, {t.job_id.split("_")[0] for t in live}


# --------------------------------------------------------------------------- submitting


def chunked(cells: list[Cell], size: int) -> list[list[Cell]]:
    return [cells[i:i + size] for i in range(0, len(cells), size)]


def glue_options(text: str) -> slurm.SlurmOptions:
    """The checked --slurm of `zoo glue` (a one-line ZooError otherwise)."""
    options = slurm.parse_slurm_options(text, "glue")
    gpus = options.params.get("gpus_per_node", 0)
    if gpus > 1:
        raise ZooError(f"--slurm gpus={gpus}: a GLUE cell trains in one process on one GPU (gpus=1, or 0 for CPU); "
                       "to train each cell on several GPUs use --gpus N on a GPU machine")
    return options


def submit_cells(request: Any, options: slurm.SlurmOptions, cells: list[Cell], folder: Path) -> list[ArrayTask]:
    """One job array of `cells`, `options.chunk` per task; its tasks."""
    batches = chunked(cells, options.chunk)
    executor = slurm.make_executor(folder, {"job_name": f"zoo-glue-{cells[0].tag}"[:64], **options.params})
    env = slurm.task_environment()
    specs = [{"env": env, "cells": [c.to_spec() for c in batch], "predict_test": request.predict_test,
              "force": request.force} for batch in batches]
    jobs = slurm.submit(executor, run_chunk, specs)
    return [ArrayTask(job.job_id, [cell_key(c) for c in batch]) for job, batch in zip(jobs, batches)]


def run_on_slurm(request: Any, cells: list[Cell], on_outcome: Callable[[Outcome], None] | None) -> GridReport | None:
    """Submit the cells that are not done and not held by a live job; with --wait follow them (and those held)
    to their records and return the report, else say how to follow them and return None."""
    options = glue_options(request.engine_options.get("slurm") or "")
    slurm.require_tools()
    wait = bool(request.engine_options.get("wait"))
    report = GridReport()
    todo = [c for c in cells if request.force or not is_done(c)]
    report.skipped_done = len(cells) - len(todo)
    by_key = {cell_key(c): c for c in todo}
    stamps = {key: record_stamp(c) for key, c in by_key.items()}
    ledger, folder = ledger_path(cells), slurm_folder(cells)
    with ledger_lock(folder):
        jobs = read_ledger(ledger)
        live, live_jobs = live_tasks(jobs)
        held = {key for task in live for key in task.cells}
        fresh = [c for c in todo if cell_key(c) not in held]
        new: list[ArrayTask] = []
        if fresh:
            from zoo.glue.grid import warm_caches

            warm_caches(fresh, request.predict_test)
            new = submit_cells(request, options, fresh, folder)
        kept = [job for job in jobs if str(job.get("job_id")) in live_jobs]
        if new:
            kept.append({"job_id": new[0].job_id.split("_")[0], "submitted_at": now_iso(),
                         "tasks": [{"id": t.job_id, "cells": t.cells} for t in new]})
        if kept != jobs:
            atomic_write(ledger, json.dumps({"jobs": kept}, indent=1) + "\n")
    followed = [t for t in live if any(key in by_key for key in t.cells)]
    describe(sum(key in by_key for t in followed for key in t.cells), followed, new, options, folder)
    if not followed and not new:
        return report
    if not wait:
        print_how_to_follow(followed + new, request.predict_test)
        return None
    return follow(followed + new, by_key, stamps, on_outcome, report, folder)


def describe(held_cells: int, held: list[ArrayTask], new: list[ArrayTask], options: slurm.SlurmOptions,
             folder: Path) -> None:
    if held:
        say(f"{held_cells} cell(s) already queued or running in Slurm job(s) {job_list(held)}: not submitted again")
    if new:
        submitted, job = sum(len(t.cells) for t in new), new[0].job_id.split("_")[0]
        parallel = options.params.get("array_parallelism")
        at_once = f", at most {parallel} at a time" if parallel else ""
        say(f"submitted {submitted} cell(s) as Slurm job {job}: {len(new)} task(s) of up to {options.chunk} "
              f"cell(s){at_once}; sbatch file {folder / f'{job}_submission.sh'}, logs {folder}/{job}_*_log.*")


def say(line: str) -> None:
    """A line on stdout that leaves the grid's progress bar (stderr, on a terminal) intact."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stdout)


def job_list(tasks: list[ArrayTask]) -> str:
    return ", ".join(dict.fromkeys(t.job_id.split("_")[0] for t in tasks))


def print_how_to_follow(tasks: list[ArrayTask], predict_test: bool) -> None:
    jobs = job_list(tasks)
    say(f"follow: squeue -j {jobs.replace(' ', '')} (or sacct -j ...); cancel: scancel {jobs.replace(',', '')}")
    say("follow to the end: rerun this command with --wait (it submits nothing that is queued or running: only "
          "cells that are missing or failed)" + ("; it also assembles the submission files" if predict_test else ""))


# --------------------------------------------------------------------------- an array task, on a compute node


def run_chunk(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """Run the spec's cells one after another (each skipped if done, unless forced); their outcomes as dicts.

    Stopped by Slurm (time limit near, preemption, scancel), the cell in progress is recorded as failed and
    the cells after it are left for a rerun."""
    slurm.enter_task(spec["env"])
    from zoo.glue.finetune import run_cell
    from zoo.train.ranks import RankTerminated

    node, outcomes = socket.gethostname(), []
    for cell_spec in spec["cells"]:
        cell = Cell.from_spec(cell_spec)
        if not spec["force"] and is_done(cell):
            outcome = Outcome(cell.run_id, cell.label, "done", node=node)
        else:
            print(f"{cell.label} ({cell.run_id}): running on {node}", flush=True)
            try:
                record = run_cell(cell.to_spec(predict_test=spec["predict_test"], started=None))
            except (KeyboardInterrupt, RankTerminated) as exc:
                print(f"{cell.label}: {exc or 'interrupted'}; the cells after it are left for a rerun", flush=True)
                outcomes.append(dataclasses.asdict(Outcome(cell.run_id, cell.label, "failed", reason=str(exc),
                                                           node=node)))
                break
            outcome = Outcome(cell.run_id, cell.label, record["status"], record["metrics"]["score"],
                              record["reason"], record["wall_time_s"], node)
        print(f"{cell.label}: {outcome.status}" + (f", dev score {outcome.score:.4f}" if outcome.score is not None
                                                   else f" ({outcome.reason})" if outcome.reason else ""), flush=True)
        outcomes.append(dataclasses.asdict(outcome))
    return outcomes


# --------------------------------------------------------------------------- following (--wait)


def record_stamp(cell: Cell) -> str | None:
    """When the cell's present record finished (None: no finished record): a new record has another stamp."""
    record = read_cell_record(cell)
    return record.finished_at if record is not None and record.finished else None


def recorded_outcome(cell: Cell, stamp: str | None) -> Outcome | None:
    """The cell's outcome when it has a record newer than `stamp`."""
    record = read_cell_record(cell)
    if record is None or not record.finished or record.finished_at == stamp:
        return None
    return Outcome(cell.run_id, cell.label, record.status, record.metrics.score, record.reason, record.wall_time_s)


def returned_outcomes(folder: Path, task: ArrayTask) -> dict[str, Outcome] | str | None:
    """What an ended task returned: its outcomes by cell id, the last line of its error, or None (nothing yet)."""
    from submitit.core.utils import pickle_load

    path = job_paths(folder, task.job_id).result_pickle
    try:
        kind, value = pickle_load(path)
    except (OSError, EOFError, ValueError, TypeError):
        return None
    if kind != "success":
        lines = [line for line in str(value).splitlines() if line.strip()]
        return lines[-1].strip() if lines else "the task failed"
    return {o["run_id"]: Outcome(**o) for o in value}


def ended_outcome(task: ArrayTask, cell: Cell, state: str, folder: Path, ended: dict[str, float]) -> Outcome | None:
    """The outcome of a cell whose task has ended without a (visible) new record, or None to look again later."""
    returned = returned_outcomes(folder, task)
    if isinstance(returned, dict):
        if cell.run_id in returned:
            return returned[cell.run_id]
        reason = f"not run: Slurm task {task.job_id} stopped before it ({state})"
    else:
        since = ended.setdefault(task.job_id, time.monotonic())
        if returned is None and time.monotonic() - since < slurm.RECORD_GRACE_S:
            return None
        log = job_paths(folder, task.job_id).stderr
        reason = f"Slurm task {task.job_id} ended ({state}) without recording it: {returned or 'no result'}; log {log}"
    return Outcome(cell.run_id, cell.label, "failed", reason=reason)


def follow(tasks: list[ArrayTask], by_key: dict[str, Cell], stamps: dict[str, str | None],
           on_outcome: Callable[[Outcome], None] | None, report: GridReport, folder: Path) -> GridReport:
    """Report every followed cell as its record appears (or its task ends without one); a status line whenever
    the counts change."""
    remaining = {key: task for task in tasks for key in task.cells if key in by_key}
    ended: dict[str, float] = {}
    last = ""
    try:
        while remaining:
            states = job_states(sorted({t.job_id for t in remaining.values()}))
            for key, task in list(remaining.items()):
                cell, state = by_key[key], states[task.job_id]
                outcome = recorded_outcome(cell, stamps[key])
                if outcome is None and not is_live(state):
                    outcome = ended_outcome(task, cell, state, folder, ended)
                if outcome is not None:
                    del remaining[key]
                    report.outcomes.append(outcome)
                    if on_outcome is not None:
                        on_outcome(outcome)
            running = len({t.job_id for t in remaining.values() if states[t.job_id] == "RUNNING"})
            line = (f"slurm {job_list(tasks)}: cells {len(report.outcomes)} done, {running} running, "
                    f"{report.count('failed')} failed, {len(remaining) - running} left")
            if line != last:
                say(line)
                last = line
            if remaining:
                time.sleep(slurm.POLL_S)
    except KeyboardInterrupt:
        report.interrupted = True
        jobs = job_list(tasks)
        print(f"\nstopped following; the jobs keep running (squeue -j {jobs.replace(' ', '')}; cancel: scancel "
              f"{jobs.replace(',', '')}); rerun with --wait to follow them again", file=sys.stderr)
    return report

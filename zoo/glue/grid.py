"""The GLUE grid: plan the cells, run what is missing, in parallel processes if asked, summarise.

Resumable: a cell is done when `results/glue/<tag>/<task>/<cell-id>/run.json` says `status: ok`; the
cell id ends in the hash of the cell's resolved recipe, so re-running the same command skips every
finished cell and runs the missing and failed ones. Records are written atomically by the process
that ran the cell, after it finished, so Ctrl-C or a kill never loses or corrupts a finished cell.

Claiming: before running a cell a process takes an exclusive `flock` on `<cell dir>/.lock` and then
checks again that the cell is not done. The kernel drops the lock when its holder exits, however it
exits, so a crashed run leaves no stale lock to clean; two grids started on the same cells (or two
workers) never run a cell twice. Within one invocation each cell is queued once, so a cell that
fails is not retried until the next invocation.

Workers (`--workers N`) are processes started with `spawn`; each takes cells from a shared queue.
With GPUs, worker i sees only GPU i mod #GPUs; on CPU each worker gets cores // N torch threads.

Launched (`zoo glue ... --nproc N`, see zoo.launch), the ranks walk the same cells one after the
other and train each one together (data parallel through DeepSpeed); rank 0 takes the claims, makes
every decision and broadcasts it, and alone writes records and summaries.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing
import os
import queue
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue import data
from zoo.glue.finetune import Cell, run_cell, tokenizer_source
from zoo.glue.metrics import glue_average, partial_average
from zoo.glue.tasks import TASKS, get_task
from zoo.recipe.glue import GlueRecipe, format_lr, grid_cells
from zoo.record.store import RECORD_FILE, now_iso, read_record
from zoo.train.ranks import is_distributed_launch, is_main_rank, shared_from_main

LOCK_FILE = ".lock"


@dataclass
class Outcome:
    """What happened to one queued cell: ok / failed (it ran), done / busy (it was skipped)."""

    run_id: str
    label: str
    status: str
    score: float | None = None
    reason: str | None = None
    wall_time_s: float | None = None


@dataclass
class GridReport:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_done: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


# --------------------------------------------------------------------------- planning


def available_tasks() -> list[str]:
    """Tasks whose train and dev data can be read now (mirror, or hub when online)."""
    return [key for key, task in TASKS.items() if data.task_available(task)]


def plan(recipe: GlueRecipe, model: str, tasks: list[str]) -> list[Cell]:
    """Every cell of `recipe`'s grid over `tasks`, each checked to have its data."""
    missing = [key for key in tasks if not data.task_available(get_task(key))]
    if missing:
        task = get_task(missing[0])
        where = ", ".join(str(data.expected_local_path(s)) for s in task.splits if s.role in ("train", "dev"))
        raise ZooError(f"GLUE {task.name} data is not available offline; expected {where} "
                       "(or hub dataset nyu-mll/glue with network access)")
    return [Cell(cell, model) for cell in grid_cells(recipe, tasks)]


def read_cell_record(cell: Cell) -> dict[str, Any] | None:
    path = cell.directory / RECORD_FILE
    if not path.is_file():
        return None
    try:
        return read_record(path)
    except ZooError:
        return None


def is_done(cell: Cell) -> bool:
    record = read_cell_record(cell)
    return record is not None and record.get("status") == "ok"


# --------------------------------------------------------------------------- running one claimed cell


def same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def claimed(cell: Cell) -> Iterator[bool]:
    """True while this process holds the cell's lock; False when another process holds it."""
    cell.directory.mkdir(parents=True, exist_ok=True)
    lock = cell.directory / LOCK_FILE
    fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if not same_file(fd, lock):  # locked a file its previous holder had already unlinked
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {now_iso()}\n".encode())
        try:
            yield True
        finally:
            lock.unlink(missing_ok=True)  # before the lock is released: a later claimer makes a new file
    finally:
        os.close(fd)


def run_claimed(cell: Cell, predict_test: bool = False, force: bool = False) -> Outcome:
    """Run `cell` unless another process holds it or (without `force`) it is already done.

    In a multi-process launch every rank calls this for the same cell: rank 0 claims it and decides
    for all, every rank trains it, rank 0 records it."""
    main = is_main_rank()
    with claimed(cell) if main else contextlib.nullcontext(True) as mine:
        decision = "busy" if not mine else "done" if not force and is_done(cell) else "run"
        started = now_iso()
        if is_distributed_launch():
            decision, started = shared_from_main((decision, started))
        if decision != "run":
            return Outcome(cell.run_id, cell.label, decision)
        record = run_cell(cell, predict_test, started)
    return Outcome(cell.run_id, cell.label, record["status"], record["metrics"].get("score"), record.get("reason"),
                   record.get("wall_time_s"))


# --------------------------------------------------------------------------- the grid


def warm_caches(cells: list[Cell], predict_test: bool) -> dict[str, str]:
    """Tokenize every split the cells need once, before any worker starts; returns task -> error."""
    errors: dict[str, str] = {}
    seen: set[tuple[str, str, int]] = set()
    for cell in cells:
        recipe, task = cell.recipe, cell.task
        key = (task.key, recipe.model.tokenizer or recipe.model.name, recipe.task.max_length)
        if key in seen:
            continue
        seen.add(key)
        roles = ("train", "dev", "test") if predict_test else ("train", "dev")
        names = [s.name for s in task.splits if s.role in roles and data.split_available(s)]
        try:
            from zoo.data.tokenization import load_tokenizer

            data.prepare(task, names, load_tokenizer(tokenizer_source(recipe)), recipe.task.max_length)
        except ZooError as exc:  # each of the task's cells will fail with this reason and be recorded
            errors[task.key] = str(exc)
    return errors


def worker_threads(workers: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def gpu_ids() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        return [v for v in visible.split(",") if v.strip()]
    return [str(i) for i in range(torch.cuda.device_count())]


def _stop_on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt  # the cell in progress is recorded as failed ('interrupted')


def _worker(cells: Any, outcomes: Any, threads: int, parent: int, predict_test: bool, force: bool) -> None:
    """A worker process: take cells from the queue until the end marker (or the parent is gone)."""
    import torch

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    torch.set_num_threads(threads)
    try:
        while True:
            try:
                cell = cells.get(timeout=1.0)
            except queue.Empty:
                if os.getppid() != parent:
                    return
                continue
            if cell is None:
                return
            outcomes.put(run_claimed(cell, predict_test, force))
    except KeyboardInterrupt:
        return


def start_workers(workers: int, args: tuple[Any, ...]) -> list[Any]:
    """Spawned worker processes; with GPUs, worker i sees only GPU i mod #GPUs."""
    context = multiprocessing.get_context("spawn")
    gpus = gpu_ids()
    saved = os.environ.get("CUDA_VISIBLE_DEVICES")
    processes = []
    try:
        for index in range(workers):
            if gpus:  # read by the child at start-up, before it initialises CUDA
                os.environ["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
            process = context.Process(target=_worker, name=f"zoo-glue-{index}", args=args)
            process.start()
            processes.append(process)
    finally:
        if saved is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved
    return processes


def stop_workers(processes: list[Any], grace: float) -> None:
    """Wait up to `grace` seconds for each worker, then terminate it (its cell is recorded as interrupted)."""
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(timeout=max(0.0, deadline - time.monotonic()))
    for process in processes:
        if process.is_alive():
            process.terminate()
            process.join()


def run_parallel(todo: list[Cell], workers: int, predict_test: bool, force: bool,
                 on_outcome: Callable[[Outcome], None]) -> None:
    context = multiprocessing.get_context("spawn")
    cells, outcomes = context.Queue(), context.Queue()
    for cell in todo:
        cells.put(cell)
    for _ in range(workers):
        cells.put(None)
    processes = start_workers(workers, (cells, outcomes, worker_threads(workers), os.getpid(), predict_test, force))
    received = 0
    try:
        while received < len(todo):
            try:
                on_outcome(outcomes.get(timeout=0.5))
                received += 1
            except queue.Empty:
                if not any(p.is_alive() for p in processes) and outcomes.empty():
                    break  # a worker died without reporting its cell
    except KeyboardInterrupt:
        stop_workers(processes, grace=10.0)
        raise
    stop_workers(processes, grace=60.0)


def run_grid(cells: list[Cell], workers: int = 1, predict_test: bool = False, force: bool = False,
             on_outcome: Callable[[Outcome], None] | None = None) -> GridReport:
    """Run every cell that is not done (all with `force`); a failing cell is recorded and skipped."""
    report = GridReport()
    todo = [c for c in cells if force or not is_done(c)]
    if is_distributed_launch():  # the ranks must walk the same cells, whatever another grid writes meanwhile
        todo = shared_from_main(todo)
    report.skipped_done = len(cells) - len(todo)

    def collect(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    if not todo:
        return report
    launched = is_distributed_launch()
    if is_main_rank():
        warm_caches(todo, predict_test)
    if launched:
        shared_from_main(None)  # the other ranks read the caches rank 0 has just written
    workers = max(1, min(workers, len(todo)))
    try:
        if workers == 1 or launched:
            for cell in todo:
                collect(run_claimed(cell, predict_test, force))
        else:
            run_parallel(todo, workers, predict_test, force, collect)
    except KeyboardInterrupt:
        report.interrupted = True
    return report


# --------------------------------------------------------------------------- summary


def cell_row(cell: Cell) -> dict[str, Any]:
    """One line of a task's table: the cell's hyper-parameters, status and dev results."""
    t = cell.recipe.train
    record = read_cell_record(cell) or {}
    metrics = record.get("metrics") or {}
    return {"run_id": cell.run_id, "batch_size": t.batch_size, "lr": t.lr, "seed": t.seed,
            "status": record.get("status", "missing"), "score": metrics.get("score"), "dev": metrics.get("dev", {}),
            "record": str(Path(cell.task.key) / cell.run_id / RECORD_FILE)}


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best cell on dev: first the (batch size, lr) setting with the highest mean score over its
    seeds, then that setting's best seed. Ties go to the smaller batch size, then lr, then seed."""
    ok = [r for r in rows if r["status"] == "ok" and r["score"] is not None]
    if not ok:
        return None
    settings: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for row in ok:
        settings.setdefault((row["batch_size"], row["lr"]), []).append(row)

    def mean(cells: list[dict[str, Any]]) -> float:
        return sum(c["score"] for c in cells) / len(cells)

    (_, chosen) = min(settings.items(), key=lambda item: (-mean(item[1]), item[0][0], item[0][1]))
    best = min(chosen, key=lambda r: (-r["score"], r["seed"], r["run_id"]))
    return {**best, "setting_score": mean(chosen), "setting_seeds": len(chosen)}


def score_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{batch size: {lr: mean dev score over the seeds that finished (None: none did)}}."""
    table: dict[str, dict[str, float | None]] = {}
    for bs in sorted({r["batch_size"] for r in rows}):
        table[str(bs)] = {}
        for lr in sorted({r["lr"] for r in rows}):
            scores = [r["score"] for r in rows if r["batch_size"] == bs and r["lr"] == lr
                      and r["status"] == "ok" and r["score"] is not None]
            table[str(bs)][format_lr(lr)] = sum(scores) / len(scores) if scores else None
    return table


def task_summary(cells: list[Cell]) -> dict[str, Any]:
    """Best cell, bs x lr table and every cell's row for one task of a grid."""
    rows = [cell_row(cell) for cell in cells]
    statuses = [r["status"] for r in rows]
    return {
        "cells": {s: statuses.count(s) for s in ("ok", "failed", "missing") if statuses.count(s)},
        "best": best_row(rows),
        "table": score_table(rows),
        "epochs": cells[0].recipe.train.epochs,
        "max_length": cells[0].recipe.task.max_length,
        "rows": rows,
    }


def summary_path(tag: str, smoke: bool) -> Path:
    return paths.results_dir() / "glue" / tag / ("summary.smoke.json" if smoke else "summary.json")


def summarize(cells: list[Cell], model: str, earlier_tasks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per task of `cells` (plus `earlier_tasks` for the others): best cell and bs x lr table."""
    tasks = dict(earlier_tasks or {})
    for key in TASKS:
        of_task = [c for c in cells if c.task.key == key]
        if of_task:
            tasks[key] = task_summary(of_task)
    scores = {key: s["best"]["setting_score"] for key, s in tasks.items() if s.get("best")}
    return {"model": model, "model_tag": cells[0].tag, "smoke": cells[0].recipe.smoke, "updated_at": now_iso(),
            "selection": "per task the (batch size, lr) with the highest dev score (last epoch) averaged over "
                         "seeds, then its best seed; ties: smaller batch size, then lr, then seed",
            "glue_average": glue_average(scores), "average_of_tasks_run": partial_average(scores),
            "tasks": {key: tasks[key] for key in TASKS if key in tasks}}


def write_summary(cells: list[Cell], model: str) -> dict[str, Any]:
    """Update results/glue/<tag>/summary.json with the tasks of this grid (other tasks are kept)."""
    path = summary_path(cells[0].tag, cells[0].recipe.smoke)
    earlier = json.loads(path.read_text(encoding="utf-8")).get("tasks", {}) if path.is_file() else {}
    summary = summarize(cells, model, earlier)
    atomic_write(path, json.dumps(summary, indent=2) + "\n")
    return summary


def best_cells(cells: list[Cell], summary: dict[str, Any]) -> dict[str, Cell]:
    """task -> the planned cell the summary chose as best."""
    by_id = {c.run_id: c for c in cells}
    chosen = {}
    for key, entry in summary["tasks"].items():
        best = entry.get("best")
        if best and best["run_id"] in by_id:
            chosen[key] = by_id[best["run_id"]]
    return chosen


def elapsed(t0: float) -> str:
    seconds = time.monotonic() - t0
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"

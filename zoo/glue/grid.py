"""The GLUE grid: run the planned cells that are missing, one after another or in parallel processes.

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
On CPU there are N workers; with GPUs, N workers per visible GPU (a bert-tiny cell uses a small fraction of
an H100), worker i seeing only GPU i mod #GPUs through CUDA_VISIBLE_DEVICES (`worker_devices`). Each
worker gets cores // workers torch threads.

Launched (`zoo glue ... --nproc N`, see zoo.train.launch), the ranks walk the same cells one after the
other and train each one together (data parallel through DeepSpeed); rank 0 takes the claims, makes
every decision and broadcasts it, and alone writes records and summaries.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
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
from zoo.data.tokenization import load_tokenizer
from zoo.errors import ZooError
from zoo.glue import data
from zoo.glue.cell import Cell, is_done
from zoo.glue.finetune import run_cell
from zoo.model.resolve import resolve_model
from zoo.record.store import now_iso
from zoo.train.hf_trainer import GRID_WORKERS_ENV, usable_cores
from zoo.train.ranks import RankTerminated, is_distributed_launch, is_main_rank, shared_from_main

LOCK_FILE = ".lock"
PR_SET_PDEATHSIG = 1  # prctl(2)


@dataclass
class Outcome:
    """What happened to one queued cell: ok / failed (it ran), done / busy (it was skipped)."""

    run_id: str
    label: str
    status: str
    score: float | None = None
    reason: str | None = None
    wall_time_s: float | None = None
    node: str | None = None  # where it ran, when an engine (Ray, Slurm) placed it


@dataclass
class GridReport:
    outcomes: list[Outcome] = field(default_factory=list)
    skipped_done: int = 0
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for o in self.outcomes if o.status == status)


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
        record = run_cell(cell.to_spec(predict_test=predict_test, started=started))
    return Outcome(cell.run_id, cell.label, record["status"], record["metrics"]["score"], record["reason"],
                   record["wall_time_s"])


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
            tokenizer = load_tokenizer(resolve_model(recipe.model.name).tokenizer(recipe.model.tokenizer))
            data.prepare(task, names, tokenizer, recipe.task.max_length)
        except ZooError as exc:  # each of the task's cells will fail with this reason and be recorded
            errors[task.key] = str(exc)
    return errors


def worker_threads(workers: int) -> int:
    return max(1, usable_cores() // workers)


def worker_devices(per_gpu: int, gpus: list[str], cells: int) -> list[str | None]:
    """The CUDA_VISIBLE_DEVICES of each grid worker: `per_gpu` workers on each of `gpus` (worker i on GPU
    i mod #GPUs, so the first cells spread over every GPU), no more workers than `cells`; None (no GPU):
    `per_gpu` CPU workers."""
    devices: list[str | None] = [gpus[i % len(gpus)] for i in range(per_gpu * len(gpus))] if gpus else [None] * per_gpu
    return devices[:max(1, cells)]


def choose_gpus(requested: int, visible: list[str]) -> list[str]:
    """The first `requested` of the `visible` GPUs (`zoo glue --workers N --gpus K`), or a one-line error."""
    if requested < 1:
        raise ZooError(f"--gpus must be at least 1, got {requested}")
    if not visible:
        raise ZooError(f"--gpus {requested}: this machine has no GPU that torch can use; drop --gpus to run the "
                       "--workers cells side by side on the CPU")
    if requested > len(visible):
        raise ZooError(f"--gpus {requested}: only {len(visible)} GPU(s) visible ({','.join(visible)})")
    return visible[:requested]


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


def die_with_parent(parent: int) -> None:
    """Have the kernel send this process SIGTERM when its parent dies (Linux), however the parent dies: a
    worker must never go on training and writing records for a grid nobody runs any more."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the parent died before the request above took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _worker(cells: Any, outcomes: Any, threads: int, parent: int, predict_test: bool, force: bool) -> None:
    """A worker process: take cells from the queue until the end marker (or the parent is gone)."""
    import torch

    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    die_with_parent(parent)
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
    except (KeyboardInterrupt, RankTerminated):
        return


def start_workers(devices: list[str | None], args: tuple[Any, ...]) -> list[Any]:
    """A spawned worker process per entry of `devices` (`worker_devices`), each seeing only its GPU."""
    context = multiprocessing.get_context("spawn")
    processes = []
    with paths.environ_restored(("CUDA_VISIBLE_DEVICES", GRID_WORKERS_ENV)):
        os.environ[GRID_WORKERS_ENV] = str(len(devices))  # `dataloader_workers: auto` shares the cores
        for index, device in enumerate(devices):
            if device is not None:  # read by the child at start-up, before it initialises CUDA
                os.environ["CUDA_VISIBLE_DEVICES"] = device
            process = context.Process(target=_worker, name=f"zoo-glue-{index}", args=args)
            process.start()
            processes.append(process)
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


def run_parallel(todo: list[Cell], devices: list[str | None], predict_test: bool, force: bool,
                 on_outcome: Callable[[Outcome], None]) -> None:
    context = multiprocessing.get_context("spawn")
    cells, outcomes = context.Queue(), context.Queue()
    for cell in todo:
        cells.put(cell)
    for _ in devices:
        cells.put(None)
    threads = worker_threads(len(devices))
    processes = start_workers(devices, (cells, outcomes, threads, os.getpid(), predict_test, force))
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
    """Run every cell that is not done (all with `force`); a failing cell is recorded and skipped. `workers`
    cells run at a time on CPU, `workers` per visible GPU on a GPU machine."""
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
    devices = worker_devices(max(1, workers), gpu_ids(), len(todo))
    try:
        if len(devices) == 1 or launched:
            for cell in todo:
                collect(run_claimed(cell, predict_test, force))
        else:
            run_parallel(todo, devices, predict_test, force, collect)
    except KeyboardInterrupt:
        report.interrupted = True
    return report


def elapsed(t0: float) -> str:
    seconds = time.monotonic() - t0
    return f"{seconds / 60:.1f} min" if seconds >= 120 else f"{seconds:.1f} s"

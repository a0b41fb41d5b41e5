"""`zoo glue --grid --ray`: the grid's missing cells as Ray tasks on a cluster of many machines.

The driver (this process) plans nothing new: it takes the cells `zoo.glue.runner.plan_cells` made,
keeps those that are not done (`zoo.glue.cell.is_done`; all with --force), joins the cluster (a TCP
probe first, so a wrong address is one line at once instead of Ray's minute of retries), tokenizes
every task once (`zoo.glue.grid.warm_caches`) and submits one Ray task per cell:

- `max_calls=1`: each cell runs in a fresh worker process, which exits after it (no state leaks from
  one cell to the next, GPU memory included);
- `num_cpus` / `num_gpus` from --cpus-per-cell (default 1) / --gpus-per-cell (default 1 when the cluster
  has GPUs, else 0; fractions such as 0.25 let cells share a GPU). The cell trains single-process on
  the GPUs Ray gave it (Ray sets CUDA_VISIBLE_DEVICES; a cell that asked for none sees none) with as
  many torch threads as CPUs it asked for;
- `max_retries`: a cell whose worker process or node dies is run again, elsewhere if need be;
  an application error is not retried: `run_cell` records it as a failed cell and the grid goes on.

The task sets the driver's zoo settings (ZOO_*, HF_*, TRANSFORMERS_*; the results, checkpoint and cache
locations as absolute paths), takes the cell's lock as a same-node backstop (`zoo.glue.grid.claimed`)
and calls the one run-one-cell function, `zoo.glue.finetune.run_cell`, which writes the record
atomically and returns it as plain data; the task returns it with the node it ran on (and the text of
any test predictions). When the results directory is shared, the record the worker wrote is already
visible to the driver; when it is not (the driver does not find that very record), the driver writes
it from the returned data, with its recipe.yaml and predictions. A worker that cannot write the
driver's locations on its node writes to a node-local temporary directory instead. Each record is
written as soon as its cell returns, so Ctrl-C or a killed driver loses no finished cell, and rerunning
the same command runs only what is missing or failed. Ctrl-C cancels the running cells (each records
itself as interrupted); a dead driver takes its running tasks with it, so long sweeps go through
`ray job submit` (see README "Running on a cluster").

Progress: a tiny actor on the driver's node hears from each task when it starts, so the driver knows
what runs where; after each finished cell it calls `on_outcome` (the CLI's line and bar) and prints a
line with the node and the counts done / running / failed / left, per node.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray

from zoo import paths
from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue.cell import Cell, is_done, read_cell_record
from zoo.glue.grid import GridReport, Outcome, claimed, warm_caches
from zoo.recipe.glue import glue_recipe_yaml
from zoo.record.schema import RECIPE_FILE, RECORD_FILE
from zoo.record.store import now_iso, parse_record, write_record
from zoo.train.lifecycle import one_line

MAX_RETRIES = 3  # runs of a cell whose worker process or node died, after the first
CONNECT_TIMEOUT_S = 5.0
POLL_S = 1.0  # how often the driver looks at what runs
HEARTBEAT_S = 60.0  # a progress line at least this often while cells run
CANCEL_GRACE_S = 10.0  # after Ctrl-C: time the cancelled cells get to record themselves
PASSED_ENV = ("ZOO_", "HF_", "TRANSFORMERS_", "TOKENIZERS_")
LOCATIONS = {"ZOO_RESULTS_DIR": paths.results_dir, "ZOO_CHECKPOINT_DIR": paths.checkpoints_dir,
             "ZOO_CACHE_DIR": paths.cache_dir}


@dataclass(frozen=True)
class Placement:
    """What each cell asks the cluster for."""

    cpus: float
    gpus: float

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus))


# --------------------------------------------------------------------------- joining the cluster


def probe(address: str) -> None:
    """Open (and close) a TCP connection to the cluster's GCS within seconds; OSError or ValueError if not."""
    if address.startswith("ray://"):
        return  # Ray Client: ray.init gives its own error
    target = address
    if address == "auto":
        try:
            from ray._private.services import canonicalize_bootstrap_address_or_die
        except ImportError:  # a Ray without this helper: ray.init looks for the cluster itself
            return
        target = canonicalize_bootstrap_address_or_die("auto")  # RAY_ADDRESS, or the cluster on this machine
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"not HOST:PORT: {target!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise OSError(f"{target}: {exc}" if target != address else str(exc)) from None


def connect(address: str) -> None:
    """Join the Ray cluster at `address` (auto: the running one) as its driver; one line when there is none."""
    try:
        probe(address)
    except (OSError, ValueError) as exc:  # ConnectionError is an OSError
        raise ZooError(f"--ray {address}: no Ray cluster there ({one_line(str(exc))}); start one with "
                       "`ray start --head` (README: Running on a cluster)") from None
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR, namespace="zoo")
    except Exception as exc:  # auth, version mismatch, ...: Ray's own message, on one line
        raise ZooError(f"--ray {address}: cannot join the Ray cluster: {one_line(str(exc))}") from None


def placement(options: dict[str, Any]) -> Placement:
    """--cpus-per-cell / --gpus-per-cell with their defaults, checked against the cluster's nodes."""
    gpus, cpus = options.get("gpus_per_cell"), options.get("cpus_per_cell")
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if gpus is None:
        gpus = 1.0 if any(r.get("GPU", 0) > 0 for r in nodes) else 0.0
    place = Placement(cpus=1.0 if cpus is None else float(cpus), gpus=float(gpus))
    if place.cpus < 0 or place.gpus < 0 or (place.gpus > 1 and place.gpus != int(place.gpus)):
        raise ZooError("--cpus-per-cell and --gpus-per-cell must be >= 0 (a GPU fraction only below 1)")
    if not any(r.get("CPU", 0) >= place.cpus and r.get("GPU", 0) >= place.gpus for r in nodes):
        raise ZooError(f"no node of the Ray cluster has {place.cpus:g} CPU(s) and {place.gpus:g} GPU(s) for a cell; "
                       "ask for less with --cpus-per-cell / --gpus-per-cell")
    return place


def node_names() -> dict[str, str]:
    """Node id -> its name (`ray start --node-name`, by default its IP address)."""
    return {n["NodeID"]: n.get("NodeName") or n["NodeManagerAddress"] for n in ray.nodes()}


def cell_env() -> dict[str, str]:
    """The driver's zoo settings, for the cells: locations as absolute paths, the rest as they are."""
    env = {k: v for k, v in os.environ.items() if k.startswith(PASSED_ENV)}
    env.update({key: str(where()) for key, where in LOCATIONS.items()})
    if paths.data_dir() is not None:
        env["ZOO_DATA_DIR"] = str(paths.data_dir())
    return env


# --------------------------------------------------------------------------- on the worker


class StartLog:
    """The actor the cells tell when they start: run id -> node id of its latest start."""

    def __init__(self) -> None:
        self.started: dict[str, str] = {}

    def start(self, run_id: str, node: str) -> None:
        self.started[run_id] = node

    def snapshot(self) -> dict[str, str]:
        return dict(self.started)


def usable_here(env: dict[str, str]) -> dict[str, str]:
    """`env` with each location this node cannot write replaced by a node-local temporary directory
    (results not on a shared filesystem: the driver writes the records from what the task returns)."""
    env = dict(env)
    for key in LOCATIONS:
        try:
            Path(env[key]).mkdir(parents=True, exist_ok=True)
            writable = os.access(env[key], os.W_OK)
        except OSError:
            writable = False
        if not writable:
            env[key] = tempfile.mkdtemp(prefix=f"zoo-ray-{key.split('_')[1].lower()}-")
    return env


def prediction_files(record: dict[str, Any]) -> dict[str, str]:
    predictions = record.get("predictions") or {}
    folder = Path(str(predictions.get("dir", "")))
    return {name: (folder / name).read_text(encoding="utf-8") for name in predictions.get("files", [])
            if (folder / name).is_file()}


def run_cell_task(spec: dict[str, Any], env: dict[str, str], threads: int, force: bool, log: Any) -> dict[str, Any]:
    """The Ray task: one cell in this fresh worker process, with the driver's settings and the resources
    Ray gave it. Returns {status, node, record, files}."""
    os.environ.update(usable_here(env))
    if not ray.get_gpu_ids():  # Ray leaves CUDA_VISIBLE_DEVICES alone for a task without GPUs
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    import torch

    from zoo.glue.finetune import run_cell

    torch.set_num_threads(threads)
    node = ray.get_runtime_context().get_node_id()
    cell = Cell.from_spec(spec)
    log.start.remote(cell.run_id, node)
    with claimed(cell) as mine:  # a same-node backstop against a second grid on the same cells
        if not mine or (not force and is_done(cell)):
            return {"status": "busy" if not mine else "done", "node": node}
        record = run_cell(spec)
    return {"status": record["status"], "node": node, "record": record, "files": prediction_files(record)}


# --------------------------------------------------------------------------- back on the driver


def on_disk(cell: Cell, record: dict[str, Any]) -> bool:
    """True when the driver sees this very record (same start and finish): the results are shared."""
    try:
        found = json.loads((cell.directory / RECORD_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    keys = ("run_id", "status", "started_at", "finished_at")
    return isinstance(found, dict) and all(found.get(k) == record.get(k) for k in keys)


def land(cell: Cell, result: dict[str, Any]) -> None:
    """Make a returned cell's record (and test predictions) visible to the driver when they are not yet."""
    record = result.get("record")
    if record is None:
        return
    files = result.get("files") or {}
    missing = {name: text for name, text in files.items() if not (cell.predictions_dir / name).is_file()}
    for name, text in missing.items():
        atomic_write(cell.predictions_dir / name, text)
    if missing:
        record = {**record, "predictions": {**record["predictions"], "dir": str(cell.predictions_dir)}}
    if missing or not on_disk(cell, record):
        parsed = parse_record(record, cell.directory, f"{cell.label} (returned by its Ray task)")
        atomic_write(cell.directory / RECIPE_FILE, glue_recipe_yaml(cell.recipe))
        write_record(cell.directory, parsed)


def record_failure(cell: Cell, reason: str, since: str) -> None:
    """A failed record for a cell whose task ended without one: unless the cell has an ok record, or one
    finished since `since` (the grid's start: the task recorded its failure itself, then raised)."""
    found = read_cell_record(cell)
    if found is not None and (found.ok or (found.finished and (found.finished_at or "") >= since)):
        return
    from zoo.glue.finetune import new_record

    record = new_record(cell)
    record.status, record.reason = "failed", reason
    record.started_at = record.finished_at = now_iso()
    atomic_write(cell.directory / RECIPE_FILE, glue_recipe_yaml(cell.recipe))
    write_record(cell.directory, record)


def failure_reason(exc: Exception) -> str:
    cause = getattr(exc, "cause", None)  # RayTaskError: the exception raised in the task
    if isinstance(cause, BaseException):
        return one_line(f"{type(cause).__name__}: {cause}")
    return one_line(f"{type(exc).__name__} (after {MAX_RETRIES} retries): {exc}")


@dataclass
class Board:
    """What the driver knows: cells started (and where), finished, and the nodes' names."""

    total: int
    names: dict[str, str] = field(default_factory=dict)
    started: dict[str, str] = field(default_factory=dict)  # run id -> node id
    finished: dict[str, str] = field(default_factory=dict)  # run id -> status
    ran_on: Counter = field(default_factory=Counter)  # node name -> cells that ran ok there
    since: str = field(default_factory=now_iso)  # when the grid started
    shown: float = field(default_factory=time.monotonic)

    def name(self, node: str | None) -> str:
        if node and node not in self.names:
            self.names = node_names()
        return self.names.get(node or "", node or "?")

    def line(self) -> str:
        running = Counter(self.name(n) for r, n in self.started.items() if r not in self.finished)
        statuses = Counter(self.finished.values())
        left = self.total - len(self.finished) - sum(running.values())

        def per_node(counts: Counter) -> str:
            nodes = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if v)
            return f" ({nodes})" if nodes else ""

        self.shown = time.monotonic()
        return (f"{statuses['ok'] + statuses['done']} done{per_node(self.ran_on)}, {sum(running.values())} "
                f"running{per_node(running)}, {statuses['failed']} failed, {left} left")


def say(text: str) -> None:
    from tqdm.auto import tqdm

    tqdm.write(text, file=sys.stdout)  # above the CLI's bar on stderr
    sys.stdout.flush()


def finish(cell: Cell, ref: Any, board: Board) -> Outcome:
    """The outcome of a returned task, its record landed on the driver (a failed one written if it has none)."""
    try:
        result = ray.get(ref)
    except ray.exceptions.RayError as exc:  # the task raised, or died more often than it may be retried
        reason = failure_reason(exc)
        record_failure(cell, reason, board.since)
        board.finished[cell.run_id] = "failed"
        node = board.name(board.started.get(cell.run_id))
        return Outcome(cell.run_id, cell.label, "failed", reason=reason, node=node)
    node = board.name(result["node"])
    board.started[cell.run_id], board.finished[cell.run_id] = result["node"], result["status"]
    record = result.get("record")
    if record is None:
        return Outcome(cell.run_id, cell.label, result["status"], node=node)
    land(cell, result)
    board.ran_on[node] += record["status"] == "ok"
    return Outcome(cell.run_id, cell.label, record["status"], record["metrics"]["score"], record["reason"],
                   record["wall_time_s"], node=node)


def submit(todo: list[Cell], place: Placement, force: bool, predict_test: bool, log: Any) -> dict[Any, Cell]:
    task = ray.remote(max_calls=1)(run_cell_task)
    env = cell_env()
    refs = {}
    for cell in todo:
        options = task.options(num_cpus=place.cpus, num_gpus=place.gpus, max_retries=MAX_RETRIES,
                               retry_exceptions=False, name=f"zoo-glue:{cell.task.key}/{cell.run_id}")
        spec = cell.to_spec(predict_test=predict_test, started=None)
        refs[options.remote(spec, env, place.threads, force, log)] = cell
    return refs


def start_log() -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
    return ray.remote(num_cpus=0)(StartLog).options(scheduling_strategy=here).remote()


def follow(pending: dict[Any, Cell], board: Board, log: Any, collect: Callable[[Outcome], None]) -> None:
    """Collect each cell as it returns, printing where it ran and the counts; until none is left."""
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=POLL_S)
        with contextlib.suppress(ray.exceptions.RayError):  # else the running counts are late this time
            board.started.update(ray.get(log.snapshot.remote(), timeout=10))
        for ref in ready:
            outcome = finish(pending.pop(ref), ref, board)
            collect(outcome)
            say(f"  ray: {outcome.label} on {outcome.node}; {board.line()}")
        if not ready and time.monotonic() - board.shown > HEARTBEAT_S:
            say(f"  ray: {board.line()}")


def stop(pending: dict[Any, Cell], board: Board, collect: Callable[[Outcome], None]) -> None:
    """After Ctrl-C: keep what has returned, cancel the rest (each cell records itself as interrupted)."""
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0) if pending else ([], [])
    for ref in ready:
        collect(finish(pending.pop(ref), ref, board))
    for ref in pending:
        ray.cancel(ref)
    if pending:
        ray.wait(list(pending), num_returns=len(pending), timeout=CANCEL_GRACE_S)


def run_on_ray(request: Any, cells: list[Cell], on_outcome: Callable[[Outcome], None] | None) -> GridReport:
    """Run the request's cells that are not done (all with --force) as Ray tasks; the grid report."""
    report = GridReport()
    todo = [c for c in cells if request.force or not is_done(c)]
    report.skipped_done = len(cells) - len(todo)
    if not todo:
        return report
    options = request.engine_options
    connect(str(options.get("address") or "auto"))

    def collect(outcome: Outcome) -> None:
        report.outcomes.append(outcome)
        if on_outcome is not None:
            on_outcome(outcome)

    pending: dict[Any, Cell] = {}
    board = Board(total=len(todo))
    try:
        place = placement(options)
        board.names = node_names()
        resources = ray.cluster_resources()
        say(f"  ray: {len(todo)} cell(s) on {len(board.names)} node(s) ({resources.get('CPU', 0):g} CPUs, "
            f"{resources.get('GPU', 0):g} GPUs), {place.cpus:g} CPU(s) and {place.gpus:g} GPU(s) per cell")
        warm_caches(todo, request.predict_test)
        log = start_log()
        pending = submit(todo, place, request.force, request.predict_test, log)
        follow(pending, board, log, collect)
    except KeyboardInterrupt:
        report.interrupted = True
        stop(pending, board, collect)
    finally:
        ray.shutdown()
    return report

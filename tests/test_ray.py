"""`zoo glue --grid --ray` on a real two-node Ray cluster on this machine.

The head and a second node are started with `ray start` inside a network namespace that has only
loopback (`ip netns`, root), so that both nodes and the driver talk over 127.0.0.1 (outside one, Ray
swaps 127.0.0.1 for the machine's routable address). Each node has one CPU, so the 4-cell grid runs
two cells at a time, one per node. The cluster is ours alone: a private --temp-dir, token auth off
explicitly (RAY_AUTH_MODE), and at the end every process in the namespace is killed by pid (never
`ray stop`, which stops every Ray process on the machine) and the namespace deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.conftest import save_tiny_bert
from zoo.cli import main

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (pip install -e '.[ray]')")

GRID = ["--grid", "--tasks", "rte", "--smoke", "--set", "task.max_train_examples=48", "task.max_eval_examples=41",
        "train.epochs=2", "grid.batch_sizes=[8,16]", "grid.lrs=[1e-4,3e-3]"]
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
TASK_TITLE = "ray::zoo-glue:rte/"  # the worker's process title while it runs a cell: ray::<task name>
NODE_LINE = re.compile(r"^  ray: (.+) on (\S+); ", re.MULTILINE)


@dataclass
class Cluster:
    netns: str
    address: str
    temp_dir: Path

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def driver(self, model: Path, results: Path, log: Path) -> subprocess.Popen:
        """`zoo glue MODEL --grid ... --ray ADDRESS` in the namespace, with its own results directory."""
        env = {**os.environ, **RAY_ENV, "ZOO_RESULTS_DIR": str(results / "results"),
               "ZOO_CHECKPOINT_DIR": str(results / "checkpoints"), "TQDM_DISABLE": "1"}
        argv = self.command(sys.executable, "-m", "zoo", "glue", str(model), *GRID, "--ray", self.address)
        with log.open("w") as out:
            return subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
        return [int(p) for p in out.split()]


def start_node(cluster: Cluster, *options: str) -> None:
    argv = cluster.command("ray", "start", "--temp-dir", str(cluster.temp_dir), "--node-ip-address", "127.0.0.1",
                           "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 2**20),
                           "--disable-usage-stats", *options)
    proc = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **RAY_ENV}, timeout=120,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def stop_cluster(cluster: Cluster) -> None:
    """Kill every process in our namespace (ours alone), by pid: TERM, then KILL what is left."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        for pid in cluster.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + grace
        while cluster.pids() and time.monotonic() < deadline:
            time.sleep(0.2)
    subprocess.run(["ip", "netns", "del", cluster.netns], capture_output=True)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    netns = f"zoo-ray-{os.getpid()}"
    if shutil.which("ip") is None:
        pytest.skip("a network namespace is needed for a local multi-node Ray cluster, and `ip` is not installed")
    made = subprocess.run(["ip", "netns", "add", netns], capture_output=True, text=True)
    if made.returncode != 0:
        pytest.skip(f"a network namespace is needed for a local multi-node Ray cluster, and `ip netns add` is not "
                    f"permitted here: {made.stderr.strip() or made.returncode}")
    temp_dir = Path(tempfile.mkdtemp(prefix="zr", dir="/tmp"))  # Ray's socket paths must stay under ~107 chars
    ray_cluster = Cluster(netns, "127.0.0.1:6379", temp_dir)
    try:
        subprocess.run(ray_cluster.command("ip", "link", "set", "lo", "up"), check=True)
        start_node(ray_cluster, "--head", "--port", "6379", "--include-dashboard=false", "--node-name", "node-a",
                   "--resources", '{"node_a": 1}')
        start_node(ray_cluster, "--address", ray_cluster.address, "--node-name", "node-b", "--resources",
                   '{"node_b": 1}')
        yield ray_cluster
    finally:
        stop_cluster(ray_cluster)


@pytest.fixture
def tiny_model(tmp_path: Path, mirror: Path) -> Path:
    return save_tiny_bert(tmp_path / "tiny-bert", hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def records(results: Path) -> dict[str, dict]:
    """cell id -> run.json of every cell recorded under `results`."""
    return {p.parent.name: json.loads(p.read_text()) for p in results.glob("results/glue/tiny-bert/rte/*/run.json")}


def ok_cells(results: Path) -> set[str]:
    return {cell for cell, record in records(results).items() if record["status"] == "ok"}


def close(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


def same_training(ours: dict, theirs: dict) -> bool:
    """Per-epoch dev metrics and train loss within 1e-6 relative."""
    if [e["epoch"] for e in ours["epochs"]] != [e["epoch"] for e in theirs["epochs"]]:
        return False
    for mine, other in zip(ours["epochs"], theirs["epochs"]):
        if mine["dev"].keys() != other["dev"].keys() or not close(mine["train_loss"], other["train_loss"]):
            return False
        if not all(close(mine["dev"][k], other["dev"][k]) for k in mine["dev"]):
            return False
    return True


def wait_for(condition, timeout: float, what: str, driver: subprocess.Popen, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = condition()
        if found:
            return found
        assert driver.poll() is None, f"the driver ended (exit {driver.returncode}) before {what}:\n{log.read_text()}"
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}:\n{log.read_text()}")


def running_cell_worker() -> tuple[object, str] | None:
    """(process, cell id) of a Ray worker running a cell of the grid, found by its process title."""
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        title = " ".join(proc.info["cmdline"] or []).strip("\x00 ")
        if title.startswith(TASK_TITLE):
            return proc, title[len(TASK_TITLE):].split()[0].strip("\x00")
    return None


def lock_holder(lock: Path) -> int | None:
    """The pid written in a cell's lock file (claimed by the process running it), if any yet."""
    try:
        text = lock.read_text().split()
    except OSError:
        return None
    return int(text[0]) if text else None


def finish(driver: subprocess.Popen, log: Path, timeout: float = 150) -> str:
    try:
        driver.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(driver.pid, signal.SIGKILL)
        raise AssertionError(f"the driver did not finish in {timeout} s:\n{log.read_text()}") from None
    return log.read_text()


@pytest.mark.slow
def test_ray_grid_on_two_nodes_equals_the_local_grid_and_retries_a_killed_worker(
        cluster: Cluster, tiny_model: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each Ray cell (one CPU): the same arithmetic
    try:
        assert main(["glue", str(tiny_model), *GRID]) == 0
    finally:
        torch.set_num_threads(threads)
    local = records(isolated)
    assert len(local) == 4 and all(r["status"] == "ok" for r in local.values())

    results, log = isolated / "on-ray", isolated / "driver.log"
    driver = cluster.driver(tiny_model, results, log)
    proc, victim = wait_for(running_cell_worker, 90, "a cell running on a Ray worker", driver, log)
    lock = results / "results" / "glue" / "tiny-bert" / "rte" / victim / ".lock"
    holder = wait_for(lambda: lock_holder(lock), 30, f"{victim} to start (its lock)", driver, log)
    assert holder == proc.pid and victim not in ok_cells(results)  # inside run_cell: mid-cell
    proc.kill()  # SIGKILL: Ray sees its worker die and runs the cell again
    out = finish(driver, log)
    assert driver.returncode == 0, out

    on_ray = records(results)
    assert on_ray.keys() == local.keys()  # the same cell ids
    assert all(r["status"] == "ok" for r in on_ray.values()), out  # the killed cell too: retried
    assert all(same_training(on_ray[cell], local[cell]) for cell in local), out
    assert "ran 4 cell(s) (4 ok, 0 failed)" in out
    nodes = dict(NODE_LINE.findall(out))
    assert len(nodes) == 4 and set(nodes.values()) == {"node-a", "node-b"}, out  # both nodes ran cells
    assert "4 done (node-a " in out and ", node-b " in out

    # results not on a shared filesystem: the driver writes the record the task returned, the same file
    from zoo.glue.cell import Cell
    from zoo.glue.ray_engine import land
    from zoo.record.store import read_record

    directory = next((results / "results" / "glue" / "tiny-bert" / "rte").iterdir())
    written = {name: (directory / name).read_bytes() for name in ("run.json", "recipe.yaml")}
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(results / "results"))
    record = read_record(directory / "run.json")
    cell = Cell.from_spec({"recipe": yaml.safe_load(written["recipe.yaml"]), "model": record.model})
    assert cell.directory == directory
    shutil.rmtree(directory)
    land(cell, {"record": dataclasses.asdict(record), "files": {}})
    assert {name: (directory / name).read_bytes() for name in written} == written


@pytest.mark.slow
def test_a_killed_driver_loses_no_finished_cell_and_the_rerun_runs_only_the_rest(
        cluster: Cluster, tiny_model: Path, isolated: Path) -> None:
    results, log = isolated / "on-ray", isolated / "driver.log"
    driver = cluster.driver(tiny_model, results, log)
    wait_for(lambda: ok_cells(results), 120, "a first finished cell", driver, log)
    os.killpg(driver.pid, signal.SIGKILL)  # no goodbye: Ray ends the dead driver's tasks
    driver.wait()
    deadline = time.monotonic() + 30
    while running_cell_worker() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert running_cell_worker() is None  # the cells in progress died with their driver
    finished = {cell: (results / "results" / "glue" / "tiny-bert" / "rte" / cell / "run.json").read_bytes()
                for cell in ok_cells(results)}
    assert 1 <= len(finished) < 4

    rerun = cluster.driver(tiny_model, results, log)
    out = finish(rerun, log)
    assert rerun.returncode == 0, out
    assert f"ran {4 - len(finished)} cell(s) ({4 - len(finished)} ok, 0 failed), skipped {len(finished)} finished" \
        in out
    assert len(ok_cells(results)) == 4
    for cell, text in finished.items():  # left alone
        assert (results / "results" / "glue" / "tiny-bert" / "rte" / cell / "run.json").read_bytes() == text
    assert len(NODE_LINE.findall(out)) == 4 - len(finished)


def test_a_wrong_ray_address_is_one_line_at_once(tiny_model: Path, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    assert main(["glue", str(tiny_model), *GRID, "--ray", "127.0.0.1:1"]) == 2
    assert time.monotonic() - started < 30
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--ray 127.0.0.1:1: no Ray cluster there" in err[0], err
    assert main(["glue", str(tiny_model), *GRID, "--ray", "--workers", "2"]) == 2
    assert capsys.readouterr().err.strip().count("\n") == 0

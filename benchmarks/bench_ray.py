"""GLUE grid on Ray: the dispatch overhead per cell, local Ray clusters of 1 and 2 nodes vs the local grid.

The 20-cell RTE grid shape (bs {8,16,32,64,128} x lr {1e-4,3e-4,3e-5,5e-5}) of a tiny BERT (1 layer,
hidden 32, the test suite's) on very few examples (32 train, 32 dev, 1 epoch), so that each cell's own
work is short and the wall time of a grid is mostly what it costs to run cells at all. Each side is one
`zoo glue MODEL --grid --tasks rte` invocation in fresh results directories, the tokenized data cached
beforehand by a warm-up cell:

- local, `--workers 1` and `--workers 2`: one process (or two) running cell after cell;
- `--ray` on a cluster started with `ray start` inside a loopback-only network namespace (root needed):
  first the head alone (1 CPU: one cell at a time), then with a second node (1 CPU each: two at a time).
  Each cell is a Ray task in a fresh worker process (max_calls=1).

Overhead per cell = (wall of the Ray side - wall of the local side with as many cells at a time)
x cells at a time / cells. Both nodes share this machine's cores, so no speed-up is claimed.

    python benchmarks/bench_ray.py            # 20 cells
    python benchmarks/bench_ray.py --quick    # 8 cells (bs {8,16,32,64} x lr {1e-4,3e-4})
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as common  # noqa: E402

TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}
PORT = 6379
AT_ONCE = {"local --workers 1": 1, "ray, 1 node": 1, "local --workers 2": 2, "ray, 2 nodes": 2}  # cells at a time


def grid_args(quick: bool) -> list[str]:
    sizes, lrs = ("[8,16,32,64]", "[1e-4,3e-4]") if quick else ("[8,16,32,64,128]", "[1e-4,3e-4,3e-5,5e-5]")
    return ["--grid", "--tasks", "rte", "--smoke", "--set", "task.max_train_examples=32", "task.max_eval_examples=32",
            "train.epochs=1", f"grid.batch_sizes={sizes}", f"grid.lrs={lrs}", "grid.seeds=[42]"]


def make_model(directory: Path) -> str:
    from transformers import BertConfig, BertForMaskedLM

    from zoo.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, **TINY_BERT)).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return str(directory)


# --------------------------------------------------------------------------- a Ray cluster of our own


class Cluster:
    """Ray nodes started with `ray start` in a network namespace of their own; stopped by pid."""

    def __init__(self) -> None:
        self.netns = f"zoo-bench-ray-{os.getpid()}"
        self.temp_dir = Path(tempfile.mkdtemp(prefix="zrb", dir="/tmp"))  # Ray's socket paths: < 107 chars
        self.address = f"127.0.0.1:{PORT}"
        self.nodes = 0
        made = subprocess.run(["ip", "netns", "add", self.netns], capture_output=True, text=True)
        if made.returncode != 0:
            raise SystemExit(f"bench_ray needs `ip netns` (root) for a local multi-node cluster: {made.stderr.strip()}")
        subprocess.run(self.command("ip", "link", "set", "lo", "up"), check=True)

    def command(self, *argv: str) -> list[str]:
        return ["ip", "netns", "exec", self.netns, *argv]

    def add_node(self) -> float:
        """One more node of 1 CPU (the first is the head); seconds it took to start."""
        self.nodes += 1
        role = ["--head", "--port", str(PORT), "--include-dashboard=false"] if self.nodes == 1 else \
            ["--address", self.address]
        argv = self.command("ray", "start", *role, "--temp-dir", str(self.temp_dir), "--node-ip-address", "127.0.0.1",
                            "--num-cpus", "1", "--num-gpus", "0", "--object-store-memory", str(100 * 2**20),
                            "--node-name", f"node-{self.nodes}", "--disable-usage-stats")
        started = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True, env={**os.environ, **RAY_ENV}, start_new_session=True)
        return time.perf_counter() - started

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True).stdout
            for pid in map(int, out.split()):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            time.sleep(3)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        subprocess.run(["rm", "-rf", str(self.temp_dir)])


# --------------------------------------------------------------------------- one side


def run_grid(model: str, quick: bool, engine: list[str], prefix: list[str]) -> dict[str, Any]:
    """One `zoo glue MODEL --grid` invocation in fresh results directories; wall time and the cells' times."""
    with tempfile.TemporaryDirectory(prefix="zoo-bench-ray-") as tmp:
        env = {**os.environ, **RAY_ENV, "ZOO_RESULTS_DIR": f"{tmp}/results", "ZOO_CHECKPOINT_DIR": f"{tmp}/ckpt"}
        command = [*prefix, sys.executable, "-m", "zoo", "glue", model, *grid_args(quick), *engine]
        start = time.perf_counter()
        proc = subprocess.run(command, cwd=common.REPO, capture_output=True, text=True, env=env)
        wall = time.perf_counter() - start
        records = [json.loads(p.read_text()) for p in Path(tmp).glob("results/glue/*/rte/*/run.json")]
    ok = [r for r in records if r.get("status") == "ok"]
    if proc.returncode != 0 or len(ok) != len(records) or not ok:
        raise RuntimeError(f"zoo glue {' '.join(engine)} failed: {(proc.stderr or proc.stdout).splitlines()[-3:]}")
    per_node: dict[str, int] = {}
    for line in proc.stdout.splitlines():
        if line.startswith("  ray: ") and " on node-" in line:
            node = line.split(" on ", 1)[1].split(";")[0]
            per_node[node] = per_node.get(node, 0) + 1
    return {"wall_s": wall, "cells": len(ok), "cell_s": sum(r["wall_time_s"] for r in ok) / len(ok),
            "per_node": per_node}


def measure(sides: dict[str, Any], repeats: int) -> dict[str, list[dict[str, Any]]]:
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
    for repeat, name in common.interleaved(list(sides), repeats):
        result = sides[name]()
        results[name].append(result)
        print(f"  {name} #{repeat + 1}: {result['wall_s']:.1f} s for {result['cells']} cells "
              f"(mean cell {result['cell_s']:.2f} s){' ' + str(result['per_node']) if result['per_node'] else ''}",
              flush=True)
    return results


def main() -> int:
    common.setup_environment()
    parser = common.arm_parser(__doc__.split("\n\n")[0])
    args = parser.parse_args()
    print("machine:", json.dumps(common.machine()))
    repeats = args.repeats or 1
    cluster = Cluster()
    try:
        with common.scratch_dirs() as tmp:
            model = make_model(tmp / "tiny-bert")
            warm = ["--task", "rte", "--smoke", "--set", "task.max_train_examples=32", "task.max_eval_examples=32",
                    "train.epochs=1"]
            subprocess.run([sys.executable, "-m", "zoo", "glue", model, *warm], check=True, capture_output=True)
            ray = ["--ray", cluster.address]
            start_s = [cluster.add_node()]
            results = measure({"local --workers 1": lambda: run_grid(model, args.quick, [], []),
                               "ray, 1 node": lambda: run_grid(model, args.quick, ray, cluster.command())}, repeats)
            start_s.append(cluster.add_node())
            results |= measure({"local --workers 2": lambda: run_grid(model, args.quick, ["--workers", "2"], []),
                                "ray, 2 nodes": lambda: run_grid(model, args.quick, ray, cluster.command())}, repeats)
    finally:
        cluster.stop()
    wall = {name: common.median([r["wall_s"] for r in rs]) for name, rs in results.items()}
    rows = []
    for name, rs in results.items():
        at_once = AT_ONCE[name]
        local = wall[f"local --workers {at_once}"]
        overhead = (wall[name] - local) * at_once / rs[0]["cells"] if name.startswith("ray") else None
        rows.append({"side": name, "cells at a time": at_once, "cells": rs[0]["cells"], "wall s": round(wall[name], 1),
                     "mean cell s (in run_cell)": round(common.median([r["cell_s"] for r in rs]), 2),
                     "overhead per cell s": None if overhead is None else round(overhead, 2),
                     "cells per node": rs[0]["per_node"] or "-"})
    common.print_table(rows, f"RTE grid shape, {rows[0]['cells']} cells of a tiny BERT: Ray dispatch overhead")
    print(f"ray start: head {start_s[0]:.1f} s, second node {start_s[1]:.1f} s (not in the wall times)")
    common.save_json(args.json, {"machine": common.machine(), "quick": args.quick, "rows": rows, "raw": results,
                                 "ray_start_s": start_s})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

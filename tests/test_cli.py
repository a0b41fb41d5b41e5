"""The command line stays light: help, listing, validation and the leaderboard check never import torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "transformers", "deepspeed", "datasets")
PROBE = f"""
import json, sys
from zoo.cli import main
try:
    status = main(sys.argv[1:])
except SystemExit as exit:
    status = exit.code
heavy = sorted({{name.split('.')[0] for name in sys.modules}} & set({HEAVY!r}))
print(json.dumps({{"status": status, "heavy": heavy}}), file=sys.stderr)
"""


def run_zoo(*argv: str) -> dict:
    env = {**os.environ, "ZOO_RESULTS_DIR": str(REPO / "results"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=120)
    return json.loads(result.stderr.strip().splitlines()[-1])


COMMANDS = ["pretrain", "finetune", "eval", "glue", "leaderboard", "generate", "fill-mask", "export", "ls", "validate"]


@pytest.mark.parametrize("argv", [["--help"], ["ls"], ["validate"], ["leaderboard", "--check", "--readme",
                                                                      "README.md"],
                                  *[[command, "--help"] for command in COMMANDS]],
                         ids=lambda argv: " ".join(argv))
def test_light_commands_do_not_import_torch(argv: list[str]) -> None:
    outcome = run_zoo(*argv)
    assert outcome["status"] == 0, outcome
    assert outcome["heavy"] == [], f"`zoo {' '.join(argv)}` imported {outcome['heavy']}"


def test_zoo_help_is_fast() -> None:
    run_zoo("--help")  # warm the bytecode cache
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "zoo", "--help"], cwd=REPO, check=True, capture_output=True, timeout=60)
    assert time.monotonic() - start < 1.5  # the target is 1 s; slack for a loaded 2-core CI machine


def test_no_import_cycles_between_zoo_modules() -> None:
    """No zoo module imports (at module level) a module that imports it back, directly or not."""
    import ast

    graph: dict[str, set[str]] = {}
    for path in sorted((REPO / "zoo").rglob("*.py")):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
        edges: set[str] = set()
        for node in ast.parse(path.read_text()).body:  # module level only: function-level imports are lazy
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("zoo"):
                edges.add(node.module)
                edges.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                edges.update(alias.name for alias in node.names if alias.name.startswith("zoo"))
        graph[name] = edges
    graph = {name: {e for e in edges if e in graph and e != name} for name, edges in graph.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == target or (nxt not in seen and (seen.add(nxt) or reaches(nxt, target, seen))):
                return True
        return False

    cycles = [name for name in graph if reaches(name, name, set())]
    assert cycles == []

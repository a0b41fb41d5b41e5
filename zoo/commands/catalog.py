"""`zoo ls` (what exists) and `zoo validate` (check recipes without running anything).

`zoo validate` with no files checks every shipped recipe (recipes/*/*.yaml); given files, it checks
those, wherever they are (a run's saved recipe.yaml too), by the kind each declares.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tabulate import tabulate

from zoo import paths
from zoo.data.corpora import CORPORA
from zoo.errors import ZooError
from zoo.model.registry import MODELS
from zoo.recipe.kinds import validate_file


def local_status(name: str) -> str:
    root = paths.data_dir()
    if root is None:
        return "hub"
    found = CORPORA[name].find_local(root)
    return ", ".join(sorted(found)) if found else "hub"


def list_everything(_: argparse.Namespace) -> int:
    print(tabulate([[m.name, m.family, m.objective, m.tokenizer, m.hub_id or "-", m.description]
                    for m in MODELS.values()],
                   headers=["model", "family", "objective", "tokenizer", "hub id", "description"]))
    print()
    print(tabulate([[c.name, c.hub_id or "-", c.local_layout, local_status(c.name)] for c in CORPORA.values()],
                   headers=["corpus", "hub dataset", "local layout under ZOO_DATA_DIR", "local splits"]))
    print()
    recipes = sorted(paths.recipes_dir().glob("*/*.yaml"))
    print(tabulate([[r.parent.name, r.stem, str(r.relative_to(paths.recipes_dir().parent))] for r in recipes],
                   headers=["kind", "recipe", "file"]))
    return 0


def check_file(path: Path) -> str | None:
    """None when recipe file `path` is valid, else the one-line reason, naming the file."""
    try:
        validate_file(path)
    except ZooError as exc:
        message = str(exc)
        return message if message.startswith(str(path)) else f"{path}: {message}"
    return None


def validate(args: argparse.Namespace) -> int:
    """Print `ok FILE` or `invalid FILE: reason` per recipe file and a count; exit status 2 if any is invalid."""
    files = [Path(f) for f in args.files] or sorted(paths.recipes_dir().glob("*/*.yaml"))
    failures = 0
    for path in files:
        problem = check_file(path)
        failures += problem is not None
        print(f"ok      {path}" if problem is None else f"invalid {problem}")
    print(f"{len(files) - failures} valid, {failures} invalid")
    return 2 if failures else 0


def register(sub: argparse._SubParsersAction) -> None:
    ls = sub.add_parser("ls", help="list models, corpora (with local availability) and recipes")
    ls.add_argument("--data-dir", metavar="DIR", help="local data mirror (default: $ZOO_DATA_DIR)")
    ls.set_defaults(func=list_everything)
    check = sub.add_parser("validate", help="load and check recipes (default: every file in recipes/)")
    check.add_argument("files", nargs="*",
                       help="recipe files, e.g. a run's results/pretrain/<run>/recipe.yaml (default: recipes/*/*.yaml)")
    check.set_defaults(func=validate)

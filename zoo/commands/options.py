"""Command-line options shared by the commands that run a recipe."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from zoo.errors import ZooError


def overrides_from_extras(extras: Sequence[str]) -> list[str]:
    """`--train.lr 3e-4 --data.block_size=64` -> ['train.lr=3e-4', 'data.block_size=64']."""
    result: list[str] = []
    items = list(extras)
    while items:
        item = items.pop(0)
        if not item.startswith("--") or "." not in item.split("=", 1)[0]:
            raise ZooError(f"unrecognized argument {item!r} (recipe keys look like --train.lr 3e-4)")
        key = item[2:]
        if "=" in key:
            result.append(key)
        elif items and not items[0].startswith("--"):
            result.append(f"{key}={items.pop(0)}")
        else:
            raise ZooError(f"{item}: missing value")
    return result


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """--recipe, --set and --data-dir, shared by every command that runs a recipe."""
    parser.add_argument("--recipe", metavar="FILE", help="recipe YAML (e.g. a run's saved recipe.yaml)")
    parser.add_argument("--set", dest="overrides", metavar="KEY=VALUE", nargs="+", action="extend", default=[],
                        help="override recipe keys, e.g. --set train.lr=3e-4 data.block_size=64 "
                             "(equivalently --train.lr 3e-4)")
    parser.add_argument("--data-dir", metavar="DIR", help="local data mirror (default: $ZOO_DATA_DIR)")

"""The `zoo` command line: one sub-command per module, one error path for user mistakes.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` (taking the
parsed arguments and returning an exit status). Recipe keys can be overridden with `--set a.b=v` or
`--a.b v` on every command that takes a recipe.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from zoo import __version__
from zoo.errors import ZooError

COMMAND_MODULES = [
    "zoo.commands.lm",
    "zoo.commands.catalog",
    "zoo.commands.glue",
    "zoo.commands.infer",
    "zoo.commands.leaderboard",
]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Pretrain, fine-tune and benchmark small language models from declarative recipes.",
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    try:
        if extras:
            if not hasattr(args, "overrides"):
                parser.error(f"unrecognized arguments: {' '.join(extras)}")
            args.overrides = list(args.overrides) + overrides_from_extras(extras)
        if getattr(args, "data_dir", None):
            os.environ["ZOO_DATA_DIR"] = args.data_dir
        return int(args.func(args) or 0)
    except ZooError as exc:
        print(f"zoo: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("zoo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())

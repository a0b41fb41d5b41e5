"""The `zoo` command line: one sub-command per module, one error path for user mistakes.

Each command module exposes `register(subparsers)`, which adds its parser and sets `func` (taking the
parsed arguments and returning an exit status). Recipe keys can be overridden with `--set a.b=v` or
`--a.b v` on every command that takes a recipe.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from collections.abc import Sequence

from zoo import __version__
from zoo.commands.options import overrides_from_extras
from zoo.errors import ZooError

COMMAND_MODULES = [
    "zoo.commands.lm",
    "zoo.commands.catalog",
    "zoo.commands.glue",
    "zoo.commands.infer",
    "zoo.commands.leaderboard",
    "zoo.commands.demo",
]


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """The parsed command line, `--train.lr 3e-4` style recipe keys folded into `overrides`."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        if not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extras)}")
        args.overrides = list(args.overrides) + overrides_from_extras(extras)
    return args


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo",
        description="Pretrain, fine-tune and benchmark small language models from declarative recipes.",
    )
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    # a multi-process launch re-parses the ranks' command line with this same parser (zoo.train.launch)
    parser.set_defaults(parse_command_line=functools.partial(parse_command_line, parser))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse_command_line(parser, argv)
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

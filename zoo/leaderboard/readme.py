"""Leaderboard tables inside a README, between marker comments, regenerated in place.

A table goes between `<!-- zoo:leaderboard:NAME:start -->` and `<!-- zoo:leaderboard:NAME:end -->`
(NAME in zoo.leaderboard.render.SECTIONS). `zoo leaderboard --readme FILE` replaces what is between each
pair and leaves every other byte of FILE alone (line endings included); links in the tables are relative
to FILE's folder. `--check` names each marked table whose text differs from what the records give.
"""

from __future__ import annotations

import re
from pathlib import Path

from zoo.errors import ZooError
from zoo.leaderboard.load import Board
from zoo.leaderboard.render import SECTIONS, section
from zoo.leaderboard.text import Links, read_text_exact, write_if_changed

MARKER = re.compile(r"<!-- zoo:leaderboard:([A-Za-z0-9_-]+):(start|end) -->")


def marked_spans(text: str, source: str) -> dict[str, tuple[int, int]]:
    """Section name -> (start, end) offsets of the text between its start and end markers, in text order."""
    spans: dict[str, tuple[int, int]] = {}
    open_name, open_at = None, 0
    for match in MARKER.finditer(text):
        name, edge = match.groups()
        if name not in SECTIONS:
            raise ZooError(f"{source}: unknown leaderboard table {name!r} in a marker; known: {', '.join(SECTIONS)}")
        if edge == "start":
            if open_name is not None or name in spans:
                raise ZooError(f"{source}: marker {match.group(0)} {'repeated' if name in spans else 'nested'}")
            open_name, open_at = name, match.end()
        elif open_name != name:
            raise ZooError(f"{source}: {match.group(0)} has no start marker before it")
        else:
            spans[name], open_name = (open_at, match.start()), None
    if open_name is not None:
        raise ZooError(f"{source}: <!-- zoo:leaderboard:{open_name}:start --> has no end marker")
    return spans


def block_body(markdown: str) -> str:
    return "\n" + markdown.strip("\n") + "\n"


def readme_tables(text: str, board: Board, readme: Path) -> list[tuple[str, int, int, str]]:
    """(name, start, end, regenerated body) of each marked table of a README, in document order; links are
    relative to the README's folder."""
    spans = marked_spans(text, str(readme))
    if not spans:
        raise ZooError(f"{readme}: no leaderboard markers; put <!-- zoo:leaderboard:NAME:start --> and "
                       f"<!-- zoo:leaderboard:NAME:end --> where a table goes (NAME: {', '.join(SECTIONS)})")
    links = Links(readme.parent)
    return [(name, start, end, block_body(section(board, name, links, 4))) for name, (start, end) in spans.items()]


def update_readme_text(text: str, board: Board, readme: Path) -> str:
    """`text` with every marked table regenerated; bytes outside the markers are kept as they are."""
    pieces, last = [], 0
    for _, start, end, body in readme_tables(text, board, readme):
        pieces += [text[last:start], body]
        last = end
    return "".join([*pieces, text[last:]])


def stale_readme_tables(text: str, board: Board, readme: Path) -> list[str]:
    """The names of the marked tables whose text differs from what the records give."""
    return [name for name, start, end, body in readme_tables(text, board, readme) if text[start:end] != body]


def write_readme(board: Board, readme: Path) -> bool:
    """Regenerate the marked tables of `readme` in place; True if the file changed."""
    return write_if_changed(readme, update_readme_text(read_text_exact(readme), board, readme))

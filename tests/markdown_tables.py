"""Markdown tables as the tests read them: the rows of a section's pipe tables, links made absolute."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

LINK = re.compile(r"\[([^\]]*)\]\(([^)]*)\)")


def cell_text(text: str, base: Path) -> str:
    """A cell with each link as `text<absolute target>`: markdown links are relative to `base`, the app's
    are its file route (`/gradio_api/file=/abs/path`); web links stay as they are."""
    def target(match: re.Match) -> str:
        link = match.group(2)
        if link.startswith("/gradio_api/file="):
            path = Path(unquote(link.removeprefix("/gradio_api/file=")))
        elif "://" in link:
            return f"{match.group(1)}<{link}>"
        else:
            path = (base / unquote(link)).resolve()
        return f"{match.group(1)}<{path}>"

    return LINK.sub(target, text)


def markdown_rows(markdown: str, section: str) -> list[list[str]]:
    """The body rows of every pipe table in `## section` of a markdown document."""
    body = markdown.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[:\-| ]+\|", line):
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            rows.append(cells)
    headers = {tuple(rows[0])} if rows else set()
    return [row for row in rows if tuple(row) not in headers]

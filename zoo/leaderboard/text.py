"""Display text: numbers, durations and learning rates as table cells, file-safe slugs, relative links,
and the exact (byte-for-byte) reading and writing of the generated files.

Links are relative to the document that holds them, so they work on a git host's web view.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np

from zoo.errors import ZooError
from zoo.files import atomic_write

NONE = "—"


def number(value: float | None) -> float:
    """A typed record value as float; None (no number, or not a finite one) -> NaN."""
    return math.nan if value is None or isinstance(value, bool) else float(value)


def human_count(value: float) -> str:
    """4386178 -> '4.4M', 40960 -> '41.0K', 2.6e9 -> '2.6B'."""
    if not math.isfinite(value):
        return NONE
    for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if round(value / scale, 1) >= 1:
            return f"{value / scale:.1f}{suffix}"
    return f"{value:.0f}"


def duration(seconds: float) -> str:
    """45 -> '45s', 723 -> '12m 03s', 11100 -> '3h 05m', 183600 -> '2d 03h'."""
    if not math.isfinite(seconds):
        return NONE
    s = int(round(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def decimal(value: float, places: int) -> str:
    if math.isnan(value):
        return NONE
    return f"{value:,.{places}f}" if math.isfinite(value) else str(value)


def learning_rate(value: float) -> str:
    """3e-05 -> '3e-5', 2.5e-05 -> '2.5e-5'."""
    return np.format_float_scientific(value, trim="-", exp_digits=1)


def percent(value: float | None, scale: float = 100) -> str:
    """'81.1' from a fraction (scale 100) or a percentage (scale 1); '—' when there is no number."""
    return f"{scale * value:.1f}" if value is not None and math.isfinite(value) else NONE


def slug(text: str) -> str:
    """A file-name-safe form of a run id or model tag."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


@dataclass(frozen=True)
class Links:
    """Markdown links from one document's folder to files, relative so they work on a git host."""

    doc_dir: Path

    def to(self, target: Path) -> str:
        return quote(Path(os.path.relpath(Path(target).resolve(), self.doc_dir.resolve())).as_posix())

    def md(self, text: str, target: Path | None) -> str:
        return f"[{text}]({self.to(target)})" if target is not None else text


def read_text_exact(path: Path) -> str:
    """A file's text with its line endings untouched (no universal-newline translation)."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ZooError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ZooError(f"{path}: not UTF-8 text ({exc.reason})") from None


def write_if_changed(path: Path, text: str) -> bool:
    """Write `text` to `path` (atomically) unless it already holds exactly that; True if written."""
    if path.is_file() and read_text_exact(path) == text:
        return False
    atomic_write(path, text)
    return True

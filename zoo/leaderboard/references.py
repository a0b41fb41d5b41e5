"""Published reference rows: the data files under results/reference/*.yaml, read into typed rows.

A reference file has a `label` (the link text its rows show), a `split` (the GLUE split its scores are
on: test or dev) and two optional lists, in the file's order:

- `rows`: GLUE rows, one per model: `model`, optional `registry`, per task the published metrics in percent
  (the task's registry metric names, zoo.glue.tasks), and an optional `score`, the published GLUE score.
  Without `score` the table computes the GLUE average the way it does for zoo rows
  (zoo.leaderboard.glue_view.line_average), over the tasks whose every metric is given.
- `pretrain`: pretraining rows: `model`, `size` (the published parameter count as text: 4M, 137M),
  `objective` (mlm or clm), `corpus` (the zoo corpus whose table shows the row), optional `epochs`, and
  `perplexity` and `eval_loss` as published.

The numbers are shown as published and never ranked among zoo's runs: a file's note says how its corpora
and eval splits differ from zoo's.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.leaderboard.glue_view import GLUE_TASKS
from zoo.recipe.common import read_yaml

REFERENCE_DIR = "reference"
SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMB]?)")
SIZE_SCALE = {"": 1.0, "K": 1e3, "M": 1e6, "B": 1e9}


@dataclass(frozen=True)
class Reference:
    """Published GLUE numbers for one model (percent), from one data file under results/reference/."""

    model: str
    label: str
    split: str
    score: float | None  # the published GLUE score; None: the table computes the average
    tasks: dict[str, dict[str, float]]
    source_file: Path


@dataclass(frozen=True)
class LMReference:
    """A published pretraining result for one model, shown beside zoo's runs of its corpus."""

    model: str
    label: str
    size: str  # as published: '4M'
    params: float  # the size as a number, for sorting
    objective: str
    corpus: str
    epochs: float | None
    perplexity: float
    eval_loss: float
    source_file: Path


def required(row: dict[str, Any], key: str, path: Path) -> Any:
    """`row[key]`, or a one-line error naming the file, the row and the key."""
    if row.get(key) is None:
        raise ZooError(f"{path}: reference row {row.get('model', '?')!r} needs {key!r}")
    return row[key]


def finite(row: dict[str, Any], key: str, path: Path) -> float:
    value = required(row, key, path)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ZooError(f"{path}: reference row {row['model']!r}: {key} must be a number, not {value!r}")
    return float(value)


def parse_size(text: Any, path: Path) -> float:
    """'4M' -> 4e6, '137M' -> 1.37e8, '1.5B' -> 1.5e9."""
    match = SIZE.fullmatch(str(text).strip())
    if not match:
        raise ZooError(f"{path}: reference size {text!r} is not a count like 4M or 137M")
    return float(match.group(1)) * SIZE_SCALE[match.group(2)]


def glue_reference(row: dict[str, Any], data: dict[str, Any], path: Path) -> Reference:
    tasks = {task: {k: float(v) for k, v in metrics.items()} for task, metrics in row.items() if task in GLUE_TASKS}
    score = finite(row, "score", path) if row.get("score") is not None else None
    return Reference(model=str(required(row, "model", path)), label=str(data.get("label") or path.stem),
                     split=str(data.get("split") or "test"), score=score, tasks=tasks, source_file=path)


def lm_reference(row: dict[str, Any], data: dict[str, Any], path: Path) -> LMReference:
    size = str(required(row, "size", path))
    epochs = finite(row, "epochs", path) if row.get("epochs") is not None else None
    return LMReference(model=str(required(row, "model", path)), label=str(data.get("label") or path.stem), size=size,
                       params=parse_size(size, path), objective=str(required(row, "objective", path)).lower(),
                       corpus=str(required(row, "corpus", path)), epochs=epochs,
                       perplexity=finite(row, "perplexity", path), eval_loss=finite(row, "eval_loss", path),
                       source_file=path)


def reference_files(root: Path) -> list[tuple[Path, dict[str, Any]]]:
    return [(path, read_yaml(path)) for path in sorted((root / REFERENCE_DIR).glob("*.yaml"))]


def load_references(root: Path) -> list[Reference]:
    """Every GLUE row of every results/reference/*.yaml file, in file order."""
    return [glue_reference(row, data, path) for path, data in reference_files(root) for row in data.get("rows") or []]


def load_lm_references(root: Path) -> list[LMReference]:
    """Every pretraining row of every results/reference/*.yaml file, in file order."""
    return [lm_reference(row, data, path) for path, data in reference_files(root)
            for row in data.get("pretrain") or []]

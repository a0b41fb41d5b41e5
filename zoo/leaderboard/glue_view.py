"""GLUE aggregation for the tables: task columns, per-(model, task) grids, the line of each model, averages.

Conventions (the "why" behind the numbers):
- The cells of one (model, task, batch size, learning rate) are seeds of the same setting; their dev
  scores (`metrics.score`) and dev metrics are averaged over the seeds that finished, and that mean both
  fills the grid and selects the best setting (ties: smaller batch size, then smaller learning rate), so
  one lucky seed does not pick the setting. The recipe the model's config index (its `cfg` link,
  zoo.leaderboard.glue_index) lists for the task is that of the setting's best seed, the cell `zoo glue`
  names best in its summary. These rules are zoo.glue.selection's (`best_row`, `score_table`), the task
  score and GLUE average zoo.glue.metrics'; this module only displays them. The task columns
  and their metrics come from the GLUE task registry (zoo.glue.tasks).
- A task whose finished settings do not cover the classic grid (recipes/glue/classic.yaml: batch sizes x
  learning rates) is a partial grid: its best is the best of fewer settings, and the table marks it.
- GLUE average = the GLUE benchmark's score: the mean over the nine tasks of each task's score, where a
  task with two metrics (MRPC, QQP: F1/acc; STS-B: Pearson/Spearman; MNLI: matched/mismatched) scores the
  mean of the two. It reproduces the published scores of the reference rows (Turc et al. 2019) to within
  their rounding. A row missing tasks shows the mean over the tasks it has, labelled "(n/9 tasks)".

A grid cell here is a row as zoo.glue.selection takes it (a dict: run_id, batch_size, lr, seed, status,
score, dev, plus model, model_tag, task, record_path, recipe_path); zoo.leaderboard.load makes them.
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from zoo.glue.metrics import glue_average, partial_average, task_score
from zoo.glue.selection import best_row, score_table
from zoo.glue.tasks import TASKS, GlueTask
from zoo.leaderboard.text import NONE, percent
from zoo.recipe.glue import format_lr, load_glue_recipe

Cell = dict[str, Any]


@dataclass(frozen=True)
class TaskColumn:
    """How the GLUE table shows one task: its header and the dev metrics it lists, in GLUE's order."""

    task: str
    label: str
    metrics: tuple[str, ...]


METRIC_ABBREVIATIONS = {"mcc": "MCC", "accuracy": "acc", "f1": "F1", "pearson": "P", "spearman": "S",
                        "accuracy_m": "m", "accuracy_mm": "mm"}


def task_column(task: GlueTask) -> TaskColumn:
    """The task's column from the GLUE registry (which owns each task's metrics): 'MRPC (F1/acc)'."""
    metrics = tuple(task.dev_metric_names)
    short = "/".join(METRIC_ABBREVIATIONS.get(m, m) for m in metrics)
    return TaskColumn(task.key, f"{task.name} ({short})", metrics)


GLUE_COLUMNS = tuple(task_column(task) for task in TASKS.values())
GLUE_TASKS = {column.task: column for column in GLUE_COLUMNS}
PARTIAL_MARK = "†"


@functools.cache
def classic_settings() -> frozenset[tuple[int, float]]:
    """Every (batch size, lr) of the classic grid, the grid `zoo glue --grid` runs by default."""
    grid = load_glue_recipe().grid
    return frozenset((batch_size, lr) for batch_size in grid.batch_sizes for lr in grid.lrs)


# ---------------------------------------------------------------------------------------------- grids


@dataclass(frozen=True)
class Setting:
    """One (batch size, lr) of a task's grid: the mean dev score of its finished seeds (None: none) and counts."""

    batch_size: int
    lr: float
    score: float | None
    n_ok: int
    n_failed: int


@dataclass(frozen=True)
class TaskGrid:
    """The grid of one (model tag, task): its settings, and the best cell as zoo.glue.selection chooses it."""

    model: str
    settings: dict[tuple[int, float], Setting]  # sorted by (batch size, lr)
    best: Cell | None  # the best setting's best seed; None when no cell finished with a score
    best_dev: dict[str, float]  # the best setting's dev metrics, averaged over its finished seeds

    @property
    def best_setting(self) -> tuple[int, float] | None:
        return (self.best["batch_size"], self.best["lr"]) if self.best else None

    @property
    def finished_classic(self) -> int:
        """How many settings of the classic grid have a finished cell."""
        return sum(1 for key in classic_settings() if key in self.settings and self.settings[key].n_ok)

    @property
    def partial(self) -> bool:
        return self.finished_classic < len(classic_settings())

    @property
    def batch_sizes(self) -> list[int]:
        return sorted({batch_size for batch_size, _ in self.settings})

    @property
    def lrs(self) -> list[float]:
        return sorted({lr for _, lr in self.settings})


def mean_metrics(devs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the cells that report it as a finite number."""
    means = {}
    for key in sorted({key for dev in devs for key in dev}):
        values = [dev[key] for dev in devs if key in dev and math.isfinite(dev[key])]
        if values:
            means[key] = float(np.mean(values))
    return means


def task_grid(rows: list[Cell]) -> TaskGrid:
    """The grid of the cells of one (model tag, task); seed means and selection are zoo.glue.selection's."""
    table, best = score_table(rows), best_row(rows)
    counts = Counter((row["batch_size"], row["lr"], row["status"] == "ok") for row in rows)
    settings = {(bs, lr): Setting(bs, lr, table[str(bs)][format_lr(lr)], counts[bs, lr, True], counts[bs, lr, False])
                for bs, lr in sorted({(row["batch_size"], row["lr"]) for row in rows})}
    best_setting = (best["batch_size"], best["lr"]) if best else None
    best_dev = mean_metrics([row["dev"] for row in rows
                             if row["status"] == "ok" and (row["batch_size"], row["lr"]) == best_setting])
    return TaskGrid(rows[0]["model"], settings, best, best_dev)


def task_grids(cells: Iterable[Cell]) -> dict[str, dict[str, TaskGrid]]:
    """model tag -> task -> its grid, both sorted."""
    grouped: dict[tuple[str, str], list[Cell]] = {}
    for cell in cells:
        grouped.setdefault((cell["model_tag"], cell["task"]), []).append(cell)
    grids: dict[str, dict[str, TaskGrid]] = {}
    for tag, task in sorted(grouped):
        grids.setdefault(tag, {})[task] = task_grid(grouped[tag, task])
    return grids


# ---------------------------------------------------------------------------------------------- lines


def line_average(tasks: dict[str, dict[str, float]]) -> tuple[float | None, int]:
    """(GLUE average of a table row, number of tasks it covers): zoo.glue.metrics' GLUE average when all nine
    tasks are there, else its partial average. A task scores only when all its registry metrics are finite."""
    scores = {}
    for task, metrics in tasks.items():
        if task in GLUE_TASKS:
            score = task_score({key: metrics.get(key, math.nan) for key in GLUE_TASKS[task].metrics})
            if math.isfinite(score):
                scores[task] = score
    average = glue_average(scores)
    return (average if average is not None else partial_average(scores)), len(scores)


def task_cell(column: TaskColumn, metrics: dict[str, float], scale: float) -> str:
    """'81.1/71.1' in the column's metric order."""
    return "/".join(percent(metrics.get(key, math.nan), scale) for key in column.metrics)


def average_cell(average: float | None, count: int, scale: float) -> str:
    if count == 0:
        return NONE
    text = percent(average, scale)
    return text if count == len(GLUE_COLUMNS) else f"{text} ({count}/{len(GLUE_COLUMNS)} tasks)"


@dataclass
class GlueLine:
    """One model's row of the GLUE table before its model and cfg cells are linked."""

    tag: str  # zoo rows: the model tag of the grids; reference rows: the published model's name
    model: str  # zoo rows: what was fine-tuned (run id, registry name or hub id); references: ""
    tasks: dict[str, dict[str, float]]  # task -> metrics (fractions for zoo rows, percent for references)
    failed: set[str] = field(default_factory=set)
    partial: set[str] = field(default_factory=set)  # tasks whose best comes from a partial grid
    scale: float = 100
    published_score: float | None = None

    def score_cells(self) -> dict[str, str]:
        """The task columns and 'GLUE avg' of the row, as display text."""
        row = {}
        for column in GLUE_COLUMNS:
            if column.task in self.tasks:
                mark = PARTIAL_MARK if column.task in self.partial else ""
                row[column.label] = task_cell(column, self.tasks[column.task], self.scale) + mark
            else:
                row[column.label] = "failed" if column.task in self.failed else NONE
        if self.published_score is not None:
            row["GLUE avg"] = percent(self.published_score, scale=1)
        else:
            row["GLUE avg"] = average_cell(*line_average(self.tasks), self.scale)
        return row

    def rank(self) -> tuple[float, float]:
        """More tasks first, then the higher average."""
        average, count = line_average(self.tasks)
        return -count, -(average if average is not None else -math.inf)


def zoo_glue_lines(grids: dict[str, dict[str, TaskGrid]]) -> list[GlueLine]:
    """One line per fine-tuned model: the best setting per task, ranked by tasks covered then average."""
    lines = []
    for tag, by_task in grids.items():
        tasks = {task: grid.best_dev for task, grid in by_task.items() if grid.best is not None}
        failed = set(by_task) - set(tasks)
        partial = {task for task in tasks if by_task[task].partial}
        lines.append(GlueLine(tag, next(iter(by_task.values())).model, tasks, failed, partial))
    return sorted(lines, key=GlueLine.rank)

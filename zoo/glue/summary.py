"""A GLUE grid's summary: per task the best cell (zoo.glue.selection's rules) and the bs x lr score table.

`results/glue/<model tag>/summary.json` (`summary.smoke.json` for smoke grids) is rewritten after each
grid with the tasks it ran; the other tasks' entries are kept, and so are the cells of a task that an earlier
grid ran and this one did not plan (a grid over some batch sizes adds to the task, as the leaderboard does).
Nothing here imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.files import atomic_write
from zoo.glue.cell import Cell, read_cell_record
from zoo.glue.metrics import glue_average, partial_average
from zoo.glue.selection import best_row, score_table
from zoo.glue.tasks import TASKS
from zoo.record.schema import RECORD_FILE, GlueRecord
from zoo.record.store import now_iso, read_if_readable


def row_results(record: GlueRecord | None) -> dict[str, Any]:
    return {"status": record.status if record else "missing", "score": record.metrics.score if record else None,
            "dev": record.metrics.dev if record else {}}


def cell_row(cell: Cell) -> dict[str, Any]:
    """One line of a task's table: the cell's hyper-parameters, status and dev results."""
    t = cell.recipe.train
    return {"run_id": cell.run_id, "batch_size": t.batch_size, "lr": t.lr, "seed": t.seed,
            **row_results(read_cell_record(cell)), "record": str(Path(cell.task.key) / cell.run_id / RECORD_FILE)}


def earlier_rows(tag: str, smoke: bool, earlier_task: dict[str, Any], planned: set[str]) -> list[dict[str, Any]]:
    """The rows of an earlier summary's task that this grid did not plan, with their records read again."""
    root = summary_path(tag, smoke).parent
    return [{**row, **row_results(read_if_readable(root / row["record"], GlueRecord))}
            for row in earlier_task.get("rows", []) if row["run_id"] not in planned]


def task_summary(cells: list[Cell], earlier_task: dict[str, Any] | None = None) -> dict[str, Any]:
    """Best cell, bs x lr table and every cell's row for one task of a grid (plus the earlier grids' cells of the
    task that this one did not plan)."""
    rows = [cell_row(cell) for cell in cells]
    if earlier_task:
        rows += earlier_rows(cells[0].tag, cells[0].recipe.smoke, earlier_task, {c.run_id for c in cells})
    statuses = [r["status"] for r in rows]
    return {
        "cells": {s: statuses.count(s) for s in ("ok", "failed", "running", "missing") if statuses.count(s)},
        "best": best_row(rows),
        "table": score_table(rows),
        "epochs": cells[0].recipe.train.epochs,
        "max_length": cells[0].recipe.task.max_length,
        "rows": rows,
    }


def summary_path(tag: str, smoke: bool) -> Path:
    return paths.results_dir() / "glue" / tag / ("summary.smoke.json" if smoke else "summary.json")


def summarize(cells: list[Cell], model: str, earlier_tasks: dict[str, Any] | None = None) -> dict[str, Any]:
    """Per task of `cells` (plus `earlier_tasks` for the others): best cell and bs x lr table."""
    tasks = dict(earlier_tasks or {})
    for key in TASKS:
        of_task = [c for c in cells if c.task.key == key]
        if of_task:
            tasks[key] = task_summary(of_task, tasks.get(key))
    scores = {key: s["best"]["setting_score"] for key, s in tasks.items() if s.get("best")}
    return {"model": model, "model_tag": cells[0].tag, "smoke": cells[0].recipe.smoke, "updated_at": now_iso(),
            "selection": "per task the (batch size, lr) with the highest dev score (last epoch) averaged over "
                         "seeds, then its best seed; ties: smaller batch size, then lr, then seed",
            "glue_average": glue_average(scores), "average_of_tasks_run": partial_average(scores),
            "tasks": {key: tasks[key] for key in TASKS if key in tasks}}


def write_summary(cells: list[Cell], model: str) -> dict[str, Any]:
    """Update results/glue/<tag>/summary.json with the tasks of this grid (other tasks are kept)."""
    path = summary_path(cells[0].tag, cells[0].recipe.smoke)
    earlier = json.loads(path.read_text(encoding="utf-8")).get("tasks", {}) if path.is_file() else {}
    summary = summarize(cells, model, earlier)
    atomic_write(path, json.dumps(summary, indent=2) + "\n")
    return summary


def best_cells(cells: list[Cell], summary: dict[str, Any]) -> dict[str, Cell]:
    """task -> the planned cell the summary chose as best."""
    by_id = {c.run_id: c for c in cells}
    chosen = {}
    for key, entry in summary["tasks"].items():
        best = entry.get("best")
        if best and best["run_id"] in by_id:
            chosen[key] = by_id[best["run_id"]]
    return chosen



"""GLUE selection rules: which cell of a task's grid is reported, and the grid's mean dev scores.

Torch-free, so that the leaderboard (and anything else that only reads records) can apply the same
rules as the grid's summary (zoo.glue.grid) without importing the training stack.

A row is a plain dict for one cell of one task, with at least the keys `run_id`, `batch_size`, `lr`,
`seed`, `status` ("ok", "failed", "missing") and `score` (the cell's dev score, None unless finite);
`dev` and any other keys ride along untouched. The cells of one (batch size, lr) are seeds of the same
setting: a setting is judged by the mean score of its seeds that finished, so one lucky seed does not
pick the setting.
"""

from __future__ import annotations

from typing import Any

from zoo.recipe.glue import format_lr


def best_row(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best cell on dev: first the (batch size, lr) setting with the highest mean score over its
    seeds, then that setting's best seed. Ties go to the smaller batch size, then lr, then seed."""
    ok = [r for r in rows if r["status"] == "ok" and r["score"] is not None]
    if not ok:
        return None
    settings: dict[tuple[int, float], list[dict[str, Any]]] = {}
    for row in ok:
        settings.setdefault((row["batch_size"], row["lr"]), []).append(row)

    def mean(cells: list[dict[str, Any]]) -> float:
        return sum(c["score"] for c in cells) / len(cells)

    (_, chosen) = min(settings.items(), key=lambda item: (-mean(item[1]), item[0][0], item[0][1]))
    best = min(chosen, key=lambda r: (-r["score"], r["seed"], r["run_id"]))
    return {**best, "setting_score": mean(chosen), "setting_seeds": len(chosen)}


def score_table(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """{batch size: {lr: mean dev score over the seeds that finished (None: none did)}}."""
    table: dict[str, dict[str, float | None]] = {}
    for bs in sorted({r["batch_size"] for r in rows}):
        table[str(bs)] = {}
        for lr in sorted({r["lr"] for r in rows}):
            scores = [r["score"] for r in rows if r["batch_size"] == bs and r["lr"] == lr
                      and r["status"] == "ok" and r["score"] is not None]
            table[str(bs)][format_lr(lr)] = sum(scores) / len(scores) if scores else None
    return table

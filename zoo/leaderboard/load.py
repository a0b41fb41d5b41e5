"""Records -> rows: the finished run records under results/, read through zoo.record.store, as table rows.

LM runs (pretrain, finetune) become one pandas frame of raw values (LM_COLUMNS); GLUE cells become rows
as zoo.glue.selection takes them, grouped into grids by zoo.leaderboard.glue_view; the published
reference rows come from results/reference/*.yaml (zoo.leaderboard.references). All of it is loaded once
into a `Board`, which also knows where each generated file goes. Every finished LM run is loaded; which
of them the tables list (the best run of each model and corpus) is zoo.leaderboard.lm_view's rule.

Conventions: smoke runs stay off unless asked for. A run is smoke when its record says `smoke: true`,
decided once when the record is written (zoo.recipe.common.is_smoke: marked smoke, a recipe that plans
fewer than SMOKE_MAX_STEPS optimizer steps (`train.max_steps`), or a GLUE cell trained or evaluated on a
subset of its task), or for a record of schema version 1 by zoo.record.store when it is read. Failed runs
never show a number: their cells say "failed". Records still running (no final status) are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from zoo.errors import ZooError
from zoo.leaderboard.glue_view import GLUE_TASKS, Cell, TaskGrid, task_grids
from zoo.leaderboard.references import LMReference, Reference, load_lm_references, load_references
from zoo.leaderboard.text import number, slug
from zoo.record.schema import GlueRecord, LMRecord, Record
from zoo.record.store import iter_records

LEADERBOARD_FILE = "LEADERBOARD.md"
PLOTS_DIR = "plots"
GLUE_DIR = "glue"
INDEX_FILE = "INDEX.md"


def recipe_path(run_json: Path, record: Record) -> Path | None:
    """The run's resolved recipe next to its run.json, if the file is there."""
    candidate = run_json.parent / record.recipe
    return candidate if candidate.is_file() else None


def finished_records(kind: str, include_smoke: bool) -> Iterator[tuple[Path, Record]]:
    """(run.json, record) of each finished (ok or failed) record of `kind`, smoke runs only if asked for."""
    for path, record in iter_records(kind):
        if record.finished and (include_smoke or not record.smoke):
            yield path, record


# ---------------------------------------------------------------------------------------------- LM runs


LM_COLUMNS = ["run_id", "kind", "name", "model", "corpus", "objective", "status", "reason", "smoke", "params",
              "tokens_seen", "wall_time_s", "perplexity", "eval_loss", "before_perplexity", "device",
              "world_size", "history", "record_path", "recipe_path"]


def lm_row(path: Path, record: LMRecord) -> dict[str, Any]:
    """One pretraining / continued-training run as raw values (NaN where there is no number)."""
    return {
        "run_id": record.run_id or path.parent.name,
        "kind": record.kind,
        "name": record.name,
        "model": record.model,
        "corpus": record.corpus,
        "objective": record.objective,
        "status": record.status,
        "reason": record.reason or "",
        "smoke": bool(record.smoke),
        "params": number(record.params),
        "tokens_seen": number(record.tokens_seen),
        "wall_time_s": number(record.wall_time_s),
        "perplexity": number(record.metrics.perplexity),
        "eval_loss": number(record.metrics.eval_loss),
        "before_perplexity": number(record.before.perplexity if record.before else None),
        "device": record.device,
        "world_size": record.world_size,
        "history": list(record.history),
        "record_path": path,
        "recipe_path": recipe_path(path, record),
    }


def load_lm_runs(include_smoke: bool) -> pd.DataFrame:
    rows = [lm_row(path, record) for kind in ("pretrain", "finetune")
            for path, record in finished_records(kind, include_smoke) if isinstance(record, LMRecord)]
    return pd.DataFrame(rows, columns=LM_COLUMNS)


def display_name(run: dict[str, Any]) -> str:
    """The recipe name without its default '-<corpus>' suffix: 'bert-tiny', or a custom 'bert-tiny-wwm'."""
    name, corpus = run["name"] or run["model"], run["corpus"]
    return name[: -len(corpus) - 1] if corpus and name.endswith(f"-{corpus}") else name


def finite_points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the history entries holding a finite `key`, one point per step."""
    points: dict[float, float] = {}
    for entry in history:
        value, step = entry.get(key), entry.get("step")
        if isinstance(value, (int, float)) and isinstance(step, (int, float)) and math.isfinite(value):
            points[float(step)] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def has_loss_curve(history: Sequence[dict[str, Any]]) -> bool:
    return any(finite_points(history, key)[0] for key in ("loss", "eval_loss"))


# ---------------------------------------------------------------------------------------------- GLUE cells


def glue_row(path: Path, record: GlueRecord) -> Cell:
    """One GLUE grid cell, as a row of zoo.glue.selection (score None unless finite; metrics as fractions)."""
    if record.task not in GLUE_TASKS:
        raise ZooError(f"{path}: unknown GLUE task {record.task!r}; known: {', '.join(GLUE_TASKS)}")
    if record.hparams is None:
        raise ZooError(f"{path}: GLUE record needs hparams.batch_size and hparams.lr")
    score = record.metrics.score
    return {
        "run_id": record.run_id or path.parent.name,
        "model": record.model,
        "model_tag": record.model_tag or record.model,
        "task": record.task,
        "status": record.status,
        "batch_size": int(record.hparams.batch_size),
        "lr": float(record.hparams.lr),
        "seed": int(record.hparams.seed),
        "score": score if score is not None and math.isfinite(score) else None,
        "dev": {key: number(value) for key, value in record.metrics.dev.items()},
        "record_path": path,
        "recipe_path": recipe_path(path, record),
    }


def load_glue_cells(include_smoke: bool) -> list[Cell]:
    return [glue_row(path, record) for path, record in finished_records("glue", include_smoke)
            if isinstance(record, GlueRecord)]


# ---------------------------------------------------------------------------------------------- the board


@dataclass(frozen=True)
class Board:
    """Everything the tables are made of, loaded once, and where each generated file goes."""

    root: Path
    lm: pd.DataFrame
    cells: list[Cell]  # GLUE grid cells, rows of glue_row
    grids: dict[str, dict[str, TaskGrid]]  # model tag -> task -> grid
    references: list[Reference]  # published GLUE rows
    lm_references: list[LMReference] = field(default_factory=list)  # published pretraining rows
    plots: bool = True
    include_smoke: bool = False
    all_runs: bool = False  # list every LM run, not only the best of each model and corpus (lm_view)

    def loss_curve_path(self, run: dict[str, Any]) -> Path | None:
        """Where an LM run's loss-curve PNG goes, or None when plots are off or there is no curve."""
        if not self.plots or not has_loss_curve(run["history"]):
            return None
        return self.root / PLOTS_DIR / f"{slug(run['kind'])}-{slug(run['run_id'])}.png"

    def heatmap_path(self, model_tag: str, task: str) -> Path | None:
        return self.root / PLOTS_DIR / f"glue-{slug(model_tag)}-{task}.png" if self.plots else None

    def index_path(self, model_tag: str) -> Path:
        """The model's GLUE config index, beside its cells: results/glue/<model-tag>/INDEX.md."""
        return self.root / GLUE_DIR / slug(model_tag) / INDEX_FILE


def load_board(root: Path, include_smoke: bool = False, with_plots: bool = True, all_runs: bool = False) -> Board:
    """Read every finished record under `root` (the results directory, `ZOO_RESULTS_DIR`) and the published
    reference rows under `root`/reference/."""
    cells = load_glue_cells(include_smoke)
    return Board(root=root, lm=load_lm_runs(include_smoke), cells=cells, grids=task_grids(cells),
                 references=load_references(root), lm_references=load_lm_references(root), plots=with_plots,
                 include_smoke=include_smoke, all_runs=all_runs)

"""Leaderboards derived from run records: records -> rows -> display frames -> one renderer.

`zoo leaderboard` reads every finished record under results/ and writes results/LEADERBOARD.md (with
PNG figures under results/plots/); `--readme FILE` also replaces the tables between the marker comments
`<!-- zoo:leaderboard:NAME:start -->` / `<!-- zoo:leaderboard:NAME:end -->` (NAME in SECTIONS) and
leaves every other byte of FILE alone. Nothing here is edited by hand; `render_table` is the only
function that turns rows into a markdown table.

Conventions (the "why" behind the numbers):
- Smoke runs stay off unless asked for: a record with `smoke: true`, a recipe that plans fewer than
  SMOKE_MAX_STEPS optimizer steps (`train.max_steps`), or a GLUE cell trained or evaluated on a subset
  of its task is a smoke run. Failed runs never show a number: their cells say "failed". Records still
  running (no final status) are skipped.
- GLUE: the cells of one (model, task, batch size, learning rate) are seeds of the same setting; their
  dev scores (`metrics.score`) and dev metrics are averaged over the seeds that finished, and that mean
  both fills the grid and selects the best setting (ties: smaller batch size, then smaller learning rate),
  so one lucky seed does not pick the setting. Its `cfg` link is the recipe of the setting's best seed,
  the cell `zoo glue` names best in its summary. These rules are zoo.glue.grid's (`best_row`,
  `score_table`), the task score and GLUE average zoo.glue.metrics'; this module only displays them.
  The task columns and their metrics come from the GLUE task registry (zoo.glue.tasks).
- GLUE average = the GLUE benchmark's score: the mean over the nine tasks of each task's score, where a
  task with two metrics (MRPC, QQP: F1/acc; STS-B: Pearson/Spearman; MNLI: matched/mismatched) scores the
  mean of the two. It reproduces the published scores of the reference rows (Turc et al. 2019) to
  within their rounding. A row missing tasks shows the mean over the tasks it has, labelled "(n/9 tasks)".
- Links are relative to the document that holds them, so they work on a git host's web view.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from tabulate import tabulate

from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue.metrics import glue_average, partial_average, task_score
from zoo.glue.tasks import TASKS, GlueTask
from zoo.leaderboard import figures as plots
from zoo.recipe.common import read_yaml
from zoo.recipe.glue import format_lr
from zoo.record.store import RECIPE_FILE, RECORD_FILE, iter_records

LEADERBOARD_FILE = "LEADERBOARD.md"
PLOTS_DIR = "plots"
REFERENCE_DIR = "reference"
SMOKE_MAX_STEPS = 100
SECTIONS = ("pretrain", "finetune", "glue", "grids")
MARKER = re.compile(r"<!-- zoo:leaderboard:([A-Za-z0-9_-]+):(start|end) -->")
NONE = "—"
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as opposed to a local path
FINISHED = ("ok", "failed")


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

# ---------------------------------------------------------------------------------------------- numbers


def number(value: Any) -> float:
    """A record value as float; None, text and the "nan"/"inf" strings of non-finite values -> NaN/inf."""
    if isinstance(value, bool) or value is None:
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


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


def slug(text: str) -> str:
    """A file-name-safe form of a run id or model tag."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "_"


# ---------------------------------------------------------------------------------------------- records


def recipe_path(run_json: Path, record: dict[str, Any]) -> Path | None:
    """The run's resolved recipe next to its run.json, if the file is there."""
    candidate = run_json.parent / str(record.get("recipe") or RECIPE_FILE)
    return candidate if candidate.is_file() else None


def is_smoke(record: dict[str, Any], recipe: dict[str, Any]) -> bool:
    """Marked smoke, planned for fewer than SMOKE_MAX_STEPS optimizer steps, or (GLUE) trained or
    evaluated on a subset of the task (`task.max_train_examples` / `task.max_eval_examples`)."""
    if record.get("smoke"):
        return True
    train, task = recipe.get("train"), recipe.get("task")
    max_steps = train.get("max_steps") if isinstance(train, dict) else None
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and 0 < max_steps < SMOKE_MAX_STEPS:
        return True
    return isinstance(task, dict) and any(task.get(key) is not None
                                          for key in ("max_train_examples", "max_eval_examples"))


def finished_records(kind: str, include_smoke: bool) -> Iterable[tuple[Path, dict[str, Any], Path | None]]:
    """(run.json, record, recipe path) of each finished (ok or failed) record of `kind`."""
    for path, record in iter_records(kind):
        if record.get("status") not in FINISHED:
            continue
        recipe = recipe_path(path, record)
        if include_smoke or not is_smoke(record, read_yaml(recipe) if recipe else {}):
            yield path, record, recipe


LM_COLUMNS = ["run_id", "kind", "name", "model", "corpus", "objective", "status", "reason", "params",
              "tokens_seen", "wall_time_s", "perplexity", "eval_loss", "before_perplexity", "device",
              "world_size", "history", "record_path", "recipe_path"]


def lm_row(path: Path, record: dict[str, Any], recipe: Path | None) -> dict[str, Any]:
    """One pretraining / continued-training run as raw values."""
    metrics = record.get("metrics") or {}
    hardware = (record.get("environment") or {}).get("hardware") or {}
    launch = record.get("launch") or {}
    return {
        "run_id": str(record.get("run_id") or path.parent.name),
        "kind": str(record.get("kind") or path.parent.parent.name),
        "name": str(record.get("name") or ""),
        "model": str(record.get("model") or ""),
        "corpus": str(record.get("corpus") or ""),
        "objective": str(record.get("objective") or ""),
        "status": record["status"],
        "reason": str(record.get("reason") or ""),
        "params": number(record.get("params")),
        "tokens_seen": number(record.get("tokens_seen")),
        "wall_time_s": number(record.get("wall_time_s")),
        "perplexity": number(metrics.get("perplexity")),
        "eval_loss": number(metrics.get("eval_loss")),
        "before_perplexity": number((record.get("before") or {}).get("perplexity")),
        "device": str(hardware.get("device") or ""),
        "world_size": int(world_size) if math.isfinite(world_size := number(launch.get("world_size"))) else 1,
        "history": list(record.get("history") or []),
        "record_path": path,
        "recipe_path": recipe,
    }


def load_lm_runs(include_smoke: bool) -> pd.DataFrame:
    rows = [lm_row(*item) for kind in ("pretrain", "finetune") for item in finished_records(kind, include_smoke)]
    return pd.DataFrame(rows, columns=LM_COLUMNS)


def glue_row(path: Path, record: dict[str, Any], recipe: Path | None) -> dict[str, Any]:
    """One GLUE grid cell, as a row of zoo.glue.grid (score None unless finite; metrics as fractions)."""
    task = str(record.get("task") or "")
    if task not in GLUE_TASKS:
        raise ZooError(f"{path}: unknown GLUE task {task!r}; known: {', '.join(GLUE_TASKS)}")
    hparams = record.get("hparams") or {}
    batch_size, lr = number(hparams.get("batch_size")), number(hparams.get("lr"))
    if not (math.isfinite(batch_size) and math.isfinite(lr)):
        raise ZooError(f"{path}: GLUE record needs hparams.batch_size and hparams.lr")
    metrics = record.get("metrics") or {}
    dev = metrics.get("dev") or {}
    score = number(metrics.get("score"))
    model = str(record.get("model") or "")
    seed = hparams.get("seed")
    return {
        "run_id": str(record.get("run_id") or path.parent.name),
        "model": model,
        "model_tag": str(record.get("model_tag") or model),
        "task": task,
        "status": record["status"],
        "batch_size": int(batch_size),
        "lr": lr,
        "seed": int(seed) if isinstance(seed, int) else -1,
        "score": score if math.isfinite(score) else None,
        "dev": {key: number(value) for key, value in dev.items()} if isinstance(dev, dict) else {},
        "recipe_path": recipe,
    }


@dataclass(frozen=True)
class Reference:
    """Published GLUE numbers for one model (percent), from one data file under results/reference/."""

    model: str
    label: str
    split: str
    score: float
    tasks: dict[str, dict[str, float]]
    source_file: Path


def load_references(root: Path) -> list[Reference]:
    """Every row of every results/reference/*.yaml file, in file order."""
    references = []
    for path in sorted((root / REFERENCE_DIR).glob("*.yaml")):
        data = read_yaml(path)
        for row in data.get("rows") or []:
            tasks = {task: {k: float(v) for k, v in metrics.items()}
                     for task, metrics in row.items() if task in GLUE_TASKS}
            references.append(Reference(model=str(row["model"]), label=str(data.get("label") or path.stem),
                                        split=str(data.get("split") or "test"), score=float(row["score"]),
                                        tasks=tasks, source_file=path))
    return references


# ---------------------------------------------------------------------------------------------- GLUE grids


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
    """The grid of one (model tag, task): its settings, and the best cell as zoo.glue.grid chooses it."""

    model: str
    settings: dict[tuple[int, float], Setting]  # sorted by (batch size, lr)
    best: dict[str, Any] | None  # the best setting's best seed; None when no cell finished with a score
    best_dev: dict[str, float]  # the best setting's dev metrics, averaged over its finished seeds

    @property
    def best_setting(self) -> tuple[int, float] | None:
        return (self.best["batch_size"], self.best["lr"]) if self.best else None

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


def task_grid(rows: list[dict[str, Any]]) -> TaskGrid:
    """The grid of the cells of one (model tag, task); seed means and selection are zoo.glue.grid's."""
    from zoo.glue.grid import best_row, score_table  # imports torch and transformers: only when there are cells

    table, best = score_table(rows), best_row(rows)
    counts = Counter((row["batch_size"], row["lr"], row["status"] == "ok") for row in rows)
    settings = {(bs, lr): Setting(bs, lr, table[str(bs)][format_lr(lr)], counts[bs, lr, True], counts[bs, lr, False])
                for bs, lr in sorted({(row["batch_size"], row["lr"]) for row in rows})}
    best_setting = (best["batch_size"], best["lr"]) if best else None
    best_dev = mean_metrics([row["dev"] for row in rows
                             if row["status"] == "ok" and (row["batch_size"], row["lr"]) == best_setting])
    return TaskGrid(rows[0]["model"], settings, best, best_dev)


def task_grids(cells: Iterable[dict[str, Any]]) -> dict[str, dict[str, TaskGrid]]:
    """model tag -> task -> its grid, both sorted."""
    grouped: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for cell in cells:
        grouped.setdefault((cell["model_tag"], cell["task"]), []).append(cell)
    grids: dict[str, dict[str, TaskGrid]] = {}
    for tag, task in sorted(grouped):
        grids.setdefault(tag, {})[task] = task_grid(grouped[tag, task])
    return grids


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


@dataclass(frozen=True)
class Board:
    """Everything the tables are made of, loaded once."""

    root: Path
    lm: pd.DataFrame
    cells: list[dict[str, Any]]  # GLUE grid cells, rows of glue_row
    grids: dict[str, dict[str, TaskGrid]]  # model tag -> task -> grid
    references: list[Reference]
    plots: bool = True
    include_smoke: bool = False


def load_board(root: Path, include_smoke: bool = False, with_plots: bool = True) -> Board:
    """Read every finished record under `root` (the results directory, `ZOO_RESULTS_DIR`)."""
    cells = [glue_row(*item) for item in finished_records("glue", include_smoke)]
    return Board(root=root, lm=load_lm_runs(include_smoke), cells=cells, grids=task_grids(cells),
                 references=load_references(root), plots=with_plots, include_smoke=include_smoke)


# ---------------------------------------------------------------------------------------------- rendering


def render_table(frame: pd.DataFrame, right: Sequence[str] = ()) -> str:
    """The one table renderer: a frame of display strings -> a markdown (pipe) table.

    Columns named in `right` are right-aligned (numbers); `|` inside a cell is escaped.
    """
    def escape(text: Any) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    align = ["right" if column in right else "left" for column in frame.columns]
    rows = [[escape(value) for value in row] for row in frame.itertuples(index=False)]
    return tabulate(rows, headers=[escape(c) for c in frame.columns], tablefmt="pipe",
                    disable_numparse=True, colalign=align)


@dataclass(frozen=True)
class Links:
    """Markdown links from one document's folder to files, relative so they work on a git host."""

    doc_dir: Path

    def to(self, target: Path) -> str:
        return quote(Path(os.path.relpath(Path(target).resolve(), self.doc_dir.resolve())).as_posix())

    def md(self, text: str, target: Path | None) -> str:
        return f"[{text}]({self.to(target)})" if target is not None else text


def loss_curve_path(board: Board, run: dict[str, Any]) -> Path | None:
    """Where the run's loss-curve PNG goes, or None when plots are off or there is no curve."""
    if not board.plots or not plots.has_loss_curve(run["history"]):
        return None
    return board.root / PLOTS_DIR / f"{slug(run['kind'])}-{slug(run['run_id'])}.png"


def heatmap_path(board: Board, model_tag: str, task: str) -> Path | None:
    return board.root / PLOTS_DIR / f"glue-{slug(model_tag)}-{task}.png" if board.plots else None


def display_name(run: dict[str, Any]) -> str:
    """The recipe name without its default '-<corpus>' suffix: 'bert-tiny', or a custom 'bert-tiny-wwm'."""
    name, corpus = run["name"] or run["model"], run["corpus"]
    return name[: -len(corpus) - 1] if corpus and name.endswith(f"-{corpus}") else name


def hardware(run: dict[str, Any]) -> str:
    device = run["device"] or NONE
    return f"{run['world_size']}× {device}" if run["world_size"] > 1 else device


def failed_cell(reason: str) -> str:
    """'failed (NonFiniteLoss)': a failure named by its reason's first word, never a number."""
    kind = reason.split(":", 1)[0].strip()
    return f"failed ({kind[:40]})" if kind else "failed"


def lm_line(board: Board, run: dict[str, Any], links: Links) -> dict[str, str]:
    """One table line of a pretraining or continued-training run."""
    ok = run["status"] == "ok"
    if not ok:
        perplexity = failed_cell(run["reason"])
    elif run["kind"] == "finetune" and math.isfinite(run["before_perplexity"]):
        perplexity = f"{decimal(run['before_perplexity'], 2)} → {decimal(run['perplexity'], 2)}"
    else:
        perplexity = decimal(run["perplexity"], 2)
    curve = loss_curve_path(board, run)
    return {
        "Model": links.md(display_name(run), run["record_path"]),
        "Size": human_count(run["params"]),
        "Objective": run["objective"].upper() or NONE,
        "Corpus": run["corpus"] or NONE,
        "Tokens seen": human_count(run["tokens_seen"]) if ok else NONE,
        "Perplexity": perplexity,
        "Eval loss": decimal(run["eval_loss"], 3) if ok else NONE,
        "Hardware": hardware(run),
        "Wall time": duration(run["wall_time_s"]),
        "Curve": links.md("png", curve) if curve else NONE,
        "cfg": links.md("cfg", run["recipe_path"]) if run["recipe_path"] else NONE,
    }


def lm_tables(board: Board, kind: str, links: Links, level: int) -> str:
    """One table per corpus (finished runs first, by objective then perplexity)."""
    runs = board.lm[board.lm["kind"] == kind].assign(failed=lambda f: f["status"] != "ok")
    if runs.empty:
        noun = "pretraining" if kind == "pretrain" else "continued-training"
        return f"_No {noun} runs recorded yet._"
    parts = []
    for corpus, group in runs.groupby("corpus", sort=True):
        ordered = group.sort_values(["failed", "objective", "perplexity", "run_id"], kind="mergesort")
        frame = pd.DataFrame([lm_line(board, run, links) for run in ordered.to_dict("records")])
        parts.append(f"{'#' * level} {corpus}\n\n"
                     + render_table(frame, right=["Size", "Tokens seen", "Perplexity", "Eval loss", "Wall time"]))
    note = ("Perplexity: exp(token-weighted mean NLL) on the held-out split; MLM and CLM perplexities are not "
            "comparable." if kind == "pretrain" else
            "Perplexity before → after continued training, on the same held-out split.")
    return "\n\n".join(parts) + f"\n\n{note}"


def percent(value: float | None, scale: float = 100) -> str:
    """'81.1' from a fraction (scale 100) or a percentage (scale 1); '—' when there is no number."""
    return f"{scale * value:.1f}" if value is not None and math.isfinite(value) else NONE


def task_cell(column: TaskColumn, metrics: dict[str, float], scale: float) -> str:
    """'81.1/71.1' in the column's metric order."""
    return "/".join(percent(metrics.get(key, math.nan), scale) for key in column.metrics)


def average_cell(average: float | None, count: int, scale: float) -> str:
    if count == 0:
        return NONE
    text = percent(average, scale)
    return text if count == len(GLUE_COLUMNS) else f"{text} ({count}/{len(GLUE_COLUMNS)} tasks)"


def model_link(board: Board, tag: str, model: str, links: Links) -> str:
    """A zoo run id links to its record; a registry model or hub id to its hub page; else plain text."""
    for candidate in (tag, model):
        for kind in ("pretrain", "finetune"):
            record = board.root / kind / candidate / RECORD_FILE
            if candidate and record.is_file():
                return links.md(tag, record)
    from zoo.model.registry import find_model_spec

    spec = find_model_spec(model)
    hub_id = spec.hub_id if spec else (model if HUB_ID.fullmatch(model) else "")
    return f"[{tag}](https://huggingface.co/{hub_id})" if hub_id else tag


@dataclass
class GlueLine:
    """One model's row of the GLUE table before formatting."""

    model: str
    split: str
    tasks: dict[str, dict[str, float]]  # task -> metrics (fractions for zoo rows, percent for references)
    failed: set[str]
    cfg: dict[str, Path]
    scale: float
    published_score: float | None = None

    def cells(self) -> dict[str, str]:
        row = {"Model": self.model, "Set": self.split}
        for column in GLUE_COLUMNS:
            if column.task in self.tasks:
                row[column.label] = task_cell(column, self.tasks[column.task], self.scale)
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


def zoo_glue_lines(board: Board, links: Links) -> list[GlueLine]:
    """One line per fine-tuned model: the best setting per task, ranked by tasks covered then average."""
    lines = []
    for tag, grids in board.grids.items():
        chosen = {task: grid.best for task, grid in grids.items() if grid.best is not None}
        tasks = {task: grids[task].best_dev for task in chosen}
        cfg = {task: best["recipe_path"] for task, best in chosen.items() if best["recipe_path"] is not None}
        failed = set(grids) - set(chosen)
        model = next(iter(grids.values())).model
        lines.append(GlueLine(model_link(board, tag, model, links), "dev", tasks, failed, cfg, scale=100))
    return sorted(lines, key=GlueLine.rank)


def reference_lines(board: Board, links: Links) -> list[GlueLine]:
    return [GlueLine(f"{ref.model} (reference)", f"{ref.split}, {links.md(ref.label, ref.source_file)}",
                     ref.tasks, set(), {}, scale=1, published_score=ref.score) for ref in board.references]


def glue_section(board: Board, links: Links, level: int) -> str:
    zoo_lines = zoo_glue_lines(board, links)
    rows = []
    for line in [*zoo_lines, *reference_lines(board, links)]:
        cfg = " ".join(links.md(task, path) for task, path in line.cfg.items()) if line.cfg else NONE
        rows.append({**line.cells(), "cfg": cfg})
    parts = [] if zoo_lines else ["_No GLUE runs recorded yet._"]
    if rows:
        labels = [c.label for c in GLUE_COLUMNS]
        parts.append(render_table(pd.DataFrame(rows), right=[*labels, "GLUE avg"]))
    parts.append(
        "Scores in %. zoo rows: dev set, the best batch size × learning rate of each task's grid (the seeds of "
        "a setting averaged). GLUE avg: mean over the nine tasks of each task's score, a two-metric task (MRPC, QQP, "
        "STS-B, MNLI m/mm) scoring the mean of its two; rows missing tasks average the tasks they have. "
        "Rows marked *reference* are published **test-set** numbers with their published score, for comparison "
        "only. `cfg` links each task's best-cell recipe (`zoo glue --recipe FILE` reruns it)."
    )
    return "\n\n".join(parts)


def grid_frame(grid: TaskGrid) -> pd.DataFrame:
    """Batch size (rows) x learning rate (columns) of mean dev scores; the best setting in bold."""
    rows = []
    for batch_size in grid.batch_sizes:
        row = {"batch size": str(batch_size)}
        for lr in grid.lrs:
            setting = grid.settings.get((batch_size, lr))
            row[f"lr {learning_rate(lr)}"] = grid_cell_text(setting, grid.best_setting) if setting else NONE
        rows.append(row)
    return pd.DataFrame(rows)


def grid_cell_text(setting: Setting, best: tuple[int, float] | None) -> str:
    if setting.n_ok == 0:
        return "failed"
    text = percent(setting.score)
    if best == (setting.batch_size, setting.lr):
        text = f"**{text}**"
    notes = [f"{setting.n_ok} seeds"] if setting.n_ok > 1 else []
    if setting.n_failed:
        notes.append(f"{setting.n_failed} failed")
    return f"{text} ({', '.join(notes)})" if notes else text


def grids_section(board: Board, links: Links, level: int) -> str:
    if not board.grids:
        return "_No GLUE grids recorded yet._"
    parts = []
    for tag, grids in board.grids.items():
        parts.append(f"{'#' * level} {tag}")
        for column in GLUE_COLUMNS:
            if column.task not in grids:
                continue
            heat = heatmap_path(board, tag, column.task)
            title = f"{'#' * (level + 1)} {tag} · {column.label}" + (f" · {links.md('heatmap', heat)}" if heat else "")
            frame = grid_frame(grids[column.task])
            parts.append(f"{title}\n\n{render_table(frame, right=list(frame.columns[1:]))}")
    parts.append("Mean dev score (%) per batch size × learning rate (`metrics.score` of the task); bold: the "
                 "setting the GLUE table uses.")
    return "\n\n".join(parts)


SECTION_BUILDERS: dict[str, Callable[[Board, Links, int], str]] = {
    "pretrain": lambda board, links, level: lm_tables(board, "pretrain", links, level),
    "finetune": lambda board, links, level: lm_tables(board, "finetune", links, level),
    "glue": glue_section,
    "grids": grids_section,
}
SECTION_TITLES = {"pretrain": "Pretraining", "finetune": "Continued training", "glue": "GLUE",
                  "grids": "GLUE hyper-parameter grids"}


def section(board: Board, name: str, links: Links, level: int) -> str:
    """The markdown of one named section (no heading of its own; sub-headings at `level`)."""
    return SECTION_BUILDERS[name](board, links, level).strip("\n")


def leaderboard_markdown(board: Board) -> str:
    """The whole of results/LEADERBOARD.md."""
    links = Links(board.root)
    smoke = ("Smoke runs are included (`--include-smoke`)." if board.include_smoke else
             "Smoke runs are left out (`zoo leaderboard --include-smoke` shows them).")
    head = ("# Leaderboard\n\n"
            "Generated by `zoo leaderboard` from the run records under `results/`; do not edit by hand. "
            f"{smoke} Failed runs show as failed, never as a number. Every `cfg` link is the resolved recipe "
            "of its run: `zoo pretrain --recipe FILE` (or `zoo finetune`, `zoo glue`) reproduces it.")
    body = [f"## {SECTION_TITLES[name]}\n\n{section(board, name, links, 3)}" for name in SECTIONS]
    return "\n\n".join([head, *body]) + "\n"


# ---------------------------------------------------------------------------------------------- README


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
    return [name for name, start, end, body in readme_tables(text, board, readme) if text[start:end] != body]


# ---------------------------------------------------------------------------------------------- outputs


@dataclass(frozen=True)
class PlotJob:
    path: Path
    draw: Callable[[Path], bool]


def plot_jobs(board: Board) -> list[PlotJob]:
    """Every figure the leaderboard links to."""
    jobs = []
    for run in board.lm.to_dict("records"):
        path = loss_curve_path(board, run)
        if path is not None:
            title = f"{display_name(run)} · {run['corpus']} · {run['run_id']}"
            jobs.append(PlotJob(path, lambda p, h=run["history"], t=title: plots.loss_curve(h, p, t)))
    for tag, grids in board.grids.items():
        for task, grid in grids.items():
            path = heatmap_path(board, tag, task)
            if path is not None:
                title = f"{tag} · {GLUE_TASKS[task].label}"
                jobs.append(PlotJob(path, lambda p, g=grid, t=title: draw_heatmap(g, p, t)))
    return jobs


def draw_heatmap(grid: TaskGrid, path: Path, title: str) -> bool:
    """The grid of one (model, task) as a heatmap, the setting the GLUE table uses framed."""
    scores = np.full((len(grid.batch_sizes), len(grid.lrs)), math.nan)
    failed = np.zeros(scores.shape, dtype=bool)
    for setting in grid.settings.values():
        at = grid.batch_sizes.index(setting.batch_size), grid.lrs.index(setting.lr)
        if setting.score is not None:
            scores[at] = 100 * setting.score
        failed[at] = setting.n_ok == 0
    best = grid.best_setting
    frame = (grid.batch_sizes.index(best[0]), grid.lrs.index(best[1])) if best else None
    return plots.heatmap(scores, grid.batch_sizes, [learning_rate(lr) for lr in grid.lrs], path, title, failed, frame)


def write_plots(board: Board) -> tuple[int, int]:
    """Draw every linked figure (rewriting only changed PNGs) and delete PNGs nothing links any more.

    Returns (figures written, stale figures removed).
    """
    jobs = plot_jobs(board)
    written = sum(job.draw(job.path) for job in jobs)
    keep = {job.path for job in jobs}
    stale = [p for p in sorted((board.root / PLOTS_DIR).glob("*.png")) if p not in keep]
    for path in stale:
        path.unlink()
    return written, len(stale)


def stale_leaderboard_tables(board: Board) -> list[str]:
    """Which sections of results/LEADERBOARD.md differ from what the records give ([] if up to date)."""
    path = board.root / LEADERBOARD_FILE
    expected = leaderboard_markdown(board)
    current = read_text_exact(path) if path.is_file() else ""
    if current == expected:
        return []
    links = Links(board.root)
    stale = [name for name in SECTIONS if section(board, name, links, 3) not in current]
    return stale or ["header"]


def check(board: Board, readme: Path | None) -> list[str]:
    """One message per stale table or missing figure; [] when everything is up to date."""
    lb = board.root / LEADERBOARD_FILE
    problems = [f"{lb}: table '{name}' is stale" for name in stale_leaderboard_tables(board)]
    problems += [f"{job.path}: figure missing" for job in plot_jobs(board) if not job.path.is_file()]
    if readme is not None:
        text = read_text_exact(readme)
        problems += [f"{readme}: table '{name}' is stale" for name in stale_readme_tables(text, board, readme)]
    return problems


def read_text_exact(path: Path) -> str:
    """A file's text with its line endings untouched (no universal-newline translation)."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise ZooError(f"{path}: no such file") from None
    except UnicodeDecodeError as exc:
        raise ZooError(f"{path}: not UTF-8 text ({exc.reason})") from None


def write_if_changed(path: Path, text: str) -> bool:
    if path.is_file() and read_text_exact(path) == text:
        return False
    atomic_write(path, text)
    return True


def write_leaderboard(board: Board) -> bool:
    """Write results/LEADERBOARD.md (and its figures when plots are on); True if the markdown changed."""
    if board.plots:
        write_plots(board)
    return write_if_changed(board.root / LEADERBOARD_FILE, leaderboard_markdown(board))


def write_readme(board: Board, readme: Path) -> bool:
    """Regenerate the marked tables of `readme` in place; True if the file changed."""
    return write_if_changed(readme, update_readme_text(read_text_exact(readme), board, readme))

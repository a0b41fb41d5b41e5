"""Leaderboards derived from run records: records -> pandas frames -> display frames -> one renderer.

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
  so one lucky seed does not pick the setting. Its `cfg` link is the recipe of its smallest-seed cell.
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
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pandas as pd
from tabulate import tabulate

from zoo import plots
from zoo.errors import ZooError
from zoo.glue.tasks import TASKS, GlueTask
from zoo.recipe import read_yaml
from zoo.records import RECIPE_FILE, RECORD_FILE, atomic_write, iter_records

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
GRID_KEYS = ["model_tag", "task", "batch_size", "lr"]

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


def read_recipe(path: Path | None) -> dict[str, Any]:
    return read_yaml(path) if path is not None else {}


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
        if include_smoke or not is_smoke(record, read_recipe(recipe)):
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


GLUE_CELL_COLUMNS = ["run_id", "model", "model_tag", "task", "status", "reason", "batch_size", "lr", "seed",
                     "score", "dev", "record_path", "recipe_path"]


def glue_row(path: Path, record: dict[str, Any], recipe: Path | None) -> dict[str, Any]:
    """One GLUE grid cell as raw values (metrics as fractions, like the record)."""
    task = str(record.get("task") or "")
    if task not in GLUE_TASKS:
        raise ZooError(f"{path}: unknown GLUE task {task!r}; known: {', '.join(GLUE_TASKS)}")
    hparams = record.get("hparams") or {}
    batch_size, lr = number(hparams.get("batch_size")), number(hparams.get("lr"))
    if not (math.isfinite(batch_size) and math.isfinite(lr)):
        raise ZooError(f"{path}: GLUE record needs hparams.batch_size and hparams.lr")
    metrics = record.get("metrics") or {}
    dev = metrics.get("dev") or {}
    model = str(record.get("model") or "")
    seed = hparams.get("seed")
    return {
        "run_id": str(record.get("run_id") or path.parent.name),
        "model": model,
        "model_tag": str(record.get("model_tag") or model),
        "task": task,
        "status": record["status"],
        "reason": str(record.get("reason") or ""),
        "batch_size": int(batch_size),
        "lr": lr,
        "seed": int(seed) if isinstance(seed, int) else -1,
        "score": number(metrics.get("score")),
        "dev": {key: number(value) for key, value in dev.items()} if isinstance(dev, dict) else {},
        "record_path": path,
        "recipe_path": recipe,
    }


def load_glue_cells(include_smoke: bool) -> pd.DataFrame:
    rows = [glue_row(*item) for item in finished_records("glue", include_smoke)]
    return pd.DataFrame(rows, columns=GLUE_CELL_COLUMNS)


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


@dataclass
class Board:
    """Everything the tables are made of, loaded once."""

    root: Path
    lm: pd.DataFrame
    cells: pd.DataFrame
    references: list[Reference]
    plots: bool = True
    include_smoke: bool = False
    grid: pd.DataFrame = field(init=False)

    def __post_init__(self) -> None:
        self.grid = grid_settings(self.cells)


def load_board(root: Path, include_smoke: bool = False, with_plots: bool = True) -> Board:
    """Read every finished record under `root` (the results directory, `ZOO_RESULTS_DIR`)."""
    return Board(root=root, lm=load_lm_runs(include_smoke), cells=load_glue_cells(include_smoke),
                 references=load_references(root), plots=with_plots, include_smoke=include_smoke)


# ---------------------------------------------------------------------------------------------- GLUE logic


def mean_metrics(devs: Sequence[dict[str, float]]) -> dict[str, float]:
    """Per metric, the mean over the cells that report it as a finite number."""
    keys = sorted({key for dev in devs for key in dev})
    means = {}
    for key in keys:
        values = [dev[key] for dev in devs if key in dev and math.isfinite(dev[key])]
        if values:
            means[key] = float(np.mean(values))
    return means


def grid_setting(key: tuple[Any, ...], group: pd.DataFrame) -> dict[str, Any]:
    """One (model, task, batch size, lr): seeds that finished averaged, failures counted."""
    ok = sorted((row for row in group.to_dict("records") if row["status"] == "ok"),
                key=lambda row: (row["seed"], row["run_id"]))
    scores = [row["score"] for row in ok if math.isfinite(row["score"])]
    return {
        **dict(zip(GRID_KEYS, key)),
        "score": float(np.mean(scores)) if scores else math.nan,
        "n_ok": len(ok),
        "n_failed": len(group) - len(ok),
        "dev": mean_metrics([row["dev"] for row in ok]),
        "recipe_path": ok[0]["recipe_path"] if ok else None,
    }


def grid_settings(cells: pd.DataFrame) -> pd.DataFrame:
    """One row per (model_tag, task, batch_size, lr), seeds averaged."""
    rows = [grid_setting(key, group) for key, group in cells.groupby(GRID_KEYS, sort=True)]
    return pd.DataFrame(rows, columns=[*GRID_KEYS, "score", "n_ok", "n_failed", "dev", "recipe_path"])


def best_settings(grid: pd.DataFrame) -> pd.DataFrame:
    """The best setting per (model_tag, task): highest mean dev score, then smaller batch size and lr."""
    finished = grid[(grid["n_ok"] > 0) & grid["score"].notna()]
    ranked = finished.sort_values(["score", "batch_size", "lr"], ascending=[False, True, True], kind="mergesort")
    return ranked.drop_duplicates(["model_tag", "task"], keep="first").set_index(["model_tag", "task"])


def best_cell(best: pd.DataFrame, model_tag: str, task: str) -> tuple[int, float] | None:
    """(batch size, lr) of the best setting of (model_tag, task), or None when every cell failed."""
    if (model_tag, task) not in best.index:
        return None
    chosen = best.loc[(model_tag, task)]
    return int(chosen["batch_size"]), float(chosen["lr"])


def task_score(task: str, metrics: dict[str, float]) -> float:
    """GLUE's per-task score: the mean of the task's metrics (NaN if one is missing)."""
    values = [metrics.get(key, math.nan) for key in GLUE_TASKS[task].metrics]
    return float(np.mean(values)) if all(math.isfinite(v) for v in values) else math.nan


def glue_average(tasks: dict[str, dict[str, float]]) -> tuple[float, int]:
    """(mean of the per-task scores of the tasks present, how many tasks that is)."""
    scores = [task_score(task, metrics) for task, metrics in tasks.items() if task in GLUE_TASKS]
    scores = [s for s in scores if math.isfinite(s)]
    return (float(np.mean(scores)) if scores else math.nan), len(scores)


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


def pct(value: float) -> str:
    return NONE if not math.isfinite(value) else f"{100 * value:.1f}"


def task_cell(column: TaskColumn, metrics: dict[str, float], scale: float) -> str:
    """'81.1/71.1' in the column's metric order; metrics given as fractions (scale 100) or percent (1)."""
    return "/".join(NONE if not math.isfinite(metrics.get(k, math.nan)) else f"{scale * metrics[k]:.1f}"
                    for k in column.metrics)


def average_cell(average: float, count: int, scale: float) -> str:
    if count == 0:
        return NONE
    text = f"{scale * average:.1f}"
    return text if count == len(GLUE_COLUMNS) else f"{text} ({count}/{len(GLUE_COLUMNS)} tasks)"


def model_link(board: Board, tag: str, model: str, links: Links) -> str:
    """A zoo run id links to its record; a registry model or hub id to its hub page; else plain text."""
    for candidate in (tag, model):
        for kind in ("pretrain", "finetune"):
            record = board.root / kind / candidate / RECORD_FILE
            if candidate and record.is_file():
                return links.md(tag, record)
    from zoo.models import find_model_spec

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
        average, count = glue_average(self.tasks)
        if self.published_score is not None:
            row["GLUE avg"] = f"{self.published_score:.1f}"
        else:
            row["GLUE avg"] = average_cell(average, count, self.scale)
        return row

    def rank(self) -> tuple[float, float]:
        average, count = glue_average(self.tasks)
        return -count, -(average if math.isfinite(average) else -math.inf)


def zoo_glue_lines(board: Board, links: Links) -> list[GlueLine]:
    """One line per fine-tuned model: the best setting per task, ranked by tasks covered then average."""
    best = best_settings(board.grid)
    lines = []
    for tag, settings in board.grid.groupby("model_tag", sort=True):
        model = board.cells.loc[board.cells["model_tag"] == tag, "model"].iloc[0]
        tasks, cfg = {}, {}
        for task in settings["task"].unique():
            if (tag, task) in best.index:
                chosen = best.loc[(tag, task)]
                tasks[task] = chosen["dev"]
                if chosen["recipe_path"] is not None:
                    cfg[task] = chosen["recipe_path"]
        failed = set(settings["task"]) - set(tasks)
        lines.append(GlueLine(model_link(board, str(tag), model, links), "dev", tasks, failed, cfg, scale=100))
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


def grid_frame(settings: pd.DataFrame, best: tuple[int, float] | None) -> pd.DataFrame:
    """Batch size (rows) x learning rate (columns) of mean dev scores; the best cell in bold."""
    lrs = sorted(settings["lr"].unique())
    rows = []
    for batch_size, by_bs in settings.groupby("batch_size", sort=True):
        row = {"batch size": str(batch_size)}
        for lr in lrs:
            match = by_bs[by_bs["lr"] == lr]
            row[f"lr {learning_rate(lr)}"] = grid_cell_text(match.iloc[0].to_dict(), best) if len(match) else NONE
        rows.append(row)
    return pd.DataFrame(rows)


def grid_cell_text(setting: dict[str, Any], best: tuple[int, float] | None) -> str:
    if setting["n_ok"] == 0:
        return "failed"
    text = pct(setting["score"])
    if best == (setting["batch_size"], setting["lr"]):
        text = f"**{text}**"
    notes = []
    if setting["n_ok"] > 1:
        notes.append(f"{setting['n_ok']} seeds")
    if setting["n_failed"]:
        notes.append(f"{setting['n_failed']} failed")
    return f"{text} ({', '.join(notes)})" if notes else text


def grids_section(board: Board, links: Links, level: int) -> str:
    if board.grid.empty:
        return "_No GLUE grids recorded yet._"
    best = best_settings(board.grid)
    parts = []
    for tag, by_model in board.grid.groupby("model_tag", sort=True):
        parts.append(f"{'#' * level} {tag}")
        for column in GLUE_COLUMNS:
            settings = by_model[by_model["task"] == column.task]
            if settings.empty:
                continue
            cell = best_cell(best, str(tag), column.task)
            heat = heatmap_path(board, str(tag), column.task)
            title = f"{'#' * (level + 1)} {tag} · {column.label}" + (f" · {links.md('heatmap', heat)}" if heat else "")
            frame = grid_frame(settings, cell)
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
    """Section name -> (start, end) offsets of the text between its start and end markers."""
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


def readme_blocks(board: Board, readme: Path, names: Iterable[str]) -> dict[str, str]:
    """The sections a README asks for, with links relative to the README's folder."""
    links = Links(readme.parent)
    return {name: section(board, name, links, 4) for name in names}


def require_markers(spans: dict[str, tuple[int, int]], source: str) -> None:
    if not spans:
        raise ZooError(f"{source}: no leaderboard markers; put <!-- zoo:leaderboard:NAME:start --> and "
                       f"<!-- zoo:leaderboard:NAME:end --> where a table goes (NAME: {', '.join(SECTIONS)})")


def update_readme_text(text: str, board: Board, readme: Path) -> str:
    """`text` with every marked table regenerated; bytes outside the markers are kept as they are."""
    spans = marked_spans(text, str(readme))
    require_markers(spans, str(readme))
    blocks = readme_blocks(board, readme, spans)
    pieces, last = [], 0
    for name, (start, end) in sorted(spans.items(), key=lambda item: item[1][0]):
        pieces += [text[last:start], block_body(blocks[name])]
        last = end
    pieces.append(text[last:])
    return "".join(pieces)


def stale_readme_tables(text: str, board: Board, readme: Path) -> list[str]:
    spans = marked_spans(text, str(readme))
    require_markers(spans, str(readme))
    blocks = readme_blocks(board, readme, spans)
    return [name for name, (start, end) in spans.items() if text[start:end] != block_body(blocks[name])]


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
    best = best_settings(board.grid)
    for (tag, task), settings in board.grid.groupby(["model_tag", "task"], sort=True):
        path = heatmap_path(board, str(tag), str(task))
        if path is not None:
            title = f"{tag} · {GLUE_TASKS[task].label}"
            cell = best_cell(best, str(tag), str(task))
            jobs.append(PlotJob(path, lambda p, s=settings, t=title, c=cell: draw_heatmap(s, p, t, c)))
    return jobs


def draw_heatmap(settings: pd.DataFrame, path: Path, title: str, best: tuple[int, float] | None) -> bool:
    """The grid of one (model, task) as a heatmap; `best` is the (batch size, lr) the GLUE table uses."""
    batch_sizes = sorted(settings["batch_size"].unique())
    lrs = sorted(settings["lr"].unique())
    scores = np.full((len(batch_sizes), len(lrs)), math.nan)
    failed = np.zeros(scores.shape, dtype=bool)
    for setting in settings.to_dict("records"):
        at = batch_sizes.index(setting["batch_size"]), lrs.index(setting["lr"])
        scores[at] = 100 * setting["score"] if setting["n_ok"] else math.nan
        failed[at] = setting["n_ok"] == 0
    frame = (batch_sizes.index(best[0]), lrs.index(best[1])) if best else None
    return plots.heatmap(scores, batch_sizes, [learning_rate(lr) for lr in lrs], path, title, failed, frame)


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

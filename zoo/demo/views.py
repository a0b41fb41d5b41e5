"""What the demo shows, as plain data: leaderboard tables, the runs to pick, a run's curves and GLUE grids.

Everything comes from one `zoo.leaderboard.load.Board` (the records read through zoo.record.store) and
the leaderboard's own row builders (zoo.leaderboard.render, glue_index), so a table here holds the same
rows, in the same order, with the same cell text as results/LEADERBOARD.md. Only the links differ: they
point at the files as the app serves them (`ServedLinks`). Numeric columns also carry the raw number, so
that sorting a column in the page sorts numbers, not text. No Gradio and no torch here.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pandas as pd

from zoo.errors import ZooError
from zoo.leaderboard import figures, glue_index, render
from zoo.leaderboard.glue_view import GLUE_COLUMNS, GLUE_TASKS
from zoo.leaderboard.load import Board, display_name, finite_points
from zoo.leaderboard.text import NONE, Links, decimal, duration, human_count, learning_rate, slug
from zoo.record.schema import GlueRecord, LMRecord
from zoo.record.store import read_record

FILE_ROUTE = "/gradio_api/file="  # how a Gradio app serves a file under one of its allowed paths
LM_SORT_KEYS = {"Size": "params", "Tokens seen": "tokens_seen", "Perplexity": "perplexity",
                "Eval loss": "eval_loss", "Wall time": "wall_time_s"}
GLUE_NUMBER_COLUMNS = [*(column.label for column in GLUE_COLUMNS), "GLUE avg"]
LEADING_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


@dataclass(frozen=True)
class ServedLinks(Links):
    """Markdown links to files as the app serves them (the results directory is an allowed path)."""

    def to(self, target: Path) -> str:
        return FILE_ROUTE + quote(Path(target).resolve().as_posix())


# ---------------------------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Table:
    """A leaderboard table: cell text as the markdown has it, and the value each cell sorts by."""

    headers: list[str]
    display: list[list[str]]
    values: list[list[Any]]
    numeric: frozenset[str] = field(default_factory=frozenset)

    @property
    def datatype(self) -> list[str]:
        return ["number" if header in self.numeric else "markdown" for header in self.headers]

    def as_gradio(self) -> dict[str, Any]:
        """A gr.Dataframe value: sort by `values`, show `display`."""
        return {"headers": self.headers, "data": self.values,
                "metadata": {"display_value": self.display, "styling": [[""] * len(self.headers)] * len(self.display)}}


def finite_or_none(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def leading_number(text: str) -> float | None:
    """The number a cell starts with ('81.5/69.1' -> 81.5, '42.8 (5/9 tasks)' -> 42.8, '—' -> None)."""
    match = LEADING_NUMBER.match(text)
    return float(match.group().replace(",", "")) if match else None


def table_of(lines: list[dict[str, str]], sort_values: list[dict[str, float | None]], numeric: list[str]) -> Table:
    headers = list(lines[0])
    display = [[line[h] for h in headers] for line in lines]
    values = [[keys[h] if h in keys else line[h] for h in headers] for line, keys in zip(lines, sort_values)]
    return Table(headers, display, values, frozenset(numeric))


def lm_table(board: Board, kind: str, links: Links) -> Table | None:
    """Every pretraining (or continued-training) run, corpus by corpus as in the markdown; None: no runs."""
    runs = [run for _, group in render.ordered_lm_runs(board, kind) for run in group]
    if not runs:
        return None
    lines = [render.lm_line(board, run, links) for run in runs]
    keys = [{h: finite_or_none(run[key]) if line[h] != NONE else None for h, key in LM_SORT_KEYS.items()}
            for run, line in zip(runs, lines)]
    return table_of(lines, keys, list(LM_SORT_KEYS))


def glue_table(board: Board, links: Links) -> Table | None:
    """The GLUE table: the zoo models (ranked) then the published reference rows; None: neither."""
    zoo_rows, references = render.glue_rows(board, links)
    lines = [*zoo_rows, *references]
    if not lines:
        return None
    keys = [{h: leading_number(line[h]) for h in GLUE_NUMBER_COLUMNS} for line in lines]
    return table_of(lines, keys, GLUE_NUMBER_COLUMNS)


def leaderboard_tables(board: Board, links: Links) -> dict[str, Table | None]:
    """The tables of the Leaderboard tab, by section name."""
    return {"pretrain": lm_table(board, "pretrain", links), "finetune": lm_table(board, "finetune", links),
            "glue": glue_table(board, links)}


# ---------------------------------------------------------------------------------------------- runs


def run_choices(board: Board) -> list[tuple[str, str]]:
    """(label, value) of every run the Runs tab can show: LM runs, then models with GLUE grids."""
    choices = []
    lm_ids = set()
    for run in board.lm.to_dict("records"):
        lm_ids.add(run["run_id"])
        extra = ", GLUE grids" if run["run_id"] in board.grids else ""
        choices.append((f"{run['run_id']} ({run['kind']}, {run['status']}{extra})", run["run_id"]))
    choices += [(f"{tag} (GLUE grids)", tag) for tag in board.grids if tag not in lm_ids]
    return choices


@dataclass
class RunView:
    """What the Runs tab shows for one run (or one fine-tuned model's GLUE grids)."""

    summary: str  # markdown
    curve: pd.DataFrame  # step, loss, split (train / eval)
    recipe: str  # the resolved recipe YAML ('' when there is none)
    glue: str = ""  # markdown: per task, the chosen cell
    heatmaps: list[tuple[str, str]] = field(default_factory=list)  # (PNG path, caption)


def loss_frame(history: list[dict[str, Any]]) -> pd.DataFrame:
    """The loss curves as long-form rows: one per (step, split) with a finite loss."""
    rows = [{"step": step, "loss": value, "split": split}
            for key, split in (("loss", "train"), ("eval_loss", "eval"))
            for step, value in zip(*finite_points(history, key))]
    return pd.DataFrame(rows, columns=["step", "loss", "split"])


def key_value_table(pairs: list[tuple[str, str]]) -> str:
    """`- **key:** value` lines."""
    return "\n".join(f"- **{key}:** {value}" for key, value in pairs)


def lm_summary(run: dict[str, Any], record: LMRecord, links: Links) -> str:
    """Status, model, data, throughput, hardware and results of one LM run, as a markdown table."""
    status = record.status if record.ok else f"failed: {record.reason or 'no reason recorded'}"
    tokens_per_s = finite_or_none(record.tokens_per_s)
    pairs = [("run", links.md(record.run_id, run["record_path"])), ("status", status),
             ("model", f"{display_name(run)} ({record.objective.upper()}, {human_count(run['params'])} parameters)"),
             ("corpus", record.corpus or NONE), ("steps", str(record.steps) if record.steps is not None else NONE),
             ("tokens seen", human_count(run["tokens_seen"])),
             ("tokens/s", f"{tokens_per_s:,.0f}" if tokens_per_s is not None else NONE),
             ("hardware", render.hardware(run)), ("wall time", duration(run["wall_time_s"])),
             ("perplexity", render.perplexity_cell(run)), ("eval loss", decimal(run["eval_loss"], 3)),
             ("recipe", links.md("recipe.yaml", run["recipe_path"]) if run["recipe_path"] else NONE)]
    versions = record.environment.get("versions") or {}
    if versions:
        pairs.append(("versions", ", ".join(f"{k} {v}" for k, v in versions.items())))
    return key_value_table(pairs)


def glue_cells_markdown(board: Board, tag: str, links: Links) -> str:
    """Per task of a model's GLUE grids, the setting and cell the GLUE table uses (its config index rows)."""
    grids = board.grids[tag]
    rows = [glue_index.task_row(column, grids[column.task], links) for column in GLUE_COLUMNS if column.task in grids]
    return render.render_table(pd.DataFrame(rows, columns=glue_index.COLUMNS))


def heatmap_files(board: Board, tag: str, directory: Path) -> list[tuple[str, str]]:
    """Each task grid of `tag` drawn as a heatmap PNG under `directory` (the chosen setting framed in red)."""
    files = []
    for task, grid in board.grids[tag].items():
        path = directory / f"glue-{slug(tag)}-{task}.png"
        title = f"{tag} · {GLUE_TASKS[task].label}"
        figures.draw_heatmap(grid, path, title)
        best = grid.best_setting
        chosen = f"chosen: batch size {best[0]}, lr {learning_rate(best[1])}" if best else "no cell finished"
        files.append((str(path), f"{GLUE_TASKS[task].label}: {chosen}"))
    return files


def find_lm_run(board: Board, run_id: str) -> dict[str, Any] | None:
    matches = board.lm[board.lm["run_id"] == run_id].to_dict("records")
    return matches[0] if matches else None


def run_view(board: Board, run_id: str, links: Links, figure_dir: Path) -> RunView:
    """The Runs tab for `run_id`: an LM run (curves, throughput, recipe) and/or a model's GLUE grids."""
    run = find_lm_run(board, run_id)
    if run is None and run_id not in board.grids:
        raise ZooError(f"no finished run or GLUE grid named {run_id!r} under {board.root}")
    view = RunView(summary="", curve=loss_frame([]), recipe="")
    if run is not None:
        record = read_record(run["record_path"])
        assert isinstance(record, LMRecord)
        view.summary = lm_summary(run, record, links)
        view.curve = loss_frame(record.history)
        view.recipe = run["recipe_path"].read_text(encoding="utf-8") if run["recipe_path"] else ""
    if run_id in board.grids:
        view.glue = glue_cells_markdown(board, run_id, links)
        view.heatmaps = heatmap_files(board, run_id, figure_dir)
        if run is None:
            view.summary = glue_model_summary(board, run_id)
            view.recipe = best_cell_recipe(board, run_id)
    return view


def glue_model_summary(board: Board, tag: str) -> str:
    grids = board.grids[tag]
    model = next(iter(grids.values())).model
    cells = [cell for cell in board.cells if cell["model_tag"] == tag]
    ok = sum(cell["status"] == "ok" for cell in cells)
    return key_value_table([("model", model), ("GLUE tasks", ", ".join(GLUE_TASKS[t].label for t in grids)),
                            ("cells", f"{len(cells)} ({ok} ok, {len(cells) - ok} failed)")])


def best_cell_recipe(board: Board, tag: str) -> str:
    """The recipe of the chosen cell of the model's first task (each task's is linked in the GLUE table)."""
    for grid in board.grids[tag].values():
        if grid.best is not None and grid.best["recipe_path"] is not None:
            record = read_record(grid.best["record_path"])
            head = f"# chosen cell of {record.task if isinstance(record, GlueRecord) else ''}: {record.run_id}\n"
            return head + Path(grid.best["recipe_path"]).read_text(encoding="utf-8")
    return ""

"""The one table renderer and the markdown sections built with it.

`render_table` is the only function that turns rows into a markdown table (pandas frame of display
strings -> tabulate pipe table). The sections (SECTIONS: pretrain, finetune, glue, grids) are the same
markdown in results/LEADERBOARD.md and between a README's markers; only their heading level and the
folder their links are relative to differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from tabulate import tabulate

from zoo.leaderboard.glue_view import (
    GLUE_COLUMNS,
    PARTIAL_MARK,
    GlueLine,
    Setting,
    TaskGrid,
    classic_settings,
    zoo_glue_lines,
)
from zoo.leaderboard.lm_view import hidden_glue_tags, ordered_lm_runs
from zoo.leaderboard.load import Board, display_name
from zoo.leaderboard.references import LMReference
from zoo.leaderboard.text import NONE, Links, decimal, duration, human_count, learning_rate, percent
from zoo.model.resolve import hub_page
from zoo.record.schema import RECORD_FILE

SECTIONS = ("pretrain", "finetune", "glue", "grids")


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


# ---------------------------------------------------------------------------------------------- LM tables


def hardware(run: dict[str, Any]) -> str:
    device = run["device"] or NONE
    return f"{run['world_size']}× {device}" if run["world_size"] > 1 else device


def failed_cell(reason: str) -> str:
    """'failed (NonFiniteLoss)': a failure named by its reason's first word, never a number."""
    kind = reason.split(":", 1)[0].strip()
    return f"failed ({kind[:40]})" if kind else "failed"


def perplexity_cell(run: dict[str, Any]) -> str:
    """The perplexity (finetune: before → after), or the failure."""
    if run["status"] != "ok":
        return failed_cell(run["reason"])
    if run["kind"] == "finetune" and math.isfinite(run["before_perplexity"]):
        return f"{decimal(run['before_perplexity'], 2)} → {decimal(run['perplexity'], 2)}"
    return decimal(run["perplexity"], 2)


def lm_line(board: Board, run: dict[str, Any], links: Links) -> dict[str, str]:
    """One table line of a pretraining or continued-training run (or of a published reference row)."""
    if run.get("reference") is not None:
        return reference_lm_line(run["reference"], links)
    ok = run["status"] == "ok"
    curve = board.loss_curve_path(run)
    return {
        "Model": links.md(display_name(run), run["record_path"]),
        "Size": human_count(run["params"]),
        "Objective": run["objective"].upper() or NONE,
        "Corpus": run["corpus"] or NONE,
        "Tokens seen": human_count(run["tokens_seen"]) if ok else NONE,
        "Perplexity": perplexity_cell(run),
        "Eval loss": decimal(run["eval_loss"], 3) if ok else NONE,
        "Hardware": hardware(run),
        "Wall time": duration(run["wall_time_s"]),
        "Curve": links.md("png", curve) if curve else NONE,
        "cfg": links.md("cfg", run["recipe_path"]) if run["recipe_path"] else NONE,
    }


def reference_lm_line(reference: LMReference, links: Links) -> dict[str, str]:
    """A published pretraining result: labelled, linked to its source note, its size and numbers as published."""
    return {
        "Model": f"{reference.model} (reference, {links.md(reference.label, reference.source_file)})",
        "Size": reference.size,
        "Objective": reference.objective.upper(),
        "Corpus": reference.corpus,
        "Tokens seen": f"{reference.epochs:g} epochs" if reference.epochs is not None else NONE,
        "Perplexity": decimal(reference.perplexity, 2),
        "Eval loss": decimal(reference.eval_loss, 3),
        "Hardware": NONE,
        "Wall time": NONE,
        "Curve": NONE,
        "cfg": NONE,
    }


LM_NUMBER_COLUMNS = ["Size", "Tokens seen", "Perplexity", "Eval loss", "Wall time"]


def selection_note(board: Board) -> str:
    """The caption's sentence on which runs are listed (the rule of zoo.leaderboard.lm_view)."""
    if board.all_runs:
        return "Every run is listed (`--all-runs`)."
    return ("One row per model and corpus: its ok, non-smoke run with the lowest eval loss (so the lowest "
            "perplexity); older, worse or failed runs of the same model and corpus stay under `results/` "
            "(`zoo leaderboard --all-runs` lists them).")


def lm_note(board: Board, kind: str, references: bool) -> str:
    if kind != "pretrain":
        return f"Perplexity before → after continued training, on the same held-out split. {selection_note(board)}"
    note = ("Perplexity: exp(token-weighted mean NLL) on the held-out split; MLM and CLM perplexities are not "
            f"comparable. {selection_note(board)}")
    if references:
        note += (" Rows marked *reference* are published results, not ranked among zoo's runs: their corpora, "
                 "tokenizers and eval splits differ from zoo's (see the linked note), so they are a point of "
                 "comparison, not a like-for-like result.")
    return note


def lm_tables(board: Board, kind: str, links: Links, level: int) -> str:
    """One table per corpus (the listed runs, finished first, by objective then perplexity; then references)."""
    groups = ordered_lm_runs(board, kind)
    if not groups:
        noun = "pretraining" if kind == "pretrain" else "continued-training"
        return f"_No {noun} runs recorded yet._"
    parts = []
    for corpus, ordered in groups:
        frame = pd.DataFrame([lm_line(board, run, links) for run in ordered])
        parts.append(f"{'#' * level} {corpus}\n\n" + render_table(frame, right=LM_NUMBER_COLUMNS))
    references = any(run.get("reference") is not None for _, ordered in groups for run in ordered)
    return "\n\n".join(parts) + f"\n\n{lm_note(board, kind, references)}"


# ---------------------------------------------------------------------------------------------- GLUE


def model_link(board: Board, tag: str, model: str, links: Links) -> str:
    """A zoo run id links to its record; a registry model or hub id to its hub page; else plain text."""
    for candidate in (tag, model):
        for kind in ("pretrain", "finetune"):
            record = board.root / kind / candidate / RECORD_FILE
            if candidate and record.is_file():
                return links.md(tag, record)
    hub_id = hub_page(model)
    return f"[{tag}](https://huggingface.co/{hub_id})" if hub_id else tag


def zoo_glue_row(board: Board, line: GlueLine, links: Links) -> dict[str, str]:
    """A fine-tuned model's row; `cfg` links its config index (per task: the chosen cell's recipe)."""
    return {"Model": model_link(board, line.tag, line.model, links), "Set": "dev", **line.score_cells(),
            "cfg": links.md("cfg", board.index_path(line.tag))}


def reference_rows(board: Board, links: Links) -> list[dict[str, str]]:
    rows = []
    for ref in board.references:
        line = GlueLine(ref.model, "", ref.tasks, scale=1, published_score=ref.score)
        rows.append({"Model": f"{ref.model} (reference)", "Set": f"{ref.split}, {links.md(ref.label, ref.source_file)}",
                     **line.score_cells(), "cfg": NONE})
    return rows


def shown_glue_lines(board: Board) -> list[GlueLine]:
    """The zoo models' lines, ranked. A model that is a run replaced by a better one with GLUE grids of its
    own leaves (zoo.leaderboard.lm_view), unless all_runs."""
    hidden = hidden_glue_tags(board)
    return [line for line in zoo_glue_lines(board.grids) if line.tag not in hidden]


def partial_note(lines: list[GlueLine]) -> str:
    """The sentence explaining the partial-grid mark, when some shown task carries it."""
    if not any(line.partial for line in lines):
        return ""
    return (f" {PARTIAL_MARK}: the best of a partial grid, where not all {len(classic_settings())} settings of the "
            "classic grid have a finished cell (the config index gives the count, the grids below show which ran).")


def glue_rows(board: Board, links: Links) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(the zoo models' rows, ranked; the published reference rows) of the GLUE table."""
    return [zoo_glue_row(board, line, links) for line in shown_glue_lines(board)], reference_rows(board, links)


def glue_section(board: Board, links: Links, level: int) -> str:
    lines = shown_glue_lines(board)
    zoo_rows, references = [zoo_glue_row(board, line, links) for line in lines], reference_rows(board, links)
    rows = [*zoo_rows, *references]
    parts = [] if zoo_rows else ["_No GLUE runs recorded yet._"]
    if rows:
        labels = [c.label for c in GLUE_COLUMNS]
        parts.append(render_table(pd.DataFrame(rows), right=[*labels, "GLUE avg"]))
    parts.append(
        "Scores in %. zoo rows: dev set, the best batch size × learning rate of each task's grid (the seeds of "
        "a setting averaged); a model linked to its hub page is a published checkpoint fine-tuned by zoo's own cells "
        "(a check of the pipeline on real weights), not a model zoo pretrained. GLUE avg: mean over the nine tasks "
        "of each task's score, a two-metric task (MRPC, QQP, STS-B, MNLI m/mm) scoring the mean of its two; rows "
        "missing tasks average the tasks they have."
        + partial_note(lines)
        + " Rows marked *reference* are published numbers, for comparison only (their pretraining differs from "
        "zoo's): `Set` names their split and source; a row with a published GLUE score shows it (Turc et al.'s "
        "**test-set** rows), one without shows the average computed as for zoo rows (see its source's note). "
        "`cfg` links the model's config index: per task the chosen setting, its run record and its recipe "
        "(`zoo glue --recipe FILE` reruns it)."
        + ("" if board.all_runs else " A run replaced in the pretraining table by a better run of its model and "
           "corpus leaves this table once that run has GLUE scores (`--all-runs` keeps it).")
    )
    return "\n\n".join(parts)


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


def grids_section(board: Board, links: Links, level: int) -> str:
    if not board.grids:
        return "_No GLUE grids recorded yet._"
    parts = []
    for tag, grids in board.grids.items():
        parts.append(f"{'#' * level} {tag}")
        for column in GLUE_COLUMNS:
            if column.task not in grids:
                continue
            heat = board.heatmap_path(tag, column.task)
            title = f"{'#' * (level + 1)} {tag} · {column.label}" + (f" · {links.md('heatmap', heat)}" if heat else "")
            frame = grid_frame(grids[column.task])
            parts.append(f"{title}\n\n{render_table(frame, right=list(frame.columns[1:]))}")
    parts.append("Mean dev score (%) per batch size × learning rate (`metrics.score` of the task); bold: the "
                 "setting the GLUE table uses.")
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------- documents


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
    runs = ("Every run is listed (`--all-runs`)." if board.all_runs else
            "Each model and corpus shows its best run (`zoo leaderboard --all-runs` lists every run).")
    head = ("# Leaderboard\n\n"
            "Generated by `zoo leaderboard` from the run records under `results/`; do not edit by hand. "
            f"{smoke} {runs} Failed runs show as failed, never as a number. Every `cfg` link is the resolved recipe "
            "of its run (a GLUE row's, the model's config index of its chosen cells' recipes): "
            "`zoo pretrain --recipe FILE` (or `zoo finetune`, `zoo glue`) reproduces it.")
    body = [f"## {SECTION_TITLES[name]}\n\n{section(board, name, links, 3)}" for name in SECTIONS]
    return "\n\n".join([head, *body]) + "\n"

"""Which LM runs the tables list: the best run of each model and corpus, and the reference rows beside them.

The rule (Board.all_runs off, the default; `zoo leaderboard --all-runs` lists every run):
- A run's group is its kind, its model as the table names it (zoo.leaderboard.load.display_name: a
  custom recipe name such as 'bert-tiny-wwm' is a model of its own) and its corpus.
- A group's best run is its ok, non-smoke run with the lowest eval loss (and so the lowest perplexity;
  runs without an eval loss come after those with one; ties: the smaller run id, the earlier run).
- A group with a best run lists only that one: its older, worse and failed runs stay under results/ (and
  in the demo's Runs tab) but leave the tables. A group with no ok run lists its failed runs, nothing
  better having replaced them. Smoke runs (listed only with --include-smoke) neither compete nor leave.
- A GLUE row whose model is a run left out this way leaves the GLUE table once the best run of its group
  has GLUE scores of its own (a finished, scored cell); until then it stays, the model's only GLUE result.

Published pretraining references (zoo.leaderboard.references.LMReference) join the table of their corpus
after zoo's runs, in file order, never ranked among them. They travel as run-shaped rows (the keys of the
LM frame, plus `reference`), so one line builder (zoo.leaderboard.render.lm_line) and the demo's sort keys
serve both kinds of row.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from zoo.leaderboard.load import Board, display_name
from zoo.leaderboard.references import LMReference

GroupKey = tuple[str, str, str]  # kind, model as shown, corpus


def group_key(run: dict[str, Any]) -> GroupKey:
    return str(run["kind"]), display_name(run), str(run["corpus"])


def best_runs(lm: pd.DataFrame) -> dict[GroupKey, str]:
    """Group -> the run id of its best run, for each group that has an ok, non-smoke run."""
    candidates = lm[(lm["status"] == "ok") & ~lm["smoke"].astype(bool)]
    ordered = candidates.sort_values(["eval_loss", "perplexity", "run_id"], na_position="last", kind="mergesort")
    best: dict[GroupKey, str] = {}
    for run in ordered.to_dict("records"):
        best.setdefault(group_key(run), run["run_id"])
    return best


def superseded(lm: pd.DataFrame) -> dict[str, str]:
    """Run id -> the best run of its group, for every non-smoke run that is not its group's best."""
    best = best_runs(lm)
    replaced = {}
    for run in lm.to_dict("records"):
        winner = best.get(group_key(run))
        if winner is not None and winner != run["run_id"] and not run["smoke"]:
            replaced[run["run_id"]] = winner
    return replaced


def listed_runs(board: Board, kind: str) -> pd.DataFrame:
    """The runs of `kind` the table lists: every one with all_runs, else the best of each group (see above)."""
    runs = board.lm[board.lm["kind"] == kind]
    return runs if board.all_runs else runs[~runs["run_id"].isin(list(superseded(board.lm)))]


def has_glue_scores(board: Board, tag: str) -> bool:
    """Whether the model `tag` has a GLUE task with a finished, scored cell."""
    return any(grid.best is not None for grid in board.grids.get(tag, {}).values())


def hidden_glue_tags(board: Board) -> set[str]:
    """The GLUE model tags whose rows leave the GLUE table: runs replaced by a best run with GLUE scores."""
    if board.all_runs:
        return set()
    replaced = superseded(board.lm)
    return {tag for tag, winner in replaced.items() if tag in board.grids and has_glue_scores(board, winner)}


def reference_run(reference: LMReference) -> dict[str, Any]:
    """A published pretraining result as a run-shaped row: the LM frame's keys, NaN where nothing is published."""
    return {"run_id": "", "kind": "pretrain", "name": reference.model, "model": reference.model,
            "corpus": reference.corpus, "objective": reference.objective, "status": "ok", "reason": "",
            "smoke": False, "params": reference.params, "tokens_seen": math.nan, "wall_time_s": math.nan,
            "perplexity": reference.perplexity, "eval_loss": reference.eval_loss, "before_perplexity": math.nan,
            "device": "", "world_size": 1, "history": [], "record_path": None, "recipe_path": None,
            "reference": reference}


def ordered_lm_runs(board: Board, kind: str) -> list[tuple[str, list[dict[str, Any]]]]:
    """(corpus, its rows) in table order: corpora sorted; per corpus the listed runs, finished ones first, by
    objective then perplexity, then the corpus's reference rows (pretraining only) in file order."""
    runs = listed_runs(board, kind).assign(failed=lambda f: f["status"] != "ok")
    groups = {str(corpus): group.sort_values(["failed", "objective", "perplexity", "run_id"], kind="mergesort")
              .to_dict("records") for corpus, group in runs.groupby("corpus", sort=True)}
    if kind == "pretrain":
        for reference in board.lm_references:
            groups.setdefault(reference.corpus, []).append(reference_run(reference))
    return sorted(groups.items())

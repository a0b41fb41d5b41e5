"""The leaderboard's GLUE content: failed cells, seed means and ties, partial grids, reference rows, config
indexes (the fixed records are tests/leaderboard_data.py's)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.leaderboard_data import TINY_RUN, assert_golden, glue_cell, index_line
from zoo.leaderboard import glue_index, glue_view, load, outputs, render
from zoo.leaderboard.text import Links
from zoo.recipe.glue import load_glue_recipe


def test_failed_runs_show_as_failed_never_as_a_number(results: Path) -> None:
    board = load.load_board(results)
    links = Links(results)
    pretrain = render.section(board, "pretrain", links, 3)
    failed_row = next(line for line in pretrain.splitlines() if "bert-mini-wikipedia-20250103" in line)
    assert "failed (NonFiniteLoss)" in failed_row
    assert "3.46" not in failed_row and "1.23" not in failed_row  # the failed run's leftover metrics
    grids = render.section(board, "grids", links, 3)
    cola_grid = grids.split("· CoLA (MCC)")[1].split("####")[0]
    assert re.search(r"\| 32 +\| +15\.1 \| +failed \|", cola_grid)  # lr 5e-5 then 1e-4
    glue = render.section(board, "glue", links, 3)
    bert_tiny_row = next(line for line in glue.splitlines() if line.startswith("| [bert-tiny](https://"))
    cells = [c.strip() for c in bert_tiny_row.split("|")]
    assert cells[glue_view.GLUE_COLUMNS.index(glue_view.GLUE_TASKS["rte"]) + 3] == "failed"
    assert "83.1 (1/9 tasks)" in bert_tiny_row  # the average covers the finished task only, labelled so


def test_best_cell_averages_seeds_and_breaks_ties_by_smaller_batch_size(results: Path) -> None:
    grids = load.load_board(results).grids[TINY_RUN]
    assert grids["cola"].best_setting == (16, 1e-4)
    mrpc = grids["mrpc"]
    assert mrpc.best_setting == (32, 1e-4)  # 76.15 beats the 2-seed mean 76.0 of (16, 5e-5)
    two_seeds = mrpc.settings[16, 5e-5]
    assert two_seeds.n_ok == 2 and two_seeds.score == pytest.approx((0.78 + 0.74) / 2)
    assert mrpc.best_dev == pytest.approx({"f1": 0.812, "accuracy": 0.711})
    # a second seed of the best setting: the dev metrics are its seeds' mean, the cfg link its best seed
    glue_cell(results, TINY_RUN, "mrpc", 32, 1e-4, 50, {"f1": 0.822, "accuracy": 0.721})
    board = load.load_board(results)
    mrpc = board.grids[TINY_RUN]["mrpc"]
    assert mrpc.best_setting == (32, 1e-4) and mrpc.best["seed"] == 50
    assert mrpc.best_dev == pytest.approx({"f1": 0.817, "accuracy": 0.716})
    glue = render.section(board, "glue", Links(results), 3)
    assert f"[cfg](glue/{TINY_RUN}/INDEX.md)" in glue and "81.7/71.6" in glue
    mrpc_line = index_line(glue_index.index_markdown(board, TINY_RUN), "MRPC")
    assert "[recipe.yaml](mrpc/bs32-lr1e-04-s50/recipe.yaml)" in mrpc_line and "81.7/71.6" in mrpc_line


def test_smoke_runs_stay_off_unless_asked_for(results: Path) -> None:
    hidden = render.leaderboard_markdown(load.load_board(results))
    for marker in ("20250104", "bert-tiny-imdb-20250105", "1.11", "1.22", "99.0"):
        assert marker not in hidden
    shown = render.leaderboard_markdown(load.load_board(results, include_smoke=True))
    for marker in ("20250104", "bert-tiny-imdb-20250105", "1.11", "1.22", "99.0"):
        assert marker in shown


def test_glue_average_convention_reproduces_every_published_reference_score(results: Path) -> None:
    references = load.load_references(results)
    assert [(r.model, r.split) for r in references] == [
        ("BERT-Tiny", "dev"), ("BERT-Mini", "dev"),  # classic-zoo.yaml: no published score
        ("BERT-Tiny", "test"), ("BERT-Mini", "test"), ("BERT-Small", "test"), ("BERT-Medium", "test")]
    published = [reference for reference in references if reference.score is not None]
    assert len(published) == 4
    for reference in published:
        average, count = glue_view.line_average(reference.tasks)
        assert count == 9
        assert abs(average - reference.score) < 0.1, (reference.model, average)  # per-task values are rounded


def test_reference_rows_are_labelled_with_their_split_and_source(results: Path) -> None:
    glue = render.section(load.load_board(results), "glue", Links(results), 3)
    row = next(line for line in glue.splitlines() if "test, [Turc et al. 2019](reference/turc2019.yaml)" in line)
    assert row.startswith("| BERT-Tiny (reference)") and "81.1/71.1" in row and "| 64.2 |" in row.replace("  ", "")
    assert "test-set" in glue


def test_classic_zoo_glue_rows_are_dev_numbers_with_mnli_matched_only(results: Path) -> None:
    """The single published MNLI number is matched accuracy; without mismatched MNLI has no task score, so the
    average is the table's own over the other eight tasks, labelled so (the convention classic-zoo.yaml states)."""
    import yaml

    data = yaml.safe_load((results / "reference" / "classic-zoo.yaml").read_text())
    glue = render.section(load.load_board(results), "glue", Links(results), 3)
    rows = [line for line in glue.splitlines() if "dev, [classic model zoo](reference/classic-zoo.yaml)" in line]
    assert len(rows) == 2 == len(data["rows"])
    for row, published in zip(rows, data["rows"]):
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[0] == f"{published['model']} (reference)"
        mnli = cells[2 + [c.task for c in glue_view.GLUE_COLUMNS].index("mnli")]
        assert mnli == f"{published['mnli']['accuracy_m']:.1f}/—"
        eight = [sum(published[task].values()) / len(published[task]) for task in glue_view.GLUE_TASKS
                 if task != "mnli"]
        assert cells[-2] == f"{sum(eight) / 8:.1f} (8/9 tasks)"




def test_glue_table_links_one_config_index_per_model(results: Path) -> None:
    board = load.load_board(results)
    glue = render.section(board, "glue", Links(results), 3)
    rows = [line for line in glue.splitlines() if line.startswith("| [")]
    assert len(rows) == 2
    for row, tag in zip(rows, [TINY_RUN, "bert-tiny"]):
        assert row.count("](glue/") == 1 and f"[cfg](glue/{tag}/INDEX.md)" in row
    assert "recipe.yaml" not in glue
    index = glue_index.index_markdown(board, TINY_RUN)
    assert_golden("index.md", index)
    cola, mrpc = index_line(index, "CoLA"), index_line(index, "MRPC")
    assert re.search(r"\| +16 \| +1e-4 \| +1 \| +15\.1 \| +42 \| +15\.1 \|", cola)  # the tie goes to bs 16
    assert "[run.json](cola/bs16-lr1e-04-s42/run.json)" in cola
    assert "[recipe.yaml](cola/bs16-lr1e-04-s42/recipe.yaml)" in cola
    assert re.search(r"\| +32 \| +1e-4 \| +1 \| +81\.2/71\.1 \| +42 \| +81\.2/71\.1 \|", mrpc)
    assert f"[{TINY_RUN}](../../pretrain/{TINY_RUN}/run.json)" in index
    assert "RTE" not in index  # its only cell is a smoke run
    failed = index_line(glue_index.index_markdown(board, "bert-tiny"), "RTE")
    assert "failed" in failed and "](" not in failed  # every cell failed: no setting, no link
    assert "| SST-2 (acc)" in glue_index.index_markdown(board, "bert-tiny")


def test_config_indexes_are_checked_and_orphans_removed(results: Path) -> None:
    board = load.load_board(results, with_plots=False)
    index = board.index_path(TINY_RUN)
    assert f"{index}: GLUE config index missing" in outputs.check(board, None)
    outputs.write_leaderboard(board)
    assert outputs.check(board, None) == []
    assert glue_index.write_indexes(board) == (0, 0)  # unchanged files are not rewritten
    index.write_text(index.read_text().replace("15.1", "15.0"))  # a hand edit
    assert outputs.check(board, None) == [f"{index}: GLUE config index is stale"]
    outputs.write_leaderboard(board)
    glue_cell(results, TINY_RUN, "rte", 32, 1e-4, 42, {"accuracy": 0.6})  # a new task for the model
    board = load.load_board(results, with_plots=False)
    assert f"{index}: GLUE config index is stale" in outputs.check(board, None)
    assert glue_index.write_indexes(board) == (1, 0)
    assert "[recipe.yaml](rte/bs32-lr1e-04-s42/recipe.yaml)" in index_line(index.read_text(), "RTE")
    outputs.write_leaderboard(board)
    orphan = results / "glue" / "gone-model" / "INDEX.md"
    orphan.parent.mkdir()
    orphan.write_text("# GLUE configs: gone-model\n")
    assert outputs.check(board, None) == [f"{orphan}: GLUE config index of no GLUE row"]
    assert glue_index.write_indexes(board) == (0, 1) and not orphan.exists()




def test_a_task_best_of_a_partial_grid_is_marked_and_a_full_grid_is_not(results: Path) -> None:
    classic = load_glue_recipe().grid
    for i, (bs, lr) in enumerate((bs, lr) for bs in classic.batch_sizes for lr in classic.lrs):
        glue_cell(results, TINY_RUN, "wnli", bs, lr, 42, {"accuracy": 0.40 + i / 100})
    board = load.load_board(results)
    assert board.grids[TINY_RUN]["wnli"].finished_classic == 20 and not board.grids[TINY_RUN]["wnli"].partial
    assert board.grids[TINY_RUN]["cola"].finished_classic == 3  # 4 settings, one of them failed
    glue = render.section(board, "glue", Links(results), 3)
    row = next(line for line in glue.splitlines() if f"[cfg](glue/{TINY_RUN}/INDEX.md)" in line)
    cells = [cell.strip() for cell in row.split("|")[1:-1]]
    column = {c.task: 2 + i for i, c in enumerate(glue_view.GLUE_COLUMNS)}
    assert cells[column["wnli"]] == "59.0"  # the best of the full grid (bs 128, lr 5e-5), unmarked
    assert cells[column["cola"]] == "15.1†" and cells[column["mrpc"]] == "81.2/71.1†"
    assert "†: the best of a partial grid, where not all 20 settings of the classic grid" in glue
    index = glue_index.index_markdown(board, TINY_RUN)
    assert re.search(r"\| WNLI \(acc\) +\| +20/20 \|", index_line(index, "WNLI"))
    assert re.search(r"\| CoLA \(MCC\) +\| +3/20 \|", index_line(index, "CoLA"))

"""Leaderboards: golden tables from fixed records, README markers, --check, smoke runs, best runs, links, plots.

The fixed records are tests/leaderboard_data.py's (GLUE content: tests/test_leaderboard_glue.py). The
expected markdown lives in tests/golden/; after an intended change of the tables, regenerate it with

    ZOO_UPDATE_GOLDEN=1 python -m pytest -q tests/test_leaderboard.py tests/test_leaderboard_glue.py

and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.leaderboard_data import (
    OLD_TINY_RUN,
    README_TEMPLATE,
    REPO,
    TINY_RUN,
    assert_golden,
    glue_cell,
    index_line,
    lm_recipe,
    lm_record,
    relative_links,
    write_run,
)
from zoo.cli import main
from zoo.leaderboard import figures, glue_index, lm_view, load, outputs, render
from zoo.leaderboard.readme import update_readme_text, write_readme
from zoo.leaderboard.text import Links
from zoo.recipe.glue import glue_recipe_hash, load_glue_recipe, single_cell

# ---------------------------------------------------------------------------------------------- golden


@pytest.mark.parametrize("name", render.SECTIONS)
def test_each_table_matches_its_golden_file(results: Path, name: str) -> None:
    board = load.load_board(results)
    assert_golden(f"{name}.md", render.section(board, name, Links(results), 3) + "\n")


def test_leaderboard_and_readme_match_golden_files(results: Path, tmp_path: Path) -> None:
    board = load.load_board(results)
    assert_golden("LEADERBOARD.md", render.leaderboard_markdown(board))
    readme = tmp_path / "README.md"
    readme.write_bytes(README_TEMPLATE.encode())
    assert_golden("readme.md", update_readme_text(README_TEMPLATE, board, readme))


# ---------------------------------------------------------------------------------------------- content


# ---------------------------------------------------------------------------------------------- best run per model


def pretrain_rows(board: load.Board, corpus: str) -> list[str]:
    """The body lines of one corpus's pretraining table."""
    pretrain = render.section(board, "pretrain", Links(board.root), 3)
    table = pretrain.split(f"### {corpus}\n\n", 1)[1].split("\n\n", 1)[0]
    return table.splitlines()[2:]


def test_each_model_and_corpus_lists_its_best_run_unless_all_runs(results: Path) -> None:
    rows = pretrain_rows(load.load_board(results), "wikipedia")
    zoo_rows = [row for row in rows if "(reference" not in row]
    assert [re.search(r"\(pretrain/([^/]+)/run\.json\)", row).group(1) for row in zoo_rows] == [
        "gpt2-mini-wikipedia-20250102-000000", TINY_RUN, "bert-mini-wikipedia-20250103-000000"]
    assert "failed (NonFiniteLoss)" in zoo_rows[2]  # a model whose only run failed keeps its failed row
    pretrain = render.section(load.load_board(results), "pretrain", Links(results), 3)
    assert OLD_TINY_RUN not in pretrain and "20250108" not in pretrain
    assert "One row per model and corpus: its ok, non-smoke run with the lowest eval loss" in pretrain
    everything = render.section(load.load_board(results, all_runs=True), "pretrain", Links(results), 3)
    assert OLD_TINY_RUN in everything and "1,435.21" in everything and "Every run is listed" in everything
    failed = next(line for line in everything.splitlines() if "20250108" in line)
    assert "failed (NonFiniteLoss)" in failed and "1.65" not in failed  # listed, still never as a number
    shown = render.leaderboard_markdown(load.load_board(results, include_smoke=True))
    assert f"pretrain/{TINY_RUN}/run.json" in shown and "20250104" in shown  # smoke runs neither win nor hide


def test_a_better_run_replaces_the_old_one_and_its_glue_row_once_it_has_glue(results: Path) -> None:
    newer = "bert-tiny-wikipedia-20250201-000000"
    write_run(results, "pretrain", newer, lm_record("bert-tiny", "wikipedia", "mlm",
                                                    metrics={"eval_loss": 3.2, "perplexity": 24.53}),
              lm_recipe("pretrain", "bert-tiny", "wikipedia", 2000))
    board = load.load_board(results)
    pretrain = render.section(board, "pretrain", Links(results), 3)
    assert newer in pretrain and f"pretrain/{TINY_RUN}/" not in pretrain
    glue = render.section(board, "glue", Links(results), 3)
    assert f"[cfg](glue/{TINY_RUN}/INDEX.md)" in glue  # the newer run has no GLUE grid yet: the old row stays
    glue_cell(results, newer, "rte", 32, 1e-4, 42, {}, status="failed")
    glue = render.section(load.load_board(results), "glue", Links(results), 3)
    assert f"[cfg](glue/{TINY_RUN}/INDEX.md)" in glue  # nor while its only cell failed
    glue_cell(results, newer, "mrpc", 32, 1e-4, 42, {"f1": 0.85, "accuracy": 0.76})
    board = load.load_board(results)
    glue = render.section(board, "glue", Links(results), 3)
    assert f"[cfg](glue/{newer}/INDEX.md)" in glue and f"glue/{TINY_RUN}/" not in glue
    assert TINY_RUN in board.grids  # its cells and config index stay; only the table row leaves
    assert board.index_path(TINY_RUN) in glue_index.index_files(board)
    every = render.section(load.load_board(results, all_runs=True), "glue", Links(results), 3)
    assert f"[cfg](glue/{newer}/INDEX.md)" in every and f"[cfg](glue/{TINY_RUN}/INDEX.md)" in every


def test_all_runs_flag_writes_and_checks_every_run(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["leaderboard", "--all-runs", "--no-plots"]) == 0
    assert OLD_TINY_RUN in (results / load.LEADERBOARD_FILE).read_text()
    assert main(["leaderboard", "--all-runs", "--no-plots", "--check"]) == 0
    assert main(["leaderboard", "--no-plots", "--check"]) == 1  # the default lists the best runs only
    assert "table 'pretrain' is stale" in capsys.readouterr().out
    assert main(["leaderboard", "--no-plots"]) == 0
    assert OLD_TINY_RUN not in (results / load.LEADERBOARD_FILE).read_text()


# ---------------------------------------------------------------------------------------------- pretraining references


def test_pretraining_references_sit_after_zoo_runs_labelled_and_linked(results: Path) -> None:
    import yaml

    published = yaml.safe_load((results / "reference" / "classic-zoo.yaml").read_text())["pretrain"]
    board = load.load_board(results)
    wikipedia = pretrain_rows(board, "wikipedia")
    references = [row for row in wikipedia if "(reference, [classic model zoo](reference/classic-zoo.yaml))" in row]
    assert wikipedia[-len(references):] == references  # after zoo's runs although their perplexity is lower
    expected = [row for row in published if row["corpus"] == "wikipedia"]
    assert len(references) == len(expected) == 2
    for row, reference in zip(references, expected):
        cells = [cell.strip() for cell in row.split("|")[1:-1]]
        assert cells[:7] == [f"{reference['model']} (reference, [classic model zoo](reference/classic-zoo.yaml))",
                             reference["size"], "MLM", "wikipedia", f"{reference['epochs']} epochs",
                             f"{reference['perplexity']:.2f}", f"{reference['eval_loss']:.3f}"]
    (gpt2,) = pretrain_rows(board, "webtext")  # a corpus without zoo runs still shows its reference
    assert gpt2.startswith("| gpt2 (reference,") and "| CLM " in gpt2 and "| 137M |" in gpt2.replace("  ", "")
    note = render.section(board, "pretrain", Links(results), 3)
    assert "Rows marked *reference* are published results, not ranked among zoo's runs" in note
    assert lm_view.best_runs(board.lm)[("pretrain", "bert-tiny", "wikipedia")] == TINY_RUN


def test_a_bad_reference_row_is_a_one_line_error(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = results / "reference" / "zz-bad.yaml"
    bad.write_text("label: bad\npretrain:\n  - model: bert-tiny\n    size: 4M\n    objective: mlm\n"
                   "    corpus: wikipedia\n    perplexity: 26.2\n")
    assert main(["leaderboard", "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: reference row 'bert-tiny' needs 'eval_loss'" in err and len(err.strip().splitlines()) == 1
    assert not (results / load.LEADERBOARD_FILE).exists()


# ---------------------------------------------------------------------------------------------- files


def test_every_relative_link_resolves_and_plots_are_written(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    readme.write_bytes(README_TEMPLATE.encode())
    board = load.load_board(results)
    outputs.write_leaderboard(board)
    write_readme(board, readme)
    indexes = sorted(results.glob("glue/*/INDEX.md"))
    assert [p.parent.name for p in indexes] == ["bert-tiny", TINY_RUN]
    for document in (results / load.LEADERBOARD_FILE, readme, *indexes):
        links = relative_links(document.read_text(encoding="utf-8"))
        assert len(links) >= (3 if document in indexes else 10)
        missing = [link for link in links if not (document.parent / link).is_file()]
        assert not missing, f"{document.name}: links to missing files {missing}"
    heat = results / "plots" / f"glue-{TINY_RUN}-cola.png"
    loss = results / "plots" / f"pretrain-{TINY_RUN}.png"
    for figure in (heat, loss):
        assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 2000
    assert f"(plots/{heat.name})" in (results / load.LEADERBOARD_FILE).read_text()


def test_stale_figures_are_removed_and_unchanged_ones_not_rewritten(results: Path) -> None:
    board = load.load_board(results)
    figures.write_plots(board)
    orphan = results / "plots" / "pretrain-gone.png"
    orphan.write_bytes(b"\x89PNG")
    written, removed = figures.write_plots(board)
    assert (written, removed) == (0, 1) and not orphan.exists()


def test_cfg_link_reproduces_the_run(results: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pretrain = render.section(load.load_board(results), "pretrain", Links(results), 3)
    row = next(line for line in pretrain.splitlines() if TINY_RUN in line)
    cfg = results / re.search(r"\[cfg\]\(([^)]+)\)", row).group(1)
    assert main(["pretrain", "--recipe", str(cfg), "--dry-run"]) == 0
    assert capsys.readouterr().out == cfg.read_text()
    glue_index.write_indexes(load.load_board(results))
    glue = render.section(load.load_board(results), "glue", Links(results), 3)
    tiny_row = next(line for line in glue.splitlines() if TINY_RUN in line)
    index = results / re.search(r"\[cfg\]\(([^)]+)\)", tiny_row).group(1)
    mrpc_line = index_line(index.read_text(), "MRPC")
    mrpc_cfg = index.parent / re.search(r"\[recipe\.yaml\]\(([^)]+)\)", mrpc_line).group(1)
    record = json.loads((mrpc_cfg.parent / "run.json").read_text())
    assert record["hparams"]["batch_size"] == 32 and record["hparams"]["lr"] == 1e-4
    assert glue_recipe_hash(single_cell(load_glue_recipe(mrpc_cfg))) == record["recipe_hash"]


def test_leaderboard_check_imports_neither_torch_nor_transformers(results: Path) -> None:
    outputs.write_leaderboard(load.load_board(results))
    script = ("import argparse, sys\n"
              "from zoo.commands.leaderboard import run_command\n"
              "args = argparse.Namespace(readme=None, check=True, include_smoke=False, no_plots=False,\n"
              "                          all_runs=False)\n"
              "code = run_command(args)\n"
              "print('heavy:', sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers')))\n"
              "sys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "ZOO_RESULTS_DIR": str(results)})
    assert done.returncode == 0, done.stdout + done.stderr
    assert "leaderboard up to date" in done.stdout and "heavy: []" in done.stdout, done.stdout


# ---------------------------------------------------------------------------------------------- README


def test_readme_replacement_is_idempotent_and_keeps_every_other_byte(results: Path, tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    board = load.load_board(results)
    once = update_readme_text(README_TEMPLATE, board, readme)
    assert update_readme_text(once, board, readme) == once
    start, end = "<!-- zoo:leaderboard:pretrain:start -->", "<!-- zoo:leaderboard:glue:end -->"
    assert once.split(start)[0] == README_TEMPLATE.split(start)[0]  # CRLF and trailing spaces kept
    assert once.split(end)[1] == README_TEMPLATE.split(end)[1]
    between = "<!-- zoo:leaderboard:pretrain:end -->\n\n### GLUE\n\n<!-- zoo:leaderboard:glue:start -->"
    assert between in once and "old table" not in once
    assert "(results/pretrain/" in once  # links relative to the README's folder


def test_check_names_the_stale_table(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    readme = tmp_path / "README.md"
    readme.write_bytes(README_TEMPLATE.encode())
    args = ["leaderboard", "--readme", str(readme), "--no-plots"]
    assert main([*args, "--check"]) == 1
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "--check"]) == 0
    assert "up to date" in capsys.readouterr().out
    glue_cell(results, TINY_RUN, "rte", 32, 1e-4, 42, {"accuracy": 0.6})
    assert main([*args, "--check"]) == 1
    out = capsys.readouterr().out
    assert f"{readme}: table 'glue' is stale" in out and "table 'grids' is stale" in out
    assert "'pretrain'" not in out
    assert main(args) == 0
    readme.write_text(readme.read_text().replace("45.67", "45.00"))  # a hand edit inside a table
    capsys.readouterr()
    assert main([*args, "--check"]) == 1
    assert f"{readme}: table 'pretrain' is stale" in capsys.readouterr().out


@pytest.mark.parametrize("text, message", [
    ("no markers here\n", "no leaderboard markers"),
    ("<!-- zoo:leaderboard:glue:start -->\n", "has no end marker"),
    ("<!-- zoo:leaderboard:glue:end -->\n", "has no start marker"),
    ("<!-- zoo:leaderboard:scores:start --><!-- zoo:leaderboard:scores:end -->", "unknown leaderboard table"),
])
def test_bad_markers_are_one_line_errors(results: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         text: str, message: str) -> None:
    readme = tmp_path / "README.md"
    readme.write_text(text)
    assert main(["leaderboard", "--readme", str(readme), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert readme.read_text() == text


def test_empty_results_say_so(isolated: Path) -> None:
    markdown = render.leaderboard_markdown(load.load_board(Path(os.environ["ZOO_RESULTS_DIR"])))
    assert "_No pretraining runs recorded yet._" in markdown and "_No GLUE runs recorded yet._" in markdown
    assert "|" not in markdown  # no reference file: no table at all


def test_a_real_pretraining_record_reaches_the_leaderboard(text_corpus: Path, isolated: Path) -> None:
    import yaml

    from tests.conftest import TINY_GPT2

    config = yaml.safe_dump(TINY_GPT2, default_flow_style=True).strip()
    assert main(["pretrain", "gpt2", "text", "--smoke", "--set", f"data.paths=[{text_corpus}]",
                 f"model.config={config}", "data.block_size=32", "data.validation_fraction=0.1",
                 "train.batch_size=4", "train.log_every=1", "train.max_steps=3", "eval.max_blocks=8"]) == 0
    root = Path(os.environ["ZOO_RESULTS_DIR"])
    (run_json,) = root.glob("pretrain/*/run.json")
    record = json.loads(run_json.read_text())
    assert record["run_id"] not in render.leaderboard_markdown(load.load_board(root))  # a smoke run
    board = load.load_board(root, include_smoke=True)
    outputs.write_leaderboard(board)
    markdown = (root / load.LEADERBOARD_FILE).read_text()
    row = next(line for line in markdown.splitlines() if record["run_id"] in line)
    assert f" {record['metrics']['perplexity']:,.2f} |" in row and "| CLM " in row
    assert f"[cfg](pretrain/{record['run_id']}/recipe.yaml)" in row
    assert (root / "plots" / f"pretrain-{record['run_id']}.png").is_file()


def test_committed_readme_and_leaderboard_match_the_committed_records(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """CI's guard: after adding records, run `zoo leaderboard --readme README.md` and commit the result."""
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(REPO / "results"))
    assert main(["leaderboard", "--readme", str(REPO / "README.md"), "--check"]) == 0, capsys.readouterr().out

"""Leaderboards: golden tables from fixed records, README markers, --check, failed/smoke runs, links, plots.

The fixed records below are written as run.json + recipe.yaml files, the way `zoo pretrain` and
`zoo glue` write them (the recipes are real resolved recipes), with fixed timings and hardware so the
markdown is deterministic. The expected markdown lives in tests/golden/; after an intended change of
the tables, regenerate it with

    ZOO_UPDATE_GOLDEN=1 python -m pytest -q tests/test_leaderboard.py

and review the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from zoo.cli import main
from zoo.leaderboard import figures, glue_index, glue_view, lm_view, load, outputs, render
from zoo.leaderboard.readme import update_readme_text, write_readme
from zoo.leaderboard.text import Links
from zoo.recipe.glue import cell_recipe, glue_recipe_hash, glue_recipe_yaml, load_glue_recipe, single_cell
from zoo.recipe.lm import compose, recipe_yaml, resolve

GOLDEN = Path(__file__).parent / "golden"
REPO = Path(__file__).resolve().parents[1]
UPDATE = os.environ.get("ZOO_UPDATE_GOLDEN") == "1"
ENVIRONMENT = {"hardware": {"device": "NVIDIA H200", "gpus": 1}, "versions": {"zoo": "0.1.0"},
               "git": {"commit": "0" * 40, "dirty": False}}
CPU = {"hardware": {"device": "CPU x2", "gpus": 0}, "versions": {"zoo": "0.1.0"}, "git": {"commit": None}}
TINY_RUN = "bert-tiny-wikipedia-20250101-000000"
OLD_TINY_RUN = "bert-tiny-wikipedia-20241201-000000"  # an older, worse run of the same model and corpus
README_TEMPLATE = ("# project\r\n\r\nSome text with trailing spaces   \r\n\n## Model zoo\n\n### Pretraining\n\n"
                   "<!-- zoo:leaderboard:pretrain:start -->\nold table\n<!-- zoo:leaderboard:pretrain:end -->\n\n"
                   "### GLUE\n\n<!-- zoo:leaderboard:glue:start --><!-- zoo:leaderboard:glue:end -->\n\nünïcode tail")


def write_run(root: Path, kind: str, run_id: str, record: dict[str, Any], recipe_text: str) -> Path:
    directory = root / kind / run_id
    directory.mkdir(parents=True)
    (directory / "recipe.yaml").write_text(recipe_text)
    (directory / "run.json").write_text(json.dumps({"run_id": run_id, "kind": kind, **record}, indent=2))
    return directory


def lm_recipe(kind: str, model: str, corpus: str, max_steps: int, name: str = "") -> str:
    overrides = [f"train.max_steps={max_steps}"] + ([f"name={name}"] if name else [])
    return recipe_yaml(resolve(compose(kind, model, corpus, overrides)[0]))


def curve(losses: list[float], eval_losses: list[float]) -> list[dict[str, Any]]:
    train = [{"step": 100 * (i + 1), "loss": loss, "learning_rate": 1e-4} for i, loss in enumerate(losses)]
    evals = [{"step": 200 * (i + 1), "eval_loss": loss, "eval_perplexity": 2.718 ** loss}
             for i, loss in enumerate(eval_losses)]
    return train + evals


def lm_record(model: str, corpus: str, objective: str, **fields: Any) -> dict[str, Any]:
    record = {"name": f"{model}-{corpus}", "status": "ok", "reason": None, "smoke": False, "model": model,
              "corpus": corpus, "objective": objective, "params": 4386178, "steps": 2000, "tokens_seen": 16384000,
              "tokens_per_s": 52000.0, "train_time_s": 315.0, "wall_time_s": 342.6,
              "metrics": {"eval_loss": 3.8214, "perplexity": 45.672, "eval_tokens": 250000, "train_loss": 3.9},
              "history": curve([6.1, 4.9, 4.2, 3.9], [4.4, 3.82]),
              "launch": {"world_size": 1, "deepspeed": False, "zero_stage": None}, "environment": ENVIRONMENT}
    record.update(fields)
    return record


def write_lm_runs(root: Path) -> None:
    write_run(root, "pretrain", TINY_RUN, lm_record("bert-tiny", "wikipedia", "mlm"),
              lm_recipe("pretrain", "bert-tiny", "wikipedia", 2000))
    write_run(root, "pretrain", "gpt2-mini-wikipedia-20250102-000000",
              lm_record("gpt2-mini", "wikipedia", "clm", params=11_470_080, tokens_seen=2_621_440_000,
                        wall_time_s=11100.4, metrics={"eval_loss": 4.7931, "perplexity": 120.68},
                        launch={"world_size": 4, "deepspeed": True, "zero_stage": 2}),
              lm_recipe("pretrain", "gpt2-mini", "wikipedia", 20000))
    # failed: its leftover metrics must never show as a score
    write_run(root, "pretrain", "bert-mini-wikipedia-20250103-000000",
              lm_record("bert-mini", "wikipedia", "mlm", status="failed", params=11_170_560, tokens_seen=None,
                        reason="NonFiniteLoss: training loss became nan at step 120",
                        metrics={"eval_loss": 1.2345, "perplexity": 3.4567}, history=curve([6.0, 9.5], [])),
              lm_recipe("pretrain", "bert-mini", "wikipedia", 2000))
    # smoke twice over: marked smoke, and a 5-step recipe; their (too good) numbers must stay hidden
    write_run(root, "pretrain", "bert-tiny-wikipedia-20250104-000000",
              lm_record("bert-tiny", "wikipedia", "mlm", smoke=True, metrics={"eval_loss": 0.1, "perplexity": 1.11}),
              lm_recipe("pretrain", "bert-tiny", "wikipedia", 2000))
    write_run(root, "pretrain", "bert-tiny-imdb-20250105-000000",
              lm_record("bert-tiny", "imdb", "mlm", metrics={"eval_loss": 0.2, "perplexity": 1.22}),
              lm_recipe("pretrain", "bert-tiny", "imdb", 5))
    write_run(root, "pretrain", "bert-tiny-wwm-20250106-000000",
              lm_record("bert-tiny", "imdb", "mlm", name="bert-tiny-wwm", wall_time_s=59.4, environment=CPU,
                        metrics={"eval_loss": 3.1001, "perplexity": 22.2}),
              lm_recipe("pretrain", "bert-tiny", "imdb", 500, name="bert-tiny-wwm"))
    # replaced by better runs of their model and corpus: off the tables unless --all-runs
    write_run(root, "pretrain", OLD_TINY_RUN,
              lm_record("bert-tiny", "wikipedia", "mlm", tokens_seen=2_457_600, wall_time_s=1188.0, environment=CPU,
                        metrics={"eval_loss": 7.2689, "perplexity": 1435.21}, history=curve([7.5, 7.3], [7.27])),
              lm_recipe("pretrain", "bert-tiny", "wikipedia", 300))
    write_run(root, "pretrain", "gpt2-mini-wikipedia-20250108-000000",
              lm_record("gpt2-mini", "wikipedia", "clm", status="failed", params=11_470_080, tokens_seen=None,
                        reason="NonFiniteLoss: training loss became nan at step 40",
                        metrics={"eval_loss": 0.5, "perplexity": 1.65}, history=curve([6.0], [])),
              lm_recipe("pretrain", "gpt2-mini", "wikipedia", 20000))
    write_run(root, "finetune", "distilgpt2-wikitext-2-20250107-000000",
              lm_record("distilgpt2", "wikitext-2", "clm", kind="finetune", params=81_912_576,
                        before={"eval_loss": 4.1, "perplexity": 60.34},
                        metrics={"eval_loss": 3.5612, "perplexity": 35.2}),
              lm_recipe("finetune", "distilgpt2", "wikitext-2", 1000))


def glue_cell(root: Path, model: str, task: str, batch_size: int, lr: float, seed: int, dev: dict[str, float],
              status: str = "ok", smoke: bool = False) -> Path:
    recipe = cell_recipe(load_glue_recipe(overrides=[f"model.name={model}"]), task, batch_size, lr, seed)
    recipe.smoke = smoke
    ok = status == "ok"
    record = {
        "kind": "glue", "model": model, "model_tag": model, "task": task, "status": status,
        "reason": None if ok else "RuntimeError: CUDA out of memory", "smoke": smoke,
        "recipe_hash": glue_recipe_hash(recipe), "recipe": "recipe.yaml",
        "hparams": {"batch_size": batch_size, "lr": lr, "epochs": 4.0, "seed": seed},
        "epochs": [{"epoch": 4.0, "dev": dev, "train_loss": 0.5}] if ok else [],
        "metrics": {"dev": dev if ok else {}, "score": sum(dev.values()) / len(dev) if ok else None},
        "params": 4386178, "wall_time_s": 60.0, "environment": ENVIRONMENT,
    }
    run_id = f"bs{batch_size}-lr{lr:.0e}-s{seed}"
    return write_run(root / "glue" / model, task, run_id, record, glue_recipe_yaml(recipe))


def write_glue_cells(root: Path) -> None:
    cola = {(16, 1e-4): 0.151, (16, 5e-5): 0.123, (32, 1e-4): None, (32, 5e-5): 0.151}  # tie: bs 16 wins
    for (bs, lr), mcc in cola.items():
        glue_cell(root, TINY_RUN, "cola", bs, lr, 42, {"mcc": mcc or 0.0}, status="ok" if mcc else "failed")
    mrpc = {(16, 1e-4, 42): (0.80, 0.70), (16, 5e-5, 42): (0.83, 0.73), (16, 5e-5, 43): (0.79, 0.69),
            (32, 1e-4, 42): (0.812, 0.711), (32, 5e-5, 42): (0.75, 0.66)}  # (16, 5e-5) averages 81.0/71.0
    for (bs, lr, seed), (f1, acc) in mrpc.items():
        glue_cell(root, TINY_RUN, "mrpc", bs, lr, seed, {"f1": f1, "accuracy": acc})
    glue_cell(root, TINY_RUN, "rte", 16, 1e-4, 42, {"accuracy": 0.99}, smoke=True)
    for bs in (16, 32):  # a registry model whose every RTE cell failed
        glue_cell(root, "bert-tiny", "rte", bs, 1e-4, 42, {}, status="failed")
    glue_cell(root, "bert-tiny", "sst2", 32, 3e-5, 42, {"accuracy": 0.8312})


@pytest.fixture
def results(isolated: Path) -> Path:
    root = Path(os.environ["ZOO_RESULTS_DIR"])
    write_lm_runs(root)
    write_glue_cells(root)
    shutil.copytree(REPO / "results" / "reference", root / "reference")
    return root


def assert_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(text.encode())
    assert path.is_file(), f"{path} missing; create it with ZOO_UPDATE_GOLDEN=1"
    assert text == path.read_bytes().decode(), f"{name} differs from its golden file (ZOO_UPDATE_GOLDEN=1)"


RELATIVE_LINK = re.compile(r"\]\((?!https?://)([^)]+)\)")


def relative_links(markdown: str) -> list[str]:
    return RELATIVE_LINK.findall(markdown)


def index_line(markdown: str, task_label: str) -> str:
    """The table line of one task ('MRPC') in a GLUE config index."""
    return next(line for line in markdown.splitlines() if line.startswith(f"| {task_label} ("))


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

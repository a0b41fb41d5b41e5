"""`zoo glue` end to end on a tiny BERT: one run's record, the resumable grid, failures, workers."""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path

import pytest
import yaml

from tests.conftest import save_tiny_bert
from zoo.cli import main
from zoo.glue.cell import Cell
from zoo.glue.grid import claimed, run_claimed
from zoo.recipe.glue import cell_recipe, load_glue_recipe

RECORD_KEYS = {"run_id", "kind", "model", "model_tag", "task", "status", "reason", "smoke", "recipe_hash", "recipe",
               "hparams", "epochs", "metrics", "params", "started_at", "finished_at", "wall_time_s", "environment"}
TINY_TASK = ["--smoke", "--set", "task.max_train_examples=32", "task.max_eval_examples=16", "train.epochs=1"]
GRID_2X2 = [*TINY_TASK, "grid.batch_sizes=[8,16]", "grid.lrs=[1e-4,3e-4]"]


@pytest.fixture
def tiny_model(tmp_path: Path, mirror: Path) -> Path:
    return save_tiny_bert(tmp_path / "tiny-bert")


def records(root: Path, task: str) -> list[Path]:
    return sorted((root / "results" / "glue" / "tiny-bert" / task).glob("*/run.json"))


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def test_one_run_writes_a_record_that_its_recipe_reproduces(tiny_model: Path, isolated: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["glue", str(tiny_model), "--task", "wnli", "--set", "train.lr=1e-4", "train.batch_size=16",
            "task.max_train_examples=32", "task.max_eval_examples=16", "train.epochs=2", "--smoke"]
    assert main(argv) == 0
    [path] = records(isolated, "wnli")
    record = read(path)
    assert set(record) >= RECORD_KEYS
    assert record["run_id"] == path.parent.name and record["run_id"].startswith("bs16-lr1e-04-s42-")
    assert record["run_id"].endswith(record["recipe_hash"])
    assert (record["kind"], record["task"], record["status"], record["smoke"]) == ("glue", "wnli", "ok", True)
    assert (record["model"], record["model_tag"], record["reason"]) == (str(tiny_model), "tiny-bert", None)
    assert record["hparams"] == {"batch_size": 16, "lr": 1e-4, "epochs": 2.0, "seed": 42}
    assert [e["epoch"] for e in record["epochs"]] == [1.0, 2.0]
    assert all(set(e["dev"]) == {"accuracy"} and e["train_loss"] > 0 for e in record["epochs"])
    assert record["metrics"]["dev"] == record["epochs"][-1]["dev"]  # the last epoch's dev metrics
    assert record["metrics"]["score"] == record["metrics"]["dev"]["accuracy"]
    assert 0.0 <= record["metrics"]["score"] <= 1.0 and record["params"] > 0
    assert record["environment"]["versions"]["transformers"]
    saved = path.parent / "recipe.yaml"
    assert yaml.safe_load(saved.read_text())["train"]["lr"] == 1e-4
    capsys.readouterr()
    assert main(["glue", "--recipe", str(saved), "--dry-run"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(path.parent)  # same cell, same hash
    assert main(["glue", "--recipe", str(saved)]) == 0  # already done: nothing re-runs
    assert "ran 0 cell(s)" in capsys.readouterr().out and read(path) == record


def test_grid_resumes_and_reruns_exactly_the_missing_cell(tiny_model: Path, isolated: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["glue", str(tiny_model), "--grid", "--tasks", "wnli", *GRID_2X2]
    assert main(argv) == 0
    paths = records(isolated, "wnli")
    assert len(paths) == 4 and all(read(p)["status"] == "ok" for p in paths)
    assert {(read(p)["hparams"]["batch_size"], read(p)["hparams"]["lr"]) for p in paths} == \
        {(8, 1e-4), (8, 3e-4), (16, 1e-4), (16, 3e-4)}
    cache = sorted(p.name.split("-")[1] for p in (isolated / "cache" / "glue").iterdir())
    assert cache == ["dev", "train"]  # tokenized once, shared by the four cells
    stamps = {p: p.stat().st_mtime_ns for p in paths}
    capsys.readouterr()

    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "ran 0 cell(s)" in out and "skipped 4 finished" in out
    assert {p: p.stat().st_mtime_ns for p in paths} == stamps

    deleted = paths[1]
    shutil.rmtree(deleted.parent)
    assert main(argv) == 0
    assert "ran 1 cell(s) (1 ok, 0 failed), skipped 3 finished" in capsys.readouterr().out
    assert deleted.is_file() and read(deleted)["status"] == "ok"
    assert all(p.stat().st_mtime_ns == stamps[p] for p in paths if p != deleted)

    summary = json.loads((isolated / "results/glue/tiny-bert/summary.smoke.json").read_text())
    wnli = summary["tasks"]["wnli"]
    assert wnli["cells"] == {"ok": 4} and set(wnli["table"]) == {"8", "16"}
    assert set(wnli["table"]["8"]) == {"1e-04", "3e-04"}
    scores = [read(p)["metrics"]["score"] for p in paths]
    assert wnli["best"]["score"] == max(scores)
    tied = sorted((r["batch_size"], r["lr"]) for r in wnli["rows"] if r["score"] == max(scores))
    assert (wnli["best"]["batch_size"], wnli["best"]["lr"]) == tied[0]  # ties: smaller bs, then lr

    capsys.readouterr()  # the grid ran without test predictions: the best cell runs once more to make them
    assert main([*argv, "--predict-test"]) == 0
    assert "has no test predictions; running it again" in capsys.readouterr().out
    submission = isolated / "checkpoints/glue/tiny-bert/submission-smoke"
    lines = (submission / "WNLI.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and len(lines) == 1 + 146
    assert {line.split("\t")[1] for line in lines[1:]} <= {"0", "1"}
    assert zipfile.ZipFile(submission / "submission.zip").namelist() == ["WNLI.tsv"]


def test_a_single_run_and_the_same_grid_cell_share_one_record(tiny_model: Path) -> None:
    base = load_glue_recipe(overrides=["task.max_train_examples=32"])
    base.model.name = str(tiny_model)
    base.grid.batch_sizes, base.grid.lrs = [8, 16, 32], [1e-4, 3e-5]
    single = load_glue_recipe(overrides=["task.max_train_examples=32", "task.name=rte", "train.batch_size=16",
                                         "train.lr=3e-5"])
    single.model.name = str(tiny_model)
    from zoo.recipe.glue import cell_id, single_cell

    assert cell_id(cell_recipe(base, "rte", 16, 3e-5, 42)) == cell_id(single_cell(single))
    assert cell_id(cell_recipe(base, "rte", 16, 3e-5, 43)) != cell_id(single_cell(single))


def test_best_setting_is_chosen_on_the_mean_over_seeds_with_deterministic_ties() -> None:
    from zoo.glue.selection import best_row

    def row(bs: int, lr: float, seed: int, score: float | None, status: str = "ok") -> dict:
        return {"run_id": f"bs{bs}-lr{lr}-s{seed}", "batch_size": bs, "lr": lr, "seed": seed, "score": score,
                "status": status, "dev": {}}

    rows = [row(8, 1e-4, 42, 0.75), row(8, 1e-4, 43, 0.5),  # mean 0.625
            row(16, 1e-4, 42, 0.5), row(16, 1e-4, 43, 1.0),  # mean 0.75 (its best seed scores 1.0)
            row(8, 3e-4, 43, 0.75), row(8, 3e-4, 42, 0.75),  # mean 0.75: ties with bs 16, smaller bs wins
            row(4, 1e-4, 42, None, "failed")]
    best = best_row(rows)
    assert (best["batch_size"], best["lr"], best["seed"]) == (8, 3e-4, 42)  # seed tie: the smaller seed
    assert best["setting_score"] == 0.75 and best["setting_seeds"] == 2
    assert best_row([row(8, 1e-4, 42, None, "failed")]) is None


def write_tsv(path: Path, lines: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_a_failing_cell_is_recorded_and_the_grid_goes_on(tiny_model: Path, isolated: Path, mirror: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    glue = isolated / "mirror" / "glue_data"
    for name, rows in (("train", 40), ("dev", 20)):
        lines = (mirror / f"glue_data/WNLI/{name}.tsv").read_text().splitlines()[: rows + 1]
        write_tsv(glue / f"WNLI/{name}.tsv", lines)
    header = "index\tsentence1\tsentence2\tlabel"
    write_tsv(glue / "RTE/train.tsv", [header, "0\tA man runs.\tA person runs.\tentailment", "1\ttruncated row"])
    write_tsv(glue / "RTE/dev.tsv", [header, "0\tA man runs.\tNobody runs.\tnot_entailment"])
    monkeypatch.setenv("ZOO_DATA_DIR", str(isolated / "mirror"))
    argv = ["glue", str(tiny_model), "--grid", "--tasks", "rte,wnli", *TINY_TASK, "grid.batch_sizes=[8]",
            "grid.lrs=[1e-4,3e-4]"]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert out.count("FAILED") == 2 and "ran 4 cell(s) (2 ok, 2 failed)" in out
    failed = [read(p) for p in records(isolated, "rte")]
    assert len(failed) == 2 and all(r["status"] == "failed" for r in failed)
    assert all("RTE/train.tsv:3: 2 tab-separated fields, expected 4" in r["reason"] for r in failed)
    assert all(r["metrics"]["score"] is None for r in failed)
    assert [read(p)["status"] for p in records(isolated, "wnli")] == ["ok", "ok"]
    assert main(argv) == 1  # failed cells are tried again; finished ones are not
    assert "ran 2 cell(s) (0 ok, 2 failed), skipped 2 finished" in capsys.readouterr().out


def test_mnli_records_matched_and_mismatched_and_predicts_test(tiny_model: Path, isolated: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    glue = isolated / "mirror" / "glue_data"
    columns = ["index", "promptID", "pairID", "genre", "s1b", "s2b", "s1p", "s2p", "sentence1", "sentence2"]
    pairs = [("Dogs bark.", "Animals make sounds.", "entailment"), ("It rained.", "It was dry.", "contradiction"),
             ("A cat sat.", "It was black.", "neutral"), ("He ran.", "He moved.", "entailment")]
    rows = ["\t".join([str(i), "1", "2", "g", "x", "y", "x", "y", a, b]) for i, (a, b, _) in enumerate(pairs)]
    write_tsv(glue / "MNLI/train.tsv", ["\t".join([*columns, "label1", "gold_label"])] +
              [f"{row}\t{label}\t{label}" for row, (_, _, label) in zip(rows, pairs)])
    for name in ("dev_matched", "dev_mismatched"):
        write_tsv(glue / f"MNLI/{name}.tsv", ["\t".join([*columns, "label1", "gold_label"])] +
                  [f"{row}\t{label}\t{label}" for row, (_, _, label) in zip(rows[:3], pairs)])
    write_tsv(glue / "MNLI/test_matched.tsv", ["\t".join(columns)] + rows)
    monkeypatch.setenv("ZOO_DATA_DIR", str(isolated / "mirror"))
    out = isolated / "submission"
    assert main(["glue", str(tiny_model), "--task", "mnli", "--smoke", "--predict-test", "--predict-dir", str(out),
                 "--set", "train.batch_size=2", "train.epochs=1"]) == 0
    [record] = [read(p) for p in records(isolated, "mnli")]
    assert set(record["metrics"]["dev"]) == {"accuracy_m", "accuracy_mm"}
    dev = record["metrics"]["dev"]
    assert record["metrics"]["score"] == pytest.approx((dev["accuracy_m"] + dev["accuracy_mm"]) / 2)
    lines = (out / "MNLI-m.tsv").read_text().splitlines()
    assert lines[0] == "index\tprediction" and [line.split("\t")[0] for line in lines[1:]] == ["0", "1", "2", "3"]
    assert {line.split("\t")[1] for line in lines[1:]} <= {"entailment", "neutral", "contradiction"}
    assert not (out / "MNLI-mm.tsv").exists()  # no test_mismatched file here: nothing to predict
    assert zipfile.ZipFile(out / "submission.zip").namelist() == ["MNLI-m.tsv"]


def test_parallel_workers_write_exactly_one_record_per_cell(tiny_model: Path, isolated: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["glue", str(tiny_model), "--grid", "--tasks", "wnli", "--workers", "2", *GRID_2X2]) == 0
    out = capsys.readouterr().out
    assert "2 worker(s)" in out and "ran 4 cell(s) (4 ok, 0 failed)" in out
    paths = records(isolated, "wnli")
    assert len(paths) == 4 and len({read(p)["run_id"] for p in paths}) == 4
    assert all(read(p)["status"] == "ok" for p in paths)
    threads = max(1, len(os.sched_getaffinity(0)) // 2)  # the cores split between the two workers
    assert all(read(p)["environment"]["hardware"]["torch_threads"] == threads for p in paths)
    assert not list((isolated / "results").rglob(".lock"))


def test_a_cell_held_by_another_process_is_not_run(tiny_model: Path, isolated: Path) -> None:
    recipe = cell_recipe(load_glue_recipe(overrides=["train.epochs=1"]), "wnli", 8, 1e-4, 42)
    recipe.model.name = str(tiny_model)
    cell = Cell(recipe, str(tiny_model))
    with claimed(cell) as mine:
        assert mine
        assert run_claimed(cell).status == "busy"
    assert not (cell.directory / "run.json").exists() and not (cell.directory / ".lock").exists()


@pytest.mark.parametrize(("extra", "message"), [
    (["--set", "train.lr=fast"], "train.lr: expected float"),
    (["--set", "grid.lrs=[]"], "grid.lrs must list at least one value"),
    (["--set", "task.colour=red"], "unknown key 'colour'"),
    (["--task", "squad"], "unknown GLUE task 'squad'"),
    (["--task", "qqp"], "glue_data/QQP/train.tsv"),
])
def test_user_mistakes_are_one_line_errors(tiny_model: Path, isolated: Path, extra: list[str], message: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["glue", str(tiny_model), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (isolated / "results").exists()


def test_missing_model_and_shipped_recipes(isolated: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["glue", str(isolated / "no-such-model"), "--task", "wnli"]) == 2
    assert "not available offline" in capsys.readouterr().err
    assert main(["validate", *map(str, sorted(Path("recipes/glue").glob("*.yaml")))]) == 0


def test_a_grid_over_some_batch_sizes_adds_to_the_summary_of_its_task(tiny_model: Path, isolated: Path) -> None:
    argv = ["glue", str(tiny_model), "--grid", "--tasks", "wnli", *TINY_TASK, "grid.lrs=[1e-4,3e-4]"]
    assert main([*argv, "grid.batch_sizes=[8]"]) == 0
    assert main([*argv, "grid.batch_sizes=[16]"]) == 0  # the second invocation plans only the bs-16 cells
    wnli = json.loads((isolated / "results/glue/tiny-bert/summary.smoke.json").read_text())["tasks"]["wnli"]
    assert wnli["cells"] == {"ok": 4} and set(wnli["table"]) == {"8", "16"}
    scores = {r["run_id"]: r["score"] for r in wnli["rows"]}
    assert scores == {p.parent.name: read(p)["metrics"]["score"] for p in records(isolated, "wnli")}
    assert wnli["best"]["score"] == max(scores.values())

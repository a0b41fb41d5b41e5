"""`train.report_to`: dashboards through the Trainer's integrations, offline; recipe hashes unchanged."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tests.conftest import TINY_BERT, save_tiny_bert
from tests.test_pretrain import only_record, tiny_args
from zoo.cli import main
from zoo.paths import recipes_dir
from zoo.recipe.common import dict_hash, read_yaml
from zoo.recipe.lm import compose, load_recipe, recipe_dict, recipe_hash, resolve
from zoo.recipe.schema import RecipeError

REPO_RESULTS = recipes_dir().parent / "results"


def test_report_to_is_a_checked_list_and_empty_by_default() -> None:
    assert resolve(compose("pretrain", "bert-tiny", "imdb")[0]).train.report_to == []
    recipe = resolve(compose("pretrain", "bert-tiny", "imdb", ["train.report_to=tensorboard"])[0])
    assert recipe.train.report_to == ["tensorboard"]
    both = resolve(compose("pretrain", "bert-tiny", "imdb", ["train.report_to=[wandb, mlflow]"])[0])
    assert both.train.report_to == ["wandb", "mlflow"]
    with pytest.raises(RecipeError, match=r"--set train.report_to\[0\]: expected 'tensorboard' \| 'trackio'"):
        compose("pretrain", "bert-tiny", "imdb", ["train.report_to=[comet]"])


def test_the_default_keeps_the_hash_runs_had_before_the_setting_existed() -> None:
    recipe = resolve(compose("pretrain", "bert-tiny", "imdb")[0])
    legacy = recipe_dict(recipe)
    assert legacy["train"]["report_to"] == []
    del legacy["train"]["report_to"]
    assert recipe_hash(recipe) == dict_hash(legacy)
    dashboards = resolve(compose("pretrain", "bert-tiny", "imdb", ["train.report_to=tensorboard"])[0])
    assert recipe_hash(dashboards) != recipe_hash(recipe)


def test_every_committed_lm_recipe_still_hashes_to_its_record() -> None:
    committed = sorted(REPO_RESULTS.glob("*/*/run.json"))
    committed = [p for p in committed if p.parent.parent.name in ("pretrain", "finetune")]
    assert committed
    for path in committed:
        record = json.loads(path.read_text())
        recipe = load_recipe(read_yaml(path.parent / "recipe.yaml"), str(path))
        assert recipe_hash(recipe) == record["recipe_hash"], path


def test_tensorboard_event_files_hold_the_recorded_losses(text_corpus: Path, isolated: Path) -> None:
    pytest.importorskip("tensorboard", reason="TensorBoard is the `dashboards` extra: pip install -e '.[dashboards]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    args = tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=4", "train.eval_every=2",
                     "train.report_to=[tensorboard]")
    assert main(args) == 0
    record = only_record(isolated)
    logs = isolated / "checkpoints" / record["run_id"] / "dashboards" / "tensorboard"
    assert list(logs.glob("events.out.tfevents.*")), f"no event file under {logs}"
    events = EventAccumulator(str(logs))
    events.Reload()
    train = {e.step: e.value for e in events.Scalars("train/loss")}
    evaluations = {e.step: e.value for e in events.Scalars("eval/loss")}
    recorded_train = {h["step"]: h["loss"] for h in record["history"] if "loss" in h}
    recorded_eval = {h["step"]: h["eval_loss"] for h in record["history"] if "eval_loss" in h}
    assert sorted(train) == sorted(recorded_train) == [1, 2, 3, 4]
    assert sorted(evaluations) == sorted(recorded_eval) == [2, 4]
    for step, loss in recorded_train.items():  # TensorBoard stores float32
        assert math.isclose(train[step], loss, rel_tol=1e-6), (step, train[step], loss)
    for step, loss in recorded_eval.items():
        assert math.isclose(evaluations[step], loss, rel_tol=1e-6), (step, evaluations[step], loss)
    assert record["metrics"]["eval_loss"] == pytest.approx(evaluations[4], rel=1e-6)


def test_a_dashboard_that_is_not_installed_is_one_line_before_training(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    args = tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=2", "train.report_to=[wandb]")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["zoo: error: train.report_to=['wandb'] needs wandb: pip install wandb "
                   "(tensorboard: pip install -e '.[dashboards]')"]
    assert not list((isolated / "checkpoints").glob("*/checkpoint-*"))


def test_a_glue_cell_keeps_its_tensorboard_events_and_its_id(tmp_path: Path, isolated: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = save_tiny_bert(tmp_path / "tiny-bert")
    tiny = ["--smoke", "--set", "task.max_train_examples=32", "task.max_eval_examples=16", "train.epochs=2"]
    assert main(["glue", str(model), "--task", "rte", *tiny, "train.report_to=[tensorboard]"]) == 0
    [record] = (isolated / "results" / "glue" / "tiny-bert" / "rte").glob("*/run.json")
    events = list((isolated / "checkpoints" / "glue" / "tiny-bert" / "rte" / record.parent.name / "dashboards")
                  .rglob("events.out.tfevents.*"))
    assert events
    accumulator = EventAccumulator(str(events[0].parent))
    accumulator.Reload()
    losses = [event.value for event in accumulator.Scalars("train/loss")]
    logged = [epoch["train_loss"] for epoch in json.loads(record.read_text())["epochs"]]
    assert losses == pytest.approx(logged, rel=1e-6)
    assert main(["glue", str(model), "--task", "rte", *tiny]) == 0  # the same cell: already done
    assert len(list(record.parent.parent.iterdir())) == 1

"""The optimiser settings of `train`: AdamW's betas and epsilon, the trapezoid schedule, the batch-size ramp, training
dropout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForMaskedLM, Trainer

from tests.conftest import TINY_BERT
from tests.test_pretrain import only_record, tiny_args
from zoo import paths
from zoo.cli import main
from zoo.recipe.common import HASH_NEUTRAL, TrainSection
from zoo.recipe.lm import load_recipe, recipe_hash
from zoo.train.hf_trainer import ZooSchedules, ramped_batch_size, training_arguments


class ScheduledTrainer(ZooSchedules, Trainer):
    pass


def learning_rates(train: TrainSection, steps: int, tmp_path: Path) -> tuple[list[float], torch.optim.Optimizer]:
    model = BertForMaskedLM(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=32))
    trainer = ScheduledTrainer(model=model, args=training_arguments(tmp_path, train, 8, None))
    trainer.create_optimizer_and_scheduler(num_training_steps=steps)
    rates = []
    for _ in range(steps + 1):
        rates.append(trainer.lr_scheduler.get_last_lr()[0])
        trainer.optimizer.step()
        trainer.lr_scheduler.step()
    return rates, trainer.optimizer


def test_trapezoid_warms_up_holds_and_decays_linearly_to_zero(tmp_path: Path) -> None:
    rates, _ = learning_rates(TrainSection(lr=1e-3, warmup=0.1, schedule="trapezoid", decay=0.25), 100, tmp_path)
    assert rates[0] == 0.0 and rates[5] == pytest.approx(5e-4)  # 10 warm-up steps
    assert all(rate == pytest.approx(1e-3) for rate in rates[10:76])  # constant until the last 25 steps
    assert rates[85] == pytest.approx(1e-3 * 15 / 25) and rates[100] == pytest.approx(0.0, abs=1e-12)
    linear, _ = learning_rates(TrainSection(lr=1e-3, warmup=0.1), 100, tmp_path)
    assert linear[55] == pytest.approx(5e-4)  # the linear schedule decays from the end of the warm-up


def test_polynomial_decays_by_its_power_to_zero(tmp_path: Path) -> None:
    rates, _ = learning_rates(TrainSection(lr=1e-3, warmup=0.1, schedule="polynomial", decay_power=2.0), 100, tmp_path)
    assert rates[5] == pytest.approx(5e-4) and rates[10] == pytest.approx(1e-3)
    assert rates[55] == pytest.approx(1e-3 * 0.5**2) and rates[100] == pytest.approx(0.0, abs=1e-12)
    linear, _ = learning_rates(TrainSection(lr=1e-3, warmup=0.1, schedule="polynomial"), 100, tmp_path)
    assert linear[55] == pytest.approx(5e-4)  # power 1 is the linear schedule


def test_adam_betas_and_epsilon_reach_the_optimizer(tmp_path: Path) -> None:
    _, optimizer = learning_rates(TrainSection(adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6), 1, tmp_path)
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.95), 1e-6)}


def test_the_new_settings_keep_every_committed_pretraining_run_id() -> None:
    committed = sorted((paths.recipes_dir().parent / "results" / "pretrain").glob("*/run.json"))
    assert committed
    added_later = {key for section, key in HASH_NEUTRAL if section == "train"}
    older = 0
    for path in committed:
        saved = yaml.safe_load((path.parent / "recipe.yaml").read_text())
        recipe = load_recipe(saved, str(path))
        assert recipe_hash(recipe) == json.loads(path.read_text())["recipe_hash"], path
        # recorded before these settings existed: they load at their neutral values
        absent = {key for key in added_later if hasattr(recipe.train, key)} - set(saved["train"])
        assert all(getattr(recipe.train, key) == HASH_NEUTRAL[("train", key)] for key in absent), path
        older += bool(absent)
    assert older  # the neutral path is exercised


def test_the_ramp_grows_the_batch_linearly_in_multiples_of_its_start() -> None:
    sizes = [ramped_batch_size(step, 100, 0.4, 8, 64) for step in range(100)]
    assert sizes[0] == 8 and sizes[40:] == [64] * 60
    assert all(a <= b for a, b in zip(sizes, sizes[1:])) and {s % 8 for s in sizes} == {0}
    assert sizes[25] == 40  # 8 + 56 * 25/40 = 43, to the nearest multiple of 8
    assert [ramped_batch_size(step, 100, 0.0, 8, 64) for step in (0, 50)] == [64, 64]


def test_a_ramped_run_trains_and_counts_the_smaller_batches(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A real run of 6 steps ramping from 2 to 4 over the first half: the record counts the ramp's tokens."""
    ramp = ["train.max_steps=6", "train.batch_ramp=0.5", "train.batch_ramp_start=2", "train.max_grad_norm=0"]
    assert main(tiny_args(text_corpus, "bert-tiny", TINY_BERT, *ramp)) == 0
    record = only_record(isolated)
    sizes = [ramped_batch_size(step, 6, 0.5, 2, 4) for step in range(6)]
    assert sizes == [2, 2, 4, 4, 4, 4]
    assert record["status"] == "ok" and record["tokens_seen"] == sum(sizes) * 32
    losses = [h["loss"] for h in record["history"] if "loss" in h]
    # an untrained model's loss is about ln(vocabulary) at every size: each cut batch is normalised by its own tokens
    assert len(losses) == 6 and all(loss == pytest.approx(math.log(30522), rel=0.1) for loss in losses[:2])
    capsys.readouterr()
    assert main(tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.batch_ramp=0.5", "train.batch_ramp_start=8",
                          "--dry-run")) == 2
    assert "train.batch_ramp_start=8 exceeds train.batch_size=4" in capsys.readouterr().err


def test_glue_cells_refuse_the_ramp(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["glue", "bert-tiny", "--task", "rte", "--set", "train.batch_ramp=0.1", "--dry-run"]) == 2
    assert "--set train.batch_ramp: unknown key 'batch_ramp'" in capsys.readouterr().err  # not a GLUE setting


def test_training_dropout_trains_as_a_dropout_free_config_and_saves_the_models_own(
    text_corpus: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`train.dropout=0` gives the very losses of a config built without dropout; the checkpoint keeps 0.1."""

    def run(label: str, dropout: float, *extra: str) -> tuple[list[float], dict]:
        monkeypatch.setenv("ZOO_RESULTS_DIR", str(isolated / label / "results"))
        monkeypatch.setenv("ZOO_CHECKPOINT_DIR", str(isolated / label / "checkpoints"))
        config = {**TINY_BERT, "hidden_dropout_prob": dropout, "attention_probs_dropout_prob": dropout}
        assert main(tiny_args(text_corpus, "bert-tiny", config, "train.max_steps=4", *extra)) == 0
        record = only_record(isolated / label)
        saved = json.loads((isolated / label / "checkpoints" / record["run_id"] / "final" / "config.json").read_text())
        return [h["loss"] for h in record["history"] if "loss" in h], saved

    built_without, _ = run("built-without", 0.0)
    switched_off, saved = run("switched-off", 0.1, "train.dropout=0")
    with_dropout, _ = run("with-dropout", 0.1)
    assert switched_off == built_without and len(built_without) == 4
    assert with_dropout[1:] != built_without[1:]  # dropout does change the run
    assert (saved["hidden_dropout_prob"], saved["attention_probs_dropout_prob"]) == (0.1, 0.1)


def test_a_glue_cell_trains_with_the_recipes_dropout_and_keeps_the_checkpoints(tmp_path: Path) -> None:
    from tests.conftest import save_tiny_bert
    from zoo.data.tokenization import load_tokenizer
    from zoo.glue.finetune import load_classifier
    from zoo.glue.tasks import get_task
    from zoo.recipe.glue import load_glue_recipe

    checkpoint = save_tiny_bert(tmp_path / "tiny-bert")  # BERT's 0.1

    def rates(*overrides: str) -> set[float]:
        recipe = load_glue_recipe(overrides=[f"model.name={checkpoint}", *overrides])
        model = load_classifier(recipe, get_task("rte"), load_tokenizer(str(checkpoint)))
        assert model.config.hidden_dropout_prob == 0.1
        return {m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)}

    assert rates() == {0.1} and rates("train.dropout=0.05") == {0.05}

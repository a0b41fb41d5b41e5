"""The optimiser settings of `train`: AdamW's betas and epsilon, and the trapezoid schedule."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from transformers import BertConfig, BertForMaskedLM, Trainer

from zoo import paths
from zoo.recipe.common import TrainSection
from zoo.recipe.lm import load_recipe, recipe_hash
from zoo.train.hf_trainer import ZooSchedules, training_arguments


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


def test_adam_betas_and_epsilon_reach_the_optimizer(tmp_path: Path) -> None:
    _, optimizer = learning_rates(TrainSection(adam_beta1=0.8, adam_beta2=0.95, adam_epsilon=1e-6), 1, tmp_path)
    assert {(g["betas"], g["eps"]) for g in optimizer.param_groups} == {((0.8, 0.95), 1e-6)}


def test_the_new_settings_keep_every_committed_pretraining_run_id() -> None:
    committed = sorted((paths.recipes_dir().parent / "results" / "pretrain").glob("*/run.json"))
    assert committed
    for path in committed:
        recipe = load_recipe(yaml.safe_load((path.parent / "recipe.yaml").read_text()), str(path))
        assert (recipe.train.adam_beta1, recipe.train.adam_epsilon, recipe.train.decay) == (0.9, 1e-8, 0.2)
        assert recipe_hash(recipe) == json.loads(path.read_text())["recipe_hash"], path

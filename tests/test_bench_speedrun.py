"""bench_speedrun.py's clock: evaluations by training time, their own time off the clock, the stop at a target."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM, Trainer, TrainingArguments

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from bench_speedrun import TrainingClock, time_to_loss  # noqa: E402

VOCAB = 40


class Blocks(torch.utils.data.Dataset):
    def __init__(self, count: int) -> None:
        self.ids = torch.randint(5, VOCAB, (count, 16), generator=torch.Generator().manual_seed(0))

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def held_out_loss(sleep_s: float) -> tuple[list[float], object]:
    batch = Blocks(8)[:]
    spent: list[float] = []

    def evaluate(model: torch.nn.Module) -> float:
        began = time.monotonic()
        with torch.no_grad():
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"]).loss.item()
        time.sleep(sleep_s)
        spent.append(time.monotonic() - began)
        return loss

    return spent, evaluate


def train(tmp_path: Path, clock: TrainingClock, steps: int) -> Trainer:
    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       intermediate_size=64, max_position_embeddings=32))
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=8,
                             learning_rate=3e-3, report_to=[], use_cpu=True, save_strategy="no", logging_steps=1000)
    trainer = Trainer(model=model, args=args, train_dataset=Blocks(64), callbacks=[clock])
    trainer.train()
    return trainer


def test_evaluations_come_by_training_time_and_stay_off_the_clock(tmp_path: Path) -> None:
    spent, evaluate = held_out_loss(sleep_s=0.1)
    clock = TrainingClock(evaluate, every_s=0.01, budget_s=1e9)  # 24 steps take about 0.1 s on a quiet machine
    began = time.monotonic()
    trainer = train(tmp_path, clock, steps=24)
    wall = time.monotonic() - began
    assert trainer.state.global_step == 24 and clock.curve[-1]["step"] == 24  # the last step is always scored
    assert len(clock.curve) >= 3 and len(spent) == len(clock.curve)
    times = [p["train_s"] for p in clock.curve]
    assert times == sorted(times)
    # the last step's comes when it ends; times are rounded to the millisecond
    assert all(b - a >= 0.01 - 1e-3 for a, b in zip(times[:-2], times[1:-1]))
    assert clock.training_s() < wall - sum(spent) + 0.05  # 0.1 s of every evaluation is not training time
    assert clock.curve[-1]["eval_loss"] < clock.curve[0]["eval_loss"]  # it learns the blocks


def test_training_stops_at_the_first_evaluation_reaching_the_target(tmp_path: Path) -> None:
    _, evaluate = held_out_loss(sleep_s=0.0)
    reference = TrainingClock(evaluate, every_s=0.0, budget_s=1e9)
    train(tmp_path / "full", reference, steps=24)
    target = reference.curve[10]["eval_loss"]
    stopping = TrainingClock(evaluate, every_s=0.0, budget_s=1e9, target=target)
    trainer = train(tmp_path / "stopped", stopping, steps=24)
    first = next(i for i, p in enumerate(reference.curve) if p["eval_loss"] <= target)
    assert trainer.state.global_step == first + 1 < 24  # the same seed: the same losses, step by step
    assert [p["eval_loss"] for p in stopping.curve] == [p["eval_loss"] for p in reference.curve[:first + 1]]


def test_time_to_loss_interpolates_between_evaluations() -> None:
    curve = [{"train_s": t, "eval_loss": loss} for t, loss in ((10.0, 8.0), (20.0, 6.0), (30.0, 5.0))]
    assert time_to_loss(curve, 7.0) == pytest.approx(15.0)
    assert time_to_loss(curve, 8.5) == 10.0 and time_to_loss(curve, 5.0) == 30.0
    assert time_to_loss(curve, 4.9) is None

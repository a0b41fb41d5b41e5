"""Pretraining and continued training (`zoo pretrain`, `zoo finetune`) through the HF Trainer.

recipe -> tokenizer -> packed data -> model -> Trainer (optionally DeepSpeed) -> evaluation -> record.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from zoo import paths
from zoo.data import (
    BlockDataset,
    FixedMaskDataset,
    MLMCollator,
    MLMMasker,
    block_layout,
    clm_collate,
    prepare_splits,
)
from zoo.errors import TrainingFailed, ZooError
from zoo.evaluation import lm_metrics
from zoo.modeling import build_model
from zoo.models import count_parameters
from zoo.recipe import Recipe, recipe_dict, recipe_hash, recipe_yaml
from zoo.records import RECIPE_FILE, atomic_write, environment, new_run_id, now_iso, run_dir, write_record
from zoo.tokenization import load_tokenizer


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class LMData:
    """Everything the Trainer needs about data for one LM run."""

    train: BlockDataset
    eval: torch.utils.data.Dataset
    collate: Any
    fingerprint: str
    train_tokens: int
    eval_tokens: int


def lm_data(recipe: Recipe, tokenizer: Any) -> LMData:
    """Packed train blocks, fixed evaluation blocks (masked once for MLM) and the batch collator."""
    splits, fingerprint = prepare_splits(recipe.data, tokenizer)
    layout = block_layout(tokenizer, recipe.objective.type, recipe.data.block_size)
    train_split, eval_split = splits[recipe.data.train_split], splits[recipe.data.eval_split]
    train = BlockDataset(train_split.stream(), layout)
    eval_blocks = BlockDataset(eval_split.stream(), layout, recipe.eval.max_blocks)
    if len(train) == 0:
        raise ZooError(f"data: corpus {recipe.data.corpus!r} gave no full training block of {layout.block_size} tokens")
    if len(eval_blocks) == 0:
        raise ZooError(
            f"data: the evaluation split gave no full block of {layout.block_size} tokens; "
            "raise data.validation_fraction or lower data.block_size"
        )
    if recipe.objective.type == "mlm":
        masker = MLMMasker(tokenizer, recipe.objective)
        eval_set: torch.utils.data.Dataset = FixedMaskDataset(eval_blocks, masker, recipe.eval.mask_seed)
        collate: Any = MLMCollator(masker)
    else:
        eval_set, collate = eval_blocks, clm_collate
    return LMData(train, eval_set, collate, fingerprint, train_split.tokens, eval_split.tokens)


class ZooTrainer(Trainer):
    """The HF Trainer with token-weighted evaluation and a hard stop on a non-finite loss."""

    def __init__(self, *args: Any, objective: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {self.state.global_step + 1}")
        return loss

    def evaluate(self, eval_dataset: Any = None, ignore_keys: Any = None, metric_key_prefix: str = "eval") -> dict:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        result = lm_metrics(
            self.model, dataset, self.data_collator, self.args.per_device_eval_batch_size, self.objective,
            device=self.args.device, rank=self.args.process_index, world=self.args.world_size,
            autocast=self.autocast_smart_context_manager,
        )
        metrics = {f"{metric_key_prefix}_loss": result["loss"],
                   f"{metric_key_prefix}_perplexity": result["perplexity"],
                   f"{metric_key_prefix}_tokens": result["tokens"]}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics


def precision_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments bf16/fp16 flags; 'auto' picks bf16 on a GPU that supports it, else fp32."""
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "fp32"
    if precision != "fp32" and not torch.cuda.is_available():
        raise ZooError(f"train.precision={precision} needs a GPU; use fp32 or auto on CPU")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16"}


def training_arguments(recipe: Recipe, output_dir: Path, deepspeed_config: dict | None) -> TrainingArguments:
    t = recipe.train
    return TrainingArguments(
        output_dir=str(output_dir),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=recipe.eval.batch_size,
        gradient_accumulation_steps=t.grad_accum,
        learning_rate=t.lr,
        weight_decay=t.weight_decay,
        adam_beta2=t.adam_beta2,
        warmup_steps=t.warmup if t.warmup < 1 else int(t.warmup),
        lr_scheduler_type=t.schedule,
        max_steps=t.max_steps,
        num_train_epochs=t.epochs,
        seed=t.seed,
        data_seed=t.seed,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.log_every,
        logging_nan_inf_filter=False,
        eval_strategy="steps" if t.eval_every else "no",
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=t.save_total_limit,
        dataloader_num_workers=t.dataloader_workers,
        remove_unused_columns=False,
        report_to=[],
        deepspeed=deepspeed_config,
        use_cpu=not torch.cuda.is_available(),
        **precision_flags(t.precision),
    )


def history(log_history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The loss curve: train-loss and eval entries of the Trainer's log, compacted."""
    keep = ("loss", "learning_rate", "grad_norm", "eval_loss", "eval_perplexity")
    rows = []
    for entry in log_history:
        row = {k: entry[k] for k in keep if k in entry}
        if row:
            rows.append({"step": entry.get("step"), **row})
    return rows


def find_resumable(recipe: Recipe) -> str | None:
    """The newest run directory under checkpoints/ with the same resolved recipe and a checkpoint."""
    digest = recipe_hash(recipe)
    candidates = sorted(paths.checkpoints_dir().glob(f"*/{RECIPE_FILE}"), key=lambda p: p.stat().st_mtime)
    for saved in reversed(candidates):
        from zoo.recipe import load_recipe, read_yaml

        if recipe_hash(load_recipe(read_yaml(saved), str(saved))) == digest and get_last_checkpoint(str(saved.parent)):
            return saved.parent.name
    return None


def run_lm(recipe: Recipe, run_id: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one LM recipe (already resolved); returns the written record.

    With `resume`, `run_id` names a run whose checkpoints/<run_id>/ holds Trainer checkpoints; training
    continues from the newest one. A failure is recorded as status 'failed' with its reason and re-raised.
    """
    from zoo.deepspeed import deepspeed_config, is_distributed_launch

    started, t0 = now_iso(), time.monotonic()
    run_id = run_id or new_run_id(recipe.name)
    output_dir = paths.checkpoints_dir() / run_id
    record_dir = run_dir(recipe.kind, run_id)
    record: dict[str, Any] = {
        "run_id": run_id, "kind": recipe.kind, "name": recipe.name, "status": "running", "reason": None,
        "smoke": recipe.smoke, "model": recipe.model.name, "corpus": recipe.data.corpus,
        "objective": recipe.objective.type, "recipe_hash": recipe_hash(recipe), "recipe": RECIPE_FILE,
        "started_at": started,
    }
    set_seed(recipe.train.seed)
    trainer: ZooTrainer | None = None
    main = True
    try:
        tokenizer = load_tokenizer(recipe.tokenizer.name)
        data = lm_data(recipe, tokenizer)
        model = build_model(recipe, tokenizer)
        use_ds = recipe.deepspeed.enabled or is_distributed_launch()
        args = training_arguments(recipe, output_dir, deepspeed_config(recipe) if use_ds else None)
        main = args.process_index == 0
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(output_dir / RECIPE_FILE, recipe_yaml(recipe))
        trainer = ZooTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                             data_collator=data.collate, objective=recipe.objective.type)
        record.update(params=count_parameters(model), data={
            "fingerprint": data.fingerprint, "train_tokens": data.train_tokens, "eval_tokens": data.eval_tokens,
            "train_blocks": len(data.train), "eval_blocks": len(data.eval), "block_size": recipe.data.block_size})
        if recipe.kind == "finetune":
            before = trainer.evaluate(metric_key_prefix="before")
            record["before"] = {"eval_loss": before["before_loss"], "perplexity": before["before_perplexity"]}
        checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
        if resume and checkpoint is None:
            raise ZooError(f"--resume: no checkpoint under {output_dir}")
        record["resumed_from_step"] = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None
        t_train = time.monotonic()
        trainer.train(resume_from_checkpoint=checkpoint)
        train_time = time.monotonic() - t_train
        final = trainer.evaluate()
        if main:
            trainer.save_model(str(output_dir / "final"))
            tokenizer.save_pretrained(str(output_dir / "final"))
        record.update(_summary(trainer, recipe, final, train_time, record["resumed_from_step"]))
        record.update(status="ok", checkpoint=str(Path("checkpoints") / run_id / "final"))
    except (Exception, KeyboardInterrupt) as exc:
        reason = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc.__class__.__name__}: {exc}"
        record.update(status="failed", reason=reason.splitlines()[0][:500])
        if trainer is not None:
            record["history"] = history(trainer.state.log_history)
            record["steps"] = trainer.state.global_step
        if main:
            _finish(record, record_dir, recipe, t0)
        if isinstance(exc, ZooError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainingFailed(f"run {run_id} failed: {record['reason']}") from exc
    if main:
        _finish(record, record_dir, recipe, t0)
    return record


def _summary(trainer: ZooTrainer, recipe: Recipe, final: dict[str, float], train_time: float,
             resumed_from: int | None) -> dict[str, Any]:
    args = trainer.args
    steps = trainer.state.global_step
    per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size
    tokens = steps * per_step * recipe.data.block_size
    new_tokens = (steps - (resumed_from or 0)) * per_step * recipe.data.block_size
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": steps,
        "tokens_seen": tokens,
        "tokens_per_s": new_tokens / train_time if train_time > 0 else None,
        "train_time_s": round(train_time, 2),
        "metrics": {
            "eval_loss": final["eval_loss"],
            "perplexity": final["eval_perplexity"],
            "eval_tokens": final["eval_tokens"],
            "train_loss": train_losses[-1] if train_losses else None,
        },
        "history": history(trainer.state.log_history),
        "launch": {"world_size": args.world_size, "deepspeed": args.deepspeed is not None,
                   "zero_stage": recipe.deepspeed.zero_stage if args.deepspeed else None},
    }


def _finish(record: dict[str, Any], record_dir: Path, recipe: Recipe, t0: float) -> None:
    record.update(finished_at=now_iso(), wall_time_s=round(time.monotonic() - t0, 2), environment=environment())
    record_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(record_dir / RECIPE_FILE, recipe_yaml(recipe))
    write_record(record_dir, _finite(record))


def _finite(value: Any) -> Any:
    """JSON has no NaN/inf: write them as strings so records stay valid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


__all__ = ["run_lm", "find_resumable", "lm_data", "ZooTrainer", "recipe_dict"]

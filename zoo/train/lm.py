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
from transformers import Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from zoo import paths
from zoo.data.masking import EpochClock, FixedMaskDataset, MLMCollator, MLMMasker, clm_collate, predicted_tokens
from zoo.data.packing import BlockDataset, block_layout, prepare_splits
from zoo.data.tokenization import load_tokenizer
from zoo.errors import TrainingFailed, ZooError
from zoo.files import atomic_write
from zoo.model.modeling import build_model
from zoo.model.registry import count_parameters
from zoo.recipe.common import TrainSection
from zoo.recipe.lm import Recipe, recipe_hash, recipe_yaml
from zoo.record.environment import environment
from zoo.record.store import RECIPE_FILE, new_run_id, now_iso, run_dir, write_record
from zoo.train.deepspeed import DEEPSPEED_CONFIG_FILE, deepspeed_config, save_config
from zoo.train.evaluation import lm_metrics
from zoo.train.ranks import (
    as_single_rank,
    failure_reason,
    ignore_sigterm,
    is_distributed_launch,
    is_main_rank,
    join_launch,
    note_failure,
    shared_from_main,
    stop_on_sigterm,
    world_size,
)


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
        collate: Any = MLMCollator(masker, recipe.train.seed, EpochClock())
    else:
        eval_set, collate = eval_blocks, clm_collate
    return LMData(train, eval_set, collate, fingerprint, train_split.tokens, eval_split.tokens)


class EpochCallback(TrainerCallback):
    """Keeps the MLM collator's epoch in step with the Trainer's, also after a resume."""

    def __init__(self, clock: EpochClock) -> None:
        self.clock = clock

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.clock.epoch = int(math.floor((state.epoch or 0.0) + 1e-6))


class ZooTrainer(Trainer):
    """The HF Trainer with a token-weighted training loss and evaluation, and a hard stop on a non-finite loss."""

    def __init__(self, *args: Any, objective: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.objective = objective
        self.loss_is_scaled_for_ga = True  # compute_loss divides by the whole step's tokens, not per micro-batch

    def _get_num_items_in_batch(self, batch_samples: list, device: Any) -> torch.Tensor:
        """Predicted tokens of one optimizer step: all its micro-batches, summed over all ranks.

        Counted with zoo's own rule (CLM predicts positions 1..n) rather than the Trainer's, which
        only shifts for models whose `loss_type` it recognises (this GPT-2 has none: it counted
        n per block instead of n-1, scaling the CLM loss by (n-1)/n).
        """
        count = sum(predicted_tokens(batch["labels"], self.objective) for batch in batch_samples)
        total = torch.tensor(count, dtype=torch.long, device=device)
        return self.accelerator.gather(total).sum() if self.args.world_size > 1 else total

    def compute_loss(self, model: Any, inputs: dict[str, Any], return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        """This rank's share of the step's loss: its NLL sum / predicted tokens of the step on all ranks.

        The HF Trainer assumes that a model whose forward takes **kwargs divides its loss by
        `num_items_in_batch`, and multiplies the loss by the number of processes to undo the
        gradient averaging across ranks. BERT-style MLM heads (zoo's sparse one included) take
        **kwargs but return a plain mean over their micro-batch, so with N processes the Trainer's
        loss, logged and back-propagated, came out N times too large (and grad_accum times too large
        with accumulation). Here the model's micro-batch mean is turned back into a sum and divided
        by the global count, whatever the model does with loss kwargs; summed over micro-batches and
        averaged over ranks (the gradient reduction, the logged loss) it is the step's token mean.
        """
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        local = predicted_tokens(inputs["labels"], self.objective)
        if local == 0:  # nothing to predict here (a model's mean over no tokens is NaN)
            loss = outputs["logits"].sum() * 0.0
        elif num_items_in_batch is None:  # called outside the training loop: a plain micro-batch mean
            loss = loss / self.current_gradient_accumulation_steps
        else:
            loss = loss * (local / num_items_in_batch) * self.accelerator.num_processes
        return (loss, outputs) if return_outputs else loss

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


def optimisation_arguments(t: TrainSection, eval_batch_size: int) -> dict[str, Any]:
    """The TrainingArguments that a recipe's `train` section decides, shared by every zoo Trainer."""
    return {
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": eval_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.lr,
        "weight_decay": t.weight_decay,
        "adam_beta2": t.adam_beta2,
        "warmup_steps": t.warmup if t.warmup < 1 else int(t.warmup),
        "lr_scheduler_type": t.schedule,
        "max_steps": t.max_steps,
        "num_train_epochs": t.epochs,
        "seed": t.seed,
        "data_seed": t.seed,
        "max_grad_norm": t.max_grad_norm,
        "dataloader_num_workers": t.dataloader_workers,
        "logging_nan_inf_filter": False,
        "remove_unused_columns": False,
        "report_to": [],
        "use_cpu": not torch.cuda.is_available(),
        **precision_flags(t.precision),
    }


def training_arguments(recipe: Recipe, output_dir: Path, deepspeed_config: dict | None) -> TrainingArguments:
    t = recipe.train
    return TrainingArguments(
        output_dir=str(output_dir),
        **optimisation_arguments(t, recipe.eval.batch_size),
        logging_steps=t.log_every,
        eval_strategy="steps" if t.eval_every else "no",
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=t.save_total_limit,
        include_num_input_tokens_seen="all",  # counted on every rank and summed: tokens_seen, tokens/s
        deepspeed=deepspeed_config,
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
        from zoo.recipe.common import read_yaml
        from zoo.recipe.lm import load_recipe

        if recipe_hash(load_recipe(read_yaml(saved), str(saved))) == digest and get_last_checkpoint(str(saved.parent)):
            return saved.parent.name
    return None


def run_lm(recipe: Recipe, run_id: str | None = None, resume: bool = False) -> dict[str, Any]:
    """Train and evaluate one LM recipe (already resolved); returns the written record.

    With `resume`, `run_id` names a run whose checkpoints/<run_id>/ holds Trainer checkpoints; training
    continues from the newest one. A failure is recorded as status 'failed' with its reason and re-raised.
    In a multi-process launch every rank calls this; only global rank 0 writes files (zoo.deepspeed).
    """
    started, t0 = now_iso(), time.monotonic()
    run_id, started = _agree_on_run(run_id or new_run_id(recipe.name), started)
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
    main = is_main_rank()
    training_started = False
    try:
        tokenizer = load_tokenizer(recipe.tokenizer.name)
        data = lm_data(recipe, tokenizer)
        model = build_model(recipe, tokenizer)
        ds_config = _engine_config(recipe, model, record_dir if main else None)
        if ds_config is not None:
            record["deepspeed_config"] = DEEPSPEED_CONFIG_FILE
        args = training_arguments(recipe, output_dir, ds_config)
        if main:
            output_dir.mkdir(parents=True, exist_ok=True)
            atomic_write(output_dir / RECIPE_FILE, recipe_yaml(recipe))
        trainer = ZooTrainer(model=model, args=args, train_dataset=data.train, eval_dataset=data.eval,
                             data_collator=data.collate, objective=recipe.objective.type)
        if isinstance(data.collate, MLMCollator):
            trainer.add_callback(EpochCallback(data.collate.clock))
        tokens_at_start = TokensAtStart()
        trainer.add_callback(tokens_at_start)
        record.update(params=count_parameters(model), data={
            "fingerprint": data.fingerprint, "train_tokens": data.train_tokens, "eval_tokens": data.eval_tokens,
            "train_blocks": len(data.train), "eval_blocks": len(data.eval), "block_size": recipe.data.block_size})
        checkpoint = get_last_checkpoint(str(output_dir)) if resume and output_dir.is_dir() else None
        if resume and checkpoint is None:
            raise ZooError(f"--resume: no checkpoint under {output_dir}")
        training_started = True
        if recipe.kind == "finetune":
            before = trainer.evaluate(metric_key_prefix="before")
            record["before"] = {"eval_loss": before["before_loss"], "perplexity": before["before_perplexity"]}
        record["resumed"] = checkpoint is not None
        record["resumed_from_step"] = int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None
        t_train = time.monotonic()
        trainer.train(resume_from_checkpoint=checkpoint)
        train_time = time.monotonic() - t_train
        final = evaluation_at_last_step(trainer) or trainer.evaluate()
        trainer.save_model(str(output_dir / "final"))  # every rank: ZeRO-3 gathers the weights; rank 0 writes
        if main:
            tokenizer.save_pretrained(str(output_dir / "final"))
        record.update(_summary(trainer, recipe, final, train_time, tokens_at_start.tokens))
        record.update(status="ok", checkpoint=str(Path("checkpoints") / run_id / "final"))
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, ZooError) and not training_started:
            raise  # a user mistake found while setting up (data, model, resume): no run, so no record
        if is_distributed_launch():
            ignore_sigterm()
        reason = failure_reason(exc, output_dir, started)
        record.update(status="failed", reason=" ".join(reason.split())[:500])
        if trainer is not None:
            record["history"] = history(trainer.state.log_history)
            record["steps"] = trainer.state.global_step
        if main:
            _finish(record, record_dir, recipe, t0)
        else:
            note_failure(output_dir, started, record["reason"])
        if isinstance(exc, ZooError):
            raise
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise TrainingFailed(f"run {run_id} failed: {record['reason']}") from exc
    if main:
        _finish(record, record_dir, recipe, t0)
    return record


def evaluation_at_last_step(trainer: ZooTrainer) -> dict[str, Any] | None:
    """The evaluation the Trainer already ran at the last step (train.eval_every divides the steps), if any:
    the same weights would give the same numbers, and the loss curve would show the point twice."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


class TokensAtStart(TrainerCallback):
    """Tokens already counted when training starts (non-zero when resumed): throughput counts new ones only."""

    tokens = 0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.tokens = int(state.num_input_tokens_seen)


def _agree_on_run(run_id: str, started: str) -> tuple[str, str]:
    """In a multi-process launch, rank 0's run id and start time in every rank (ranks start apart)."""
    if not is_distributed_launch():
        return run_id, started
    stop_on_sigterm()
    try:
        join_launch()
    except (RuntimeError, ValueError) as exc:
        raise ZooError(f"could not join the launch's process group: {exc}") from None
    return shared_from_main((run_id, started))


def _engine_config(recipe: Recipe, model: Any, record_dir: Path | None) -> dict[str, Any] | None:
    """The DeepSpeed config when DeepSpeed runs (recipe or multi-process launch), saved into `record_dir`."""
    if not (recipe.deepspeed.enabled or is_distributed_launch()):
        return None
    as_single_rank()
    config = deepspeed_config(recipe.train, recipe.deepspeed, world_size(), **precision_flags(recipe.train.precision),
                              hidden_size=getattr(model.config, "hidden_size", None),
                              pin_memory=torch.cuda.is_available())
    if record_dir is not None:
        save_config(config, record_dir)
    return config


def _summary(trainer: ZooTrainer, recipe: Recipe, final: dict[str, float], train_time: float,
             tokens_at_start: int) -> dict[str, Any]:
    args = trainer.args
    tokens = int(trainer.state.num_input_tokens_seen)  # every micro-batch of every rank, counted
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    return {
        "steps": trainer.state.global_step,
        "tokens_seen": tokens,
        "tokens_per_s": (tokens - tokens_at_start) / train_time if train_time > 0 else None,
        "train_time_s": round(train_time, 2),
        "metrics": {
            "eval_loss": final["eval_loss"],
            "perplexity": final["eval_perplexity"],
            "eval_tokens": final["eval_tokens"],
            "train_loss": train_losses[-1] if train_losses else None,
        },
        "history": history(trainer.state.log_history),
        "launch": {"world_size": args.world_size, "deepspeed": args.deepspeed is not None,
                   "zero_stage": recipe.deepspeed.zero_stage if args.deepspeed else None,
                   "engine": type(trainer.model_wrapped).__name__},
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


def evaluate_checkpoint(recipe: Recipe, checkpoint: str) -> dict[str, float]:
    """Perplexity of a saved checkpoint on the recipe's evaluation set (same blocks, same fixed masks)."""
    import dataclasses

    from zoo.data.tokenization import load_tokenizer as load

    tokenizer = load(checkpoint) if (Path(checkpoint) / "tokenizer_config.json").is_file() else load(
        recipe.tokenizer.name)
    data = lm_data(recipe, tokenizer)
    pretrained = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=checkpoint,
                                                                         init="pretrained", config={}))
    model = build_model(pretrained, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return lm_metrics(model.to(device), data.eval, data.collate, recipe.eval.batch_size,
                      recipe.objective.type, device=device)

"""Pretraining and continued training (`zoo pretrain`, `zoo finetune`) through the HF Trainer.

recipe -> tokenizer -> packed data -> model -> Trainer (optionally DeepSpeed) -> evaluation -> record.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import Trainer, TrainerCallback, set_seed

from zoo import paths
from zoo.data.masking import EpochClock, FixedMaskDataset, MLMCollator, MLMMasker, clm_collate, predicted_tokens
from zoo.data.packing import BlockDataset, block_layout, prepare_splits
from zoo.data.tokenization import load_tokenizer
from zoo.errors import TrainingFailed, ZooError
from zoo.files import atomic_write, check_writable
from zoo.model.loading import check_loadable
from zoo.model.modeling import build_model
from zoo.model.registry import count_parameters
from zoo.model.resolve import resolve_model
from zoo.recipe.common import is_smoke, read_yaml
from zoo.recipe.lm import Recipe, load_recipe, recipe_hash, recipe_yaml
from zoo.record.schema import RECIPE_FILE, RECORD_FILE, LMMetrics, LMRecord
from zoo.record.store import new_run_id, now_iso, read_if_readable, run_dir
from zoo.train.checkpoints import resumable_checkpoint
from zoo.train.deepspeed import DEEPSPEED_CONFIG_FILE
from zoo.train.evaluation import lm_metrics
from zoo.train.hf_trainer import (
    BatchRamp,
    StopOnNonFiniteLoss,
    ZooSchedules,
    engine_config,
    evaluation_autocast,
    training_arguments,
)
from zoo.train.lifecycle import RunLifecycle, stop_on_sigterm
from zoo.train.ranks import is_distributed_launch, join_launch, shared_from_main


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


class ZooTrainer(ZooSchedules, BatchRamp, StopOnNonFiniteLoss, Trainer):
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


def lm_training_arguments(recipe: Recipe, output_dir: Path, engine: dict | None) -> Any:
    t = recipe.train
    return training_arguments(
        output_dir, t, recipe.eval.batch_size, engine,
        logging_steps=t.log_every,
        eval_strategy="steps" if t.eval_every else "no",
        eval_steps=t.eval_every or None,
        save_strategy="steps" if t.save_every else "no",
        save_steps=t.save_every or 500,
        save_total_limit=t.save_total_limit,
        include_num_input_tokens_seen="all",  # counted on every rank and summed: tokens_seen, tokens/s
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
        try:
            same = recipe_hash(load_recipe(read_yaml(saved), str(saved))) == digest
        except ZooError:  # another run's unreadable recipe: not this recipe's run
            continue
        if same and resumable_checkpoint(saved.parent):
            return saved.parent.name
    return None


def new_lm_record(recipe: Recipe, run_id: str) -> LMRecord:
    return LMRecord(run_id=run_id, kind=recipe.kind, model=recipe.model.name, name=recipe.name,
                    smoke=is_smoke(dataclasses.asdict(recipe)), corpus=recipe.data.corpus,
                    objective=recipe.objective.type, recipe_hash=recipe_hash(recipe))


def run_lm(recipe: Recipe, run_id: str | None = None, resume: bool = False) -> LMRecord:
    """Train and evaluate one LM recipe (already resolved); returns the written record.

    With `resume`, `run_id` names a run whose checkpoints/<run_id>/ holds Trainer checkpoints; training
    continues from the newest one, and the record keeps the earlier segments' times. A failure is
    recorded as status 'failed' with its reason and re-raised; a user mistake found while setting up
    (outputs, data, model, resume) is raised before anything is recorded. In a multi-process launch every
    rank calls this; only global rank 0 writes files (zoo.train.lifecycle).
    """
    run_id, started = _agree_on_run(run_id or new_run_id(recipe.name), now_iso())
    output_dir, record_dir = paths.checkpoints_dir() / run_id, run_dir(recipe.kind, run_id)
    earlier = read_if_readable(record_dir / RECORD_FILE, LMRecord) if resume else None
    record = new_lm_record(recipe, run_id)
    run = RunLifecycle(record, record_dir, output_dir, recipe_yaml(recipe), earlier.segments if earlier else [])
    set_seed(recipe.train.seed)
    trainer: ZooTrainer | None = None
    training = False
    try:
        checkpoint = resumable_checkpoint(output_dir) if resume else None
        if resume and checkpoint is None:
            raise ZooError(f"--resume: no complete checkpoint under {output_dir}; run without --resume to start over")
        run.begin(started, from_step=int(checkpoint.rsplit("-", 1)[-1]) if checkpoint else None)
        check_writable(paths.cache_dir(), "the data cache")
        tokenizer = load_tokenizer(recipe.tokenizer.name)
        data = lm_data(recipe, tokenizer)
        trainer = _trainer(run, recipe, data, build_model(recipe, tokenizer), output_dir)
        training = True
        _train(run, trainer, recipe, tokenizer, checkpoint)
        run.succeed()
    except (Exception, KeyboardInterrupt) as exc:
        if isinstance(exc, ZooError) and not training:
            raise
        if trainer is not None:
            record.history, record.steps = history(trainer.state.log_history), trainer.state.global_step
        run.fail(exc)
        if isinstance(exc, (ZooError, KeyboardInterrupt)):
            raise
        raise TrainingFailed(f"run {run_id} failed: {record.reason}") from exc
    if run.failed:
        raise TrainingFailed(f"run {run_id} failed: {record.reason}")
    return record


def _trainer(run: RunLifecycle, recipe: Recipe, data: LMData, model: Any, output_dir: Path) -> ZooTrainer:
    """The run's Trainer (DeepSpeed when asked or launched); the run's recipe saved beside its checkpoints."""
    record, main = run.record, run.main
    engine = engine_config(recipe.train, recipe.deepspeed, model, run.record_dir if main else None)
    record.deepspeed_config = DEEPSPEED_CONFIG_FILE if engine is not None else None
    if main:
        atomic_write(output_dir / RECIPE_FILE, run.recipe_yaml)
    trainer = ZooTrainer(model=model, args=lm_training_arguments(recipe, output_dir, engine), train_dataset=data.train,
                         eval_dataset=data.eval, data_collator=data.collate, objective=recipe.objective.type)
    trainer.ramp = (recipe.train.batch_ramp, recipe.train.batch_ramp_start)
    if isinstance(data.collate, MLMCollator):
        trainer.add_callback(EpochCallback(data.collate.clock))
    record.params = count_parameters(model)
    record.data = {"fingerprint": data.fingerprint, "train_tokens": data.train_tokens, "eval_tokens": data.eval_tokens,
                   "train_blocks": len(data.train), "eval_blocks": len(data.eval), "block_size": recipe.data.block_size}
    return trainer


def _train(run: RunLifecycle, trainer: ZooTrainer, recipe: Recipe, tokenizer: Any, checkpoint: str | None) -> None:
    """The work of an LM run; fills `run.record` as it goes (so a failure keeps what was learnt)."""
    record = run.record
    tokens_at_start = TokensAtStart()
    trainer.add_callback(tokens_at_start)
    trainer.add_callback(ProgressRecord(run))
    if recipe.kind == "finetune":
        before = trainer.evaluate(metric_key_prefix="before")
        record.before = LMMetrics(eval_loss=before["before_loss"], perplexity=before["before_perplexity"])
    record.resumed, record.resumed_from_step = checkpoint is not None, record.segments[-1].from_step
    t_train = time.monotonic()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_time = time.monotonic() - t_train
    final = evaluation_at_last_step(trainer) or trainer.evaluate()
    final_dir = paths.run_checkpoint(record.run_id)
    trainer.save_model(str(final_dir))  # every rank: ZeRO-3 gathers the weights; rank 0 writes
    if run.main:
        tokenizer.save_pretrained(str(final_dir))
    _summarise(record, trainer, recipe, final, train_time, tokens_at_start.tokens)
    record.checkpoint = str(Path("checkpoints") / record.run_id / paths.FINAL_CHECKPOINT)  # as ZOO_CHECKPOINT_DIR


def evaluation_at_last_step(trainer: ZooTrainer) -> dict[str, Any] | None:
    """The evaluation the Trainer already ran at the last step (train.eval_every divides the steps), if any:
    the same weights would give the same numbers, and the loss curve would show the point twice."""
    for entry in reversed(trainer.state.log_history):
        if "eval_loss" in entry:
            return entry if entry.get("step") == trainer.state.global_step else None
    return None


class ProgressRecord(TrainerCallback):
    """The run's record, `status: running`, written when training starts and at every checkpoint, with the
    segment's training time to that checkpoint: a resume from it keeps that much training."""

    def __init__(self, run: RunLifecycle) -> None:
        self.run = run
        self.t_begin = 0.0

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.t_begin = time.monotonic()
        self.run.save_progress()

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.run.record.steps = state.global_step
        self.run.record.segments[-1].train_time_s = round(time.monotonic() - self.t_begin, 2)
        self.run.save_progress()


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


def _summarise(record: LMRecord, trainer: ZooTrainer, recipe: Recipe, final: dict[str, float], train_time: float,
               tokens_at_start: int) -> None:
    args = trainer.args
    tokens = int(trainer.state.num_input_tokens_seen)  # every micro-batch of every rank, counted
    train_losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    record.steps = trainer.state.global_step
    record.tokens_seen = tokens
    record.tokens_per_s = (tokens - tokens_at_start) / train_time if train_time > 0 else None
    record.segments[-1].train_time_s = round(train_time, 2)
    record.train_time_s = round(sum(s.train_time_s or 0.0 for s in record.segments), 2)
    record.metrics = LMMetrics(eval_loss=final["eval_loss"], perplexity=final["eval_perplexity"],
                               eval_tokens=int(final["eval_tokens"]),
                               train_loss=train_losses[-1] if train_losses else None)
    record.history = history(trainer.state.log_history)
    record.launch = {"world_size": args.world_size, "deepspeed": args.deepspeed is not None,
                     "zero_stage": recipe.deepspeed.zero_stage if args.deepspeed else None,
                     "engine": type(trainer.model_wrapped).__name__}


def evaluate_checkpoint(recipe: Recipe, model: str) -> tuple[dict[str, float], str | None]:
    """Perplexity of a saved model (run id, directory, ...) on the recipe's evaluation set (same blocks, same
    fixed masks, the recipe's precision where this machine has it), and a note when it evaluated in float32
    instead."""
    ref = resolve_model(model)
    check_loadable(ref)
    tokenizer = load_tokenizer(ref.tokenizer() if ref.has_own_tokenizer else recipe.tokenizer.name)
    data = lm_data(recipe, tokenizer)
    pretrained = dataclasses.replace(recipe, model=dataclasses.replace(recipe.model, name=ref.source,
                                                                         init="pretrained", config={}))
    built = build_model(pretrained, tokenizer)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    autocast, note = evaluation_autocast(recipe.train.precision)
    return lm_metrics(built.to(device), data.eval, data.collate, recipe.eval.batch_size,
                      recipe.objective.type, device=device, autocast=autocast), note

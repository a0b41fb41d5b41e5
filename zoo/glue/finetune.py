"""Fine-tune one GLUE cell with the HF Trainer, evaluate on dev after every epoch, record it.

cell recipe -> cached tokenized splits -> AutoModelForSequenceClassification (num_labels=1 for
STS-B) -> Trainer (length-grouped training batches, dynamic padding, dev sets sorted by length and
evaluated in large batches) -> record under results/glue/<model-tag>/<task>/<cell-id>/.

The cell's metrics are those of the last epoch's dev evaluation, not the best epoch's: choosing the
epoch on dev as well would be a second, hidden search over the dev set (the classic grid fixes the
number of epochs). Every epoch's dev metrics are kept in the record's `epochs` list.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import (
    AutoModelForSequenceClassification,
    DataCollatorWithPadding,
    EvalPrediction,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_pt_utils import LengthGroupedSampler
from transformers.utils import logging as hf_logging

from zoo import paths
from zoo.data.tokenization import load_tokenizer
from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue import data
from zoo.glue.metrics import predictions_from_outputs, task_metrics, task_score
from zoo.glue.predict import write_predictions
from zoo.glue.tasks import GlueTask, get_task
from zoo.model.registry import count_parameters, find_model_spec, has_tokenizer_files, pretrained_source
from zoo.recipe.common import DeepSpeedSection, TrainSection
from zoo.recipe.glue import GlueRecipe, cell_id, format_lr, glue_recipe_hash, glue_recipe_yaml, model_tag
from zoo.record.environment import environment
from zoo.record.store import RECIPE_FILE, now_iso, write_record
from zoo.train.deepspeed import DEEPSPEED_CONFIG_FILE, deepspeed_config, save_config
from zoo.train.lm import NonFiniteLoss, optimisation_arguments, precision_flags
from zoo.train.ranks import (
    failure_reason,
    ignore_sigterm,
    is_distributed_launch,
    is_main_rank,
    note_failure,
    stop_on_sigterm,
    world_size,
)

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels")


@dataclass
class Cell:
    """One grid cell: its normalised recipe and the model as the user named it."""

    recipe: GlueRecipe
    model: str

    @property
    def task(self) -> GlueTask:
        return get_task(self.recipe.task.name)

    @property
    def run_id(self) -> str:
        return cell_id(self.recipe)

    @property
    def tag(self) -> str:
        return model_tag(self.recipe.model.name)

    @property
    def directory(self) -> Path:
        return paths.results_dir() / "glue" / self.tag / self.task.key / self.run_id

    @property
    def work_dir(self) -> Path:
        """The cell's files that stay outside git: test predictions (QQP/MNLI files are large), rank notes."""
        return paths.checkpoints_dir() / "glue" / self.tag / self.task.key / self.run_id

    @property
    def predictions_dir(self) -> Path:
        return self.work_dir / "predictions"

    @property
    def label(self) -> str:
        t = self.recipe.train
        return f"{self.task.key} bs {t.batch_size} lr {format_lr(t.lr)} seed {t.seed}"


# --------------------------------------------------------------------------- model and tokenizer


def tokenizer_source(recipe: GlueRecipe) -> str:
    """model.tokenizer if set; else the checkpoint directory when it holds tokenizer files; else the
    registry's tokenizer for the model; else the model name (a hub id)."""
    if recipe.model.tokenizer:
        return recipe.model.tokenizer
    source = Path(pretrained_source(recipe.model.name))
    if has_tokenizer_files(source):
        return str(source)
    spec = find_model_spec(recipe.model.name)
    return spec.tokenizer if spec else recipe.model.name


def load_classifier(recipe: GlueRecipe, task: GlueTask, tokenizer: Any) -> torch.nn.Module:
    """The pretrained encoder with a fresh classification (or regression) head."""
    labels: dict[str, Any] = {"problem_type": "regression"} if task.regression else {
        "id2label": dict(enumerate(task.labels)), "label2id": {name: i for i, name in enumerate(task.labels)}}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is the point, not news
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            pretrained_source(recipe.model.name), num_labels=task.num_labels, ignore_mismatched_sizes=True, **labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:  # GPT-2 style models find the last real token through it
        model.config.pad_token_id = tokenizer.pad_token_id
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and recipe.task.max_length > limit:
        raise ZooError(f"task.max_length={recipe.task.max_length} exceeds the model's {limit} positions")
    return model


# --------------------------------------------------------------------------- trainer pieces


class PadCollator:
    """Dynamic padding of model inputs; bookkeeping columns (idx, length) are dropped."""

    def __init__(self, tokenizer: Any) -> None:
        multiple = 8 if torch.cuda.is_available() else None  # tensor-core friendly shapes on GPU
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.pad([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])


class GlueTrainer(Trainer):
    """The HF Trainer with length-grouped training batches, evaluation in dataset order (sorted by
    length) and a hard stop on a non-finite loss."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Sequence-classification heads return a batch mean even though their forward takes **kwargs;
        # told otherwise, the Trainer would skip the division by grad_accum and scale by world size.
        self.model_accepts_loss_kwargs = False

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)
        finite = torch.isfinite(loss.detach()).all()
        if self.args.world_size > 1:  # every rank stops at the same step, so the launch stays in step
            finite = self.accelerator.gather(finite.reshape(1).to(torch.int64)).min().bool()
        if not finite:
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {self.state.global_step + 1}")
        return loss

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # The Trainer would hand the arrow `length` column to the sampler, which then reads it one item
        # at a time: 28 s per epoch on SST-2 against 1.2 s with a plain list.
        lengths = np.asarray(dataset["length"]).tolist()
        # Groups of one whole optimizer step over all ranks: the launch's batches (the sampler's order
        # cut into per-rank slices by accelerate) are then those of a single process.
        step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return LengthGroupedSampler(step, lengths=lengths)

    def _get_eval_sampler(self, eval_dataset: Any) -> torch.utils.data.Sampler | None:
        if self.args.world_size <= 1:
            return torch.utils.data.SequentialSampler(eval_dataset)
        return super()._get_eval_sampler(eval_dataset)


def dev_metrics(task: GlueTask, logged: dict[str, float]) -> dict[str, float]:
    """Trainer metric keys (`eval_accuracy`, MNLI `eval_m_accuracy`) -> record names (`accuracy_m`)."""
    found = {}
    for split in task.splits_for("dev"):
        prefix, suffix = (f"eval_{split.metric_suffix}_", f"_{split.metric_suffix}") if split.metric_suffix \
            else ("eval_", "")
        for metric in task.metrics:
            if prefix + metric in logged:
                found[metric + suffix] = float(logged[prefix + metric])
    return found


class EpochHistory(TrainerCallback):
    """Per evaluation: the epoch, the dev metrics and the training loss logged just before."""

    def __init__(self, task: GlueTask) -> None:
        self.task = task
        self.epochs: list[dict[str, Any]] = []
        self.last_loss: float | None = None

    def on_log(self, args: Any, state: Any, control: Any, logs: dict | None = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.last_loss = float(logs["loss"])

    def on_evaluate(self, args: Any, state: Any, control: Any, metrics: dict | None = None, **kwargs: Any) -> None:
        epoch = round(float(state.epoch or 0.0), 2)
        if not self.epochs or self.epochs[-1]["epoch"] != epoch:
            self.epochs.append({"epoch": epoch, "dev": {}, "train_loss": self.last_loss})
        self.epochs[-1]["dev"].update(dev_metrics(self.task, metrics or {}))


def rank_train_section(t: TrainSection, world: int) -> TrainSection:
    """The `train` section one of `world` processes runs: GLUE batch sizes are global (a cell means the
    same on any number of processes), so each process takes batch_size / world examples per step."""
    if t.batch_size % world:
        raise ZooError(f"batch size {t.batch_size} cannot be split evenly over {world} processes")
    return dataclasses.replace(t, batch_size=t.batch_size // world)


def engine_config(recipe: GlueRecipe, model: Any) -> dict[str, Any] | None:
    """In a multi-process launch, the DeepSpeed config (ZeRO 0: the models are small) derived from `train`."""
    if not is_distributed_launch():
        return None
    world = world_size()
    return deepspeed_config(rank_train_section(recipe.train, world), DeepSpeedSection(enabled=True), world,
                            **precision_flags(recipe.train.precision),
                            hidden_size=getattr(model.config, "hidden_size", None),
                            pin_memory=torch.cuda.is_available())


def training_arguments(recipe: GlueRecipe, output_dir: str, ds_config: dict[str, Any] | None = None
                       ) -> TrainingArguments:
    return TrainingArguments(
        output_dir=output_dir,
        **optimisation_arguments(rank_train_section(recipe.train, world_size()), recipe.eval.batch_size),
        deepspeed=ds_config,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        train_sampling_strategy="group_by_length",
        length_column_name="length",
        disable_tqdm=True,
    )


def metrics_function(task: GlueTask) -> Any:
    def compute(prediction: EvalPrediction) -> dict[str, float]:
        outputs = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        return task_metrics(task, predictions_from_outputs(task, outputs), np.asarray(prediction.label_ids))

    return compute


# --------------------------------------------------------------------------- one cell


@dataclass
class CellData:
    train: Any
    dev: Any  # one dataset, or {"m": ..., "mm": ...} for MNLI
    fingerprints: dict[str, str]


def cell_data(recipe: GlueRecipe, task: GlueTask, tokenizer: Any) -> CellData:
    length = recipe.task.max_length
    train, fp_train = data.load_encoded(task, "train", tokenizer, length)
    fingerprints = {"train": fp_train}
    devs = {}
    for split in task.splits_for("dev"):
        dataset, fingerprints[split.name] = data.load_encoded(task, split.name, tokenizer, length)
        devs[split.metric_suffix] = data.by_length(data.first(dataset, recipe.task.max_eval_examples))
    dev = devs[""] if list(devs) == [""] else devs
    return CellData(data.first(train, recipe.task.max_train_examples), dev, fingerprints)


def predict_tests(trainer: Trainer, task: GlueTask, recipe: GlueRecipe, tokenizer: Any, out: Path) -> list[str]:
    """Write the submission file of every test split that can be read; returns the file names."""
    written = []
    for split in task.splits_for("test"):
        if not data.split_available(split):
            continue
        dataset, _ = data.load_encoded(task, split.name, tokenizer, recipe.task.max_length)
        dataset = data.by_length(dataset)
        outputs = trainer.predict(dataset).predictions
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs
        if is_main_rank():  # in a launch every rank holds all the gathered predictions
            write_predictions(task, split, outputs, np.asarray(dataset["idx"]), out)
        written.append(split.submission)
    return written


def new_record(cell: Cell) -> dict[str, Any]:
    recipe, t = cell.recipe, cell.recipe.train
    return {
        "run_id": cell.run_id, "kind": "glue", "model": cell.model, "model_tag": cell.tag, "task": cell.task.key,
        "status": "running", "reason": None, "smoke": recipe.smoke, "recipe_hash": glue_recipe_hash(recipe),
        "recipe": RECIPE_FILE,
        "hparams": {"batch_size": t.batch_size, "lr": t.lr, "epochs": t.epochs, "seed": t.seed},
        "epochs": [], "metrics": {"dev": {}, "score": None}, "params": None, "started_at": now_iso(),
    }


def train_and_evaluate(cell: Cell, record: dict[str, Any], predict_test: bool) -> None:
    """The work of a cell; fills `record` as it goes (so a failure keeps what was learnt)."""
    recipe, task = cell.recipe, cell.task
    record["tokenizer"] = tokenizer_source(recipe)
    tokenizer = load_tokenizer(record["tokenizer"])
    cell_inputs = cell_data(recipe, task, tokenizer)
    set_seed(recipe.train.seed)  # the classifier head's initialisation
    model = load_classifier(recipe, task, tokenizer)
    record["params"] = count_parameters(model)
    record["data"] = {"fingerprints": cell_inputs.fingerprints, "train_examples": len(cell_inputs.train),
                      "max_length": recipe.task.max_length}
    history = EpochHistory(task)
    ds_config = engine_config(recipe, model)
    if ds_config is not None:
        record["launch"] = {"world_size": world_size(), "deepspeed": True, "zero_stage": 0}
        record["deepspeed_config"] = DEEPSPEED_CONFIG_FILE
        if is_main_rank():
            save_config(ds_config, cell.directory)
    with tempfile.TemporaryDirectory(prefix="zoo-glue-") as scratch:
        args = training_arguments(recipe, scratch, ds_config)
        trainer = GlueTrainer(model=model, args=args, train_dataset=cell_inputs.train,
                              eval_dataset=cell_inputs.dev, data_collator=PadCollator(tokenizer),
                              processing_class=tokenizer, compute_metrics=metrics_function(task),
                              callbacks=[history])
        trainer.remove_callback(PrinterCallback)  # the grid prints one line per cell instead
        record["epochs"] = history.epochs
        t_train = time.monotonic()
        trainer.train()
        if not history.epochs or history.epochs[-1]["epoch"] != round(float(trainer.state.epoch or 0.0), 2):
            trainer.evaluate()  # training stopped between epochs (train.max_steps)
        record.update(steps=trainer.state.global_step, train_time_s=round(time.monotonic() - t_train, 2))
        dev = history.epochs[-1]["dev"] if history.epochs else {}
        missing = [name for name in task.dev_metric_names if name not in dev]
        if missing:
            raise ZooError(f"dev evaluation gave no {', '.join(missing)}")
        record["metrics"] = {"dev": dev, "score": task_score(dev)}
        if predict_test:
            files = predict_tests(trainer, task, recipe, tokenizer, cell.predictions_dir)
            record["predictions"] = {"dir": str(cell.predictions_dir), "files": files}


def run_cell(cell: Cell, predict_test: bool = False, started: str | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate one cell, write its record (ok or failed), return the record.

    A failure is recorded with its reason and returned, not raised: a grid goes on. Ctrl-C records
    the cell as failed ('interrupted') and is re-raised. In a multi-process launch every rank runs the
    cell (`started`: rank 0's start time, the same in all) and only rank 0 writes; a non-finite loss
    stops every rank at the same step, so the grid goes on, but any other failure is raised: a rank
    that fails alone leaves the others waiting for it, so the launch must end (see zoo.deepspeed).
    """
    t0 = time.monotonic()
    record = new_record(cell)
    record["started_at"] = started or record["started_at"]
    try:
        train_and_evaluate(cell, record, predict_test)
        record.update(status="ok")
    except (Exception, KeyboardInterrupt) as exc:
        launched = is_distributed_launch()
        if launched:
            ignore_sigterm()  # the launcher stopping this rank must not cut its record or note short
        reason = failure_reason(exc, cell.work_dir, record["started_at"])
        record.update(status="failed", reason=reason[:500])
        if launched and not is_main_rank():
            note_failure(cell.work_dir, record["started_at"], reason)
        finish(cell, record, t0)
        if isinstance(exc, KeyboardInterrupt) or (launched and not isinstance(exc, NonFiniteLoss)):
            raise
        if launched:
            stop_on_sigterm()
        return record
    finish(cell, record, t0)
    return record


def finish(cell: Cell, record: dict[str, Any], t0: float) -> None:
    if not is_main_rank():
        return
    record.update(finished_at=now_iso(), wall_time_s=round(time.monotonic() - t0, 2), environment=environment())
    atomic_write(cell.directory / RECIPE_FILE, glue_recipe_yaml(cell.recipe))
    write_record(cell.directory, json_safe(record))


def json_safe(value: Any) -> Any:
    """JSON has no NaN or infinity: such values are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    return value

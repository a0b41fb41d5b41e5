"""Fine-tune one GLUE cell with the HF Trainer, evaluate on dev after every epoch, record it.

cell recipe -> cached tokenized splits -> AutoModelForSequenceClassification (num_labels=1 for
STS-B) -> Trainer (training batches in `train.batch_order`, dynamic padding, dev sets sorted by length and
evaluated in large batches) -> record under results/glue/<model-tag>/<task>/<cell-id>/.

The cell's metrics are those of the last epoch's dev evaluation, not the best epoch's: choosing the
epoch on dev as well would be a second, hidden search over the dev set (the classic grid fixes the
number of epochs). Every epoch's dev metrics are kept in the record's `epochs` list.
"""

from __future__ import annotations

import dataclasses
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
    set_seed,
)
from transformers.trainer_utils import align_special_tokens
from transformers.utils import logging as hf_logging

from zoo.data.tokenization import load_tokenizer
from zoo.errors import ZooError
from zoo.glue import data
from zoo.glue.batches import train_sampler
from zoo.glue.cell import Cell
from zoo.glue.metrics import predictions_from_outputs, task_metrics, task_score
from zoo.glue.predict import write_predictions
from zoo.glue.progress import cell_progress
from zoo.glue.tasks import GlueTask, SplitSpec
from zoo.glue.vocabulary import prunable, prune_input_embeddings, remapping_collator, used_token_ids
from zoo.model.first_token import compute_last_layer_at_first_token
from zoo.model.loading import load_pretrained
from zoo.model.modeling import with_training_dropout
from zoo.model.registry import count_parameters
from zoo.model.resolve import resolve_model
from zoo.recipe.common import DeepSpeedSection, TrainSection, is_smoke
from zoo.recipe.glue import GlueRecipe, glue_recipe_hash, glue_recipe_yaml
from zoo.recipe.schema import to_dict
from zoo.record.schema import GlueMetrics, GlueRecord, HParams
from zoo.train.deepspeed import DEEPSPEED_CONFIG_FILE
from zoo.train.hf_trainer import (
    NonFiniteLoss,
    StopOnNonFiniteLoss,
    ZooSchedules,
    engine_config,
    training_arguments,
)
from zoo.train.lifecycle import RunLifecycle
from zoo.train.ranks import RankTerminated, is_distributed_launch, is_main_rank, world_size

MODEL_INPUTS = ("input_ids", "token_type_ids", "attention_mask", "labels")


# --------------------------------------------------------------------------- model and tokenizer


def load_classifier(recipe: GlueRecipe, task: GlueTask, tokenizer: Any) -> torch.nn.Module:
    """The pretrained encoder with a fresh classification (or regression) head."""
    labels: dict[str, Any] = {"problem_type": "regression"} if task.regression else {
        "id2label": dict(enumerate(task.labels)), "label2id": {name: i for i, name in enumerate(task.labels)}}
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier weights" is the point, not news
    try:
        model = load_pretrained(AutoModelForSequenceClassification, resolve_model(recipe.model.name),
                                num_labels=task.num_labels, ignore_mismatched_sizes=True, **labels)
    finally:
        hf_logging.set_verbosity(verbosity)
    if model.config.pad_token_id is None:  # GPT-2 style models find the last real token through it
        model.config.pad_token_id = tokenizer.pad_token_id
    # What the Trainer would do when training starts, done here so that a pruned vocabulary's ids are
    # the config's final ones (the Trainer is then given no tokenizer: it would undo them).
    align_special_tokens(model, tokenizer)
    limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if limit is not None and recipe.task.max_length > limit:
        raise ZooError(f"task.max_length={recipe.task.max_length} exceeds the model's {limit} positions")
    return with_training_dropout(model, recipe.train.dropout)


# --------------------------------------------------------------------------- trainer pieces


class PadCollator:
    """Dynamic padding of model inputs; bookkeeping columns (idx, length) are dropped."""

    def __init__(self, tokenizer: Any) -> None:
        multiple = 8 if torch.cuda.is_available() else None  # tensor-core friendly shapes on GPU
        self.pad = DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return self.pad([{k: f[k] for k in MODEL_INPUTS if k in f} for f in features])


class GlueTrainer(ZooSchedules, StopOnNonFiniteLoss, Trainer):
    """The HF Trainer with training batches in the recipe's `train.batch_order` (zoo.glue.batches),
    evaluation in dataset order (sorted by length) and a hard stop on a non-finite loss."""

    def __init__(self, *args: Any, batch_order: str = "length-grouped", group_batches: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batch_order = batch_order
        self.group_batches = group_batches
        # Sequence-classification heads return a batch mean even though their forward takes **kwargs;
        # told otherwise, the Trainer would skip the division by grad_accum and scale by world size.
        self.model_accepts_loss_kwargs = False

    def _get_train_sampler(self, train_dataset: Any = None) -> torch.utils.data.Sampler | None:
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        # The Trainer would hand the arrow `length` column to the sampler, which then reads it one item
        # at a time: 28 s per epoch on SST-2 against 1.2 s with a plain list.
        lengths = np.asarray(dataset["length"]).tolist()
        step = self.args.train_batch_size * self.args.gradient_accumulation_steps * self.args.world_size
        return train_sampler(self.batch_order, lengths, step, self.group_batches)

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


def glue_training_arguments(recipe: GlueRecipe, output_dir: str, engine: dict[str, Any] | None = None,
                            dashboard_dir: Path | None = None) -> Any:
    return training_arguments(
        output_dir, rank_train_section(recipe.train, world_size()), recipe.eval.batch_size, engine, dashboard_dir,
        eval_strategy="epoch",
        logging_strategy="epoch",
        save_strategy="no",
        disable_tqdm=True,  # zoo.glue.progress draws the cell's own bar
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


def test_sets(task: GlueTask, recipe: GlueRecipe, tokenizer: Any) -> list[tuple[SplitSpec, Any]]:
    """Every test split that can be read, tokenized and sorted by length."""
    return [(split, data.by_length(data.load_encoded(task, split.name, tokenizer, recipe.task.max_length)[0]))
            for split in task.splits_for("test") if data.split_available(split)]


def predict_tests(trainer: Trainer, task: GlueTask, tests: list[tuple[SplitSpec, Any]], out: Path) -> list[str]:
    """Write the submission file of every test split; returns the file names."""
    for split, dataset in tests:
        outputs = trainer.predict(dataset).predictions
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs
        if is_main_rank():  # in a launch every rank holds all the gathered predictions
            write_predictions(task, split, outputs, np.asarray(dataset["idx"]), out)
    return [split.submission for split, _ in tests]


def pruned_collator(model: torch.nn.Module, collator: Any, datasets: list[Any], record: GlueRecord) -> Any:
    """Prune `model`'s vocabulary to the tokens of `datasets` (zoo.glue.vocabulary); the collator that
    feeds it. The record keeps how many rows were trained."""
    if not prunable(model):
        return collator
    vocabulary = prune_input_embeddings(model, used_token_ids(datasets))
    record.data["vocabulary"] = {"rows": len(vocabulary.kept), "of": vocabulary.full_size}
    return remapping_collator(collator, vocabulary)


def new_record(cell: Cell) -> GlueRecord:
    recipe, t = cell.recipe, cell.recipe.train
    return GlueRecord(run_id=cell.run_id, kind="glue", model=cell.model, model_tag=cell.tag, task=cell.task.key,
                      smoke=is_smoke(to_dict(recipe)), recipe_hash=glue_recipe_hash(recipe),
                      hparams=HParams(batch_size=t.batch_size, lr=t.lr, epochs=t.epochs, seed=t.seed))


def train_and_evaluate(cell: Cell, record: GlueRecord, predict_test: bool) -> None:
    """The work of a cell; fills `record` as it goes (so a failure keeps what was learnt)."""
    recipe, task = cell.recipe, cell.task
    record.tokenizer = resolve_model(recipe.model.name).tokenizer(recipe.model.tokenizer)
    tokenizer = load_tokenizer(record.tokenizer)
    cell_inputs = cell_data(recipe, task, tokenizer)
    tests = test_sets(task, recipe, tokenizer) if predict_test else []
    set_seed(recipe.train.seed)  # the classifier head's initialisation
    model = load_classifier(recipe, task, tokenizer)
    record.params = count_parameters(model)
    record.data = {"fingerprints": cell_inputs.fingerprints, "train_examples": len(cell_inputs.train),
                   "max_length": recipe.task.max_length}
    if recipe.train.first_token_last_layer and compute_last_layer_at_first_token(model):
        record.data["last_layer"] = "first token"
    collator = PadCollator(tokenizer)
    if recipe.train.prune_vocabulary:
        devs = list(cell_inputs.dev.values()) if isinstance(cell_inputs.dev, dict) else [cell_inputs.dev]
        collator = pruned_collator(model, collator, [cell_inputs.train, *devs, *(d for _, d in tests)], record)
    history = EpochHistory(task)
    engine = engine_config(rank_train_section(recipe.train, world_size()), DeepSpeedSection(), model,
                           cell.directory if is_main_rank() else None)
    if engine is not None:
        record.launch = {"world_size": world_size(), "deepspeed": True, "zero_stage": 0}
        record.deepspeed_config = DEEPSPEED_CONFIG_FILE
    with tempfile.TemporaryDirectory(prefix="zoo-glue-") as scratch:
        args = glue_training_arguments(recipe, scratch, engine, cell.work_dir / "dashboards")
        trainer = GlueTrainer(model=model, args=args,
                              train_dataset=cell_inputs.train, eval_dataset=cell_inputs.dev,
                              data_collator=collator, compute_metrics=metrics_function(task), callbacks=[history],
                              batch_order=recipe.train.batch_order, group_batches=recipe.train.group_batches)
        trainer.remove_callback(PrinterCallback)  # the grid prints one line per cell instead
        record.epochs = history.epochs
        t_train = time.monotonic()
        with cell_progress(trainer, cell.label, history):
            trainer.train()
        if not history.epochs or history.epochs[-1]["epoch"] != round(float(trainer.state.epoch or 0.0), 2):
            trainer.evaluate()  # training stopped between epochs (train.max_steps)
        record.steps, record.train_time_s = trainer.state.global_step, round(time.monotonic() - t_train, 2)
        dev = history.epochs[-1]["dev"] if history.epochs else {}
        missing = [name for name in task.dev_metric_names if name not in dev]
        if missing:
            raise ZooError(f"dev evaluation gave no {', '.join(missing)}")
        record.metrics = GlueMetrics(dev=dev, score=task_score(dev))
        if predict_test:
            files = predict_tests(trainer, task, tests, cell.predictions_dir)
            record.predictions = {"dir": str(cell.predictions_dir), "files": files}


def run_cell(spec: dict[str, Any]) -> dict[str, Any]:
    """Fine-tune and evaluate the cell `spec` describes (`Cell.to_spec()`: its recipe and model, plus
    `predict_test` and `started`), write its record (ok or failed) and return the record as plain data.

    This is the one "run one cell" function: a local grid, a worker process and a remote task all call
    it. A failure is recorded with its reason and returned, not raised: a grid goes on. Ctrl-C or SIGTERM
    records the cell as failed and is re-raised. In a multi-process launch every rank runs the cell
    (`started`: rank 0's start time, the same in all) and only rank 0 writes; a non-finite loss stops
    every rank at the same step, so the grid goes on, but any other failure is raised: a rank that fails
    alone leaves the others waiting for it, so the launch must end (see zoo.train.ranks).
    """
    cell = Cell.from_spec(spec)
    record = new_record(cell)
    run = RunLifecycle(record, cell.directory, cell.work_dir, glue_recipe_yaml(cell.recipe))
    run.begin(spec.get("started"))
    run.save_progress()  # `running` from now on: an earlier attempt's failed record no longer stands
    try:
        train_and_evaluate(cell, record, bool(spec.get("predict_test")))
        run.succeed()
    except (Exception, KeyboardInterrupt) as exc:
        run.fail(exc)
        launched = is_distributed_launch()
        if isinstance(exc, (KeyboardInterrupt, RankTerminated)) or (launched and not isinstance(exc, NonFiniteLoss)):
            raise
    return dataclasses.asdict(record)

"""The HF Trainer wiring every zoo run shares: training arguments, the DeepSpeed engine, precision,
dashboards (`train.report_to`), and the non-finite-loss stop.

LM runs (`zoo.train.lm`) and GLUE cells (`zoo.glue.finetune`) differ only in what they log, evaluate
and save; how a recipe's `train` section becomes `TrainingArguments`, when DeepSpeed runs and with
which config, and how a NaN loss stops training (on every rank at the same step) are decided here.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from transformers import TrainingArguments

from zoo.errors import ZooError
from zoo.recipe.common import DeepSpeedSection, TrainSection
from zoo.train.deepspeed import deepspeed_config, save_config
from zoo.train.ranks import as_single_rank, is_distributed_launch, world_size

# Set by `zoo glue --workers` in each worker process: the training processes that share this machine's cores.
GRID_WORKERS_ENV = "ZOO_GRID_PROCESSES"


class NonFiniteLoss(RuntimeError):
    """The training loss became NaN or infinite."""


def gpu_has_bf16() -> bool:
    """Whether the GPU computes bf16 natively (Ampere / compute capability 8.0 and later). torch's own
    `is_bf16_supported()` also says yes where bf16 is only emulated (V100, T4), which is slower than fp16."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_has_bf16() -> bool:
    """Whether the CPU has bf16 matrix instructions (AVX512-BF16, AMX-BF16), with which oneDNN's bf16 products
    run 2-2.5x faster than float32 ones; elsewhere bf16 is emulated and slower than float32."""
    capabilities = torch.cpu.get_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(precision: str, gpu: bool, bf16_native: bool) -> str:
    """fp32, bf16 or fp16 for `train.precision` on a machine with or without a GPU; `bf16_native` says whether
    the device that trains (the GPU, else the CPU) computes bf16 natively.

    auto: bf16 autocast where the GPU has it, else fp16 autocast with loss scaling (the Trainer's GradScaler,
    DeepSpeed's dynamic loss scale), fp32 without a GPU (a CPU run's numbers do not change with the CPU).
    An explicit bf16 needs native bf16 (a GPU of compute capability 8.0, or a CPU with AVX512-BF16 or AMX);
    fp16 needs a GPU.
    """
    if precision == "auto":
        return ("bf16" if bf16_native else "fp16") if gpu else "fp32"
    if precision == "fp16" and not gpu:
        raise ZooError("train.precision=fp16 needs a GPU; use fp32, bf16 or auto on CPU")
    if precision == "bf16" and not bf16_native:
        device = ("this GPU has no native bf16 (it needs compute capability 8.0, Ampere or later); use fp16 or auto"
                  if gpu else "this CPU has no bf16 instructions (AVX512-BF16 or AMX); use fp32 or auto")
        raise ZooError(f"train.precision=bf16: {device}")
    return precision


def precision_flags(precision: str) -> dict[str, bool]:
    """TrainingArguments bf16/fp16 flags for `train.precision` on this machine (`resolve_precision`)."""
    gpu = torch.cuda.is_available()
    resolved = resolve_precision(precision, gpu, gpu_has_bf16() if gpu else cpu_has_bf16())
    return {"bf16": resolved == "bf16", "fp16": resolved == "fp16"}


def evaluation_autocast(precision: str) -> tuple[Callable[[], AbstractContextManager[Any]], str | None]:
    """The autocast a run of `train.precision` evaluates under on this machine (re-evaluating a checkpoint gives the
    number its run recorded), and None; or, where this machine cannot compute that precision, float32 and why."""
    try:
        flags = precision_flags(precision)
    except ZooError as exc:
        return nullcontext, f"{exc}: evaluated in float32 instead"
    dtype = torch.bfloat16 if flags["bf16"] else torch.float16 if flags["fp16"] else None
    if dtype is None:
        return nullcontext, None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    return (lambda: torch.autocast(device, dtype=dtype)), None


# DataLoader workers `auto` starts on a GPU machine: enough to keep collation and MLM masking (about 2 ms per
# 256 x 128 batch on one core) off the training process, few enough for many processes per machine.
AUTO_LOADER_WORKERS = 4


def auto_loader_workers(gpu: bool, cores: int, processes: int) -> int:
    """`train.dataloader_workers: auto`: 0 without a GPU (workers measured no faster on 2 CPU cores), else up to
    AUTO_LOADER_WORKERS of this process's share of the `cores` (`processes` training processes on the machine),
    one core left to the training process itself."""
    if not gpu:
        return 0
    return max(1, min(AUTO_LOADER_WORKERS, cores // max(1, processes) - 1))


# `train.compile` runs TrainingArguments' torch.compile backend, inductor, unless this names another one:
# ZOO_COMPILE_BACKEND=aot_eager captures and traces the same graphs without generating code (tests, debugging).
COMPILE_BACKEND_ENV = "ZOO_COMPILE_BACKEND"


def compile_arguments(enabled: bool) -> dict[str, Any]:
    """The TrainingArguments of `train.compile`; inductor without a C compiler is a one-line error here, not a
    traceback at the first step."""
    if not enabled:
        return {"torch_compile": False}
    backend = os.environ.get(COMPILE_BACKEND_ENV) or "inductor"
    if backend == "inductor":
        from torch._inductor.cpp_builder import get_cpp_compiler

        compiler = get_cpp_compiler()
        if shutil.which(compiler) is None:
            raise ZooError(f"train.compile=true: inductor needs a C/C++ compiler ({compiler!r} is not on PATH); "
                           "install gcc (apt-get install g++) or set train.compile=false")
    return {"torch_compile": True, "torch_compile_backend": backend}


def is_glue_section(t: TrainSection) -> bool:
    from zoo.recipe.glue import GlueTrainSection

    return isinstance(t, GlueTrainSection)


def usable_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_arguments(workers: int | str, masking: bool = True) -> dict[str, Any]:
    """The TrainingArguments of the DataLoader: `workers` (a count or 'auto'), pinned memory and prefetch on a
    GPU. `auto` gives workers to LM runs (`masking`: MLM masks, CLM blocks) only; a GLUE cell's collation is
    padding, cheaper than starting workers for each of its epochs and evaluations. Workers are not persistent:
    each epoch's workers start after the epoch callback has advanced the MLM collator's epoch, whose masks they
    draw."""
    gpu = torch.cuda.is_available()
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1")) * int(os.environ.get(GRID_WORKERS_ENV, "1"))
    if workers == "auto":
        count = auto_loader_workers(gpu, usable_cores(), processes) if masking else 0
    else:
        count = int(workers)
    return {"dataloader_num_workers": count, "dataloader_pin_memory": gpu,
            "dataloader_prefetch_factor": 4 if count and gpu else None, "dataloader_persistent_workers": False}


# The trapezoid's decay as a fraction of the steps; `ZooSchedules.create_scheduler` turns it into a step count
# once the Trainer knows how many steps there are.
DECAY_FRACTION = "zoo_decay_fraction"


def schedule_arguments(t: TrainSection) -> dict[str, Any]:
    if t.schedule == "polynomial":
        return {"lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"power": t.decay_power, "lr_end": 0.0}}
    if t.schedule != "trapezoid":
        return {"lr_scheduler_type": t.schedule}
    return {"lr_scheduler_type": "warmup_stable_decay",
            "lr_scheduler_kwargs": {"decay_type": "linear", "min_lr_ratio": 0.0, DECAY_FRACTION: t.decay}}


def optimisation_arguments(t: TrainSection, eval_batch_size: int) -> dict[str, Any]:
    """The TrainingArguments that a recipe's `train` section decides."""
    return {
        "per_device_train_batch_size": t.batch_size,
        "per_device_eval_batch_size": eval_batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "learning_rate": t.lr,
        "weight_decay": t.weight_decay,
        "adam_beta1": t.adam_beta1,
        "adam_beta2": t.adam_beta2,
        "adam_epsilon": t.adam_epsilon,
        "warmup_steps": t.warmup if t.warmup < 1 else int(t.warmup),
        **schedule_arguments(t),
        "max_steps": t.max_steps,
        "num_train_epochs": t.epochs,
        "seed": t.seed,
        "data_seed": t.seed,
        "max_grad_norm": t.max_grad_norm,
        **loader_arguments(t.dataloader_workers, masking=not is_glue_section(t)),
        **compile_arguments(t.compile),
        "logging_nan_inf_filter": False,
        "remove_unused_columns": False,
        "report_to": list(t.report_to),
        "use_cpu": not torch.cuda.is_available(),
        **precision_flags(t.precision),
    }


# --------------------------------------------------------------------------- dashboards (train.report_to)

# The package each `train.report_to` entry needs (TensorBoard: torch's writer needs `tensorboard`).
DASHBOARD_PACKAGES = {"tensorboard": "tensorboard", "trackio": "trackio", "wandb": "wandb", "mlflow": "mlflow"}
_SET_BY_ZOO: dict[str, str] = {}  # the environment variables zoo set, so a later run may set them again


def dashboard_environment(report_to: list[str], directory: Path) -> dict[str, str]:
    """Where each dashboard writes, offline: all under `directory` (the run's own output folder)."""
    env: dict[str, str] = {}
    if "tensorboard" in report_to:
        env["TENSORBOARD_LOGGING_DIR"] = str(directory / "tensorboard")
    if "wandb" in report_to:
        env.update(WANDB_MODE="offline", WANDB_DIR=str(directory))
    if "mlflow" in report_to:
        env["MLFLOW_TRACKING_URI"] = (directory / "mlruns").resolve().as_uri()
    if "trackio" in report_to:
        env["TRACKIO_DIR"] = str(directory / "trackio")
    return env


def setup_dashboards(report_to: list[str], directory: Path) -> None:
    """Check each dashboard's package is installed (a one-line error otherwise) and point it at `directory`,
    offline, unless the user set its variable: the Trainer's integrations read their settings from there."""
    missing = [package for package in (DASHBOARD_PACKAGES[name] for name in report_to)
               if importlib.util.find_spec(package) is None]
    if missing:
        raise ZooError(f"train.report_to={list(report_to)} needs {', '.join(missing)}: pip install {' '.join(missing)}"
                       " (tensorboard: pip install -e '.[dashboards]')")
    for key, value in dashboard_environment(report_to, directory).items():
        if key not in os.environ or os.environ[key] == _SET_BY_ZOO.get(key):
            os.environ[key] = _SET_BY_ZOO[key] = value


def training_arguments(output_dir: Path | str, t: TrainSection, eval_batch_size: int,
                       engine: dict[str, Any] | None, dashboard_dir: Path | None = None,
                       **schedule: Any) -> TrainingArguments:
    """`TrainingArguments` from `train` (per process), the DeepSpeed config (None: none) and the run kind's
    logging / evaluation / saving schedule. Dashboards (`train.report_to`) write under `dashboard_dir`
    (default: `output_dir`/dashboards) and name the run after `output_dir`."""
    if t.report_to:
        setup_dashboards(t.report_to, Path(dashboard_dir or Path(output_dir) / "dashboards"))
        schedule.setdefault("run_name", Path(output_dir).name)
    return TrainingArguments(output_dir=str(output_dir), **optimisation_arguments(t, eval_batch_size),
                             deepspeed=engine, **schedule)


def engine_config(t: TrainSection, ds: DeepSpeedSection, model: Any, record_dir: Path | None) -> dict[str, Any] | None:
    """The DeepSpeed config when DeepSpeed runs (the recipe asks for it, or a multi-process launch), saved as
    deepspeed.json into `record_dir` (None: not saved); None when the plain Trainer runs."""
    if not (ds.enabled or is_distributed_launch()):
        return None
    as_single_rank()
    config = deepspeed_config(t, ds, world_size(), **precision_flags(t.precision),
                              hidden_size=getattr(model.config, "hidden_size", None),
                              pin_memory=torch.cuda.is_available())
    if record_dir is not None:
        save_config(config, record_dir)
    return config


class ZooSchedules:
    """Trainer mixin: the trapezoid schedule (warm-up, constant, linear decay to zero over the last
    `train.decay` of the steps) through the Trainer's warmup_stable_decay."""

    args: Any

    def create_scheduler(self, num_training_steps: int, optimizer: Any = None) -> Any:
        kwargs = dict(self.args.lr_scheduler_kwargs or {})
        if DECAY_FRACTION in kwargs:
            fraction = kwargs.pop(DECAY_FRACTION)
            kwargs["num_decay_steps"] = max(1, round(fraction * num_training_steps))
            self.args.lr_scheduler_kwargs = kwargs
        return super().create_scheduler(num_training_steps, optimizer)  # type: ignore[misc]


def ramped_batch_size(step: int, total_steps: int, ramp: float, start: int, full: int) -> int:
    """The micro-batch size of optimizer step `step` (0-based) under a linear ramp from `start` to `full` over
    the first `ramp` of `total_steps`, in whole multiples of `start`."""
    ramp_steps = round(ramp * total_steps)
    if step >= ramp_steps or start >= full:
        return full
    grown = start + (full - start) * step / ramp_steps
    return min(full, max(start, start * round(grown / start)))


def batch_head(batch: Any, size: int) -> Any:
    """The first `size` examples of a collated batch (every tensor cut along its batch dimension)."""
    return {key: value[:size] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
            for key, value in batch.items()}


class BatchRamp:
    """Trainer mixin: `train.batch_ramp` grows the micro-batch from `train.batch_ramp_start` to
    `train.batch_size` over the first part of training. Each step's batch is cut to the step's size before
    its tokens are counted, so the loss normalisation, tokens seen and every rank agree; the step is a pure
    function of the Trainer's global step, so a resumed run ramps exactly as an uninterrupted one."""

    args: Any
    state: Any
    ramp: tuple[float, int] = (0.0, 1)  # (fraction of steps, first size)

    def get_batch_samples(self, epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list, Any]:
        batches, items = super().get_batch_samples(epoch_iterator, num_batches, device)  # type: ignore[misc]
        fraction, start = self.ramp
        full = self.args.per_device_train_batch_size
        size = ramped_batch_size(self.state.global_step, self.state.max_steps, fraction, start, full)
        if size >= full:
            return batches, items
        batches = [batch_head(batch, size) for batch in batches]
        return batches, self._get_num_items_in_batch(batches, device)  # type: ignore[attr-defined]


class StopOnNonFiniteLoss:
    """Trainer mixin: a NaN or infinite training loss stops training with `NonFiniteLoss`.

    In a multi-process launch the check is gathered across ranks, so every rank stops at the same step
    and the launch stays in step (a rank stopping alone would leave the others waiting for it).
    """

    args: Any
    accelerator: Any
    state: Any

    def training_step(self, model: Any, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
        loss = super().training_step(model, inputs, num_items_in_batch)  # type: ignore[misc]
        finite = torch.isfinite(loss.detach()).all()
        if self.args.world_size > 1:
            finite = self.accelerator.gather(finite.reshape(1).to(torch.int64)).min().bool()
        if not finite:
            raise NonFiniteLoss(f"training loss became {loss.item()} at step {self.state.global_step + 1}")
        return loss

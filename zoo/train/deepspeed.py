"""The recipe's `deepspeed` section as an explicit DeepSpeed config.

Every number in the generated config is derived from the recipe's `train` section and the launch's
world size, so nothing is written twice and the HF integration has no "auto" left to fill or to
mismatch. The optimizer and learning-rate schedule are deliberately absent: the Trainer builds them
from `train` (lr, warm-up, schedule, weight decay) and hands them to DeepSpeed, so there is one
optimizer definition whichever engine runs. The config is saved as `deepspeed.json` beside the run
record; `zoo <kind> --recipe recipe.yaml` with the same number of processes regenerates it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zoo.files import atomic_write
from zoo.recipe.common import DeepSpeedSection, TrainSection

DEEPSPEED_CONFIG_FILE = "deepspeed.json"


def zero_section(ds: DeepSpeedSection, hidden_size: int | None, pin_memory: bool) -> dict[str, Any]:
    """`zero_optimization`: the stage, CPU offload, and for ZeRO-3 the buckets sized to the model."""
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": pin_memory}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": pin_memory}
    if ds.zero_stage == 3:  # gather the split weights when saving, so `final/` is a plain HF model directory
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    if ds.zero_stage == 3 and hidden_size:
        # the values the HF integration would fill for "auto", computed here so the saved file is complete
        zero.update(reduce_bucket_size=hidden_size * hidden_size,
                    stage3_prefetch_bucket_size=int(0.9 * hidden_size * hidden_size),
                    stage3_param_persistence_threshold=10 * hidden_size)
    return zero


def deepspeed_config(t: TrainSection, ds: DeepSpeedSection, world: int, bf16: bool, fp16: bool,
                     hidden_size: int | None = None, pin_memory: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for a `train` section (batch_size per process) run by `world` processes."""
    return {
        "train_micro_batch_size_per_gpu": t.batch_size,
        "gradient_accumulation_steps": t.grad_accum,
        "train_batch_size": t.batch_size * t.grad_accum * world,
        "gradient_clipping": t.max_grad_norm,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": fp16},
        "zero_optimization": zero_section(ds, hidden_size, pin_memory),
        "steps_per_print": 10**9,  # zoo logs the loss itself (train.log_every); keep DeepSpeed quiet
        "wall_clock_breakdown": False,
    }


def save_config(config: dict[str, Any], directory: Path) -> Path:
    """Write `deepspeed.json` into a run's record directory; returns its path."""
    path = directory / DEEPSPEED_CONFIG_FILE
    atomic_write(path, json.dumps(config, indent=2) + "\n")
    return path

"""The recipe's `deepspeed` section as a DeepSpeed config; launch detection."""

from __future__ import annotations

import os
from typing import Any

from zoo.recipe import Recipe


def is_distributed_launch() -> bool:
    """True inside a process started by the deepspeed launcher or torchrun with several ranks."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def deepspeed_config(recipe: Recipe) -> dict[str, Any]:
    """DeepSpeed config for the HF integration; batch, accumulation, clipping and precision come from
    `train` through the Trainer's "auto" values, so no number is written twice."""
    ds = recipe.deepspeed
    zero: dict[str, Any] = {"stage": ds.zero_stage}
    if ds.offload_optimizer and ds.zero_stage >= 1:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": False}
    if ds.offload_params and ds.zero_stage == 3:
        zero["offload_param"] = {"device": "cpu", "pin_memory": False}
    return {
        "train_micro_batch_size_per_gpu": "auto",
        "gradient_accumulation_steps": "auto",
        "train_batch_size": "auto",
        "gradient_clipping": "auto",
        "bf16": {"enabled": "auto"},
        "fp16": {"enabled": "auto"},
        "zero_optimization": zero,
    }

"""What every recipe kind shares: YAML files, dotted overrides, the opening fields, hashes, smoke runs.

The kinds themselves (`zoo.recipe.lm`: pretrain and finetune; `zoo.recipe.glue`) and the registry that
maps a kind to its loader (`zoo.recipe.kinds`) build on this module; it imports nothing heavy.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from zoo.recipe.schema import RecipeError, setting

Precision = Literal["auto", "fp32", "bf16", "fp16"]


# A run planned for fewer optimizer steps than this is a smoke run (kept off leaderboards).
SMOKE_MAX_STEPS = 100


@dataclass
class RecipeHead:
    """The opening fields of every recipe kind (each kind narrows `kind` to its own values)."""

    name: str = setting("", doc="Recipe name; empty: derived from the model (and corpus).")
    kind: str = setting("", doc="The recipe kind: pretrain, finetune or glue.")
    smoke: bool = setting(False, doc="A smoke/debug run: recorded but kept off leaderboards.")


@dataclass
class TrainSection:
    batch_size: int = setting(32, doc="Per-device (per-process) micro-batch size.", low=1)
    grad_accum: int = setting(1, doc="Gradient accumulation steps.", low=1)
    lr: float = setting(1e-4, doc="Peak learning rate (AdamW).", low=0, high=1)
    weight_decay: float = setting(0.01, doc="AdamW weight decay.", low=0, high=1)
    adam_beta2: float = setting(0.999, doc="AdamW beta2.", low=0, high=1)
    warmup: float = setting(0.06, doc="Warm-up: a fraction of all steps if < 1, else a step count.", low=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup"] = setting(
        "linear", doc="Learning-rate schedule after warm-up."
    )
    max_steps: int = setting(-1, doc="Optimizer steps to run; -1: run `epochs` epochs.", low=-1)
    epochs: float = setting(1.0, doc="Epochs over the training blocks (when max_steps is -1).", low=0)
    seed: int = setting(42, doc="Seed for initialisation, data order and dynamic masking.")
    precision: Precision = setting("auto", doc="auto: bf16 on a GPU that supports it, else fp32.")
    max_grad_norm: float = setting(1.0, doc="Gradient clipping norm (0 disables).", low=0)
    log_every: int = setting(50, doc="Log the training loss every N steps.", low=1)
    eval_every: int = setting(0, doc="Evaluate every N steps (0: only at the end).", low=0)
    save_every: int = setting(0, doc="Checkpoint every N steps (0: only at the end).", low=0)
    save_total_limit: int = setting(2, doc="Keep at most this many intermediate checkpoints.", low=1)
    dataloader_workers: int = setting(0, doc="DataLoader worker processes.", low=0)


@dataclass
class DeepSpeedSection:
    enabled: bool = setting(False, doc="Train through DeepSpeed (implied by a multi-process launch).")
    zero_stage: int = setting(0, doc="ZeRO stage: 0 none, 1 optimizer, 2 +gradients, 3 +parameters.", low=0, high=3)
    offload_optimizer: bool = setting(False, doc="Keep optimizer state in CPU memory (ZeRO >= 1).")
    offload_params: bool = setting(False, doc="Keep parameters in CPU memory (ZeRO 3).")


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from `path`, or a one-line RecipeError."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 0.0003); the value is read as YAML."""
    if "=" not in text:
        raise RecipeError(f"override {text!r}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override {text!r}: empty key")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `raw` with each dotted override set (validated later against the schema)."""
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"override {text!r}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` laid over `base`, section by section (a copy)."""
    result = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def dict_hash(data: dict[str, Any]) -> str:
    """A short, stable hash of a (resolved) recipe: same hash, same run."""
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:12]


def is_smoke(recipe: dict[str, Any]) -> bool:
    """A smoke run: marked so, planned for fewer than SMOKE_MAX_STEPS optimizer steps (`train.max_steps`),
    or (GLUE) trained or evaluated on a subset of its task (`task.max_train_examples` / `max_eval_examples`)."""
    if recipe.get("smoke"):
        return True
    train, task = recipe.get("train"), recipe.get("task")
    max_steps = train.get("max_steps") if isinstance(train, dict) else None
    if isinstance(max_steps, int) and not isinstance(max_steps, bool) and 0 < max_steps < SMOKE_MAX_STEPS:
        return True
    return isinstance(task, dict) and any(task.get(key) is not None
                                          for key in ("max_train_examples", "max_eval_examples"))

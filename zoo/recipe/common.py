"""What every recipe kind shares: YAML files, dotted overrides, the opening fields, hashes, smoke runs.

Recipe files are read strictly (`read_yaml`): a key given twice in one mapping, an empty file and a
non-mapping are one-line errors naming the file (and the line). Overrides (`--set train.lr=3e-4`, or
`--train.lr 3e-4`) may set a key once; `build_recipe` builds a kind's schema from a file and its
overrides, and an error in a value an override gave names the override, not the file.

The kinds themselves (`zoo.recipe.lm`: pretrain and finetune; `zoo.recipe.glue`) and the registry that
maps a kind to its loader (`zoo.recipe.kinds`) build on this module; it imports nothing heavy.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from yaml.constructor import ConstructorError
from yaml.error import Mark
from yaml.nodes import MappingNode

from zoo.recipe.schema import RecipeError, build, key_path, setting

T = TypeVar("T")

Precision = Literal["auto", "fp32", "bf16", "fp16"]
Dashboard = Literal["tensorboard", "trackio", "wandb", "mlflow"]


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
    adam_beta1: float = setting(0.9, doc="AdamW beta1.", low=0, high=1)
    adam_beta2: float = setting(0.999, doc="AdamW beta2.", low=0, high=1)
    adam_epsilon: float = setting(1e-8, doc="AdamW epsilon.", low=0, high=1)
    warmup: float = setting(0.06, doc="Warm-up: a fraction of all steps if < 1, else a step count.", low=0)
    schedule: Literal["linear", "cosine", "constant", "constant_with_warmup", "trapezoid", "polynomial"] = setting(
        "linear", doc="Learning-rate schedule after warm-up; trapezoid: constant, then a linear decay to zero "
                      "over the last `decay` of the steps; polynomial: lr x (steps left / decay steps) ** "
                      "`decay_power`, to zero."
    )
    decay: float = setting(0.2, doc="trapezoid: the fraction of all steps of its final decay to zero.", low=0,
                           high=1)
    decay_power: float = setting(1.0, doc="polynomial: the exponent of its decay (1: linear; 2: low rates "
                                 "for longer).", low=0.1, high=10)
    max_steps: int = setting(-1, doc="Optimizer steps to run; -1: run `epochs` epochs.", low=-1)
    epochs: float = setting(1.0, doc="Epochs over the training blocks (when max_steps is -1).", low=0)
    seed: int = setting(42, doc="Seed for initialisation, data order and dynamic masking.")
    precision: Precision = setting("auto", doc="auto: bf16 autocast on a GPU that supports it, fp16 on older GPUs, "
                                   "fp32 on CPU; bf16 on CPU needs AVX512-BF16 or AMX.")
    max_grad_norm: float = setting(1.0, doc="Gradient clipping norm (0 disables).", low=0)
    dropout: float = setting(-1.0, doc="Dropout while training (every dropout layer: hidden, attention); the saved "
                             "config keeps the model's own, so a model pretrained with 0 fine-tunes with BERT's 0.1. "
                             "-1: the model's own.", low=-1, high=1)
    log_every: int = setting(50, doc="Log the training loss every N steps.", low=1)
    eval_every: int = setting(0, doc="Evaluate every N steps (0: only at the end).", low=0)
    save_every: int = setting(0, doc="Checkpoint every N steps (0: only at the end).", low=0)
    save_total_limit: int = setting(2, doc="Keep at most this many intermediate checkpoints.", low=1)
    dataloader_workers: int | Literal["auto"] = setting(
        "auto", doc="DataLoader worker processes (collation and MLM masking off the training process); auto: "
        "0 without a GPU and for GLUE cells, else up to 4 of the cores this process may use (pinned memory, "
        "prefetch 4).", low=0)
    compile: bool = setting(False, doc="torch.compile the model (inductor; needs a C compiler such as gcc); the "
                                       "fused loss stays one opaque op inside the compiled graph.")
    report_to: list[Dashboard] = setting(
        factory=list, doc="Live training dashboards through the Trainer's integrations, e.g. [tensorboard]; "
        "empty: none. Offline: they write under checkpoints/<run-id>/dashboards/ (wandb offline, mlflow and "
        "trackio local) unless their own environment variables say otherwise."
    )


@dataclass
class DeepSpeedSection:
    enabled: bool = setting(False, doc="Train through DeepSpeed (implied by a multi-process launch).")
    zero_stage: int = setting(0, doc="ZeRO stage: 0 none, 1 optimizer, 2 +gradients, 3 +parameters.", low=0, high=3)
    offload_optimizer: bool = setting(False, doc="Keep optimizer state in CPU memory (ZeRO >= 1).")
    offload_params: bool = setting(False, doc="Keep parameters in CPU memory (ZeRO 3).")


class DuplicateKeyError(ConstructorError):
    """A mapping that holds the same key twice (YAML requires unique keys; PyYAML keeps the last)."""

    def __init__(self, key: Any, first: Mark, again: Mark) -> None:
        super().__init__(None, None, f"duplicate key {key!r}", again)
        self.key, self.line = key, again.line + 1
        self.first = f"line {first.line + 1}" if first.line != again.line else f"column {first.column + 1}"


class UniqueKeyLoader(yaml.SafeLoader):
    """`yaml.safe_load`'s loader, except that a mapping may not hold the same key twice.

    Merge keys (`<<: *defaults`) keep their meaning: a key given explicitly may override a merged one.
    """

    def construct_mapping(self, node: MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, Any] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # an unhashable key: SafeLoader reports it below
                continue
            if first is not key_node.start_mark:
                raise DuplicateKeyError(key, first, key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """`yaml.safe_load(text)`, rejecting a key given twice in one mapping (`DuplicateKeyError`)."""
    return yaml.load(text, Loader=UniqueKeyLoader)  # a SafeLoader subclass: safe


def read_yaml(path: Path) -> dict[str, Any]:
    """The YAML mapping in file `path`, or a one-line RecipeError naming the file.

    Rejected: a missing or unreadable file, invalid YAML and a key given twice in one mapping (both with
    the line), an empty or comment-only file (it would silently become a default run) and a top level that
    is not a mapping. An explicit `{}` is a mapping: all defaults, on purpose.
    """
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RecipeError(f"{path}: no such recipe file") from None
    except OSError as exc:  # a directory, no permission
        raise RecipeError(f"{path}: cannot read the recipe file ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise RecipeError(f"{path}: not a text file (not UTF-8)") from None
    except DuplicateKeyError as exc:
        raise RecipeError(f"{path}: line {exc.line}: duplicate key {exc.key!r} "
                          f"(first at {exc.first})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise RecipeError(f"{path}:{where} not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        raise RecipeError(f"{path}: empty recipe file (no keys, only comments or blank lines)")
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def override_label(text: str) -> str:
    """How error messages name an override (`--set train.lr=abc`) or a key one set (`--set train.lr`)."""
    return f"--set {text}"


def parse_override(text: str) -> tuple[list[str], Any]:
    """`train.lr=3e-4` -> (['train', 'lr'], 0.0003); the value is read as YAML (a plain string if it is not
    YAML, e.g. `data.paths=a:b`; a mapping with a key twice is an error)."""
    if "=" not in text:
        raise RecipeError(f"{override_label(text)}: expected KEY=VALUE, e.g. train.lr=3e-4")
    key, value = text.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"{override_label(text)}: empty key")
    try:
        parsed = load_yaml(value) if value.strip() else ""
    except DuplicateKeyError as exc:
        raise RecipeError(f"{override_label(text)}: duplicate key {exc.key!r}") from None
    except yaml.YAMLError:
        parsed = value
    return parts, parsed


def check_unique_overrides(overrides: list[str]) -> None:
    """Each key set once, a RecipeError naming the key otherwise: `train.lr=1 train.lr=2`, a section
    set after one of its keys (`train.lr=1 train={epochs: 2}` would drop the first) or a key set after a
    section that already gives it (`train={lr: 1} train.lr=2`)."""
    earlier: list[tuple[tuple[str, ...], Any, str]] = []
    for text in overrides:
        parts, value = parse_override(text)
        keys = tuple(parts)
        for before, before_value, before_text in earlier:
            if before == keys or (keys[:len(before)] == before and _has_key(before_value, keys[len(before):])):
                raise RecipeError(f"{override_label('.'.join(keys))} given twice ({before_text}, then {text}); "
                                  "give each key once")
            if len(before) > len(keys) and before[:len(keys)] == keys:
                raise RecipeError(f"{override_label(text)} replaces section {'.'.join(keys)}, dropping the earlier "
                                  f"{before_text}; give each key once")
        earlier.append((keys, value, text))


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """A copy of `raw` with each dotted override set (validated later against the schema); a key set twice
    is a RecipeError (`check_unique_overrides`)."""
    check_unique_overrides(overrides)
    result = copy.deepcopy(raw)
    for text in overrides:
        parts, value = parse_override(text)
        node = result
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise RecipeError(f"{override_label(text)}: {part!r} is not a section")
            node = child
        node[parts[-1]] = value
    return result


def _has_key(raw: Any, keys: tuple[str, ...]) -> bool:
    """Whether nested mapping `raw` holds a value at `keys`."""
    for key in keys:
        if not isinstance(raw, dict) or key not in raw:
            return False
        raw = raw[key]
    return True


def blame_overrides(exc: RecipeError, raw: dict[str, Any], overrides: list[str]) -> RecipeError:
    """`exc` (raised for `raw` with `overrides` applied) naming the override that gave the bad value.

    An override owns everything at and below its key; a key above it (a section it created) is its own
    when the file has no value there. Its error names the offending key after `--set`
    (`--set train.lr: expected float, got 'abc'`, `--set train.lrr: unknown key 'lrr'; allowed: ...`), or,
    for a check of the whole recipe, the override as given (`--set grid.lrs=[]: grid.lrs must list ...`).
    Any other error is the file's, returned unchanged.
    """
    bad = exc.path
    for text in reversed(overrides) if bad else ():  # the most specific (last applied) first
        keys = tuple(parse_override(text)[0])
        if bad[:len(keys)] == keys or (keys[:len(bad)] == bad and not _has_key(raw, bad)):
            key = (exc.key if key_path(exc.key) == bad else ".".join(bad)) if exc.key else ""
            label = override_label(key or text)
            return RecipeError(f"{label}: {exc.problem}", source=label, key=key, path=bad, problem=exc.problem)
    return exc


def build_recipe(cls: type[T], raw: dict[str, Any], source: str, overrides: list[str] | None = None) -> T:
    """Schema `cls` built from `raw` (read from `source`) with `overrides` applied.

    A bad value in the file names the file (`x.yaml: train.lr: expected float, got 'abc'`), one that an
    override gave names the override (`--set train.lr: expected float, got 'abc'`).
    """
    overrides = overrides or []
    merged = apply_overrides(raw, overrides)
    try:
        return build(cls, merged, source)
    except RecipeError as exc:
        raise blame_overrides(exc, raw, overrides) from None


def merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """`top` laid over `base`, section by section (a copy)."""
    result = copy.deepcopy(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


# Settings added after runs were first recorded, with the value every earlier run had: a recipe at that
# value hashes as if the setting did not exist, so committed run ids and GLUE cell ids stay valid.
HASH_NEUTRAL: dict[tuple[str, str], Any] = {
    ("train", "batch_order"): "length-grouped",
    ("train", "group_batches"): None,  # the Trainer's own mega-batch size
    ("train", "compile"): False,
    ("train", "adam_beta1"): 0.9,  # the Trainer's defaults
    ("train", "adam_epsilon"): 1e-8,
    ("train", "decay"): 0.2,  # read by the trapezoid schedule only
    ("train", "decay_power"): 1.0,  # read by the polynomial schedule only
    ("train", "batch_ramp"): 0.0,
    ("train", "batch_ramp_start"): 8,  # read by the ramp only
    ("train", "dropout"): -1.0,  # the model's own
    ("train", "report_to"): [],  # dashboards: the list to_dict writes; an empty one is no dashboard
}


# Values that hash as the value every earlier run had: `dataloader_workers: auto` (the default since it was
# added) as 0, the earlier default. The worker count changes no result (MLM masks are keyed by block).
HASH_ALIASES: dict[tuple[str, str], tuple[Any, Any]] = {
    ("train", "dataloader_workers"): ("auto", 0),
}


def without_hash_neutral(data: dict[str, Any]) -> dict[str, Any]:
    """`data` less the settings of HASH_NEUTRAL that hold their neutral value, HASH_ALIASES resolved."""
    out = dict(data)
    for (section, key), (value, alias) in HASH_ALIASES.items():
        if isinstance(out.get(section), dict) and out[section].get(key) == value:
            out[section] = {**out[section], key: alias}
    for (section, key), neutral in HASH_NEUTRAL.items():
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == neutral:
            out[section] = {k: v for k, v in out[section].items() if k != key}
    return out


def dict_hash(data: dict[str, Any]) -> str:
    """A short, stable hash of a (resolved) recipe: same hash, same run."""
    return hashlib.sha256(json.dumps(without_hash_neutral(data), sort_keys=True).encode()).hexdigest()[:12]


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

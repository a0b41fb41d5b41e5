"""Recipes: YAML files loaded into typed sections, dotted overrides, resolution against the registries.

A recipe file may hold any subset of the keys below; what it leaves out comes from the dataclass
defaults and then from the model's and corpus's registry entries (`resolve`). The resolved recipe is
written next to every run record and reproduces the run when fed back with `--recipe`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from zoo import paths
from zoo.errors import ZooError
from zoo.recipe.common import DeepSpeedSection, RecipeHead, TrainSection, build_recipe, dict_hash, read_yaml
from zoo.recipe.schema import RecipeError, setting, to_dict


@dataclass
class ModelSection:
    name: str = setting("bert-tiny", doc="Registry name (`zoo ls`), hub id, zoo run id or checkpoint directory.")
    init: Literal["scratch", "pretrained"] = setting(
        "scratch", doc="scratch: random weights from the registry architecture; pretrained: load weights."
    )
    config: dict[str, Any] = setting(
        factory=dict, doc="Overrides of the HF config, e.g. {num_hidden_layers: 2} (scratch only)."
    )


@dataclass
class TokenizerSection:
    name: str = setting("", doc="Mirror name (tokenizers/<name>/), hub id or directory; empty: the model's.")


@dataclass
class DataSection:
    corpus: str = setting("wikipedia", doc="Corpus registry name (`zoo ls`), or 'text' with data.paths.")
    paths: list[str] = setting(factory=list, doc="Files or globs for corpus 'text' (.txt, .gz, .xz, .jsonl).")
    block_size: int = setting(128, doc="Tokens per training block (special tokens included).", low=8, high=8192)
    validation_fraction: float = setting(
        0.01, doc="Share of documents held out for evaluation when the corpus has no validation split.",
        low=0.0, high=0.5,
    )
    max_documents: int | None = setting(None, doc="Read at most this many training documents (downsampling).", low=1)
    train_split: str = setting("train", doc="Corpus split used for training.")
    eval_split: str = setting("validation", doc="Corpus split used for evaluation (held out if absent).")


@dataclass
class ObjectiveSection:
    type: Literal["mlm", "clm", ""] = setting("", doc="mlm (BERT-style, no NSP) or clm; empty: the model's.")
    mlm_probability: float = setting(0.15, doc="Share of tokens selected for MLM prediction.", low=0.01, high=0.9)
    mask_replace_prob: float = setting(0.8, doc="Of selected tokens, share replaced by the mask token.", low=0, high=1)
    random_replace_prob: float = setting(
        0.1, doc="Of selected tokens, share replaced by a random token.", low=0, high=1
    )
    whole_word_mask: bool = setting(False, doc="Select whole words: all sub-tokens of a word are masked together.")


@dataclass
class EvalSection:
    batch_size: int = setting(64, doc="Evaluation batch size per process.", low=1)
    max_blocks: int | None = setting(2000, doc="Evaluate on at most this many blocks (null: all).", low=1)
    mask_seed: int = setting(1234, doc="Seed of the fixed MLM evaluation masks.")


@dataclass
class LMTrainSection(TrainSection):
    """`train` of pretraining and fine-tuning runs: the shared optimisation settings plus the batch-size ramp."""

    batch_ramp: float = setting(0.0, doc="Batch-size ramp: the fraction of all steps over which the micro-batch "
                                "grows linearly from `batch_ramp_start` to `batch_size` (in steps of "
                                "`batch_ramp_start`; each batch's tail is left out); 0: off.", low=0, high=1)
    batch_ramp_start: int = setting(8, doc="The ramp's first micro-batch size (at most `batch_size`).", low=1)


@dataclass
class Recipe(RecipeHead):
    kind: Literal["pretrain", "finetune"] = setting("pretrain", doc="pretrain (from scratch) or finetune.")
    model: ModelSection = setting(factory=ModelSection, doc="What to train.")
    tokenizer: TokenizerSection = setting(factory=TokenizerSection, doc="How text becomes tokens.")
    data: DataSection = setting(factory=DataSection, doc="What to train on.")
    objective: ObjectiveSection = setting(factory=ObjectiveSection, doc="Training objective.")
    train: LMTrainSection = setting(factory=LMTrainSection, doc="Optimisation.")
    deepspeed: DeepSpeedSection = setting(factory=DeepSpeedSection, doc="DeepSpeed engine settings.")
    eval: EvalSection = setting(factory=EvalSection, doc="Evaluation.")


# --------------------------------------------------------------------------- loading


def load_recipe(raw: dict[str, Any], source: str, overrides: list[str] | None = None) -> Recipe:
    """A validated Recipe from a raw mapping read from `source` (a file) with `overrides` applied.

    A bad key of the mapping names `source` (`x.yaml: train.lr: expected float, got 'abc'`), a bad key an
    override gave names the override (`--set train.lr: expected float, got 'abc'`).
    """
    return build_recipe(Recipe, raw, source, overrides)


def recipe_file(kind: str, model: str, corpus: str) -> Path | None:
    """The shipped recipe `recipes/<kind>/<model>-<corpus>.yaml`, if there is one."""
    candidate = paths.recipes_dir() / kind / f"{model}-{corpus}.yaml"
    return candidate if candidate.is_file() else None


def compose(kind: str, model: str, corpus: str, overrides: list[str] | None = None) -> tuple[Recipe, str]:
    """The recipe for `zoo <kind> MODEL CORPUS`: the shipped file if any, else registry defaults; and the
    source errors name (the file, or `<kind MODEL CORPUS>`)."""
    path = recipe_file(kind, model, corpus)
    if path is not None:
        raw = read_yaml(path)
        source = str(path)
    else:
        raw = {"kind": kind, "model": {"name": model}, "data": {"corpus": corpus}}
        if kind == "finetune":
            raw["model"]["init"] = "pretrained"
        source = f"<{kind} {model} {corpus}>"
    named = _pin(raw, "model", "name", model, source), _pin(raw, "data", "corpus", corpus, source)
    if named != (model, corpus):
        raise RecipeError(f"{source}: recipe is for {named[0]} on {named[1]}")
    return load_recipe(raw, source, overrides), source


def _pin(raw: dict[str, Any], section: str, key: str, value: str, source: str) -> Any:
    """`raw[section][key]`, set to `value` when the file leaves it out."""
    node = raw.setdefault(section, {})
    if not isinstance(node, dict):
        raise RecipeError.at(source, section, f"expected a mapping, got {node!r}")
    return node.setdefault(key, value)


def resolve(recipe: Recipe) -> Recipe:
    """Fill every blank from the registries so the saved recipe is fully explicit."""
    from zoo.data.corpora import get_corpus
    from zoo.model.registry import find_model_spec

    resolved = copy.deepcopy(recipe)
    spec = find_model_spec(resolved.model.name)
    if resolved.data.corpus != "text":
        get_corpus(resolved.data.corpus)  # unknown corpus: clear error now, before any work
    elif not resolved.data.paths:
        raise RecipeError("data.paths: corpus 'text' needs at least one file or glob")
    if spec is None and resolved.model.init == "scratch":
        raise ZooError(f"model {resolved.model.name!r} is not in the registry; scratch needs a registry model")
    if spec is None:
        _resolve_from_checkpoint(resolved)
    if not resolved.tokenizer.name:
        resolved.tokenizer.name = spec.tokenizer if spec else resolved.model.name
    if not resolved.objective.type:
        if spec is None:
            raise RecipeError("objective.type: must be set (mlm or clm) for a model outside the registry")
        resolved.objective.type = spec.objective
    if not resolved.name:
        resolved.name = f"{resolved.model.name.rstrip('/').split('/')[-1]}-{resolved.data.corpus}"
    o = resolved.objective
    if o.mask_replace_prob + o.random_replace_prob > 1:
        raise RecipeError("objective: mask_replace_prob + random_replace_prob must be <= 1")
    t = resolved.train
    if t.batch_ramp and t.batch_ramp_start > t.batch_size:
        raise RecipeError(f"train.batch_ramp_start={t.batch_ramp_start} exceeds train.batch_size={t.batch_size}")
    _check_block_size(resolved)
    return resolved


def _check_block_size(recipe: Recipe) -> None:
    """A block must fit the model's position table (else training fails late, with a tensor-size error)."""
    from zoo.model.resolve import model_config, position_limit

    limit = position_limit(model_config(recipe.model.name, recipe.model.init == "scratch", recipe.model.config))
    if limit is not None and recipe.data.block_size > limit:
        raise RecipeError(f"data.block_size={recipe.data.block_size} exceeds the {limit} positions of model "
                          f"{recipe.model.name!r}; lower data.block_size")


def _resolve_from_checkpoint(recipe: Recipe) -> None:
    """A zoo run id, checkpoint directory or hub id: take its tokenizer and objective from what it saved."""
    from zoo.model.resolve import resolve_model

    ref = resolve_model(recipe.model.name)
    if not recipe.tokenizer.name and ref.has_own_tokenizer:
        recipe.tokenizer.name = recipe.model.name
    if not recipe.objective.type:
        recipe.objective.type = ref.objective or ""


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return to_dict(recipe)


def recipe_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_dict(recipe), sort_keys=False)


def recipe_hash(recipe: Recipe) -> str:
    """A short, stable hash of a resolved recipe: same hash, same run."""
    return dict_hash(recipe_dict(recipe))

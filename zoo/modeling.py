"""Build the model a recipe names: from the registry's config (scratch) or from a checkpoint."""

from __future__ import annotations

from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, PreTrainedModel

from zoo.errors import ZooError
from zoo.models import find_model_spec, pretrained_source
from zoo.recipe import Recipe


def scratch_config(recipe: Recipe, vocab_size: int, tokenizer: Any) -> Any:
    """HF config from the registry architecture plus recipe overrides, sized to the tokenizer."""
    spec = find_model_spec(recipe.model.name)
    if spec is None:
        raise ZooError(f"model {recipe.model.name!r} is not in the registry; cannot build it from scratch")
    settings = {**spec.config, **recipe.model.config, "vocab_size": vocab_size}
    if spec.family == "gpt2":
        settings.setdefault("bos_token_id", tokenizer.bos_token_id)
        settings.setdefault("eos_token_id", tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None and spec.family != "gpt2":
        settings.setdefault("pad_token_id", tokenizer.pad_token_id)
    try:
        return AutoConfig.for_model(spec.family, **settings)
    except (TypeError, ValueError) as exc:
        raise ZooError(f"model.config: {exc}") from None


def build_model(recipe: Recipe, tokenizer: Any) -> PreTrainedModel:
    """The model to train: MLM or CLM head, from scratch or pretrained weights."""
    auto = AutoModelForMaskedLM if recipe.objective.type == "mlm" else AutoModelForCausalLM
    if recipe.model.init == "scratch":
        return auto.from_config(scratch_config(recipe, len(tokenizer), tokenizer))
    source = pretrained_source(recipe.model.name)
    try:
        model = auto.from_pretrained(source, **recipe.model.config)
    except (OSError, ValueError) as exc:
        raise ZooError(f"model {recipe.model.name!r} could not be loaded from {source}: {exc}") from None
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model

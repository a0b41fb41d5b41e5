"""Build the model a recipe names: from the registry's config (scratch) or from a checkpoint."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertForMaskedLM,
    DistilBertForMaskedLM,
    PreTrainedModel,
    RobertaForMaskedLM,
)
from transformers.modeling_outputs import MaskedLMOutput

from zoo.errors import ZooError
from zoo.models import find_model_spec, pretrained_source
from zoo.recipe import Recipe


# --------------------------------------------------------------------------- sparse MLM prediction
# An MLM loss only needs the vocabulary projection at the ~15% masked positions. The classes below
# gather those positions before the prediction head, which removes most of the compute of small
# models (the 30k-way projection dominates BERT-Tiny). Parameters, names and checkpoints are exactly
# those of the standard class; without labels, the standard dense forward runs.


def _base_and_head(model: PreTrainedModel) -> tuple[torch.nn.Module, Any]:
    if isinstance(model, BertForMaskedLM):
        return model.bert, model.cls.predictions
    if isinstance(model, RobertaForMaskedLM):
        return model.roberta, model.lm_head
    if isinstance(model, DistilBertForMaskedLM):
        def distilbert_head(hidden: torch.Tensor) -> torch.Tensor:
            hidden = model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))
            return model.vocab_projector(hidden)

        return model.distilbert, distilbert_head
    raise TypeError(f"no sparse MLM head for {type(model).__name__}")


def sparse_mlm_forward(model: PreTrainedModel, labels: torch.Tensor, **inputs: Any) -> MaskedLMOutput:
    """Encoder over all positions, prediction head and loss only where labels != -100."""
    base, head = _base_and_head(model)
    hidden = base(**inputs, return_dict=True).last_hidden_state
    selected = labels != -100
    logits = head(hidden[selected])
    loss = F.cross_entropy(logits.float(), labels[selected]) if logits.numel() else hidden.sum() * 0.0
    return MaskedLMOutput(loss=loss, logits=logits)


def _sparse_class(dense: type[PreTrainedModel]) -> type[PreTrainedModel]:
    def forward(self: PreTrainedModel, input_ids: Any = None, labels: Any = None, **inputs: Any) -> Any:
        if labels is None:
            return dense.forward(self, input_ids=input_ids, **inputs)
        inputs = {k: v for k, v in inputs.items() if v is not None and k != "return_dict"}
        return sparse_mlm_forward(self, labels, input_ids=input_ids, **inputs)

    # Same class name as the parent: save_pretrained records it in config.architectures, so checkpoints
    # stay plain `BertForMaskedLM` (etc.) directories for any HF user.
    return type(dense.__name__, (dense,), {"forward": forward, "__module__": __name__,
                                           "__doc__": f"{dense.__name__} with sparse MLM prediction."})


SPARSE_MLM = {cls.config_class.model_type: _sparse_class(cls)
              for cls in (BertForMaskedLM, RobertaForMaskedLM, DistilBertForMaskedLM)}


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
    except Exception as exc:  # HF config validation raises several exception types
        raise ZooError(f"model.config: {' '.join(str(exc).split())}") from None


def _model_class(auto: Any, model_type: str) -> Any:
    """The sparse-MLM class where one exists for an MLM model, else the Auto class."""
    if auto is AutoModelForMaskedLM and model_type in SPARSE_MLM:
        return SPARSE_MLM[model_type]
    return auto


def build_model(recipe: Recipe, tokenizer: Any) -> PreTrainedModel:
    """The model to train: MLM or CLM head, from scratch or pretrained weights."""
    auto: Any = AutoModelForMaskedLM if recipe.objective.type == "mlm" else AutoModelForCausalLM
    if recipe.model.init == "scratch":
        config = scratch_config(recipe, len(tokenizer), tokenizer)
        cls = _model_class(auto, config.model_type)
        return cls.from_config(config) if cls is auto else cls(config)
    source = pretrained_source(recipe.model.name)
    try:
        config = AutoConfig.from_pretrained(source, **recipe.model.config)
        model = _model_class(auto, config.model_type).from_pretrained(source, config=config)
    except (OSError, ValueError) as exc:
        raise ZooError(f"model {recipe.model.name!r} could not be loaded from {source}: {exc}") from None
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model

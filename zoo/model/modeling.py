"""Build the model a recipe names: from the registry's config (scratch) or from a checkpoint.

The classes built for training are the standard HF ones with a faster loss (same value, same
gradients, same checkpoints): MLM models predict only the masked positions (SPARSE_MLM), and the
vocabulary projection and cross-entropy are fused into one chunked pass (`zoo.model.fused_loss`, a
custom op that torch.compile leaves whole), for MLM and CLM (FUSED_CLM) alike. benchmarks/README.md has
the measurements behind each choice.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertForMaskedLM,
    DistilBertForMaskedLM,
    GPT2LMHeadModel,
    PreTrainedModel,
    RobertaForMaskedLM,
)
from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions, MaskedLMOutput
from transformers.models.roberta.modeling_roberta import gelu as roberta_gelu

from zoo.errors import ZooError
from zoo.model.fused_loss import linear_cross_entropy
from zoo.model.loading import load_config, load_pretrained
from zoo.model.registry import find_model_spec
from zoo.model.resolve import resolve_model
from zoo.recipe.lm import Recipe

# --------------------------------------------------------------------------- sparse MLM prediction
# An MLM loss only needs the vocabulary projection at the ~15% masked positions. The classes below
# gather those positions before the prediction head, which removes most of the compute of small
# models (the 30k-way projection dominates BERT-Tiny). Parameters, names and checkpoints are exactly
# those of the standard class; without labels, the standard dense forward runs.


def _prediction_head(model: PreTrainedModel) -> tuple[torch.nn.Module, Callable[[torch.Tensor], torch.Tensor],
                                                       torch.nn.Linear]:
    """(encoder, transform before the vocabulary projection, the projection) of an MLM model."""
    if isinstance(model, BertForMaskedLM):
        return model.bert, model.cls.predictions.transform, model.cls.predictions.decoder
    if isinstance(model, RobertaForMaskedLM):
        head = model.lm_head
        return model.roberta, lambda x: head.layer_norm(roberta_gelu(head.dense(x))), head.decoder
    if isinstance(model, DistilBertForMaskedLM):
        def distilbert_transform(hidden: torch.Tensor) -> torch.Tensor:
            return model.vocab_layer_norm(model.activation(model.vocab_transform(hidden)))

        return model.distilbert, distilbert_transform, model.vocab_projector
    raise TypeError(f"no sparse MLM head for {type(model).__name__}")


def _fused_loss_applies(decoder: torch.nn.Linear) -> bool:
    """The fused loss is used on float32 weights, with or without autocast (whose dtype its products then take).

    Not under DeepSpeed ZeRO-3, whose partitioned parameters (`ds_id`) are gathered by the hooks of
    the module that owns them: the fused loss reads the decoder's weights without calling it.
    """
    weight = decoder.weight
    return weight.dtype == torch.float32 and not hasattr(weight, "ds_id")


def sparse_mlm_forward(model: PreTrainedModel, labels: torch.Tensor, **inputs: Any) -> MaskedLMOutput:
    """Encoder over all positions, prediction head and loss only where labels != -100.

    With float32 weights the loss is fused with the vocabulary projection (`linear_cross_entropy`) and no
    logits are returned; otherwise the logits of the selected positions are.
    """
    base, transform, decoder = _prediction_head(model)
    hidden = base(**inputs, return_dict=True).last_hidden_state
    selected = labels != -100
    if not bool(selected.any()):
        return MaskedLMOutput(loss=hidden.sum() * 0.0, logits=hidden.new_zeros(0, decoder.out_features))
    hidden = transform(hidden[selected])
    if _fused_loss_applies(decoder):
        loss = linear_cross_entropy(hidden, decoder.weight, decoder.bias, labels[selected])
        return MaskedLMOutput(loss=loss)
    logits = decoder(hidden)
    return MaskedLMOutput(loss=F.cross_entropy(logits.float(), labels[selected]), logits=logits)


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


# --------------------------------------------------------------------------- fused CLM loss
# A causal LM predicts every position, so nothing can be skipped; the fused loss still saves the
# passes over (and the page faults of) the (tokens x vocabulary) logits and their gradient.

_CLM_INPUTS = {"attention_mask", "position_ids", "token_type_ids"}


def fused_clm_forward(model: PreTrainedModel, input_ids: torch.Tensor, labels: torch.Tensor,
                      **inputs: Any) -> CausalLMOutputWithCrossAttentions:
    """Next-token loss (mean over labels != -100 after the shift, as HF's) through `linear_cross_entropy`."""
    hidden = model.transformer(input_ids=input_ids, use_cache=False, return_dict=True, **inputs).last_hidden_state
    targets = labels[:, 1:]
    selected = targets != -100
    if not bool(selected.any()):
        empty = hidden.new_zeros(0, model.lm_head.out_features)
        return CausalLMOutputWithCrossAttentions(loss=hidden.sum() * 0.0, logits=empty)
    head = model.lm_head
    loss = linear_cross_entropy(hidden[:, :-1][selected], head.weight, head.bias, targets[selected])
    return CausalLMOutputWithCrossAttentions(loss=loss)


def _fused_clm_class(dense: type[PreTrainedModel]) -> type[PreTrainedModel]:
    def forward(self: PreTrainedModel, input_ids: Any = None, labels: Any = None, **inputs: Any) -> Any:
        inputs = {k: v for k, v in inputs.items() if v is not None and k != "return_dict"}
        if labels is None or input_ids is None or not set(inputs) <= _CLM_INPUTS or not _fused_loss_applies(
                self.lm_head):
            return dense.forward(self, input_ids=input_ids, labels=labels, **inputs)
        return fused_clm_forward(self, input_ids, labels, **inputs)

    # the parent's name, as for SPARSE_MLM: checkpoints stay plain `GPT2LMHeadModel` directories
    return type(dense.__name__, (dense,), {"forward": forward, "__module__": __name__,
                                           "__doc__": f"{dense.__name__} with a fused next-token loss."})


FUSED_CLM = {cls.config_class.model_type: _fused_clm_class(cls) for cls in (GPT2LMHeadModel,)}


def _check_config_keys(family: str, overrides: dict[str, Any]) -> None:
    """Unknown keys would be kept silently by HF configs (e.g. YAML's `{n_layer:1}` is the key 'n_layer:1')."""
    known = AutoConfig.for_model(family)
    unknown = sorted(k for k in overrides if not hasattr(known, k))
    if unknown:
        raise ZooError(f"model.config: {family} has no setting {unknown[0]!r} (in YAML write `key: value`, "
                       "with a space after the colon)")


def scratch_config(recipe: Recipe, vocab_size: int, tokenizer: Any) -> Any:
    """HF config from the registry architecture plus recipe overrides, sized to the tokenizer."""
    spec = find_model_spec(recipe.model.name)
    if spec is None:
        raise ZooError(f"model {recipe.model.name!r} is not in the registry; cannot build it from scratch")
    _check_config_keys(spec.family, recipe.model.config)
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
    """The sparse-MLM or fused-CLM class where one exists for the model type, else the Auto class."""
    fast = SPARSE_MLM if auto is AutoModelForMaskedLM else FUSED_CLM
    return fast.get(model_type, auto)


def build_model(recipe: Recipe, tokenizer: Any) -> PreTrainedModel:
    """The model to train: MLM or CLM head, from scratch or pretrained weights."""
    auto: Any = AutoModelForMaskedLM if recipe.objective.type == "mlm" else AutoModelForCausalLM
    if recipe.model.init == "scratch":
        config = scratch_config(recipe, len(tokenizer), tokenizer)
        cls = _model_class(auto, config.model_type)
        model = cls.from_config(config) if cls is auto else cls(config)
    else:
        ref = resolve_model(recipe.model.name)
        config = load_config(ref, **recipe.model.config)
        model = load_pretrained(_model_class(auto, config.model_type), ref, config=config)
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
    return with_training_dropout(model, recipe.train.dropout)


def with_training_dropout(model: torch.nn.Module, probability: float) -> Any:
    """`model` with every dropout layer at `probability` (negative: as built). Only the layers change, not the
    config, so the saved checkpoint keeps the architecture's own dropout for whoever fine-tunes it; HF attention
    reads its probability from the layer (`self.dropout.p`), so scaled-dot-product attention follows too."""
    if probability >= 0:
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = probability
    return model

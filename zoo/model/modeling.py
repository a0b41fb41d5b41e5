"""Build the model a recipe names: from the registry's config (scratch) or from a checkpoint.

The classes built for training are the standard HF ones with a faster loss (same value, same
gradients, same checkpoints): MLM models predict only the masked positions (SPARSE_MLM), and the
vocabulary projection and cross-entropy are fused into one chunked pass (LinearCrossEntropy), for
MLM and CLM (FUSED_CLM) alike. benchmarks/README.md has the measurements behind each choice.
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


# Logits are computed in chunks of rows whose buffer holds at most this many floats (256 MiB), so the
# memory of the loss is bounded whatever the batch (a GPT-2 eval batch of 128 x 1024 tokens would need
# 26 GB of logits at once); BERT's masked positions of a 64 x 128 batch fit in one chunk.
CHUNK_ELEMENTS = 2**26


class _Workspace:
    """One reusable float32 buffer for the logits chunk of the fused loss.

    A fresh 100+ MB tensor is a fresh mmap whose pages the kernel faults in and zeroes on every step,
    which on CPU costs about as much as the softmax itself. The buffer is lent by `take` and handed back
    by `give`; a caller that finds it lent (nested use) allocates its own.
    """

    def __init__(self) -> None:
        self.free: torch.Tensor | None = None

    def take(self, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        buffer, self.free = self.free, None
        if buffer is None or buffer.numel() < rows * cols or buffer.device != like.device:
            buffer = torch.empty(min(int(rows * 1.25), max(rows, CHUNK_ELEMENTS // cols)) * cols,
                                 dtype=torch.float32, device=like.device)
        return buffer[: rows * cols].view(rows, cols)

    def give(self, logits: torch.Tensor) -> None:
        self.free = logits._base if logits._base is not None else logits


_WORKSPACE = _Workspace()


def _with_bias_column(hidden: torch.Tensor, weight: torch.Tensor,
                      bias: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The bias as an extra input column of ones and weight column: the matrix product adds it for free."""
    if bias is None:
        return hidden, weight
    return (torch.cat([hidden, hidden.new_ones(hidden.shape[0], 1)], dim=1),
            torch.cat([weight, bias[:, None]], dim=1))


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, target: torch.Tensor,
                           on_chunk: Callable[[slice, torch.Tensor, torch.Tensor], None] | None = None) -> torch.Tensor:
    """Summed cross-entropy of `hidden @ weight.T` rows; `on_chunk(rows, exp, sums)` sees each chunk's
    unnormalised softmax exp(logits - max) and its row sums before the buffer is reused."""
    vocab = weight.shape[0]
    step = max(1, CHUNK_ELEMENTS // vocab)
    buffer = _WORKSPACE.take(min(step, hidden.shape[0]), vocab, hidden)
    total = hidden.new_zeros((), dtype=torch.float64)
    for start in range(0, hidden.shape[0], step):
        rows = slice(start, start + step)
        exp = torch.mm(hidden[rows], weight.t(), out=buffer[: len(target[rows])])
        target_logit = exp.gather(1, target[rows, None]).squeeze(1)
        shift = exp.amax(dim=1, keepdim=True)
        sums = exp.sub_(shift).exp_().sum(dim=1)
        total += (sums.log() + shift.squeeze(1) - target_logit).sum()
        if on_chunk is not None:
            on_chunk(rows, exp, sums)
    _WORKSPACE.give(buffer)
    return total


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `hidden @ weight.T + bias` against `target`, with its gradients computed
    in the forward pass, chunk by chunk, so the (rows x vocabulary) logits never exist whole.

    Same value and gradients as `F.cross_entropy(F.linear(hidden, weight, bias), target)` (float
    tolerance), with fewer passes over the logits, which dominate a small LM's step: the bias rides in
    the matrix product, the softmax is left unnormalised, and the 1/sum and one-hot terms are applied
    to the small (rows x hidden) operands instead of the logits. Use `linear_cross_entropy`, which
    skips the gradient work when no gradient is wanted.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                target: torch.Tensor) -> torch.Tensor:
        width = hidden.shape[1]
        hidden1, weight1 = _with_bias_column(hidden, weight, bias)
        grad_hidden = torch.empty_like(hidden)
        grad_weight_t = hidden1.new_zeros(hidden1.shape[1], weight1.shape[0])  # (width [+ bias], vocab)

        def accumulate(rows: slice, exp: torch.Tensor, sums: torch.Tensor) -> None:
            # d loss_sum / d logits = exp / sums - onehot(target), never formed: folded into the products
            torch.mm(exp, weight1[:, :width], out=grad_hidden[rows])
            grad_hidden[rows].div_(sums[:, None])
            grad_weight_t.addmm_((hidden1[rows] / sums[:, None]).t(), exp)

        loss = _chunked_cross_entropy(hidden1, weight1, target, accumulate)
        grad_hidden.sub_(weight1[target, :width])
        grad_weight = grad_weight_t.t()
        grad_weight.index_add_(0, target, hidden1, alpha=-1.0)
        ctx.save_for_backward(grad_hidden, grad_weight)
        ctx.has_bias, ctx.width, ctx.rows = bias is not None, width, hidden.shape[0]
        return (loss / hidden.shape[0]).to(hidden.dtype)

    @staticmethod
    def backward(ctx: Any, grad_loss: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        grad_hidden, grad_weight = ctx.saved_tensors
        scale = grad_loss / ctx.rows
        weight_part = grad_weight[:, : ctx.width]
        grad_bias = grad_weight[:, ctx.width] * scale if ctx.has_bias else None
        grad_weight = torch.mul(weight_part, scale, out=weight_part.new_empty(weight_part.shape))  # contiguous
        return grad_hidden * scale, grad_weight, grad_bias, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         target: torch.Tensor) -> torch.Tensor:
    """`F.cross_entropy(F.linear(hidden, weight, bias), target)`, fused (see LinearCrossEntropy)."""
    wants_grad = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (hidden, weight, bias))
    if wants_grad:
        return LinearCrossEntropy.apply(hidden, weight, bias, target)
    hidden1, weight1 = _with_bias_column(hidden, weight, bias)
    return (_chunked_cross_entropy(hidden1, weight1, target) / hidden.shape[0]).to(hidden.dtype)


def _fused_loss_applies(decoder: torch.nn.Linear) -> bool:
    """The fused loss is used in float32 without autocast (the CPU default), where it was measured.

    Not under DeepSpeed ZeRO-3, whose partitioned parameters (`ds_id`) are gathered by the hooks of
    the module that owns them: the fused loss reads the decoder's weights without calling it.
    """
    weight = decoder.weight
    return (weight.dtype == torch.float32 and not torch.is_autocast_enabled(weight.device.type)
            and not hasattr(weight, "ds_id"))


def sparse_mlm_forward(model: PreTrainedModel, labels: torch.Tensor, **inputs: Any) -> MaskedLMOutput:
    """Encoder over all positions, prediction head and loss only where labels != -100.

    In float32 the loss is fused with the vocabulary projection (LinearCrossEntropy) and no logits
    are returned; otherwise the logits of the selected positions are.
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
    """Next-token loss (mean over labels != -100 after the shift, as HF's) through LinearCrossEntropy."""
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
        return cls.from_config(config) if cls is auto else cls(config)
    ref = resolve_model(recipe.model.name)
    config = load_config(ref, **recipe.model.config)
    model = load_pretrained(_model_class(auto, config.model_type), ref, config=config)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    return model

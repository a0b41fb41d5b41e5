"""Exact first-token last layer: a sequence classifier's last encoder layer computed at position 0 only.

BERT's classifier reads the last layer at one position, the first ([CLS]: the pooler; RoBERTa's head
takes `<s>` the same way). At every other position the last layer's query, attention output, feed-forward
and layer norms feed nothing: no logit, no loss, no gradient. Its keys and values still come from every
position. A last layer that computes position 0 alone therefore gives the same logits and the same
gradients (up to the order of floating-point sums in products of other shapes), for about 5/6 of that
layer's work less: in bert-tiny's two layers, about 40% of the encoder's compute per token.

Dropout stays the standard path's bit for bit: each of the layer's three dropouts draws the mask of the
full shape, as the standard layer would, and applies its first row, so the random stream (and with it
every later mask and batch) is unchanged. The attention dropout is the math path's (weights x mask),
which is what scaled-dot-product attention runs on CPU; a CUDA kernel's fused attention dropout draws
differently, so there the last layer's attention mask is a fresh draw of the same distribution.

The layer keeps its class's parameters and names (its class becomes a subclass), so checkpoints and
state dicts are those of the standard model.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertForSequenceClassification, RobertaForSequenceClassification
from transformers.models.bert.modeling_bert import BertLayer
from transformers.models.roberta.modeling_roberta import RobertaLayer

# Classifiers whose head reads the last hidden state at position 0 only, and where their layers live.
FIRST_TOKEN_CLASSIFIERS: dict[type, str] = {
    BertForSequenceClassification: "bert",
    RobertaForSequenceClassification: "roberta",
}


def dropout_first_row(x: torch.Tensor, full_shape: torch.Size, dim: int, p: float, training: bool) -> torch.Tensor:
    """`x`, the first row (along `dim`) of a tensor of `full_shape`, times that row of the dropout mask the
    full tensor would get: the same random draws as `F.dropout` on the full tensor."""
    if not training or p == 0.0:
        return x
    mask = F.dropout(x.new_ones(full_shape), p, training=True)  # the mask, already scaled by 1 / (1 - p)
    return x * mask.narrow(dim, 0, 1)


def first_query_attention(layer: nn.Module, hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Self-attention of position 0 over all positions: (batch, 1, hidden)."""
    attention = layer.attention.self
    batch, length, _ = hidden.shape
    heads, size = attention.num_attention_heads, attention.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(batch, x.shape[1], heads, size).transpose(1, 2)

    query = split(attention.query(hidden[:, :1]))
    key, value = split(attention.key(hidden)), split(attention.value(hidden))
    mask = None if attention_mask is None else attention_mask[:, :, :1]
    p = attention.dropout.p if attention.training else 0.0
    if p == 0.0:
        context = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, scale=attention.scaling)
    else:
        scores = (query @ key.transpose(2, 3)) * attention.scaling
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
        weights = dropout_first_row(scores.softmax(-1), torch.Size((batch, heads, length, length)), 2, p, True)
        context = weights @ value
    return context.transpose(1, 2).reshape(batch, 1, heads * size)


def residual_block(block: nn.Module, x: torch.Tensor, residual: torch.Tensor, full_shape: torch.Size) -> torch.Tensor:
    """BertSelfOutput / BertOutput at position 0: dense, dropout (the full tensor's draws), norm of x + residual."""
    x = dropout_first_row(block.dense(x), full_shape, 1, block.dropout.p, block.training)
    return block.LayerNorm(x + residual)


class FirstTokenLayer:
    """Mixed into a BertLayer-shaped class: its forward returns position 0's output only, (batch, 1, hidden)."""

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> torch.Tensor:
        first = hidden_states[:, :1]
        attended = residual_block(self.attention.output, first_query_attention(self, hidden_states, attention_mask),
                                  first, hidden_states.shape)
        return residual_block(self.output, self.intermediate(attended), attended, hidden_states.shape)


def _first_token_class(layer_class: type) -> type:
    return type(layer_class.__name__, (FirstTokenLayer, layer_class), {"__module__": __name__})


FIRST_TOKEN_LAYERS = {cls: _first_token_class(cls) for cls in (BertLayer, RobertaLayer)}


def last_layer(model: nn.Module) -> nn.Module | None:
    """The last encoder layer of a classifier that reads position 0 only, where its layers are the
    standard self-attention kind (no cross-attention, no chunked feed-forward); else None."""
    base = FIRST_TOKEN_CLASSIFIERS.get(type(model))
    if base is None:
        return None
    layer = getattr(model, base).encoder.layer[-1]
    plain = (type(layer) in FIRST_TOKEN_LAYERS and not layer.is_decoder and not layer.add_cross_attention
             and not layer.chunk_size_feed_forward)
    return layer if plain else None


def compute_last_layer_at_first_token(model: nn.Module) -> bool:
    """Make `model`'s last layer compute position 0 only, where that is exact; returns whether it did."""
    layer = last_layer(model)
    if layer is None:
        return False
    layer.__class__ = FIRST_TOKEN_LAYERS[type(layer)]
    return True

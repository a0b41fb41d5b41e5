"""Exact vocabulary pruning: a GLUE cell trains only the embedding rows its task's text looks up.

Most of a small BERT is its word-embedding matrix (bert-tiny: 30,522 x 128, 89% of its parameters), and
every optimizer step pays for all of it: the dense gradient, clipping, and AdamW reading and writing
weights, gradient and both moments. A cell only ever looks up the tokens of its own train, dev and
test examples (RTE: about 13.6k ids). Every other row gets a zero gradient, so its Adam moments stay
zero and its update is zero; AdamW's decoupled weight decay shrinks it, but it never meets a
prediction. A model whose embedding holds just the used rows, fed remapped ids, therefore computes
the same losses, predictions and metrics (up to the order of floating-point sums in the gradient norm).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.compute as pc
import torch


@dataclass
class PrunedVocabulary:
    """The kept token ids (sorted) and the lookup from a full-vocabulary id to its kept row."""

    kept: torch.Tensor
    lookup: torch.Tensor
    full_size: int

    def remap(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.lookup[input_ids]


def used_token_ids(datasets: Iterable[Any]) -> np.ndarray:
    """The sorted distinct `input_ids` of tokenized (arrow) datasets."""
    found = [np.zeros(0, dtype=np.int64)]
    for dataset in datasets:
        column = dataset.with_format("arrow")["input_ids"]  # the selected rows, no per-row Python objects
        found.append(pc.unique(pc.list_flatten(column)).to_numpy().astype(np.int64))
    return np.unique(np.concatenate(found))


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def special_token_ids(config: Any) -> dict[str, int | list[int]]:
    """The config's `*_token_id` ids (pad, eos: one id or a list): some heads compare input ids with them."""
    return {name: value for name, value in vars(config).items() if name.endswith("_token_id") and (
        _is_id(value) or (isinstance(value, list) and value and all(map(_is_id, value))))}


def prunable(model: torch.nn.Module) -> bool:
    """An input embedding that is not tied to an output layer (a classifier has none)."""
    return isinstance(model.get_input_embeddings(), torch.nn.Embedding) and model.get_output_embeddings() is None


def prune_input_embeddings(model: torch.nn.Module, used: np.ndarray) -> PrunedVocabulary:
    """Replace `model`'s input embedding by its rows `used` (plus the config's special tokens), and
    the config's special token ids by their rows; returns the id remapping."""
    full = model.get_input_embeddings()
    specials = special_token_ids(model.config)
    size = full.num_embeddings
    declared = [i for value in specials.values() for i in (value if isinstance(value, list) else [value])]
    used = np.union1d(used, [i for i in declared if 0 <= i < size]).astype(np.int64)
    if used.size and (used.min() < 0 or used.max() >= size):
        raise ValueError(f"token ids outside the model's vocabulary of {size}: {used.min()}..{used.max()}")
    if full.padding_idx is not None:  # the padding row never learns; it must stay the padding row
        used = np.union1d(used, [full.padding_idx])
    kept = torch.as_tensor(used, dtype=torch.long)
    # An id the cell never declared maps past the table, so a lookup of it fails loudly.
    lookup = torch.full((size,), len(kept), dtype=torch.long)
    lookup[kept] = torch.arange(len(kept))
    padding = None if full.padding_idx is None else int(lookup[full.padding_idx])
    # from_pretrained draws no random numbers: the RNG stream (batch order, dropout) stays the full model's
    pruned = torch.nn.Embedding.from_pretrained(
        full.weight.detach()[kept.to(full.weight.device)].clone(), freeze=not full.weight.requires_grad,
        padding_idx=padding, max_norm=full.max_norm, norm_type=full.norm_type,
        scale_grad_by_freq=full.scale_grad_by_freq, sparse=full.sparse)
    model.set_input_embeddings(pruned)
    for name, value in specials.items():
        ids = [int(lookup[i]) if 0 <= i < size else i for i in (value if isinstance(value, list) else [value])]
        setattr(model.config, name, ids if isinstance(value, list) else ids[0])
    return PrunedVocabulary(kept=kept, lookup=lookup, full_size=size)


def remapping_collator(collate: Callable[[list[dict]], dict[str, torch.Tensor]],
                       vocabulary: PrunedVocabulary) -> Callable[[list[dict]], dict[str, torch.Tensor]]:
    """`collate`, with the batch's `input_ids` mapped to the pruned embedding's rows."""

    def remapped(features: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate(features)
        batch["input_ids"] = vocabulary.remap(batch["input_ids"])
        return batch

    return remapped

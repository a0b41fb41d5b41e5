"""The order of a GLUE cell's training batches (`train.batch_order`).

- `length-grouped`: the Trainer's `LengthGroupedSampler`. It cuts a random permutation into mega-batches
  of up to 50 batches, sorts each longest first, and starts with the mega-batch holding the longest
  example. Batches pad little (1.03 padded tokens per real token on MRPC), but each mega-batch runs
  from long to short examples, a curriculum the standard recipe does not have.
- `shuffled-groups`: exactly those batches, in a random order: the same padding, no curriculum.
- `random`: the Trainer's `RandomSampler`, the standard recipe (1.5-2 padded tokens per real token).

Every sampler yields the order of one whole optimizer step over all ranks at a time (`step_size`
examples); accelerate cuts each step into the ranks' slices.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

BATCH_ORDERS = ("length-grouped", "shuffled-groups", "random")


class ShuffledGroupsSampler(LengthGroupedSampler):
    """The batches of `LengthGroupedSampler` in a random order; a last, shorter batch stays last, so
    every other batch keeps its examples when the DataLoader cuts the order into batches."""

    def __iter__(self) -> Iterator[int]:
        order = get_length_grouped_indices(self.lengths, self.batch_size, generator=self.generator)
        full = len(order) // self.batch_size
        shuffled = torch.randperm(full, generator=self.generator).tolist()
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in shuffled]
        return iter([i for batch in batches for i in batch] + order[full * self.batch_size:])


def train_sampler(batch_order: str, lengths: list[int], step_size: int) -> torch.utils.data.Sampler:
    """The sampler of `batch_order` over examples of `lengths` tokens, in steps of `step_size` examples."""
    if batch_order == "length-grouped":
        return LengthGroupedSampler(step_size, lengths=lengths)
    if batch_order == "shuffled-groups":
        return ShuffledGroupsSampler(step_size, lengths=lengths)
    if batch_order == "random":
        return torch.utils.data.RandomSampler(range(len(lengths)))
    raise ValueError(f"unknown batch order {batch_order!r} (known: {', '.join(BATCH_ORDERS)})")

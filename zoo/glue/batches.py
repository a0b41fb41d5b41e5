"""The order of a GLUE cell's training batches (`train.batch_order`).

- `length-grouped`: the Trainer's `LengthGroupedSampler`. It cuts a random permutation into mega-batches
  of `group_batches` batches, sorts each longest first, and starts with the mega-batch holding the
  longest example. Batches of like-length examples pad little, but a batch drawn from a big mega-batch is
  far from a random sample of the data: on full MRPC the Trainer's own size (N / (4 x batch), at most 50:
  28 batches) pads 1.03 tokens per real token and costs 3.0 dev points against random batches, while
  zoo's default of 4 batches pads 1.13-1.16 and trains to the plain Trainer's loss (benchmarks/README.md,
  "GLUE quality parity").
- `shuffled-groups`: exactly those batches, in a random order: the same padding, no long-to-short sweep.
- `random`: the Trainer's `RandomSampler`, the standard recipe (1.5-2 padded tokens per real token).

Every sampler yields the order of one whole optimizer step over all ranks at a time (`step_size`
examples); accelerate cuts each step into the ranks' slices.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from transformers.trainer_pt_utils import LengthGroupedSampler, get_length_grouped_indices

BATCH_ORDERS = ("length-grouped", "shuffled-groups", "random")


class GroupedSampler(LengthGroupedSampler):
    """`LengthGroupedSampler` with mega-batches of `group_batches` batches (None: the Trainer's size)."""

    def __init__(self, batch_size: int, lengths: list[int], group_batches: int | None = None) -> None:
        super().__init__(batch_size, lengths=lengths)
        self.group_batches = group_batches

    def grouped_order(self) -> list[int]:
        return get_length_grouped_indices(self.lengths, self.batch_size, mega_batch_mult=self.group_batches,
                                          generator=self.generator)

    def __iter__(self) -> Iterator[int]:
        return iter(self.grouped_order())


class ShuffledGroupsSampler(GroupedSampler):
    """The batches of `GroupedSampler` in a random order; a last, shorter batch stays last, so every
    other batch keeps its examples when the DataLoader cuts the order into batches."""

    def __iter__(self) -> Iterator[int]:
        order = self.grouped_order()
        full = len(order) // self.batch_size
        shuffled = torch.randperm(full, generator=self.generator).tolist()
        batches = [order[b * self.batch_size:(b + 1) * self.batch_size] for b in shuffled]
        return iter([i for batch in batches for i in batch] + order[full * self.batch_size:])


def train_sampler(batch_order: str, lengths: list[int], step_size: int,
                  group_batches: int | None = None) -> torch.utils.data.Sampler:
    """The sampler of `batch_order` over examples of `lengths` tokens, in steps of `step_size` examples,
    grouping lengths within mega-batches of `group_batches` steps (None: the Trainer's size)."""
    if batch_order == "length-grouped":
        return GroupedSampler(step_size, lengths, group_batches)
    if batch_order == "shuffled-groups":
        return ShuffledGroupsSampler(step_size, lengths, group_batches)
    if batch_order == "random":
        return torch.utils.data.RandomSampler(range(len(lengths)))
    raise ValueError(f"unknown batch order {batch_order!r} (known: {', '.join(BATCH_ORDERS)})")

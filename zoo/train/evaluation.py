"""Token-weighted language-model evaluation: perplexity = exp(total NLL / predicted tokens)."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from zoo.data.masking import predicted_tokens


def shard_indices(length: int, rank: int, world: int) -> list[int]:
    """Rank `rank`'s share of an evaluation set: every example exactly once across ranks, no padding."""
    return list(range(rank, length, world))


@torch.no_grad()
def lm_metrics(
    model: torch.nn.Module,
    dataset: Dataset,
    collate: Callable[[list[Any]], dict[str, torch.Tensor]],
    batch_size: int,
    objective: str,
    device: torch.device | str = "cpu",
    rank: int = 0,
    world: int = 1,
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext,
) -> dict[str, float]:
    """Loss and perplexity over the whole set, weighted by predicted tokens, summed over ranks.

    The model's loss is a mean over a batch's predicted tokens; multiplying it back by their number
    gives the batch's total NLL, so an uneven last batch or a different batch size cannot change the
    result (a mean of batch means would).
    """
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)
    shard = Subset(dataset, shard_indices(len(dataset), rank, world))
    for batch in DataLoader(shard, batch_size=batch_size, collate_fn=collate):
        batch = {k: v.to(device) for k, v in batch.items()}
        count = predicted_tokens(batch["labels"], objective)
        if count == 0:
            continue
        with autocast():
            loss = model(**batch).loss
        totals[0] += loss.double() * count
        totals[1] += count
    if world > 1 and torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    model.train(was_training)
    nll, tokens = float(totals[0]), int(totals[1])
    loss = nll / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(loss) if tokens and loss < 700 else float("inf"), "tokens": tokens}

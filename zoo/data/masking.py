"""MLM masking (BERT 80/10/10, whole-word) with counter-based draws, and the LM batch collators.

Masks are a pure function of (seed, epoch, block index), so a resumed run and a multi-process run mask
exactly as one process does; evaluation masks are drawn once from `eval.mask_seed`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from zoo.data.packing import BlockDataset
from zoo.errors import DataNotFoundError
from zoo.recipe.lm import ObjectiveSection


def wordpiece_prefix(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The continuation prefix ('##') of a WordPiece tokenizer; None for BPE and others.

    Asked of the backend model, not guessed from the vocabulary: GPT-2's and RoBERTa's BPE
    vocabularies hold literal '##', '###' tokens (markdown headings) that are not continuations.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        model = backend.model
        return (model.continuing_subword_prefix or "##") if type(model).__name__ == "WordPiece" else None
    return "##" if any(t.startswith("##") and t[2:3].isalnum() for t in tokenizer.get_vocab()) else None


def continuation_table(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Bool per vocabulary id: True when the token continues the previous token's word.

    WordPiece marks continuations with '##'; byte-level BPE marks word *starts* with 'Ġ' (a space), so
    a BPE token without it continues the word, as in the offset-mapping definition of a word.
    """
    vocab = tokenizer.get_vocab()
    table = torch.zeros(max(len(tokenizer), max(vocab.values()) + 1), dtype=torch.bool)
    special = set(tokenizer.all_special_ids)
    prefix = wordpiece_prefix(tokenizer)
    for token, index in vocab.items():
        if index in special:
            continue
        table[index] = token.startswith(prefix) if prefix else not token.startswith(("Ġ", "Ċ", "ĉ"))
    return table


class TorchDraws:
    """Uniform draws from a torch generator (or the global RNG when None)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def uniform(self, shape: tuple[int, int], stream: int) -> torch.Tensor:
        return torch.rand(shape, generator=self.generator, dtype=torch.float64)


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser: a well-mixed 64-bit hash of each element (uint64 arithmetic wraps)."""
    x = x + _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class HashedDraws:
    """Counter-based draws: the number for (seed, epoch, block, position, stream) is a pure function.

    Masks then depend only on which block is masked in which epoch, not on process count, batch
    composition or RNG state, so a resumed run and a multi-process run mask exactly as one process does.
    """

    def __init__(self, seed: int, epoch: int, blocks: np.ndarray) -> None:
        self.prefix = _splitmix64(np.array([seed, epoch], dtype=np.int64).astype(np.uint64)).sum()
        self.blocks = np.asarray(blocks, dtype=np.uint64)

    def uniform(self, shape: tuple[int, int], stream: int) -> torch.Tensor:
        rows = _splitmix64(self.blocks[:, None] ^ self.prefix ^ np.uint64(stream * 0x632BE59BD9B4E019))
        keys = _splitmix64(rows + np.arange(shape[1], dtype=np.uint64)[None, :])
        return torch.from_numpy((keys >> np.uint64(11)).astype(np.float64) * 2.0**-53)


class MLMMasker:
    """BERT masking: select tokens (or whole words), replace 80/10/10 with [MASK]/random/unchanged."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, objective: ObjectiveSection) -> None:
        if tokenizer.mask_token_id is None:
            raise DataNotFoundError("objective mlm needs a tokenizer with a mask token")
        self.mask_id = int(tokenizer.mask_token_id)
        self.vocab_size = len(tokenizer)
        self.special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
        self.objective = objective
        self.continuation = continuation_table(tokenizer) if objective.whole_word_mask else None

    def select(self, input_ids: torch.Tensor, draws: TorchDraws | HashedDraws) -> torch.Tensor:
        """Bool mask of positions to predict."""
        special = torch.isin(input_ids, self.special)
        p = self.objective.mlm_probability
        if self.continuation is None:
            return (draws.uniform(tuple(input_ids.shape), 0) < p) & ~special
        # word id = running count of word starts; choose words, then expand to their tokens
        starts = ~self.continuation[input_ids] | special
        word_ids = torch.cumsum(starts.long(), dim=1)
        word_chosen = draws.uniform((input_ids.shape[0], input_ids.shape[1] + 1), 0) < p
        return torch.gather(word_chosen, 1, word_ids) & ~special

    def __call__(
        self, input_ids: torch.Tensor, draws: torch.Generator | TorchDraws | HashedDraws | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(masked inputs, labels with -100 where nothing is predicted)."""
        if draws is None or isinstance(draws, torch.Generator):
            draws = TorchDraws(draws)
        shape = tuple(input_ids.shape)
        selected = self.select(input_ids, draws)
        labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
        action = draws.uniform(shape, 1)
        to_mask = selected & (action < self.objective.mask_replace_prob)
        to_random = selected & ~to_mask & (
            action < self.objective.mask_replace_prob + self.objective.random_replace_prob
        )
        random_tokens = (draws.uniform(shape, 2) * self.vocab_size).long()
        masked = torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)
        masked = torch.where(to_random, random_tokens, masked)
        return masked, labels


@dataclass
class EpochClock:
    """The training epoch, advanced by the Trainer (see zoo.train.EpochCallback); masks are keyed by it."""

    epoch: int = 0


class MLMCollator:
    """Dynamic masking for training: new masks for every block in every epoch, keyed by (seed, epoch, block).

    It runs in the DataLoader's worker processes when there are any (`train.dataloader_workers`, `auto` on a
    GPU), off the training process. Each epoch's workers copy the clock when they start, after the epoch
    callback advanced it, so the masks are the same with any number of workers (the workers must not be
    persistent across epochs: `zoo.train.hf_trainer.loader_arguments`).
    """

    def __init__(self, masker: MLMMasker, seed: int = 0, clock: EpochClock | None = None) -> None:
        self.masker = masker
        self.seed = seed
        self.clock = clock or EpochClock()

    def __call__(self, examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        input_ids = torch.stack([e["input_ids"] for e in examples])
        if "labels" in examples[0]:  # already masked (fixed evaluation masks)
            return {"input_ids": input_ids, "labels": torch.stack([e["labels"] for e in examples]),
                    "attention_mask": torch.ones_like(input_ids)}
        blocks = np.array([int(e["index"]) for e in examples], dtype=np.uint64)
        masked, labels = self.masker(input_ids, HashedDraws(self.seed, self.clock.epoch, blocks))
        return {"input_ids": masked, "labels": labels, "attention_mask": torch.ones_like(input_ids)}


def clm_collate(examples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """CLM: labels are the inputs; the model shifts them."""
    input_ids = torch.stack([e["input_ids"] for e in examples])
    return {"input_ids": input_ids, "labels": input_ids.clone(), "attention_mask": torch.ones_like(input_ids)}


class FixedMaskDataset(torch.utils.data.Dataset):
    """Evaluation blocks with MLM masks drawn once from a seed: the same number on every evaluation."""

    def __init__(self, blocks: BlockDataset, masker: MLMMasker, seed: int) -> None:
        draws = HashedDraws(seed, epoch=-1, blocks=np.arange(len(blocks)))
        self.input_ids, self.labels = masker(blocks.all_blocks(), draws)

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.input_ids[index], "labels": self.labels[index]}


def predicted_tokens(labels: torch.Tensor, objective: str) -> int:
    """Number of tokens a batch's loss averages over (CLM predicts positions 1..n)."""
    if objective == "clm":
        labels = labels[..., 1:]
    return int((labels != -100).sum())

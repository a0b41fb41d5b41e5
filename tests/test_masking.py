"""MLM masking: 80/10/10 replacement, whole-word selection for WordPiece and byte-level BPE, masking rates."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from zoo.data.masking import EpochClock, MLMCollator, MLMMasker, TorchDraws, continuation_table, wordpiece_prefix
from zoo.data.tokenization import load_tokenizer
from zoo.recipe.lm import ObjectiveSection

SENTENCE = ("Unbelievably, the tokenization of antidisestablishmentarianism isn't straightforward: "
            "photosynthesis, hyperparameters and the Schwarzschild radius all split into several pieces.")


def real_text(mirror: Path, lines: int = 40) -> str:
    """A few paragraphs of WikiText-2 validation text, single-spaced, without its special-token-like <unk>."""
    with open(mirror / "wikitext" / "wikitext-2" / "wiki.valid.tokens", encoding="utf-8") as fh:
        paragraphs = [line.strip() for line in fh if len(line.strip()) > 200][:lines]
    return " ".join(" ".join(paragraphs).replace("<unk>", "unknown").split())


def offset_words(tokenizer, text: str) -> tuple[torch.Tensor, list[int]]:
    """Token ids and a word index per token, by the offset-mapping definition: a token continues a word
    when it starts where the previous token ended (or inside it: bytes of one character), on a non-space
    character (GPT-2's offsets include the leading space, RoBERTa's are trimmed)."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    words, previous_end = [], None
    for start, end in encoded["offset_mapping"]:
        continues = bool(words) and start <= previous_end and not text[start].isspace()
        words.append(words[-1] if continues else (words[-1] + 1 if words else 0))
        previous_end = end
    return torch.tensor(encoded["input_ids"]), words


def table_words(tokenizer, ids: torch.Tensor) -> list[int]:
    """Word index per token from zoo's vocabulary continuation table (the text's first token starts a word)."""
    continuation = continuation_table(tokenizer)[ids]
    continuation[0] = False
    return (torch.cumsum((~continuation).long(), 0) - 1).tolist()


def wordpiece_words(tokenizer, text: str) -> tuple[torch.Tensor, list[int]]:
    """For WordPiece the pre-tokenizer's word ids are the words ('##' pieces join their word)."""
    encoded = tokenizer(text, add_special_tokens=False)
    return torch.tensor(encoded["input_ids"]), encoded.word_ids()


# --------------------------------------------------------------------------- the word table


def test_wordpiece_and_bpe_are_told_apart():
    # GPT-2's and RoBERTa's BPE vocabularies contain literal '##' tokens: not a WordPiece marker there
    assert wordpiece_prefix(load_tokenizer("bert-base-uncased")) == "##"
    for name in ("gpt2", "roberta-base"):
        tokenizer = load_tokenizer(name)
        assert "##" in tokenizer.get_vocab()
        assert wordpiece_prefix(tokenizer) is None
        table = continuation_table(tokenizer)
        vocab = tokenizer.get_vocab()
        assert not table[vocab["Ġworld"]] and table[vocab["ization"]] and table[vocab["##"]]
        assert not table[tokenizer.all_special_ids].any()


@pytest.mark.parametrize("name", ["gpt2", "roberta-base"])
def test_bpe_words_match_offset_mapping(name, mirror):
    tokenizer = load_tokenizer(name)
    for text in (SENTENCE, real_text(mirror)):
        ids, words = offset_words(tokenizer, text)
        assert table_words(tokenizer, ids) == words
        assert len(set(words)) < len(words)  # the text really has multi-token words


def test_wordpiece_words_match_word_ids(mirror):
    tokenizer = load_tokenizer("bert-base-uncased")
    for text in (SENTENCE, real_text(mirror)):
        ids, words = wordpiece_words(tokenizer, text)
        assert table_words(tokenizer, ids) == words
        assert len(set(words)) < len(words)


# --------------------------------------------------------------------------- whole-word masking


def framed_batch(tokenizer, ids: torch.Tensor, copies: int) -> torch.Tensor:
    """`copies` rows of [CLS] ids [SEP] (<s> ids </s>), framed as packed MLM blocks are."""
    row = torch.tensor([tokenizer.cls_token_id, *ids.tolist(), tokenizer.sep_token_id])
    return row.repeat(copies, 1)


@pytest.mark.parametrize("name", ["bert-base-uncased", "roberta-base"])
def test_whole_word_masking_masks_all_pieces_of_a_word_and_hits_the_rate(name, mirror):
    tokenizer = load_tokenizer(name)
    text = f"{SENTENCE} {real_text(mirror, lines=6)}"
    ids, words = (wordpiece_words if name == "bert-base-uncased" else offset_words)(tokenizer, text)
    ids, words = ids[:254], torch.tensor(words[:254])
    batch = framed_batch(tokenizer, ids, copies=400)
    offset = 1  # after [CLS] / <s>
    masker = MLMMasker(tokenizer, ObjectiveSection(mlm_probability=0.15, whole_word_mask=True))
    selected = masker.select(batch, TorchDraws(torch.Generator().manual_seed(0)))
    body = selected[:, offset:offset + len(ids)]
    assert not selected[:, :offset].any() and not selected[:, offset + len(ids):].any()  # specials never
    for word in words.unique():
        pieces = body[:, words == word]
        assert (pieces.all(dim=1) | ~pieces.any(dim=1)).all(), f"word {word} was split"
    # words are chosen with probability p, so on average p of the tokens (and p of the words) are selected
    assert abs(body.float().mean().item() - 0.15) < 0.01
    first_pieces = torch.cat([torch.tensor([True]), words[1:] != words[:-1]])
    assert abs(body[:, first_pieces].float().mean().item() - 0.15) < 0.01
    assert (words[1:] == words[:-1]).sum() > 20  # plenty of multi-piece words were tested


def test_whole_word_masking_through_the_training_collator(mirror):
    """The collator's counter-based draws: whole words, the right rate, new masks every epoch."""
    tokenizer = load_tokenizer("bert-base-uncased")
    ids, words = wordpiece_words(tokenizer, real_text(mirror, lines=4))
    ids, words = ids[:126], torch.tensor(words[:126])
    clock = EpochClock()
    collate = MLMCollator(MLMMasker(tokenizer, ObjectiveSection(whole_word_mask=True)), seed=42, clock=clock)
    examples = [{"input_ids": row, "index": torch.tensor(i)} for i, row in enumerate(framed_batch(tokenizer, ids, 300))]
    first = collate(examples)
    assert torch.equal(first["labels"], collate(examples)["labels"])  # keyed by (seed, epoch, block)
    clock.epoch = 1
    assert not torch.equal(first["labels"], collate(examples)["labels"])  # dynamic: new masks next epoch
    predicted = (first["labels"] != -100)[:, 1:-1]
    assert not torch.equal(predicted[0], predicted[1])  # and different masks for different blocks
    for word in words.unique():
        pieces = predicted[:, words == word]
        assert (pieces.all(dim=1) | ~pieces.any(dim=1)).all()
    assert abs(predicted.float().mean().item() - 0.15) < 0.015


# --------------------------------------------------------------------------- token masking, 80/10/10


def test_token_masking_rate_and_80_10_10_replacement():
    tokenizer = load_tokenizer("bert-base-uncased")
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1000, tokenizer.vocab_size, (256, 128), generator=generator)
    ids[:, 0], ids[:, -1] = tokenizer.cls_token_id, tokenizer.sep_token_id
    masker = MLMMasker(tokenizer, ObjectiveSection(mlm_probability=0.15))
    masked, labels = masker(ids, generator)
    selected = labels != -100
    assert torch.equal(labels[selected], ids[selected])
    assert not selected[:, 0].any() and not selected[:, -1].any()
    assert torch.equal(masked[~selected], ids[~selected])  # unselected tokens are never touched
    assert abs(selected[:, 1:-1].float().mean().item() - 0.15) < 0.005
    is_mask = masked[selected] == tokenizer.mask_token_id
    unchanged = masked[selected] == ids[selected]
    replaced = ~is_mask & ~unchanged
    n = selected.sum().item()
    assert abs(is_mask.sum().item() / n - 0.8) < 0.015
    assert abs(replaced.sum().item() / n - 0.1) < 0.01
    assert abs(unchanged.sum().item() / n - 0.1) < 0.01


def test_fixed_evaluation_masks_repeat_with_the_seed():
    tokenizer = load_tokenizer("roberta-base")
    ids = torch.randint(1000, tokenizer.vocab_size, (8, 64), generator=torch.Generator().manual_seed(2))
    masker = MLMMasker(tokenizer, ObjectiveSection(whole_word_mask=True))
    a = masker(ids, torch.Generator().manual_seed(1234))
    b = masker(ids, torch.Generator().manual_seed(1234))
    c = masker(ids, torch.Generator().manual_seed(4321))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])

"""Tokenizers from a local directory, the mirror's `tokenizers/<name>/`, or the hub.

The mirror holds the original vocabulary files only (vocab.txt; vocab.json + merges.txt). They are
loaded with `from_pretrained(dir)`: constructing the fast classes from `vocab_file=` silently builds a
near-empty vocabulary in this transformers release, so every load asserts the vocabulary size.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from transformers import (
    AddedToken,
    AutoTokenizer,
    BertTokenizerFast,
    GPT2TokenizerFast,
    PreTrainedTokenizerBase,
    RobertaTokenizerFast,
)

from zoo import paths
from zoo.errors import DataNotFoundError, ZooError

HUB_IDS = {
    "bert-base-uncased": "google-bert/bert-base-uncased",
    "gpt2": "openai-community/gpt2",
    "roberta-base": "FacebookAI/roberta-base",
}


def _vocab_file_size(directory: Path) -> int | None:
    if (directory / "vocab.txt").is_file():
        with open(directory / "vocab.txt", encoding="utf-8") as fh:
            return sum(1 for _ in fh)
    if (directory / "vocab.json").is_file():
        return len(json.loads((directory / "vocab.json").read_text(encoding="utf-8")))
    return None


def _load_from_dir(directory: Path) -> PreTrainedTokenizerBase:
    if (directory / "tokenizer.json").is_file() or (directory / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(str(directory))
    if (directory / "vocab.txt").is_file():
        return BertTokenizerFast.from_pretrained(str(directory))
    if (directory / "vocab.json").is_file() and (directory / "merges.txt").is_file():
        vocab = json.loads((directory / "vocab.json").read_text(encoding="utf-8"))
        if "<mask>" in vocab:
            # as on the hub: the mask absorbs the space before it ("is <mask>" -> "Ġis", "<mask>")
            mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
            return RobertaTokenizerFast.from_pretrained(str(directory), mask_token=mask)
        return GPT2TokenizerFast.from_pretrained(str(directory))
    raise ZooError(f"{directory}: no tokenizer files (tokenizer.json, vocab.txt or vocab.json+merges.txt)")


def _finish(tokenizer: PreTrainedTokenizerBase, expected: int | None, where: str) -> PreTrainedTokenizerBase:
    if expected is not None and tokenizer.vocab_size != expected:
        raise ZooError(
            f"{where}: tokenizer has {tokenizer.vocab_size} tokens but its vocabulary file has {expected}"
        )
    if tokenizer.vocab_size < 100:
        raise ZooError(f"{where}: tokenizer vocabulary has only {tokenizer.vocab_size} tokens")
    if tokenizer.pad_token is None:  # GPT-2 has none; padding positions are masked out anyway
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.model_max_length = int(1e9)  # zoo packs blocks itself; silence length warnings
    return tokenizer


@lru_cache(maxsize=8)
def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """A fast tokenizer for a directory, a mirror name (`tokenizers/<name>/`) or a hub id."""
    local = Path(name_or_path).expanduser()
    run_checkpoint = paths.run_checkpoint(name_or_path)
    if not local.is_dir() and run_checkpoint.is_dir():  # a zoo run id
        local = run_checkpoint
    if local.is_dir():
        return _finish(_load_from_dir(local), _vocab_file_size(local), str(local))
    root = paths.data_dir()
    short = name_or_path.split("/")[-1]
    if root is not None and (root / "tokenizers" / short).is_dir():
        directory = root / "tokenizers" / short
        return _finish(_load_from_dir(directory), _vocab_file_size(directory), str(directory))
    hub_id = HUB_IDS.get(name_or_path, name_or_path)
    if paths.hub_offline():
        where = (root or Path("$ZOO_DATA_DIR")) / "tokenizers" / short
        raise DataNotFoundError(
            f"tokenizer {hub_id!r} is not available offline; put vocab.txt or vocab.json+merges.txt in {where}"
        )
    try:
        return _finish(AutoTokenizer.from_pretrained(hub_id), None, hub_id)
    except OSError as exc:
        where = (root or Path("$ZOO_DATA_DIR")) / "tokenizers" / short
        raise DataNotFoundError(
            f"tokenizer {hub_id!r} could not be loaded ({exc}); or put its files in {where}"
        ) from exc


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    """A stable identity for the token ids a tokenizer produces (class, size, specials, samples)."""
    probe = "Hello world, the quick brown fox's résumé costs $3.50!"
    return json.dumps(
        [type(tokenizer).__name__, tokenizer.vocab_size, tokenizer.all_special_ids, tokenizer(probe)["input_ids"]]
    )

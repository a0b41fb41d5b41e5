"""Shared test fixtures: offline, isolated output directories, the local data mirror, tiny models."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

MIRROR = Path(os.environ.get("ZOO_DATA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data")).resolve()

# a BERT and a GPT-2 small enough to train a few steps in seconds on 2 CPU cores
TINY_BERT = {"num_hidden_layers": 1, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
             "max_position_embeddings": 128}
TINY_GPT2 = {"n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 128}


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes results, checkpoints and caches under its own temporary directory."""
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(tmp_path / "results"))
    monkeypatch.setenv("ZOO_CHECKPOINT_DIR", str(tmp_path / "checkpoints"))
    monkeypatch.setenv("ZOO_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_DATA_DIR", str(MIRROR))
    return tmp_path


@pytest.fixture
def results(isolated: Path) -> Path:
    """The leaderboard tests' fixed run records (tests/leaderboard_data.py) in this test's results folder."""
    from tests.leaderboard_data import write_results

    return write_results(Path(os.environ["ZOO_RESULTS_DIR"]))


@pytest.fixture
def mirror() -> Path:
    """The real local data mirror (../shared/data); tests that need it skip nothing: it must exist."""
    assert MIRROR.is_dir(), f"local data mirror missing at {MIRROR} (set ZOO_DATA_DIR)"
    return MIRROR


@pytest.fixture
def text_corpus(tmp_path: Path) -> Path:
    """A small plain-text corpus: 400 blank-line-separated documents of real-ish English."""
    words = ("the quick brown fox jumps over a lazy dog while seven wizards quietly judge "  # noqa: SIM905
             "boxing matches in the old town square near our house").split()
    docs = []
    for i in range(400):
        n = 20 + (i * 7) % 60
        docs.append(" ".join(words[(i + j * 3) % len(words)] for j in range(n)) + ".")
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(docs) + "\n", encoding="utf-8")
    return path


def save_tiny_bert(directory: Path, **config: object) -> Path:
    """A 1-layer BERT saved with the mirror's bert-base-uncased tokenizer, like a `zoo pretrain` checkpoint."""
    from transformers import BertConfig, BertForMaskedLM

    from zoo.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    BertForMaskedLM(BertConfig(vocab_size=tokenizer.vocab_size, **{**TINY_BERT, **config})).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def glue_cell_records(results: Path) -> dict[str, dict]:
    """Every GLUE cell record under a results directory, keyed by task/run id."""
    found = {}
    for path in results.glob("glue/*/*/*/run.json"):
        record = json.loads(path.read_text())
        found[f"{record['task']}/{record['run_id']}"] = record
    return found

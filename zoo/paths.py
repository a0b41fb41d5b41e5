"""Where zoo reads data and writes results, checkpoints and caches.

Every location can be moved with an environment variable so that clusters can put checkpoints on
scratch space and tests can isolate everything in a temporary directory.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def data_dir() -> Path | None:
    """The local mirror (`ZOO_DATA_DIR`), or None when only the hub is used."""
    value = os.environ.get("ZOO_DATA_DIR")
    return Path(value).expanduser().resolve() if value else None


def results_dir() -> Path:
    """Committed run records and leaderboards (`ZOO_RESULTS_DIR`, default ./results)."""
    return Path(os.environ.get("ZOO_RESULTS_DIR", "results")).resolve()


def checkpoints_dir() -> Path:
    """Model checkpoints, kept out of git (`ZOO_CHECKPOINT_DIR`, default ./checkpoints)."""
    return Path(os.environ.get("ZOO_CHECKPOINT_DIR", "checkpoints")).resolve()


FINAL_CHECKPOINT = "final"


def run_checkpoint(run_id: str) -> Path:
    """The finished model of zoo run `run_id`: checkpoints/<run-id>/final (a `from_pretrained` directory)."""
    return checkpoints_dir() / run_id / FINAL_CHECKPOINT


PUBLISHED_MODEL = "model"  # beside a run's committed record: its weights, exported (`zoo export RUN --publish`)


def cache_dir() -> Path:
    """Tokenized and packed data, keyed by fingerprint (`ZOO_CACHE_DIR`, default ~/.cache/zoo)."""
    return Path(os.environ.get("ZOO_CACHE_DIR", "~/.cache/zoo")).expanduser().resolve()


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def recipes_dir() -> Path:
    """The recipes shipped with the project (next to the package in a source checkout)."""
    return Path(__file__).resolve().parent.parent / "recipes"


@contextmanager
def environ_restored(keys: tuple[str, ...]) -> Iterator[None]:
    """Set any of `keys` in `os.environ` inside the block; on leaving, each is back to its value before (or unset)."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

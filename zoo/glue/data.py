"""GLUE data: read a task split (local TSV or hub), tokenize it once, cache it on disk.

Local files are read as the download script wrote them: UTF-8 (a leading byte-order mark is
dropped), one row per `\\n`-terminated line, fields split on tabs with no quoting at all (GLUE text has
unbalanced `"` characters, so a CSV reader with quoting would merge rows). A row whose field count
differs from the header's is an error naming the file and line, except in QQP whose train file has a
few broken rows that every GLUE reader skips.

Tokenized splits are cached under `<cache>/glue/<task>-<split>-<fingerprint>/` (`ZOO_CACHE_DIR`),
the fingerprint covering the source file (`zoo.data.cache.file_identity`: path, size, mtime) or hub
id, the tokenizer and `max_length`; every cell of a grid that shares them reuses the same
memory-mapped arrow files, built once by one process through `zoo.data.cache.build_once` (lock,
temporary directory renamed into place, manifest verified on open).
Each example keeps its row number (`idx`) and token count (`length`, used for length-grouped
batches and for sorting evaluation sets so that padding is minimal).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo import paths
from zoo.data.cache import build_once, file_identity
from zoo.data.tokenization import tokenizer_fingerprint
from zoo.errors import DataNotFoundError, ZooError
from zoo.glue.tasks import HUB_ID, LOCAL_ROOT, GlueTask, SplitSpec

PIPELINE_VERSION = 1
ENCODE_BATCH = 2000


@dataclass
class Examples:
    """The text (one or two fields) and labels of a split; labels None for a test split."""

    text_a: list[str]
    text_b: list[str] | None
    labels: list[Any] | None

    def __len__(self) -> int:
        return len(self.text_a)


# --------------------------------------------------------------------------- where a split comes from


def local_path(split: SplitSpec) -> Path | None:
    """`$ZOO_DATA_DIR/glue_data/<file>` when it exists."""
    root = paths.data_dir()
    if root is None:
        return None
    path = root / LOCAL_ROOT / split.file
    return path if path.is_file() else None


def expected_local_path(split: SplitSpec) -> Path:
    return (paths.data_dir() or Path("$ZOO_DATA_DIR")) / LOCAL_ROOT / split.file


def split_available(split: SplitSpec) -> bool:
    """Readable now: in the mirror, or the hub may be contacted."""
    return local_path(split) is not None or not paths.hub_offline()


def task_available(task: GlueTask) -> bool:
    """Train and every dev split can be read (test files are only needed for predictions)."""
    return all(split_available(s) for s in task.splits if s.role in ("train", "dev"))


def source_identity(split: SplitSpec) -> list[Any]:
    """What a cached split depends on: `cache.file_identity` of the local file, or the hub dataset."""
    path = local_path(split)
    if path is not None:
        return file_identity([path])[0]
    return [HUB_ID, split.hub_config, split.hub_split]


# --------------------------------------------------------------------------- reading


def read_tsv(path: Path, columns: tuple[str, ...] | None = None, skip_malformed: bool = False,
             ) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a GLUE TSV; `columns` names the fields of a header-less file."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = list(columns) if columns else lines.pop(0).rstrip("\r").split("\t")
    first_line = 1 if columns else 2
    rows = []
    for number, line in enumerate(lines, first_line):
        fields = line.rstrip("\r").split("\t")
        if len(fields) != len(header):
            if skip_malformed:
                continue
            raise ZooError(f"{path}:{number}: {len(fields)} tab-separated fields, expected {len(header)} "
                           f"({', '.join(header)})")
        rows.append(fields)
    return header, rows


def _column(header: list[str], name: str, path: Path) -> int:
    try:
        return header.index(name)
    except ValueError:
        raise ZooError(f"{path}: no column {name!r} in header ({', '.join(header)})") from None


def parse_label(task: GlueTask, value: str, where: str) -> int | float:
    """A label string from a file -> class index (hub order) or float score."""
    if task.regression:
        try:
            return float(value)
        except ValueError:
            raise ZooError(f"{where}: score {value!r} is not a number") from None
    try:
        return task.labels.index(value.strip())
    except ValueError:
        raise ZooError(f"{where}: label {value!r} is not one of {', '.join(task.labels)}") from None


def read_local(task: GlueTask, split: SplitSpec, path: Path) -> Examples:
    header, rows = read_tsv(path, split.columns, task.skip_malformed)
    text_columns = [_column(header, name, path) for name in task.text_columns]
    text_a = [row[text_columns[0]] for row in rows]
    text_b = [row[text_columns[1]] for row in rows] if len(text_columns) > 1 else None
    labels = None
    if split.labelled:
        label_column = _column(header, task.label_column, path)
        labels = [parse_label(task, row[label_column], f"{path} row {i + 1}") for i, row in enumerate(rows)]
    return Examples(text_a, text_b, labels)


def read_hub(task: GlueTask, split: SplitSpec) -> Examples:
    from datasets import load_dataset

    try:
        dataset = load_dataset(HUB_ID, split.hub_config, split=split.hub_split)
    except Exception as exc:  # the hub raises many kinds of errors; all mean "not available"
        raise DataNotFoundError(
            f"GLUE {task.name} {split.name}: hub dataset {HUB_ID} ({split.hub_config}, {split.hub_split}) "
            f"could not be loaded ({exc.__class__.__name__}); local copy expected at {expected_local_path(split)}"
        ) from None
    columns = task.hub_text_columns
    text_b = list(dataset[columns[1]]) if len(columns) > 1 else None
    labels = list(dataset["label"]) if split.labelled else None
    return Examples(list(dataset[columns[0]]), text_b, labels)


def read_split(task: GlueTask, name: str) -> Examples:
    """A split's examples from the mirror when it has the file, else from the hub."""
    split = task.split(name)
    path = local_path(split)
    if path is not None:
        return read_local(task, split, path)
    if paths.hub_offline():
        raise DataNotFoundError(
            f"GLUE {task.name} {split.name} is not available offline (hub dataset {HUB_ID}, config "
            f"{split.hub_config!r}, split {split.hub_split!r}); local copy expected at {expected_local_path(split)}"
        )
    return read_hub(task, split)


# --------------------------------------------------------------------------- tokenizing and caching


def split_fingerprint(task: GlueTask, name: str, tokenizer: Any, max_length: int) -> str:
    key = {
        "version": PIPELINE_VERSION,
        "task": task.key,
        "split": name,
        "source": source_identity(task.split(name)),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
    }
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def encode(examples: Examples, tokenizer: Any, max_length: int) -> Any:
    """Token ids of every example (pairs through the tokenizer), with idx, length and labels columns."""
    import datasets

    chunks = []
    for start in range(0, len(examples), ENCODE_BATCH):
        end = start + ENCODE_BATCH
        second = examples.text_b[start:end] if examples.text_b is not None else None
        encoded = dict(tokenizer(examples.text_a[start:end], second, truncation=True, max_length=max_length))
        encoded["idx"] = list(range(start, start + len(encoded["input_ids"])))
        encoded["length"] = [len(ids) for ids in encoded["input_ids"]]
        if examples.labels is not None:
            encoded["labels"] = examples.labels[start:end]
        chunks.append(datasets.Dataset.from_dict(encoded))
    if not chunks:
        raise ZooError("no examples to encode")
    return datasets.concatenate_datasets(chunks) if len(chunks) > 1 else chunks[0]


def cache_path(task: GlueTask, name: str, fingerprint: str) -> Path:
    return paths.cache_dir() / "glue" / f"{task.key}-{name}-{fingerprint}"


def load_encoded(task: GlueTask, name: str, tokenizer: Any, max_length: int) -> tuple[Any, str]:
    """(dataset, fingerprint) of a tokenized split, built once and then read from the cache.

    `zoo.data.cache.build_once` lets one process tokenize the split (the others wait for it) into a
    private temporary directory renamed into place, and verifies the arrow files' manifest on open.
    """
    import datasets

    fingerprint = split_fingerprint(task, name, tokenizer, max_length)

    def build(tmp: Path) -> None:
        dataset = encode(read_split(task, name), tokenizer, max_length)
        bars_on = datasets.is_progress_bar_enabled()
        datasets.disable_progress_bars()
        try:
            dataset.save_to_disk(str(tmp))
        finally:
            if bars_on:
                datasets.enable_progress_bars()

    final = build_once(cache_path(task, name, fingerprint), build, f"the tokenized GLUE {task.name} {name} split")
    return datasets.load_from_disk(str(final)), fingerprint


def prepare(task: GlueTask, names: list[str], tokenizer: Any, max_length: int) -> dict[str, str]:
    """Tokenize and cache the named splits (a no-op for cached ones); returns their fingerprints."""
    return {name: load_encoded(task, name, tokenizer, max_length)[1] for name in names}


def first(dataset: Any, limit: int | None) -> Any:
    """The first `limit` examples (all when None): a deterministic subset for smoke runs."""
    return dataset if limit is None or limit >= len(dataset) else dataset.select(range(limit))


def by_length(dataset: Any) -> Any:
    """Sorted by token count (stable): evaluation batches then pad almost nothing."""
    order = np.argsort(np.asarray(dataset["length"]), kind="stable")
    return dataset.select(order, keep_in_memory=True)

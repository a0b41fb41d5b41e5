"""Every pretrained load goes through here: safetensors preferred, a broken checkpoint is one line.

`load_pretrained(auto_class, ref_or_source, name, **kwargs)` and `load_config(...)` wrap
`from_pretrained`. Where a local directory holds `*.safetensors` files they load with
`use_safetensors=True` (no fall-back to a pickled `.bin` beside them). Any failure (a truncated or
garbled safetensors file, a missing weights file or shard, a config.json that is not JSON, a pickle
that the weights-only unpickler refuses, weights whose shapes disagree with config.json) becomes a
`ZooError` naming the most specific file at fault:

    model 'X': /path/model.safetensors is not a readable checkpoint (truncated: ...)

`check_loadable(ref_or_source, name)` finds the same problems up front, without building a model
(config.json parsed, every safetensors header read and the file's length checked against it, shards
of an index present, a `.bin`-only checkpoint unpickled weights-only), so that a command about to run
many loads (a GLUE grid) can stop once, before writing anything.
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import warnings
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.model.resolve import ModelRef

CONFIG = "config.json"
SAFE_WEIGHTS, SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"
TORCH_WEIGHTS, TORCH_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
WEIGHT_FILES = (SAFE_WEIGHTS, SAFE_INDEX, TORCH_WEIGHTS, TORCH_INDEX)  # transformers' order of preference
MAX_HEADER = 100_000_000  # safetensors refuses larger headers
ANSI = re.compile(r"\x1b\[[0-9;]*m")
SIZE = r"torch\.Size\((\[[^]]*\])\)"
MISMATCHES = (  # (key, checkpoint shape, model shape) in transformers' load report and in torch's load error
    re.compile(rf"^(\S+)\s*\|\s*MISMATCH\s*\|.*?ckpt:\s*{SIZE}\s*vs\s*model:\s*{SIZE}", re.MULTILINE),
    re.compile(rf"size mismatch for (\S+): copying a param with shape {SIZE} from checkpoint, "
               rf"the shape in current model is {SIZE}"),
)


@dataclass(frozen=True)
class Problem:
    """What is wrong with one file of a checkpoint: `{path} {text}` reads as a sentence."""

    path: Path
    text: str

    def error(self, name: str) -> ZooError:
        return ZooError(f"model {name!r}: {self.path} {self.text}")


def unreadable(path: Path, reason: str) -> Problem:
    kind = "config" if path.name == CONFIG else "checkpoint"
    return Problem(path, f"is not a readable {kind} ({reason})")


# --------------------------------------------------------------------------- describing exceptions


def first_line(exc: BaseException) -> str:
    """`Type: first non-empty line of the message` (torch's weights-only refusal: its one useful line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        lines = [f"an unsafe pickle, refused by weights-only loading: {_refusal(lines[1:])}".rstrip(": ")]
    text = lines[0] if lines else ""
    return f"{exc.__class__.__name__}: {text}" if text else exc.__class__.__name__


def _refusal(lines: list[str]) -> str:
    """The line of torch's weights-only refusal that says what the pickle wanted (after its boilerplate)."""
    boilerplate = ("Please file an issue", "Check the documentation")
    useful = [line for line in lines if not line.startswith(boilerplate)]
    return (useful[0] if useful else "").removeprefix("WeightsUnpickler error:").strip()


def is_pickle_error(exc: BaseException) -> bool:
    return isinstance(exc, pickle.UnpicklingError) or "Weights only load failed" in str(exc)


# --------------------------------------------------------------------------- inspecting a checkpoint


def local_directory(source: str) -> Path | None:
    path = Path(source).expanduser()
    return path if path.is_dir() else None


def has_safetensors(directory: Path) -> bool:
    return any(directory.glob("*.safetensors"))


def read_header(path: Path) -> tuple[int | None, bytes]:
    """(the header length a safetensors file's first 8 bytes give, the header bytes there are of it);
    (None, b"") for a file shorter than 8 bytes, no bytes for an implausible length."""
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            return None, b""
        length = int.from_bytes(prefix, "little")
        return length, handle.read(length) if length <= min(MAX_HEADER, path.stat().st_size) else b""


def data_end(header: bytes) -> int:
    """Where the last tensor of a parsed safetensors header ends, relative to the end of the header."""
    entries = json.loads(header)
    return max((int(e["data_offsets"][1]) for k, e in entries.items() if k != "__metadata__"), default=0)


def safetensors_problem(path: Path) -> Problem | None:
    """Why `path` is not a whole safetensors file: its header must parse, the file must be as long as the
    header says, and safetensors must accept it."""
    if not path.is_file():
        return Problem(path, "is missing")
    size = path.stat().st_size
    length, header = read_header(path)
    if length is None:
        return unreadable(path, f"truncated: {size} bytes, too short for a safetensors header")
    if length > MAX_HEADER:
        return unreadable(path, f"not a safetensors file: its first 8 bytes give a {length}-byte header")
    if len(header) < length:
        return unreadable(path, f"truncated: {size} bytes, less than its {8 + length}-byte header")
    try:
        expected = 8 + length + data_end(header)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        return unreadable(path, f"not a safetensors file, its header does not parse: {first_line(exc)}")
    if size < expected:
        return unreadable(path, f"truncated: {size} bytes on disk, its header describes {expected}")
    return _safe_open_problem(path)


def _safe_open_problem(path: Path) -> Problem | None:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as exc:  # SafetensorError and whatever else the Rust reader raises
        return unreadable(path, first_line(exc))
    return None


def json_problem(path: Path) -> Problem | None:
    """config.json or a shard index that is missing, not JSON, or not a JSON object."""
    if not path.is_file():
        return Problem(path, "is missing")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        return unreadable(path, first_line(exc))
    return None if isinstance(value, dict) else unreadable(path, f"not a JSON object but a {type(value).__name__}")


def index_problem(directory: Path, index: str) -> Problem | None:
    """A shard index that does not parse, names a missing shard, or a shard that is itself broken."""
    problem = json_problem(directory / index)
    if problem is not None:
        return problem
    weight_map = json.loads((directory / index).read_text(encoding="utf-8")).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        return unreadable(directory / index, "no weight_map")
    for shard in sorted(set(map(str, weight_map.values()))):
        problem = weights_problem(directory / shard)
        if problem is not None:
            return Problem(problem.path, f"{problem.text} (a shard listed in {index})")
    return None


def pickle_problem(path: Path) -> Problem | None:
    """A pickled weights file that torch's weights-only unpickler refuses (it never runs the pickle's code)."""
    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Detected pickle protocol 4": the error says what matters
            torch.load(str(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as exc:  # UnpicklingError, EOFError, RuntimeError, zip errors...
        return unreadable(path, first_line(exc))
    return None


def weights_problem(path: Path) -> Problem | None:
    if path.name.endswith(".safetensors"):
        return safetensors_problem(path)
    return pickle_problem(path) if path.is_file() else Problem(path, "is missing")


def checkpoint_problem(directory: Path) -> Problem | None:
    """The first thing that would stop `from_pretrained(directory)`, as far as it can be seen without building
    the model: config.json, then the weights transformers would pick (safetensors first, if any)."""
    problem = json_problem(directory / CONFIG)
    if problem is not None:
        return problem
    if has_safetensors(directory) or (directory / SAFE_INDEX).is_file():
        if (directory / SAFE_WEIGHTS).is_file():
            return safetensors_problem(directory / SAFE_WEIGHTS)
        if (directory / SAFE_INDEX).is_file():
            return index_problem(directory, SAFE_INDEX)
        found = ", ".join(sorted(p.name for p in directory.glob("*.safetensors")))
        return Problem(directory, f"has {found} but no {SAFE_WEIGHTS} or {SAFE_INDEX}")
    if (directory / TORCH_WEIGHTS).is_file():
        return weights_problem(directory / TORCH_WEIGHTS)
    if (directory / TORCH_INDEX).is_file():
        return index_problem(directory, TORCH_INDEX)
    return Problem(directory, f"has no weights file ({', '.join(WEIGHT_FILES)})")


# --------------------------------------------------------------------------- the public API


def _target(ref_or_source: ModelRef | str, name: str | None) -> tuple[str, str]:
    """(what from_pretrained loads, the name errors show)."""
    if isinstance(ref_or_source, ModelRef):
        return ref_or_source.source, name or ref_or_source.name
    return ref_or_source, name or ref_or_source


def check_loadable(ref_or_source: ModelRef | str, name: str | None = None) -> None:
    """Raise the one-line ZooError `load_pretrained` would, for a local checkpoint, without loading it (reads
    config.json, the safetensors headers and, for a `.bin`-only checkpoint, unpickles it weights-only). Hub ids
    that are not mirrored locally are not checked."""
    source, name = _target(ref_or_source, name)
    directory = local_directory(source)
    if directory is None:
        return
    problem = checkpoint_problem(directory)
    if problem is not None:
        raise problem.error(name)
    _config(source, name, directory)


def load_config(ref_or_source: ModelRef | str, name: str | None = None, /, **kwargs: Any) -> Any:
    """`AutoConfig.from_pretrained(source, **kwargs)`, a broken config.json as a one-line ZooError."""
    source, name = _target(ref_or_source, name)
    return _config(source, name, local_directory(source), **kwargs)


def _config(source: str, name: str, directory: Path | None, **kwargs: Any) -> Any:
    from transformers import AutoConfig

    try:
        with held_warnings([]):
            return AutoConfig.from_pretrained(source, **kwargs)
    except Exception as exc:  # OSError, ValueError, JSON and type errors, KeyError from an odd model_type...
        problem = json_problem(directory / CONFIG) if directory is not None else None
        if problem is not None:
            raise problem.error(name) from None
        where = directory / CONFIG if directory is not None else source
        raise ZooError(f"model {name!r}: no usable config at {where} ({first_line(exc)})") from None


def load_pretrained(auto_class: Any, ref_or_source: ModelRef | str, name: str | None = None, /,
                    **kwargs: Any) -> Any:
    """`auto_class.from_pretrained(source, **kwargs)` (safetensors-only where the directory has safetensors);
    any failure is a one-line ZooError naming the file at fault."""
    source, name = _target(ref_or_source, name)
    directory = local_directory(source)
    if directory is not None and has_safetensors(directory):
        kwargs.setdefault("use_safetensors", True)
    held: list[logging.LogRecord] = []
    try:
        with held_warnings(held):
            return auto_class.from_pretrained(source, **kwargs)
    except Exception as exc:  # whatever the config, weights or pickle readers raise
        raise load_error(exc, source, name, directory, held) from None


def load_error(exc: Exception, source: str, name: str, directory: Path | None,
               held: list[logging.LogRecord]) -> ZooError:
    """The one-line error for a failed `from_pretrained`: the file a fresh look at the checkpoint blames, else
    the one the exception's kind points at."""
    if directory is None:
        return ZooError(f"model {name!r} could not be loaded from {source} ({first_line(exc)})")
    problem = checkpoint_problem(directory)  # only on failure: unpickling `.bin` weights again is affordable
    if problem is None and is_pickle_error(exc):
        weights = directory / TORCH_WEIGHTS
        problem = unreadable(weights if weights.is_file() else directory, first_line(exc))
    if problem is None:
        problem = mismatch_problem(exc, directory, held)
    if problem is None:
        problem = Problem(directory, f"could not be loaded ({first_line(exc)})")
    return problem.error(name)


def mismatch_problem(exc: Exception, directory: Path, held: list[logging.LogRecord]) -> Problem | None:
    """Weights whose shapes are not the ones config.json describes (from transformers' load report)."""
    text = ANSI.sub("", "\n".join([str(exc), *(record.getMessage() for record in held)]))
    if "mismatch" not in text:
        return None
    found = next((found for pattern in MISMATCHES if (found := pattern.findall(text))), [])
    if not found:
        return Problem(directory / CONFIG, f"does not match the weights beside it ({first_line(exc)})")
    key, saved, built = found[0]
    return Problem(directory / CONFIG, f"does not match the weights beside it: {len(found)} tensors have other "
                                       f"shapes, e.g. {key} is {saved} in the checkpoint, {built} by the config")


@contextmanager
def held_warnings(held: list[logging.LogRecord]) -> Iterator[None]:
    """Hold back transformers' log messages (into `held`) and Python warnings while loading: replayed if the
    block succeeds, dropped (the ZooError says what went wrong) if it raises."""
    from transformers.utils import logging as hf_logging

    root = hf_logging.get_logger()
    handlers, root.handlers = root.handlers, [_ListHandler(held)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:
        root.handlers = handlers
    for record in held:
        for handler in handlers:
            if record.levelno >= handler.level:
                handler.handle(record)
    for warning in caught:
        warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)


class _ListHandler(logging.Handler):
    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__(logging.NOTSET)
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

"""Corpus registry and readers: each corpus names its hub source and its local-mirror layout.

Readers are generators of documents (strings), so corpora larger than memory stream through the
tokenizer. With `ZOO_DATA_DIR` holding the corpus, the mirror is used; otherwise the hub (streaming).
"""

from __future__ import annotations

import glob
import gzip
import io
import json
import lzma
import re
import tarfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from zoo import paths
from zoo.data.cache import file_identity
from zoo.errors import DataNotFoundError, ZooError

Finder = Callable[[Path], dict[str, list[Path]]]


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus lives (hub and mirror) and how its files are read."""

    name: str
    description: str
    hub_id: str
    hub_config: str | None
    hub_splits: dict[str, list[str]]  # zoo split -> hub splits concatenated
    local_layout: str  # the mirror path that satisfies it, relative to ZOO_DATA_DIR
    find_local: Finder
    reader: Callable[[Path], Iterator[str]]
    text_field: str = "text"
    notes: str = ""
    extra: dict[str, str] = field(default_factory=dict)


# --------------------------------------------------------------------------- file readers


def open_text(path: Path) -> io.TextIOBase:
    """Text handle for a plain, .gz or .xz file."""
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    if path.suffix == ".xz":
        return io.TextIOWrapper(lzma.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def _read_checked(path: Path, reader: Callable[[Path], Iterator[str]]) -> Iterator[str]:
    try:
        yield from reader(path)
    except (OSError, EOFError, lzma.LZMAError, tarfile.TarError, zlib.error, UnicodeDecodeError) as exc:
        raise ZooError(f"{path}: cannot be read ({exc.__class__.__name__}: {exc})") from None


def read_blank_line_documents(path: Path) -> Iterator[str]:
    """Plain text: documents separated by blank lines (the BERT pretraining-data convention)."""
    lines: list[str] = []
    with open_text(path) as fh:
        for line in fh:
            if line.strip():
                lines.append(line.rstrip("\n"))
            elif lines:
                yield "\n".join(lines)
                lines = []
    if lines:
        yield "\n".join(lines)


_DOC_OPEN = re.compile(r"^<doc\b[^>]*>\s*$")


def read_wikiextractor(path: Path) -> Iterator[str]:
    """WikiExtractor output: `<doc id=.. url=.. title=..>` ... `</doc>`; the title line is dropped."""
    inside = False
    lines: list[str] = []
    with open_text(path) as fh:
        for line in fh:
            if not inside:
                if _DOC_OPEN.match(line):
                    inside, lines = True, []
                continue
            if line.startswith("</doc>"):
                inside = False
                body = [ln for ln in lines[1:] if ln.strip()]  # lines[0] repeats the title
                if body:
                    yield "\n".join(body)
                continue
            lines.append(line.rstrip("\n"))


_WIKITEXT_TITLE = re.compile(r"^ = [^=].* = $")


def read_wikitext(path: Path) -> Iterator[str]:
    """WikiText .tokens/.raw: an article starts at a top-level ` = Title = ` heading."""
    lines: list[str] = []
    with open_text(path) as fh:
        for line in fh:
            text = line.rstrip("\n")
            if _WIKITEXT_TITLE.match(text) and lines:
                yield "\n".join(lines)
                lines = []
            if text.strip():
                lines.append(text.strip())
    if lines:
        yield "\n".join(lines)


def read_jsonl(path: Path, text_field: str = "text") -> Iterator[str]:
    with open_text(path) as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)[text_field]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise ZooError(f"{path}:{number}: expected a JSON object with a {text_field!r} field") from None
            if text.strip():
                yield text


def read_parquet(path: Path, text_field: str = "text") -> Iterator[str]:
    import pyarrow.parquet as pq

    table = pq.ParquetFile(path)
    for batch in table.iter_batches(columns=[text_field], batch_size=1000):
        yield from (t for t in batch.column(0).to_pylist() if t and t.strip())


def read_any(path: Path) -> Iterator[str]:
    """Pick a reader from the file name: .jsonl, .parquet, WikiExtractor `wiki_NN`, or plain text."""
    name = path.name.removesuffix(".gz").removesuffix(".xz")
    if name.endswith((".jsonl", ".json")):
        return _read_checked(path, read_jsonl)
    if name.endswith(".parquet"):
        return _read_checked(path, read_parquet)
    if re.fullmatch(r"wiki_\d+(\.bz2)?", name):
        return _read_checked(path, read_wikiextractor)
    if name.endswith((".tokens", ".raw")):
        return _read_checked(path, read_wikitext)
    return _read_checked(path, read_blank_line_documents)


def clean_imdb(text: str) -> str:
    return text.replace("<br /><br />", "\n").replace("<br />", " ").strip()


def read_imdb(path: Path, split: str) -> Iterator[str]:
    """IMDB reviews of a split from aclImdb tarballs or an extracted aclImdb/ folder.

    train: train/{pos,neg,unsup}; validation/test: test/{pos,neg}.
    """
    folders = ("train/pos/", "train/neg/", "train/unsup/") if split == "train" else ("test/pos/", "test/neg/")
    if path.is_dir():
        for folder in folders:
            for file in sorted((path / folder).glob("*.txt")):
                yield clean_imdb(file.read_text(encoding="utf-8", errors="replace"))
        return
    with tarfile.open(path, "r|*") as archive:
        for member in archive:
            inner = member.name.split("aclImdb/", 1)[-1]
            if member.isfile() and inner.endswith(".txt") and inner.startswith(folders):
                handle = archive.extractfile(member)
                if handle is not None:
                    yield clean_imdb(handle.read().decode("utf-8", errors="replace"))


# --------------------------------------------------------------------------- local layouts


def _sorted(pattern: str) -> list[Path]:
    return sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())


def find_wikipedia(root: Path) -> dict[str, list[Path]]:
    files = _sorted(str(root / "wikipedia" / "**" / "wiki_[0-9]*"))
    files += _sorted(str(root / "wikipedia" / "**" / "*.parquet"))
    return {"train": files} if files else {}


def find_openwebtext(root: Path) -> dict[str, list[Path]]:
    files: list[Path] = []
    for pattern in ("openwebtext/**/*.txt", "openwebtext/**/*.xz", "openwebtext/**/*.parquet",
                    "webtext/openwebtext_sample/*.txt"):
        files += _sorted(str(root / pattern))
    return {"train": files} if files else {}


def _find_wikitext(name: str) -> Finder:
    def finder(root: Path) -> dict[str, list[Path]]:
        found: dict[str, list[Path]] = {}
        for split, stem in (("train", "train"), ("validation", "valid"), ("test", "test")):
            for folder in (name, f"{name}-raw", f"{name}-v1", f"{name}-raw-v1"):
                for ext in ("tokens", "raw"):
                    candidate = root / "wikitext" / folder / f"wiki.{stem}.{ext}"
                    if candidate.is_file() and split not in found:
                        found[split] = [candidate]
        return found

    return finder


def find_imdb(root: Path) -> dict[str, list[Path]]:
    base = root / "imdb"
    if (base / "aclImdb").is_dir():
        return {"train": [base / "aclImdb"], "validation": [base / "aclImdb"], "test": [base / "aclImdb"]}
    tarballs = _sorted(str(base / "aclImdb*.tar.gz"))
    if not tarballs:
        return {}
    # the labelled tarball holds test reviews; the unsup tarball only train/unsup
    labelled = [t for t in tarballs if "unsup" not in t.name]
    return {"train": tarballs, "validation": labelled, "test": labelled}


def find_webtext(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for split, stem in (("train", "train"), ("validation", "valid"), ("test", "test")):
        files = _sorted(str(root / "webtext" / "**" / f"webtext.{stem}.jsonl"))
        if files:
            found[split] = files
    return found


def find_minipile(root: Path) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for split in ("train", "validation", "test"):
        files = _sorted(str(root / "minipile" / "**" / f"{split}*.parquet"))
        files += _sorted(str(root / "minipile" / "**" / f"{split}*.jsonl"))
        if files:
            found[split] = files
    return found


CORPORA: dict[str, CorpusSpec] = {
    spec.name: spec
    for spec in [
        CorpusSpec("wikipedia", "English Wikipedia articles", "wikimedia/wikipedia", "20231101.en",
                   {"train": ["train"]},
                   "wikipedia/**/wiki_NN[.gz] (WikiExtractor <doc> files) or wikipedia/**/*.parquet",
                   find_wikipedia, read_any),
        CorpusSpec("openwebtext", "OpenWebText (open re-creation of WebText)", "Skylion007/openwebtext", None,
                   {"train": ["train"]},
                   "openwebtext/**/*.{txt,xz,parquet} or webtext/openwebtext_sample/*.txt",
                   find_openwebtext, read_any),
        CorpusSpec("wikitext-2", "WikiText-2 (tokenized, with <unk>)", "Salesforce/wikitext", "wikitext-2-v1",
                   {"train": ["train"], "validation": ["validation"], "test": ["test"]},
                   "wikitext/wikitext-2/wiki.{train,valid,test}.tokens", _find_wikitext("wikitext-2"), read_any),
        CorpusSpec("wikitext-103", "WikiText-103 (tokenized, with <unk>)", "Salesforce/wikitext",
                   "wikitext-103-v1",
                   {"train": ["train"], "validation": ["validation"], "test": ["test"]},
                   "wikitext/wikitext-103/wiki.{train,valid,test}.tokens", _find_wikitext("wikitext-103"),
                   read_any),
        CorpusSpec("minipile", "MiniPile (1M documents of The Pile)", "JeanKaddour/minipile", None,
                   {"train": ["train"], "validation": ["validation"], "test": ["test"]},
                   "minipile/**/{train,validation,test}*.{parquet,jsonl}", find_minipile, read_any),
        CorpusSpec("imdb", "IMDB movie reviews (train + unsupervised; test for evaluation)", "stanfordnlp/imdb",
                   None, {"train": ["train", "unsupervised"], "validation": ["test"], "test": ["test"]},
                   "imdb/aclImdb_v1*.tar.gz or imdb/aclImdb/", find_imdb, read_any),
        CorpusSpec("webtext", "WebText from the GPT-2 output dataset (jsonl)", "",
                   None, {"train": ["train"], "validation": ["valid"], "test": ["test"]},
                   "webtext/**/webtext.{train,valid,test}.jsonl", find_webtext, read_any,
                   notes="not on the hub: download webtext.*.jsonl from openai/gpt-2-output-dataset"),
    ]
}


def get_corpus(name: str) -> CorpusSpec:
    try:
        return CORPORA[name]
    except KeyError:
        known = ", ".join([*CORPORA, "text"])
        raise ZooError(f"unknown corpus {name!r}; known: {known}") from None


# --------------------------------------------------------------------------- documents of a split


@dataclass(frozen=True)
class Source:
    """A resolved place to read one split from: local files, or a hub dataset."""

    description: str
    files: tuple[Path, ...] = ()
    hub_splits: tuple[str, ...] = ()
    held_out: bool = False  # True: the split is carved out of train by document hash

    def identity(self) -> list[object]:
        """What the cache fingerprint depends on: `cache.file_identity` of the files, or the hub id."""
        if self.files:
            return list(file_identity(self.files))
        return [self.description, list(self.hub_splits)]


def expand_paths(patterns: Iterable[str]) -> list[Path]:
    files: list[Path] = []
    for pattern in patterns:
        matched = _sorted(str(Path(pattern).expanduser()))
        if not matched:
            raise DataNotFoundError(f"data.paths: {pattern!r} matches no file")
        files += matched
    return files


def resolve_source(corpus: str, split: str, text_paths: list[str] | None = None) -> Source:
    """Where split `split` of `corpus` comes from; held out of train when the corpus lacks it."""
    if corpus == "text":
        return Source("text files", files=tuple(expand_paths(text_paths or [])), held_out=split != "train")
    spec = get_corpus(corpus)
    root = paths.data_dir()
    local = spec.find_local(root) if root is not None else {}
    if split in local:
        return Source(f"{root}/{spec.local_layout}", files=tuple(local[split]))
    if "train" in local and split not in spec.hub_splits:
        return Source(f"{root}/{spec.local_layout}", files=tuple(local["train"]), held_out=True)
    held_out = split not in spec.hub_splits
    if paths.hub_offline() or not spec.hub_id:
        where = (root or Path("$ZOO_DATA_DIR")) / spec.local_layout
        hub = f"hub dataset {spec.hub_id!r}" + (f" ({spec.hub_config})" if spec.hub_config else "")
        raise DataNotFoundError(
            f"corpus {corpus!r} split {split!r} is not available offline "
            f"({hub if spec.hub_id else spec.notes}); local copy expected at {where}"
        )
    return Source(f"hub:{spec.hub_id}", hub_splits=tuple(spec.hub_splits["train" if held_out else split]),
                  held_out=held_out)


def in_validation(text: str, fraction: float) -> bool:
    """Deterministic, order-independent hold-out: a document's CRC32 decides its split."""
    return (zlib.crc32(text.encode("utf-8", errors="replace")) % 100_000) < fraction * 100_000


def iter_documents(corpus: str, split: str, source: Source, fraction: float, exclude_held_out: bool) -> Iterator[str]:
    """Documents of `split`, streamed.

    A held-out split keeps the train documents that hash into the validation share; the train split
    drops those same documents when `exclude_held_out` (the evaluation split is held out of it).
    """
    docs = _raw_documents(corpus, "train" if source.held_out else split, source)
    if source.held_out:
        return (d for d in docs if in_validation(d, fraction))
    if exclude_held_out and fraction > 0:
        return (d for d in docs if not in_validation(d, fraction))
    return docs


def _raw_documents(corpus: str, split: str, source: Source) -> Iterator[str]:
    if source.files:
        for path in source.files:
            if corpus == "imdb":
                yield from _read_checked(path, lambda p: read_imdb(p, split))
            else:
                yield from read_any(path)
        return
    yield from _hub_documents(get_corpus(corpus), source.hub_splits)


def _hub_documents(spec: CorpusSpec, splits: tuple[str, ...]) -> Iterator[str]:
    from datasets import load_dataset

    for split in splits:
        try:
            stream = load_dataset(spec.hub_id, spec.hub_config, split=split, streaming=True)
        except Exception as exc:  # network, auth, missing config: all mean "not available"
            raise DataNotFoundError(
                f"hub dataset {spec.hub_id!r} split {split!r} could not be loaded ({exc.__class__.__name__}); "
                f"or put a local copy at $ZOO_DATA_DIR/{spec.local_layout}"
            ) from None
        for row in stream:
            text = row.get(spec.text_field) or ""
            if text.strip():
                yield text

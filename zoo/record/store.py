"""Run records on disk: one `run.json` per run under results/<kind>/<run-id>/; the one writer and reader.

A record directory holds `run.json` (a `zoo.record.schema` record) and `recipe.yaml`, the resolved
recipe that reproduces the run (`zoo <kind> --recipe results/<kind>/<run-id>/recipe.yaml`). `run.json`
is written last, through a temporary file and a rename: a record is never half-written. Every reader
(leaderboard, export, the GLUE grid, `zoo eval`) goes through `read_record`, which also reads records
of older schema versions (`upgrade`).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.recipe.common import is_smoke, read_yaml
from zoo.recipe.schema import build
from zoo.record.schema import RECIPE_FILE, RECORD_FILE, RECORD_TYPES, SCHEMA_VERSION, Record

NON_FINITE_TEXT = {"nan", "inf", "-inf", "infinity", "-infinity"}


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(name: str) -> str:
    """`<recipe name>-<UTC timestamp>`, sortable and unique per second and process."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}"


def run_dir(kind: str, run_id: str) -> Path:
    return paths.results_dir() / kind / run_id


def map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """`value` (nested dicts and lists) with `leaf` applied to every value that is neither."""
    if isinstance(value, dict):
        return {k: map_leaves(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [map_leaves(v, leaf) for v in value]
    return leaf(value)


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _number_text_as_none(value: Any) -> Any:
    return None if isinstance(value, str) and value.strip().lower() in NON_FINITE_TEXT else value


def json_safe(value: Any) -> Any:
    """The record's one non-finite policy: JSON has no NaN or infinity, so such numbers are written as null."""
    return map_leaves(value, _finite_or_none)


def _is_empty(value: Any) -> bool:
    return value is None or (isinstance(value, dict) and all(v is None for v in value.values()))


def record_json(record: Record) -> str:
    """The JSON text of a record: non-finite numbers as null, empty OMIT_EMPTY sections left out."""
    data = json_safe(dataclasses.asdict(record))
    for spec in dataclasses.fields(record):
        if spec.metadata.get("omit_empty") and _is_empty(data[spec.name]):
            del data[spec.name]
    return json.dumps(data, indent=2, default=str) + "\n"


def write_record(directory: Path, record: Record) -> Path:
    """Write run.json atomically; returns its path."""
    path = directory / RECORD_FILE
    atomic_write(path, record_json(record))
    return path


def upgrade(raw: dict[str, Any], directory: Path) -> dict[str, Any]:
    """A record of an older schema version as the current schema has it (see zoo.record.schema)."""
    version = raw.get("schema_version", 1)
    if version == SCHEMA_VERSION:
        return raw
    if version != 1:
        raise ZooError(f"schema_version {version!r} is not one this zoo reads (1 or {SCHEMA_VERSION})")
    raw = map_leaves(raw, _number_text_as_none)  # v1 LM records wrote NaN as "nan"
    recipe = directory / str(raw.get("recipe") or RECIPE_FILE)
    raw["smoke"] = bool(raw.get("smoke")) or (recipe.is_file() and is_smoke(read_yaml(recipe)))
    if raw.get("started_at") and "segments" not in raw:
        raw["segments"] = [{"started_at": raw["started_at"], "finished_at": raw.get("finished_at"),
                            "wall_time_s": raw.get("wall_time_s"), "from_step": raw.get("resumed_from_step")}]
    raw["schema_version"] = SCHEMA_VERSION
    return raw


def parse_record(raw: Any, directory: Path, where: str) -> Record:
    """A typed record from the JSON of `run.json` (any supported schema version)."""
    if not isinstance(raw, dict):
        raise ZooError(f"{where}: not a run record (a JSON object)")
    kind = raw.get("kind")
    if kind not in RECORD_TYPES:
        raise ZooError(f"{where}: unknown record kind {kind!r}; known: {', '.join(RECORD_TYPES)}")
    try:
        return build(RECORD_TYPES[kind], upgrade(raw, directory), where)
    except ZooError as exc:
        message = str(exc)
        raise ZooError(message if message.startswith(where) else f"{where}: {message}") from None


def read_record(path: Path) -> Record:
    """The record in `path` (a run.json), or a one-line ZooError naming the file."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ZooError(f"{path}: not a readable run record ({exc})") from None
    return parse_record(raw, path.parent, str(path))


def read_if_readable(path: Path, kind: type[Record]) -> Record | None:
    """The record at `path` if there is a readable one of type `kind`, else None (such a run counts as absent)."""
    if not path.is_file():
        return None
    try:
        record = read_record(path)
    except ZooError:
        return None
    return record if isinstance(record, kind) else None


def iter_records(kind: str | None = None) -> list[tuple[Path, Record]]:
    """(run.json path, record) for every record under results/ (optionally of one kind), sorted."""
    root = paths.results_dir()
    pattern = f"{kind}/**/{RECORD_FILE}" if kind else f"**/{RECORD_FILE}"
    return [(p, read_record(p)) for p in sorted(root.glob(pattern))]


def find_run(run_id: str) -> tuple[Path, Record] | None:
    """The record of run `run_id` in any kind, or None."""
    root = paths.results_dir()
    for path in sorted(root.glob(f"*/{run_id}/{RECORD_FILE}")):
        return path, read_record(path)
    return None

"""Typed, documented configuration sections loaded from plain dicts (YAML) with strict checking.

A section is a dataclass; each field carries its help text and allowed range in `metadata`, made with
`setting(...)`. `build(cls, raw, source)` turns a dict into an instance, rejecting unknown keys, wrong
types and out-of-range values with a `RecipeError` that names the source, the key and what is allowed:
`recipes/pretrain/x.yaml: train.lr: expected float, got 'abc'`. The error keeps the source, the dotted key
and the offending key path apart, so a loader can name a `--set` override instead of the file when the
override gave the bad value (`zoo.recipe.common.blame_overrides`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from zoo.errors import ZooError

T = TypeVar("T")


class RecipeError(ZooError):
    """A recipe (file or override) that does not fit the schema.

    Made with `RecipeError.at(...)` for one key, it also keeps `source` (the file, or `--set ...`), `key`
    (the dotted location shown, "" for the whole section), `path` (the keys of the offending value, e.g.
    ('train', 'lrr') for an unknown key of section train) and `problem` (the message after the location).
    A plain `RecipeError(message)` has an empty `path`: nothing to re-attribute.
    """

    def __init__(self, message: str, *, source: str = "", key: str = "", path: tuple[str, ...] = (),
                 problem: str = "") -> None:
        super().__init__(message)
        self.source, self.key, self.path, self.problem = source, key, path, problem or message

    @classmethod
    def at(cls, source: str, key: str, problem: str, path: tuple[str, ...] | None = None) -> RecipeError:
        """`source: key: problem`; `path` defaults to the keys of `key` (without list indices)."""
        keys = path if path is not None else key_path(key)
        return cls(f"{location(source, key)}: {problem}", source=source, key=key, path=keys, problem=problem)


def location(source: str, key: str) -> str:
    """`file.yaml: train.lr`, `file.yaml` (no key) or `train.lr` (no source)."""
    return f"{source}: {key}" if source and key else source or key


def key_path(key: str) -> tuple[str, ...]:
    """'data.paths[0]' -> ('data', 'paths')."""
    return tuple(part.split("[", 1)[0] for part in key.split(".") if part)


def child(key: str, name: str) -> str:
    """The dotted key of field `name` inside section `key` ("" is the top level)."""
    return f"{key}.{name}" if key else name


def setting(
    default: Any = dataclasses.MISSING,
    *,
    doc: str,
    low: float | None = None,
    high: float | None = None,
    factory: Any = dataclasses.MISSING,
) -> Any:
    """A dataclass field with help text and an optional inclusive range [low, high]."""
    meta = {"doc": doc, "low": low, "high": high}
    if factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(tp: Any) -> str:
    """Human wording of a type annotation, used in error messages and `zoo validate`."""
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(describe(a) for a in get_args(tp))
    if origin is list:
        return f"list of {describe(get_args(tp)[0])}"
    if origin is dict or dataclasses.is_dataclass(tp):
        return "mapping"
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, source: str, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in get_args(tp):
            try:
                return _coerce(value, option, source, key)
            except RecipeError:
                continue
    elif origin is list:
        if isinstance(value, (list, tuple)):
            return [_coerce(v, get_args(tp)[0], source, f"{key}[{i}]") for i, v in enumerate(value)]
        if isinstance(value, str):  # `--set data.paths=a.txt` gives one string
            return [_coerce(value, get_args(tp)[0], source, key)]
    elif origin is dict:
        if isinstance(value, dict):
            return dict(value)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    elif dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return build(tp, value, source, key)
    raise RecipeError.at(source, key, f"expected {describe(tp)}, got {value!r}")


def _check_range(value: Any, meta: typing.Mapping[str, Any], source: str, key: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    low, high = meta.get("low"), meta.get("high")
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"[{low if low is not None else '-inf'}, {high if high is not None else 'inf'}]"
        raise RecipeError.at(source, key, f"{value!r} is out of range, allowed {bounds}")


def build(cls: type[T], raw: dict[str, Any] | None, source: str, key: str = "") -> T:
    """Instantiate dataclass `cls` from `raw` read from `source` (a file name, `<cell spec>`, ...).

    `key` is the dotted key of `raw` inside the whole recipe ("" for the recipe itself); errors read
    `source: key.field: problem`, e.g. `bad.yaml: train.lr: expected float, got 'abc'`.
    """
    raw = raw or {}
    if not isinstance(raw, dict):
        raise RecipeError.at(source, key, f"expected a mapping, got {raw!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        raise RecipeError.at(source, key, f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(fields))}",
                             path=(*key_path(key), str(unknown[0])))
    values: dict[str, Any] = {}
    for name, value in raw.items():
        values[name] = _coerce(value, hints[name], source, child(key, name))
        _check_range(values[name], fields[name].metadata, source, child(key, name))
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise RecipeError.at(source, key, f"missing required key {missing[0]!r}", path=(*key_path(key), missing[0]))
    return cls(**values)


def to_dict(section: Any) -> dict[str, Any]:
    """Plain-dict form of a section, suitable for YAML."""
    return dataclasses.asdict(section)


def field_docs(cls: type, prefix: str = "") -> list[tuple[str, str, str, Any]]:
    """(dotted key, type, help, default) for every leaf field of `cls`, for help texts."""
    rows: list[tuple[str, str, str, Any]] = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(tp):
            rows.extend(field_docs(tp, key + "."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else None
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        rows.append((key, describe(tp), f.metadata.get("doc", ""), default))
    return rows

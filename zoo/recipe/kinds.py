"""The recipe kinds: which schema a recipe file of each kind loads into, in one registry.

`validate_file` checks any recipe file: a shipped one (`recipes/<kind>/*.yaml`) or one saved next to a
run (`results/pretrain/<run>/recipe.yaml`, `results/glue/<tag>/<task>/<cell>/recipe.yaml`). The file's
`kind:` key says which schema it loads into; a shipped recipe without one takes its folder's kind.
`zoo validate` and the test that loads every shipped recipe go through it. No command module needs to
be imported for this to work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import ZooError
from zoo.recipe.common import read_yaml


def validate_lm_recipe(raw: dict[str, Any], path: Path) -> None:
    """A pretrain/finetune recipe: it loads and resolves against the registries."""
    from zoo.recipe.lm import load_recipe, resolve

    resolve(load_recipe(raw, str(path)))


def validate_glue_recipe(raw: dict[str, Any], path: Path) -> None:
    """A GLUE recipe: it loads over the GLUE defaults and passes the grid checks."""
    from zoo.recipe.glue import glue_recipe_from

    glue_recipe_from(raw, str(path))


# kind -> check of a file's mapping (with its `kind` key set), raising a one-line ZooError
KINDS: dict[str, Callable[[dict[str, Any], Path], None]] = {
    "pretrain": validate_lm_recipe,
    "finetune": validate_lm_recipe,
    "glue": validate_glue_recipe,
}


def is_shipped(path: Path) -> bool:
    """Whether `path` is a shipped recipe, `recipes/<folder>/<name>.yaml`."""
    return path.resolve().parent.parent == paths.recipes_dir().resolve()


def recipe_kind(raw: dict[str, Any], path: Path) -> str:
    """The kind recipe file `path` declares with `kind:`, else (a shipped recipe) its folder's."""
    known = ", ".join(KINDS)
    folder = path.parent.name
    declared = raw.get("kind")
    if declared is None:
        if folder in KINDS:
            return folder
        raise ZooError(f"{path}: no 'kind' key, and its folder {folder!r} names no recipe kind; "
                       f"add `kind: ...` ({known})")
    if not isinstance(declared, str) or declared not in KINDS:
        raise ZooError(f"{path}: kind: unknown recipe kind {declared!r}; known: {known}")
    if folder in KINDS and folder != declared and is_shipped(path):
        raise ZooError(f"{path}: kind {declared!r} does not match its folder {folder!r}")
    return declared


def validate_file(path: Path) -> None:
    """Load and check one recipe file by the kind it declares (or its folder names); a one-line ZooError
    when it is not valid: invalid YAML (with the line), an empty file, an unknown kind, a bad key."""
    raw = read_yaml(path)
    kind = recipe_kind(raw, path)
    raw["kind"] = kind
    KINDS[kind](raw, path)

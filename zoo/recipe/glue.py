"""GLUE recipes: the typed schema, loading with overrides, and one normalised recipe per grid cell.

A GLUE recipe has the sections model, task, train (the pretraining `TrainSection` plus `batch_order`),
grid and eval.
`zoo glue MODEL` starts from `recipes/glue/classic.yaml` (the classic grid of the small-BERT papers:
batch size {8,16,32,64,128} x learning rate {1e-4,3e-4,3e-5,5e-5}, 4 epochs); `--recipe FILE`
starts from that file instead. Keys a file leaves out take the defaults of `GLUE_DEFAULTS` and then
of the dataclasses.

A cell is one (task, batch size, lr, seed). Its recipe has those values in task/train and a grid
section narrowed to exactly that cell, so the hash of a cell's recipe depends on the cell alone (not on
the rest of the grid it was run in), a single run and the same grid cell share one record, and
`zoo glue --recipe <cell>/recipe.yaml` reproduces the cell.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from zoo import paths
from zoo.glue.tasks import TASKS, get_task
from zoo.recipe.common import RecipeHead, TrainSection, apply_overrides, blame_overrides, dict_hash, merge, read_yaml
from zoo.recipe.schema import RecipeError, build, setting, to_dict

DEFAULT_RECIPE = "classic"
# Fine-tuning defaults that differ from pretraining's TrainSection (BERT's run_classifier settings).
GLUE_DEFAULTS: dict[str, Any] = {"train": {"epochs": 4.0, "warmup": 0.1, "log_every": 50}}


@dataclass
class GlueModelSection:
    name: str = setting("", doc="Registry name (`zoo ls`), hub id, zoo run id or checkpoint directory.")
    tokenizer: str = setting(
        "", doc="Tokenizer (mirror name, hub id or directory); empty: the checkpoint's own, else the registry's."
    )


@dataclass
class TaskSection:
    name: str = setting("rte", doc=f"GLUE task of a single run: {', '.join(TASKS)}.")
    max_length: int = setting(128, doc="Truncate each example (both sentences) to this many tokens.", low=8, high=8192)
    max_train_examples: int | None = setting(None, doc="Train on the first N examples only (smoke runs).", low=1)
    max_eval_examples: int | None = setting(None, doc="Evaluate on the first N dev examples only (smoke runs).",
                                            low=1)


BatchOrder = Literal["length-grouped", "shuffled-groups", "random"]


@dataclass
class GlueTrainSection(TrainSection):
    batch_order: BatchOrder = setting(
        "length-grouped",
        doc="Training batches: 'length-grouped' (the Trainer's group_by_length: mega-batches of "
            "`group_batches` batches, each sorted longest first), 'shuffled-groups' (the same batches in a "
            "random order) or 'random' (the standard recipe: random batches, more padding).",
    )
    group_batches: int | None = setting(
        4, doc="Batches per mega-batch of the length-grouped orders: fewer mix lengths more (closer to random "
               "batches, more padding); empty: the Trainer's N / (4 x batch), at most 50, which costs dev points "
               "on full-size tasks (benchmarks/bench_glue_quality.py).", low=1,
    )
    prune_vocabulary: bool = setting(
        True, doc="Train only the embedding rows of the tokens the task's text uses (exact: the same losses "
                  "and metrics, faster steps; zoo.glue.vocabulary).",
    )
    first_token_last_layer: bool = setting(
        True, doc="Compute the last encoder layer at the first ([CLS]) position only, the one position a BERT or "
                  "RoBERTa classifier reads (exact: the same losses and metrics, dropout included; "
                  "zoo.model.first_token).",
    )


@dataclass
class GridSection:
    tasks: list[str] = setting(factory=list, doc="Tasks of `--grid`; empty: every task whose data is available.")
    batch_sizes: list[int] = setting(factory=lambda: [8, 16, 32, 64, 128], doc="Batch sizes of the grid.")
    lrs: list[float] = setting(factory=lambda: [1e-4, 3e-4, 3e-5, 5e-5], doc="Peak learning rates of the grid.")
    seeds: list[int] = setting(factory=lambda: [42], doc="Seeds of the grid (one cell per seed).")


@dataclass
class GlueEvalSection:
    batch_size: int = setting(256, doc="Evaluation batch size (dev and test sets are sorted by length).", low=1)


@dataclass
class GlueRecipe(RecipeHead):
    kind: Literal["glue"] = setting("glue", doc="Always 'glue'.")
    model: GlueModelSection = setting(factory=GlueModelSection, doc="The model to fine-tune.")
    task: TaskSection = setting(factory=TaskSection, doc="Task and input length.")
    train: GlueTrainSection = setting(factory=GlueTrainSection, doc="Optimisation (batch_size, lr, seed: one cell).")
    grid: GridSection = setting(factory=GridSection, doc="The hyper-parameter grid of `--grid`.")
    eval: GlueEvalSection = setting(factory=GlueEvalSection, doc="Evaluation.")


def default_recipe_path() -> Path:
    return paths.recipes_dir() / "glue" / f"{DEFAULT_RECIPE}.yaml"


def load_glue_recipe(path: Path | None = None, overrides: list[str] | None = None) -> GlueRecipe:
    """The recipe in `path` (default: the classic grid) with defaults filled in and overrides applied."""
    path = path or default_recipe_path()
    return glue_recipe_from(read_yaml(path), str(path), overrides)


def glue_recipe_from(raw: dict[str, Any], source: str, overrides: list[str] | None = None) -> GlueRecipe:
    """A checked GlueRecipe from the mapping read from `source`, over `GLUE_DEFAULTS`, with `overrides`.

    A bad key of the mapping names `source`, one an override gave names the override
    (`--set train.lr: expected float, got 'fast'`).
    """
    overrides = overrides or []
    raw = merge(GLUE_DEFAULTS, raw)
    try:
        recipe = build(GlueRecipe, apply_overrides(raw, overrides), source)
        check(recipe, source)
    except RecipeError as exc:
        raise blame_overrides(exc, raw, overrides) from None
    return recipe


def _grid_error(source: str, axis: str, problem: str) -> RecipeError:
    """`source: grid.<axis> <problem>`, re-attributable to an override of grid.<axis>."""
    text = f"grid.{axis} {problem}"
    return RecipeError(f"{source}: {text}", source=source, path=("grid", axis), problem=text)


def check(recipe: GlueRecipe, source: str) -> None:
    """Cross-field checks the schema cannot express: known tasks, non-empty grid axes, unique values."""
    get_task(recipe.task.name)
    for name in recipe.grid.tasks:
        get_task(name)
    for axis in ("batch_sizes", "lrs", "seeds"):
        values = getattr(recipe.grid, axis)
        if not values:
            raise _grid_error(source, axis, "must list at least one value")
        if len(set(values)) != len(values):
            raise _grid_error(source, axis, f"lists a value twice: {values}")
    if any(b < 1 for b in recipe.grid.batch_sizes):
        raise _grid_error(source, "batch_sizes", f"must be >= 1, got {recipe.grid.batch_sizes}")
    if any(not 0 < lr <= 1 for lr in recipe.grid.lrs):
        raise _grid_error(source, "lrs", f"must be in (0, 1], got {recipe.grid.lrs}")


def cell_recipe(base: GlueRecipe, task: str, batch_size: int, lr: float, seed: int) -> GlueRecipe:
    """The normalised recipe of one cell: its values in task/train, the grid narrowed to it."""
    recipe = copy.deepcopy(base)
    recipe.task.name = get_task(task).key
    recipe.train = dataclasses.replace(recipe.train, batch_size=batch_size, lr=float(lr), seed=seed)
    recipe.grid = GridSection(tasks=[recipe.task.name], batch_sizes=[batch_size], lrs=[float(lr)], seeds=[seed])
    if not recipe.name:
        recipe.name = f"glue-{recipe.task.name}"
    return recipe


def single_cell(recipe: GlueRecipe) -> GlueRecipe:
    """The cell a recipe names without `--grid`: task.name, train.batch_size, train.lr, train.seed."""
    t = recipe.train
    return cell_recipe(recipe, recipe.task.name, t.batch_size, t.lr, t.seed)


def grid_cells(recipe: GlueRecipe, tasks: list[str]) -> list[GlueRecipe]:
    """Every cell of the grid over `tasks`, in task, batch size, lr, seed order."""
    g = recipe.grid
    return [cell_recipe(recipe, task, bs, lr, seed)
            for task in tasks for bs in g.batch_sizes for lr in g.lrs for seed in g.seeds]


def glue_recipe_yaml(recipe: GlueRecipe) -> str:
    return yaml.safe_dump(to_dict(recipe), sort_keys=False)


# Settings that change how a cell computes, never what: a cell run either way is the same cell.
EXECUTION_ONLY = ("prune_vocabulary", "first_token_last_layer", "report_to")


def glue_recipe_hash(recipe: GlueRecipe) -> str:
    data = to_dict(recipe)
    data["train"] = {k: v for k, v in data["train"].items() if k not in EXECUTION_ONLY}
    return dict_hash(data)


def format_lr(lr: float) -> str:
    """1e-4 -> '1e-04', 2.5e-5 -> '2.5e-05': short, and distinct for distinct grid values."""
    mantissa, exponent = f"{lr:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def cell_id(recipe: GlueRecipe) -> str:
    """`bs32-lr1e-04-s42-<recipe hash>`: readable, and unique per resolved cell recipe."""
    t = recipe.train
    return f"bs{t.batch_size}-lr{format_lr(t.lr)}-s{t.seed}-{glue_recipe_hash(recipe)}"

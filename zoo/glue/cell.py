"""A GLUE grid cell as plain data: its normalised recipe and the model as the user named it.

A cell is one (task, batch size, lr, seed). Its id ends in the hash of its recipe, so the same cell
has the same id in every grid, on every machine. `Cell.to_spec()` / `Cell.from_spec()` turn it into a
JSON-able dict and back: what a worker process, a Ray task or a Slurm array task receives to run it
with `zoo.glue.finetune.run_cell`. Nothing here imports torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.glue.tasks import GlueTask, get_task
from zoo.model.resolve import display_tag
from zoo.recipe.glue import GlueRecipe, cell_id, format_lr
from zoo.recipe.schema import build, to_dict
from zoo.record.schema import RECORD_FILE, GlueRecord
from zoo.record.store import read_if_readable


@dataclass
class Cell:
    """One grid cell: its normalised recipe and the model as the user named it."""

    recipe: GlueRecipe
    model: str

    @property
    def task(self) -> GlueTask:
        return get_task(self.recipe.task.name)

    @property
    def run_id(self) -> str:
        return cell_id(self.recipe)

    @property
    def tag(self) -> str:
        return display_tag(self.recipe.model.name)

    @property
    def directory(self) -> Path:
        """Where the cell's record goes: results/glue/<model tag>/<task>/<cell id>/."""
        return paths.results_dir() / "glue" / self.tag / self.task.key / self.run_id

    @property
    def work_dir(self) -> Path:
        """The cell's files that stay outside git: test predictions (QQP/MNLI files are large), rank notes."""
        return paths.checkpoints_dir() / "glue" / self.tag / self.task.key / self.run_id

    @property
    def predictions_dir(self) -> Path:
        return self.work_dir / "predictions"

    @property
    def label(self) -> str:
        t = self.recipe.train
        return f"{self.task.key} bs {t.batch_size} lr {format_lr(t.lr)} seed {t.seed}"

    def to_spec(self, **options: Any) -> dict[str, Any]:
        """The cell as JSON-able data (plus run options such as predict_test, started)."""
        return {"recipe": to_dict(self.recipe), "model": self.model, **options}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> Cell:
        return cls(build(GlueRecipe, spec["recipe"], "<cell spec>.recipe"), str(spec["model"]))


def read_cell_record(cell: Cell) -> GlueRecord | None:
    """The cell's record, or None when there is none (or it cannot be read: the cell runs again)."""
    return read_if_readable(cell.directory / RECORD_FILE, GlueRecord)


def is_done(cell: Cell) -> bool:
    record = read_cell_record(cell)
    return record is not None and record.ok

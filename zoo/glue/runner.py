"""GLUE as a library call: plan the cells a request names, run what is missing, summarise, bundle submissions.

`zoo glue` parses its command line into a `GlueRequest`, calls `plan_cells` (cheap, torch-free checks:
tasks, data, the model) and then `run_glue` in this process or in every rank of a launch. A remote
driver (Ray, Slurm) plans the same cells and runs each one with `zoo.glue.finetune.run_cell` on the
cell's `to_spec()`: the same cell ids, the same records, the same resume rule.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import ZooError
from zoo.glue import data
from zoo.glue.cell import Cell, is_done
from zoo.glue.summary import best_cells, summarize, write_summary
from zoo.glue.tasks import TASKS, get_task
from zoo.recipe.glue import GlueRecipe, grid_cells, single_cell
from zoo.train.ranks import is_distributed_launch, is_main_rank, shared_from_main


@dataclass
class GlueRequest:
    """What `zoo glue` was asked to do."""

    recipe: GlueRecipe  # model.name in its canonical spelling; grid.tasks as asked (empty: every task with data)
    model: str  # as the user named it
    grid: bool = False
    workers: int = 1
    predict_test: bool = False
    predict_dir: Path | None = None
    force: bool = False
    engine: str = "local"  # local (this machine: --workers or a launch), ray or slurm
    engine_options: dict[str, Any] = field(default_factory=dict)  # --ray ADDRESS, --gpus-per-cell, --slurm ...


@dataclass
class GlueResult:
    """What a request did: the grid report, the summary, and the submission folder (if asked for)."""

    report: Any
    summary: dict[str, Any]
    submission: Path | None = None
    files: list[str] = field(default_factory=list)


def available_tasks() -> list[str]:
    """Tasks whose train and dev data can be read now (mirror, or hub when online)."""
    return [key for key, task in TASKS.items() if data.task_available(task)]


def check_task_data(tasks: list[str]) -> None:
    missing = [key for key in tasks if not data.task_available(get_task(key))]
    if missing:
        task = get_task(missing[0])
        where = ", ".join(str(data.expected_local_path(s)) for s in task.splits if s.role in ("train", "dev"))
        raise ZooError(f"GLUE {task.name} data is not available offline; expected {where} "
                       "(or hub dataset nyu-mll/glue with network access)")


def plan(recipe: GlueRecipe, model: str, tasks: list[str]) -> list[Cell]:
    """Every cell of `recipe`'s grid over `tasks`, each checked to have its data."""
    check_task_data(tasks)
    return [Cell(cell, model) for cell in grid_cells(recipe, tasks)]


def plan_cells(request: GlueRequest) -> list[Cell]:
    """The cells of a request: the grid over its tasks, or the one cell the recipe names."""
    if not request.grid:
        return plan(single_cell(request.recipe), request.model, [request.recipe.task.name])
    tasks = request.recipe.grid.tasks or available_tasks()
    if not tasks:
        raise ZooError("no GLUE task has its data here: put glue_data/ under $ZOO_DATA_DIR or allow the hub")
    return plan(request.recipe, request.model, tasks)


def cells_to_run(cells: list[Cell], force: bool) -> int:
    return len(cells) if force else sum(not is_done(cell) for cell in cells)


def run_glue(request: GlueRequest, cells: list[Cell], on_outcome: Callable[[Any], None] | None = None) -> GlueResult:
    """Run the planned cells (in every rank of a launch), then the summary and, if asked, the submission.

    A grid rewrites results/glue/<tag>/summary.json with its tasks; a single cell leaves it alone. Raises
    KeyboardInterrupt after recording the cell in progress when interrupted.
    """
    report = execute(request, cells, on_outcome)
    if report is None:  # submitted to a cluster without --wait: the jobs run on after this process
        return GlueResult(None, {})
    summary = summary_of(request, cells) if is_main_rank() else None
    if is_distributed_launch():
        summary = shared_from_main(summary)
    if report.interrupted:
        raise KeyboardInterrupt
    result = GlueResult(report, summary or {})
    if request.predict_test:
        write_submission(request, cells, result)
    return result


def summary_of(request: GlueRequest, cells: list[Cell]) -> dict[str, Any]:
    """A grid rewrites its model's summary.json with its tasks; a single cell is summarised, not written."""
    return write_summary(cells, request.model) if request.grid else summarize(cells, request.model)


def execute(request: GlueRequest, cells: list[Cell], on_outcome: Callable[[Any], None] | None) -> Any:
    """Run the cells that are not done on the request's engine; the grid report (None: submitted, not waited for)."""
    if request.engine == "ray":
        from zoo.glue.ray_engine import run_on_ray

        return run_on_ray(request, cells, on_outcome)
    if request.engine == "slurm":
        from zoo.glue.slurm_engine import run_on_slurm

        return run_on_slurm(request, cells, on_outcome)
    from zoo.glue.grid import run_grid

    return run_grid(cells, workers=request.workers, predict_test=request.predict_test, force=request.force,
                    on_outcome=on_outcome)


def write_submission(request: GlueRequest, cells: list[Cell], result: GlueResult) -> None:
    """Make sure each task's best cell has test predictions (re-running it if not) and bundle them."""
    from zoo.glue.grid import run_claimed
    from zoo.glue.predict import assemble_submission

    main, launched = is_main_rank(), is_distributed_launch()
    files: dict[str, Path] = {}
    for key, cell in best_cells(cells, result.summary).items():
        needed = [s for s in cell.task.splits_for("test") if data.split_available(s)]
        missing = any(not (cell.predictions_dir / s.submission).is_file() for s in needed)
        if launched:
            missing = shared_from_main(missing)
        if missing:  # in a launch, a collective re-run; rank 0 writes
            if main:
                print(f"{key}: the best cell {cell.run_id} has no test predictions; running it again to make them")
            run_claimed(cell, predict_test=True, force=True)
            if main:
                result.summary = summary_of(request, cells)
        files.update({s.submission: cell.predictions_dir / s.submission for s in needed
                      if (cell.predictions_dir / s.submission).is_file()})
    if not main:
        return
    cell = cells[0]
    default = paths.checkpoints_dir() / "glue" / cell.tag / ("submission-smoke" if cell.recipe.smoke else "submission")
    out_dir = request.predict_dir or default
    result.submission, result.files = assemble_submission(files, out_dir), sorted(files)

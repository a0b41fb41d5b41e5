"""Leaderboard figures: loss curves of LM runs and GLUE grid heatmaps, as small committed PNGs.

`plot_jobs` lists every figure the tables link to (where it goes: zoo.leaderboard.load.Board), the
loss curves of every finished run included, those of runs the default tables leave out too (`--all-runs`
links them, and switching it does not churn files); `write_plots` draws them and deletes PNGs under
results/plots/ that nothing links any more. matplotlib
is imported only to draw (`--check` does without it) and runs on the Agg backend (no display). A PNG is
only rewritten when its bytes change and carries no software/date metadata, so regenerating the
leaderboard does not churn unchanged figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zoo.leaderboard.glue_view import GLUE_TASKS, TaskGrid
from zoo.leaderboard.load import PLOTS_DIR, Board, display_name, finite_points
from zoo.leaderboard.text import learning_rate

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 80


def new_figure(figsize: tuple[float, float]) -> tuple[Figure, Axes]:
    """A figure on matplotlib's Agg backend (no display); matplotlib is imported only to draw."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot.subplots(figsize=figsize)


def save_figure(figure: Figure, path: Path) -> bool:
    """Write `figure` as PNG to `path` unless the file already holds the same bytes; True if written."""
    buffer = io.BytesIO()
    from matplotlib import pyplot

    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    pyplot.close(figure)
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def loss_curve(history: Sequence[dict[str, Any]], path: Path, title: str) -> bool:
    """Train loss (line) and eval loss (markers) against the optimizer step."""
    figure, axes = new_figure((5, 3))
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "eval", "o-")):
        steps, values = finite_points(history, key)
        if steps:
            axes.plot(steps, values, style, label=label, markersize=4)
    axes.set(xlabel="step", ylabel="loss", title=title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def heatmap(scores: np.ndarray, batch_sizes: Sequence[Any], learning_rates: Sequence[str], path: Path,
            title: str, failed: np.ndarray | None = None, best: tuple[int, int] | None = None) -> bool:
    """Dev score (%) per batch size (rows) x learning rate (columns); NaN cells are blank or 'failed'.

    `best` (row, column) gets a red frame: the setting the GLUE table reports.
    """
    figure, axes = new_figure((1.2 + 1.1 * len(learning_rates), 1.0 + 0.6 * len(batch_sizes)))
    image = axes.imshow(np.ma.masked_invalid(scores), cmap="viridis", aspect="auto")
    for row, col in np.ndindex(scores.shape):
        value = scores[row, col]
        if math.isfinite(value):
            bright = image.norm(value) > 0.6  # viridis turns yellow: dark text reads better there
            text, colour = f"{value:.1f}", ("black" if bright else "white")
        else:
            text, colour = ("failed" if failed is not None and failed[row, col] else ""), "black"
        axes.text(col, row, text, ha="center", va="center", color=colour, fontsize=9)
    if best is not None:
        from matplotlib.patches import Rectangle

        axes.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axes.set_xticks(range(len(learning_rates)), labels=list(learning_rates))
    axes.set_yticks(range(len(batch_sizes)), labels=[str(b) for b in batch_sizes])
    axes.set(xlabel="learning rate", ylabel="batch size", title=title)
    return save_figure(figure, path)


# ---------------------------------------------------------------------------------------------- plot jobs


@dataclass(frozen=True)
class PlotJob:
    path: Path
    draw: Callable[[Path], bool]


def plot_jobs(board: Board) -> list[PlotJob]:
    """Every figure the leaderboard links to."""
    jobs = []
    for run in board.lm.to_dict("records"):
        path = board.loss_curve_path(run)
        if path is not None:
            title = f"{display_name(run)} · {run['corpus']} · {run['run_id']}"
            jobs.append(PlotJob(path, lambda p, h=run["history"], t=title: loss_curve(h, p, t)))
    for tag, grids in board.grids.items():
        for task, grid in grids.items():
            path = board.heatmap_path(tag, task)
            if path is not None:
                title = f"{tag} · {GLUE_TASKS[task].label}"
                jobs.append(PlotJob(path, lambda p, g=grid, t=title: draw_heatmap(g, p, t)))
    return jobs


def draw_heatmap(grid: TaskGrid, path: Path, title: str) -> bool:
    """The grid of one (model, task) as a heatmap, the setting the GLUE table uses framed."""
    scores = np.full((len(grid.batch_sizes), len(grid.lrs)), math.nan)
    failed = np.zeros(scores.shape, dtype=bool)
    for setting in grid.settings.values():
        at = grid.batch_sizes.index(setting.batch_size), grid.lrs.index(setting.lr)
        if setting.score is not None:
            scores[at] = 100 * setting.score
        failed[at] = setting.n_ok == 0
    best = grid.best_setting
    frame = (grid.batch_sizes.index(best[0]), grid.lrs.index(best[1])) if best else None
    return heatmap(scores, grid.batch_sizes, [learning_rate(lr) for lr in grid.lrs], path, title, failed, frame)


def write_plots(board: Board) -> tuple[int, int]:
    """Draw every linked figure (rewriting only changed PNGs) and delete PNGs nothing links any more.

    Returns (figures written, stale figures removed).
    """
    jobs = plot_jobs(board)
    written = sum(job.draw(job.path) for job in jobs)
    keep = {job.path for job in jobs}
    stale = [p for p in sorted((board.root / PLOTS_DIR).glob("*.png")) if p not in keep]
    for path in stale:
        path.unlink()
    return written, len(stale)

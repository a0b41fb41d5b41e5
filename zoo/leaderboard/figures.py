"""Leaderboard figures: loss curves of LM runs and GLUE grid heatmaps, as small committed PNGs.

matplotlib runs on the Agg backend (no display). A PNG is only rewritten when its bytes change and
carries no software/date metadata, so regenerating the leaderboard does not churn unchanged figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

DPI = 80


def save_figure(figure: Figure, path: Path) -> bool:
    """Write `figure` as PNG to `path` unless the file already holds the same bytes; True if written."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(figure)
    data = buffer.getvalue()
    if path.is_file() and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return True


def _finite_points(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of the history entries holding a finite `key`, one point per step."""
    points: dict[float, float] = {}
    for entry in history:
        value, step = entry.get(key), entry.get("step")
        if isinstance(value, (int, float)) and isinstance(step, (int, float)) and math.isfinite(value):
            points[float(step)] = float(value)
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def has_loss_curve(history: Sequence[dict[str, Any]]) -> bool:
    return any(_finite_points(history, key)[0] for key in ("loss", "eval_loss"))


def loss_curve(history: Sequence[dict[str, Any]], path: Path, title: str) -> bool:
    """Train loss (line) and eval loss (markers) against the optimizer step."""
    figure, axes = plt.subplots(figsize=(5, 3))
    for key, label, style in (("loss", "train", "-"), ("eval_loss", "eval", "o-")):
        steps, values = _finite_points(history, key)
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
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(learning_rates), 1.0 + 0.6 * len(batch_sizes)))
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
        axes.add_patch(Rectangle((best[1] - 0.5, best[0] - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=2))
    axes.set_xticks(range(len(learning_rates)), labels=list(learning_rates))
    axes.set_yticks(range(len(batch_sizes)), labels=[str(b) for b in batch_sizes])
    axes.set(xlabel="learning rate", ylabel="batch size", title=title)
    return save_figure(figure, path)

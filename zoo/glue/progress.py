"""What a GLUE run shows while it works, on a terminal; quiet (lines only) when output is not a terminal.

- One worker: a bar per cell (optimizer steps, with the epoch and the last dev metric as it goes), so a
  long single cell is never a silent terminal.
- Several workers (or a launch): one line per finished cell and an overall bar with cells done / left,
  ok / failed and an ETA.
Bars go to stderr through tqdm, which turns itself off when stderr is not a terminal (`disable=None`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from tqdm.auto import tqdm
from transformers import TrainerCallback

_CELL_BARS = {"on": False}


def show_cell_bars(on: bool) -> None:
    """Draw a bar per cell in this process (the one-worker case)."""
    _CELL_BARS["on"] = on


class CellBar(TrainerCallback):
    """A tqdm bar over a cell's optimizer steps, with its epoch and last dev metric."""

    def __init__(self, label: str, history: Any) -> None:
        self.label, self.history, self.bar = label, history, None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.bar = tqdm(total=state.max_steps, desc=self.label, unit="step", leave=False, disable=None,
                        file=sys.stderr, dynamic_ncols=True)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)
            self.bar.set_postfix_str(self.postfix(state), refresh=False)

    def on_evaluate(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.set_postfix_str(self.postfix(state))

    def postfix(self, state: Any) -> str:
        text = f"epoch {float(state.epoch or 0.0):.2f}"
        epochs = self.history.epochs
        if epochs and epochs[-1]["dev"]:
            text += ", dev " + " ".join(f"{k} {v:.3f}" for k, v in epochs[-1]["dev"].items())
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@contextlib.contextmanager
def cell_progress(trainer: Any, label: str, history: Any) -> Iterator[None]:
    """A bar for the cell `trainer` trains while the block runs, when cell bars are on here."""
    if not _CELL_BARS["on"]:
        yield
        return
    bar = CellBar(label, history)
    trainer.add_callback(bar)
    try:
        yield
    finally:
        bar.close()
        trainer.remove_callback(bar)


class GridProgress:
    """One line per finished cell and an overall bar (cells done / left, ok / failed, ETA)."""

    def __init__(self, total: int, bar: bool) -> None:
        self.total, self.done, self.ok, self.failed = total, 0, 0, 0
        self.bar = tqdm(total=total, desc="cells", unit="cell", disable=None if bar else True, file=sys.stderr,
                        dynamic_ncols=True)

    def cell_finished(self, line: str, status: str) -> None:
        self.done += 1
        self.ok += status == "ok"
        self.failed += status == "failed"
        self.bar.write(line, file=sys.stdout)
        sys.stdout.flush()
        self.bar.set_postfix_str(f"{self.ok} ok, {self.failed} failed, {self.total - self.done} left", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()

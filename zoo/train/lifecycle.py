"""One run's lifecycle, the same for every kind of run (pretrain, finetune, a GLUE cell).

    run = RunLifecycle(record, record_dir, notes_dir, recipe_yaml)
    run.begin()                 # outputs checked, start time, a new timed segment, the SIGTERM policy
    try:
        ...train, filling run.record...
        run.succeed()           # ok, unless a result is not a finite number (then failed, with the reason)
    except BaseException as exc:
        run.fail(exc)           # failed, with a one-line reason (led by other ranks' reasons in a launch)

The lifecycle owns the start and finish times (across the segments of a resumed run: `started_at` is
the first segment's start and `wall_time_s` the total of all segments), the status and its reason, the
failure notes of non-zero ranks, the SIGTERM policy (SIGTERM becomes `RankTerminated`, so a stopped run
still writes its record) and the one non-finite policy (`null` in JSON plus `status: failed` with the
reason). In a multi-process launch only global rank 0 writes the record and the recipe beside it.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from zoo.errors import ZooError
from zoo.files import atomic_write, check_writable
from zoo.record.environment import environment
from zoo.record.schema import RunRecord, Segment
from zoo.record.store import now_iso, write_record
from zoo.train.ranks import (
    RankTerminated,
    failure_reason,
    is_distributed_launch,
    is_main_rank,
    note_failure,
)

REASON_LIMIT = 500


def one_line(reason: str) -> str:
    """A failure reason as records keep it: whitespace collapsed, at most REASON_LIMIT characters."""
    return " ".join(reason.split())[:REASON_LIMIT]


def non_finite_results(results: dict[str, Any]) -> list[str]:
    """'name=value' for every result that is missing or not a finite number."""
    bad = []
    for name, value in results.items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            bad.append(f"{name}={value}")
    return bad


def _raise_terminated(signum: int, frame: Any) -> None:
    if is_distributed_launch():
        raise RankTerminated("stopped by the launcher (SIGTERM): another process of the launch failed or was stopped")
    raise RankTerminated("stopped by SIGTERM")


def _set_sigterm(handler: Any) -> Any:
    """Install a SIGTERM handler (main thread only: elsewhere Python cannot); returns the previous one."""
    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, handler)


def stop_on_sigterm() -> Any:
    """Turn SIGTERM into `RankTerminated`, so that a stopped run still records why it stopped."""
    return _set_sigterm(_raise_terminated)


def ignore_sigterm() -> Any:
    """While a failure is being recorded: a second SIGTERM must not cut the record short."""
    return _set_sigterm(signal.SIG_IGN)


@dataclass
class RunLifecycle:
    """The bookkeeping of one run around its work; see the module docstring."""

    record: RunRecord
    record_dir: Path
    notes_dir: Path  # beside the checkpoints: where non-zero ranks leave their failure notes
    recipe_yaml: str
    earlier: list[Segment] = field(default_factory=list)  # the segments of the run before this resume
    _t0: float = field(default=0.0, init=False)
    _sigterm: Any = field(default=None, init=False)  # the handler before begin(), restored at the end

    @property
    def main(self) -> bool:
        return is_main_rank()

    def begin(self, started: str | None = None, from_step: int | None = None) -> None:
        """Check the outputs, start the clock and a new segment; `started`: rank 0's time in a launch."""
        if self.main:
            check_writable(self.record_dir, "the run record")
            check_writable(self.notes_dir, "the run's checkpoints")
        self._t0 = time.monotonic()
        now = started or now_iso()
        self.record.segments = [*self.earlier, Segment(started_at=now, from_step=from_step)]
        self.record.started_at = self.record.segments[0].started_at
        self._sigterm = stop_on_sigterm()

    @property
    def segment_started(self) -> str:
        return self.record.segments[-1].started_at

    def succeed(self) -> None:
        """Finish as ok, or as failed when a result is not a finite number."""
        bad = non_finite_results(self.record.results())
        if bad:
            self.record.status, self.record.reason = "failed", one_line(f"NonFiniteResult: {', '.join(bad)}")
        else:
            self.record.status, self.record.reason = "ok", None
        self._finish()

    def fail(self, exc: BaseException) -> None:
        """Finish as failed with the reason `exc` gives (in rank 0 of a launch, led by the other ranks')."""
        ignore_sigterm()  # the launcher (or a user) stopping this process must not cut its record or note short
        reason = one_line(failure_reason(exc, self.notes_dir, self.segment_started))
        self.record.status, self.record.reason = "failed", reason
        if self.main:
            self._finish()
        else:
            note_failure(self.notes_dir, self.segment_started, reason)
            self._restore()

    def _restore(self) -> None:
        if self._sigterm is not None:
            _set_sigterm(self._sigterm)

    def save_progress(self) -> None:
        """Write the record as it stands, `status: running` (at the start of training and at each checkpoint):
        a run killed outright (SIGKILL, power loss) then still has its segments' times for a resume."""
        if not self.main:
            return
        segment = self.record.segments[-1]
        segment.wall_time_s = round(time.monotonic() - self._t0, 2)
        self._write()

    @property
    def failed(self) -> bool:
        return self.record.status == "failed"

    def _finish(self) -> None:
        if not self.main:
            self._restore()
            return
        segment = self.record.segments[-1]
        segment.finished_at, segment.wall_time_s = now_iso(), round(time.monotonic() - self._t0, 2)
        self.record.finished_at = segment.finished_at
        try:
            self._write()
        finally:
            self._restore()

    def _write(self) -> None:
        self.record.wall_time_s = round(sum(s.wall_time_s or 0.0 for s in self.record.segments), 2)
        self.record.environment = environment()
        try:
            atomic_write(self.record_dir / self.record.recipe, self.recipe_yaml)
            write_record(self.record_dir, self.record)
        except OSError as exc:
            raise ZooError(f"cannot write the run record in {self.record_dir}: {exc.strerror or exc}") from None

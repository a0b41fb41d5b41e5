"""The ranks of a multi-process launch: who am I, agreeing through rank 0, failing together.

In a launch (see zoo.train.launch) every rank runs the same command; only global rank 0 prints and
writes records and tables. The ranks agree on the run id through rank 0, and fail together: a rank
that fails leaves a one-line note beside the checkpoints, the launcher stops the others (SIGTERM,
turned into `RankTerminated` here), and rank 0 writes the failed record with the failing rank's reason.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from typing import Any

from zoo.files import atomic_write


def world_size() -> int:
    """Processes in this launch (1 when not launched by the deepspeed launcher or torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_distributed_launch() -> bool:
    """True inside a process started by the deepspeed launcher or torchrun with several ranks."""
    return world_size() > 1


def is_main_rank() -> bool:
    """True in the one process that prints, writes records, checkpoints and tables (global rank 0)."""
    return int(os.environ.get("RANK", "0")) == 0


class RankTerminated(Exception):
    """This process was told to stop (SIGTERM): in a launch, normally by the launcher after another rank
    failed (zoo.train.lifecycle turns the signal into this exception)."""


def free_port() -> int:
    """A TCP port nobody listens on right now (for a launch on this machine only)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def as_single_rank() -> None:
    """Make a process started without a launcher a 1-process launch, as DeepSpeed needs (else it looks for MPI)."""
    if "RANK" in os.environ:
        return
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))


def join_launch() -> None:
    """Join the launch's process group now (DeepSpeed's backend: nccl on GPUs, gloo on CPU); idempotent."""
    import deepspeed
    import torch

    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    deepspeed.init_distributed(verbose=False)


def leave_launch() -> None:
    """The end of a multi-process command, in every rank: wait for the others, close the process group.

    Without it a rank that finishes first exits while another still holds its gloo connection, and
    that one can die in C++ ("terminate called without an active exception") after doing all its work.
    """
    import torch.distributed as dist

    if is_distributed_launch() and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shared_from_main(value: Any) -> Any:
    """`value` as global rank 0 has it, in every rank (a picklable object)."""
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def failure_note_path(directory: Path, rank: int) -> Path:
    return directory / f"failed-rank{rank}.json"


def note_failure(directory: Path, started: str, reason: str) -> None:
    """A non-zero rank's reason for failing, for rank 0 to put in the record."""
    rank = int(os.environ.get("RANK", "0"))
    with contextlib.suppress(OSError):  # a note is a courtesy; the launcher fails the run anyway
        atomic_write(failure_note_path(directory, rank), json.dumps({"started": started, "rank": rank,
                                                                      "reason": reason}))


def peer_failures(directory: Path, started: str) -> list[str]:
    """'rank N: reason' for every other rank that failed in this run (notes of earlier runs are ignored)."""
    found = []
    for path in sorted(directory.glob("failed-rank*.json")):
        try:
            note = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if note.get("started") == started:
            found.append(f"rank {note['rank']}: {note['reason']}")
    return found


def failure_reason(exc: BaseException, notes_dir: Path, started: str) -> str:
    """Why this rank stopped, one line; in rank 0 of a launch, led by the reasons other ranks noted."""
    own = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"{exc.__class__.__name__}: {exc}"
    own = (own.splitlines() or [""])[0]
    peers = peer_failures(notes_dir, started) if is_distributed_launch() and is_main_rank() else []
    if not peers:
        return own
    return "; ".join(peers) + ("" if isinstance(exc, RankTerminated) else f" (rank 0: {own})")

"""Trainer checkpoints (`checkpoints/<run>/checkpoint-N/`) that a resume can trust.

The HF Trainer writes a checkpoint's files one after another into `checkpoint-N/` and `trainer_state.json`
last. A process killed while saving leaves a directory that looks like a checkpoint but is not one (no
`trainer_state.json`, a 0-byte `optimizer.pt`). `resumable_checkpoint` skips such a directory, says so in
one line and removes it (it cannot be resumed from, and the Trainer would later save into it), and
returns the newest complete checkpoint.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

STATE_FILE = "trainer_state.json"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(directory: Path) -> int:
    match = CHECKPOINT.match(directory.name)
    return int(match.group(1)) if match else -1


def incomplete_reason(directory: Path) -> str | None:
    """Why `directory` is not a complete checkpoint, or None when it is one."""
    state = directory / STATE_FILE
    if not state.is_file():
        return f"no {STATE_FILE}"
    try:
        json.loads(state.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return f"{STATE_FILE} is not readable JSON"
    empty = sorted(f.name for f in directory.rglob("*") if f.is_file() and f.stat().st_size == 0)
    return f"{empty[0]} is empty" if empty else None


def resumable_checkpoint(output_dir: Path) -> str | None:
    """The newest complete `checkpoint-N` under `output_dir` (None when there is none); newer incomplete ones
    are reported on stderr and removed."""
    if not output_dir.is_dir():
        return None
    candidates = sorted((d for d in output_dir.iterdir() if d.is_dir() and CHECKPOINT.match(d.name)),
                        key=checkpoint_step, reverse=True)
    for directory in candidates:
        reason = incomplete_reason(directory)
        if reason is None:
            return str(directory)
        print(f"zoo: {directory} is incomplete ({reason}: its save was interrupted); removed it, resuming from "
              "the checkpoint before it", file=sys.stderr)
        shutil.rmtree(directory, ignore_errors=True)
    return None

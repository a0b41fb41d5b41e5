"""Files zoo writes: whole or not at all."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write `text` to `path` via a temporary file in the same directory and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; records are shared files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(directory: Path, what: str) -> None:
    """Make `directory` (and its parents) and prove a file can be created in it, before any work is done;
    a one-line ZooError naming the location otherwise."""
    from zoo.errors import ZooError

    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".zoo-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ZooError(f"{directory}: cannot write {what} there ({exc.strerror or exc})") from None

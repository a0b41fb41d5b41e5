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
    """Prove that `directory` can be made and written, before any work is done, leaving nothing behind: a
    probe file is created and removed in its nearest existing ancestor. A one-line ZooError otherwise."""
    from zoo.errors import ZooError

    existing = directory
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    try:
        if not existing.is_dir():
            raise NotADirectoryError(20, "not a directory", str(existing))
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".zoo-write-check.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        where = f" ({exc.filename} is {exc.strerror.lower()})" if exc.filename and exc.filename != str(directory) \
            else f" ({exc.strerror or exc})"
        raise ZooError(f"{directory}: cannot write {what} there{where}") from None

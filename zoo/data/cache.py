"""The one cache builder for every "build once, share" artefact (packed LM tokens, tokenized GLUE splits).

Several processes (the ranks of a launch, the cells of a GLUE grid, two terminals) may ask for the
same cache entry at once. `build_once(final, build, describe)` makes exactly one of them build it:

- Lock: `fcntl.flock` on `<final>.lock`, an OS lock the kernel releases when its holder's file is
  closed, so a builder that dies (even by `kill -9`) never leaves a lock that others wait on forever.
  A process that finds the lock held prints one line to stderr (`zoo: waiting for <pid> to finish
  building <describe> (<final>)`) and blocks on the lock, with no timeout. The holder writes its pid
  into the lock file for that message, and unlinks the file before it lets go; a waiter that then
  gets the lock of an unlinked file notices (its inode is no longer the one at the path) and locks
  the path again. After taking the lock the holder looks again (someone may just have finished).
  Locks are a same-node guarantee: on network filesystems whose flock is not coherent across nodes
  two nodes may both build; each then builds in its own temporary directory and the second one finds
  the first one's complete entry and discards its own.
- Rename: the entry is built into a private `<final>.tmp<pid>` directory, its manifest is written
  last, and the directory is renamed onto `final` with `os.replace`, so `final` never exists half
  built. Temporary siblings left by dead builders (pid no longer alive) are removed by the next
  holder of the lock.
- Manifest: `final/manifest.json` lists every file the build wrote with its size and a blake2b
  checksum. Every open (`build_once` on an existing entry, or `verify`) checks sizes and checksums:
  the whole file up to `FULL_CHECKSUM_BYTES` (64 MiB: blake2b reads ~480 MB/s on one core here, so
  the 22 MB Wikipedia token cache opens in ~0.05 s), and for bigger files the size and 64 evenly
  spaced 64 KiB blocks, so that opening a multi-gigabyte corpus stays cheap (a truncation is always
  caught, by the size; an overwrite only where a sample covers it). An entry that fails (truncated,
  overwritten, no manifest: built by an older zoo) is said to be damaged in one line on stderr and
  rebuilt; `verify` alone raises `CacheDamaged` (a `ZooError` naming the file and the directory to
  delete). Files added after the build (for instance `datasets` cache files next to the arrow
  files) are not in the manifest and are ignored. Since every open verifies, nothing is fsynced: a
  rename that reached the disk before its data (power loss) reads as damage and is rebuilt.
- Identity: `file_identity(paths)` is the one fingerprint of source files (resolved path, size,
  mtime in ns) that cache keys are made of.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from zoo.errors import ZooError

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
FULL_CHECKSUM_BYTES = 64 << 20
SAMPLES = 64
SAMPLE_BYTES = 64 << 10
READ_CHUNK = 1 << 20


class CacheDamaged(ZooError):
    """A cache entry whose files do not match its manifest (or that has none): one line, with the remedy."""

    def __init__(self, directory: Path, problem: str) -> None:
        super().__init__(f"{problem}; delete {directory} to rebuild it")
        self.directory, self.problem = directory, problem

    def __reduce__(self) -> tuple[Any, ...]:  # picklable across process pools
        return type(self), (self.directory, self.problem)


def file_identity(paths: Iterable[Path]) -> list[list[Any]]:
    """[resolved path, size, mtime_ns] of each file (just [resolved path] for a directory or a missing file)."""
    identity: list[list[Any]] = []
    for path in paths:
        resolved = Path(path).resolve()
        if resolved.is_file():
            stat = resolved.stat()
            identity.append([str(resolved), stat.st_size, stat.st_mtime_ns])
        else:
            identity.append([str(resolved)])
    return identity


# --------------------------------------------------------------------------- manifest


def checksum(path: Path, size: int) -> str:
    """blake2b of the whole file up to FULL_CHECKSUM_BYTES, else of the size and SAMPLES evenly spaced blocks."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as fh:
        if size <= FULL_CHECKSUM_BYTES:
            while chunk := fh.read(READ_CHUNK):
                digest.update(chunk)
        else:
            digest.update(str(size).encode())
            block = min(SAMPLE_BYTES, max(1, size // SAMPLES))
            for i in range(SAMPLES):  # the first block starts the file, the last one ends it
                fh.seek(i * (size - block) // (SAMPLES - 1))
                digest.update(fh.read(block))
    return digest.hexdigest()


def write_manifest(directory: Path, describe: str) -> dict[str, Any]:
    """Record size and checksum of every file under `directory` in `directory/manifest.json` (written last)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MANIFEST):
        size = path.stat().st_size
        files[path.relative_to(directory).as_posix()] = {"size": size, "blake2b": checksum(path, size)}
    manifest = {"format": MANIFEST_FORMAT, "describe": describe, "built_by": os.getpid(),
                "built_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "files": files}
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def verify(directory: Path) -> dict[str, Any]:
    """The manifest of a complete cache entry; CacheDamaged naming the first file that does not match it."""
    directory = Path(directory)
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CacheDamaged(directory, f"{directory}: no readable {MANIFEST} (older or foreign build)") from None
    for name, expected in files.items():
        path = directory / name
        try:
            size = path.stat().st_size
        except OSError:
            raise CacheDamaged(directory, f"{path}: missing from the cache") from None
        if size != expected["size"]:
            raise CacheDamaged(directory, f"{path}: {size} bytes, the manifest says {expected['size']} (truncated?)")
        if checksum(path, size) != expected["blake2b"]:
            raise CacheDamaged(directory, f"{path}: checksum differs from the manifest (overwritten?)")
    return manifest


# --------------------------------------------------------------------------- lock


def pid_alive(pid: int) -> bool:
    """True when process `pid` exists and is not a zombie (a killed child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


def lock_path(final: Path) -> Path:
    return final.with_name(final.name + ".lock")


def _lock(final: Path, describe: str) -> int:
    """Hold `<final>.lock` (blocking); returns the descriptor. Prints one line when another process holds it."""
    path, announced = lock_path(final), False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not announced:
                holder = _read_holder(path)
                print(f"zoo: waiting for {holder} to finish building {describe} ({final})", file=sys.stderr,
                      flush=True)
                announced = True
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except BaseException:
                os.close(fd)
                raise
        try:
            at_path = os.stat(path)
        except FileNotFoundError:
            at_path = None
        held = os.fstat(fd)
        if at_path is not None and (at_path.st_ino, at_path.st_dev) == (held.st_ino, held.st_dev):
            os.ftruncate(fd, 0)
            os.write(fd, str(os.getpid()).encode())
            return fd
        os.close(fd)  # the previous holder unlinked this file before releasing it: lock the path anew


def _read_holder(path: Path) -> str:
    try:
        pid = path.read_text().strip()
    except OSError:
        pid = ""
    return pid if pid.isdigit() else "another process"


def _unlock(final: Path, fd: int) -> None:
    lock_path(final).unlink(missing_ok=True)  # before releasing: a waiter sees the unlink and relocks
    os.close(fd)


def remove_dead_temporaries(final: Path, grace: float = 1.0) -> list[Path]:
    """Remove `<final>.tmp<pid>` siblings whose builder is dead (or is this process); call with the lock held.

    A builder killed mid-build releases the lock a moment before it is gone from the process table,
    so a pid that still looks alive is given `grace` seconds to die; one alive after that (a reused
    pid, or a builder on another node of a network filesystem) keeps its directory.
    """
    pattern = re.compile(re.escape(final.name) + r"\.tmp(\d+)")
    removed = []
    for sibling in final.parent.glob(final.name + ".tmp*"):
        match = pattern.fullmatch(sibling.name)
        if match and (int(match[1]) == os.getpid() or _dies_within(int(match[1]), grace)):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _dies_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


# --------------------------------------------------------------------------- build once


def _damage(final: Path) -> str | None:
    """None when `final` is complete, '' when it does not exist, else what is wrong with it."""
    if not final.exists():
        return ""
    try:
        verify(final)
    except CacheDamaged as exc:
        return exc.problem
    return None


def build_once(final: Path, build: Callable[[Path], None], describe: str) -> Path:
    """`final`, built by `build(tmp_dir)` unless a complete, verified copy exists; see the module docstring.

    `build` writes its files into the empty directory it is given; that directory becomes `final`.
    """
    final = Path(final)
    if _damage(final) is None:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    fd = _lock(final, describe)
    try:
        problem = _damage(final)
        if problem is None:  # built by the process we waited for
            return final
        if problem:
            print(f"zoo: {problem}; rebuilding {describe}", file=sys.stderr, flush=True)
        remove_dead_temporaries(final)
        tmp = final.with_name(f"{final.name}.tmp{os.getpid()}")
        tmp.mkdir()
        try:
            build(tmp)
            write_manifest(tmp, describe)
            _move_into_place(tmp, final)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    finally:
        _unlock(final, fd)
    return final


def _move_into_place(tmp: Path, final: Path) -> None:
    if final.exists():
        if _damage(final) is None:  # another node built it (flock not coherent there): keep theirs
            return
        shutil.rmtree(final)
    try:
        os.replace(tmp, final)
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST) or _damage(final) is not None:
            raise

"""Run records: one JSON per run under results/<kind>/<run-id>/, written atomically.

A record directory holds `run.json` (status, metrics, timings, environment) and `recipe.yaml`, the
resolved recipe that reproduces the run (`zoo <kind> --recipe results/<kind>/<run-id>/recipe.yaml`).
`run.json` is written last, through a temporary file and a rename: a record is never half-written.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from datetime import datetime, timezone
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from typing import Any

from zoo import paths
from zoo.errors import ZooError

RECORD_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
PACKAGES = ("zoo", "torch", "transformers", "datasets", "deepspeed", "tokenizers", "numpy")


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


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_run_id(name: str) -> str:
    """`<recipe name>-<UTC timestamp>`, sortable and unique per second and process."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{name}-{stamp}"


def run_dir(kind: str, run_id: str) -> Path:
    return paths.results_dir() / kind / run_id


@lru_cache(maxsize=1)
def library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return versions


def hardware() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpus": torch.cuda.device_count(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["device"] = info.get("gpu") or f"CPU x{os.cpu_count()}"
    return info


@lru_cache(maxsize=1)
def git_commit() -> dict[str, Any]:
    """The commit of the project checkout the command runs from, and whether it had local changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip() != ""
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}
    return {"commit": sha, "dirty": dirty}


def environment() -> dict[str, Any]:
    return {"hardware": hardware(), "versions": library_versions(), "git": git_commit()}


def write_record(directory: Path, record: dict[str, Any]) -> Path:
    """Write run.json atomically; returns its path."""
    path = directory / RECORD_FILE
    atomic_write(path, json.dumps(record, indent=2, sort_keys=False, default=str) + "\n")
    return path


def read_record(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ZooError(f"{path}: not a readable run record ({exc})") from None


def iter_records(kind: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """(run.json path, record) for every record under results/ (optionally of one kind), sorted."""
    root = paths.results_dir()
    pattern = f"{kind}/**/{RECORD_FILE}" if kind else f"**/{RECORD_FILE}"
    return [(p, read_record(p)) for p in sorted(root.glob(pattern))]


def find_run(run_id: str) -> tuple[Path, dict[str, Any]] | None:
    """The record of run `run_id` in any kind, or None."""
    root = paths.results_dir()
    for path in sorted(root.glob(f"*/{run_id}/{RECORD_FILE}")):
        return path, read_record(path)
    return None

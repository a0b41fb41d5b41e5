"""benchmarks/_common.py: a stopped benchmark leaves no arm process behind, nor its scratch directories."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[1].startswith("Z"))


@pytest.mark.skipif(sys.platform != "linux", reason="PR_SET_PDEATHSIG is Linux's")
def test_an_arm_dies_with_its_killed_benchmark(tmp_path: Path) -> None:
    arm_script = tmp_path / "sleeper.py"
    pid_file = tmp_path / "arm.pid"
    arm_script.write_text(f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\ntime.sleep(120)\n")
    parent = subprocess.Popen([sys.executable, "-c", "import sys; sys.path.insert(0, sys.argv[1]); import _common; "
                               f"_common.run_arm({str(arm_script)!r}, 'x', {{}})", str(BENCHMARKS)])
    deadline = time.monotonic() + 60
    while not (pid_file.exists() and pid_file.read_text()) and time.monotonic() < deadline:
        time.sleep(0.1)
    arm = int(pid_file.read_text())
    assert alive(arm)
    parent.send_signal(signal.SIGKILL)  # no handler, no cleanup: only the kernel can stop the arm now
    parent.wait()
    deadline = time.monotonic() + 10
    while alive(arm) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(arm)


def test_scratch_dirs_restore_the_environment_they_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import _common

    monkeypatch.setenv("ZOO_RESULTS_DIR", "/kept/results")
    monkeypatch.delenv("ZOO_CHECKPOINT_DIR", raising=False)
    monkeypatch.delenv("ZOO_CACHE_DIR", raising=False)
    with _common.scratch_dirs(own_cache=False) as root:
        assert os.environ["ZOO_RESULTS_DIR"] == str(root / "results")
        assert os.environ["ZOO_CHECKPOINT_DIR"] == str(root / "checkpoint")
        assert "ZOO_CACHE_DIR" not in os.environ
        assert root.is_dir()
    assert os.environ["ZOO_RESULTS_DIR"] == "/kept/results"
    assert "ZOO_CHECKPOINT_DIR" not in os.environ
    assert not root.exists()

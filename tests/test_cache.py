"""The one cache builder: flock released by a killed builder, one build among concurrent callers,
damaged entries detected and rebuilt, the packed-token and GLUE caches built through it.

Builders run in real subprocesses and are killed with SIGKILL; nothing of zoo.data.cache is mocked.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from zoo.data import cache
from zoo.data.cache import CacheDamaged, build_once, file_identity, verify

ROOT = Path(__file__).resolve().parents[1]

# build_once(final) in a fresh process; its build logs its pid to `log`, sleeps `delay` s, writes data.bin
BUILDER = """
import os, sys, time
from pathlib import Path
from zoo.data.cache import build_once
final, delay, log = Path(sys.argv[1]), float(sys.argv[2]), Path(sys.argv[3])
def build(tmp):
    with open(log, "a") as fh:
        fh.write(f"{os.getpid()}\\n")
    (tmp / "started").write_text("yes")
    time.sleep(delay)
    (tmp / "data.bin").write_bytes(bytes(range(256)) * 64)
print(build_once(final, build, "the test artefact"), flush=True)
"""

# prepare_splits on the mirror's Wikipedia with the bert-base-uncased tokenizer
PREPARE = """
from zoo.data.packing import prepare_splits
from zoo.data.tokenization import load_tokenizer
from zoo.recipe.lm import DataSection
splits, fingerprint = prepare_splits(DataSection(corpus="wikipedia", max_documents=1024),
                                     load_tokenizer("bert-base-uncased"))
print(fingerprint, splits["train"].tokens, splits["validation"].tokens, flush=True)
"""


def spawn(script: str, *args: object, stderr: Path) -> subprocess.Popen[str]:
    with open(stderr, "w") as err:
        return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=err)


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def leftovers(final: Path) -> list[str]:
    """Siblings of a finished entry: temporaries and lock files that should not be there."""
    return sorted(p.name for p in final.parent.iterdir() if p.name != final.name)


def count_builds(log: Path) -> int:
    return len(log.read_text().split()) if log.exists() else 0


def test_a_killed_builder_releases_the_lock_and_the_waiter_takes_over(tmp_path: Path) -> None:
    final, log = tmp_path / "entries" / "thing", tmp_path / "builds.log"
    slow = spawn(BUILDER, final, 600, log, stderr=tmp_path / "slow.err")
    slow_tmp = final.with_name(f"thing.tmp{slow.pid}")
    wait_until((slow_tmp / "started").exists, 60, "the slow builder to start")
    waiter = spawn(BUILDER, final, 0, log, stderr=tmp_path / "waiter.err")
    message = f"zoo: waiting for {slow.pid} to finish building the test artefact ({final})"
    wait_until(lambda: message in (tmp_path / "waiter.err").read_text(), 60, "the waiting message")
    slow.send_signal(signal.SIGKILL)
    slow.wait()
    killed = time.monotonic()
    out, _ = waiter.communicate(timeout=30)
    took_over = time.monotonic() - killed
    assert waiter.returncode == 0, (tmp_path / "waiter.err").read_text()
    assert took_over < 10, f"the waiter needed {took_over:.1f} s after the holder died"
    assert out.strip() == str(final)
    assert (tmp_path / "waiter.err").read_text().count("zoo: waiting") == 1
    assert count_builds(log) == 2 and sorted(verify(final)["files"]) == ["data.bin", "started"]
    assert leftovers(final) == []  # the dead builder's thing.tmp<pid> and the lock file are gone


def test_a_builder_killed_mid_prepare_splits_leaves_nothing_that_blocks_the_next(tmp_path: Path) -> None:
    packed = tmp_path / "cache" / "packed"
    first = spawn(PREPARE, stderr=tmp_path / "first.err")

    def train_bin_growing() -> bool:
        return any(p.stat().st_size > 0 for p in packed.glob(f"*.tmp{first.pid}/train.bin"))

    wait_until(lambda: train_bin_growing() or first.poll() is not None, 120, "train.bin to grow")
    assert first.poll() is None, (tmp_path / "first.err").read_text()
    first.send_signal(signal.SIGKILL)
    first.wait()
    (dead_tmp,) = packed.glob(f"*.tmp{first.pid}")
    assert not (dead_tmp / "meta.json").exists()  # killed mid-build: the train split was still being written
    second = spawn(PREPARE, stderr=tmp_path / "second.err")
    out, _ = second.communicate(timeout=120)
    assert second.returncode == 0, (tmp_path / "second.err").read_text()
    fingerprint, train_tokens, validation_tokens = out.split()
    final = packed / fingerprint
    assert dead_tmp.name.startswith(fingerprint) and not dead_tmp.exists()
    assert int(train_tokens) > 1_000_000 and int(validation_tokens) > 0
    assert sorted(verify(final)["files"]) == ["meta.json", "train.bin", "validation.bin"]
    assert leftovers(final) == [] and "waiting" not in (tmp_path / "second.err").read_text()


def test_concurrent_builders_build_once_and_share_the_entry(tmp_path: Path) -> None:
    final, log = tmp_path / "entries" / "shared", tmp_path / "builds.log"
    procs = [spawn(BUILDER, final, 2, log, stderr=tmp_path / f"{i}.err") for i in range(2)]
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outs == [str(final), str(final)] and count_builds(log) == 1
    assert sorted(verify(final)["files"]) == ["data.bin", "started"] and leftovers(final) == []


def write_two_files(counter: list[int]) -> Callable[[Path], None]:
    def build(tmp: Path) -> None:
        counter.append(1)
        (tmp / "small.txt").write_text("hello")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "data.bin").write_bytes(os.urandom(10_000))

    return build


def test_truncated_or_overwritten_files_are_detected_and_rebuilt(tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    final, built = tmp_path / "entry", []
    build = write_two_files(built)
    assert build_once(final, build, "the test entry") == final and len(built) == 1
    assert build_once(final, build, "the test entry") == final and len(built) == 1  # complete: opened only
    data = final / "sub" / "data.bin"

    data.write_bytes(data.read_bytes()[:5000])  # truncated
    with pytest.raises(CacheDamaged, match=rf"{data}: 5000 bytes, the manifest says 10000 .*delete {final}"):
        verify(final)
    build_once(final, build, "the test entry")
    assert len(built) == 2 and data.stat().st_size == 10_000 and verify(final)
    assert f"zoo: {data}: 5000 bytes, the manifest says 10000 (truncated?); rebuilding the test entry" in \
        capsys.readouterr().err

    with open(data, "r+b") as fh:  # same size, different bytes
        fh.seek(1234)
        flipped = bytes(b ^ 0xFF for b in fh.read(8))
        fh.seek(1234)
        fh.write(flipped)
    with pytest.raises(CacheDamaged, match=r"data.bin: checksum differs from the manifest"):
        verify(final)
    build_once(final, build, "the test entry")
    assert len(built) == 3 and "checksum differs" in capsys.readouterr().err and verify(final)

    (final / "manifest.json").unlink()  # an entry from an older zoo, without a manifest
    build_once(final, build, "the test entry")
    assert len(built) == 4 and "no readable manifest.json" in capsys.readouterr().err
    assert leftovers(final) == []


def test_big_files_are_checked_by_size_and_sampled_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "FULL_CHECKSUM_BYTES", 4096)  # 10 kB counts as big here
    final = tmp_path / "entry"
    build_once(final, write_two_files([]), "the test entry")
    data = final / "sub" / "data.bin"
    original = data.read_bytes()
    data.write_bytes(bytes([original[0] ^ 0xFF]) + original[1:])  # the first sampled block
    with pytest.raises(CacheDamaged, match="checksum differs"):
        verify(final)
    data.write_bytes(original + b"x")
    with pytest.raises(CacheDamaged, match="10001 bytes, the manifest says 10000"):
        verify(final)


def test_file_identity_is_resolved_path_size_and_mtime_ns(tmp_path: Path) -> None:
    path = tmp_path / "a.txt"
    path.write_text("abc")
    os.utime(path, ns=(1, 1_700_000_000_123_456_789))
    link = tmp_path / "link.txt"
    link.symlink_to(path)
    assert file_identity([link, tmp_path]) == [[str(path), 3, 1_700_000_000_123_456_789], [str(tmp_path)]]
    os.utime(path, ns=(1, 1_700_000_000_123_456_790))  # 1 ns later: another identity
    assert file_identity([path])[0][2] == 1_700_000_000_123_456_790


def test_glue_splits_go_through_the_same_builder(mirror: Path, isolated: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from zoo.data.tokenization import load_tokenizer
    from zoo.glue import data
    from zoo.glue.tasks import TASKS

    tokenizer = load_tokenizer("bert-base-uncased")
    first, fingerprint = data.load_encoded(TASKS["wnli"], "dev", tokenizer, 64)
    final = isolated / "cache" / "glue" / f"wnli-dev-{fingerprint}"
    manifest = verify(final)
    (arrow,) = [final / name for name in manifest["files"] if name.endswith(".arrow")]
    built = arrow.stat().st_mtime_ns
    again, _ = data.load_encoded(TASKS["wnli"], "dev", tokenizer, 64)
    assert arrow.stat().st_mtime_ns == built and again["input_ids"] == first["input_ids"]
    assert "rebuilding" not in capsys.readouterr().err

    expected = list(first["input_ids"])  # read now: the column is a view of the arrow file
    del first, again  # let go of the memory-mapped arrow file
    with open(arrow, "r+b") as fh:
        fh.truncate(arrow.stat().st_size // 2)
    rebuilt, same = data.load_encoded(TASKS["wnli"], "dev", tokenizer, 64)
    assert same == fingerprint and rebuilt["input_ids"] == expected and len(rebuilt) == 71
    assert f"zoo: {arrow}: " in capsys.readouterr().err
    assert leftovers(final) == []

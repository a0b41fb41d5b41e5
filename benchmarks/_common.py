"""Shared machinery of the benchmarks: isolated arm processes, interleaved repeats, peak RSS, tables.

Every benchmark runs a baseline and zoo on the same inputs in one invocation. Each *arm* (one side,
one repeat) runs in a fresh Python process, so neither side inherits the other's allocator state,
threads or caches, and its peak RSS is its own. Repeats alternate the order (A B, B A, ...) so that a
machine shared with other work penalises both sides alike; ratios are taken between medians.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULT_MARK = "BENCH-RESULT "


def setup_environment() -> None:
    """Offline-friendly defaults: the local mirror next to the checkout when ZOO_DATA_DIR is unset."""
    sibling = REPO.parent / "shared" / "data"
    if "ZOO_DATA_DIR" not in os.environ and sibling.is_dir():
        os.environ["ZOO_DATA_DIR"] = str(sibling)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    import torch
    import transformers

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "load_average_at_start": _load_average(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}


def _load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# --------------------------------------------------------------------------- arms in fresh processes


def arm_parser(description: str) -> argparse.ArgumentParser:
    """The parser every benchmark shares: the public options plus the hidden --arm used for one side."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="a few minutes: fewer steps and repeats")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each side (alternating order)")
    parser.add_argument("--json", metavar="FILE", help="also write every measurement to FILE")
    parser.add_argument("--arm", help=argparse.SUPPRESS)
    parser.add_argument("--arm-spec", help=argparse.SUPPRESS)
    return parser


def die_with_parent() -> None:
    """In an arm's process before it starts: SIGKILL when the benchmark ends, however it ends (Linux
    prctl PR_SET_PDEATHSIG), so that a stopped benchmark leaves no arm training on the cores."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)


CHILD_PREEXEC = die_with_parent if sys.platform == "linux" else None  # preexec_fn of every benchmark child


def run_arm(script: str, arm: str, spec: dict[str, Any], env: dict[str, str] | None = None,
            timeout: float | None = None) -> dict[str, Any]:
    """Run `script --arm ARM --arm-spec JSON` in a fresh process; its result dict (or a failure)."""
    command = [sys.executable, str(REPO / "benchmarks" / script), "--arm", arm, "--arm-spec", json.dumps(spec)]
    started = time.monotonic()
    proc = subprocess.run(command, cwd=REPO, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout, preexec_fn=CHILD_PREEXEC)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_MARK):
            return {**json.loads(line[len(RESULT_MARK):]), "process_s": round(time.monotonic() - started, 2)}
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
    raise RuntimeError(f"{script} --arm {arm} failed (exit {proc.returncode}): " + " | ".join(tail))


def thread_env(threads: int | None) -> dict[str, str]:
    """Environment giving an arm process `threads` intra-op threads (both sides get the same)."""
    if not threads:
        return {}
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def emit(result: dict[str, Any]) -> None:
    """An arm's result, as the last line its parent reads."""
    print(RESULT_MARK + json.dumps(result), flush=True)


def interleaved(arms: list[str], repeats: int) -> Iterator[tuple[int, str]]:
    """(repeat, arm) in alternating order: A B, B A, A B, ..."""
    for repeat in range(repeats):
        order = arms if repeat % 2 == 0 else list(reversed(arms))
        for arm in order:
            yield repeat, arm


def median(values: list[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------- the notebook baseline


def notebook_group_texts(block_size: int) -> Callable[[dict[str, list]], dict[str, list]]:
    """The course notebook's `group_texts`, verbatim: concatenate with sum(lists, []), cut into blocks."""

    def group_texts(examples: dict[str, list]) -> dict[str, list]:
        concatenated_examples = {k: sum(examples[k], []) for k in examples}
        total_length = len(concatenated_examples[list(examples.keys())[0]])
        total_length = (total_length // block_size) * block_size
        result = {k: [t[i: i + block_size] for i in range(0, total_length, block_size)]
                  for k, t in concatenated_examples.items()}
        result["labels"] = result["input_ids"].copy()
        return result

    return group_texts


# --------------------------------------------------------------------------- measuring inside an arm


class PeakRSS:
    """Peak resident memory of this process and its children, sampled every 20 ms (MiB)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mib(self) -> float:
        return round(self.peak / 2**20, 1)


@contextmanager
def scratch_dirs(own_cache: bool = True) -> Iterator[Path]:
    """Results, checkpoints (and, with `own_cache`, caches) of zoo runs in a temporary directory."""
    from zoo.paths import environ_restored

    keys = ("ZOO_RESULTS_DIR", "ZOO_CHECKPOINT_DIR") + (("ZOO_CACHE_DIR",) if own_cache else ())
    with tempfile.TemporaryDirectory(prefix="zoo-bench-") as tmp, environ_restored(keys):
        root = Path(tmp)
        for key in keys:
            os.environ[key] = str(root / key.removeprefix("ZOO_").removesuffix("_DIR").lower())
        yield root


class StepClock:
    """A Trainer callback (duck-typed: the Trainer calls the events it finds): the time when training starts
    and at the end of every optimizer step, for throughput after the first (warm-up, compilation) steps."""

    def __init__(self) -> None:
        self.start = 0.0
        self.ends: list[float] = []

    def __getattr__(self, name: str) -> Any:
        if name.startswith("on_"):  # the Trainer's other events: nothing to do
            return lambda *args, **kwargs: None
        raise AttributeError(name)

    def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
        self.start = time.perf_counter()

    def on_step_end(self, *args: Any, **kwargs: Any) -> None:
        self.ends.append(time.perf_counter())

    def seconds_per_step(self, warmup: int) -> float:
        """Mean seconds of the steps after the first `warmup` ones."""
        steady = self.ends[warmup:]
        if len(steady) < 2:
            raise ValueError(f"{len(self.ends)} steps timed; need more than {warmup + 1}")
        return (steady[-1] - steady[0]) / (len(steady) - 1)

    def first_steps_s(self, count: int) -> float:
        return self.ends[count - 1] - self.start


def clock_zoo_steps(clock: Any) -> None:
    """Add `clock` (a StepClock or any Trainer callback) to every Trainer zoo's LM training
    (`zoo.train.lm.run_lm`) builds in this process."""
    import zoo.train.lm as train

    build = train._trainer

    def with_clock(*args: Any, **kwargs: Any) -> Any:
        trainer = build(*args, **kwargs)
        trainer.add_callback(clock)
        return trainer

    train._trainer = with_clock


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


# --------------------------------------------------------------------------- reporting


def print_table(rows: list[dict[str, Any]], title: str) -> None:
    from tabulate import tabulate

    print(f"\n{title}")
    print(tabulate(rows, headers="keys", tablefmt="github", floatfmt=".4g"))


def save_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2) + "\n")
        print(f"measurements written to {path}")


def fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def course_glue_splits(task_key: str, model: str, max_length: int, max_train: int | None = None,
                       max_eval: int | None = None) -> tuple[Any, Any, Any]:
    """(tokenizer, train, dev) of a GLUE task (one sentence or a pair; MNLI's dev is the matched one) the way
    the HF course tokenizes it: `Dataset.map` over the raw text with truncation, every run (the baselines'
    data path; zoo's reader gives the text)."""
    from datasets import Dataset
    from transformers import AutoTokenizer

    from zoo.glue.data import read_split
    from zoo.glue.tasks import get_task

    task = get_task(task_key)
    train, dev = read_split(task, "train"), read_split(task, task.splits_for("dev")[0].name)
    pair = train.text_b is not None

    def raw(examples: Any, limit: int | None) -> Any:
        columns = {"sentence1": examples.text_a, "label": examples.labels}
        if pair:
            columns["sentence2"] = examples.text_b
        dataset = Dataset.from_dict(columns)
        return dataset.select(range(min(limit, len(dataset)))) if limit else dataset

    raw_train, raw_dev = raw(train, max_train), raw(dev, max_eval)
    tokenizer = AutoTokenizer.from_pretrained(model)

    def tokenize_function(example: dict[str, list]) -> Any:
        second = example["sentence2"] if pair else None
        return tokenizer(example["sentence1"], second, truncation=True, max_length=max_length)

    return tokenizer, raw_train.map(tokenize_function, batched=True), raw_dev.map(tokenize_function, batched=True)

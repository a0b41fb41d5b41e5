"""Test-set predictions in the GLUE submission format, and the submission folder of a model.

The GLUE server takes a zip of one TSV per task named CoLA.tsv, SST-2.tsv, MRPC.tsv, STS-B.tsv,
QQP.tsv, MNLI-m.tsv, MNLI-mm.tsv, QNLI.tsv, RTE.tsv, WNLI.tsv and AX.tsv, each with the header
`index<TAB>prediction` and one row per test example in file order. Predictions are label strings:
0/1 for CoLA, SST-2, MRPC, QQP and WNLI; entailment/neutral/contradiction for MNLI and AX;
entailment/not_entailment for QNLI and RTE; a similarity score in [0, 5] for STS-B.
"""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import numpy as np

from zoo.errors import ZooError
from zoo.files import atomic_write
from zoo.glue.metrics import predictions_from_outputs
from zoo.glue.tasks import TASKS, GlueTask, SplitSpec

SUBMISSION_FILES = [split.submission for task in TASKS.values() for split in task.splits if split.submission]


def label_strings(task: GlueTask, outputs: np.ndarray) -> list[str]:
    """Model outputs -> the strings the GLUE server expects for this task."""
    predictions = predictions_from_outputs(task, outputs)
    if task.regression:
        return [f"{value:.3f}" for value in np.clip(predictions, 0.0, 5.0)]
    return [task.labels[int(i)] for i in predictions]


def submission_tsv(task: GlueTask, outputs: np.ndarray, rows: np.ndarray) -> str:
    """The file text: `index<TAB>prediction`, rows put back in test-file order from their `idx`."""
    order = np.argsort(np.asarray(rows), kind="stable")
    labels = label_strings(task, np.asarray(outputs)[order])
    if not np.array_equal(np.asarray(rows)[order], np.arange(len(order))):
        raise ZooError(f"{task.key}: test predictions do not cover rows 0..{len(order) - 1} exactly once")
    return "index\tprediction\n" + "".join(f"{i}\t{label}\n" for i, label in enumerate(labels))


def write_predictions(task: GlueTask, split: SplitSpec, outputs: np.ndarray, rows: np.ndarray,
                      directory: Path) -> Path:
    path = directory / split.submission
    atomic_write(path, submission_tsv(task, outputs, rows))
    return path


def assemble_submission(files: dict[str, Path], out_dir: Path) -> Path:
    """Copy each task's prediction file into `out_dir` and zip them (submission.zip); returns the zip."""
    out_dir.mkdir(parents=True, exist_ok=True)
    archive = out_dir / "submission.zip"
    tmp = archive.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as bundle:
        for name in SUBMISSION_FILES:
            if name in files:
                shutil.copyfile(files[name], out_dir / name)
                bundle.write(out_dir / name, arcname=name)
    tmp.replace(archive)
    return archive

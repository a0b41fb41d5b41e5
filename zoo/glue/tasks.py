"""GLUE task registry: one declaration per task, naming its columns, labels, metrics and sources.

Each task lives on the hub as a config of `nyu-mll/glue` and locally in the layout written by the
classic `download_glue_data.py` script, `$ZOO_DATA_DIR/glue_data/<Task>/{train,dev,test}.tsv`
(MNLI: `dev_matched.tsv`, `dev_mismatched.tsv`, `test_matched.tsv`, `test_mismatched.tsv`; the
diagnostic set AX: `diagnostic/diagnostic.tsv`). Quirks of that layout, handled by `zoo.glue.data`:
CoLA's train/dev files have no header (source, label, original label, sentence) while its test file
does; MRPC's header starts with a byte-order mark and names its columns `Quality`, `#1 String`,
`#2 String`; test files have no label column; fields are never quoted (a `"` is a literal character).

Labels are stored in the hub's ClassLabel order, so a hub label index and a local label string map
to the same class; the strings are also what the GLUE server expects in a submission file.
"""

from __future__ import annotations

from dataclasses import dataclass

from zoo.errors import ZooError

HUB_ID = "nyu-mll/glue"
LOCAL_ROOT = "glue_data"

COLA_COLUMNS = ("source", "label", "original_label", "sentence")


@dataclass(frozen=True)
class SplitSpec:
    """One file of a task: where it lives locally and on the hub, and what it is for."""

    name: str  # train, dev, dev_m, dev_mm, test, test_m, test_mm, ax
    file: str  # path under glue_data/
    hub_config: str
    hub_split: str
    labelled: bool = True
    columns: tuple[str, ...] | None = None  # the column names of a header-less file
    submission: str = ""  # test splits: the file name the GLUE server expects, e.g. "MNLI-m.tsv"
    metric_suffix: str = ""  # dev splits: "m" -> metric names like accuracy_m

    @property
    def role(self) -> str:
        """train, dev or test (the diagnostic set is a test split of MNLI)."""
        return "test" if self.name == "ax" else self.name.split("_")[0]


@dataclass(frozen=True)
class GlueTask:
    """A GLUE task: text columns (local TSV header and hub), label set, metrics and splits."""

    key: str  # registry key, lower case: cola, sst2, ...
    name: str  # the benchmark's spelling: CoLA, SST-2, ...
    description: str
    text_columns: tuple[str, ...]  # local TSV header names of the one or two text fields
    hub_text_columns: tuple[str, ...]
    label_column: str  # local TSV header name of the label
    labels: tuple[str, ...]  # class names as written in the files, hub order; () for regression
    metrics: tuple[str, ...]
    splits: tuple[SplitSpec, ...]
    skip_malformed: bool = False  # QQP's train file has a few broken rows that every reader skips

    @property
    def regression(self) -> bool:
        return not self.labels

    @property
    def num_labels(self) -> int:
        return len(self.labels) or 1

    def split(self, name: str) -> SplitSpec:
        for split in self.splits:
            if split.name == name:
                return split
        raise ZooError(f"GLUE task {self.key} has no split {name!r}; splits: {', '.join(self.split_names)}")

    @property
    def split_names(self) -> list[str]:
        return [s.name for s in self.splits]

    def splits_for(self, role: str) -> list[SplitSpec]:
        return [s for s in self.splits if s.role == role]

    @property
    def dev_metric_names(self) -> list[str]:
        """Names of the dev metrics in records: accuracy, f1, ...; MNLI accuracy_m and accuracy_mm."""
        names = []
        for split in self.splits_for("dev"):
            suffix = f"_{split.metric_suffix}" if split.metric_suffix else ""
            names += [f"{metric}{suffix}" for metric in self.metrics]
        return names


def _standard_splits(directory: str, config: str, submission: str) -> tuple[SplitSpec, ...]:
    return (
        SplitSpec("train", f"{directory}/train.tsv", config, "train"),
        SplitSpec("dev", f"{directory}/dev.tsv", config, "validation"),
        SplitSpec("test", f"{directory}/test.tsv", config, "test", labelled=False, submission=submission),
    )


def _cola_splits() -> tuple[SplitSpec, ...]:
    return (
        SplitSpec("train", "CoLA/train.tsv", "cola", "train", columns=COLA_COLUMNS),
        SplitSpec("dev", "CoLA/dev.tsv", "cola", "validation", columns=COLA_COLUMNS),
        SplitSpec("test", "CoLA/test.tsv", "cola", "test", labelled=False, submission="CoLA.tsv"),
    )


def _mnli_splits() -> tuple[SplitSpec, ...]:
    return (
        SplitSpec("train", "MNLI/train.tsv", "mnli", "train"),
        SplitSpec("dev_m", "MNLI/dev_matched.tsv", "mnli", "validation_matched", metric_suffix="m"),
        SplitSpec("dev_mm", "MNLI/dev_mismatched.tsv", "mnli", "validation_mismatched", metric_suffix="mm"),
        SplitSpec("test_m", "MNLI/test_matched.tsv", "mnli", "test_matched", labelled=False,
                  submission="MNLI-m.tsv"),
        SplitSpec("test_mm", "MNLI/test_mismatched.tsv", "mnli", "test_mismatched", labelled=False,
                  submission="MNLI-mm.tsv"),
        SplitSpec("ax", "diagnostic/diagnostic.tsv", "ax", "test", labelled=False, submission="AX.tsv"),
    )


PAIR = ("sentence1", "sentence2")
NLI = ("entailment", "not_entailment")
BINARY = ("0", "1")

_TASKS = [
    GlueTask("cola", "CoLA", "grammatical acceptability of a sentence", ("sentence",), ("sentence",),
             "label", BINARY, ("mcc",), _cola_splits()),
    GlueTask("sst2", "SST-2", "movie-review sentence sentiment", ("sentence",), ("sentence",),
             "label", BINARY, ("accuracy",), _standard_splits("SST-2", "sst2", "SST-2.tsv")),
    GlueTask("mrpc", "MRPC", "paraphrase (news sentence pairs)", ("#1 String", "#2 String"), PAIR,
             "Quality", BINARY, ("f1", "accuracy"), _standard_splits("MRPC", "mrpc", "MRPC.tsv")),
    GlueTask("stsb", "STS-B", "semantic similarity score 0-5 (regression)", PAIR, PAIR,
             "score", (), ("pearson", "spearman"), _standard_splits("STS-B", "stsb", "STS-B.tsv")),
    GlueTask("qqp", "QQP", "duplicate Quora questions", ("question1", "question2"), ("question1", "question2"),
             "is_duplicate", BINARY, ("f1", "accuracy"), _standard_splits("QQP", "qqp", "QQP.tsv"),
             skip_malformed=True),
    GlueTask("mnli", "MNLI", "3-way entailment, matched and mismatched genres (+ diagnostic AX)", PAIR,
             ("premise", "hypothesis"), "gold_label", ("entailment", "neutral", "contradiction"),
             ("accuracy",), _mnli_splits()),
    GlueTask("qnli", "QNLI", "does the sentence answer the question", ("question", "sentence"),
             ("question", "sentence"), "label", NLI, ("accuracy",), _standard_splits("QNLI", "qnli", "QNLI.tsv")),
    GlueTask("rte", "RTE", "2-way entailment", PAIR, PAIR, "label", NLI, ("accuracy",),
             _standard_splits("RTE", "rte", "RTE.tsv")),
    GlueTask("wnli", "WNLI", "Winograd pronoun resolution as entailment", PAIR, PAIR, "label",
             ("0", "1"), ("accuracy",), _standard_splits("WNLI", "wnli", "WNLI.tsv")),
]

TASKS: dict[str, GlueTask] = {task.key: task for task in _TASKS}
_ALIASES = {task.name.lower(): task.key for task in _TASKS} | {"sts-b": "stsb", "sst-2": "sst2"}


def get_task(name: str) -> GlueTask:
    """The task for a registry key or the benchmark's spelling (`rte`, `RTE`, `SST-2`)."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return TASKS[key]
    except KeyError:
        raise ZooError(f"unknown GLUE task {name!r}; known: {', '.join(TASKS)}") from None


def parse_task_list(text: str | list[str]) -> list[str]:
    """`cola,rte` (or a list) -> registry keys in the registry's order, each checked."""
    names = text.split(",") if isinstance(text, str) else text
    keys = {get_task(n).key for n in names if n.strip()}
    return [key for key in TASKS if key in keys]

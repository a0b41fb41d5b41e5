"""GLUE tasks, files and metrics: the mirror's tasks load with the official row counts, the layouts
the mirror lacks (MNLI, QQP, QNLI train) load from files written here, and metrics match values
computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import DataNotFoundError, ZooError
from zoo.glue import data
from zoo.glue.metrics import glue_average, task_metrics, task_score
from zoo.glue.predict import SUBMISSION_FILES, submission_tsv
from zoo.glue.tasks import TASKS, get_task, parse_task_list

OFFICIAL_COUNTS = [
    ("cola", "train", 8551), ("cola", "dev", 1043), ("cola", "test", 1063),
    ("sst2", "train", 67349), ("sst2", "dev", 872), ("sst2", "test", 1821),
    ("mrpc", "train", 3668), ("mrpc", "dev", 408), ("mrpc", "test", 1725),
    ("stsb", "train", 5749), ("stsb", "dev", 1500), ("stsb", "test", 1379),
    ("qnli", "dev", 5463), ("qnli", "test", 5463),
    ("rte", "train", 2490), ("rte", "dev", 277), ("rte", "test", 3000),
    ("wnli", "train", 635), ("wnli", "dev", 71), ("wnli", "test", 146),
    ("mnli", "ax", 1104),
]


@pytest.mark.parametrize(("task", "split", "count"), OFFICIAL_COUNTS, ids=[f"{t}-{s}" for t, s, _ in OFFICIAL_COUNTS])
def test_mirror_tasks_load_with_official_row_counts(mirror: Path, task: str, split: str, count: int) -> None:
    examples = data.read_split(get_task(task), split)
    assert len(examples) == count
    assert all(examples.text_a)
    spec = get_task(task).split(split)
    assert (examples.labels is None) == (not spec.labelled)
    if get_task(task).regression and examples.labels is not None:
        assert min(examples.labels) >= 0.0 and max(examples.labels) <= 5.0
    elif examples.labels is not None:
        assert set(examples.labels) == set(range(get_task(task).num_labels))


def test_mirror_quirks_are_read_as_the_download_script_wrote_them(mirror: Path) -> None:
    cola = data.read_split(TASKS["cola"], "train")  # header-less: first line is data
    assert cola.text_a[0] == "Our friends won't buy this analysis, let alone the next one we propose."
    assert cola.labels[:3] == [1, 1, 1] and cola.text_b is None
    assert data.read_split(TASKS["cola"], "test").text_a[0] == "Bill whistled past the house."
    mrpc = data.read_split(TASKS["mrpc"], "dev")  # BOM before "Quality"; unbalanced quote kept literally
    assert mrpc.labels[0] == 1 and mrpc.text_b[0].startswith('" The foodservice pie business')
    assert sum(mrpc.labels) == 279  # 68% positive, as published
    assert data.read_split(TASKS["rte"], "dev").labels[0] == TASKS["rte"].labels.index("not_entailment")
    assert data.read_split(TASKS["stsb"], "train").labels[:2] == [5.0, 3.8]
    assert data.read_split(TASKS["wnli"], "dev").labels[:2] == [0, 1]


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = (["\t".join(header)] if header else []) + ["\t".join(row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


MNLI_TRAIN = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
MNLI_DEV = MNLI_TRAIN[:10] + ["label1", "label2", "label3", "label4", "label5", "gold_label"]


def mnli_row(i: int, s1: str, s2: str, labels: list[str]) -> list[str]:
    return [str(i), "1", f"{i}e", "fiction", "( x )", "( y )", "(ROOT x)", "(ROOT y)", s1, s2, *labels]


@pytest.fixture
def glue_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A glue_data tree with small MNLI, QQP and QNLI files in the download script's layout."""
    root = tmp_path / "mirror"
    glue = root / "glue_data"
    write_tsv(glue / "MNLI/train.tsv", MNLI_TRAIN, [
        mnli_row(0, 'He said "yes.', "He agreed.", ["entailment", "entailment"]),
        mnli_row(1, "It rained.", "It was dry.", ["contradiction", "contradiction"]),
        mnli_row(2, "A cat sat.", "It was black.", ["neutral", "neutral"])])
    for name in ("dev_matched", "dev_mismatched"):
        write_tsv(glue / f"MNLI/{name}.tsv", MNLI_DEV, [
            mnli_row(0, "Dogs bark.", "Animals make sounds.", ["entailment"] * 5 + ["entailment"]),
            mnli_row(1, "Dogs bark.", "Dogs are silent.", ["contradiction"] * 5 + ["contradiction"])])
    write_tsv(glue / "MNLI/test_matched.tsv", MNLI_TRAIN[:10], [mnli_row(0, "Birds fly.", "Birds move.", [])])
    qqp_header = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    write_tsv(glue / "QQP/train.tsv", qqp_header, [
        ["0", "1", "2", "How do I cook rice?", "What is the way to cook rice?", "1"],
        ["1", "3", "4", "broken row without the second question"],  # skipped, as every GLUE reader does
        ["2", "5", "6", "Is Paris big?", "Is Rome old?", "0"]])
    write_tsv(glue / "QQP/dev.tsv", qqp_header, [["0", "7", "8", "Why?", "How?", "0"]])
    write_tsv(glue / "QQP/test.tsv", ["id", "question1", "question2"], [["0", "Who?", "When?"]])
    write_tsv(glue / "QNLI/train.tsv", ["index", "question", "sentence", "label"], [
        ["0", "Where is Paris?", "Paris is in France.", "entailment"],
        ["1", "Where is Rome?", "Dogs bark.", "not_entailment"]])
    monkeypatch.setenv("ZOO_DATA_DIR", str(root))
    return glue


def test_mnli_qqp_qnli_layouts_load(glue_copy: Path) -> None:
    mnli = TASKS["mnli"]
    train = data.read_split(mnli, "train")
    assert train.text_a[0] == 'He said "yes.' and train.text_b[0] == "He agreed."
    assert train.labels == [mnli.labels.index(x) for x in ("entailment", "contradiction", "neutral")]
    assert len(data.read_split(mnli, "dev_m")) == 2 and len(data.read_split(mnli, "dev_mm")) == 2
    test = data.read_split(mnli, "test_m")
    assert test.labels is None and test.text_b == ["Birds move."]
    qqp = data.read_split(TASKS["qqp"], "train")
    assert qqp.text_a == ["How do I cook rice?", "Is Paris big?"] and qqp.labels == [1, 0]
    assert data.read_split(TASKS["qqp"], "test").text_a == ["Who?"]
    qnli = data.read_split(TASKS["qnli"], "train")
    assert qnli.labels == [0, 1] and qnli.text_b[0] == "Paris is in France."
    assert data.task_available(mnli) and data.task_available(TASKS["qqp"])
    assert not data.task_available(TASKS["qnli"])  # no QNLI dev file written here
    with pytest.raises(DataNotFoundError, match=r"glue_data/MNLI/test_mismatched.tsv"):
        data.read_split(mnli, "test_mm")  # offline and not written: names the file that would do


def test_bad_rows_are_one_line_errors_naming_file_and_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    glue = tmp_path / "glue_data"
    write_tsv(glue / "RTE/train.tsv", ["index", "sentence1", "sentence2", "label"],
              [["0", "a", "b", "entailment"], ["1", "a", "b"]])
    write_tsv(glue / "RTE/dev.tsv", ["index", "sentence1", "sentence2", "label"], [["0", "a", "b", "maybe"]])
    monkeypatch.setenv("ZOO_DATA_DIR", str(tmp_path))
    with pytest.raises(ZooError, match=r"RTE/train.tsv:3: 3 tab-separated fields, expected 4"):
        data.read_split(TASKS["rte"], "train")
    with pytest.raises(ZooError, match=r"label 'maybe' is not one of entailment, not_entailment"):
        data.read_split(TASKS["rte"], "dev")
    assert not data.task_available(TASKS["cola"])


def test_tokenized_splits_are_cached_by_fingerprint(mirror: Path, isolated: Path) -> None:
    from zoo.data.tokenization import load_tokenizer

    tokenizer = load_tokenizer("bert-base-uncased")
    first, fingerprint = data.load_encoded(TASKS["wnli"], "dev", tokenizer, 64)
    assert len(first) == 71 and max(first["length"]) <= 64
    assert first["labels"][:2] == [0, 1] and first["idx"][:3] == [0, 1, 2]
    entries = list((isolated / "cache" / "glue").iterdir())
    assert [e.name for e in entries] == [f"wnli-dev-{fingerprint}"]
    again, same = data.load_encoded(TASKS["wnli"], "dev", tokenizer, 64)
    assert same == fingerprint and again["input_ids"] == first["input_ids"]
    assert data.load_encoded(TASKS["wnli"], "dev", tokenizer, 32)[1] != fingerprint  # max_length is in the key
    assert len(list((isolated / "cache" / "glue").iterdir())) == 2
    ordered = data.by_length(first)
    assert list(ordered["length"]) == sorted(first["length"]) and sorted(ordered["idx"]) == list(range(71))


# --------------------------------------------------------------------------- metrics, by hand

PRED = np.array([1, 0, 1, 1])
GOLD = np.array([1, 0, 0, 1])  # tp 2, tn 1, fp 1, fn 0


def test_classification_metrics_match_hand_computed_values() -> None:
    mrpc = task_metrics(TASKS["mrpc"], PRED, GOLD)
    assert mrpc["accuracy"] == pytest.approx(3 / 4)
    assert mrpc["f1"] == pytest.approx(0.8)  # precision 2/3, recall 1 -> 2 * (2/3) / (5/3)
    cola = task_metrics(TASKS["cola"], PRED, GOLD)
    # (tp*tn - fp*fn) / sqrt((tp+fp)(tp+fn)(tn+fp)(tn+fn)) = 2 / sqrt(3*2*2*1)
    assert cola == {"mcc": pytest.approx(2 / math.sqrt(12))}
    assert task_metrics(TASKS["cola"], np.array([1, 1, 1, 1]), GOLD) == {"mcc": 0.0}
    assert task_score(mrpc) == pytest.approx((0.8 + 0.75) / 2)


def test_regression_metrics_match_hand_computed_values() -> None:
    predicted = np.array([1.0, 2.0, 3.0, 4.0])
    gold = np.array([1.0, 3.0, 2.0, 40.0])
    stsb = task_metrics(TASKS["stsb"], predicted, gold)
    # deviations (-1.5,-.5,.5,1.5) x (-10.5,-8.5,-9.5,28.5): 58 / sqrt(5 * 1085)
    assert stsb["pearson"] == pytest.approx(58 / math.sqrt(5 * 1085))
    # ranks (1,2,3,4) x (1,3,2,4): 1 - 6 * (0+1+1+0) / (4 * 15) = 0.8
    assert stsb["spearman"] == pytest.approx(0.8)
    assert task_metrics(TASKS["stsb"], np.full(4, 2.5), gold) == {"pearson": 0.0, "spearman": 0.0}


def test_task_scores_and_the_glue_average() -> None:
    assert TASKS["mnli"].dev_metric_names == ["accuracy_m", "accuracy_mm"]
    assert TASKS["stsb"].dev_metric_names == ["pearson", "spearman"]
    assert task_score({"accuracy_m": 0.8, "accuracy_mm": 0.7}) == pytest.approx(0.75)
    scores = {"cola": 0.3, "sst2": 0.9, "mrpc": 0.8, "stsb": 0.7, "qqp": 0.85, "mnli": 0.75, "qnli": 0.8,
              "rte": 0.6, "wnli": 0.5}
    assert glue_average(scores) == pytest.approx(6.2 / 9)
    assert glue_average({k: v for k, v in scores.items() if k != "wnli"}) is None


def test_submission_files_use_server_names_label_strings_and_file_order() -> None:
    assert SUBMISSION_FILES == ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
                                "MNLI-mm.tsv", "AX.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv"]
    logits = np.array([[0.0, 0.0, 9.0], [9.0, 0.0, 0.0], [0.0, 9.0, 0.0]])  # rows in length order 2, 0, 1
    text = submission_tsv(TASKS["mnli"], logits, np.array([2, 0, 1]))
    assert text == "index\tprediction\n0\tentailment\n1\tneutral\n2\tcontradiction\n"
    scores = submission_tsv(TASKS["stsb"], np.array([[6.2], [-0.3], [2.25]]), np.array([0, 1, 2]))
    assert scores == "index\tprediction\n0\t5.000\n1\t0.000\n2\t2.250\n"
    with pytest.raises(ZooError, match="exactly once"):
        submission_tsv(TASKS["rte"], np.zeros((2, 2)), np.array([0, 0]))


def test_task_names_accept_the_benchmark_spelling() -> None:
    assert get_task("SST-2").key == "sst2" and get_task("STS-B").key == "stsb" and get_task("CoLA").key == "cola"
    assert parse_task_list("rte,cola") == ["cola", "rte"]
    with pytest.raises(ZooError, match="unknown GLUE task 'squad'"):
        parse_task_list("rte,squad")

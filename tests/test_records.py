"""Typed run records (one writer, one reader, old versions read) and the run lifecycle around them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from zoo.errors import ZooError
from zoo.record.schema import SCHEMA_VERSION, GlueRecord, LMMetrics, LMRecord, Segment
from zoo.record.store import iter_records, read_record, record_json, write_record
from zoo.train.lifecycle import RunLifecycle

REPO = Path(__file__).resolve().parent.parent


def v1_lm_record(**fields: object) -> dict:
    """A record as zoo wrote it before schema_version: non-finite numbers as strings."""
    return {"run_id": "r1", "kind": "pretrain", "name": "bert-tiny-text", "status": "ok", "reason": None,
            "smoke": False, "model": "bert-tiny", "corpus": "text", "objective": "mlm", "recipe_hash": "abc",
            "recipe": "recipe.yaml", "started_at": "2026-01-01T00:00:00+00:00", "params": 10,
            "metrics": {"eval_loss": 800.0, "perplexity": "inf", "eval_tokens": 5, "train_loss": "nan"},
            "history": [{"step": 1, "loss": "nan"}], "finished_at": "2026-01-01T00:01:00+00:00",
            "wall_time_s": 60.0, **fields}


def test_a_v1_record_reads_as_the_current_schema(tmp_path: Path) -> None:
    directory = tmp_path / "results" / "pretrain" / "r1"
    directory.mkdir(parents=True)
    (directory / "run.json").write_text(json.dumps(v1_lm_record()))
    (directory / "recipe.yaml").write_text("train:\n  max_steps: 50\n")  # under 100 steps: a smoke run
    record = read_record(directory / "run.json")
    assert isinstance(record, LMRecord) and record.schema_version == SCHEMA_VERSION
    assert record.metrics == LMMetrics(eval_loss=800.0, perplexity=None, eval_tokens=5, train_loss=None)
    assert record.history == [{"step": 1, "loss": None}]
    assert record.smoke is True  # decided once, when read (v1) or written (v2), never by a renderer
    assert record.segments == [Segment("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:00+00:00", 60.0)]


def test_every_committed_record_loads_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(REPO / "results"))
    records = iter_records()
    assert len(records) > 100
    assert {type(record) for _, record in records} == {LMRecord, GlueRecord}
    assert all(record.finished for _, record in records)


def test_the_writer_writes_null_for_non_finite_and_round_trips(tmp_path: Path) -> None:
    record = LMRecord(run_id="r2", kind="pretrain", model="bert-tiny", status="ok",
                      metrics=LMMetrics(eval_loss=1.5, perplexity=math.exp(1.5), eval_tokens=7, train_loss=math.nan))
    write_record(tmp_path, record)
    assert json.loads((tmp_path / "run.json").read_text())["metrics"]["train_loss"] is None
    again = read_record(tmp_path / "run.json")
    assert again == LMRecord(**{**record.__dict__, "metrics": LMMetrics(1.5, math.exp(1.5), 7, None)})


def test_a_run_without_results_has_no_metrics_section() -> None:
    text = record_json(LMRecord(run_id="r3", kind="pretrain", model="m", status="failed", reason="crash"))
    assert "metrics" not in json.loads(text) and "before" not in json.loads(text)


@pytest.mark.parametrize("change, message", [
    ({"schema_version": 2, "colour": "red"}, "unknown key 'colour'"),
    ({"kind": "sweep"}, "unknown record kind 'sweep'"),
    ({"schema_version": 9}, "schema_version 9"),
    ({"status": "done"}, "status"),
])
def test_a_bad_record_is_a_one_line_error_naming_the_file(tmp_path: Path, change: dict, message: str) -> None:
    (tmp_path / "run.json").write_text(json.dumps({**v1_lm_record(), **change}))
    with pytest.raises(ZooError, match=message) as caught:
        read_record(tmp_path / "run.json")
    assert str(caught.value).startswith(str(tmp_path / "run.json")) and "\n" not in str(caught.value)


def lifecycle(tmp_path: Path, record: LMRecord, earlier: list[Segment] | None = None) -> RunLifecycle:
    return RunLifecycle(record, tmp_path / "results" / "r", tmp_path / "checkpoints" / "r", "kind: pretrain\n",
                        earlier or [])


def test_a_non_finite_result_fails_the_run_with_the_reason(tmp_path: Path) -> None:
    record = LMRecord(run_id="r", kind="pretrain", model="m")
    run = lifecycle(tmp_path, record)
    run.begin()
    record.metrics = LMMetrics(eval_loss=math.nan, perplexity=math.nan, eval_tokens=3)
    run.succeed()
    saved = json.loads((tmp_path / "results" / "r" / "run.json").read_text())
    assert saved["status"] == "failed" and saved["reason"] == "NonFiniteResult: eval_loss=nan, perplexity=nan"
    assert saved["metrics"]["eval_loss"] is None
    assert (tmp_path / "results" / "r" / "recipe.yaml").read_text() == "kind: pretrain\n"


def test_a_resumed_run_keeps_its_earlier_segments(tmp_path: Path) -> None:
    earlier = [Segment("2026-01-01T00:00:00+00:00", "2026-01-01T00:10:00+00:00", 600.0)]
    record = LMRecord(run_id="r", kind="pretrain", model="m", metrics=LMMetrics(1.0, math.e, 3))
    run = lifecycle(tmp_path, record, earlier)
    run.begin(from_step=40)
    run.succeed()
    assert record.started_at == earlier[0].started_at and len(record.segments) == 2
    assert record.segments[1].from_step == 40
    assert record.wall_time_s == pytest.approx(600.0 + record.segments[1].wall_time_s)


def test_an_unwritable_record_location_is_found_before_any_work(tmp_path: Path) -> None:
    blocker = tmp_path / "results"
    blocker.write_text("a file where the results folder should be")
    run = lifecycle(tmp_path, LMRecord(run_id="r", kind="pretrain", model="m"))
    with pytest.raises(ZooError, match="cannot write the run record"):
        run.begin()


def test_a_failure_is_recorded_with_a_one_line_reason(tmp_path: Path) -> None:
    record = LMRecord(run_id="r", kind="pretrain", model="m")
    run = lifecycle(tmp_path, record)
    run.begin()
    run.fail(RuntimeError("out of memory\n  while allocating   4 GB"))
    assert record.status == "failed" and record.reason == "RuntimeError: out of memory"
    assert read_record(tmp_path / "results" / "r" / "run.json").reason == record.reason

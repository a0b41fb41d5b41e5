"""End to end through the CLI: a tiny pretraining run, its record, re-evaluation, resume, failure."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import TINY_BERT, TINY_GPT2
from zoo.cli import main
from zoo.train.hf_trainer import cpu_has_bf16


def tiny_args(corpus: Path, model: str, config: dict, *extra: str) -> list[str]:
    return ["pretrain", model, "text", "--smoke", "--set", f"data.paths=[{corpus}]",
            f"model.config={yaml.safe_dump(config, default_flow_style=True).strip()}",
            "data.block_size=32", "data.validation_fraction=0.1",
            "train.batch_size=4", "train.log_every=1", "eval.max_blocks=24", "eval.batch_size=8", *extra]


def only_record(root: Path, kind: str = "pretrain") -> dict:
    records = list((root / "results" / kind).glob("*/run.json"))
    assert len(records) == 1, records
    return json.loads(records[0].read_text())


def test_bert_run_writes_a_complete_record_and_reevaluates_exactly(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=4", "train.eval_every=2")) == 0
    record = only_record(isolated)
    assert record["status"] == "ok" and record["smoke"] is True and record["reason"] is None
    assert record["steps"] == 4 and record["tokens_seen"] == 4 * 4 * 32
    for key in ("params", "tokens_per_s", "wall_time_s", "train_time_s", "recipe_hash", "started_at",
                "finished_at"):
        assert record[key], key
    metrics = record["metrics"]
    assert metrics["eval_tokens"] > 0 and metrics["perplexity"] == pytest.approx(2.718281828 ** metrics["eval_loss"])
    assert {"python", "torch", "transformers"} <= set(record["environment"]["versions"])
    assert record["environment"]["hardware"]["device"]
    assert [h["step"] for h in record["history"] if "loss" in h] == [1, 2, 3, 4]
    evaluations = [h for h in record["history"] if "eval_loss" in h]
    assert [h["step"] for h in evaluations] == [2, 4]  # the step-4 evaluation is the final one, not repeated
    assert evaluations[-1]["eval_loss"] == metrics["eval_loss"]
    run_dir = isolated / "results" / "pretrain" / record["run_id"]
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    assert saved["model"]["config"] == TINY_BERT and saved["tokenizer"]["name"] == "bert-base-uncased"

    from transformers import AutoModelForMaskedLM

    final = isolated / "checkpoints" / record["run_id"] / "final"
    assert type(AutoModelForMaskedLM.from_pretrained(final)).__name__ == "BertForMaskedLM"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer_config.json").is_file()

    capsys.readouterr()
    assert main(["eval", record["run_id"]]) == 0
    out = capsys.readouterr().out
    assert f"perplexity {metrics['perplexity']:.6f}" in out


def test_gpt2_clm_run_and_recipe_file_reproduces_it(text_corpus: Path, isolated: Path) -> None:
    assert main(tiny_args(text_corpus, "gpt2", TINY_GPT2, "train.max_steps=3")) == 0
    first = only_record(isolated)
    assert first["objective"] == "clm" and first["status"] == "ok"
    recipe_file = isolated / "results" / "pretrain" / first["run_id"] / "recipe.yaml"
    copy = isolated / "again.yaml"
    shutil.copy(recipe_file, copy)
    shutil.rmtree(isolated / "results")
    assert main(["pretrain", "--recipe", str(copy)]) == 0
    second = only_record(isolated)
    assert second["recipe_hash"] == first["recipe_hash"]
    assert second["metrics"]["perplexity"] == pytest.approx(first["metrics"]["perplexity"], rel=1e-5)


def test_resume_continues_from_the_checkpoint_step(text_corpus: Path, isolated: Path) -> None:
    args = tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=6", "train.save_every=3",
                     "train.save_total_limit=5")
    assert main(args) == 0
    full = only_record(isolated)
    run_id = full["run_id"]
    # simulate a run killed after its step-3 checkpoint: drop what came later
    shutil.rmtree(isolated / "checkpoints" / run_id / "checkpoint-6")
    shutil.rmtree(isolated / "checkpoints" / run_id / "final")
    shutil.rmtree(isolated / "results")
    assert main([*args, "--resume"]) == 0
    resumed = only_record(isolated)
    assert resumed["run_id"] == run_id and resumed["resumed_from_step"] == 3 and resumed["steps"] == 6
    losses = {h["step"]: h["loss"] for h in resumed["history"] if "loss" in h}
    assert sorted(losses) == [1, 2, 3, 4, 5, 6]  # the curve before the checkpoint is kept
    # masks are keyed by (seed, epoch, block) and the data order is restored: the continuation is exact
    assert losses == pytest.approx({h["step"]: h["loss"] for h in full["history"] if "loss" in h}, rel=1e-5)
    assert resumed["metrics"]["perplexity"] == pytest.approx(full["metrics"]["perplexity"], rel=1e-5)


def test_nan_loss_fails_the_run_with_a_reason(text_corpus: Path, isolated: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    config = {**TINY_BERT, "initializer_range": 1.0e30}  # weights ~1e30: the first loss overflows
    assert main(tiny_args(text_corpus, "bert-tiny", config, "train.max_steps=3")) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "loss became nan" in err[0].lower()
    record = only_record(isolated)
    assert record["status"] == "failed" and "loss became nan" in record["reason"].lower()
    assert "metrics" not in record


def test_resume_without_checkpoint_is_a_clear_error(text_corpus: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=2"), "--resume"]) == 2
    assert "no earlier run of this recipe" in capsys.readouterr().err


@pytest.mark.skipif(not cpu_has_bf16() or torch.cuda.is_available(), reason="needs a CPU with AVX512-BF16 or AMX")
def test_bf16_on_a_cpu_with_bf16_instructions_trains_float32_weights(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    losses = {}
    for precision in ("fp32", "bf16"):
        assert main(tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=4",
                              f"train.precision={precision}")) == 0
        record = only_record(isolated)
        losses[precision] = [h["loss"] for h in record["history"] if "loss" in h]
        weights = load_file(isolated / "checkpoints" / record["run_id"] / "final" / "model.safetensors")
        assert {tensor.dtype for tensor in weights.values()} == {torch.float32}
        capsys.readouterr()
        assert main(["eval", record["run_id"]]) == 0  # re-evaluated at the run's precision: the recorded number
        assert f"eval loss {record['metrics']['eval_loss']:.6f}" in capsys.readouterr().out
        shutil.rmtree(isolated / "results")
    assert losses["bf16"] != losses["fp32"]  # the products did run in bf16
    assert losses["bf16"] == pytest.approx(losses["fp32"], rel=2e-2)


def test_bf16_on_a_cpu_without_bf16_instructions_is_a_one_line_error(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx2": True, "avx512_bf16": False})
    assert main(tiny_args(text_corpus, "bert-tiny", TINY_BERT, "train.max_steps=2", "train.precision=bf16")) == 2
    err = capsys.readouterr().err
    assert "no bf16 instructions" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not list((isolated / "results").glob("pretrain/*/run.json"))

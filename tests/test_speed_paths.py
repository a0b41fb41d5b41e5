"""The fast paths compute what the reference computation does: same losses, same gradients, same ids.

zoo.model.modeling: the fused linear + cross-entropy (LinearCrossEntropy), the sparse MLM classes and the
fused CLM class, against F.cross_entropy and the plain Hugging Face models. zoo.data.packing.token_ids against
the tokenizer's own call. Checkpoints of the fast classes are plain HF directories.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    BertConfig,
    BertForMaskedLM,
    DistilBertConfig,
    DistilBertForMaskedLM,
    GPT2Config,
    GPT2LMHeadModel,
    RobertaConfig,
    RobertaForMaskedLM,
)

from tests.conftest import TINY_BERT, TINY_GPT2
from zoo.cli import main
from zoo.data.masking import MLMMasker
from zoo.data.packing import token_ids
from zoo.data.tokenization import load_tokenizer
from zoo.model import fused_loss
from zoo.model.modeling import FUSED_CLM, SPARSE_MLM, linear_cross_entropy
from zoo.recipe.lm import ObjectiveSection


def loss_and_grads(fn, *tensors: torch.Tensor) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    loss = fn(*leaves)
    (loss * 3.0).backward()  # a non-unit upstream gradient, as the Trainer's loss scaling gives
    return [loss.detach(), *(leaf.grad for leaf in leaves)]


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("rows_per_chunk", [7, None])
def test_linear_cross_entropy_matches_reference(with_bias: bool, rows_per_chunk: int | None,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    if rows_per_chunk:  # several chunks, the last one short
        monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 300 * rows_per_chunk)
    torch.manual_seed(0)
    hidden, weight, bias = torch.randn(50, 16), torch.randn(300, 16), torch.randn(300)
    target = torch.randint(0, 300, (50,))
    target[:5] = target[5]  # repeated targets: the one-hot term must accumulate
    tensors = (hidden, weight, bias) if with_bias else (hidden, weight)

    def reference(h, w, b=None):
        return F.cross_entropy(F.linear(h, w, b), target)

    def fused(h, w, b=None):
        return linear_cross_entropy(h, w, b, target)

    for expected, got in zip(loss_and_grads(reference, *tensors), loss_and_grads(fused, *tensors)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    with torch.no_grad():  # the evaluation path: no gradient work
        torch.testing.assert_close(fused(*tensors), reference(*tensors), rtol=1e-5, atol=1e-6)


def test_linear_cross_entropy_two_forwards_before_backward() -> None:
    """The reused logits buffer is never shared by two live graphs."""
    torch.manual_seed(1)
    h1, h2, weight = torch.randn(20, 8), torch.randn(30, 8), torch.randn(100, 8)
    t1, t2 = torch.randint(0, 100, (20,)), torch.randint(0, 100, (30,))

    def reference(a, b, w):
        return F.cross_entropy(a @ w.t(), t1) + 2 * F.cross_entropy(b @ w.t(), t2)

    def fused(a, b, w):
        return linear_cross_entropy(a, w, None, t1) + 2 * linear_cross_entropy(b, w, None, t2)

    for expected, got in zip(loss_and_grads(reference, h1, h2, weight), loss_and_grads(fused, h1, h2, weight)):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def assert_same_training_step(dense: torch.nn.Module, fast: torch.nn.Module, **batch: torch.Tensor) -> None:
    """Same loss and same gradient for every parameter (dropout off), and a fast model that learns."""
    fast.load_state_dict(dense.state_dict())
    dense.eval()
    fast.eval()
    dense_loss = dense(**batch).loss
    fast_loss = fast(**batch).loss
    dense_loss.backward()
    fast_loss.backward()
    torch.testing.assert_close(fast_loss, dense_loss, rtol=1e-5, atol=1e-5)
    fast_grads = dict(fast.named_parameters())
    for name, param in dense.named_parameters():
        torch.testing.assert_close(fast_grads[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)


def masked_batch(tokenizer, rows: int = 4, length: int = 24) -> dict[str, torch.Tensor]:
    ids = torch.randint(1000, 20000, (rows, length))
    masked, labels = MLMMasker(tokenizer, ObjectiveSection(type="mlm"))(ids, torch.Generator().manual_seed(0))
    return {"input_ids": masked, "labels": labels, "attention_mask": torch.ones_like(ids)}


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_sparse_mlm_step_equals_dense(family: str) -> None:
    tokenizer = load_tokenizer("bert-base-uncased")
    vocab = len(tokenizer)
    configs = {
        "bert": (BertForMaskedLM, BertConfig(vocab_size=vocab, **TINY_BERT)),
        "roberta": (RobertaForMaskedLM, RobertaConfig(vocab_size=vocab, pad_token_id=1, **TINY_BERT)),
        "distilbert": (DistilBertForMaskedLM, DistilBertConfig(vocab_size=vocab, n_layers=1, dim=32, n_heads=2,
                                                               hidden_dim=64, max_position_embeddings=128)),
    }
    dense_class, config = configs[family]
    torch.manual_seed(0)
    assert_same_training_step(dense_class(config), SPARSE_MLM[family](config), **masked_batch(tokenizer))


def test_fused_clm_step_equals_dense_with_ignored_labels() -> None:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=500, **TINY_GPT2)
    ids = torch.randint(0, 500, (3, 20))
    labels = ids.clone()
    labels[0, 12:] = -100  # padding, as a collator marks it
    assert_same_training_step(GPT2LMHeadModel(config), FUSED_CLM["gpt2"](config), input_ids=ids, labels=labels,
                              attention_mask=torch.ones_like(ids))


def test_fast_classes_save_plain_hf_checkpoints(tmp_path: Path) -> None:
    tokenizer = load_tokenizer("bert-base-uncased")
    torch.manual_seed(0)
    cases = [(SPARSE_MLM["bert"](BertConfig(vocab_size=len(tokenizer), **TINY_BERT)), AutoModelForMaskedLM,
              "BertForMaskedLM"),
             (FUSED_CLM["gpt2"](GPT2Config(vocab_size=500, **TINY_GPT2)), AutoModelForCausalLM, "GPT2LMHeadModel")]
    for model, auto, name in cases:
        model.save_pretrained(tmp_path / name)
        loaded = auto.from_pretrained(tmp_path / name)
        assert loaded.config.architectures == [name]
        assert type(loaded).__module__.startswith("transformers.")
        for key, value in model.state_dict().items():
            torch.testing.assert_close(loaded.state_dict()[key], value, msg=key)


def test_fast_mlm_batch_without_masked_tokens_has_zero_loss() -> None:
    tokenizer = load_tokenizer("bert-base-uncased")
    model = SPARSE_MLM["bert"](BertConfig(vocab_size=len(tokenizer), **TINY_BERT))
    ids = torch.randint(1000, 2000, (2, 8))
    out = model(input_ids=ids, labels=torch.full_like(ids, -100))
    assert out.loss.item() == 0.0 and out.logits.shape == (0, len(tokenizer))


@pytest.mark.parametrize("name", ["bert-base-uncased", "gpt2", "roberta-base"])
def test_token_ids_equal_the_tokenizer_call(name: str) -> None:
    tokenizer = load_tokenizer(name)
    texts = ["Héllo wörld, naïve café! 東京 don't", "", "GPT-2's ### markdown ## 12345.67", "word " * 700]
    assert token_ids(tokenizer, texts) == tokenizer(texts, add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- torch.compile
# The aot_eager backend runs what broke before the fused loss became a custom op: dynamo capturing the graph
# and AOTAutograd tracing forward and backward (through the fake implementation and the registered autograd
# formula), then runs the traced graphs without generating code (inductor's C++ build takes minutes here).


def test_compiled_fused_loss_matches_eager() -> None:
    torch._dynamo.reset()
    torch.manual_seed(2)
    hidden, weight, bias = torch.randn(40, 16), torch.randn(200, 16), torch.randn(200)
    target = torch.randint(0, 200, (40,))

    def loss(h, w, b):  # ops on both sides of the fused loss, for the compiler to trace around it
        return linear_cross_entropy(torch.tanh(h), w * 1.5, b, target) * 2.0

    compiled = torch.compile(loss, backend="aot_eager", fullgraph=True)
    eager_results, compiled_results = (loss_and_grads(fn, hidden, weight, bias) for fn in (loss, compiled))
    for expected, got in zip(eager_results, compiled_results):
        torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(compiled(hidden, weight, bias), loss(hidden, weight, bias), rtol=1e-6, atol=1e-7)


def test_compiled_sparse_mlm_model_trains_like_eager() -> None:
    torch._dynamo.reset()
    tokenizer = load_tokenizer("bert-base-uncased")
    torch.manual_seed(0)
    eager = SPARSE_MLM["bert"](BertConfig(vocab_size=len(tokenizer), **TINY_BERT)).eval()
    compiled_model = SPARSE_MLM["bert"](eager.config).eval()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="aot_eager")
    for rows in (4, 3):  # a second batch with another number of masked tokens: the loss's shapes change
        batch = masked_batch(tokenizer, rows=rows)
        for model in (eager, compiled):
            model.zero_grad()
            model(**batch).loss.backward()
        grads = dict(compiled_model.named_parameters())
        for name, param in eager.named_parameters():
            torch.testing.assert_close(grads[name].grad, param.grad, rtol=1e-4, atol=1e-6, msg=name)


def pretrain_history(corpus: Path, root: Path, *extra: str) -> tuple[dict, list[float]]:
    """A 3-step tiny BERT pretraining run through the CLI: its record and its training-loss curve."""
    config = yaml.safe_dump(TINY_BERT, default_flow_style=True).strip()
    assert main(["pretrain", "bert-tiny", "text", "--smoke", "--set", f"data.paths=[{corpus}]",
                 f"model.config={config}", "data.block_size=32", "data.validation_fraction=0.1", "train.batch_size=4",
                 "train.log_every=1", "train.max_steps=3", "eval.max_blocks=16", "eval.batch_size=8", *extra]) == 0
    (path,) = (root / "results" / "pretrain").glob("*/run.json")
    record = json.loads(path.read_text())
    record["recipe"] = yaml.safe_load((path.parent / record["recipe"]).read_text())
    path.unlink()
    return record, [h["loss"] for h in record["history"] if "loss" in h]


def test_train_compile_pretrains_as_eager(text_corpus: Path, isolated: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    eager, eager_losses = pretrain_history(text_corpus, isolated)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    monkeypatch.setenv("ZOO_COMPILE_BACKEND", "aot_eager")
    compiled, compiled_losses = pretrain_history(text_corpus, isolated, "train.compile=true")
    assert compiled["status"] == "ok" and compiled["recipe"]["train"]["compile"] is True
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0  # the model ran through torch.compile
    assert len(compiled_losses) == 3
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-5)
    assert compiled["metrics"]["eval_loss"] == pytest.approx(eager["metrics"]["eval_loss"], rel=1e-5)
    assert compiled["recipe_hash"] != eager["recipe_hash"]

"""The exact first-token last layer of GLUE classifiers: the same logits, gradients and cells, dropout on."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2ForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from tests.conftest import TINY_BERT, glue_cell_records, save_tiny_bert
from zoo.cli import main
from zoo.model.first_token import compute_last_layer_at_first_token

SMALL = {"vocab_size": 120, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "max_position_embeddings": 130, "num_labels": 3}


def classifier_pair(cls: type, config: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    standard = cls(config)
    first_token = copy.deepcopy(standard)
    assert compute_last_layer_at_first_token(first_token)
    return standard, first_token


def forward_backward(model: torch.nn.Module, batch: dict[str, torch.Tensor], training: bool) -> tuple:
    """Logits, gradients and the random stream's next draw after one step from seed 7."""
    model.train(training)
    model.zero_grad()
    torch.manual_seed(7)
    output = model(**batch)
    output.loss.backward()
    return output.logits.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}, torch.rand(3)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("family", ["bert", "roberta"])
@pytest.mark.parametrize("training", [True, False])
def test_the_first_token_layer_gives_the_standard_logits_gradients_and_random_stream(
        attention: str, family: str, training: bool) -> None:
    cls, config_cls = {"bert": (BertForSequenceClassification, BertConfig),
                       "roberta": (RobertaForSequenceClassification, RobertaConfig)}[family]
    config = config_cls(**SMALL, attn_implementation=attention, hidden_dropout_prob=0.3,
                        attention_probs_dropout_prob=0.3)
    standard, first_token = classifier_pair(cls, config)
    mask = torch.ones(4, 9, dtype=torch.long)
    mask[1, 5:] = 0  # a padded example
    batch = {"input_ids": torch.randint(5, 120, (4, 9)), "attention_mask": mask, "labels": torch.tensor([0, 1, 2, 1])}
    logits, grads, stream = forward_backward(standard, batch, training)
    logits_ft, grads_ft, stream_ft = forward_backward(first_token, batch, training)
    assert torch.allclose(logits, logits_ft, rtol=1e-6, atol=1e-7)
    assert torch.equal(stream, stream_ft)  # every dropout drew what the standard layer draws
    scale = max(g.abs().max() for g in grads.values())
    for name, grad in grads.items():
        # The key bias's true gradient is 0 (softmax ignores a constant shift); both sides hold rounding noise.
        assert torch.allclose(grad, grads_ft[name], rtol=1e-5, atol=1e-6 * scale), name
    assert grads.keys() == grads_ft.keys() and standard.state_dict().keys() == first_token.state_dict().keys()
    if training:  # dropout was live: a different draw would have moved the logits
        standard.eval()
        assert not torch.allclose(standard(**batch).logits, logits)


def test_classifiers_that_read_other_positions_keep_the_standard_layer() -> None:
    gpt2 = GPT2ForSequenceClassification(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100))
    assert not compute_last_layer_at_first_token(gpt2)  # reads the last real token
    chunked = BertForSequenceClassification(BertConfig(**SMALL, chunk_size_feed_forward=4))
    assert not compute_last_layer_at_first_token(chunked)


def run_grid(model: Path, results: Path, monkeypatch: pytest.MonkeyPatch, first_token: bool) -> dict[str, dict]:
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(results))
    assert main(["glue", str(model), "--grid", "--tasks", "rte,stsb", "--smoke", "--set", "task.max_train_examples=48",
                 "task.max_eval_examples=40", "train.epochs=2", "grid.batch_sizes=[8,32]", "grid.lrs=[1e-3]",
                 f"train.first_token_last_layer={str(first_token).lower()}"]) == 0
    return glue_cell_records(results)


def test_first_token_cells_match_standard_cells_with_dropout_on(tmp_path: Path, isolated: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    model = save_tiny_bert(tmp_path / "tiny-bert", num_hidden_layers=2)  # BERT's dropout 0.1, live in training
    assert TINY_BERT["num_hidden_layers"] == 1  # the override above gives the first-token layer a layer below it
    fast = run_grid(model, tmp_path / "fast", monkeypatch, first_token=True)
    standard = run_grid(model, tmp_path / "standard", monkeypatch, first_token=False)
    assert fast.keys() == standard.keys() and len(fast) == 4  # the setting does not change a cell's id
    for key, cell in fast.items():
        assert cell["status"] == standard[key]["status"] == "ok", key
        assert cell["data"]["last_layer"] == "first token" and "last_layer" not in standard[key]["data"]
        assert len(cell["epochs"]) == len(standard[key]["epochs"]) == 2
        for mine, theirs in zip(cell["epochs"], standard[key]["epochs"], strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6), key
            assert mine["dev"].keys() == theirs["dev"].keys()
            for name, value in mine["dev"].items():
                # A smoke cell's STS-B predictions are almost constant, so Pearson magnifies the rounding of
                # the one-query attention product (about 1e-9 in the scores) to about 1e-5; ranks do not move.
                tolerance = 1e-4 if name == "pearson" else 1e-9
                assert value == pytest.approx(theirs["dev"][name], rel=1e-6, abs=tolerance), (key, name)

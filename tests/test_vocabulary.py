"""Exact vocabulary pruning of GLUE cells: the same losses and metrics as the full embedding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification, GPT2Config, GPT2LMHeadModel

from tests.conftest import TINY_BERT, TINY_GPT2, glue_cell_records, save_tiny_bert
from zoo.cli import main
from zoo.data.tokenization import load_tokenizer
from zoo.glue.vocabulary import prunable, prune_input_embeddings, used_token_ids

NO_DROPOUT = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def test_used_ids_are_those_of_the_selected_rows_and_undeclared_ids_fail() -> None:
    rows = Dataset.from_dict({"input_ids": [[101, 7, 102], [101, 9, 9, 102], [101, 3000, 102]]}).select([0, 1])
    used = used_token_ids([rows])
    assert used.tolist() == [7, 9, 101, 102]
    model = BertForSequenceClassification(BertConfig(vocab_size=4000, **TINY_BERT))
    full = model.get_input_embeddings().weight.detach().clone()
    vocabulary = prune_input_embeddings(model, used)
    assert vocabulary.kept.tolist() == [0, 7, 9, 101, 102]  # + the padding row (pad_token_id 0)
    embedding = model.get_input_embeddings()
    assert embedding.num_embeddings == 5 and embedding.padding_idx == 0 and model.config.pad_token_id == 0
    assert torch.equal(embedding.weight[vocabulary.remap(torch.tensor([9, 101]))], full[[9, 101]])
    with pytest.raises(IndexError):
        embedding(vocabulary.remap(torch.tensor([[101, 3000, 102]])))
    assert not prunable(BertForMaskedLM(BertConfig(vocab_size=4000, **TINY_BERT)))  # tied to its output layer


def run_grid(model: Path, results: Path, monkeypatch: pytest.MonkeyPatch, tasks: str, prune: bool,
             batch_sizes: str = "[8,32]") -> dict:
    monkeypatch.setenv("ZOO_RESULTS_DIR", str(results))
    assert main(["glue", str(model), "--grid", "--tasks", tasks, "--smoke", "--set", "task.max_train_examples=48",
                 "task.max_eval_examples=40", "train.epochs=2", f"grid.batch_sizes={batch_sizes}", "grid.lrs=[1e-3]",
                 f"train.prune_vocabulary={str(prune).lower()}"]) == 0
    return glue_cell_records(results)


def assert_same_cells(pruned: dict, full: dict) -> None:
    assert pruned.keys() == full.keys() and pruned  # the setting does not change a cell's id
    for key, cell in pruned.items():
        assert cell["status"] == full[key]["status"] == "ok", key
        assert cell["data"]["vocabulary"]["rows"] < cell["data"]["vocabulary"]["of"] / 4
        assert "vocabulary" not in full[key]["data"]
        assert len(cell["epochs"]) == len(full[key]["epochs"]) == 2
        for mine, theirs in zip(cell["epochs"], full[key]["epochs"], strict=True):
            assert mine["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-6), key
            assert mine["dev"].keys() == theirs["dev"].keys()
            for name, value in mine["dev"].items():
                assert value == pytest.approx(theirs["dev"][name], rel=1e-6, abs=1e-9), (key, name)


def test_pruned_cells_match_full_vocabulary_cells(tmp_path: Path, isolated: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    model = save_tiny_bert(tmp_path / "tiny-bert", **NO_DROPOUT)
    pruned = run_grid(model, tmp_path / "pruned", monkeypatch, "rte,stsb", prune=True)
    assert len(pruned) == 4
    assert_same_cells(pruned, run_grid(model, tmp_path / "full", monkeypatch, "rte,stsb", prune=False))


def test_a_gpt2_cell_finds_its_last_token_through_the_remapped_pad_id(tmp_path: Path, isolated: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    tokenizer = load_tokenizer("gpt2")
    config = GPT2Config(vocab_size=len(tokenizer), resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **TINY_GPT2)
    directory = tmp_path / "tiny-gpt2"
    GPT2LMHeadModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    pruned = run_grid(directory, tmp_path / "pruned", monkeypatch, "mrpc", prune=True, batch_sizes="[16]")
    assert [cell["data"]["vocabulary"]["of"] for cell in pruned.values()] == [len(tokenizer)]
    assert_same_cells(pruned, run_grid(directory, tmp_path / "full", monkeypatch, "mrpc", False, "[16]"))

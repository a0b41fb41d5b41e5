"""Token-weighted perplexity and reproducible MLM evaluation masks."""

from __future__ import annotations

import math

import torch
from transformers import BertConfig, GPT2Config, GPT2LMHeadModel

from tests.conftest import TINY_BERT, TINY_GPT2
from zoo.data.masking import FixedMaskDataset, MLMCollator, MLMMasker, clm_collate
from zoo.data.packing import BlockDataset, BlockLayout
from zoo.data.tokenization import load_tokenizer
from zoo.model.modeling import SPARSE_MLM
from zoo.recipe.lm import ObjectiveSection
from zoo.train.evaluation import lm_metrics


def manual_perplexity(model: torch.nn.Module, input_ids: torch.Tensor) -> float:
    """exp of the mean NLL over every predicted token of every block, computed in one pass."""
    with torch.no_grad():
        logits = model(input_ids=input_ids).logits[:, :-1]
    nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), input_ids[:, 1:].reshape(-1),
                                            reduction="sum")
    return math.exp(nll.item() / input_ids[:, 1:].numel())


def test_perplexity_is_token_weighted_for_any_batch_size() -> None:
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=100, **TINY_GPT2)).eval()
    stream = torch.randint(0, 100, (7 * 16,)).numpy()
    blocks = BlockDataset(stream, BlockLayout(16, (), ()))
    one_batch = lm_metrics(model, blocks, clm_collate, batch_size=7, objective="clm")
    uneven = lm_metrics(model, blocks, clm_collate, batch_size=3, objective="clm")  # 3 + 3 + 1
    assert one_batch["tokens"] == uneven["tokens"] == 7 * 15
    assert math.isclose(one_batch["perplexity"], uneven["perplexity"], rel_tol=1e-6)
    assert math.isclose(one_batch["perplexity"], manual_perplexity(model, blocks.all_blocks()), rel_tol=1e-5)


def test_mlm_weighting_differs_from_a_mean_of_batch_means() -> None:
    """Batches with very different numbers of masked tokens: only token weighting matches one big batch."""
    tok = load_tokenizer("bert-base-uncased")
    torch.manual_seed(0)
    model = SPARSE_MLM["bert"](BertConfig(vocab_size=len(tok), **TINY_BERT)).eval()
    ids = torch.randint(1000, 2000, (4, 32))
    labels = torch.full_like(ids, -100)
    labels[0, :30] = ids[0, :30]  # 30 predicted tokens in the first example, 1 in the others
    labels[1:, 5] = ids[1:, 5]
    data = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels)]
    collate = MLMCollator(MLMMasker(tok, ObjectiveSection(type="mlm")))
    whole = lm_metrics(model, data, collate, batch_size=4, objective="mlm")
    split = lm_metrics(model, data, collate, batch_size=1, objective="mlm")
    assert whole["tokens"] == split["tokens"] == 33
    assert math.isclose(whole["loss"], split["loss"], rel_tol=1e-6)
    with torch.no_grad():
        means = [model(input_ids=i[None], labels=lab[None]).loss.item() for i, lab in zip(ids, labels)]
    assert abs(sum(means) / 4 - whole["loss"]) > 1e-3  # the naive average would be a different number


def test_mlm_eval_masks_are_fixed_by_seed() -> None:
    tok = load_tokenizer("bert-base-uncased")
    stream = torch.randint(1000, 20000, (64 * 30,)).numpy()
    blocks = BlockDataset(stream, BlockLayout(32, (tok.cls_token_id,), (tok.sep_token_id,)))
    masker = MLMMasker(tok, ObjectiveSection(type="mlm"))
    a, b = FixedMaskDataset(blocks, masker, seed=5), FixedMaskDataset(blocks, masker, seed=5)
    c = FixedMaskDataset(blocks, masker, seed=6)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    torch.manual_seed(0)
    model = SPARSE_MLM["bert"](BertConfig(vocab_size=len(tok), **TINY_BERT)).eval()
    collate = MLMCollator(masker)
    first = lm_metrics(model, a, collate, batch_size=8, objective="mlm")
    assert lm_metrics(model, b, collate, batch_size=8, objective="mlm") == first  # bit-for-bit
    other_batching = lm_metrics(model, b, collate, batch_size=5, objective="mlm")  # fp32 summation order only
    assert math.isclose(first["perplexity"], other_batching["perplexity"], rel_tol=1e-6)


def test_sparse_mlm_loss_equals_dense_loss() -> None:
    from transformers import BertForMaskedLM

    tok = load_tokenizer("bert-base-uncased")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(tok), **TINY_BERT)
    dense = BertForMaskedLM(config).eval()
    sparse = SPARSE_MLM["bert"](config).eval()
    sparse.load_state_dict(dense.state_dict())
    ids = torch.randint(1000, 20000, (4, 32))
    masked, labels = MLMMasker(tok, ObjectiveSection(type="mlm"))(ids, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(dense(input_ids=masked, labels=labels).loss,
                              sparse(input_ids=masked, labels=labels).loss, atol=1e-5)

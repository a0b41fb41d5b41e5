"""The GPU path, checked on CPU: precision choice, the fused loss under (CPU bf16) autocast, DataLoader workers
that mask as the main process does, and how `zoo glue --workers N [--gpus K]` places cells on GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig

from tests.conftest import TINY_BERT
from zoo.cli import main
from zoo.data.masking import EpochClock, MLMCollator, MLMMasker
from zoo.data.tokenization import load_tokenizer
from zoo.errors import ZooError
from zoo.glue.grid import choose_gpus, worker_devices
from zoo.model import fused_loss
from zoo.model.fused_loss import linear_cross_entropy
from zoo.model.modeling import SPARSE_MLM
from zoo.recipe.common import dict_hash
from zoo.recipe.glue import GlueTrainSection
from zoo.recipe.lm import ObjectiveSection
from zoo.train.hf_trainer import auto_loader_workers, loader_arguments, optimisation_arguments, resolve_precision

# --------------------------------------------------------------------------- precision


def test_precision_auto_is_bf16_fp16_or_fp32_by_hardware() -> None:
    assert resolve_precision("auto", gpu=True, bf16_native=True) == "bf16"
    assert resolve_precision("auto", gpu=True, bf16_native=False) == "fp16"  # V100, T4: fp16 with loss scaling
    assert resolve_precision("auto", gpu=False, bf16_native=False) == "fp32"
    assert resolve_precision("fp16", gpu=True, bf16_native=True) == "fp16"
    with pytest.raises(ZooError, match="no native bf16"):
        resolve_precision("bf16", gpu=True, bf16_native=False)
    assert resolve_precision("auto", gpu=False, bf16_native=True) == "fp32"  # a CPU run never changes by itself
    assert resolve_precision("bf16", gpu=False, bf16_native=True) == "bf16"  # AVX512-BF16 / AMX
    with pytest.raises(ZooError, match="no bf16 instructions"):
        resolve_precision("bf16", gpu=False, bf16_native=False)
    with pytest.raises(ZooError, match="needs a GPU"):
        resolve_precision("fp16", gpu=False, bf16_native=True)


# --------------------------------------------------------------------------- the fused loss under autocast


def loss_and_grads(loss_fn, tensors: tuple[torch.Tensor, ...], dtype: torch.dtype | None) -> list[torch.Tensor]:
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
        loss = loss_fn(*leaves)
    (loss * 4.0).backward()
    return [loss.detach(), *(leaf.grad for leaf in leaves)]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("rows_per_chunk", [16, None])
def test_fused_loss_under_autocast_is_as_precise_as_autocasts_own_loss(dtype: torch.dtype, rows_per_chunk: int | None,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Against float32: within the error of `F.cross_entropy(F.linear(...).float())` under the same autocast."""
    vocab = 2000
    if rows_per_chunk:  # many chunks: the loss total and the weight gradient accumulate across them
        monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", vocab * rows_per_chunk)
    torch.manual_seed(0)
    tensors = (torch.randn(300, 64), torch.randn(vocab, 64) * 0.3, torch.randn(vocab) * 0.1)
    target = torch.randint(0, vocab, (300,))

    def standard(h, w, b):
        return F.cross_entropy(F.linear(h, w, b).float(), target)

    def fused(h, w, b):
        return linear_cross_entropy(h, w, b, target)

    reference = loss_and_grads(standard, tensors, None)
    mixed, autocasts = loss_and_grads(fused, tensors, dtype), loss_and_grads(standard, tensors, dtype)
    assert all(t.dtype == torch.float32 for t in mixed)  # loss and gradients of the float32 parameters
    assert not torch.equal(mixed[0], reference[0])  # the products did run in the low-precision dtype
    for got, own, expected in zip(mixed, autocasts, reference):
        error, own_error = float((got - expected).abs().max()), float((own - expected).abs().max())
        assert error <= 1.5 * own_error + 1e-7
        assert F.cosine_similarity(got.flatten(), expected.flatten(), dim=0) > 0.9999 or got.dim() == 0


def test_sparse_mlm_under_autocast_takes_the_fused_loss() -> None:
    tokenizer = load_tokenizer("bert-base-uncased")
    torch.manual_seed(0)
    model = SPARSE_MLM["bert"](BertConfig(vocab_size=len(tokenizer), **TINY_BERT)).eval()
    ids = torch.randint(1000, 20000, (4, 24))
    masked, labels = MLMMasker(tokenizer, ObjectiveSection(type="mlm"))(ids, torch.Generator().manual_seed(0))
    exact = model(input_ids=masked, labels=labels).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(input_ids=masked, labels=labels)
    assert out.logits is None and out.loss.dtype == torch.float32  # fused: no logits materialised
    torch.testing.assert_close(out.loss, exact, rtol=1e-2, atol=0)


# --------------------------------------------------------------------------- data loading


def test_auto_loader_workers_use_the_cores_only_with_a_gpu() -> None:
    assert auto_loader_workers(gpu=False, cores=64, processes=1) == 0
    assert auto_loader_workers(gpu=True, cores=16, processes=1) == 4
    assert auto_loader_workers(gpu=True, cores=16, processes=8) == 1  # 8 GLUE cells or ranks share 16 cores
    assert auto_loader_workers(gpu=True, cores=2, processes=1) == 1
    assert loader_arguments("auto")["dataloader_num_workers"] == (
        auto_loader_workers(torch.cuda.is_available(), len(os.sched_getaffinity(0)), 1))
    assert loader_arguments("auto", masking=False)["dataloader_num_workers"] == 0  # GLUE: padding only
    assert optimisation_arguments(GlueTrainSection(), 8)["dataloader_num_workers"] == 0
    cpu_only = loader_arguments(2)
    if not torch.cuda.is_available():
        assert cpu_only == {"dataloader_num_workers": 2, "dataloader_pin_memory": False,
                            "dataloader_prefetch_factor": None, "dataloader_persistent_workers": False}


class Blocks(torch.utils.data.Dataset):
    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "index": torch.tensor(index)}


def test_loader_workers_mask_each_epoch_as_the_main_process() -> None:
    """Workers start after the epoch callback moved the collator's clock (they are not persistent), and the
    masks are a function of (seed, epoch, block): the same batches with 0 or 2 workers, new ones per epoch."""
    masker = MLMMasker(load_tokenizer("bert-base-uncased"), ObjectiveSection(type="mlm"))
    blocks = Blocks(torch.randint(1000, 20000, (12, 16), generator=torch.Generator().manual_seed(0)))
    collator = MLMCollator(masker, seed=7, clock=EpochClock())
    epochs = []
    for epoch in (0, 1):
        collator.clock.epoch = epoch
        batches = [list(torch.utils.data.DataLoader(blocks, batch_size=4, num_workers=workers, collate_fn=collator))
                   for workers in (0, 2)]
        for inline, in_worker in zip(*batches):
            assert torch.equal(inline["input_ids"], in_worker["input_ids"])
            assert torch.equal(inline["labels"], in_worker["labels"])
        epochs.append(torch.cat([b["labels"] for b in batches[1]]))
    assert not torch.equal(epochs[0], epochs[1])


def test_auto_workers_and_compile_keep_the_recipe_ids() -> None:
    from zoo.recipe.lm import compose, recipe_dict

    recipe, _ = compose("pretrain", "bert-tiny", "imdb", [])
    data = recipe_dict(recipe)
    assert data["train"]["dataloader_workers"] == "auto" and data["train"]["compile"] is False
    earlier = {**data, "train": {k: v for k, v in data["train"].items() if k != "compile"}}
    earlier["train"]["dataloader_workers"] = 0  # what every run recorded before `auto` and `compile` existed
    assert dict_hash(data) == dict_hash(earlier)
    for changed in ({"dataloader_workers": 2}, {"compile": True}):
        assert dict_hash({**data, "train": {**data["train"], **changed}}) != dict_hash(data)


# --------------------------------------------------------------------------- GLUE cells on GPUs


def test_glue_workers_per_gpu_and_their_devices() -> None:
    assert worker_devices(3, [], cells=20) == [None, None, None]  # CPU: N workers
    assert worker_devices(2, ["0", "1", "2"], cells=20) == ["0", "1", "2", "0", "1", "2"]  # N per GPU
    assert worker_devices(4, ["5", "7"], cells=3) == ["5", "7", "5"]  # never more workers than cells
    assert worker_devices(1, ["0"], cells=20) == ["0"]  # one cell at a time: run in this process
    assert choose_gpus(2, ["3", "4", "6"]) == ["3", "4"]
    with pytest.raises(ZooError, match="only 3 GPU"):
        choose_gpus(4, ["3", "4", "6"])
    with pytest.raises(ZooError, match="no GPU"):
        choose_gpus(1, [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_glue_gpus_without_a_gpu_is_a_one_line_error(capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    assert main(["glue", "bert-tiny", "--grid", "--tasks", "rte", "--workers", "4", "--gpus", "2"]) == 2
    err = capsys.readouterr().err
    assert "--gpus 2: this machine has no GPU" in err and err.count("\n") == 1 and "Traceback" not in err
    assert not any((isolated / d).exists() for d in ("results", "checkpoints", "cache"))

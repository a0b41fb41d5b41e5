"""Try a model: `zoo generate` (causal LMs) and `zoo fill-mask` (masked LMs).

Both take any name `zoo.model.resolve` understands: a zoo run id (its checkpoints/<run-id>/final), a
checkpoint directory, a registry name or a hub id. The tokenizer saved with a checkpoint is used when
there is one, else the registry's tokenizer, else the hub id's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    set_seed,
)

from zoo.data.masking import wordpiece_prefix
from zoo.data.tokenization import load_tokenizer
from zoo.errors import ZooError
from zoo.model.loading import load_config, load_pretrained
from zoo.model.registry import Objective
from zoo.model.resolve import objective_of_config, resolve_model

MASK_PLACEHOLDERS = ("[MASK]", "<mask>")


@dataclass
class LoadedModel:
    """A model ready for inference, with the tokenizer that goes with it."""

    name: str  # what the user asked for
    source: str  # where it was loaded from
    objective: Objective
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase


def inference_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model(name: str) -> LoadedModel:
    """A run, checkpoint, registry model or hub model with its language-model head, in eval mode."""
    ref = resolve_model(name)
    source = ref.source
    config = load_config(ref, name)
    objective = objective_of_config(config.to_dict())
    if objective is None:
        heads = ", ".join(config.architectures or [config.model_type])
        raise ZooError(f"model {name!r} ({heads}) has no masked- or causal-LM head to generate or fill masks with")
    auto = AutoModelForMaskedLM if objective == "mlm" else AutoModelForCausalLM
    model = load_pretrained(auto, ref, name, config=config)
    model.to(inference_device()).eval()
    return LoadedModel(name, source, objective, model, load_tokenizer(ref.tokenizer()))


def require_objective(loaded: LoadedModel, objective: Objective, command: str) -> None:
    if loaded.objective != objective:
        other = "generate" if loaded.objective == "clm" else "fill-mask"
        kind = "a causal" if loaded.objective == "clm" else "a masked"
        raise ZooError(f"{loaded.name!r} is {kind} language model; `zoo {command}` needs "
                       f"{'a causal' if objective == 'clm' else 'a masked'} one (try `zoo {other}`)")


def max_positions(config: PretrainedConfig) -> int | None:
    for key in ("n_positions", "max_position_embeddings"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


# --------------------------------------------------------------------------- generate


@dataclass
class Sampling:
    """How `generate` picks tokens; greedy ignores temperature, top-k and top-p."""

    max_new_tokens: int = 50
    num_return_sequences: int = 1
    temperature: float = 1.0
    top_k: int = 50
    top_p: float = 1.0
    seed: int | None = None
    greedy: bool = False


def prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: str) -> torch.Tensor:
    """The prompt's token ids (1, n); an empty prompt starts from the beginning-of-text token."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"] if prompt else []
    if not ids:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        if start is None:
            raise ZooError("empty prompt and the tokenizer has no beginning-of-text token; give a prompt")
        ids = [start]
    return torch.tensor([ids], dtype=torch.long)


@torch.no_grad()
def generate(loaded: LoadedModel, prompt: str, sampling: Sampling) -> list[str]:
    """`num_return_sequences` continuations of `prompt` (each returned with its prompt)."""
    require_objective(loaded, "clm", "generate")
    if sampling.greedy and sampling.num_return_sequences > 1:
        raise ZooError("greedy decoding gives one sequence; drop --greedy to sample several")
    input_ids = prompt_ids(loaded.tokenizer, prompt)
    limit = max_positions(loaded.model.config)
    if limit is not None and input_ids.shape[1] + sampling.max_new_tokens > limit:
        raise ZooError(f"prompt ({input_ids.shape[1]} tokens) + --max-new-tokens {sampling.max_new_tokens} "
                       f"exceeds the model's {limit} positions")
    if sampling.seed is not None:
        set_seed(sampling.seed)
    options: dict[str, Any] = {"do_sample": False} if sampling.greedy else {
        "do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p}
    device = loaded.model.device
    output = loaded.model.generate(
        input_ids=input_ids.to(device), attention_mask=torch.ones_like(input_ids).to(device),
        max_new_tokens=sampling.max_new_tokens, num_return_sequences=sampling.num_return_sequences,
        pad_token_id=loaded.tokenizer.pad_token_id, **options,
    )
    return loaded.tokenizer.batch_decode(output, skip_special_tokens=True)


# --------------------------------------------------------------------------- fill-mask


def with_mask_token(text: str, mask_token: str) -> str:
    """`text` with any common mask placeholder ([MASK], <mask>) written as the tokenizer's mask token."""
    for placeholder in MASK_PLACEHOLDERS:
        text = text.replace(placeholder, mask_token)
    return text


@torch.no_grad()
def fill_mask(loaded: LoadedModel, text: str, top_k: int = 5) -> list[list[dict[str, Any]]]:
    """For each mask in `text`, the `top_k` most likely tokens: {token, token_id, score, sequence}."""
    require_objective(loaded, "mlm", "fill-mask")
    tokenizer = loaded.tokenizer
    if tokenizer.mask_token is None:
        raise ZooError(f"{loaded.name!r}: its tokenizer has no mask token")
    text = with_mask_token(text, tokenizer.mask_token)
    encoded = tokenizer(text, return_tensors="pt")
    input_ids = encoded["input_ids"]
    positions = (input_ids[0] == tokenizer.mask_token_id).nonzero().flatten().tolist()
    if not positions:
        raise ZooError(f"no mask in {text!r}; write {' or '.join(dict.fromkeys([tokenizer.mask_token, '[MASK]']))} "
                       "where a word is missing")
    device = loaded.model.device
    logits = loaded.model(input_ids=input_ids.to(device),
                          attention_mask=encoded["attention_mask"].to(device)).logits[0].float().cpu()
    results = []
    for position in positions:
        scores, ids = logits[position].softmax(-1).topk(top_k)
        results.append([_candidate(tokenizer, input_ids[0], position, int(i), float(s)) for s, i in zip(scores, ids)])
    return results


def _candidate(tokenizer: PreTrainedTokenizerBase, input_ids: torch.Tensor, position: int, token_id: int,
               score: float) -> dict[str, Any]:
    filled = input_ids.tolist()
    filled[position] = token_id
    special = set(tokenizer.all_special_ids) - {tokenizer.mask_token_id}  # other masks stay visible
    sequence = tokenizer.decode([t for t in filled if t not in special])
    if wordpiece_prefix(tokenizer) is None:  # a BPE mask token took the space before it: give it back
        sequence = sequence.replace(tokenizer.mask_token, f" {tokenizer.mask_token}").replace(
            f"  {tokenizer.mask_token}", f" {tokenizer.mask_token}").strip()
    return {"token": tokenizer.decode([token_id]).strip(), "token_id": token_id, "score": score,
            "sequence": sequence}

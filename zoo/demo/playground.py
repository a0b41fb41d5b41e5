"""The "Try it" tab's work: the models to pick, what each can do, and running them with one-line errors.

A model is anything `zoo.model.resolve.resolve_model` understands (a run id, a checkpoint directory, a
registry name or a hub id). What it can do follows from its saved config or registry entry: fill-mask
for a masked LM, generation for a causal LM, classification for a sequence-classification checkpoint
(a GLUE cell's model, when one was saved: its labels are the task's, from the config zoo wrote, else from
the GLUE task its directory or config names). Inference is zoo.model.inference's; this module adds the
demo's checks and turns every failure into one line (`one_line`), so the page shows a message and the
server keeps serving. torch is imported only when a model is loaded.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from zoo import paths
from zoo.errors import ZooError
from zoo.glue.tasks import TASKS, GlueTask
from zoo.model.registry import MODELS
from zoo.model.resolve import objective_of_config, resolve_model

Kind = Literal["mlm", "clm", "classifier"]
KIND_TEXT = {"mlm": "a masked language model: Fill mask", "clm": "a causal language model: Generate",
             "classifier": "a sequence classifier: Classify"}
T = TypeVar("T")


def one_line(exc: BaseException) -> str:
    """A failure as the one line the page shows: a ZooError's message, else `Type: first line`."""
    from zoo.model.loading import first_line

    if isinstance(exc, ZooError):
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return lines[0] if lines else exc.__class__.__name__
    return first_line(exc)


def attempt(work: Callable[[], T], fallback: T) -> tuple[T, str]:
    """(work's result, '') or (fallback, the failure as one line): nothing escapes to the server."""
    try:
        return work(), ""
    except Exception as exc:  # the page shows a message; the server keeps serving
        return fallback, one_line(exc)


# ---------------------------------------------------------------------------------------------- which models


def checkpoint_runs() -> list[str]:
    """Run ids with a finished model under checkpoints/<run-id>/final."""
    root = paths.checkpoints_dir()
    return sorted(p.parent.parent.name for p in root.glob(f"*/{paths.FINAL_CHECKPOINT}/config.json"))


def classifier_checkpoints() -> list[str]:
    """Saved GLUE cell models: directories under checkpoints/glue/ whose config has a classification head."""
    found = []
    for config in sorted((paths.checkpoints_dir() / "glue").glob("**/config.json")):
        try:
            if is_classifier(resolve_model(str(config.parent)).saved_config() or {}):
                found.append(str(config.parent))
        except ZooError:
            continue
    return found


def model_choices() -> list[tuple[str, str]]:
    """(label, value) of the models to try: runs with a checkpoint, saved GLUE cells, registry models."""
    choices = [(f"{run_id} (run)", run_id) for run_id in checkpoint_runs()]
    choices += [(f"{path} (GLUE cell)", path) for path in classifier_checkpoints()]
    choices += [(f"{name} (registry: {spec.description})", name) for name, spec in MODELS.items() if spec.hub_id]
    return choices


def is_classifier(config: dict[str, Any]) -> bool:
    return any(str(a).endswith("ForSequenceClassification") for a in config.get("architectures") or [])


def model_kind(name: str) -> Kind:
    """What `name` can do, from its saved config or registry entry (no weights are loaded); a model with no
    local copy and no registry entry (a hub id) is asked through `from_pretrained`'s config lookup."""
    ref = resolve_model(name.strip())
    config = ref.saved_config()
    if config is None and ref.spec is None:
        from zoo.model.loading import load_config

        config = load_config(ref, ref.name).to_dict()
    if config is not None and is_classifier(config):
        return "classifier"
    objective = ref.spec.objective if ref.spec else objective_of_config(config or {})
    if objective is None:
        raise ZooError(f"model {name.strip()!r} has no masked-LM, causal-LM or sequence-classification head")
    return objective


def describe(name: str) -> str:
    """One line about the picked model: what it is and which panel to use."""
    if not name or not name.strip():
        return "Pick a model: a run id, a checkpoint directory, a registry name or a hub id."
    kind = model_kind(require_model(name))
    hint = " Write `[MASK]` (or `<mask>`) for a missing word: the model's mask token is used." if kind == "mlm" else ""
    return f"`{name.strip()}` is {KIND_TEXT[kind]}.{hint}"


# ---------------------------------------------------------------------------------------------- loading


@dataclass
class Classifier:
    """A sequence-classification model with its tokenizer and the names of its labels (None: regression)."""

    name: str
    model: Any
    tokenizer: Any
    labels: list[str] | None
    task: GlueTask | None


def glue_task_of(directory: Path | None, config: dict[str, Any]) -> GlueTask | None:
    """The GLUE task a classifier was fine-tuned on: the config's `finetuning_task`, else a task key in its
    path (checkpoints/glue/<model>/<task>/<cell>/...)."""
    named = str(config.get("finetuning_task") or "").lower()
    if named in TASKS:
        return TASKS[named]
    for part in reversed(directory.parts if directory else ()):
        if part in TASKS:
            return TASKS[part]
    return None


def label_names(config: dict[str, Any], task: GlueTask | None) -> list[str] | None:
    """The classes in output order: the config's own names unless they are placeholders (LABEL_0), else the
    task's; None for a regression head (STS-B)."""
    count = int(config.get("num_labels") or len(config.get("id2label") or {}) or 1)
    if config.get("problem_type") == "regression" or count == 1:
        return None
    id2label = {int(k): str(v) for k, v in (config.get("id2label") or {}).items()}
    names = [id2label.get(i, f"LABEL_{i}") for i in range(count)]
    if all(name == f"LABEL_{i}" for i, name in enumerate(names)) and task and len(task.labels) == count:
        return list(task.labels)
    return names


def load_classifier(name: str) -> Classifier:
    from transformers import AutoModelForSequenceClassification

    from zoo.data.tokenization import load_tokenizer
    from zoo.model.inference import inference_device
    from zoo.model.loading import load_config, load_pretrained

    ref = resolve_model(name)
    config = load_config(ref, name)
    model = load_pretrained(AutoModelForSequenceClassification, ref, name, config=config)
    model.to(inference_device()).eval()
    saved = config.to_dict()
    task = glue_task_of(ref.directory, saved)
    return Classifier(name, model, load_tokenizer(ref.tokenizer()), label_names(saved, task), task)


class ModelCache:
    """The last few loaded models, by name and kind; loading and running hold one lock (2 CPU cores)."""

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self.lock = threading.Lock()
        self.models: OrderedDict[tuple[str, Kind], Any] = OrderedDict()

    def get(self, name: str, kind: Kind) -> Any:
        key = (name, kind)
        if key in self.models:
            self.models.move_to_end(key)
            return self.models[key]
        from transformers.utils import logging

        logging.disable_progress_bar()  # no weight-loading bars in the server's output
        if kind == "classifier":
            model = load_classifier(name)
        else:
            from zoo.model.inference import load_model

            model = load_model(name)
        self.models[key] = model
        while len(self.models) > self.size:
            self.models.popitem(last=False)
        return model


# ---------------------------------------------------------------------------------------------- running


def require_kind(name: str, wanted: Kind) -> None:
    """A one-line error when `name` cannot do what the panel asks (an MLM asked to generate, ...)."""
    kind = model_kind(name)
    if kind != wanted:
        raise ZooError(f"{name.strip()!r} is {KIND_TEXT[kind].split(':')[0]}; this panel needs "
                       f"{KIND_TEXT[wanted].split(':')[0]} (use {KIND_TEXT[kind].split(': ')[1]})")


def require_text(text: str, what: str) -> str:
    if not text or not text.strip():
        raise ZooError(f"empty {what}: type some text first")
    return text.strip()


def require_model(name: str) -> str:
    """The picked model's name; a path that is not a directory is named as such (not looked up on the hub)."""
    if not name or not name.strip():
        raise ZooError("no model picked: choose one or type a run id, checkpoint directory or registry name")
    name = name.strip()
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ZooError(f"{name}: no such checkpoint directory")
    return name


def fill_mask(cache: ModelCache, name: str, text: str, top_k: int) -> list[dict[str, Any]]:
    """One row per (mask, candidate): mask number, rank, token, probability, the filled sentence."""
    from zoo.model.inference import fill_mask as predict

    name, text = require_model(name), require_text(text, "sentence")
    require_kind(name, "mlm")
    with cache.lock:
        results = predict(cache.get(name, "mlm"), text, top_k=int(top_k))
    return [{"mask": mask, "rank": rank, "token": c["token"], "probability": c["score"], "sequence": c["sequence"]}
            for mask, candidates in enumerate(results, 1) for rank, c in enumerate(candidates, 1)]


def best_filling(rows: list[dict[str, Any]]) -> str:
    """The sentence with every mask filled by its most likely word, masks' words in bold."""
    best = {row["mask"]: row for row in rows if row["rank"] == 1}
    words = ", ".join(f"**{row['token']}** ({100 * row['probability']:.3g}%)" for _, row in sorted(best.items()))
    return f"Top prediction: {words}" if words else ""


def generate(cache: ModelCache, name: str, prompt: str, max_new_tokens: int, temperature: float, top_p: float,
             seed: int | None) -> str:
    from zoo.model.inference import Sampling
    from zoo.model.inference import generate as sample

    name, prompt = require_model(name), require_text(prompt, "prompt")
    require_kind(name, "clm")
    sampling = Sampling(max_new_tokens=int(max_new_tokens), temperature=float(temperature), top_p=float(top_p),
                        top_k=0, seed=None if seed is None else int(seed))
    if not (sampling.temperature > 0 and 0 < sampling.top_p <= 1):
        raise ZooError("temperature must be > 0 and top-p in (0, 1]")
    with cache.lock:
        return sample(cache.get(name, "clm"), prompt, sampling)[0]


def classify(cache: ModelCache, name: str, text: str, pair: str) -> dict[str, float] | float:
    """Label -> probability; a regression head (STS-B): its score."""
    import torch

    name, text = require_model(name), require_text(text, "sentence")
    require_kind(name, "classifier")
    with cache.lock:
        clf: Classifier = cache.get(name, "classifier")
        encoded = clf.tokenizer(text, pair.strip() or None, truncation=True, max_length=512, return_tensors="pt")
        with torch.no_grad():
            logits = clf.model(**{k: v.to(clf.model.device) for k, v in encoded.items()}).logits[0].float().cpu()
    if clf.labels is None:
        return float(logits[0])
    return {label: float(p) for label, p in zip(clf.labels, logits.softmax(-1))}

"""`zoo export`: a run (or any checkpoint) as a standalone Hugging Face model directory.

The directory holds the weights (safetensors), config, tokenizer, the run's resolved `recipe.yaml`
and a model card (README.md) with the run's metrics, data, recipe and intended use, so that
`from_pretrained(DIR)` loads it and `--push-to-hub REPO` can publish it as it is.
"""

from __future__ import annotations

import copy
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import yaml
from transformers import PretrainedConfig, PreTrainedTokenizerBase

from zoo import __version__, paths
from zoo.errors import ZooError
from zoo.model.inference import LoadedModel, load_model, max_positions
from zoo.model.registry import find_model_spec
from zoo.model.resolve import resolve_model
from zoo.record.schema import RECIPE_FILE, LMRecord
from zoo.record.store import find_run

PIPELINE_TAGS = {"mlm": "fill-mask", "clm": "text-generation"}
OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert")  # positions start after padding_idx + 1


# --------------------------------------------------------------------------- the run behind a model


def run_record(name: str) -> tuple[Path, LMRecord] | None:
    """(record directory, record) of the zoo run `name` names (a run id, or its checkpoint directory).

    Only pretraining and continued-training runs leave a model to export; a GLUE cell saves none."""
    run_id = resolve_model(name).run_id
    found = find_run(run_id) if run_id else None
    if found is None or not isinstance(found[1], LMRecord):
        return None
    path, record = found
    if not record.ok:
        raise ZooError(f"run {record.run_id or name} did not finish ({record.reason}); nothing to export")
    return path.parent, record


def read_recipe(record_dir: Path | None) -> dict[str, Any] | None:
    if record_dir is None or not (record_dir / RECIPE_FILE).is_file():
        return None
    return yaml.safe_load((record_dir / RECIPE_FILE).read_text(encoding="utf-8"))


# --------------------------------------------------------------------------- model card


def _number(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 1 else f"{value:.4g}"
    return str(value)


def card_metadata(loaded: LoadedModel, record: LMRecord | None) -> dict[str, Any]:
    """The YAML front matter the hub reads: library, task, tags, datasets, base model."""
    from zoo.data.corpora import CORPORA

    meta: dict[str, Any] = {"library_name": "transformers", "pipeline_tag": PIPELINE_TAGS[loaded.objective],
                            "tags": ["zoo", loaded.objective, loaded.model.config.model_type]}
    corpus = CORPORA.get(record.corpus if record else "")
    if corpus is not None and corpus.hub_id:
        meta["datasets"] = [corpus.hub_id]
    spec = find_model_spec(record.model if record else "")
    if record and record.kind == "finetune" and spec is not None and spec.hub_id:
        meta["base_model"] = spec.hub_id
    return meta


def recipe_value(recipe: dict[str, Any] | None, section: str, key: str) -> Any:
    return ((recipe or {}).get(section) or {}).get(key)


def results_section(record: LMRecord, recipe: dict[str, Any] | None) -> list[str]:
    metrics, before = record.metrics, record.before
    split = recipe_value(recipe, "data", "eval_split") or "validation"
    lines = ["## Results", "", f"Evaluated on the {split} split of {record.corpus} "
             f"({metrics.eval_tokens} predicted tokens; perplexity = exp(total NLL / tokens)).", ""]
    header = "| metric | before fine-tuning | after |" if before else "| metric | value |"
    lines += [header, "|---|---:|---:|" if before else "|---|---:|"]
    for key, label in (("eval_loss", "eval loss"), ("perplexity", "perplexity")):
        row = [label] + ([_number(getattr(before, key))] if before else []) + [_number(getattr(metrics, key))]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def data_section(record: LMRecord, recipe: dict[str, Any] | None) -> list[str]:
    from zoo.data.corpora import CORPORA

    corpus = CORPORA.get(record.corpus)
    data = record.data
    described = f"{corpus.description} (hub dataset `{corpus.hub_id}`)" if corpus and corpus.hub_id else \
        (corpus.description if corpus else record.corpus)
    lines = ["## Training data", "", f"- corpus: `{record.corpus}`: {described}"]
    for key, label in (("train_tokens", "training tokens"), ("train_blocks", "training blocks"),
                       ("block_size", "block size"), ("eval_tokens", "evaluation tokens")):
        if key in data:
            lines.append(f"- {label}: {data[key]}")
    max_documents = recipe_value(recipe, "data", "max_documents")
    if max_documents:
        lines.append(f"- downsampled to the first {max_documents} training documents")
    return lines + [""]


def training_section(record: LMRecord, recipe: dict[str, Any] | None) -> list[str]:
    lines = ["## Training", ""]
    for key, label in (("objective", "objective"), ("steps", "optimizer steps"), ("tokens_seen", "tokens seen"),
                       ("params", "parameters"), ("train_time_s", "training time (s)")):
        if getattr(record, key) is not None:
            lines.append(f"- {label}: {getattr(record, key)}")
    if record.device:
        lines.append(f"- hardware: {record.device}")
    if recipe is not None:
        kind = record.kind or "pretrain"
        lines += ["", f"The resolved recipe (`{RECIPE_FILE}` in this directory; reproduce with "
                      f"`zoo {kind} --recipe {RECIPE_FILE}`):", "", "```yaml",
                  yaml.safe_dump(recipe, sort_keys=False).rstrip(), "```"]
    return lines + [""]


def usage_section(loaded: LoadedModel, repo: str) -> list[str]:
    if loaded.objective == "mlm":
        example = f'fill = pipeline("fill-mask", model="{repo}")\nprint(fill("The capital of France is '\
                  f'{loaded.tokenizer.mask_token}."))'
        uses = "filling in masked words, sentence features, and a starting point for fine-tuning on tasks such as GLUE"
    else:
        example = f'generate = pipeline("text-generation", model="{repo}")\n'\
                  'print(generate("The history of", max_new_tokens=50, do_sample=True))'
        uses = "generating English text continuations and scoring text (perplexity)"
    return [
        "## Intended use and limitations", "",
        f"A small research model for {uses}, and for comparing training recipes on the zoo leaderboards. "
        "It is not meant for production use: it has seen one corpus, reproduces that corpus's topics, style and "
        "biases, and a perplexity on one evaluation set says little about quality elsewhere.", "",
        "## How to use", "", "```python", "from transformers import pipeline", "", example, "```", "",
    ]


def environment_section(record: LMRecord) -> list[str]:
    env = record.environment
    versions = ", ".join(f"{k} {v}" for k, v in (env.get("versions") or {}).items())
    git = env.get("git") or {}
    lines = ["## Provenance", "", f"- zoo run `{record.run_id}` ({record.kind}), finished {record.finished_at}"]
    if git.get("commit"):
        lines.append(f"- zoo commit {git['commit']}" + (" (with local changes)" if git.get("dirty") else ""))
    if versions:
        lines.append(f"- versions: {versions}")
    if record.smoke:
        lines.append("- a smoke/debug run: not a benchmark result")
    return lines + [""]


def model_card(loaded: LoadedModel, record: LMRecord | None, recipe: dict[str, Any] | None,
               repo: str) -> str:
    """README.md: hub metadata, then results, data, recipe, intended use, usage and provenance."""
    front = "---\n" + yaml.safe_dump(card_metadata(loaded, record), sort_keys=False) + "---\n\n"
    kind = {"mlm": "masked", "clm": "causal"}[loaded.objective]
    if record is None:
        body = [f"# {Path(loaded.name).name}", "",
                f"A {loaded.model.config.model_type} {kind} language model exported by zoo {__version__} "
                f"from `{loaded.name}`. No zoo run record belongs to it, so no metrics are reported.", ""]
        return front + "\n".join(body + usage_section(loaded, repo))
    finetuned = record.kind == "finetune"
    action = "fine-tuned (continued training) from" if finetuned else "pretrained from scratch as"
    body = [f"# {record.run_id}", "",
            f"A {loaded.model.config.model_type} {kind} language model {action} `{record.model}` "
            f"on `{record.corpus}` with zoo {__version__}.", ""]
    body += results_section(record, recipe) + data_section(record, recipe) + training_section(record, recipe)
    body += usage_section(loaded, repo) + environment_section(record)
    return front + "\n".join(body)


# --------------------------------------------------------------------------- export


def usable_positions(config: PretrainedConfig) -> int | None:
    """Tokens the model accepts: its position table, less RoBERTa's two offset positions."""
    positions = max_positions(config)
    if positions is not None and config.model_type in OFFSET_POSITIONS:
        return positions - 2
    return positions


def export_tokenizer(tokenizer: PreTrainedTokenizerBase, limit: int | None, directory: Path) -> None:
    """Save a copy of the tokenizer with the model's real length limit (zoo loads it unlimited)."""
    exported = copy.deepcopy(tokenizer)
    if limit is not None:
        exported.model_max_length = limit
    exported.save_pretrained(str(directory))


def check_target(target: Path, force: bool) -> None:
    if target.exists() and not target.is_dir():
        raise ZooError(f"--to {target}: exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ZooError(f"--to {target}: directory is not empty (use --force to write into it)")


def published_model_dir(name: str) -> Path:
    """Where `zoo export RUN --publish` writes: beside the run's committed record."""
    found = run_record(name)
    if found is None:
        raise ZooError(f"--publish: {name!r} is not a zoo pretraining or continued-training run with a record")
    return found[0] / paths.PUBLISHED_MODEL


def export_model(name: str, target: Path, force: bool = False, repo: str | None = None) -> Path:
    """Write `name` (run id, checkpoint, registry name or hub id) to `target` as a standalone model dir."""
    check_target(target, force)
    loaded = load_model(name)
    found = run_record(name)
    record_dir, record = found if found else (None, None)
    recipe = read_recipe(record_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        loaded.model.save_pretrained(str(staging))
        export_tokenizer(loaded.tokenizer, usable_positions(loaded.model.config), staging)
        if record_dir is not None and (record_dir / RECIPE_FILE).is_file():
            shutil.copyfile(record_dir / RECIPE_FILE, staging / RECIPE_FILE)
        (staging / "README.md").write_text(model_card(loaded, record, recipe, repo or str(target)), encoding="utf-8")
        _move_into(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _move_into(staging: Path, target: Path) -> None:
    """Put the finished export in place: a rename when `target` is new, else file by file."""
    if not target.exists():
        os.replace(staging, target)
        return
    for item in staging.iterdir():
        os.replace(item, target / item.name)


def push_to_hub(directory: Path, repo: str, private: bool = False) -> str:
    """Upload an exported directory to the hub repository `repo` (created if needed); returns its URL."""
    if paths.hub_offline():
        raise ZooError(f"--push-to-hub {repo}: HF_HUB_OFFLINE is set, so nothing was uploaded; the export is in "
                       f"{directory} (push it later with `hf upload {repo} {directory}`)")
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo, exist_ok=True, private=private)
        commit = api.upload_folder(folder_path=str(directory), repo_id=repo, commit_message="Upload from zoo export")
    except Exception as exc:  # network, authentication, permissions: all one-line user errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ZooError(f"--push-to-hub {repo}: {exc.__class__.__name__}: {first} "
                       f"(the export is in {directory})") from None
    return str(getattr(commit, "repo_url", None) or f"https://huggingface.co/{repo}")

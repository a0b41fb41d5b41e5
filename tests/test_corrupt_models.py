"""Corrupt checkpoints: every command that loads one stops with one line naming the file (exit status 2).

A truncated or garbled `model.safetensors`, a missing weights file or shard, a broken config.json,
weights that disagree with config.json, and a `.bin` whose pickle would run a shell command (it must
never run) are each tried through the real CLI in a subprocess (`fill-mask`, `generate`, `export`,
`eval RUN`) and through `check_loadable`, the cheap check a command runs before many loads.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import MIRROR, TINY_BERT, TINY_GPT2, save_tiny_bert
from zoo.cli import main
from zoo.errors import ZooError
from zoo.model.inference import load_model
from zoo.model.loading import check_loadable, load_pretrained
from zoo.model.resolve import resolve_model

REPO = Path(__file__).resolve().parents[1]


class Exploit:
    """Unpickling this runs `touch MARKER`: what a malicious `pytorch_model.bin` would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def marker(directory: Path) -> Path:
    return directory.parent / f"{directory.name}-pwned"


# --------------------------------------------------------------------------- ways to break a checkpoint
# Each takes a checkpoint directory, breaks it, and returns (the path the error must name, words it must say).

Corruption = Callable[[Path], tuple[Path, str]]


def truncated(directory: Path) -> tuple[Path, str]:
    weights = directory / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return weights, "is not a readable checkpoint (truncated:"


def garbage(directory: Path) -> tuple[Path, str]:
    weights = directory / "model.safetensors"
    weights.write_bytes(bytes(range(256)) * 64)
    return weights, "is not a readable checkpoint (not a safetensors file"


def missing_weights(directory: Path) -> tuple[Path, str]:
    (directory / "model.safetensors").unlink()
    return directory, "has no weights file"


def broken_config(directory: Path) -> tuple[Path, str]:
    config = directory / "config.json"
    config.write_text('{"model_type": "bert", "hidden_size": ', encoding="utf-8")
    return config, "is not a readable config (JSONDecodeError"


def mismatched_config(directory: Path) -> tuple[Path, str]:
    config = directory / "config.json"
    settings = json.loads(config.read_text(encoding="utf-8"))
    settings["hidden_size"] *= 2
    config.write_text(json.dumps(settings), encoding="utf-8")
    return config, "does not match the weights beside it"


def malicious_bin(directory: Path) -> tuple[Path, str]:
    """A torch.save (zip) `.bin`, as transformers used to write, whose pickle calls os.system."""
    (directory / "model.safetensors").unlink()
    weights = directory / "pytorch_model.bin"
    torch.save({"bert.embeddings.word_embeddings.weight": Exploit(marker(directory))}, weights)
    return weights, "unsafe pickle, refused by weights-only loading"


def malicious_pickle(directory: Path) -> tuple[Path, str]:
    """A bare (legacy format) pickle `.bin` whose loading calls os.system."""
    (directory / "model.safetensors").unlink()
    weights = directory / "pytorch_model.bin"
    weights.write_bytes(pickle.dumps({"weight": Exploit(marker(directory))}, protocol=4))
    return weights, "unsafe pickle, refused by weights-only loading"


CORRUPTIONS: dict[str, Corruption] = {f.__name__: f for f in (
    truncated, garbage, missing_weights, broken_config, mismatched_config, malicious_bin, malicious_pickle)}


# --------------------------------------------------------------------------- fixtures and helpers


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny BERT MLM and a tiny GPT-2, each saved with its tokenizer, once for the module."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from zoo.data.tokenization import load_tokenizer

    root = tmp_path_factory.mktemp("saved")
    gpt2 = root / "gpt2"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ZOO_DATA_DIR", str(MIRROR))
        tokenizer = load_tokenizer("gpt2")
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), **TINY_GPT2)).save_pretrained(gpt2)
        tokenizer.save_pretrained(gpt2)
        return {"bert": save_tiny_bert(root / "bert"), "gpt2": gpt2}


def broken_copy(source: Path, target: Path, corruption: Corruption) -> tuple[Path, str]:
    shutil.copytree(source, target)
    return corruption(target)


def zoo(*args: str) -> subprocess.CompletedProcess[str]:
    """The real CLI, in a subprocess, with transformers' default verbosity (its warnings would show)."""
    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}
    return subprocess.run([sys.executable, "-m", "zoo", *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600, check=False)


def one_line_error(result: subprocess.CompletedProcess[str], named: Path, says: str) -> str:
    """The single stderr line of a command that had to fail with exit status 2, naming `named`."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("zoo: error: "), result.stderr
    assert f"{named} " in lines[0] and says in lines[0], lines[0]
    return lines[0]


# --------------------------------------------------------------------------- the CLI, one corruption at a time


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_fill_mask_on_a_corrupt_checkpoint_is_one_line(saved: dict[str, Path], tmp_path: Path,
                                                       corruption: str) -> None:
    directory = tmp_path / "bert"
    named, says = broken_copy(saved["bert"], directory, CORRUPTIONS[corruption])
    one_line_error(zoo("fill-mask", str(directory), "a [MASK] b"), named, says)
    assert not marker(directory).exists(), "the pickle's code ran"


def test_generate_on_a_truncated_gpt2(saved: dict[str, Path], tmp_path: Path) -> None:
    directory = tmp_path / "gpt2"
    named, says = broken_copy(saved["gpt2"], directory, truncated)
    one_line_error(zoo("generate", str(directory), "Hello", "--max-new-tokens", "2"), named, says)


def test_export_of_a_garbled_checkpoint_writes_nothing(saved: dict[str, Path], tmp_path: Path) -> None:
    directory, target = tmp_path / "bert", tmp_path / "exported"
    named, says = broken_copy(saved["bert"], directory, garbage)
    one_line_error(zoo("export", str(directory), "--to", str(target)), named, says)
    assert not target.exists() and not list(tmp_path.glob(".exported*"))


# --------------------------------------------------------------------------- zoo eval RUN

ENVIRONMENT = {"ZOO_RESULTS_DIR": "results", "ZOO_CHECKPOINT_DIR": "checkpoints", "ZOO_CACHE_DIR": "cache"}


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """(root with results/, checkpoints/ and cache/, run id) of a real 2-step `zoo pretrain`, made once."""
    root = tmp_path_factory.mktemp("run")
    corpus = root / "corpus.txt"
    words = "the quick brown fox jumps over a lazy dog while seven wizards quietly judge boxing matches".split()  # noqa: SIM905
    corpus.write_text("\n\n".join(" ".join(words[(i + 3 * j) % len(words)] for j in range(20 + i % 40)) + "."
                                  for i in range(120)), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        for variable, kind in ENVIRONMENT.items():
            patch.setenv(variable, str(root / kind))
        patch.setenv("ZOO_DATA_DIR", str(MIRROR))
        assert main(["pretrain", "bert-tiny", "text", "--smoke", "--set", f"data.paths=[{corpus}]",
                     f"model.config={yaml.safe_dump(TINY_BERT, default_flow_style=True).strip()}",
                     "data.block_size=32", "data.validation_fraction=0.1", "train.batch_size=4", "train.max_steps=2",
                     "eval.max_blocks=8", "eval.batch_size=8"]) == 0
    [record] = (root / "results" / "pretrain").glob("*/run.json")
    return root, record.parent.name


def eval_broken_run(pretrained_run: tuple[Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    corruption: Corruption) -> tuple[subprocess.CompletedProcess[str], Path, str]:
    """`zoo eval RUN` on a copy of the run whose checkpoint is broken by `corruption`."""
    root, run_id = pretrained_run
    for variable, kind in ENVIRONMENT.items():
        shutil.copytree(root / kind, tmp_path / kind)
        monkeypatch.setenv(variable, str(tmp_path / kind))
    named, says = corruption(tmp_path / "checkpoints" / run_id / "final")
    return zoo("eval", run_id), named, says


def test_eval_of_a_run_with_a_truncated_checkpoint(pretrained_run: tuple[Path, str], tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    result, named, says = eval_broken_run(pretrained_run, tmp_path, monkeypatch, truncated)
    assert f"model {pretrained_run[1]!r}: " in one_line_error(result, named, says)


def test_eval_of_a_run_with_a_broken_config(pretrained_run: tuple[Path, str], tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    result, named, says = eval_broken_run(pretrained_run, tmp_path, monkeypatch, broken_config)
    one_line_error(result, named, says)


# --------------------------------------------------------------------------- check_loadable and load_pretrained


def test_check_loadable_passes_good_checkpoints_and_hub_ids(saved: dict[str, Path]) -> None:
    check_loadable(str(saved["bert"]))
    check_loadable(resolve_model(str(saved["gpt2"])))
    check_loadable("someone/not-downloaded")  # not local: nothing to look at


@pytest.mark.parametrize("corruption", sorted(set(CORRUPTIONS) - {"mismatched_config"}))
def test_check_loadable_names_the_broken_file(saved: dict[str, Path], tmp_path: Path, corruption: str) -> None:
    directory = tmp_path / "bert"
    named, says = broken_copy(saved["bert"], directory, CORRUPTIONS[corruption])
    for reference in (str(directory), resolve_model(str(directory))):
        with pytest.raises(ZooError) as error:
            check_loadable(reference, "my-model")
        message = str(error.value)
        assert message.startswith("model 'my-model': ") and f"{named} " in message and says in message
        assert "\n" not in message
    assert not marker(directory).exists(), "the pickle's code ran"


def test_sharded_checkpoints_name_the_broken_shard(saved: dict[str, Path], tmp_path: Path) -> None:
    from transformers import BertForMaskedLM

    directory = tmp_path / "sharded"
    BertForMaskedLM.from_pretrained(saved["bert"]).save_pretrained(directory, max_shard_size="1MB")
    shards = sorted(directory.glob("model-*.safetensors"))
    assert len(shards) > 1 and not (directory / "model.safetensors").exists()
    check_loadable(str(directory))
    truncated_shard = shards[-1].read_bytes()
    shards[-1].write_bytes(truncated_shard[:-100])
    with pytest.raises(ZooError, match=re.escape(f"{shards[-1]} is not a readable checkpoint (truncated: ")):
        check_loadable(str(directory))
    shards[-1].unlink()
    listed = f"{shards[-1]} is missing (a shard listed in model.safetensors.index.json)"
    with pytest.raises(ZooError, match=re.escape(listed)):
        load_pretrained(BertForMaskedLM, str(directory))


def test_safetensors_are_loaded_even_with_a_pickle_beside_them(saved: dict[str, Path], tmp_path: Path) -> None:
    """With `*.safetensors` in the directory no `.bin` is ever unpickled, not even when they are broken."""
    directory = tmp_path / "bert"
    named, _ = broken_copy(saved["bert"], directory, truncated)
    torch.save({"w": Exploit(marker(directory))}, directory / "pytorch_model.bin")
    with pytest.raises(ZooError, match=re.escape(f"{named} is not a readable checkpoint (truncated")):
        load_model(str(directory))
    assert not marker(directory).exists(), "the pickle's code ran"


def test_classifier_loading_goes_through_the_same_door(saved: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification

    model = load_pretrained(AutoModelForSequenceClassification, resolve_model(str(saved["bert"])), num_labels=3,
                            ignore_mismatched_sizes=True)
    assert model.config.num_labels == 3 and model.classifier.out_features == 3
    directory = tmp_path / "bert"
    named, says = broken_copy(saved["bert"], directory, garbage)
    with pytest.raises(ZooError, match=re.escape(f"{named} {says}")):
        load_pretrained(AutoModelForSequenceClassification, str(directory), num_labels=3, ignore_mismatched_sizes=True)

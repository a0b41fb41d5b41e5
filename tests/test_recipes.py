"""Recipes: every shipped file loads; bad input gives one line, exit 2, and writes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from zoo.cli import main
from zoo.paths import recipes_dir
from zoo.recipe.kinds import KINDS, validate_file
from zoo.recipe.lm import compose, load_recipe, recipe_hash, recipe_yaml, resolve
from zoo.recipe.schema import RecipeError

ALL_RECIPES = sorted(recipes_dir().rglob("*.yaml"))


def test_recipes_exist_for_every_documented_pair() -> None:
    names = {p.stem for p in (recipes_dir() / "pretrain").glob("*.yaml")}
    for model in ("bert-tiny", "bert-mini", "gpt2"):
        for corpus in ("wikipedia", "openwebtext", "wikitext-103", "imdb"):
            assert f"{model}-{corpus}" in names


@pytest.mark.parametrize("path", ALL_RECIPES, ids=[str(p.relative_to(recipes_dir())) for p in ALL_RECIPES])
def test_every_recipe_loads(path: Path) -> None:
    assert path.parent.name in KINDS, f"no recipe kind for recipes/{path.parent.name}/"
    validate_file(path)


def test_compose_uses_registry_defaults_when_no_file() -> None:
    recipe = resolve(compose("pretrain", "bert-small", "wikitext-2")[0])
    assert recipe.tokenizer.name == "bert-base-uncased"
    assert recipe.objective.type == "mlm"
    assert recipe.name == "bert-small-wikitext-2"
    gpt = resolve(compose("pretrain", "gpt2", "webtext")[0])
    assert (gpt.objective.type, gpt.tokenizer.name) == ("clm", "gpt2")


def test_overrides_are_typed_and_reach_nested_keys() -> None:
    recipe, _ = compose("pretrain", "bert-tiny", "imdb", ["train.lr=3e-4", "data.block_size=64",
                                                          "model.config={num_hidden_layers: 1}"])
    assert recipe.train.lr == pytest.approx(3e-4) and isinstance(recipe.train.lr, float)
    assert recipe.data.block_size == 64
    assert recipe.model.config == {"num_hidden_layers": 1}


def test_resolved_recipe_round_trips_with_the_same_hash(tmp_path: Path) -> None:
    import yaml

    recipe = resolve(compose("pretrain", "bert-tiny", "wikipedia", ["train.max_steps=7"])[0])
    saved = tmp_path / "recipe.yaml"
    saved.write_text(recipe_yaml(recipe))
    again = resolve(load_recipe(yaml.safe_load(saved.read_text()), str(saved)))
    assert again == recipe and recipe_hash(again) == recipe_hash(recipe)


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("train: {lr: 1e-4, lerning_rate: 3}\n", "unknown key 'lerning_rate'"),
        ("train: {batch_size: many}\n", "train.batch_size: expected int"),
        ("train: {batch_size: 0}\n", "train.batch_size: 0 is out of range"),
        ("objective: {type: nsp}\n", "objective.type: expected 'mlm' | 'clm' | ''"),
        ("data: {block_size: 64\n", "not valid YAML"),
        ("model: {name: bert-giant}\n", "bert-giant"),
        ("- just\n- a list\n", "must be a mapping"),
    ],
)
def test_bad_recipe_is_one_line_exit_2_and_writes_nothing(
    content: str, needle: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    assert main(["pretrain", "--recipe", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert needle in err
    if "YAML" not in needle and "mapping" not in needle and "giant" not in needle:
        assert str(bad) in err  # names the file
    assert not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


def test_bad_override_and_unknown_names(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "bert-tiny", "imdb", "--set", "train.lrr=1"]) == 2
    assert "unknown key 'lrr'" in capsys.readouterr().err
    assert main(["pretrain", "bert-tiny", "imdb", "--train.lr"]) == 2
    assert "missing value" in capsys.readouterr().err
    assert main(["pretrain", "bert-tiny", "nowhere"]) == 2
    assert "unknown corpus 'nowhere'" in capsys.readouterr().err
    assert main(["pretrain", "bert-huge", "imdb"]) == 2
    assert "bert-huge" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "bert-tiny", "imdb", "--train.lr", "2e-4", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "lr: 0.0002" in out and "tokenizer:\n  name: bert-base-uncased" in out


def test_schema_rejects_mixed_types_directly() -> None:
    with pytest.raises(RecipeError, match=r"eval.max_blocks: expected int or null"):
        load_recipe({"eval": {"max_blocks": "all"}}, "x.yaml")


def test_validate_command_checks_every_shipped_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate"]) == 0
    assert f"{len(ALL_RECIPES)} valid, 0 invalid" in capsys.readouterr().out

"""Bad recipe input is one line naming its source (file and line, or the `--set` override), exit status 2.

Duplicate YAML keys and keys set twice with `--set`, empty recipe files, `zoo validate` of files outside
recipes/ (a run's saved recipe.yaml), and `--set` errors that name the override, not the shipped file.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from zoo import paths
from zoo.cli import main
from zoo.errors import ZooError
from zoo.recipe.common import read_yaml
from zoo.recipe.kinds import validate_file
from zoo.recipe.schema import RecipeError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED_BERT = ROOT / "recipes" / "pretrain" / "bert-tiny-wikipedia.yaml"
SAVED_RECIPES = sorted((ROOT / "results").glob("**/recipe.yaml"))
SAVED_PRETRAIN = next(p for p in SAVED_RECIPES if "pretrain" in p.parts)
SAVED_GLUE = next(p for p in SAVED_RECIPES if "glue" in p.parts)


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed command, without the `zoo: error: ` prefix."""
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith("zoo: error: ")
    return err.strip().removeprefix("zoo: error: ")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def nothing_written(tmp_path: Path) -> bool:
    return not (tmp_path / "results").exists() and not (tmp_path / "checkpoints").exists()


# ------------------------------------------------------------------------------------- duplicate keys


@pytest.mark.parametrize(("text", "where"), [
    ("kind: pretrain\ntrain: {lr: 1.0e-4, lr: 0.5}\n", "line 2: duplicate key 'lr' (first at column 9)"),
    ("kind: pretrain\ntrain:\n  lr: 1.0e-4\n  batch_size: 8\n  lr: 0.5\n",
     "line 5: duplicate key 'lr' (first at line 3)"),
    ("kind: pretrain\ntrain: {lr: 1.0e-4}\ntrain: {lr: 0.5}\n", "line 3: duplicate key 'train' (first at line 2)"),
])
def test_a_duplicate_yaml_key_is_rejected_with_file_and_line(text: str, where: str, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "dup.yaml", text)
    assert main(["validate", str(bad)]) == 2
    assert f"invalid {bad}: {where}" in capsys.readouterr().out
    assert main(["pretrain", "--recipe", str(bad), "--dry-run"]) == 2
    assert one_error_line(capsys) == f"{bad}: {where}"
    assert nothing_written(tmp_path)


def test_the_strict_loader_keeps_safe_load_semantics() -> None:
    import yaml

    from zoo.recipe.common import load_yaml

    text = "base: &b {lr: 1.0e-4, seed: 1}\ntrain:\n  <<: *b\n  lr: 0.5\nn: 3e-4\nwhen: 2024-01-01\n"

    assert load_yaml(text) == yaml.safe_load(text)
    assert load_yaml(text)["train"] == {"lr": 0.5, "seed": 1}  # an explicit key may override a merged one
    with pytest.raises(yaml.YAMLError):
        load_yaml("x: !!python/object/apply:os.system ['true']\n")


@pytest.mark.parametrize("argv", [
    ["--set", "train.lr=1", "train.lr=2"],
    ["--set", "train.lr=1", "--train.lr", "2"],
    ["--set", "train.lr=1", "--set", "train.lr=2"],
    ["--set", "train={lr: 1}", "train.lr=2"],
])
def test_an_override_of_the_same_key_twice_is_rejected(argv: list[str], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "bert-tiny", "wikipedia", *argv, "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("--set train.lr given twice (") and line.endswith("; give each key once")
    assert main(["glue", "bert-tiny", *argv, "--dry-run"]) == 2
    assert one_error_line(capsys).startswith("--set train.lr given twice (")
    assert nothing_written(tmp_path)


def test_a_section_override_may_not_drop_an_earlier_key_but_may_be_extended(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "bert-tiny", "imdb", "--set", "train.lr=1e-4", "train={epochs: 2}", "--dry-run"]) == 2
    assert one_error_line(capsys) == ("--set train={epochs: 2} replaces section train, dropping the earlier "
                                      "train.lr=1e-4; give each key once")
    assert main(["pretrain", "bert-tiny", "imdb", "--set", "model.config={a: 1, a: 2}", "--dry-run"]) == 2
    assert one_error_line(capsys) == "--set model.config={a: 1, a: 2}: duplicate key 'a'"
    assert main(["pretrain", "bert-tiny", "imdb", "--set", "model.config={num_hidden_layers: 1}",
                 "model.config.hidden_size=64", "--dry-run"]) == 0
    assert "num_hidden_layers: 1\n    hidden_size: 64" in capsys.readouterr().out


# ------------------------------------------------------------------------------ validating any file


def test_validate_checks_a_runs_saved_recipes(capsys: pytest.CaptureFixture[str]) -> None:
    assert SAVED_PRETRAIN.parent.parent.name == "pretrain" and SAVED_GLUE.parents[3].name == "glue"
    assert main(["validate", *map(str, SAVED_RECIPES)]) == 0
    assert f"{len(SAVED_RECIPES)} valid, 0 invalid" in capsys.readouterr().out


def test_validate_reads_the_kind_from_the_file_anywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "results" / "glue" / "tag" / "mrpc" / "cell"
    run.mkdir(parents=True)
    glue = write(run, "recipe.yaml", SAVED_GLUE.read_text().replace("lr: 0.0001", "lr: fast", 1))
    lm = write(tmp_path, "recipe.yaml", SAVED_PRETRAIN.read_text().replace("batch_size: 64", "batch_size: 0", 1))
    good = write(tmp_path, "copy.yaml", SAVED_PRETRAIN.read_text())
    assert main(["validate", str(glue), str(lm), str(good)]) == 2
    out = capsys.readouterr().out
    assert f"invalid {glue}: train.lr: expected float, got 'fast'" in out
    assert f"invalid {lm}: train.batch_size: 0 is out of range, allowed [1, inf]" in out
    assert f"ok      {good}" in out and "1 valid, 2 invalid" in out


@pytest.mark.parametrize(("text", "problem"), [
    ("kind: pretrain\ndata: {block_size: 64\n", "line 3 not valid YAML (expected ',' or '}', but got '<stream end>')"),
    ("train: {lr: 1.0e-4}\n", "no 'kind' key, and its folder"),
    ("kind: sweep\n", "kind: unknown recipe kind 'sweep'; known: pretrain, finetune, glue"),
])
def test_validate_outside_recipes_reports_the_real_problem(text: str, problem: str, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "recipe.yaml", text)
    assert main(["validate", str(bad)]) == 2
    out = capsys.readouterr().out
    assert f"invalid {bad}: {problem}" in out


def test_a_shipped_recipe_takes_its_folders_kind_and_must_match_it(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = tmp_path / "recipes"
    (shipped / "glue").mkdir(parents=True)
    monkeypatch.setattr(paths, "recipes_dir", lambda: shipped)
    validate_file(write(shipped / "glue", "plain.yaml", "grid: {lrs: [1.0e-4]}\n"))
    wrong = write(shipped / "glue", "wrong.yaml", "kind: pretrain\n")
    with pytest.raises(ZooError, match="kind 'pretrain' does not match its folder 'glue'"):
        validate_file(wrong)


def test_validate_with_no_files_still_checks_every_shipped_recipe(capsys: pytest.CaptureFixture[str]) -> None:
    shipped = sorted(paths.recipes_dir().glob("*/*.yaml"))
    assert main(["validate"]) == 0
    assert f"{len(shipped)} valid, 0 invalid" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- empty files


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "---\n"])
def test_an_empty_recipe_file_is_rejected(text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = write(tmp_path, "empty.yaml", text)
    expected = f"{empty}: empty recipe file (no keys, only comments or blank lines)"
    for argv in (["pretrain", "--recipe", str(empty)], ["glue", "bert-tiny", "--recipe", str(empty)]):
        assert main([*argv, "--dry-run"]) == 2  # without the check: a full default run
        assert one_error_line(capsys) == expected
    assert main(["validate", str(empty)]) == 2
    assert f"invalid {expected}" in capsys.readouterr().out
    with pytest.raises(RecipeError, match="empty recipe file"):
        read_yaml(empty)
    assert nothing_written(tmp_path)


# ------------------------------------------------------------------------ --set errors name the override


@pytest.mark.parametrize(("override", "expected"), [
    ("train.lr=abc", "--set train.lr: expected float, got 'abc'"),
    ("train.lrr=1", "--set train.lrr: unknown key 'lrr'; allowed: adam_beta1, adam_beta2, adam_epsilon, batch_ramp, "),
    ("train.batch_size=0", "--set train.batch_size: 0 is out of range, allowed [1, inf]"),
    ("eval.max_blocks=all", "--set eval.max_blocks: expected int or null, got 'all'"),
    ("train={lr: abc}", "--set train.lr: expected float, got 'abc'"),
    ("data.paths=[1]", "--set data.paths[0]: expected str, got 1"),
])
def test_a_bad_override_names_the_override_not_the_shipped_file(override: str, expected: str, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["pretrain", "bert-tiny", "wikipedia", "--set", override, "--dry-run"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(expected) and "recipes/pretrain" not in line
    assert nothing_written(tmp_path)


@pytest.mark.parametrize(("override", "expected"), [
    ("train.lr=fast", "--set train.lr: expected float, got 'fast'"),
    ("task.colour=red", "--set task.colour: unknown key 'colour'; allowed: max_eval_examples, max_length, "
                        "max_train_examples, name"),
    ("grid.lrs=[]", "--set grid.lrs=[]: grid.lrs must list at least one value"),
    ("grid={lrs: [2]}", "--set grid={lrs: [2]}: grid.lrs must be in (0, 1], got [2.0]"),
])
def test_a_bad_glue_override_names_the_override(override: str, expected: str, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["glue", "bert-tiny", "--set", override, "--dry-run"]) == 2
    assert one_error_line(capsys) == expected
    assert nothing_written(tmp_path)


def test_a_bad_key_in_the_file_still_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = write(tmp_path, "bad.yaml", "model: {name: bert-tiny}\ndata: {corpus: imdb}\ntrain: {lr: fast}\n")
    assert main(["pretrain", "--recipe", str(bad), "--set", "train.batch_size=8", "--dry-run"]) == 2
    assert one_error_line(capsys) == f"{bad}: train.lr: expected float, got 'fast'"
    assert main(["pretrain", "--recipe", str(bad), "--set", "train.lrr=1", "--dry-run"]) == 2  # unknown keys first
    assert one_error_line(capsys).startswith("--set train.lrr: unknown key 'lrr'")
    assert main(["pretrain", "--recipe", str(bad), "--set", "train.lr=1e-4", "--dry-run"]) == 0  # fixed by --set
    assert "lr: 0.0001" in capsys.readouterr().out
    glue = write(tmp_path, "glue.yaml", "kind: glue\ngrid: {lrs: []}\n")
    assert main(["glue", "bert-tiny", "--recipe", str(glue), "--dry-run"]) == 2
    assert one_error_line(capsys) == f"{glue}: grid.lrs must list at least one value"
    assert main(["glue", "bert-tiny", "--recipe", str(glue), "--set", "task.max_length=4", "--dry-run"]) == 2
    assert one_error_line(capsys) == "--set task.max_length: 4 is out of range, allowed [8, 8192]"


def test_the_shell_sees_exit_status_2_and_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "zoo", "pretrain", "bert-tiny", "wikipedia", "--set", "train.lr=abc",
                           "train.lr=1e-4", "--dry-run"], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr == ("zoo: error: --set train.lr given twice (train.lr=abc, then train.lr=1e-4); "
                           "give each key once\n")
    done = subprocess.run([sys.executable, "-m", "zoo", "pretrain", "bert-tiny", "wikipedia", "--set", "train.lr=abc",
                           "--dry-run"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert (done.returncode, done.stderr) == (2, "zoo: error: --set train.lr: expected float, got 'abc'\n")
    assert nothing_written(tmp_path)


@pytest.mark.parametrize("argv, message", [
    (["pretrain", "bert-tiny", "wikipedia", "--set", "data.block_size=1024"],
     "data.block_size=1024 exceeds the 512 positions of model 'bert-tiny'"),
    (["pretrain", "gpt2-mini", "wikipedia", "--set", "data.block_size=2048"],
     "data.block_size=2048 exceeds the 1024 positions of model 'gpt2-mini'"),
    (["pretrain", "bert-tiny", "wikipedia", "--set", "data.block_size=256",
      "model.config={max_position_embeddings: 128}"], "data.block_size=256 exceeds the 128 positions"),
])
def test_a_block_longer_than_the_model_is_refused_when_the_recipe_resolves(
        argv: list[str], message: str, capsys: pytest.CaptureFixture[str], isolated: Path) -> None:
    assert main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not (isolated / "results").exists()

"""`train.batch_order` of GLUE cells: the three orders, their records, and the ids of earlier cells."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from transformers.trainer_pt_utils import LengthGroupedSampler

from tests.conftest import save_tiny_bert
from zoo import paths
from zoo.cli import main
from zoo.glue.batches import GroupedSampler, ShuffledGroupsSampler, train_sampler
from zoo.recipe.common import dict_hash
from zoo.recipe.glue import glue_recipe_from, glue_recipe_hash, load_glue_recipe, single_cell
from zoo.recipe.schema import to_dict

STEP = 16


def batches(order: list[int]) -> list[list[int]]:
    return [order[i:i + STEP] for i in range(0, len(order), STEP)]


def test_shuffled_groups_are_the_length_grouped_batches_in_a_random_order() -> None:
    lengths = np.random.default_rng(0).integers(5, 120, size=999).tolist()  # 62 full steps and one of 7
    torch.manual_seed(3)
    grouped = batches(list(LengthGroupedSampler(STEP, lengths=lengths)))
    torch.manual_seed(3)
    shuffled = batches(list(ShuffledGroupsSampler(STEP, lengths=lengths)))
    assert sorted(map(sorted, shuffled)) == sorted(map(sorted, grouped))  # the same batches, so the same padding
    assert shuffled[-1] == grouped[-1] and len(shuffled[-1]) == 999 % STEP  # the short one stays last
    assert shuffled != grouped

    def longest(batch_list: list[list[int]]) -> list[int]:
        return [max(lengths[i] for i in batch) for batch in batch_list]

    # length-grouped runs long to short through each mega-batch of 62 // 4 = 15 batches; shuffled does not
    first_mega = longest(grouped)[:15]
    assert first_mega == sorted(first_mega, reverse=True)
    assert longest(shuffled)[:15] != sorted(longest(shuffled)[:15], reverse=True)


def test_group_batches_sets_the_mega_batch_of_the_length_grouped_orders() -> None:
    lengths = np.random.default_rng(1).integers(5, 120, size=640).tolist()  # 40 steps
    torch.manual_seed(5)
    trainers = list(LengthGroupedSampler(STEP, lengths=lengths))
    torch.manual_seed(5)
    assert list(train_sampler("length-grouped", lengths, STEP)) == trainers  # empty: the Trainer's own order
    torch.manual_seed(5)
    small = batches(list(train_sampler("length-grouped", lengths, STEP, group_batches=4)))
    assert isinstance(train_sampler("shuffled-groups", lengths, STEP, 4), GroupedSampler)
    assert sorted(i for batch in small for i in batch) == list(range(640))

    def longest(batch: list[int]) -> int:
        return max(lengths[i] for i in batch)

    for mega in range(0, 40, 4):  # each run of 4 batches is one mega-batch, sorted longest first
        group = small[mega:mega + 4]
        assert [longest(b) for b in group] == sorted((longest(b) for b in group), reverse=True)
        assert min(lengths[i] for i in group[0]) >= max(lengths[i] for i in group[1])
    # mega-batches of 4 batches mix lengths more than the Trainer's of 640 / (4 x 16) = 10 batches: more padding
    def padded(order: list[list[int]]) -> int:
        return sum(longest(b) * len(b) for b in order)

    assert padded(small) > padded(batches(trainers))


def test_random_order_is_the_trainers_random_sampler() -> None:
    sampler = train_sampler("random", [3] * 50, STEP)
    assert isinstance(sampler, torch.utils.data.RandomSampler)
    torch.manual_seed(1)
    drawn = list(sampler)
    torch.manual_seed(1)
    assert drawn == list(torch.utils.data.RandomSampler(range(50))) and sorted(drawn) == list(range(50))
    with pytest.raises(ValueError, match="unknown batch order 'sorted'"):
        train_sampler("sorted", [3], STEP)


def test_the_trainers_grouping_keeps_the_ids_cells_had_before_the_settings_existed() -> None:
    recipe = single_cell(load_glue_recipe(None, ["train.group_batches=null"]))
    assert (recipe.train.batch_order, recipe.train.group_batches) == ("length-grouped", None)
    legacy = to_dict(recipe)
    for added in ("batch_order", "group_batches", "prune_vocabulary", "first_token_last_layer"):  # not in old cells
        del legacy["train"][added]
    assert glue_recipe_hash(recipe) == dict_hash(legacy)
    default = single_cell(load_glue_recipe())
    assert default.train.group_batches == 4  # parity with random batches (benchmarks/README.md): a new id
    for other in (default, single_cell(load_glue_recipe(None, ["train.group_batches=null",
                                                               "train.batch_order=shuffled-groups"]))):
        assert glue_recipe_hash(other) != glue_recipe_hash(recipe)


def test_every_committed_cell_recipe_still_hashes_to_its_record() -> None:
    committed = sorted((paths.recipes_dir().parent / "results" / "glue").glob("*/*/*/run.json"))
    assert len(committed) >= 100
    for path in committed:
        record = json.loads(path.read_text())
        recipe = glue_recipe_from(yaml.safe_load((path.parent / "recipe.yaml").read_text()), str(path))
        assert glue_recipe_hash(recipe) == record["recipe_hash"], path


def test_a_cell_trains_in_the_order_its_recipe_names(tmp_path: Path, isolated: Path, mirror: Path) -> None:
    model = save_tiny_bert(tmp_path / "tiny-bert")
    tiny = ["--smoke", "--set", "task.max_train_examples=40", "task.max_eval_examples=16", "train.epochs=1",
            "train.batch_size=8"]
    assert main(["glue", str(model), "--task", "rte", *tiny, "train.batch_order=shuffled-groups"]) == 0
    assert main(["glue", str(model), "--task", "rte", *tiny]) == 0
    cells = {json.loads((d / "run.json").read_text())["run_id"]: yaml.safe_load((d / "recipe.yaml").read_text())
             for d in (isolated / "results" / "glue" / "tiny-bert" / "rte").iterdir()}
    assert sorted(r["train"]["batch_order"] for r in cells.values()) == ["length-grouped", "shuffled-groups"]
    assert {r["train"]["group_batches"] for r in cells.values()} == {4}

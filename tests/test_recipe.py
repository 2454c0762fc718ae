"""Recipes: defaults < file < --set overrides; unknown keys and wrong types name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from synthaug import SynthaugError
from synthaug.recipe import Recipe, load_recipe, recipe_to_toml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "r.toml"
    path.write_text(text)
    return path


def test_digits_recipe_file_states_the_defaults():
    assert load_recipe(RECIPES / "digits.toml") == Recipe()
    assert load_recipe("digits") == Recipe()  # by name, from ./recipes or the checkout


@pytest.mark.parametrize("name", ["birds", "cars", "faces", "cub", "digits"])
def test_every_shipped_recipe_loads_and_round_trips(name, tmp_path):
    recipe = load_recipe(RECIPES / f"{name}.toml")
    assert recipe.name == name
    assert load_recipe(write(tmp_path, recipe_to_toml(recipe))) == recipe


def test_shipped_recipes_have_the_asked_for_datasets_and_sizes():
    birds, cars, faces, cub = (load_recipe(RECIPES / f"{n}.toml") for n in ("birds", "cars", "faces", "cub"))
    assert birds.data.spec.startswith("nabirds:") and birds.data.resolution == 64 and birds.generator.preset == "base"
    assert cars.data.spec.startswith("stanford-cars:") and cars.data.resolution == 32 and cars.generator.loss == "l1"
    assert faces.data.spec.startswith("celeba-dialog:") and faces.generator.condition == "attributes"
    assert cub.data.spec.startswith("cub:") and cub.data.resolution == 64


def test_precedence_defaults_file_overrides(tmp_path):
    path = write(tmp_path, '[generator]\nlr = 1e-3\nbatch_size = 32\n')
    recipe = load_recipe(path, ["generator.lr=5e-4", "sampling.guidance=3", "data.spec=cub:/x/y", "generator.flip=true"])
    assert recipe.generator.lr == 5e-4  # override beats file
    assert recipe.generator.batch_size == 32  # file beats default
    assert recipe.generator.preset == "tiny"  # default
    assert recipe.sampling.guidance == 3.0 and isinstance(recipe.sampling.guidance, float)
    assert recipe.data.spec == "cub:/x/y" and recipe.generator.flip is True
    assert load_recipe(None, ["data.target=inf"]).data.target == "inf"  # a string field keeps the text


@pytest.mark.parametrize(
    "text, message",
    [
        ("[generator]\nlearning_rate = 1\n", "Unknown recipe key 'generator.learning_rate'"),
        ("[gen]\nlr = 1\n", "Unknown recipe key 'gen'"),
        ("[generator]\nbatch_size = 'big'\n", "generator.batch_size must be a whole number"),
        ("[generator]\nbatch_size = 2.5\n", "generator.batch_size must be a whole number"),
        ("[generator]\nflip = 1\n", "generator.flip must be true or false"),
        ("[generator]\nchannel_mult = 2\n", "generator.channel_mult must be a list"),
        ("[data]\nspec = 3\n", "data.spec must be a string"),
        ("[generator]\nbatch_size = 0\n", "generator.batch_size must be positive"),
        ("[sampling]\nguidance = -1.0\n", "guidance scale must be 0 or more"),
        ("[sampling]\nsampler = 'heun'\n", "Sampler 'heun' is not known"),
        ("generator = 3\n", "must be a [generator] section"),
        ("name = 'a b'\n", "Recipe name 'a b'"),
        ("[generator\n", "is not valid TOML"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    with pytest.raises(SynthaugError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_recipe(write(tmp_path, text))


def test_bad_overrides():
    with pytest.raises(SynthaugError, match="not KEY=VALUE"):
        load_recipe(None, ["generator.lr"])
    with pytest.raises(SynthaugError, match="Unknown recipe key 'generator.lrr'"):
        load_recipe(None, ["generator.lrr=1"])


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(SynthaugError, match="No recipe named 'bird'.*birds"):
        load_recipe("bird")

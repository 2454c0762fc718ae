"""Recipes: defaults < file < --set overrides; unknown keys, wrong types and unknown named values name the key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from synthaug import SynthaugError
from synthaug.data.config import DataConfig
from synthaug.recipe import GeneratorConfig, Recipe, SamplingConfig, load_recipe, recipe_to_toml

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
        ("[sampling]\nsampler = 'heun'\n", "sampling.sampler 'heun' is not known; use one of ddpm, ddim, dpm++2m, unipc, euler."),
        ("[generator]\npreset = 3\n", "generator.preset 3 is not known"),
        ("generator = 3\n", "must be a [generator] section"),
        ("name = 'a b'\n", "Recipe name 'a b'"),
        ("[generator\n", "is not valid TOML"),
    ],
)
def test_bad_recipes_name_the_key(tmp_path, text, message):
    with pytest.raises(SynthaugError, match=re.escape(message)):
        load_recipe(write(tmp_path, text))


def test_bad_overrides():
    with pytest.raises(SynthaugError, match="not KEY=VALUE"):
        load_recipe(None, ["generator.lr"])
    with pytest.raises(SynthaugError, match="Unknown recipe key 'generator.lrr'"):
        load_recipe(None, ["generator.lrr=1"])


def test_unknown_recipe_name_lists_the_known_ones():
    with pytest.raises(SynthaugError, match="No recipe named 'bird'.*birds"):
        load_recipe("bird")


# The bad enumerated values of issue 12, each rejected when the recipe is read (not after decoding data).
BAD_CHOICES = [
    ("generator", "preset", "huge", "tiny, small, base"),
    ("generator", "prediction", "x0", "epsilon, v"),
    ("generator", "loss", "l3", "mse, l1"),
    ("generator", "condition", "bogus", "auto, class, attributes"),
    ("data", "split", "sideways", "auto, official, stratified"),
    ("data", "level", "genus", "category, species"),
    ("generator", "backend", "dalle", "unet, text-unet, sd-lora"),
    ("generator", "schedule", "sigmoid", "cosine, linear"),
    ("generator", "lr_schedule", "step", "constant, cosine"),
    ("generator", "mixed_precision", "fp8", "auto, no, bf16, fp16"),
    ("sampling", "sampler", "heun", "ddpm, ddim, dpm++2m, unipc, euler"),
    ("benchmark", "pretrained", "imagenet", "none, offline, hub"),
]


@pytest.mark.parametrize("section, key, value, allowed", BAD_CHOICES)
def test_unknown_named_values_fail_at_load_naming_the_key_and_the_choices(section, key, value, allowed, tmp_path):
    message = f"{section}.{key} '{value}' is not known; use one of {allowed}."
    with pytest.raises(SynthaugError) as from_file:
        load_recipe(write(tmp_path, f"[{section}]\n{key} = '{value}'\n"))
    assert str(from_file.value) == message
    with pytest.raises(SynthaugError) as from_override:
        load_recipe(None, [f"{section}.{key}={value}"])
    assert str(from_override.value) == message


def test_sections_built_in_code_are_checked_too():
    with pytest.raises(SynthaugError, match="generator.preset 'huge' is not known"):
        GeneratorConfig(preset="huge")
    with pytest.raises(SynthaugError, match="data.split 'sideways' is not known"):
        DataConfig(split="sideways")
    with pytest.raises(SynthaugError, match="sampling.sampler 'heun' is not known"):
        SamplingConfig().replace(sampler="heun")


def test_an_override_of_a_named_value_keeps_its_text():
    # 1e9 and true are TOML numbers and booleans; for a named value the message shows what was typed
    with pytest.raises(SynthaugError, match="generator.preset '1e9' is not known"):
        load_recipe(None, ["generator.preset=1e9"])
    assert load_recipe(None, ["generator.preset='small'"]).generator.preset == "small"


def test_allowed_values_agree_with_the_modules_that_implement_them():
    """The recipe declares the allowed values; these modules implement them and must not drift."""
    from synthaug import recipe
    from synthaug.data import nabirds, splits
    from synthaug import conditions
    from synthaug.generator import loss, model, sampling
    from synthaug.weights import timm_imagenet

    assert recipe.PRESETS == tuple(model.PRESETS)
    assert recipe.SAMPLERS == tuple(sampling.SAMPLER_CLASSES)
    assert recipe.PRETRAINED == tuple(timm_imagenet.PRETRAINED_CHOICES)
    assert recipe.CONDITION_KINDS == tuple(conditions.CONDITION_KINDS)
    assert recipe.SPLITS == tuple(splits.SPLIT_MODES)
    assert recipe.LEVELS == tuple(nabirds.LEVELS)
    assert recipe.PREDICTIONS == tuple(loss.PREDICTIONS)
    assert recipe.LOSSES == tuple(loss.LOSSES)


SD_LORA = ["generator.backend=sd-lora", "generator.base_model=/models/sd"]


@pytest.mark.parametrize("setting", ["generator.prediction=epsilon", "generator.schedule=linear", "generator.num_timesteps=500"])
def test_sd_lora_refuses_the_schedule_keys_it_ignores(setting):
    key = setting.partition("=")[0]
    with pytest.raises(SynthaugError) as e:
        load_recipe(None, [*SD_LORA, setting])
    assert str(e.value) == (f"{key} is not used by the sd-lora backend, which keeps its base model's noise schedule; "
                            "remove it.")
    load_recipe(None, [setting])  # the unet backend uses it


def test_sd_lora_accepts_its_own_resolved_recipe(tmp_path):
    """A run folder's recipe.toml states every key, the schedule keys at their defaults: it must load again."""
    recipe = load_recipe(RECIPES / "birds-sd-lora.toml")
    text = recipe_to_toml(recipe)
    assert 'prediction = "v"' in text and "num_timesteps = 1000" in text  # the defaults, which sd-lora does not use
    assert load_recipe(write(tmp_path, text)) == recipe


@pytest.mark.parametrize(
    "text, message",
    [
        ("[genrator]\nlr = 1e-3\n", "Unknown recipe key 'genrator'; did you mean 'generator'?"),
        ("[sampling]\nsampeler = 'ddim'\n", "Unknown recipe key 'sampling.sampeler'; did you mean 'sampling.sampler'?"),
        ("[generator]\nguidance = 2.0\n", "Unknown recipe key 'generator.guidance'; did you mean 'sampling.guidance'?"),
        ("lr = 1e-3\n", "Unknown recipe key 'lr'; did you mean 'generator.lr'?"),
        ("[extra]\nx = 1\n", "Unknown recipe key 'extra'; the top level holds name, run_dir and the sections "
                              "[data], [generator], [sampling], [benchmark]."),
    ],
)
def test_a_misspelt_section_or_key_suggests_the_closest_name(tmp_path, text, message):
    with pytest.raises(SynthaugError) as e:
        load_recipe(write(tmp_path, text))
    assert str(e.value) == message


def test_a_folder_given_as_the_recipe_says_so(tmp_path):
    with pytest.raises(SynthaugError, match="is a folder, not a recipe file; give a .toml path"):
        load_recipe(tmp_path)
    (tmp_path / "recipe.toml").write_text(recipe_to_toml(Recipe()))  # a run folder
    with pytest.raises(SynthaugError, match=f"to continue the run in it, use `synthaug train {tmp_path}/recipe.toml --out {tmp_path}`"):
        load_recipe(tmp_path)

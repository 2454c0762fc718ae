"""Property-based tests: fuzzed recipe files, bytes and command arguments load or fail with one sentence
(SynthaugError, exit code 1), and every enumerated recipe key accepts exactly its allowed values."""

from __future__ import annotations

import tarfile
import typing

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import cli, error_line
from synthaug import SynthaugError
from synthaug.recipe import SECTIONS, toml_value, load_recipe
from synthaug.shards import verify_shards

# Every enumerated recipe key ("generator.preset") with its allowed values, as the recipe declares them.
CHOICES = {f"{section}.{name}": typing.get_args(hint)
           for section, cls in SECTIONS.items() for name, hint in typing.get_type_hints(cls).items()
           if typing.get_origin(hint) is typing.Literal}
# Backends that need another key to load at all.
# Values that need another key set with them (full keys)
COMPANIONS = {"sd-lora": {"generator.base_model": "/models/sd"}, "text-unet": {"generator.text_encoder": "/models/t5"},
              "linear-probe": {"benchmark.pretrained": "offline"}}
ALLOWED = sorted({v for values in CHOICES.values() for v in values})


def not_allowed(allowed: tuple[str, ...]):
    """Values that are not one of ``allowed``: other names, near misses (case, spaces), other types."""
    near = [v.upper() for v in allowed] + [f" {v}" for v in allowed] + [v + "2" for v in allowed] + ["", "none ", "x0"]
    return st.one_of(
        st.sampled_from([v for v in near + ALLOWED if v not in allowed]),
        st.text(max_size=12).filter(lambda v: v not in allowed),
        st.integers(-3, 10**6), st.booleans(), st.floats(allow_nan=False),
        st.lists(st.sampled_from(allowed), min_size=1, max_size=2),
    )


def toml_text(data: dict) -> str:
    top = [f"{k} = {toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)]
    sections = [f"[{k}]\n" + "\n".join(f'"{n}" = {toml_value(v)}' for n, v in section.items())
                for k, section in data.items() if isinstance(section, dict)]
    return "\n".join(top) + "\n" + "\n\n".join(sections) + "\n"


@st.composite
def choice_settings(draw, valid: bool):
    key = draw(st.sampled_from(sorted(CHOICES)))
    allowed = CHOICES[key]
    value = draw(st.sampled_from(allowed) if valid else not_allowed(allowed))
    return key, value


def section_of(key: str, value) -> dict:
    out: dict = {}
    for k, v in [(key, value), *(COMPANIONS.get(value, {}).items() if isinstance(value, str) else [])]:
        section, name = k.split(".")
        out.setdefault(section, {})[name] = v
    return out


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setting=choice_settings(valid=True))
def test_allowed_enumerated_values_load(setting, tmp_path):
    key, value = setting
    path = tmp_path / "fuzz.toml"
    path.write_text(toml_text(section_of(key, value)))
    section, name = key.split(".")
    assert getattr(getattr(load_recipe(path), section), name) == value


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(setting=choice_settings(valid=False))
def test_other_enumerated_values_fail_at_load_naming_the_key(setting, tmp_path):
    key, value = setting
    path = tmp_path / "fuzz.toml"
    path.write_text(toml_text(section_of(key, value)))
    try:
        load_recipe(path)
    except SynthaugError as e:
        assert str(e) == f"{key} {value!r} is not known; use one of {', '.join(CHOICES[key])}.", str(e)
    else:
        raise AssertionError(f"{key} = {value!r} loaded")


# What a person types after --set KEY=: names made of the characters recipe values use.
TYPED = st.text("abcdefghijklmnopqrstuvwxyzABC0123456789+-_.", min_size=1, max_size=10)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(sorted(CHOICES)), data=st.data())
def test_train_dry_run_accepts_exactly_the_allowed_values(key, data):
    allowed = CHOICES[key]
    value = data.draw(st.one_of(st.sampled_from(allowed), TYPED.filter(lambda v: v not in allowed)))
    companions = [f"{k}={v}" for k, v in COMPANIONS.get(value, {}).items()]
    result = cli("train", "--set", f"{key}={value}", *[a for c in companions for a in ("--set", c)], "--dry-run")
    if value in allowed:
        assert result.exit_code == 0 and f'{key.split(".")[1]} = "{value}"' in result.output, result.output
    else:
        assert result.exit_code == 1, result.output
        assert result.output.strip() == f"Error: {key} {value!r} is not known; use one of {', '.join(allowed)}."


# -- whole recipes and command lines ------------------------------------------------------------

KEYS = {
    "data": ["spec", "resolution", "target", "level", "crop", "split", "test_fraction", "shots_per_class", "seed", "strict"],
    "generator": ["backend", "preset", "base_channels", "channel_mult", "lr", "batch_size", "duration_kimg", "loss",
                  "prediction", "schedule", "lr_schedule", "condition", "cond_drop_prob", "ema_decay", "flip",
                  "mixed_precision"],
    "sampling": ["sampler", "steps", "guidance", "seed", "batch_size", "network_batch", "images_per_shard"],
    "benchmark": ["classifier", "pretrained", "seeds", "shots_per_class", "synthetic_ratios", "guidance_sweep",
                  "mix_probability"],
}
values = st.one_of(st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                   st.text(max_size=12), st.lists(st.integers(-3, 5), max_size=3), st.lists(st.floats(-2, 5), max_size=3),
                   st.sampled_from(ALLOWED + ["huge", "x0", "l3", "bogus", "sideways", "genus"]))
names = st.one_of(st.sampled_from(sorted({k for v in KEYS.values() for k in v})), st.text("abcdefghij_", min_size=1, max_size=8))
recipes = st.dictionaries(st.sampled_from([*KEYS, "extra", "name", "run_dir"]),
                          st.one_of(st.dictionaries(names, values, max_size=4), values), max_size=4)


def has_a_bad_choice(data: dict) -> bool:
    """Whether a recipe sets an enumerated key to a value outside its allowed set."""
    return any(f"{section}.{name}" in CHOICES and value not in CHOICES[f"{section}.{name}"]
               for section, keys in data.items() if section in SECTIONS and isinstance(keys, dict)
               for name, value in keys.items())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=recipes)
def test_fuzzed_recipe_files_load_or_fail_with_one_sentence(data, tmp_path):
    path = tmp_path / "fuzz.toml"
    path.write_text(toml_text(data))
    try:
        load_recipe(path)
    except SynthaugError as e:
        assert "\n" not in str(e) and str(e).endswith((".", "?")), str(e)
    else:
        assert not has_a_bad_choice(data), data


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_fuzzed_bytes_as_a_recipe_fail_with_one_sentence(raw, tmp_path):
    path = tmp_path / "fuzz.toml"
    path.write_bytes(raw)
    try:
        load_recipe(path)
    except SynthaugError as e:
        assert "\n" not in str(e)


TRAIN_TOKENS = st.lists(st.one_of(
    st.sampled_from(["--set", "--fresh", "--bogus", "digits", "birds", "nope.toml", "-q"]),
    st.builds(lambda k, v: f"{k}={v}", st.sampled_from([f"{s}.{k}" for s, ks in KEYS.items() for k in ks] + ["x.y", "name"]),
              st.one_of(st.integers(-3, 9), st.sampled_from(["-1", "0", "1e9", "nan", "inf", "[1,2]", "true", "'a'", "x y", "",
                                                             "huge", "x0", "l3", "sideways", "genus", "tiny", "v", "hub"]))),
), max_size=5)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=TRAIN_TOKENS)
def test_fuzzed_train_arguments_never_trace_back(tokens, tmp_path):
    result = cli("train", *tokens, "--dry-run")
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 1:
        error_line(result)


GENERATE_TOKENS = st.lists(st.one_of(
    st.sampled_from(["--class", "--num", "--per-class", "--guidance", "--steps", "--seed", "--sampler", "--shard-size",
                     "--batch-size", "--all-classes", "--attr", "--species", "--overwrite", "--from-real", "--strength",
                     "--min-confidence", "--max-draws"]),
    st.sampled_from(["0", "1", "3", "-1", "2.5", "nan", "-0.5", "99", "abc", "ddim", "heun", "DDIM", "bangs=3", "7",
                     "0.3,0.6", "0.5", "1.5", "0,0.5", "inf"]),
), max_size=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tokens=GENERATE_TOKENS)
def test_fuzzed_generate_arguments_never_trace_back_or_leave_a_false_manifest(tokens, digits_run, tmp_path):
    out = tmp_path / f"out-{abs(hash(tuple(tokens)))}"
    args = ["generate", "--run", digits_run.path, "--out", out, "--steps", "1", *tokens]
    if "--num" in tokens or "--per-class" in tokens:
        args += ["--shard-size", "3"]
    result = cli(*args)
    assert result.exit_code in (0, 1), result.output
    if result.exit_code == 0:
        assert verify_shards(out)["ok"]  # a manifest is only there when every sample is
    else:
        error_line(result)
        assert not (out / "manifest.json").exists()
        for tar in out.glob("synth-*.tar") if out.exists() else []:
            assert tarfile.is_tarfile(tar)  # anything left under a final name is a complete shard


@settings(max_examples=60, deadline=None)
@given(strength=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.lists(st.floats(-1, 2), min_size=0, max_size=3)),
       confidence=st.floats(allow_nan=True, allow_infinity=True), draws=st.integers(-3, 20))
def test_fuzzed_variation_and_filter_settings_are_checked_exactly(strength, confidence, draws):
    """--strength, --min-confidence and --max-draws: a value outside its range is a SynthaugError naming the argument
    (the command line names the option), raised when the request is made (before anything is drawn or written); any
    value inside it is accepted."""
    from synthaug.cli import FLAGS
    from synthaug.synthesis import GenerateRequest

    strengths = tuple(strength) if isinstance(strength, list) else (strength,)
    valid = (bool(strengths) and all(0 < v <= 1 for v in strengths), 0 <= confidence < 1, draws >= 1)
    try:
        GenerateRequest(all_classes=True, num=4, from_real=True, strengths=strengths, min_confidence=confidence, max_draws=draws)
    except SynthaugError as e:
        first_bad = ["strength", "min_confidence", "max_draws"][valid.index(False)]
        assert str(e).startswith(first_bad + " ") and "\n" not in str(e)
        assert e.sentence(FLAGS["generate"]).startswith("--" + first_bad.replace("_", "-") + " ")
    else:
        assert all(valid)


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_any_text_written_into_a_recipe_reads_back_the_same(text):
    """Saved recipes hold what the user typed (a class name, a prompt): every character survives TOML, DEL too."""
    import tomllib

    assert tomllib.loads(f"x = {toml_value(text)}")["x"] == text


# -- numbers: every numeric recipe key and command option refuses non-finite and absurd values ---------------

NUMERIC = {f"{section}.{name}": hint for section, cls in SECTIONS.items() for name, hint in typing.get_type_hints(cls).items()
           if hint in (int, float) or typing.get_args(hint)[:1] in ((int,), (float,))}
ABSURD = ["nan", "inf", "-inf", "1e308", "1e400", "-1e308", "99999999999999999999", "-99999999999999999999"]


def test_every_numeric_key_is_fuzzed():
    assert {"generator.lr", "generator.batch_size", "generator.duration_minutes", "sampling.guidance", "data.seed",
            "benchmark.synthetic_ratios", "benchmark.guidance_sweep"} <= set(NUMERIC)


@pytest.mark.parametrize("key", sorted(NUMERIC))
@pytest.mark.parametrize("value", ABSURD)
def test_non_finite_and_huge_numbers_fail_at_load_naming_the_key(key, value):
    listed = typing.get_origin(NUMERIC[key]) is tuple
    try:
        load_recipe(None, [f"{key}={'[' + value + ']' if listed else value}"])
    except SynthaugError as e:
        assert str(e).startswith(key) and "\n" not in str(e), str(e)
    else:
        raise AssertionError(f"{key} = {value} loaded")


NUMBER_OPTIONS = {
    "train": ["--minutes"],
    "generate": ["--num", "--per-class", "--guidance", "--steps", "--seed", "--batch-size", "--shard-size", "--min-confidence"],
    "inspect": ["--resolution", "--shots-per-class", "--seed"],
}


@pytest.mark.parametrize("command, option", [(c, o) for c, options in NUMBER_OPTIONS.items() for o in options])
@pytest.mark.parametrize("value", ["nan", "inf", "1e308", "99999999999999999999"])
def test_non_finite_and_huge_command_options_are_one_sentence(command, option, value, digits_run, tmp_path):
    args = {"train": ["train", "--dry-run"],
            "generate": ["generate", "--run", digits_run.path, "--out", tmp_path / "out", "--class", "3",
                         *(["--num", "2"] if option not in ("--num", "--per-class") else [])],
            "inspect": ["inspect", "digits", "--grid", tmp_path / "grid.png"]}[command]
    result = cli(*args, option, value)
    assert result.exit_code == 1, result.output
    error_line(result)
    assert not (tmp_path / "out" / "manifest.json").exists()

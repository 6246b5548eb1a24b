"""Recipe values are typed: every value of a recipe file or a ``--set`` override is checked against its field's
type and coerced when the recipe is built ('5e-4' -> 0.0005), and a value that cannot be is a one-line error
naming the key, the value and the type, before anything runs (issue 8 §6)."""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field

import pytest
import yaml

from divscale import cli, config, paths
from divscale.config import Recipe, RecipeError, coerce_value, load_recipe, parse_overrides

RECIPES = sorted(p.stem for p in paths.RECIPES_DIR.glob("*.yaml"))


def _recipe_file(tmp_path, text: str):
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump(yaml.safe_load((paths.RECIPES_DIR / "smoke.yaml").read_text())) + text)
    return path


def test_yaml_reads_an_exponent_without_a_dot_as_a_string():
    """The cause: YAML 1.1 needs a dot in a float, so `learning_rate: 5e-4` arrives as the string '5e-4'."""
    assert yaml.safe_load("learning_rate: 5e-4") == {"learning_rate": "5e-4"}


def test_recipe_file_values_are_coerced(tmp_path):
    path = _recipe_file(tmp_path, "")
    tree = yaml.safe_load(path.read_text())
    tree["train"].update({"learning_rate": "5e-4", "max_steps": "10", "dpo_learning_rate": "1e-6", "bf16": "yes"})
    tree["data"]["test_size"] = "12"
    tree["train"]["per_device_batch_by_n"] = {"4": "2"}
    path.write_text(yaml.safe_dump(tree).replace("learning_rate: '5e-4'", "learning_rate: 5e-4"))
    assert "learning_rate: 5e-4\n" in path.read_text()        # written as a user would write it
    r = load_recipe(path)
    assert r.train.learning_rate == 0.0005 and type(r.train.learning_rate) is float
    assert r.train.max_steps == 10 and type(r.train.max_steps) is int
    assert r.train.dpo_learning_rate == 1e-6 and r.train.bf16 is True and r.data.test_size == 12
    assert r.train.per_device_batch_by_n == {4: 2}


def test_set_overrides_are_coerced():
    r = load_recipe("smoke", parse_overrides(["train.learning_rate=5e-4", "train.max_steps=10", "data.test_size=null",
                                              "train.seeds=[1, '2']"]))
    assert r.train.learning_rate == 0.0005 and type(r.train.learning_rate) is float
    assert r.train.max_steps == 10 and r.data.test_size is None and r.train.seeds == [1, 2]


@pytest.mark.parametrize("name", RECIPES)
def test_well_typed_values_pass_unchanged_so_hashes_do_not_move(name, monkeypatch):
    """Every committed recipe is already well typed: coercion leaves its values (and run hashes) as they were,
    e.g. an int in a float field stays an int."""
    checked = load_recipe(name)
    monkeypatch.setattr(config, "coerce_value", lambda hint, value, *a, **k: value)
    assert load_recipe(name).to_dict() == checked.to_dict() and load_recipe(name).hash() == checked.hash()
    assert coerce_value(float, 1, "x") == 1 and type(coerce_value(float, 1, "x")) is int


def _sections():
    for f in dataclasses.fields(Recipe):
        if f.default_factory is not dataclasses.MISSING and dataclasses.is_dataclass(f.default_factory):
            yield f.name, f.default_factory


@pytest.mark.parametrize("section,cls", list(_sections()))
def test_every_field_has_a_checkable_type_and_a_default_of_it(section, cls):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        if dataclasses.is_dataclass(hints[f.name]):          # a nested section (grid.primary): its own fields
            test_every_field_has_a_checkable_type_and_a_default_of_it(f"{section}.{f.name}", hints[f.name])
            continue
        assert coerce_value(hints[f.name], default, f"{section}.{f.name}") == default, f.name


@pytest.mark.parametrize("key,value,type_name", [
    ("train.max_steps", "ten", "int"),
    ("train.max_steps", "2.5", "int"),
    ("train.max_steps", "true", "int"),                          # a bool is not a number
    ("train.learning_rate", "fast", "float"),
    ("train.bf16", "maybe", "bool"),
    ("data.test_size", "all", "int | None"),
    ("train.seeds", "[42, x]", "list[int]"),
    ("train.seeds", "42", "list[int]"),
    ("train.per_device_batch_by_n", "{4: big}", "dict[int, int]"),
    ("policy.model", "123", "str"),
])
def test_a_bad_override_is_a_one_line_error_naming_key_value_and_type(key, value, type_name):
    with pytest.raises(RecipeError) as err:
        load_recipe("smoke", parse_overrides([f"{key}={value}"]))
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"--set {key}=")
    assert f"is not of type {type_name} (" in msg and f"give {key} a value of type {type_name}" in msg
    assert repr(yaml.safe_load(value)) in msg


def test_a_bad_file_value_names_the_file_and_key(tmp_path):
    path = _recipe_file(tmp_path, "")
    tree = yaml.safe_load(path.read_text())
    tree["train"]["max_steps"] = "ten"
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError, match=r"mine\.yaml: train\.max_steps='ten' is not of type int \(.*\); "
                                          r"give train\.max_steps a value of type int, e.g\. its default 4000$"):
        load_recipe(path)
    with pytest.raises(RecipeError, match=r"--set train.max_steps=7.5 is not of type int"):   # --set is named
        load_recipe(path, {"train.max_steps": "7.5"})
    assert load_recipe(path, {"train.max_steps": "7"}).train.max_steps == 7      # --set wins over the file


def test_other_recipe_errors_stay_clear():
    with pytest.raises(RecipeError, match=r"unknown key\(s\) \['train.max_stepz'\]"):
        load_recipe("smoke", {"train.max_stepz": 3})
    with pytest.raises(RecipeError, match="train.learning_rate is a value, not a section"):
        load_recipe("smoke", {"train.learning_rate.x": 3})
    with pytest.raises(RecipeError, match=r"--set data.subsets='\[a' is not a YAML value"):
        load_recipe("smoke", parse_overrides(["data.subsets=[a"]))
    assert issubclass(RecipeError, ValueError)                  # the CLI's one-line error path


@dataclass
class _Literal:
    mode: typing.Literal["exact", "minhash"] = "exact"
    ratios: list[float] = field(default_factory=list)
    opt: typing.Optional[float] = None                          # noqa: UP045 (the typing spelling works too)


def test_literal_optional_and_nested_items():
    built = config.build_config(_Literal, {"mode": "minhash", "ratios": ["1e-3", 2], "opt": "5e-4"}, "x.yaml")
    assert built == _Literal("minhash", [0.001, 2.0], 0.0005)
    with pytest.raises(RecipeError, match=r"x.yaml: mode='fuzzy' is not of type Literal\['exact', 'minhash'\]"):
        config.build_config(_Literal, {"mode": "fuzzy"}, "x.yaml")
    with pytest.raises(RecipeError, match=r"ratios=\['1e-3', 'lots'\] is not of type list\[float\] \(item \[1\]"):
        config.build_config(_Literal, {"ratios": ["1e-3", "lots"]}, "x.yaml")


def test_cli_train_rejects_a_bad_value_before_anything_runs(tmp_path, monkeypatch, capsys):
    """`divscale train --set train.max_steps=ten`: exit 1, one line on stderr, nothing written (no .partial)."""
    from divscale.study import pipeline

    monkeypatch.setattr(pipeline, "train_cell", lambda *a, **k: pytest.fail("training started"))
    monkeypatch.setattr(pipeline, "grid", lambda *a, **k: pytest.fail("the grid was built"))
    argv = ["train", "--recipe", "smoke", "--algo", "pro", "--ranking-len", "3", "--prompts", "4", "--seed", "42",
            "--set", "train.max_steps=ten", "--runs-dir", str(tmp_path / "runs")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("divscale train: error: --set train.max_steps='ten' is not of type int (input should be a "
                   "valid integer, unable to parse string as an integer); give train.max_steps a value of type "
                   "int, e.g. its default 4000")
    assert not (tmp_path / "runs").exists()


# --------------------------------------------------------------------------- choices and rules, checked at build

@pytest.mark.parametrize("key,value,choices", [
    ("train.algos", "[sft, ppo]", "'sft', 'pro', 'dpo'"),
    ("train.dpo_pairs", "random", "'best-vs-rest', 'adjacent', 'all'"),
    ("train.checkpoint", "best", "'best-dev', 'last'"),
    ("data.split_mode", "train", "'auto', 'paper', 'carve'"),
    ("policy.dtype", "float64", "'float32', 'bfloat16', 'float16'"),
    ("augment.backend", "lsh", "'exact', 'minhash'"),
    ("grid.executor", "k8s", "'local', 'slurm', 'submitit-local'"),
])
def test_choice_fields_are_literals_checked_when_the_recipe_is_built(key, value, choices):
    with pytest.raises(RecipeError) as err:
        load_recipe("smoke", parse_overrides([f"{key}={value}"]))
    assert "\n" not in str(err.value) and choices in str(err.value) and key in str(err.value)


@pytest.mark.parametrize("overrides,message", [
    ({"train.max_length": 512}, "train.max_length=512 exceeds policy.block_size=256 (the tiny GPT's positions)"),
    ({"train.max_prompt_length": 160}, "train.max_prompt_length=160 must be in [1, max_length=160)"),
    ({"train.max_length": None, "train.max_prompt_length": 300}, "must be in [1, max_length=256)"),
    ({"policy.dtype": "float16"}, "policy.dtype=float16 trains float16 weights under AdamW"),
    ({"policy.n_embd": 65}, "policy.n_embd=65 must be divisible by policy.n_head=2"),
    ({"train.eval_every": 0}, "train.eval_every=0 must be >= 1"),
    ({"train.beta": 0}, "train.beta must be > 0"),
    ({"data.ranking_lengths": [1, 2]}, "every n must be >= 2"),
])
def test_cross_field_rules_are_one_line_errors_at_build(overrides, message):
    with pytest.raises(RecipeError) as err:
        load_recipe("smoke", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_one_block_size_train_lengths_default_from_the_policy():
    cpu = load_recipe("cpu")
    assert cpu.train.max_length is None and cpu.policy.block_size == 192      # one number: the policy's positions
    from divscale.train.runs import cell_lengths

    assert cell_lengths(cpu, cpu.policy.block_size) == (192, 128)


def test_old_train_keys_still_load_with_a_warning(tmp_path):
    path = _recipe_file(tmp_path, "")
    tree = yaml.safe_load(path.read_text())
    train = tree["train"]
    train["lr"] = train.pop("learning_rate")
    train["block_size"] = train.pop("max_length")
    train["max_prompt_tokens"] = train.pop("max_prompt_length")
    train["per_device_batch"] = train.pop("per_device_train_batch_size")
    train["dpo_beta"] = 0.3
    path.write_text(yaml.safe_dump(tree))
    with pytest.warns(FutureWarning, match="train.lr is deprecated"):
        r = load_recipe(path, {"train.dpo_lr": "1e-6"})
    assert (r.train.learning_rate, r.train.max_length, r.train.max_prompt_length) == (1e-3, 160, 128)
    assert (r.train.per_device_train_batch_size, r.train.beta, r.train.dpo_learning_rate) == (4, 0.3, 1e-6)
    same = load_recipe("smoke", {"train.beta": 0.3, "train.dpo_learning_rate": 1e-6})
    assert {**r.to_dict(), "name": "smoke"} == same.to_dict()
    with pytest.warns(FutureWarning, match="train.block_size is deprecated"):
        assert r.train.block_size == 160                              # read by code not yet moved
    train["learning_rate"] = 2e-3                                      # one file giving a field twice
    path.write_text(yaml.safe_dump(tree))
    with pytest.raises(RecipeError, match="give train.learning_rate only"):
        load_recipe(path)


def test_a_deprecated_override_overrides_the_current_field():
    """`--set train.lr=...` on a recipe that says learning_rate (and the other way round) sets that field."""
    with pytest.warns(FutureWarning, match="train.lr is deprecated"):
        r = load_recipe("smoke", {"train.lr": "3e-5"})
    assert r.train.learning_rate == 3e-5
    assert load_recipe("smoke", {"train.learning_rate": 2e-5}).train.learning_rate == 2e-5

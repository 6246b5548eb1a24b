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
    """The cause: YAML 1.1 needs a dot in a float, so `lr: 5e-4` arrives as the string '5e-4'."""
    assert yaml.safe_load("lr: 5e-4") == {"lr": "5e-4"}


def test_recipe_file_values_are_coerced(tmp_path):
    path = _recipe_file(tmp_path, "")
    tree = yaml.safe_load(path.read_text())
    tree["train"].update({"lr": "5e-4", "max_steps": "10", "dpo_lr": "1e-6", "bf16": "yes"})
    tree["data"]["test_size"] = "12"
    tree["train"]["per_device_batch_by_n"] = {"4": "2"}
    path.write_text(yaml.safe_dump(tree).replace("lr: '5e-4'", "lr: 5e-4"))
    assert "lr: 5e-4\n" in path.read_text()                   # written as a user would write it
    r = load_recipe(path)
    assert r.train.lr == 0.0005 and type(r.train.lr) is float
    assert r.train.max_steps == 10 and type(r.train.max_steps) is int
    assert r.train.dpo_lr == 1e-6 and r.train.bf16 is True and r.data.test_size == 12
    assert r.train.per_device_batch_by_n == {4: 2}


def test_set_overrides_are_coerced():
    r = load_recipe("smoke", parse_overrides(["train.lr=5e-4", "train.max_steps=10", "data.test_size=null",
                                              "train.seeds=[1, '2']"]))
    assert r.train.lr == 0.0005 and type(r.train.lr) is float
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
        assert coerce_value(hints[f.name], default, f"{section}.{f.name}") == default, f.name


@pytest.mark.parametrize("key,value,type_name", [
    ("train.max_steps", "ten", "int"),
    ("train.max_steps", "2.5", "int"),
    ("train.max_steps", "true", "int"),                          # a bool is not a number
    ("train.lr", "fast", "float"),
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
    with pytest.raises(RecipeError, match="train.lr is a value, not a section"):
        load_recipe("smoke", {"train.lr.x": 3})
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

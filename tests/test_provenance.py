"""divscale.provenance's content hashes: one set of helpers, each with the output of the helper it replaced.

The expected values were computed on these fixed inputs by the helpers' former homes before they moved here
(config.config_hash, train.runs.sha256_json / weights_sha256, models.tiny_gpt.texts_hash, the file and text digests
of data/*, report/publish.py and reward/rm.py), so a changed value means a changed cache key or recorded hash."""
from __future__ import annotations

import ast
import pathlib

import pytest
import torch

from divscale import paths, provenance
from divscale.data.hh import from_pro_record

FILE_BYTES = b"divscale\n\x00\xff" * 1000
FILE_SHA = "a90f33eec5db20f69f8e93e68c416f6781f63aaeca6ed4b14c46f947e7b3f8e1"


def test_hash_values_are_those_of_the_helpers_they_replaced(tmp_path):
    f = tmp_path / "f.bin"
    f.write_bytes(FILE_BYTES)
    lin = torch.nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.arange(6, dtype=torch.float32).reshape(2, 3) / 7)
        lin.bias.copy_(torch.tensor([0.5, -1.0]))
    assert provenance.config_hash("a", {"b": [1, 2.5, None], "é": (1, 2)}) == "9a4cac44c390"
    assert provenance.config_hash({"k": 1}, length=16) == "3bcfd65594593f87"
    assert provenance.sha256_json({"x": [1, "é"], "y": None, "z": pathlib.Path("p")}) == \
        "3c546ee63a4aa3157d5fc4d2d7751cab33011c2ac499936bb16d37a4ffd75ff6"
    assert provenance.weights_sha256(lin) == "7b30802f9988732149a543f67b67b59bdd4802bfdffc2a9d15433b91be118bce"
    assert provenance.texts_hash(["a", "é", ""]) == "dabd735da0c5c9aa1fe4e6dc8ee0f8d3a88cb709e0aee3cf855fdf557ed2e51a"
    assert provenance.file_sha256(f) == FILE_SHA and provenance.file_sha256(f, length=16) == FILE_SHA[:16]
    assert provenance.sha256_hex(FILE_BYTES) == FILE_SHA and provenance.sha256_hex(FILE_BYTES, 16) == FILE_SHA[:16]
    assert provenance.sha256_hex("héllo", 12) == "3c48591d8d09"                    # a text: its UTF-8 bytes
    assert from_pro_record({"prefix": [["<|prompter|>hé", "<|assistant|>"]], "suffix": ["x"]}).id == "pro:e47d2308a34a"


def test_config_hash_is_sha256_json_of_its_arguments():
    objs = ("bpe-v1", ["a", 1], {"z": 1, "a": None})
    assert provenance.config_hash(*objs, length=64) == provenance.sha256_json(list(objs))
    assert provenance.config_hash(*objs) == provenance.sha256_json(list(objs))[:12]


def test_no_other_module_hashes_by_hand():
    """Content hashes are made in provenance.py only. The exceptions hash inside a step's code, where replacing
    them would move that step's code key (and force its cached artifacts to be rebuilt); each is named here."""
    allowed = {("models/hub.py", "smollm2_from_wheel"), ("models/generation.py", "row_seed"),
               ("reward/rankings.py", "prompt_key"), ("reward/rm.py", "prompt_half"),
               ("reward/rm.py", "EmbeddingCache._key"), ("reward/rm.py", "EmbeddingRM.__init__"),
               ("reward/rm.py", "_file_sha256"), ("reward/rm.py", "_texts_digest")}
    found = set()

    def visit(node, scope, rel):
        for child in ast.iter_child_nodes(node):
            name = scope
            if isinstance(child, (ast.FunctionDef, ast.ClassDef)):
                name = f"{scope}.{child.name}" if scope else child.name
            if isinstance(child, ast.Attribute) and isinstance(child.value, ast.Name) and child.value.id == "hashlib":
                found.add((rel, scope))
            visit(child, name, rel)

    for path in sorted((paths.ROOT / "divscale").rglob("*.py")):
        if path.name != "provenance.py":
            visit(ast.parse(path.read_text()), "", str(path.relative_to(paths.ROOT / "divscale")))
    assert found <= allowed, sorted(found - allowed)


@pytest.mark.parametrize("name", provenance.RECORDED_HASHES)
def test_a_recorded_hash_is_part_of_the_code_of_the_steps_that_use_it(name):
    """The hashes a step writes into its artifacts are followed into provenance.py (nothing else there is): moving
    them here kept every step's code key, and editing one would move the keys of the steps that record it."""
    reached = {step: {n for n, _ in provenance.closure(*roots)} for step, roots in provenance.STEPS.items()}
    assert any(name in names for names in reached.values())
    assert not {"config_hash", "file_sha256", "sha256_hex", "code_version"} & set().union(*reached.values())

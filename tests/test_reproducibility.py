"""Same inputs, same bytes: what a cache held before, the batch a text or prompt landed in, and the thread count
must not change an embedding, a sampled extension, an RM head or a cache key; code versions cover exactly the
code a step runs."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from divscale import provenance


def _texts(hh_sample_texts, n=24):
    # different lengths, so a padded batch would pad most of them
    return [t[: 60 + 37 * i] for i, t in enumerate(hh_sample_texts[:n])]


def test_embeddings_do_not_depend_on_what_was_cached_before_or_on_threads(tmp_path, hh_sample_texts):
    from divscale.reward.rm import EmbeddingCache

    texts = _texts(hh_sample_texts)
    cold = EmbeddingCache(db_path=tmp_path / "cold.sqlite").encode(texts)
    warm_cache = EmbeddingCache(db_path=tmp_path / "warm.sqlite")
    warm_cache.encode(texts[::3][::-1])                    # pre-warmed with other texts, in other batches
    torch.set_num_threads(2)                               # the rest on another thread count
    warm = warm_cache.encode(texts)
    assert warm.tobytes() == cold.tobytes()
    # and the vector of a text is the one it gets alone
    alone = EmbeddingCache(db_path=tmp_path / "alone.sqlite").encode([texts[5]])
    assert alone[0].tobytes() == cold[5].tobytes()


def test_rm_heads_are_byte_identical_from_a_cold_and_a_pre_warmed_cache(tmp_path, monkeypatch, hh_dir):
    from divscale import paths
    from divscale.data.hh import load_hh_rlhf
    from divscale.reward.rm import train_reward_model

    pairs = load_hh_rlhf(("helpful-base", "harmless-base"), "test", hh_dir).select(range(60))
    heads = []
    for name, warm in (("cold", None), ("warm", pairs.select(range(0, 60, 4)))):
        monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / name))
        assert paths.cache_dir() == tmp_path / name
        if warm is not None:
            train_reward_model(warm, epochs=1, hidden=16)
        rm = train_reward_model(pairs, epochs=2, hidden=16, seed=3)
        heads.append(hashlib.sha256(b"".join(v.numpy().tobytes() for v in rm.head.state_dict().values())).hexdigest())
    assert heads[0] == heads[1]


def test_sampled_extensions_do_not_depend_on_what_was_cached(tmp_path, tiny_gpt, tiny_tokenizer, hh_sample_texts):
    from divscale.data.hh import Ranking
    from divscale.reward.rankings import extend_rankings

    class LengthRM:
        def score(self, prompts, responses, **kw):
            return np.array([len(r) for r in responses], dtype=float)

    prompts = [f"\n\nHuman: {t[:40 + 11 * i]}\n\nAssistant:" for i, t in enumerate(hh_sample_texts[:7])]
    pool = [Ranking(id=f"x:{i}", prompt=p, responses=["a", "b"], rewards=[float("nan")] * 2,
                    sources=["human-chosen", "human-rejected"], subset="helpful-base") for i, p in enumerate(prompts)]
    kw = {"k": 2, "max_new_tokens": 6, "batch_size": 4, "generator_name": "tiny", "progress": False}
    cold = extend_rankings(pool, (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path / "cold", **kw)
    extend_rankings(pool[4:6], (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path / "warm", **kw)
    warm = extend_rankings(pool, (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path / "warm", **kw)
    assert [r.responses for r in warm] == [r.responses for r in cold]
    assert len({tuple(r.responses) for r in cold}) > 1


def _package(root, name: str, files: dict[str, str]):
    """A throwaway package ``name`` under ``root`` with the given modules, imported fresh."""
    import importlib
    import sys
    import textwrap

    folder = root / name
    folder.mkdir()
    (folder / "__init__.py").write_text("")
    for module, source in files.items():
        (folder / f"{module}.py").write_text(textwrap.dedent(source))
    sys.path.insert(0, str(root))
    try:
        importlib.invalidate_caches()
        return {m: importlib.import_module(f"{name}.{m}") for m in files}
    finally:
        sys.path.remove(str(root))


def test_a_key_survives_moving_code_and_moves_when_the_code_changes(tmp_path):
    """A step's code is named by qualified name, not by module or file: moving a function to another module,
    deleting code no root reaches, or rewording a docstring keep the key; editing a reached body changes it."""
    one = {"a": '''
        SCALE = 2

        def root(x):
            from .util import helper    # an import of the package's own code inside a function

            return helper(x) * SCALE
        ''', "util": '''
        def helper(x):
            """Add one."""
            return x + 1
        ''', "b": '''
        def unused():
            return 0
        '''}
    moved = {"a": '''
        SCALE = 2

        def root(x):
            from .b import helper       # the helper now lives in b

            return helper(x) * SCALE
        ''', "b": '''
        def helper(x):
            """Add one to x (reworded)."""
            return (x +
                    1)
        '''}
    edited = one | {"util": one["util"].replace("x + 1", "x + 2")}
    constant = one | {"a": one["a"].replace("SCALE = 2", "SCALE = 3")}
    keys = {}
    for name, files in {"k_one": one, "k_moved": moved, "k_edited": edited, "k_constant": constant}.items():
        _package(tmp_path, name, files)
        keys[name] = provenance.closure(f"{name}.a:root", package=name)
    assert {n for n, _ in keys["k_one"]} == {"root", "helper", "SCALE"}          # unused() is not reached
    assert keys["k_moved"] == keys["k_one"]
    assert keys["k_edited"] != keys["k_one"] and keys["k_constant"] != keys["k_one"]


def test_code_version_covers_the_steps_code_and_nothing_else(monkeypatch):
    provenance.code_version.cache_clear()          # other tests' stand-ins (monkeypatched steps) may be cached
    provenance.closure.cache_clear()
    reached = {step: {n for n, _ in provenance.closure(*roots)} for step, roots in provenance.STEPS.items()}
    from divscale.report import analysis, plots
    from divscale.report import publish as summary

    for module in (analysis, plots, summary):
        public = {n for n, v in vars(module).items() if callable(v) and getattr(v, "__module__", "") == module.__name__}
        assert not any(public & names for names in reached.values()), module.__name__
    assert "pro_loss_parts" in reached["train"] and "pro_loss_parts" not in reached["eval"]
    assert not {"_VERIFIED", "_LOGGED", "_ENCODERS", "_EMBED_WORKERS"} & set().union(*reached.values())  # state
    before = {s: provenance.code_version(s) for s in provenance.STEPS}
    real = provenance.normalized_source
    provenance.code_version.cache_clear()
    provenance.closure.cache_clear()
    monkeypatch.setattr(provenance, "normalized_source",
                        lambda obj, package="divscale": real(obj, package) + (
                            "#edited" if obj.__qualname__ == "pro_loss_parts" else ""))
    after = {s: provenance.code_version(s) for s in provenance.STEPS}
    provenance.code_version.cache_clear()
    provenance.closure.cache_clear()
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"train"}                               # editing the PRO loss re-trains, nothing else
    with pytest.raises(KeyError, match="unknown step"):
        provenance.code_version("nope")


def test_every_declared_root_exists():
    for roots in provenance.STEPS.values():
        for entry in roots:
            assert callable(provenance._resolve(entry)), entry


@pytest.mark.slow
def test_smoke_artifacts_rebuild_identically_from_two_empty_caches(tmp_path):
    """`make verify` on a reduced smoke profile: one build pre-warmed by a different build on one thread, one cold
    on two threads; embeddings, RM heads, generations, rankings, policy and eval key must hash alike."""
    from divscale.study.grid import verify_builds

    small = ["data.sizes=[6, 12]", "ranking.max_new_tokens=8", "data.pool_size=60", "grid.primary.budget=null"]
    report = verify_builds("smoke", small, tmp_path, warm=["reward.max_pairs=20", "data.sizes=[4]"])
    assert report["differ"] == [], {k: (report["a"][k], report["b"].get(k)) for k in report["differ"]}
    assert {"embeddings", "rm_train", "rm_test", "generations", "rankings", "policy"} <= set(report["a"])


def test_evaluation_records_its_time_and_finish_and_keys_by_rm_test(tmp_path, monkeypatch):
    """eval_seconds and created come from the evaluation itself (kept when the row is rebuilt from the cached
    evaluation), and a new RM_test fingerprint is a new evaluation."""
    import json
    import time

    from divscale.config import load_recipe
    from divscale.reward import evaluate
    from divscale.study import pipeline

    class FakeRM:
        fingerprint = "rmtest-a"

    R = load_recipe("smoke")
    rm = FakeRM()
    monkeypatch.setattr(pipeline, "reward_models", lambda R: (None, rm))
    monkeypatch.setattr(pipeline, "test_prompts", lambda R: {})

    def fake_eval(checkpoint, recipe, prompts, rm_test, out_dir, progress=False):
        time.sleep(0.05)
        out_dir.mkdir(parents=True)
        (out_dir / "eval.json").write_text(json.dumps({"reward": {"Global": 50.0}, "ci": {"Global": [49, 51]}}))

    monkeypatch.setattr(evaluate, "evaluate_checkpoint", fake_eval)
    first = pipeline.evaluate_run(R, tmp_path / "run")
    assert first["seconds"] >= 0.05 and first["finished"] and first["eval_key"] == Path(first["eval_dir"]).name
    again = pipeline.evaluate_run(R, tmp_path / "run")
    assert again["finished"] == first["finished"] and again["seconds"] == first["seconds"]   # not restamped
    time.sleep(0.01)
    rm.fingerprint = "rmtest-b"                                       # RM_test re-trained
    other = pipeline.evaluate_run(R, tmp_path / "run")
    assert other["eval_key"] != first["eval_key"] and other["finished"] > first["finished"]


def test_a_class_made_at_run_time_is_left_out_whether_or_not_it_exists_yet(tmp_path):
    """A class made by running code (the OpenAssistant RM classes are registered at load time) has no source of
    its own, and whether it exists depends on what ran before: the key is the same before and after."""
    mods = _package(tmp_path, "k_runtime", {"a": '''
        def make():
            global Made
            Made = type("Made", (), {"x": 1})

        def root():
            make()
            return Made().x
        '''})
    before = provenance.closure("k_runtime.a:root", package="k_runtime")
    assert mods["a"].root() == 1                      # now Made exists in the module
    provenance.closure.cache_clear()
    after = provenance.closure("k_runtime.a:root", package="k_runtime")
    assert before == after and {n for n, _ in after} == {"root", "make"}

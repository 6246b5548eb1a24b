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
    from divscale.reward import EmbeddingCache

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
    from divscale.data import load_hh_rlhf
    from divscale.reward import train_reward_model

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
    from divscale.data import Ranking
    from divscale.rankings import extend_rankings

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


def test_code_version_covers_the_steps_code_and_nothing_else(monkeypatch):
    for step, entries in provenance.STEPS.items():
        modules = {e.split(":")[0] for e in entries}
        assert not modules & {"divscale.analysis", "divscale.plots", "divscale.notebooks"}, step
    before = {s: provenance.code_version(s) for s in provenance.STEPS}
    real = provenance._source
    provenance.code_version.cache_clear()
    monkeypatch.setattr(provenance, "_source", lambda e: real(e) + ("#edited" if e == "divscale.pro" else ""))
    after = {s: provenance.code_version(s) for s in provenance.STEPS}
    provenance.code_version.cache_clear()
    changed = {s for s in before if before[s] != after[s]}
    assert changed == {"train"}                               # editing pro.py re-trains, nothing else
    with pytest.raises(KeyError, match="unknown step"):
        provenance.code_version("nope")


def test_every_declared_piece_of_code_exists():
    for entries in provenance.STEPS.values():
        for entry in entries:
            assert not provenance._source(entry).startswith("<"), entry


@pytest.mark.slow
def test_smoke_artifacts_rebuild_identically_from_two_empty_caches(tmp_path):
    """`make verify` on a reduced smoke profile: one build pre-warmed by a different build on one thread, one cold
    on two threads; embeddings, RM heads, generations, rankings, policy and eval key must hash alike."""
    from divscale.grid_runner import verify_builds

    small = ["data.sizes=[6, 12]", "ranking.max_new_tokens=8", "data.pool_size=60"]
    report = verify_builds("smoke", small, tmp_path, warm=["reward.max_pairs=20", "data.sizes=[4]"])
    assert report["differ"] == [], {k: (report["a"][k], report["b"].get(k)) for k in report["differ"]}
    assert {"embeddings", "rm_train", "rm_test", "generations", "rankings", "policy"} <= set(report["a"])


def test_evaluation_records_its_time_and_finish_and_keys_by_rm_test(tmp_path, monkeypatch):
    """eval_seconds and created come from the evaluation itself (kept when the row is rebuilt from the cached
    evaluation), and a new RM_test fingerprint is a new evaluation."""
    import json
    import time

    from divscale import evaluate, pipeline
    from divscale.config import load_recipe

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

"""Worker processes give the serial path's bytes: SmolLM2 extensions (``extend_rankings(workers=...)``) and MiniLM
embeddings (``EmbeddingCache(workers=...)``), each worker a spawned process on one thread."""
from __future__ import annotations

import numpy as np
import pytest

import divscale.reward.rankings as rk
from divscale.data.hh import load_hh_rlhf, rankings_from_pairs
from divscale.models import hub as models


class LengthRM:
    def score(self, prompts, responses, batch_size=None, progress=False):
        return np.array([float(len(r)) for r in responses])


@pytest.fixture(scope="module")
def hh_pool(hh_dir):
    """Six real pool prompts (helpful-base and harmless-base test pairs)."""
    pairs = load_hh_rlhf(("helpful-base", "harmless-base"), "test", hh_dir)
    return rankings_from_pairs(pairs.select([0, 1, 2, 500, 501, 502]))


@pytest.mark.slow
def test_extensions_with_two_workers_equal_serial(hh_pool, tmp_path, monkeypatch):
    kw = {"k": 2, "max_new_tokens": 8, "max_prompt_tokens": 128, "seed": 42, "progress": False}
    serial = rk.extend_rankings(hh_pool, models.SMOLLM2_ID, LengthRM(), cache_dir=tmp_path / "serial",
                                workers=1, **kw)

    def no_load(name, dtype="float32"):   # the pool path loads the generator in the workers only
        raise AssertionError("the main process loaded the generator")

    monkeypatch.setattr(rk, "_load_generator", no_load)
    parallel = rk.extend_rankings(hh_pool, models.SMOLLM2_ID, LengthRM(), cache_dir=tmp_path / "parallel",
                                  workers=2, **kw)
    assert [r.id for r in parallel] == [r.id for r in serial]
    assert [r.responses for r in parallel] == [r.responses for r in serial]
    assert [r.rewards for r in parallel] == [r.rewards for r in serial]
    assert len({tuple(r.responses[2:]) for r in serial}) > 1
    # the cache file holds every prompt once (in completion order); a re-run is served from it
    (cache_file,) = (tmp_path / "parallel").glob("gen-*.jsonl")
    assert len(rk.load_cache(cache_file)) == len(hh_pool)
    again = rk.extend_rankings(hh_pool, models.SMOLLM2_ID, LengthRM(), cache_dir=tmp_path / "parallel",
                               workers=2, **kw)
    assert [r.responses for r in again] == [r.responses for r in serial]


def test_few_missing_prompts_or_a_model_object_stay_serial(tiny_gpt, tiny_tokenizer, hh_pool, tmp_path,
                                                             monkeypatch):
    def no_pool(*args, **kwargs):
        raise AssertionError("spawned a pool")

    monkeypatch.setattr(rk, "_sample_in_pool", no_pool)
    kw = {"k": 2, "max_new_tokens": 4, "max_prompt_tokens": 64, "progress": False, "generator_name": "tiny"}
    rk.extend_rankings(hh_pool, (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path / "a", workers=2, **kw)
    monkeypatch.setattr(rk, "_load_generator", lambda name, dtype="float32": (tiny_gpt, tiny_tokenizer))
    rk.extend_rankings(hh_pool[:3], "some/model", LengthRM(), cache_dir=tmp_path / "b", workers=2, **kw)


def test_build_rankings_passes_workers_and_keeps_the_folder_key(monkeypatch, tmp_path):
    from divscale.config import Recipe

    seen = {}

    def fake_extend(pool, generator, rm_train, **kw):
        seen.update(kw)
        return []

    monkeypatch.setattr(rk, "extend_rankings", fake_extend)
    from divscale.data import hh as data

    monkeypatch.setattr(data, "save_rankings", lambda path, ranked: None)
    recipe = Recipe()
    before = rk.rankings_dir(recipe, ["a"], "fp")
    recipe.ranking.workers = recipe.reward.workers = 2
    assert rk.rankings_dir(recipe, ["a"], "fp") == before
    rk.build_rankings(recipe, out_dir=tmp_path, progress=False, pool=[], rm_train=LengthRM())
    assert seen["workers"] == 2


@pytest.mark.slow
def test_embeddings_with_two_workers_equal_serial(tmp_path, hh_sample_texts, monkeypatch):
    from divscale.reward.rm import EmbeddingCache

    texts = [t[: 50 + 41 * i] for i, t in enumerate(hh_sample_texts[:10])]     # different lengths
    serial = EmbeddingCache(db_path=tmp_path / "serial.sqlite", workers=1).encode(texts)
    monkeypatch.setattr(EmbeddingCache, "MIN_TEXTS_PER_WORKER", 1)               # use the pool for 10 texts
    cache = EmbeddingCache(db_path=tmp_path / "parallel.sqlite", workers=2)
    parallel = cache.encode(texts)
    assert cache._model is None                                                  # embedded in the workers
    assert parallel.dtype == serial.dtype == np.float32
    assert np.array_equal(parallel, serial)
    # written to the sqlite cache by this process: a fresh serial cache on that file serves them as they are
    again = EmbeddingCache(db_path=tmp_path / "parallel.sqlite", workers=1)
    assert np.array_equal(again.encode(texts[::-1]), serial[::-1])
    assert again._model is None

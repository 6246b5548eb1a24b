"""Tests for divscale.tools.augment: the exact and MinHash Jaccard filters, the greedy augmentation, the
random baseline and the CLI."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from divscale.metrics import diversity as dv
from divscale.metrics.diversity import diversity_from_ids, ngram_codes
from divscale.tools import augment as ag


def naive_max_jaccard(cand, support) -> float:
    """Plain-Python reference: max over the support of |A & B| / |A | B| on Python sets."""
    a = {int(x) for x in cand}
    best = 0.0
    for s in support:
        b = {int(x) for x in s}
        union = len(a | b)
        best = max(best, len(a & b) / union if union else 0.0)
    return best


def synthetic_sets(seed=0, n_support=150, n_near=300, n_random=200, vocab=400):
    """Support sets, and candidates that are near-duplicates of them at many Jaccard levels + unrelated sets."""
    rng = np.random.default_rng(seed)
    support = [rng.choice(vocab, size=rng.integers(3, 40), replace=False) for _ in range(n_support)]
    cands = []
    for _ in range(n_near):
        s = support[rng.integers(len(support))]
        kept = s[rng.random(len(s)) > rng.random() * 0.7]
        cands.append(np.concatenate([kept, rng.choice(vocab, size=rng.integers(0, 6))]))
    cands += [rng.choice(vocab, size=rng.integers(3, 40), replace=False) for _ in range(n_random)]
    return support, cands


# ----------------------------------------------------------------------------- Jaccard

@pytest.mark.parametrize("tau", [0.2, 0.5, 0.8])
def test_exact_filter_decides_by_the_one_jaccard(tau):
    """The filter keeps a candidate exactly when its largest Jaccard with the support set, by the package's one
    Jaccard (divscale.metrics.diversity.jaccard_matrix, empty sets similar to nothing), is below tau."""
    support, cands = synthetic_sets(seed=3)
    empty = np.array([], dtype=np.int64)
    support, cands = support + [empty], cands[:60] + cands[-20:] + [empty]
    jac = dv.jaccard_matrix(cands + support)[: len(cands), len(cands):]
    keep = jac.max(axis=1) < tau
    assert 0 < keep.sum() < len(cands) and keep[-1]
    assert np.array_equal(ag.ExactJaccard(tau).fit(support).keep_mask(cands), keep)


@pytest.mark.parametrize("backend", ["exact", "minhash"])
def test_threshold_semantics_j_equal_tau_is_dropped(backend):
    support = [np.arange(0, 8), np.arange(100, 110)]
    half = np.concatenate([np.arange(0, 4), np.arange(200, 204)])   # J = 4 / 12 = 1/3 with support[0]
    same = np.arange(0, 8)                                          # J = 1
    mostly = np.arange(1, 9)                                        # J = 7 / 9
    for tau, expect in [(1.0, [True, False, True]), (7 / 9, [True, False, False]),
                        (1 / 3, [False, False, False]), (0.34, [True, False, False])]:
        if backend == "minhash" and tau not in (1.0,):
            continue                                     # estimates are approximate near tau
        f = ag.make_filter(backend, tau).fit(support)
        assert f.keep_mask([half, same, mostly]).tolist() == expect, tau
    exact = ag.ExactJaccard(0.5).fit([[1, 2]])
    # J = 1/3, 1/2 (= tau: dropped), 2/5, and the empty set
    assert exact.keep_mask([[1, 3], [1, 2, 3, 4], [1, 2, 3, 4, 5], []]).tolist() == [True, False, True, True]


@pytest.mark.parametrize("tau", [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
def test_exact_backend_matches_naive_reference(tau):
    support, cands = synthetic_sets(seed=1)
    truth = np.array([naive_max_jaccard(c, support) < tau for c in cands])
    assert 0.1 < truth.mean() < 0.99 or tau in (0.1, 1.0)
    assert np.array_equal(ag.ExactJaccard(tau).fit(support).keep_mask(cands), truth)
    # built incrementally (sets added later bring N-grams unseen at fit time), in small chunks
    f = ag.ExactJaccard(tau, chunk_elements=50).fit(support[:20])
    for s in support[20:]:
        f.add(s)
    assert len(f) == len(support)
    assert np.array_equal(f.keep_mask(cands), truth)


def test_minhash_agrees_with_exact_and_is_deterministic():
    support, cands = synthetic_sets(seed=2)
    exact = ag.ExactJaccard(0.5).fit(support).keep_mask(cands)
    mh1 = ag.MinHashJaccard(0.5, num_perm=128, seed=1).fit(support)
    mh2 = ag.MinHashJaccard(0.5, num_perm=128, seed=1).fit(support)
    keep1, keep2 = mh1.keep_mask(cands), mh2.keep_mask(cands)
    assert (keep1 == exact).mean() >= 0.9
    assert np.array_equal(keep1, keep2)
    sig1 = mh1.sketch(cands[:5])
    assert all(np.array_equal(a.hashvalues, b.hashvalues) for a, b in zip(sig1, mh2.sketch(cands[:5])))
    other = ag.MinHashJaccard(0.5, num_perm=128, seed=2).sketch(cands[:1])[0]
    assert not np.array_equal(other.hashvalues, sig1[0].hashvalues)       # the seed is really used
    assert sig1[0].scheme == "affine32"
    # adding to the support set one by one = fitting on all of it
    inc = ag.MinHashJaccard(0.5).fit(support[:10])
    for s in support[10:]:
        inc.add(s)
    assert np.array_equal(inc.keep_mask(cands), keep1)


def test_bad_filter_arguments():
    with pytest.raises(ValueError, match="tau"):
        ag.ExactJaccard(0.0)
    with pytest.raises(ValueError, match="unknown Jaccard backend"):
        ag.make_filter("faiss", 0.5)


# ----------------------------------------------------------------------------- augmentation

def rand_prompts(rng, k, length=(20, 40), vocab=5000):
    return [rng.integers(0, vocab, size=rng.integers(*length)).astype(np.int32) for _ in range(k)]


def near_copy(rng, ids, changes=1, vocab=5000):
    out = ids.copy()
    out[rng.choice(len(out), size=changes, replace=False)] = rng.integers(0, vocab, size=changes)
    return out


def test_greedy_picks_the_candidate_with_max_d_gain():
    rng = np.random.default_rng(0)
    seed = rand_prompts(rng, 5)
    shared = seed[0][:12]                                  # reuses 11 of the seed's bigrams
    pool = [np.concatenate([shared, rng.integers(0, 5000, 8)]).astype(np.int32),
            rng.integers(0, 5000, 60).astype(np.int32),  # all new bigrams and long: the best
            rng.integers(0, 5000, 10).astype(np.int32),
            np.concatenate([seed[1][:20], seed[2][:20]]).astype(np.int32)]
    gains = [diversity_from_ids(seed + [c]).d for c in pool]
    res = ag.diverse_augment(seed, pool, 1, m=len(pool), tau=0.9, seed=0)
    assert res.indices == [int(np.argmax(gains))] == [1]
    assert res.log[0]["d"] == pytest.approx(max(gains))
    assert res.d_seed == pytest.approx(diversity_from_ids(seed).d)


@pytest.mark.parametrize("backend", ["exact", "minhash"])
def test_near_duplicates_of_the_seed_are_never_added(backend):
    rng = np.random.default_rng(1)
    seed = rand_prompts(rng, 20)
    dups = [near_copy(rng, seed[i % 20]) for i in range(30)]       # J ~ 0.9 with a seed prompt
    fresh = rand_prompts(rng, 10)
    pool = dups[:15] + fresh + dups[15:]
    fresh_idx = set(range(15, 25))
    res = ag.diverse_augment(seed, pool, 10, m=4, tau=0.5, backend=backend, seed=3)
    assert set(res.indices) == fresh_idx
    assert res.n_dropped > 0 and not res.exhausted
    assert [e["step"] for e in res.log] == list(range(1, 11))
    # the log's d is the metric of seed + added so far
    for e in res.log[::3]:
        added = [pool[i] for i in res.indices[: e["step"]]]
        assert e["d"] == pytest.approx(diversity_from_ids(seed + added).d)
    # asking for more than the non-duplicates: a clear error, or a warning and the partial result
    with pytest.raises(ValueError, match=r"exhausted after adding 10 of k=12"):
        ag.diverse_augment(seed, pool, 12, m=4, tau=0.5, backend=backend, seed=3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        part = ag.diverse_augment(seed, pool, 12, m=4, tau=0.5, backend=backend, seed=3, on_exhausted="warn")
    assert part.exhausted and len(part.indices) == 10
    assert any("exhausted" in str(w.message) for w in caught)


def test_added_prompts_join_the_support_set():
    rng = np.random.default_rng(2)
    seed = rand_prompts(rng, 5)
    x = rng.integers(0, 5000, 30).astype(np.int32)
    pool = [x, x.copy(), near_copy(rng, x), rng.integers(0, 5000, 25).astype(np.int32)]
    res = ag.diverse_augment(seed, pool, 2, m=4, tau=0.5, seed=0)
    assert 3 in res.indices and len(set(res.indices) & {0, 1, 2}) == 1
    res = ag.diverse_augment(seed, pool, 3, m=4, tau=0.5, seed=0, support_includes_added=False)
    assert len(set(res.indices) & {0, 1, 2}) == 2                   # seed-only support lets duplicates in


def test_augmentation_is_deterministic_and_support_sample():
    rng = np.random.default_rng(3)
    seed, pool = rand_prompts(rng, 30), rand_prompts(rng, 80)
    pool += [near_copy(rng, seed[i], 2) for i in range(10)]
    for backend in ("exact", "minhash"):
        a = ag.diverse_augment(seed, pool, 15, m=7, tau=0.5, backend=backend, seed=5, support_sample=10)
        b = ag.diverse_augment(seed, pool, 15, m=7, tau=0.5, backend=backend, seed=5, support_sample=10)
        assert a.indices == b.indices and a.log == b.log
        assert a.params["support_size"] == 10
    c = ag.diverse_augment(seed, pool, 15, m=7, tau=0.5, seed=6)
    assert c.indices != a.indices


def test_random_baseline_is_seeded():
    rng = np.random.default_rng(4)
    seed, pool = rand_prompts(rng, 10), rand_prompts(rng, 50)
    a, b = ag.random_augment(seed, pool, 20, seed=1), ag.random_augment(seed, pool, 20, seed=1)
    assert a.indices == b.indices and len(set(a.indices)) == 20
    assert ag.random_augment(seed, pool, 20, seed=2).indices != a.indices
    assert a.d_final == pytest.approx(diversity_from_ids(seed + [pool[i] for i in a.indices]).d)


def test_impossible_requests_fail_clearly():
    rng = np.random.default_rng(5)
    seed, pool = rand_prompts(rng, 3), rand_prompts(rng, 4)
    with pytest.raises(ValueError, match=r"k=5 .* only 4"):
        ag.diverse_augment(seed, pool, 5)
    with pytest.raises(ValueError, match=r"k=5 .* only 4"):
        ag.random_augment(seed, pool, 5)
    with pytest.raises(ValueError, match="on_exhausted"):
        ag.diverse_augment(seed, pool, 1, on_exhausted="ignore")


def test_ngram_sets_use_the_metric_codes():
    ids = np.array([5, 6, 7, 5, 6], dtype=np.int32)
    (s,) = ag.ngram_sets([ids], n=2)
    assert np.array_equal(s, np.unique(ngram_codes(ids, 2))) and len(s) == 3


# ----------------------------------------------------------------------------- rankings + CLI

def hh_rankings(texts, k):
    from divscale.data.hh import Ranking
    out = []
    for i, t in enumerate(texts[:k]):
        cut = t.rfind("\n\nAssistant:") + len("\n\nAssistant:")
        out.append(Ranking(id=f"r{i}", prompt=t[:cut], responses=[t[cut:].strip() or "ok", "no"],
                           rewards=[1.0, 0.0], sources=["a", "b"]))
    return out


def test_augment_cli_end_to_end(tmp_path, hh_sample_texts, tiny_tokenizer):
    from divscale.cli import main
    from divscale.data.hh import load_rankings, save_rankings

    rankings = hh_rankings(hh_sample_texts, 120)
    save_rankings(tmp_path / "pool.jsonl", rankings)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    recipe = tmp_path / "r.yaml"
    recipe.write_text("augment:\n  seed_size: 40\n  add: 30\n  candidates_per_round: 10\n  jaccard_tau: 0.5\n")
    out = tmp_path / "aug.jsonl"
    argv = ["augment", "--recipe", str(recipe), "--rankings", str(tmp_path / "pool.jsonl"),
            "--tokenizer", str(tmp_path / "tok"), "--out", str(out)]
    assert main(argv) == 0
    got = load_rankings(out)
    log = json.loads((tmp_path / "aug.log.json").read_text())
    assert len(got) == 70 and [r.id for r in got[:40]] == [r.id for r in rankings[:40]]
    assert [r.id for r in got[40:]] == log["added_ids"] and len(set(log["added_ids"])) == 30
    assert log["d_final"] > log["d_seed"]
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first                   # deterministic
    assert main(argv[:-2] + ["--out", str(tmp_path / "rand.jsonl"), "--method", "random"]) == 0
    assert main(argv + ["--set", "augment.add=500"]) == 1                  # impossible: a one-line error


# ----------------------------------------------------------------------------- the experiment's training sets

def _r4(i: int):
    from divscale.data.hh import Ranking
    return Ranking(id=f"p{i}", prompt=f"\n\nHuman: question {i}?\n\nAssistant:",
                   responses=[f"a{i}", f"b{i}", f"c{i}", f"d{i}"], rewards=[3.0, 2.0, 1.0, 0.0],
                   sources=["human-chosen", "gen-1", "human-rejected", "gen-2"])


def test_every_arm_trains_the_base_set_on_the_grid_cells_rankings(monkeypatch):
    """The base set is the grid's k=seed_size subset, and its 2-rankings are the grid cell's in every arm
    (not redrawn from a stream whose state depends on how many prompts the arm adds)."""
    from divscale.data.subsets import build_grid, sub_rankings
    from divscale.study import pipeline

    R = pipeline.load("smoke", {"augment.seed_size": 6, "data.sizes": [6, 12], "grid.primary.budget": None})
    grid4, extra = [_r4(i) for i in range(12)], [_r4(100 + i) for i in range(8)]
    monkeypatch.setattr(pipeline, "_MEMO", {})
    monkeypatch.setattr(pipeline, "rankings4", lambda R: grid4)
    cell = build_grid(grid4, [6, 12], (2,), seed=R.data.grid_seed)[(2, 6)]
    base = pipeline.augmentation_base(R)
    assert [r.id for r in base] == [r.id for r in cell] != [r.id for r in grid4[:6]]   # the cell, reshuffled
    alone = pipeline.n_rankings(R, base, 2)
    assert alone == cell
    for added in (extra[:2], extra[2:]):                                    # arms of different lengths
        assert pipeline.n_rankings(R, base + added, 2)[:6] == alone
    # the old rule (one stream over the arm's list) gives the base set other 2-rankings in a longer arm
    assert sub_rankings(base + extra, seed=R.data.grid_seed)[2][:6] != sub_rankings(base, seed=R.data.grid_seed)[2]
    # prompts outside the grid: their own stream, whatever the list
    own = pipeline.n_rankings(R, extra, 2)
    assert pipeline.n_rankings(R, extra[::-1], 2)[::-1] == own
    assert all(r.n == 2 and set(r.responses) <= set(x.responses) for r, x in zip(own, extra))

"""Tests for divscale.tools.select: Deita's filter against a naive transcription, its tau semantics, the evol
score, the LLM scorer (and its refusal to default), and every selector's contract."""
from __future__ import annotations

import json

import numpy as np
import pytest

from divscale.metrics import diversity as dv
from divscale.metrics.diversity import diversity_from_ids, tokenize_prompts
from divscale.tools import select as sel


def naive_deita(scores, embeddings, budget, tau):
    """Deita's rule transcribed literally: sort by score (descending, ties by index), walk the list,
    keep a sample unless its cosine similarity to some kept sample is > tau, stop at the budget."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    kept = []
    for i in order:
        if len(kept) == budget:
            break
        ok = True
        for j in kept:
            a, b = np.asarray(embeddings[i], float), np.asarray(embeddings[j], float)
            if float(a @ b) / (np.linalg.norm(a) * np.linalg.norm(b)) > tau:
                ok = False
                break
        if ok:
            kept.append(i)
    return kept


def clustered(rng, n_clusters, per, dim, noise):
    centres = rng.normal(size=(n_clusters, dim))
    X = np.repeat(centres, per, axis=0) + noise * rng.normal(size=(n_clusters * per, dim))
    return X, np.repeat(np.arange(n_clusters), per)


@pytest.mark.parametrize("seed", range(6))
def test_deita_select_matches_naive_transcription(seed):
    rng = np.random.default_rng(seed)
    X, _ = clustered(rng, 25, 8, dim=6, noise=0.15)
    X = X[rng.permutation(len(X))]
    scores = rng.integers(0, 20, len(X)).astype(float)       # many ties
    for tau, budget in [(0.9, 40), (0.95, 200), (0.5, 30), (0.99, 120)]:
        got = sel.deita_select(scores, X, budget, tau=tau, chunk_size=7)
        want = naive_deita(scores, X, budget, tau)
        assert got == want
        assert got == sel.deita_select(scores, X, budget, tau=tau)           # chunking does not matter
    assert len(naive_deita(scores, X, 200, 0.9)) < 200                        # the filter really drops


def test_near_duplicate_clusters_keep_the_best_of_each():
    rng = np.random.default_rng(0)
    X, cluster = clustered(rng, 6, 5, dim=32, noise=0.01)
    scores = rng.random(len(X))
    picked = sel.deita_select(scores, X, budget=6, tau=0.9)
    assert sorted(cluster[picked]) == list(range(6))
    for i in picked:
        assert scores[i] == scores[cluster == cluster[i]].max()
    assert picked == sorted(picked, key=lambda i: -scores[i])                 # selection order = score order
    assert len(sel.deita_select(scores, X, budget=10, tau=0.9)) == 6         # nothing else is acceptable


def test_tau_is_a_similarity_equal_is_kept():
    X = np.array([[1.0, 0.0], [3.0, 4.0], [0.0, 1.0]])   # cos(x0, x1) = 0.6 exactly, cos(x1, x2) = 0.8
    scores = [3.0, 2.0, 1.0]
    assert sel.deita_select(scores, X, 3, tau=0.8) == [0, 1, 2]        # 0.6 and 0.8 <= tau: kept
    assert sel.deita_select(scores, X, 3, tau=0.6) == [0, 1]           # x2: 0.8 > 0.6 with x1
    assert sel.deita_select(scores, X, 3, tau=0.59) == [0, 2]          # x1: 0.6 > 0.59 with x0
    assert sel.deita_select(scores, X, 1, tau=1.0) == [0]              # budget respected
    assert sel.deita_select([1.0, 1.0, 1.0], X, 3, tau=1.0) == [0, 1, 2]   # ties: index order


def test_deita_select_rejects_bad_input():
    with pytest.raises(ValueError, match="finite"):
        sel.deita_select([1.0, np.nan], np.eye(2), 1)
    with pytest.raises(ValueError, match="non-zero"):
        sel.deita_select([1.0, 2.0], np.array([[1.0, 0.0], [0.0, 0.0]]), 1)
    with pytest.raises(ValueError, match="one score per"):
        sel.deita_select([1.0], np.eye(2), 1)


def test_evol_score_sums_over_turns():
    assert sel.evol_score([2.0, 3.0], [4.0, 5.0]) == 23.0
    assert sel.evol_score([1.5], [2.0]) == 3.0
    with pytest.raises(ValueError):
        sel.evol_score([1.0, 2.0], [1.0])

    class Fake:
        def __init__(self, table):
            self.table, self.calls = table, []

        def score(self, prompts, responses=None):
            self.calls.append((list(prompts), None if responses is None else list(responses)))
            return np.array([self.table[p] for p in prompts])

    prompt = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: tell me more\n\nAssistant:"
    assert sel.dialogue_turns(prompt, "sure") == [("hi", "hello"), ("tell me more", "sure")]
    comp, qual = Fake({"hi": 2.0, "tell me more": 3.0}), Fake({"hi": 4.0, "tell me more": 5.0})
    single = "\n\nHuman: tell me more\n\nAssistant:"
    got = sel.deita_scores([prompt, single], ["sure", "ok"], comp, qual)
    assert got.tolist() == [2 * 4 + 3 * 5, 3 * 5]
    assert qual.calls[0][1] == ["hello", "sure", "ok"]
    assert sel.deita_scores([prompt], ["sure"], comp, qual, turns="last").tolist() == [15.0]


# ----------------------------------------------------------------------------- the LLM scorer

def test_llm_scorer_on_tiny_gpt(tiny_gpt, tiny_tokenizer):
    ids = sel.score_digit_ids(tiny_tokenizer)
    assert [tiny_tokenizer.decode([i]) for i in ids] == ["1", "2", "3", "4", "5", "6"]   # single tokens here
    texts = ["How do I bake bread?", "What is 2+2?", "Explain the causes of the first world war in detail.",
             "hi"]
    comp = sel.LLMScorer(tiny_gpt, tiny_tokenizer, "complexity", batch_size=3)
    a = comp.score(texts)
    assert a.shape == (4,) and np.all((a >= 1) & (a <= 6))
    assert np.array_equal(a, comp.score(texts))                                          # deterministic
    one = sel.LLMScorer(tiny_gpt, tiny_tokenizer, "complexity", batch_size=1).score(texts)
    np.testing.assert_allclose(a, one, atol=1e-5)                                        # left padding is inert
    probs = comp.label_probs([comp.format(texts[0])])
    assert probs.shape == (1, 6) and probs.sum() == pytest.approx(1.0)
    assert a[0] == pytest.approx(probs[0] @ np.arange(1, 7))
    assert comp.format("Q").endswith("##Complexity: ")
    qual = sel.LLMScorer(tiny_gpt, tiny_tokenizer, "quality")
    q = qual.score(texts, ["yes", "4", "no idea", "hello"])
    assert np.all((q >= 1) & (q <= 6))
    with pytest.raises(ValueError, match="one response per prompt"):
        qual.score(texts)
    long = ["word " * 2000]                                   # longer than the model's 256 positions
    assert 1 <= comp.score(long)[0] <= 6


def test_scorer_failures_raise_instead_of_a_default(tiny_gpt, tiny_tokenizer):
    class NoDigits:
        unk_token_id = 0

        def convert_tokens_to_ids(self, token):
            return 0

        def encode(self, text, add_special_tokens=False):
            return [7, 8]                         # "1" splits into two tokens

        def decode(self, ids):
            return "?"

    with pytest.raises(sel.ScorerError, match="not a single token"):
        sel.score_digit_ids(NoDigits())

    class NaNModel:
        config = tiny_gpt.config

        def forward(self, input_ids, attention_mask=None):
            raise AssertionError

        def __call__(self, input_ids, attention_mask=None, **kw):
            import torch
            out = tiny_gpt(input_ids=input_ids, attention_mask=attention_mask)
            out.logits[:] = torch.nan
            return out

    scorer = sel.LLMScorer(NaNModel(), tiny_tokenizer, "complexity")
    with pytest.raises(sel.ScorerError, match="non-finite"):
        scorer.score(["a question"])

    class BrokenRM:
        def score(self, prompts, responses):
            return np.array([np.nan] * len(prompts))

    with pytest.raises(sel.ScorerError):
        sel.RewardScorer(BrokenRM()).score(["q"], ["r"])


def test_reward_scorer_maps_logits_to_deita_scale():
    class RM:
        def score(self, prompts, responses):
            assert all(p.startswith("\n\nHuman: ") for p in prompts)
            return np.array([0.0, 100.0, -100.0])

    got = sel.RewardScorer(RM()).score(["a", "b", "c"], ["x", "y", "z"])
    np.testing.assert_allclose(got, [3.5, 6.0, 1.0])
    assert sel.RewardScorer(RM(), raw=True).score(["a", "b", "c"], ["x", "y", "z"]).tolist() == [0.0, 100.0, -100.0]


# ----------------------------------------------------------------------------- selectors

@pytest.fixture(scope="module")
def hh_prompts(hh_sample_texts):
    out = []
    for t in hh_sample_texts[:120]:
        cut = t.rfind("\n\nAssistant:") + len("\n\nAssistant:")
        out.append((t[:cut], t[cut:].strip() or "ok"))
    return out


def selector_ctx(name, responses, tokenizer):
    if name in ("minhash-dedup", "d-greedy"):
        return {"tokenizer": tokenizer, "sample_size": 32}
    if name == "deita":
        rng = np.random.default_rng(0)
        return {"scores": rng.random(len(responses)), "responses": responses,
                "embed": lambda texts: np.array([[len(t), t.count(" "), t.count("?") + 1.0] for t in texts]),
                "tau": 0.999999}
    return {}


@pytest.mark.parametrize("name", sorted(sel.SELECTORS))
def test_each_selector_returns_budget_unique_indices_deterministically(name, hh_prompts, tiny_tokenizer):
    prompts, responses = [p for p, _ in hh_prompts], [r for _, r in hh_prompts]
    ctx = selector_ctx(name, responses, tiny_tokenizer)
    a = sel.run_selector(name, prompts, 25, seed=3, **ctx)
    b = sel.run_selector(name, prompts, 25, seed=3, **ctx)
    assert isinstance(a, sel.Selection) and a.selector == name and a.pool_size == len(prompts)
    assert a == b and len(set(a.indices)) == 25 and all(0 <= i < len(prompts) for i in a.indices)
    assert not set(a.indices) & set(a.removed)
    assert a.summary().startswith(f"{name}: picked 25 of {len(prompts)}")
    if name != "deita":                                               # deita is deterministic by design
        assert sel.run_selector(name, prompts, 25, seed=4, **ctx).indices != a.indices


def test_run_selector_rejects_bad_requests(hh_prompts):
    prompts = [p for p, _ in hh_prompts]
    with pytest.raises(ValueError, match="unknown selector"):
        sel.run_selector("kmeans", prompts, 5)
    with pytest.raises(ValueError, match="budget"):
        sel.run_selector("random", prompts, len(prompts) + 1)
    with pytest.raises(ValueError, match="tokenizer"):
        sel.run_selector("d-greedy", prompts, 5)
    with pytest.raises(ValueError, match="deita needs scores"):
        sel.run_selector("deita", prompts, 5)


def test_minhash_dedup_removes_duplicates_and_reports_them(hh_prompts, tiny_tokenizer):
    prompts = [p for p, _ in hh_prompts[:40]]
    doubled = prompts + prompts                                     # every prompt twice
    res = sel.run_selector("minhash-dedup", doubled, 40, seed=0, tokenizer=tiny_tokenizer, threshold=0.9)
    assert len({doubled[i] for i in res.indices}) == 40
    # every skipped prompt is the twin of a picked one, and the report counts them
    assert res.n_removed > 0 and all(doubled[i] in {doubled[j] for j in res.indices} for i in res.removed)
    assert f"removed {res.n_removed} (" in res.summary() and res.details["threshold"] == 0.9
    with pytest.raises(ValueError, match="survive MinHash dedup"):
        sel.run_selector("minhash-dedup", doubled, 41, seed=0, tokenizer=tiny_tokenizer, threshold=0.9)


def test_dedup_walks_randoms_order_so_without_duplicates_it_is_random(hh_prompts, tiny_tokenizer):
    prompts = list(dict.fromkeys(p for p, _ in hh_prompts))[:60]
    ids = tokenize_prompts(prompts, tiny_tokenizer)
    rnd = sel.run_selector("random", prompts, 20, seed=5)
    same = sel.run_selector("minhash-dedup", prompts, 20, seed=5, token_ids=ids, threshold=1.0)
    assert same.indices == rnd.indices and same.removed == []                 # nothing removed: random's set
    assert sel.identical_arms({"random": rnd.indices, "minhash-dedup": same.indices}) == \
        {"random": None, "minhash-dedup": "random"}
    # with every prompt twice, dedup walks random's order and skips exactly the twins of what it took
    dup, ids2 = prompts + prompts, ids + ids
    res = sel.run_selector("minhash-dedup", dup, 20, seed=5, token_ids=ids2, threshold=0.9)
    taken, skipped = [], []
    for i in sel._random_order(len(dup), 5).tolist():
        if len(taken) == 20:
            break
        (skipped if dup[i] in {dup[j] for j in taken} else taken).append(i)
    assert res.indices == taken and res.removed == skipped and len(skipped) > 0
    assert sel.run_selector("random", dup, 20, seed=5).indices == sel._random_order(len(dup), 5)[:20].tolist()


def test_identical_arms_ignores_order_and_points_to_the_first():
    got = sel.identical_arms({"a": [1, 2, 3], "b": [3, 2, 1], "c": [1, 2, 4], "d": [2, 1, 3]})
    assert got == {"a": None, "b": "a", "c": None, "d": "a"}


def test_jaccard_profile_counts_pairs_and_neighbours():
    sets = [np.array([1, 2, 3, 4]), np.array([1, 2, 3, 5]), np.array([9, 10]), np.array([9, 11])]
    jac = dv.jaccard_matrix(sets)
    assert jac[0, 1] == pytest.approx(3 / 5) and jac[2, 3] == pytest.approx(1 / 3) and jac[0, 2] == 0
    by_t, quant = sel.jaccard_profile(sets, thresholds=(0.3, 0.5, 0.7))
    assert by_t["pairs"].tolist() == [2, 1, 0]
    assert by_t["prompts_with_a_neighbour"].tolist() == [4, 2, 0]
    assert quant.loc[1.0, "all pairs"] == pytest.approx(0.6)


def test_deita_reports_what_its_filter_passed_over():
    X = np.array([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0], [0.7, 0.7]])
    res = sel.run_selector("deita", ["a", "b", "c", "d"], 2, scores=[4.0, 3.0, 2.0, 1.0], embeddings=X, tau=0.9)
    assert res.indices == [0, 2] and res.removed == [1]                      # b is a's near-twin; d never reached


def test_d_greedy_beats_random_on_the_metric(hh_prompts, tiny_tokenizer):
    prompts = [p for p, _ in hh_prompts]
    ids = tokenize_prompts(prompts, tiny_tokenizer)
    res = sel.run_selector("d-greedy", prompts, 30, seed=0, token_ids=ids, sample_size=None)
    greedy = res.indices
    d_greedy = diversity_from_ids([ids[i] for i in greedy]).d
    d_random = [diversity_from_ids([ids[i] for i in sel.select_random(prompts, 30, seed=s).indices]).d
                for s in range(5)]
    assert d_greedy > max(d_random)
    assert res.details["d"] == pytest.approx(d_greedy) and res.removed == []
    assert res.details["mean_tokens_picked"] == pytest.approx(np.mean([len(ids[i]) for i in greedy]))
    # exact greedy: the first pick maximises d of a single prompt
    assert greedy[0] == int(np.argmax([diversity_from_ids([x]).d for x in ids]))


def test_select_cli(tmp_path, hh_prompts, tiny_tokenizer, tiny_gpt, monkeypatch):
    import divscale.models.hub
    from divscale.cli import main
    from divscale.data.hh import Ranking, load_rankings, save_rankings

    # the Deita scorer model is swapped for the tiny GPT (SmolLM2 on CPU is too slow for a unit test);
    # the embedder is the real offline MiniLM
    monkeypatch.setattr(divscale.models.hub, "load_causal_lm", lambda name: (tiny_gpt, tiny_tokenizer))

    rankings = [Ranking(id=f"r{i}", prompt=p, responses=[r, "no"], rewards=[1.0, 0.0], sources=["a", "b"])
                for i, (p, r) in enumerate(hh_prompts[:40])]
    save_rankings(tmp_path / "pool.jsonl", rankings)
    tiny_tokenizer.save_pretrained(tmp_path / "tok")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"diversity:\n  tokenizer: {tmp_path / 'tok'}\nselect:\n  budget: 10\n  greedy_sample: 16\n")
    for name in ("random", "d-greedy", "deita"):
        out = tmp_path / f"{name}.jsonl"
        argv = ["select", "--recipe", str(recipe), "--rankings", str(tmp_path / "pool.jsonl"),
                "--selector", name, "--out", str(out)]
        assert main(argv) == 0
        info = json.loads((tmp_path / f"{name}.indices.json").read_text())
        assert [r.id for r in load_rankings(out)] == info["ids"] == [rankings[i].id for i in info["indices"]]
        assert len(info["ids"]) == 10 and "removed" in info and "details" in info
    assert main(argv + ["--budget", "1000"]) == 1

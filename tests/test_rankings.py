"""Extending pairs to 4-rankings: RM order, provenance, per-prompt cache, resume after a crash."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest

import divscale.reward.rankings as rk
from divscale.data.hh import Ranking, load_rankings
from divscale.data.subsets import sub_rankings
from divscale.io import DataError
from divscale.reward.rankings import build_rankings, extend_rankings, load_cache

PAIRS = [
    ("\n\nHuman: How do I bake bread?\n\nAssistant:", "Mix flour, water, yeast and salt, knead, let it rise.",
     "No."),
    ("\n\nHuman: hi\n\nAssistant:", "Hello! How can I help?", "hi"),
    ("\n\nHuman: Tell me a joke about cats\n\nAssistant:",
     "Why did the cat sit on the computer? To watch the mouse.", "Cats are animals."),
    ("\n\nHuman: What is 2+2?\n\nAssistant:", "4", "2+2 equals four, a basic sum in arithmetic."),
]
GEN_KW = dict(k=2, max_new_tokens=12, max_prompt_tokens=64, batch_size=2, seed=42, progress=False,
              generator_name="tiny-gpt-test")


@pytest.fixture()
def pool():
    return [Ranking(id=f"t:{i}", prompt=p, responses=[c, r], rewards=[None, None],
                    sources=["human-chosen", "human-rejected"], subset="helpful-base")
            for i, (p, c, r) in enumerate(PAIRS)]


class LengthRM:
    def score(self, prompts, responses, batch_size=None, progress=False):
        return np.array([(len(r) - 20) / 10 for r in responses])


@pytest.fixture()
def count_generate(monkeypatch):
    """Wrap ``divscale.reward.rankings.generate`` to count calls (and optionally fail or alter outputs)."""
    state = {"calls": 0, "fail_at": None, "rows": [], "transform": None}
    real = rk.generate

    def wrapper(model, tokenizer, prompts, **kw):
        state["calls"] += 1
        if state["fail_at"] is not None and state["calls"] >= state["fail_at"]:
            raise KeyboardInterrupt("simulated interruption")
        state["rows"].extend(prompts)
        out = real(model, tokenizer, prompts, **kw)
        return state["transform"](out, kw) if state["transform"] else out

    monkeypatch.setattr(rk, "generate", wrapper)
    return state


def test_four_rankings_sorted_by_rm_with_provenance(tiny_gpt, tiny_tokenizer, pool, tmp_path, count_generate):
    out = extend_rankings(pool, (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path, **GEN_KW)
    assert [r.id for r in out] == [r.id for r in pool]
    for r, src in zip(out, pool):
        assert r.n == 4 and r.prompt == src.prompt and r.subset == src.subset
        assert r.rewards == pytest.approx([(len(x) - 20) / 10 for x in r.responses])
        assert r.rewards == sorted(r.rewards, reverse=True)
        assert sorted(r.sources) == ["human-chosen", "human-rejected", "tiny-gpt-test", "tiny-gpt-test"]
        human = {s: x for s, x in zip(r.sources, r.responses) if s.startswith("human")}
        assert human == {"human-chosen": src.responses[0], "human-rejected": src.responses[1]}
        assert r.meta["generator"] == "tiny-gpt-test" and r.meta["generation"]["temperature"] == 0.7
    # RM order, not human order: the 2+2 pair's rejected (longer) answer now ranks above the chosen one
    last = out[3]
    assert last.sources.index("human-rejected") < last.sources.index("human-chosen")
    # the generated pair of a prompt differ (sampled), and the output feeds the official sub-ranking rule
    assert any(len({x for x, s in zip(r.responses, r.sources) if s == "tiny-gpt-test"}) == 2 for r in out)
    subs = sub_rankings(out)
    assert [len(subs[n]) for n in (4, 3, 2)] == [4, 4, 4]


def test_cache_hit_rerun_is_free(tiny_gpt, tiny_tokenizer, pool, tmp_path, count_generate):
    first = extend_rankings(pool, (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path, **GEN_KW)
    calls = count_generate["calls"]
    assert calls == 4                                   # one call per prompt (its k samples, unpadded)
    # a re-run never loads the generator: an unknown id is fine when everything is cached
    again = extend_rankings(pool, "no-such/model", LengthRM(), cache_dir=tmp_path, **GEN_KW)
    assert count_generate["calls"] == calls
    assert [r.to_dict() for r in again] == [r.to_dict() for r in first]
    # another generation config is another cache entry
    extend_rankings(pool[:1], (tiny_gpt, tiny_tokenizer), LengthRM(), cache_dir=tmp_path,
                    **dict(GEN_KW, temperature=1.0))
    assert count_generate["calls"] == calls + 1


def test_resume_after_interruption_matches_clean_run(tiny_gpt, tiny_tokenizer, pool, tmp_path,
                                                     count_generate):
    gen = (tiny_gpt, tiny_tokenizer)
    kw = dict(GEN_KW, batch_size=1)
    clean = extend_rankings(pool, gen, LengthRM(), cache_dir=tmp_path / "clean", **kw)
    count_generate.update(calls=0, fail_at=3)
    with pytest.raises(KeyboardInterrupt):
        extend_rankings(pool, gen, LengthRM(), cache_dir=tmp_path / "crash", **kw)
    cache_file = next((tmp_path / "crash").glob("gen-*.jsonl"))
    assert len(cache_file.read_text().splitlines()) == 2          # two prompts were done and fsync'ed
    with open(cache_file, "a") as fh:                             # a torn write of the third record
        fh.write('{"key": "abc", "respon')
    count_generate.update(calls=0, fail_at=None)
    resumed = extend_rankings(pool, gen, LengthRM(), cache_dir=tmp_path / "crash", **kw)
    assert count_generate["calls"] == 2                           # only the two missing prompts
    assert [r.to_dict() for r in resumed] == [r.to_dict() for r in clean]
    lines = cache_file.read_text().splitlines()
    assert len(lines) == 4 and all(json.loads(line) for line in lines)


def test_corrupt_cache_line_is_an_error(tmp_path):
    path = tmp_path / "gen-x.jsonl"
    path.write_text('{"key": "a", "responses": ["x"]}\nnot json\n{"key": "b", "responses": ["y"]}\n')
    with pytest.raises(DataError, match="gen-x.jsonl:2"):
        load_cache(path)
    path.write_text('{"key": "a", "responses": ["x"]}\n{"key": "b", "respo')
    assert load_cache(path) == {"a": ["x"]}
    assert path.read_text() == '{"key": "a", "responses": ["x"]}\n'


def test_empty_generations_retried_once_then_kept(tiny_gpt, tiny_tokenizer, pool, tmp_path, count_generate):
    # first attempt empty, retry (another seed) real: nothing empty remains
    count_generate["transform"] = lambda out, kw: [""] * len(out) if kw["seed"] == 42 else out
    gen = (tiny_gpt, tiny_tokenizer)
    out = extend_rankings(pool[:2], gen, LengthRM(), cache_dir=tmp_path / "a", **GEN_KW)
    assert count_generate["calls"] == 4 and all(r.meta["n_empty"] == 0 for r in out)   # 2 prompts x (1 + retry)
    # always empty: kept, counted, and ranked by the RM like any response (here: last)
    count_generate.update(calls=0, transform=lambda out, kw: [""] * len(out))
    out = extend_rankings(pool[:2], gen, LengthRM(), cache_dir=tmp_path / "b", **GEN_KW)
    for r in out:
        assert r.meta["n_empty"] == 2 and r.responses[-2:] == ["", ""] and r.n == 4


def test_chat_template_generator_gets_formatted_prompts(tiny_gpt, tiny_tokenizer, pool, tmp_path,
                                                        count_generate):
    tok = copy.deepcopy(tiny_tokenizer)
    tok.chat_template = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}"
                         "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    extend_rankings(pool[:1], (tiny_gpt, tok), LengthRM(), cache_dir=tmp_path, **GEN_KW)
    assert count_generate["rows"] == ["<|user|>How do I bake bread?<|assistant|>"] * 2


def test_build_rankings_writes_file_once(tiny_gpt, tiny_tokenizer, pool, tmp_path, monkeypatch,
                                         count_generate):
    from divscale.config import Recipe

    recipe = Recipe()
    recipe.ranking.max_new_tokens, recipe.ranking.max_prompt_tokens, recipe.ranking.batch_size = 8, 64, 4
    monkeypatch.setattr(rk, "_load_generator", lambda name, dtype="float32": (tiny_gpt, tiny_tokenizer))
    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    path = build_rankings(recipe, out_dir=tmp_path / "out", progress=False, pool=pool, rm_train=LengthRM())
    assert path == tmp_path / "out" / "rankings4.jsonl"
    loaded = load_rankings(path)
    assert [r.n for r in loaded] == [4] * 4
    assert set(loaded[0].sources) >= {recipe.ranking.generator}
    calls = count_generate["calls"]
    assert build_rankings(recipe, out_dir=tmp_path / "out", pool=pool, rm_train=LengthRM()) == path
    assert count_generate["calls"] == calls


def test_rankings_cli(tiny_gpt, tiny_tokenizer, tmp_path, monkeypatch, capsys):
    import datasets

    from divscale.cli import main
    from divscale.data import hh as data
    from divscale.reward import rm as reward

    rows = [{"prompt": p, "chosen": c, "rejected": r, "subset": "helpful-base", "line": i + 1}
            for i, (p, c, r) in enumerate(PAIRS)]
    pool = datasets.Dataset.from_list(rows)
    monkeypatch.setattr(data, "load_splits", lambda cfg: {"pool": pool, "dev": pool, "test": pool})
    monkeypatch.setattr(reward, "build_reward_models", lambda recipe, pool: (LengthRM(), LengthRM()),
                        raising=False)
    monkeypatch.setattr(rk, "_load_generator", lambda name, dtype="float32": (tiny_gpt, tiny_tokenizer))
    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    recipe_file = tmp_path / "mini.yaml"
    recipe_file.write_text("ranking:\n  max_new_tokens: 8\n  max_prompt_tokens: 64\n")
    assert main(["rankings", "--recipe", str(recipe_file), "--out", str(tmp_path / "out")]) == 0
    path = tmp_path / "out" / "rankings4.jsonl"
    assert capsys.readouterr().out.strip() == str(path)
    assert [r.id for r in load_rankings(path)] == [f"helpful-base:{i + 1}" for i in range(4)]

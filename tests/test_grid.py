"""divscale.data.subsets: the official sub-ranking, nested-subset and equal-budget rules (spec §2.2-2.4)."""
from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest

from divscale import cli
from divscale.config import DataConfig
from divscale.data import subsets as grid_mod
from divscale.data.hh import Ranking, load_rankings, save_rankings
from divscale.data.subsets import (
    Cell,
    build_grid,
    equal_budget_cells,
    nested_subsets,
    sub_rankings,
    write_grid,
)
from divscale.provenance import file_sha256


def read_grid(folder) -> dict:
    """A folder written by write_grid, read back cell by cell, each file checked against the manifest's sha256."""
    manifest = json.loads((folder / "manifest.json").read_text())
    assert all(file_sha256(folder / name) == info["sha256"] for name, info in manifest["cells"].items())
    return {(info["n"], info["k"]): load_rankings(folder / name) for name, info in manifest["cells"].items()}


def _rankings4(count: int = 400, seed: int = 0) -> list[Ranking]:
    """4-rankings sorted by reward; every 7th has tied rewards to exercise the stable sort."""
    rng = random.Random(seed)
    out = []
    for i in range(count):
        rewards = sorted((round(rng.gauss(0, 1), 3) for _ in range(4)), reverse=True)
        if i % 7 == 0:
            rewards = [1.0, 0.5, 0.5, 0.5]
        out.append(Ranking(id=f"p{i}", prompt=f"\n\nHuman: question {i}\n\nAssistant:",
                           responses=[f"r{i}-{j}" for j in range(4)], rewards=rewards,
                           sources=["human-chosen", "gen-a", "human-rejected", "gen-b"], subset="helpful-base"))
    return out


@pytest.fixture(scope="module")
def rankings4():
    return _rankings4()


def _official_split(rankings4: list[Ranking]) -> tuple[list, list]:
    """The official split.py loop, written out with its own calls (module-level random.seed(42),
    random.sample on a list of indices, numpy argsort of the negated rewards)."""
    state = random.getstate()
    try:
        random.seed(42)
        len3, len2 = [], []
        for r in rankings4:
            idx = random.sample(list(range(4)), 3)
            suffixes = [r.responses[i] for i in idx]
            rewards = np.array([r.rewards[i] for i in idx])
            order = np.argsort(-rewards)
            len3.append(([suffixes[i] for i in order], [float(rewards[i]) for i in order]))
        for suffixes3, rewards3 in len3:
            idx = random.sample(list(range(3)), 2)
            suffixes = [suffixes3[i] for i in idx]
            rewards = np.array([rewards3[i] for i in idx])
            order = np.argsort(-rewards)
            len2.append(([suffixes[i] for i in order], [float(rewards[i]) for i in order]))
        return len3, len2
    finally:
        random.setstate(state)


# ------------------------------------------------------------------------------------------------
# sub-rankings


def test_sub_rankings_rule(rankings4):
    by_len = sub_rankings(rankings4, seed=42)
    assert sorted(by_len) == [2, 3, 4] and by_len[4] == rankings4
    for n in (2, 3, 4):
        assert [r.id for r in by_len[n]] == [r.id for r in rankings4]          # same prompts, same order
        assert [r.prompt for r in by_len[n]] == [r.prompt for r in rankings4]
        assert all(r.n == n for r in by_len[n])
    for r4, r3, r2 in zip(*(by_len[n] for n in (4, 3, 2))):
        assert set(r3.responses) < set(r4.responses) and set(r2.responses) < set(r3.responses)
        for r in (r3, r2):
            assert r.rewards == sorted(r.rewards, reverse=True)
            pos = r.meta["from_len4"]
            assert [r4.responses[i] for i in pos] == r.responses and [r4.rewards[i] for i in pos] == r.rewards
            assert [r4.sources[i] for i in pos] == r.sources
    # the 2-ranking is not the human pair: generated responses appear in it
    assert any(s.startswith("gen") for r in by_len[2] for s in r.sources)


def test_sub_rankings_match_the_official_code(rankings4):
    by_len = sub_rankings(rankings4, seed=42)
    len3, len2 = _official_split(rankings4)
    assert [(r.responses, r.rewards) for r in by_len[3]] == len3
    assert [(r.responses, r.rewards) for r in by_len[2]] == len2


def test_sub_rankings_deterministic(rankings4):
    a, b, c = (sub_rankings(rankings4, seed=s) for s in (42, 42, 1))
    assert a == b
    assert [r.responses for r in a[3]] != [r.responses for r in c[3]]


def test_sub_rankings_errors(rankings4):
    no_reward = Ranking(id="hh:7", prompt="\n\nHuman: q\n\nAssistant:", responses=list("abcd"),
                        rewards=[1.0, None, 0.0, -1.0], sources=["x"] * 4)
    with pytest.raises(ValueError, match=r"'hh:7' has no reward"):
        sub_rankings(rankings4[:3] + [no_reward])
    pair = Ranking(id="hh:8", prompt="\n\nHuman: q\n\nAssistant:", responses=["a", "b"], rewards=[1.0, 0.0],
                   sources=["x"] * 2)
    with pytest.raises(ValueError, match=r"'hh:8' has 2 responses"):
        sub_rankings([pair])
    unsorted = Ranking(id="hh:9", prompt="\n\nHuman: q\n\nAssistant:", responses=list("abcd"),
                       rewards=[0.0, 1.0, -1.0, -2.0], sources=["x"] * 4)
    with pytest.raises(ValueError, match=r"'hh:9' is not sorted by reward"):
        sub_rankings([unsorted])


# ------------------------------------------------------------------------------------------------
# nested subsets and the grid


def test_nested_subsets_official_shuffle():
    items = list(range(1000))
    subsets = nested_subsets(items, [100, 300, 50], seed=42)
    official = list(items)
    state = random.getstate()
    random.seed(42)
    random.shuffle(official)                                  # sample.py: random.seed(42); random.shuffle
    random.setstate(state)
    for k, subset in subsets.items():
        assert subset == official[:k]
    assert set(subsets[50]) < set(subsets[100]) < set(subsets[300])
    assert items == list(range(1000))                          # input untouched
    assert nested_subsets(items, [100], seed=1)[100] != subsets[100]


def test_nested_subsets_errors():
    with pytest.raises(ValueError, match=r"size\(s\) \[1500\] exceed the 1000 items available"):
        nested_subsets(list(range(1000)), [100, 1500])
    with pytest.raises(ValueError, match="positive integers"):
        nested_subsets(list(range(10)), [0])


def test_build_grid_same_prompts_across_n_and_nested(rankings4):
    sizes = [50, 100, 200, 400]
    grid = build_grid(rankings4, sizes, seed=42)
    assert sorted(grid) == [(n, k) for n in (2, 3, 4) for k in sizes]
    for k in sizes:
        ids = [r.id for r in grid[(4, k)]]
        assert len(ids) == k and len(set(ids)) == k
        assert [r.id for r in grid[(3, k)]] == ids == [r.id for r in grid[(2, k)]]
    for n in (2, 3, 4):
        for small, large in itertools.pairwise(sizes):
            assert grid[(n, large)][:small] == grid[(n, small)]
        assert all(r.n == n for r in grid[(n, 400)])
    only = build_grid(rankings4, [100], lengths=(2,), seed=42)
    assert list(only) == [(2, 100)] and only[(2, 100)] == grid[(2, 100)]


def test_build_grid_errors(rankings4):
    with pytest.raises(ValueError, match="ranking lengths must be among"):
        build_grid(rankings4, [10], lengths=(5,))
    with pytest.raises(ValueError, match=r"\[1500, 2000, .*36000\] exceed the 400 items available"):
        build_grid(rankings4, DataConfig().sizes)


def test_paper_sizes_are_the_default():
    assert DataConfig().sizes == [1500, 2000, 3000, 6000, 12000, 16000, 24000, 36000]


# ------------------------------------------------------------------------------------------------
# equal budgets


def test_equal_budget_cells_paper_table():
    assert equal_budget_cells(48000) == [Cell(2, 24000, 48000), Cell(3, 16000, 48000), Cell(4, 12000, 48000)]
    assert [(c.n, c.prompts) for c in equal_budget_cells(6000)] == [(2, 3000), (3, 2000), (4, 1500)]
    for cell in equal_budget_cells(600, pool_size=300):
        assert cell.cost == cell.prompts * cell.n == 600
    assert equal_budget_cells(20, lengths=(2, 4)) == [Cell(2, 10, 20), Cell(4, 5, 20)]


def test_impossible_budgets():
    with pytest.raises(ValueError, match=r"budget 1000 is not divisible by n=\[3\].*multiple of 12 \(e.g. 996 or 1008\)"):
        equal_budget_cells(1000)
    with pytest.raises(ValueError, match="budget 48000 needs 24000 prompts at n=2 but the pool has 7000; "
                                         "largest realisable budget is 13992"):
        equal_budget_cells(48000, pool_size=7000)
    assert equal_budget_cells(13992, pool_size=7000)[0].prompts == 6996
    with pytest.raises(ValueError, match="positive integer"):
        equal_budget_cells(0)


# ------------------------------------------------------------------------------------------------
# files


def test_write_grid_byte_identical_and_manifest(rankings4, tmp_path):
    sizes = [40, 80]
    a = write_grid(build_grid(rankings4, sizes, seed=42), tmp_path / "a", seed=42)
    b = write_grid(build_grid(_rankings4(), sizes, seed=42), tmp_path / "b", seed=42)
    c = write_grid(build_grid(rankings4, sizes, seed=7), tmp_path / "c", seed=7)
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted([f"len{n}_{k}.jsonl" for n in (2, 3, 4) for k in sizes] + ["manifest.json"])
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / "len4_40.jsonl").read_bytes() != (c / "len4_40.jsonl").read_bytes()
    assert (a / "len2_80.jsonl").read_bytes() != (c / "len2_80.jsonl").read_bytes()
    manifest = json.loads((a / "manifest.json").read_text())
    assert manifest["sizes"] == sizes and manifest["lengths"] == [2, 3, 4] and manifest["seed"] == 42
    assert manifest["cells"]["len3_80.jsonl"]["count"] == 80
    assert read_grid(a) == build_grid(rankings4, sizes, seed=42)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_write_grid_is_atomic(rankings4, tmp_path, monkeypatch):
    out = write_grid(build_grid(rankings4, [10], seed=42), tmp_path / "g", seed=42)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = []

    def failing_save(path, rankings):
        calls.append(path)
        if len(calls) == 2:
            raise OSError("disk full")
        return save_rankings(path, rankings)

    monkeypatch.setattr(grid_mod, "save_rankings", failing_save)
    with pytest.raises(OSError, match="disk full"):
        write_grid(build_grid(rankings4, [20], seed=42), out, seed=42)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before      # old grid intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_grid_command(rankings4, tmp_path):
    save_rankings(tmp_path / "r4.jsonl", rankings4)
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text("data:\n  sizes: [25, 50]\n  ranking_lengths: [2, 4]\n")
    out = tmp_path / "grid"
    assert cli.main(["data", "grid", "--rankings", str(tmp_path / "r4.jsonl"), "--recipe", str(recipe),
                     "--out", str(out)]) == 0
    assert read_grid(out) == build_grid(rankings4, [25, 50], lengths=(2, 4), seed=42)
    assert cli.main(["data", "grid", "--rankings", str(tmp_path / "r4.jsonl"), "--recipe", str(recipe),
                     "--set", "data.sizes=[5000]", "--out", str(tmp_path / "g2")]) == 1

"""divscale.data.formats: the ranked format, ties, errors that name the row, and every reader."""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import datasets
import pytest

from divscale.data import formats as rd
from divscale.data.hh import Ranking, save_rankings
from divscale.io import DataError

FIXTURES = Path(__file__).parent / "fixtures"


def test_scores_sorted_best_first_with_ties_sharing_a_rank():
    ds = rd.normalize_ranked([{"prompt": "\n\nHuman: hi\n\nAssistant:", "completions": ["b", "a", "c", "d"],
                               "scores": [1.0, 3.0, 1.0, -2.0]}])
    row = ds[0]
    assert isinstance(ds, datasets.Dataset)
    assert row["completions"] == ["a", "b", "c", "d"]         # stable within the tie
    assert row["ranks"] == [0, 1, 1, 2]
    assert row["scores"] == [3.0, 1.0, 1.0, -2.0]
    assert row["id"] == "row 0"


def test_ranks_lower_is_better_and_messages_become_hh_text():
    ds = rd.normalize_ranked([{"id": "x1", "prompt": [{"role": "system", "content": "Be brief."},
                                                      {"role": "user", "content": "Hi"},
                                                      {"role": "assistant", "content": "Hello"},
                                                      {"role": "user", "content": "Name a color"}],
                               "completions": [[{"role": "assistant", "content": "red"}], {"content": "blue"}],
                               "ranks": [2, 0]}])
    row = ds[0]
    assert row["prompt"] == "\n\nHuman: Be brief.\nHi\n\nAssistant: Hello\n\nHuman: Name a color\n\nAssistant:"
    assert row["completions"] == ["blue", "red"] and row["ranks"] == [0, 1]
    assert all(math.isnan(s) for s in row["scores"])


@pytest.mark.parametrize("row, why", [
    ({"prompt": "p", "completions": ["a"], "scores": [1.0]}, "1 completion"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0, 1.0]}, "all 2 completions are tied"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0]}, "list of 2 numbers"),
    ({"prompt": "p", "completions": ["a", "b"]}, "no 'scores'"),
    ({"prompt": "p", "completions": ["a", "  "], "ranks": [0, 1]}, "empty completion"),
    ({"prompt": "p", "completions": ["a", "b"], "scores": [1.0, float("nan")]}, "non-finite"),
    ({"prompt": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "completions": ["a", "b"], "ranks": [0, 1]}, "ends with an assistant message"),
])
def test_unrankable_rows_raise_naming_the_row(row, why):
    ok = {"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}
    with pytest.raises(DataError, match="row 1") as err:
        rd.normalize_ranked([ok, row])
    assert why in str(err.value)


def test_canonical_rows_normalise_again():
    """Canonical rows of a ranks-only source carry NaN scores: read again, their ranks rank them (a dataset of
    the old columns, or rows cut by hand, can go back through normalize_ranked)."""
    ds = rd.normalize_ranked([{"prompt": "p", "completions": ["b", "a"], "ranks": [1, 0]}])
    again = rd.normalize_ranked([{k: v for k, v in r.items() if k != "prompt_chat"} for r in ds.to_list()])
    assert again["completions"] == [["a", "b"]] and again["ranks"] == [[0, 1]]
    with pytest.raises(DataError, match="non-finite"):
        rd.normalize_ranked([{"prompt": "p", "completions": ["b", "a"], "scores": [1.0, float("nan")],
                              "ranks": [1, 0]}])


def test_drop_unrankable_keeps_the_rest():
    rows = [{"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]},
            {"prompt": "q", "completions": ["a", "b"], "ranks": [0, 0]}]
    assert len(rd.normalize_ranked(rows, drop_unrankable=True)) == 1


def test_rankings_jsonl(tmp_path):
    path = save_rankings(tmp_path / "r.jsonl", [
        Ranking("a", "\n\nHuman: x\n\nAssistant:", ["r1", "r2", "r3"], [2.0, 0.5, -1.0], ["g"] * 3),
        Ranking("b", "\n\nHuman: y\n\nAssistant:", ["c", "d"], [None, None], ["human-chosen", "human-rejected"])])
    ds = rd.load_ranked(path)
    assert ds["id"] == ["a", "b"]
    assert ds[0]["scores"] == [2.0, 0.5, -1.0] and ds[0]["ranks"] == [0, 1, 2]
    assert ds[1]["ranks"] == [0, 1] and ds[1]["completions"] == ["c", "d"]


def test_hh_pairs(hh_dir):
    path = hh_dir / "harmless-base" / "test.jsonl.gz"
    with pytest.raises(DataError, match=r"test.jsonl.gz:87, completion 0: empty completion"):      # a real empty response
        rd.load_ranked(path)
    ds = rd.load_ranked(path, drop_unrankable=True, limit=20)
    assert len(ds) == 20 and all(r == [0, 1] for r in ds["ranks"])
    assert all(p.startswith("\n\nHuman:") and p.endswith("\n\nAssistant:") for p in ds["prompt"])
    tie = [{"chosen": "\n\nHuman: a\n\nAssistant: same", "rejected": "\n\nHuman: a\n\nAssistant: same"}]
    with pytest.raises(DataError, match="row 0.*tied"):
        rd.from_hh_pairs(tie)


def test_pro_format(pro_hh_dir):
    path = pro_hh_dir / "hh_dev" / "sampled_dev.json"
    with pytest.raises(DataError, match=r"sampled_dev.json:\d+ .*tied"):       # equal rewards: named
        rd.load_ranked(path)
    ds = rd.load_ranked(path, drop_unrankable=True)
    assert len(ds) > 200 and all(s[0] > s[1] for s in ds["scores"])


def test_ultrafeedback_fixture():
    ds = rd.load_ranked(FIXTURES / "formats" / "ultrafeedback.jsonl")
    assert len(ds) == 3 and all(len(c) == 4 for c in ds["completions"])
    first = ds[0]
    assert first["prompt"] == "\n\nHuman: Name three primary colors and explain what makes them primary.\n\nAssistant:"
    assert first["scores"] == [5.0, 4.25, 3.5, 1.75] and first["ranks"] == [0, 1, 2, 3]
    assert ds[1]["ranks"] == [0, 0, 0, 1]                     # three answers rated 4.5: a three-way tie
    overall = rd.from_ultrafeedback(FIXTURES / "formats" / "ultrafeedback.jsonl", score="overall_score")
    assert overall[1]["ranks"] == [0, 0, 1, 2]
    # the fine-grained score is the mean of the aspect ratings when the field is absent
    rec = json.loads((FIXTURES / "formats" / "ultrafeedback.jsonl").read_text().splitlines()[0])["completions"][1]
    rec.pop("fine-grained_score")
    assert rd.ultrafeedback_score(rec, "fine-grained_score") == 4.25


def test_oasst1_trees():
    path = Path(__file__).resolve().parent.parent / "data" / "oasst1" / "en-validation.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: link ../shared/data/oasst1 into data/")
    everything = rd.from_oasst1(path, drop_deleted=False)
    # the README's counts: 418 contexts with 2: 137, 3: 267, 4: 13, 5: 1 ranked replies
    assert Counter(len(c) for c in everything["completions"]) == {2: 137, 3: 267, 4: 13, 5: 1}
    ds = rd.load_ranked(path)                                 # deleted replies dropped (3 of them)
    assert sum(len(c) for c in ds["completions"]) == sum(len(c) for c in everything["completions"]) - 3 - 2
    assert all(r == sorted(r) and r[0] == 0 and len(set(r)) > 1 for r in ds["ranks"])
    multi = [p for p in ds["prompt"] if p.count("\n\nHuman:") > 1]
    assert multi and all(p.endswith("\n\nAssistant:") for p in ds["prompt"])


def test_detection_errors(tmp_path):
    with pytest.raises(DataError, match=r"row 0: no known format fits this record \(fields: \['foo'\]\)\. Formats tried: oasst1"):
        rd.load_ranked([{"foo": 1}])
    with pytest.raises(DataError, match="no such file"):
        rd.load_ranked(str(tmp_path / "missing.jsonl"))
    with pytest.raises(DataError, match="could not load 'nobody/no-such-ranked-data'.*Pass a local file or folder"):
        rd.load_ranked("nobody/no-such-ranked-data")            # offline in tests: the hub is not reached


def test_one_line_ranked_keeps_turns_and_ranks():
    rows = [{"id": "md", "prompt": [{"role": "user", "content": "Plan a trip:\n\n- cheap\n- short"},
                                    {"role": "assistant", "content": "Where to?\nAnywhere."},
                                    {"role": "user", "content": "Rome."}],
             "completions": ["Here are the steps:\n\n1. Book.\n2.  Go.", "No."], "scores": [2.0, 1.0]}]
    ds = rd.one_line_ranked(rows)
    r = ds[0]
    assert r["prompt"] == ("\n\nHuman: Plan a trip: - cheap - short\n\nAssistant: Where to? Anywhere."
                           "\n\nHuman: Rome.\n\nAssistant:")
    assert r["completions"] == ["Here are the steps: 1. Book. 2. Go.", "No."]
    assert r["ranks"] == [0, 1] and r["scores"] == [2.0, 1.0] and r["id"] == "md"
    assert rd.one_line_ranked(ds).to_list() == ds.to_list()           # idempotent
    assert rd.one_line_prompt("\n\nHuman: hi\n\nAssistant:") == "\n\nHuman: hi\n\nAssistant:"


def test_oasst1_one_line_has_no_line_break_inside_a_turn():
    """The cause of 09_listwise's empty answers: oasst1 replies end lines after colons (markdown), which an
    HH-only policy learns to apply to the prompt's final "Assistant:". One-line text has no such colon."""
    path = Path(__file__).resolve().parent.parent / "data" / "oasst1" / "en-validation.jsonl"
    if not path.exists():
        pytest.fail(f"{path} is missing: link ../shared/data/oasst1 into data/")
    raw = rd.from_oasst1(path)
    flat = rd.one_line_ranked(raw)
    replies = [c for cs in raw["completions"] for c in cs]
    assert sum(c.count(":\n") for c in replies) > 100                  # the hazard is in the data as written
    assert not any("\n" in c for cs in flat["completions"] for c in cs)
    for before, after in zip(raw, flat):
        assert after["ranks"] == before["ranks"] and after["id"] == before["id"]
        assert after["prompt"].endswith("\n\nAssistant:") and "\n" not in after["prompt"].replace(
            "\n\nHuman:", "").replace("\n\nAssistant:", "")
        assert after["prompt"].count("\n\nHuman:") == before["prompt"].count("\n\nHuman:")
        assert after["prompt"].count("\n\nAssistant:") == before["prompt"].count("\n\nAssistant:")

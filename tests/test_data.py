"""divscale.data.hh: dialogue splitting, HH-RLHF loading, rankings, the PRO format and pool/dev/test splits.

Checked against the real data in data/hh-rlhf (all four test splits) and data/pro-hh (the PRO
authors' own preprocessing of the same files).
"""
from __future__ import annotations

import gzip
import json
import logging
import re
import warnings
from collections import Counter
from pathlib import Path

import pytest

from divscale import cli, paths
from divscale.config import DataConfig
from divscale.data import hh as data
from divscale.data.hh import (
    Ranking,
    from_pro_record,
    load_hh_rlhf,
    load_rankings,
    make_splits,
    pro_prompt_text,
    rankings_from_pairs,
    save_rankings,
    split_dialogue,
    to_pro_record,
)
from divscale.io import DataError, read_jsonl

RAW_COUNTS = {"harmless-base": 2312, "helpful-base": 2354, "helpful-online": 1137, "helpful-rejection-sampled": 2749}
PRO_FILES = {"harmless-base": "harmless_base", "helpful-base": "helpful_base", "helpful-online": "helpful_online"}


def _raw(hh_dir: Path, subset: str) -> list[dict]:
    with gzip.open(hh_dir / subset / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        return [json.loads(line) for line in fh]


@pytest.fixture(scope="module")
def raw(hh_dir):
    return {s: _raw(hh_dir, s) for s in RAW_COUNTS}


@pytest.fixture(scope="module")
def hh(hh_dir):
    return load_hh_rlhf(data_dir=hh_dir)


@pytest.fixture(scope="module")
def splits(hh):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return make_splits(hh, dev_size=280, test_size=2000, seed=42)


def _write_gz(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return path


def _pair(question: str, good: str, bad: str, context: str = "") -> dict:
    prompt = f"{context}\n\nHuman: {question}\n\nAssistant:"
    return {"chosen": f"{prompt} {good}", "rejected": f"{prompt} {bad}"}


# ------------------------------------------------------------------------------------------------
# split_dialogue


def test_split_dialogue_basic_and_multiturn():
    ctx = "\n\nHuman: hi\n\nAssistant: hello"
    rec = _pair("how are you?", "fine, thanks", "go away", context=ctx)
    prompt, good, bad = split_dialogue(rec["chosen"], rec["rejected"])
    assert prompt == "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: how are you?\n\nAssistant:"
    assert (good, bad) == ("fine, thanks", "go away")


def test_split_dialogue_responses_containing_role_markers():
    # the chosen response itself contains "\n\nAssistant:" and "Human:": splitting at the last
    # marker of each dialogue would give two different prompts
    rec = _pair("q?", "Sure. Human: ok\n\nAssistant: more", "No.")
    prompt, good, bad = split_dialogue(rec["chosen"], rec["rejected"])
    assert prompt == "\n\nHuman: q?\n\nAssistant:"
    assert good == "Sure. Human: ok\n\nAssistant: more" and bad == "No."
    # both responses start the same way: the shared words are not part of the prompt
    rec = _pair("q?", "I think yes", "I think no")
    assert split_dialogue(rec["chosen"], rec["rejected"]) == ("\n\nHuman: q?\n\nAssistant:", "I think yes",
                                                             "I think no")


def test_split_dialogue_on_tricky_real_records(raw):
    # harmless-base 1255 / helpful-base 169: a response contains "\n\nAssistant:"; 797: "Human:" inline
    for subset, line in [("harmless-base", 1255), ("helpful-base", 169), ("helpful-base", 1451),
                         ("helpful-rejection-sampled", 1598), ("harmless-base", 797)]:
        rec = raw[subset][line - 1]
        prompt, good, bad = split_dialogue(rec["chosen"], rec["rejected"])
        assert prompt.startswith("\n\nHuman:") and prompt.endswith("\n\nAssistant:")
        assert rec["chosen"].startswith(prompt) and rec["rejected"].startswith(prompt)
        assert rec["chosen"][len(prompt):].strip() == good and rec["rejected"][len(prompt):].strip() == bad
    rec = raw["harmless-base"][1255 - 1]
    naive = rec["chosen"][:rec["chosen"].rfind("\n\nAssistant:")]
    assert naive != split_dialogue(rec["chosen"], rec["rejected"])[0][:-len("\n\nAssistant:")]
    assert "\n\nAssistant:" in split_dialogue(rec["chosen"], rec["rejected"])[1]


def test_split_dialogue_rejects_extra_human_turn(raw):
    for line in (786, 1056):
        rec = raw["helpful-online"][line - 1]
        with pytest.raises(ValueError, match="continues with a Human turn"):
            split_dialogue(rec["chosen"], rec["rejected"])


def test_split_dialogue_errors():
    with pytest.raises(ValueError, match="share no"):
        split_dialogue("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")
    with pytest.raises(ValueError, match="does not start with"):
        split_dialogue("Human: a\n\nAssistant: b", "Human: a\n\nAssistant: c")
    with pytest.raises(TypeError, match="must be a string"):
        split_dialogue(None, "\n\nHuman: a\n\nAssistant: c")


def test_split_dialogue_identical_dialogues():
    rec = _pair("q?", "same", "same")
    assert split_dialogue(rec["chosen"], rec["rejected"]) == ("\n\nHuman: q?\n\nAssistant:", "same", "same")


# ------------------------------------------------------------------------------------------------
# load_hh_rlhf


def test_load_all_four_test_splits(hh, raw, caplog):
    assert sum(len(v) for v in raw.values()) == 8552
    assert len(hh) == 8550                                   # helpful-online 786 and 1056 dropped
    assert set(hh.column_names) >= {"prompt", "chosen", "rejected", "subset", "line"}
    counts = Counter(hh["subset"][:])
    assert counts == {**RAW_COUNTS, "helpful-online": 1135}
    online_lines = {line for s, line in zip(hh["subset"][:], hh["line"][:]) if s == "helpful-online"}
    assert {786, 1056}.isdisjoint(online_lines) and len(online_lines) == 1135
    for row in hh.select(range(0, len(hh), 97)):           # every row maps back to its 1-based raw line
        rec = raw[row["subset"]][row["line"] - 1]
        assert row["prompt"].startswith("\n\nHuman:") and row["prompt"].endswith("\n\nAssistant:")
        assert rec["chosen"] == f"{row['prompt']}{rec['chosen'][len(row['prompt']):]}"
        assert rec["chosen"][len(row["prompt"]):].strip() == row["chosen"]
        assert rec["rejected"][len(row["prompt"]):].strip() == row["rejected"]


def test_unsplittable_records_are_dropped_with_a_warning(hh_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="divscale.data.hh"):
        ds = load_hh_rlhf(["helpful-online"], data_dir=hh_dir)
    assert len(ds) == 1135
    msg = " ".join(r.getMessage() for r in caplog.records)
    assert "dropped 2 of 1137" in msg and "786" in msg and "1056" in msg


def test_ties_kept_by_default_and_droppable(hh, hh_dir):
    ties = sum(c == r for c, r in zip(hh["chosen"][:], hh["rejected"][:]))
    assert ties == 36                                       # 2 + 2 + 32 in the README
    no_ties = load_hh_rlhf(data_dir=hh_dir, drop_ties=True)
    assert len(no_ties) == 8550 - 36
    assert all(c != r for c, r in zip(no_ties["chosen"][:], no_ties["rejected"][:]))


def test_bad_input_names_file_and_line(tmp_path):
    good = json.dumps(_pair("q", "a", "b"))
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", [good, "{not json"])
    with pytest.raises(DataError, match=r"harmless-base/test.jsonl.gz:2: not valid JSON"):
        load_hh_rlhf(["harmless-base"], data_dir=tmp_path)
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", [good, json.dumps({"chosen": "x"})])
    with pytest.raises(DataError, match=r"test.jsonl.gz:2: missing field\(s\) \['rejected'\]"):
        load_hh_rlhf(["harmless-base"], data_dir=tmp_path)
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", [])
    with pytest.raises(DataError, match="empty file"):
        load_hh_rlhf(["harmless-base"], data_dir=tmp_path)
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", [good, json.dumps({"chosen": 3, "rejected": "x"})])
    with pytest.raises(DataError, match=r"test.jsonl.gz:2: chosen must be a string"):
        load_hh_rlhf(["harmless-base"], data_dir=tmp_path)
    _write_gz(tmp_path / "harmless-base" / "test.jsonl.gz", [json.dumps({"chosen": "a", "rejected": "b"})])
    with pytest.raises(DataError, match="none of the 1 records could be split"):
        load_hh_rlhf(["harmless-base"], data_dir=tmp_path)
    with pytest.raises(DataError, match=r"helpful-base/test.jsonl.gz: no such file"):
        load_hh_rlhf(["helpful-base"], data_dir=tmp_path)


def test_data_dir_from_environment(tmp_path, monkeypatch):
    _write_gz(tmp_path / "helpful-base" / "test.jsonl.gz", [_pair("q1", "a", "b"), _pair("q2", "c", "d")])
    monkeypatch.setenv("DIVSCALE_DATA_DIR", str(tmp_path))
    ds = load_hh_rlhf(["helpful-base"])
    assert ds["prompt"][:] == ["\n\nHuman: q1\n\nAssistant:", "\n\nHuman: q2\n\nAssistant:"]
    assert ds["line"][:] == [1, 2] and ds["subset"][:] == ["helpful-base"] * 2


def test_hub_fallback_fails_offline_with_a_clear_message(tmp_path, monkeypatch):
    monkeypatch.delenv("DIVSCALE_DATA_DIR", raising=False)
    monkeypatch.setattr(paths, "HH_RLHF_DIR", tmp_path / "absent")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    calls = []

    def offline_load_dataset(*args, **kwargs):          # stands in for the hub: never contacted in tests
        calls.append((args, kwargs))
        raise ConnectionError("offline")

    monkeypatch.setattr(data.datasets, "load_dataset", offline_load_dataset)
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set.*DIVSCALE_DATA_DIR"):
        load_hh_rlhf(["helpful-base"])
    assert calls == [(("Anthropic/hh-rlhf",), {"data_dir": "helpful-base", "split": "test"})]


# ------------------------------------------------------------------------------------------------
# Ranking and its files


def _ranking(i: int = 0, **kw) -> Ranking:
    base = {"id": f"s:{i}", "prompt": f"\n\nHuman: q{i}\n\nAssistant:", "responses": ["a", "b"], "rewards": [1.5, None],
                "sources": ["human-chosen", "human-rejected"], "subset": "s", "meta": {"k": [1, 2]}}
    base.update(kw)
    return Ranking(**base)


def test_ranking_dict_round_trip_and_validation():
    r = _ranking()
    assert r.n == 2 and Ranking.from_dict(r.to_dict()) == r
    with pytest.raises(ValueError, match="empty prompt"):
        _ranking(prompt="  ")
    with pytest.raises(ValueError, match="rewards must be a list of 2"):
        _ranking(rewards=[1.0])
    with pytest.raises(ValueError, match="sources must be a list of 2"):
        _ranking(sources=["x"])
    with pytest.raises(ValueError, match="rewards must be numbers"):
        _ranking(rewards=["high", 1])
    with pytest.raises(ValueError, match="unknown field"):
        Ranking.from_dict({**r.to_dict(), "extra": 1})
    with pytest.raises(ValueError, match=r"missing field\(s\) \['rewards'\]"):
        Ranking.from_dict({k: v for k, v in r.to_dict().items() if k != "rewards"})


def test_save_load_rankings(tmp_path):
    rankings = [_ranking(i) for i in range(5)]
    save_rankings(tmp_path / "a.jsonl", rankings)
    save_rankings(tmp_path / "b.jsonl", rankings)
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert load_rankings(tmp_path / "a.jsonl") == rankings
    assert not list(tmp_path.glob(".*tmp"))
    lines = (tmp_path / "a.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["sources"]
    (tmp_path / "c.jsonl").write_text("\n".join([lines[0], lines[1], json.dumps(bad)]) + "\n")
    with pytest.raises(DataError, match=r"c.jsonl:3: missing field\(s\) \['sources'\]"):
        load_rankings(tmp_path / "c.jsonl")
    bad = json.loads(lines[0])
    bad["rewards"] = [1.0]
    (tmp_path / "d.jsonl").write_text(json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl:1: .*rewards must be a list of 2"):
        load_rankings(tmp_path / "d.jsonl")
    (tmp_path / "e.jsonl").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_rankings(tmp_path / "e.jsonl")


def test_rankings_from_pairs(hh):
    pairs = rankings_from_pairs(hh.select(range(3)))
    row = hh[0]
    assert pairs[0].id == f"{row['subset']}:{row['line']}"
    assert pairs[0].responses == [row["chosen"], row["rejected"]] and pairs[0].prompt == row["prompt"]
    assert pairs[0].sources == ["human-chosen", "human-rejected"] and pairs[0].rewards == [None, None]
    assert len({r.id for r in rankings_from_pairs(hh)}) == len(hh)


# ------------------------------------------------------------------------------------------------
# the PRO format, against the PRO authors' own files


@pytest.fixture(scope="module")
def pro_records(pro_hh_dir):
    out = {}
    for subset, name in PRO_FILES.items():
        with open(pro_hh_dir / "hh_test" / f"{name}.json", encoding="utf-8") as fh:
            out[subset] = [json.loads(line) for line in fh]
    return out


def test_to_pro_record_matches_pro_files_record_by_record(hh, pro_records):
    by_key = {(s, line): i for i, (s, line) in enumerate(zip(hh["subset"][:], hh["line"][:]))}
    for subset, records in pro_records.items():
        assert len(records) == {"helpful-online": 1135}.get(subset, RAW_COUNTS[subset])
        # PRO dropped exactly the records we drop
        assert {r["meta"]["line_num"] for r in records} == {line for s, line in by_key if s == subset}
        for rec in records:
            row = hh[by_key[(subset, rec["meta"]["line_num"])]]
            ours = to_pro_record(rankings_from_pairs([row])[0])
            assert ours["prefix"] == rec["prefix"], (subset, rec["meta"]["line_num"])
            assert ours["suffix"] == rec["suffix"], (subset, rec["meta"]["line_num"])
            assert ours["sft_index"] == rec["sft_index"] == 0


def test_to_pro_record_matches_pro_dev_file(hh, pro_hh_dir):
    by_key = {(s, line): i for i, (s, line) in enumerate(zip(hh["subset"][:], hh["line"][:]))}
    dev = [from_pro_record(rec, ["human-chosen", "human-rejected"])
           for _, rec in read_jsonl(pro_hh_dir / "hh_dev" / "sampled_dev.json")]
    assert len(dev) == 280 and Counter(r.subset for r in dev) == {
        "helpful-rejection-sampled": 99, "helpful-base": 72, "harmless-base": 64, "helpful-online": 45}
    for r in dev:
        subset, line = r.id.split(":")
        pair = rankings_from_pairs([hh[by_key[(subset, int(line))]]])[0]
        assert to_pro_record(pair)["suffix"] == r.responses
        assert pro_prompt_text(to_pro_record(pair)["prefix"][0]) == r.prompt


def test_pro_prompt_text():
    prefix = ["<|prompter|>Hi there", "<|assistant|>Hello!", "<|prompter|>Tell me a joke", "<|assistant|>"]
    assert pro_prompt_text(prefix) == "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell me a joke\n\nAssistant:"


def test_pro_round_trip_pro_to_hh_to_pro(pro_records):
    for records in pro_records.values():
        for rec in records:
            ranking = from_pro_record(rec)
            assert ranking.prompt.startswith("\n\nHuman:") and ranking.prompt.endswith("\n\nAssistant:")
            back = to_pro_record(ranking)
            assert (back["prefix"], back["suffix"], back["reward"], back["sft_index"]) == (
                rec["prefix"], rec["suffix"], rec["reward"], rec["sft_index"])
            assert back["meta"].items() >= rec["meta"].items()
    rec = pro_records["harmless-base"][0]
    r = from_pro_record(rec)
    assert r.id == f"harmless-base:{rec['meta']['line_num']}" and r.subset == "harmless-base"
    assert r.rewards == rec["reward"] and r.sources == ["unknown", "unknown"]


def test_pro_round_trip_hh_to_pro_to_hh(hh):
    tags = re.compile(r"\s+|Human:|Humans:|Assistant:")
    exact = 0
    for ranking in rankings_from_pairs(hh):
        ranking.rewards = [0.5, -0.5]
        ranking.meta = {"note": "x"}
        official = to_pro_record(ranking)
        back = from_pro_record(official)
        assert (back.id, back.subset, back.sources, back.rewards, back.meta) == (
            ranking.id, ranking.subset, ranking.sources, ranking.rewards, ranking.meta)
        assert to_pro_record(back) == official                    # a fixed point after one pass
        exact += back.prompt == ranking.prompt and back.responses == ranking.responses
        # the lossless variant keeps every word: only whitespace and merged role tags change
        full = from_pro_record(to_pro_record(ranking, keep_paragraphs=True))
        assert tags.sub("", full.prompt) == tags.sub("", ranking.prompt)
        assert [tags.sub("", x) for x in full.responses] == [tags.sub("", x) for x in ranking.responses]
    assert exact > 0.75 * len(hh)         # the rest lose whitespace or paragraphs, as PRO's files do


def test_pro_format_errors(tmp_path):
    with pytest.raises(ValueError, match="HH format"):
        to_pro_record(_ranking(prompt="User: hi"))
    with pytest.raises(ValueError, match="changes the dialogue's turns"):
        to_pro_record(_ranking(responses=["fine", "fine\n\nHuman: and you?"]))
    rec = {"prefix": [["<|prompter|>a", "<|assistant|>"]] * 2, "suffix": ["x", "y"], "reward": [1, 0]}
    assert from_pro_record(rec).prompt == "\n\nHuman: a\n\nAssistant:"
    with pytest.raises(ValueError, match="identical lists"):
        from_pro_record({**rec, "prefix": [["<|prompter|>a", "<|assistant|>"], ["<|prompter|>b", "<|assistant|>"]]})
    with pytest.raises(ValueError, match="bare tag"):
        from_pro_record({**rec, "prefix": [["<|prompter|>a"]] * 2})


# ------------------------------------------------------------------------------------------------
# pool / dev / test


def test_make_splits_disjoint_complete_and_stratified(hh, splits):
    prompts = {name: set(part["prompt"][:]) for name, part in splits.items()}
    assert prompts["pool"].isdisjoint(prompts["dev"]) and prompts["pool"].isdisjoint(prompts["test"])
    assert prompts["dev"].isdisjoint(prompts["test"])
    assert len(prompts["dev"]) == 280 and len(prompts["test"]) == 2000
    assert sum(len(p) for p in splits.values()) == len(hh)        # pool = everything else
    for name in ("dev", "test"):
        assert set(splits[name]["subset"][:]) == set(RAW_COUNTS)
    # a prompt with two comparisons lands in one split with both records
    dup = "\n\nHuman: what are racist words\n\nAssistant:"
    assert sum(part["prompt"][:].count(dup) for part in splits.values()) == 2
    assert sum(dup in p for p in prompts.values()) == 1
    # file order is kept inside each split
    keys = list(zip(splits["test"]["subset"][:], splits["test"]["line"][:]))
    order = {s: i for i, s in enumerate(RAW_COUNTS)}
    assert keys == sorted(keys, key=lambda k: (order[k[0]], k[1]))


def test_make_splits_deterministic_and_warns(hh, splits):
    with pytest.warns(UserWarning, match="carving the training pool out of the HH-RLHF test splits"):
        again = make_splits(hh, dev_size=280, test_size=2000, seed=42)
    for k in again:
        assert again[k]["line"][:] == splits[k]["line"][:] and again[k]["subset"][:] == splits[k]["subset"][:]
    with pytest.warns(UserWarning):
        other = make_splits(hh, dev_size=280, test_size=2000, seed=7)
    assert set(other["dev"]["prompt"][:]) != set(splits["dev"]["prompt"][:])


def test_make_splits_sizes_and_errors(hh):
    small = hh.select(range(0, len(hh), 10))
    with pytest.warns(UserWarning):
        parts = make_splits(small, dev_size=8, pool_size=100, seed=1)
    assert len(set(parts["pool"]["prompt"][:])) == 100 and len(set(parts["dev"]["prompt"][:])) == 8
    assert set(parts["dev"]["subset"][:]) == set(RAW_COUNTS)        # even 8 prompts cover all four subsets
    n = len(set(small["prompt"][:]))
    assert len(set(parts["test"]["prompt"][:])) == n - 108
    with pytest.warns(UserWarning):
        halves = make_splits(small, dev_size=5, seed=1)
    assert abs(len(halves["pool"]) - len(halves["test"])) <= 2
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="prompts requested but the data has only"):
        make_splits(small, dev_size=10, test_size=n, seed=1)
    with pytest.warns(UserWarning), pytest.raises(ValueError, match="no prompts left for pool"):
        make_splits(small, dev_size=10, test_size=n - 10, seed=1)


def test_load_splits_carves_without_train(hh_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = DataConfig(data_dir=str(hh_dir), dev_size=40, test_size=400, pool_size=600)
    assert not data.train_available(cfg) and data.resolve_split_mode(cfg) == "carve"
    with pytest.warns(UserWarning, match="no train split is available"):
        parts = data.load_splits(cfg)
    assert [len(set(parts[k]["prompt"][:])) for k in ("pool", "dev", "test")] == [600, 40, 400]
    with pytest.raises(ValueError, match="split_mode"):
        data.load_splits(DataConfig(data_dir=str(hh_dir), split_mode="random"))


def test_load_splits_paper_mode_uses_train(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    subsets = ["harmless-base", "helpful-base"]
    for s in subsets:
        _write_gz(tmp_path / s / "train.jsonl.gz", [_pair(f"{s} train {i}", "a", "b") for i in range(30)]
                  + [_pair("shared question", "a", "b")])
        _write_gz(tmp_path / s / "test.jsonl.gz", [_pair(f"{s} test {i}", "a", "b") for i in range(10)]
                  + [_pair("shared question", "c", "d")])
    cfg = DataConfig(subsets=subsets, data_dir=str(tmp_path), dev_size=6)
    assert data.resolve_split_mode(cfg) == "paper"
    with warnings.catch_warnings():
        warnings.simplefilter("error")                 # no carving warning in paper mode
        parts = data.load_splits(cfg)
    assert len(parts["test"]) == 22 and len(parts["dev"]) == 6 and len(parts["pool"]) == 54
    assert all(" train " in p for p in parts["pool"]["prompt"][:] + parts["dev"]["prompt"][:])
    assert set(parts["dev"]["subset"][:]) == set(subsets)
    assert "\n\nHuman: shared question\n\nAssistant:" not in set(parts["pool"]["prompt"][:])
    cfg_carve = DataConfig(subsets=subsets, data_dir=str(tmp_path), dev_size=6, split_mode="carve")
    with pytest.warns(UserWarning):
        assert len(data.load_splits(cfg_carve)["dev"]) == 6


def test_prepare_command_writes_splits(tmp_path, hh_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(f"data:\n  data_dir: {hh_dir}\n  dev_size: 20\n  test_size: 50\n  pool_size: 100\n")
    out = tmp_path / "splits"
    with pytest.warns(UserWarning):
        assert cli.main(["data", "prepare", "--recipe", str(recipe), "--out", str(out)]) == 0
    parts = {k: [rec for _, rec in read_jsonl(out / f"{k}.jsonl", required=("prompt", "subset"))]
             for k in ("pool", "dev", "test")}
    assert [len({r["prompt"] for r in parts[k]}) for k in ("pool", "dev", "test")] == [100, 20, 50]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["split_mode"] == "carve" and manifest["counts"]["dev"]["prompts"] == 20
    first = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.warns(UserWarning):
        data.prepare_splits(DataConfig(data_dir=str(hh_dir), dev_size=20, test_size=50, pool_size=100),
                            out, force=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == first
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_download_refuses_offline(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="HF_HUB_OFFLINE is set"):
        data.download(tmp_path)
    assert cli.main(["data", "download", "--out", str(tmp_path)]) == 1
    assert "link a local copy" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())

"""What the pipeline hands the report: the answers table (initial vs one replicate per primary cell), the HH
reader's notes said once instead of on every notebook's stderr."""
from __future__ import annotations

import json
import logging

import pandas as pd
import pytest

from divscale.config import load_recipe
from divscale.io import DataError
from divscale.study import pipeline

KEYS = {"key_recipe": "r1", "key_rm_train": "t1", "key_rm_test": "e1", "key_policy": "p1", "key_rankings": "k1",
        "key_code_train": "c1", "key_code_eval": "c2", "eval_key": "eval-x"}


def _records(tag: str) -> list[dict]:
    return [{"subset": s, "index": i, "prompt": f"\n\nHuman: q{s}{i}\n\nAssistant:", "response": f"{tag} {s} {i}",
             "logit": 0.0, "score": 0.25 if tag == "initial" else 0.5}
            for s in ("helpful-base", "harmless-base") for i in range(3)]


@pytest.fixture
def cpu(monkeypatch, tmp_path):
    R = load_recipe("cpu")
    monkeypatch.setattr(pipeline, "table_keys", lambda R_: KEYS)
    monkeypatch.setattr(pipeline, "generations", lambda row: pd.DataFrame(_records(row["run_id"])))
    monkeypatch.setattr(pipeline, "results_dir", lambda R_: tmp_path)
    rows = [{"run_id": f"pro-n{n}-k{k}-s{s}", "algo": "pro", "ranking_len": n, "n_prompts": k, "seed": s, "draw": s,
             **KEYS} for n, k in ((4, 60), (2, 120), (2, 60), (2, 12)) for s in (44, 42, 43)]
    return R, pd.DataFrame(rows), {"reward_global": 39.0, "ci": [36.0, 42.0], "records": _records("initial")}


def test_answers_quote_the_initial_policy_and_one_replicate_of_each_primary_cell(cpu, tmp_path):
    R, results, initial = cpu
    table = pipeline.write_answers(R, results, initial, per_subset=2)
    assert list(pd.unique(table["policy"])) == ["initial policy", "PRO n=4 k=60 seed 42", "PRO n=2 k=120 seed 42",
                                                "PRO n=2 k=60 seed 42"]
    assert len(table) == 4 * 4                                     # 2 prompts of each test file, 4 policies
    assert set(zip(table["subset"], table["index"])) == {("harmless-base", 0), ("harmless-base", 1),
                                                         ("helpful-base", 0), ("helpful-base", 1)}
    assert (table[table.policy == "initial policy"]["reward"] == 25.0).all()
    first = table[table.policy == "PRO n=4 k=60 seed 42"].iloc[0]
    assert first["response"].startswith("pro-n4-k60-s42 ") and first["run_id"] == "pro-n4-k60-s42"
    assert first["key_rm_test"] == "e1" and first["eval_key"] == "eval-x"
    lines = [json.loads(x) for x in (tmp_path / "answers.jsonl").read_text().splitlines()]
    assert len(lines) == 16 and lines[0]["policy"] == "initial policy" and lines[0]["seed"] is None


def test_answers_refuse_a_table_without_a_primary_cell_and_a_recipe_without_a_declaration(cpu):
    R, results, initial = cpu
    with pytest.raises(DataError, match=r"no run of the primary cell \(n=2, k=60\)"):
        pipeline.answers_table(R, results[~((results.ranking_len == 2) & (results.n_prompts == 60))], initial)
    plain = load_recipe("cpu", {"grid.primary.budget": None})
    with pytest.raises(DataError, match="no grid.primary declared"):
        pipeline.answers_table(plain, results, initial)


def test_the_readers_warnings_are_kept_for_one_notebook_not_logged(monkeypatch, caplog):
    import divscale.data.hh as hh

    R = load_recipe("smoke")

    def fake_load(cfg):
        logging.getLogger("divscale.data.hh").warning("%s/data/x.jsonl.gz: dropped 2 of 9 records", pipeline.paths.ROOT)
        return {"pool": [], "dev": [], "test": []}

    monkeypatch.setattr(hh, "load_splits", fake_load)
    monkeypatch.setattr(pipeline, "_MEMO", {})
    with caplog.at_level(logging.WARNING):
        pipeline.splits(R)
    assert caplog.records == []                                     # nothing reaches stderr
    assert pipeline.data_notes(R) == ["./data/x.jsonl.gz: dropped 2 of 9 records"]
    assert logging.getLogger("divscale.data.hh").propagate          # the logger is left as it was

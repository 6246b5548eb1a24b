"""divscale.data.formats on every format it reads (tests/fixtures/formats/, built from real records by build.py),
every kind of source, the errors, and ``divscale data convert`` into TRL's DPOTrainer."""
from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import datasets
import pytest

from divscale.cli import main
from divscale.data import convert
from divscale.data import formats as fm
from divscale.io import DataError

FIX = Path(__file__).parent / "fixtures" / "formats"


def triples(ds) -> list[tuple]:
    return [(r["prompt"], tuple(r["completions"]), tuple(r["ranks"])) for r in ds]


def plain(rows: list[dict]) -> list[dict]:
    """Rows with NaN scores as None (NaN != NaN would make equal rows differ)."""
    return [r | {"scores": [None if math.isnan(s) else s for s in r["scores"]]} for r in rows]


# ------------------------------------------------------------------------------------------ detection, every format


@pytest.mark.parametrize("fixture, fmt, rows, widths", [
    ("hh.jsonl", "hh", 4, {2}),
    ("trl_standard_explicit.jsonl", "preference", 4, {2}),
    ("trl_standard_implicit.jsonl", "preference", 4, {2}),
    ("trl_conversational_explicit.jsonl", "preference", 4, {2}),
    ("trl_conversational_implicit.jsonl", "preference", 4, {2}),
    ("trl_unpaired.jsonl", "unpaired", 4, {2}),          # the single-label prompt is dropped (see below)
    ("nemo_rl.jsonl", "nemo-rl", 3, {2, 3}),
    ("ranked.jsonl", "ranked", 2, {2, 3}),
    ("pro.json", "pro", 3, {2}),
    ("ultrafeedback.jsonl", "ultrafeedback", 3, {4}),
    ("oasst1.jsonl", "oasst1", 3, {2, 3}),
])
def test_every_format_is_detected_and_read(fixture, fmt, rows, widths):
    records = fm.read_records(FIX / fixture)
    assert fm.detect_format(records.records[0]) == fmt
    ds = fm.load_ranked(FIX / fixture, drop_unrankable=True)
    assert len(ds) == rows and {len(c) for c in ds["completions"]} == widths
    assert set(ds["source"]) == {fmt}
    assert all(p.startswith("\n\nHuman:") or fmt == "preference" for p in ds["prompt"])
    assert all(r[0] == 0 and r == sorted(r) and len(set(r)) > 1 for r in ds["ranks"])
    prompts = fm.load_prompts(FIX / fixture)
    assert prompts.format.startswith(fmt) and len(prompts) >= rows
    assert set(ds["id"]) <= set(prompts.ids)                        # the same ids in both readers
    by_id = dict(zip(prompts.ids, prompts.prompts))
    assert all(by_id[i] == p for i, p in zip(ds["id"], ds["prompt"]))


def test_trl_variants_read_as_the_hh_pairs_they_were_built_from():
    """HH dialogues, TRL standard explicit, conversational explicit and conversational implicit (TRL's own
    maybe_extract_prompt) give the same prompts, completions and order."""
    hh = triples(fm.load_ranked(FIX / "hh.jsonl"))
    for name in ("trl_standard_explicit", "trl_conversational_explicit", "trl_conversational_implicit"):
        assert triples(fm.load_ranked(FIX / f"{name}.jsonl")) == hh, name
    conv = fm.load_ranked(FIX / "trl_conversational_implicit.jsonl")
    assert conv[0]["prompt_chat"][0]["role"] == "user" and conv[0]["prompt_chat"][-1]["role"] == "user"
    assert fm.load_ranked(FIX / "trl_standard_explicit.jsonl")[0]["prompt_chat"] == []
    # implicit standard: TRL's character-level common prefix, the space before the answers left out
    implicit = fm.load_ranked(FIX / "trl_standard_implicit.jsonl")
    assert all(p.startswith("Question: ") and p.endswith("\nAnswer:") for p in implicit["prompt"])
    assert [c for _, c, _ in triples(implicit)] == [c for _, c, _ in hh]
    kinds = {fm.describe("preference", fm.read_records(FIX / f"{n}.jsonl").records[0])
             for n in ("trl_standard_explicit", "trl_standard_implicit", "trl_conversational_explicit",
                       "trl_conversational_implicit")}
    assert kinds == {f"preference (TRL: {a}, {b} prompt)" for a in ("standard", "conversational")
                     for b in ("explicit", "implicit")}


def test_unpaired_forms_rankings_where_it_can_and_refuses_where_it_cannot():
    pairs = triples(fm.load_ranked(FIX / "trl_standard_explicit.jsonl"))
    with pytest.raises(DataError, match=r"trl_unpaired.jsonl:9: the prompt's 2 completion\(s\) all have label True"):
        fm.load_ranked(FIX / "trl_unpaired.jsonl")
    ds = fm.load_ranked(FIX / "trl_unpaired.jsonl", drop_unrankable=True)
    assert triples(ds) == pairs                    # TRL's unpair_preference_dataset, read back: the same pairs
    assert ds["id"] == ["row 0", "row 1", "row 2", "row 3"]
    assert len(fm.load_prompts(FIX / "trl_unpaired.jsonl")) == 5        # every prompt, the single-label one too
    with pytest.raises(DataError, match=r"TRL unpaired data .* no prompt that has both .*KTOTrainer"):
        fm.load_ranked(FIX / "trl_unpaired_kto_only.jsonl")
    assert len(fm.load_prompts(FIX / "trl_unpaired_kto_only.jsonl")) == 4


@pytest.mark.parametrize("fixture, fmt", [("trl_prompt_only.jsonl", "prompt-only"),
                                          ("trl_prompt_completion.jsonl", "prompt-completion")])
def test_prompt_data_has_prompts_but_no_ranking(fixture, fmt):
    with pytest.raises(DataError, match=f"{fmt} data has prompts but no preference"):
        fm.load_ranked(FIX / fixture)
    prompts = fm.load_prompts(FIX / fixture)
    assert prompts.format == fmt
    assert prompts.prompts == fm.load_ranked(FIX / "hh.jsonl")["prompt"]


def test_nemo_rl_reads_as_the_oasst1_tree_it_came_from():
    assert triples(fm.load_ranked(FIX / "nemo_rl.jsonl")) == triples(fm.load_ranked(FIX / "oasst1.jsonl"))


def test_ranked_format_ties_and_chat_prompt():
    ds = fm.load_ranked(FIX / "ranked.jsonl")
    assert ds[0]["ranks"] == [0, 1, 1] and ds[0]["scores"] == [2.0, 0.5, 0.5]
    assert ds[1]["prompt"] == fm.load_ranked(FIX / "hh.jsonl")[1]["prompt"] and ds[1]["prompt_chat"]


# ------------------------------------------------------------------------------------------ sources


def test_parquet_json_folder_saved_dataset_and_rows_give_the_same_rows(tmp_path):
    want = plain(fm.load_ranked(FIX / "trl_conversational_explicit.jsonl").to_list())
    records = fm.read_records(FIX / "trl_conversational_explicit.jsonl").records
    datasets.Dataset.from_list(records).to_parquet(str(tmp_path / "pairs.parquet"))
    (tmp_path / "pairs.json").write_text(json.dumps(records))
    folder = tmp_path / "folder"
    folder.mkdir()
    for i, rec in enumerate(records):
        (folder / f"part{i}.jsonl").write_text(json.dumps(rec) + "\n")
    datasets.DatasetDict({"train": datasets.Dataset.from_list(records)}).save_to_disk(str(tmp_path / "saved"))
    for source in (tmp_path / "pairs.parquet", tmp_path / "pairs.json", folder, tmp_path / "saved", records,
                   datasets.Dataset.from_list(records)):
        assert plain(fm.load_ranked(source).to_list()) == want, source
    with pytest.raises(DataError, match=r"no split 'test'"):
        fm.load_ranked(tmp_path / "saved", split="test")


def test_hub_ids_go_through_datasets_load_dataset(monkeypatch):
    records = fm.read_records(FIX / "trl_standard_explicit.jsonl").records
    calls = []

    def fake_load_dataset(name, split):
        calls.append((name, split))
        return datasets.Dataset.from_list(records)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    ds = fm.load_ranked("someone/prefs", split="test")
    assert calls == [("someone/prefs", "test")] and len(ds) == 4
    assert fm.load_prompts("someone/prefs").prompts == ds["prompt"]


def test_a_file_in_no_known_format_names_the_file_the_record_and_every_format(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text('{"question": "q", "answers": ["a", "b"]}\n')
    for read in (fm.load_ranked, fm.load_prompts):
        with pytest.raises(DataError) as err:
            read(path)
        msg = str(err.value)
        assert msg.startswith(f"{path}:1: no known format fits this record (fields: ['answers', 'question'])")
        assert "\n" not in msg
        for f in fm.FORMATS:
            assert f"{f.name} ({f.expects})" in msg


def test_repeated_ids_get_suffixes_and_default_ids_survive_dropped_rows():
    rows = [{"id": "a", "prompt": "p", "completions": ["x", "y"], "ranks": [0, 1]},
            {"id": "a", "prompt": "q", "completions": ["x", "y"], "ranks": [0, 1]},
            {"prompt": "r", "completions": ["x", "y"], "ranks": [0, 0]},
            {"prompt": "s", "completions": ["x", "y"], "ranks": [1, 0]}]
    ds = fm.load_ranked(rows, drop_unrankable=True)
    assert ds["id"] == ["a", "a#2", "row 3"]
    assert fm.load_prompts(rows).ids == ["a", "a#2", "row 2", "row 3"]


# ------------------------------------------------------------------------------------------ convert


def test_pairs_from_rankings_with_ties():
    assert convert.pair_indices([0, 1, 1, 2]) == [(0, 1), (0, 2), (0, 3)]
    assert convert.pair_indices([0, 0, 1]) == [(0, 2), (1, 2)]
    assert convert.pair_indices([0, 1, 1, 2], "all") == [(0, 1), (0, 2), (0, 3), (1, 3), (2, 3)]
    assert len(convert.pair_indices([0, 1, 2, 3], "all")) == 6


def test_convert_round_trips_and_keeps_the_style(tmp_path, capsys):
    for fixture, style in (("trl_standard_explicit.jsonl", str), ("trl_conversational_implicit.jsonl", list)):
        out = tmp_path / f"{fixture}.ranked.jsonl"
        assert main(["data", "convert", str(FIX / fixture), "--to", "ranked", "--out", str(out)]) == 0
        back = tmp_path / f"{fixture}.pairs.jsonl"
        assert main(["data", "convert", str(out), "--to", "pairs", "--out", str(back)]) == 0
        pairs = [json.loads(line) for line in back.read_text().splitlines()]
        assert all(isinstance(p["prompt"], style) for p in pairs)
        assert triples(fm.load_ranked(back)) == triples(fm.load_ranked(FIX / fixture))
    assert "4 TRL preference pairs (best-vs-rest, conversational)" in capsys.readouterr().out


def test_convert_cli_refusals(tmp_path, capsys):
    assert main(["data", "convert", str(FIX / "ranked.jsonl"), "--to", "ranked", "--pairs", "all",
                 "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "--pairs applies to --to pairs only" in capsys.readouterr().err
    assert main(["data", "convert", str(FIX / "trl_prompt_only.jsonl"), "--to", "pairs",
                 "--out", str(tmp_path / "x.jsonl")]) == 1
    assert "no preference" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()


def test_ranked_file_feeds_trls_dpo_trainer(tmp_path, tiny_gpt, tiny_tokenizer):
    """A ranked file split into all pairs is what TRL's DPOTrainer tokenizes: prompt_ids / chosen_ids /
    rejected_ids, one example per pair, the completions after the prompt."""
    from trl import DPOConfig, DPOTrainer

    out = tmp_path / "pairs.jsonl"
    assert main(["data", "convert", str(FIX / "ranked.jsonl"), "--to", "pairs", "--pairs", "all",
                 "--style", "standard", "--out", str(out)]) == 0
    pairs = datasets.load_dataset("json", data_files=str(out), split="train")
    assert len(pairs) == 2 + 1                  # 0 > 1 = 1 (a tie: no pair between them), and one pair
    assert pairs[0]["score_chosen"] == 2.0 and math.isnan(pairs[2]["score_chosen"] or math.nan)
    args = DPOConfig(output_dir=str(tmp_path / "dpo"), max_length=512, report_to="none", use_cpu=True,
                     per_device_train_batch_size=2, max_steps=1, bf16=False, activation_checkpointing=False,
                     precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=tiny_gpt, ref_model=copy.deepcopy(tiny_gpt), args=args, train_dataset=pairs,
                         processing_class=tiny_tokenizer)
    tokenized = trainer.train_dataset
    assert {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(tokenized.column_names) and len(tokenized) == 3
    first = tokenized[0]
    assert tiny_tokenizer.decode(first["prompt_ids"]) == pairs[0]["prompt"]
    assert tiny_tokenizer.decode(first["chosen_ids"]).startswith(pairs[0]["chosen"])

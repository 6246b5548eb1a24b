"""divscale.study.listwise (notebook 09's head-to-head), its summary (divscale.report.publish.listwise_summary) and
its figure: the design's equalities hold (same rankings in the same steps for every arm of a seed), the costs are
what the trainers encode, the table is keyed and a stale row is refused."""
from __future__ import annotations

import copy
import math
import re

import numpy as np
import pandas as pd
import pytest
from datasets import Dataset

from divscale.config import load_recipe
from divscale.data.ranked import RANKED_FEATURES
from divscale.provenance import StaleResultsError
from divscale.report import plots
from divscale.report.publish import listwise_summary
from divscale.study import listwise

K = listwise.RANKING_LEN


def design(**kw) -> listwise.Design:
    base = {"recipe": "toy", "seeds": (42, 43), "steps": 3, "rows_per_step": 2, "ranking_len": K,
            "learning_rate": 1e-3, "weight_decay": 0.01, "max_grad_norm": 1.0, "max_length": 96, "max_prompt_length": 64,
            "beta": 0.1, "sft_weight": 0.05, "n_test": 4, "data_seed": 42}
    return listwise.Design(**(base | kw))


def rankings(n: int, k: int = K) -> Dataset:
    rows = [{"id": f"r{i}", "prompt": f"\n\nHuman: question number {i} about item {i * 7}?\n\nAssistant:",
             "completions": [f"answer {j} to {i}, {'with some more words ' * (j + 1)}" for j in range(k)],
             "ranks": list(range(k)), "scores": [math.nan] * k, "source": "toy", "prompt_chat": []}
            for i in range(n)]
    return Dataset.from_list(rows, features=RANKED_FEATURES)


# --------------------------------------------------------------------------------------------- design and cost

def test_design_takes_the_recipe_values_and_its_first_seeds():
    R = load_recipe("cpu")
    d = listwise.design(R, n_seeds=3)
    t = R.train
    assert (d.steps, d.rows_per_step, d.learning_rate, d.weight_decay, d.max_grad_norm, d.sft_weight) == (
        t.max_steps, t.prompts_per_step, t.learning_rate, t.weight_decay, t.max_grad_norm, t.sft_weight)
    assert d.seeds == tuple([*t.seeds, *R.grid.verdict_seeds][:3])
    assert d.max_length == R.policy.block_size and d.max_prompt_length == t.max_prompt_length
    smoke = listwise.design(load_recipe("smoke"), n_seeds=10)       # fewer seeds than asked: all it has
    assert len(smoke.seeds) == len({*load_recipe("smoke").train.seeds, *load_recipe("smoke").grid.verdict_seeds})


def test_cost_per_step_counts_what_each_trainer_encodes():
    d = design(rows_per_step=4)
    pro, pl = listwise.arm("pro"), listwise.arm("plackett_luce")
    bvr, allp = listwise.arm("trl_dpo_best_vs_rest"), listwise.arm("trl_dpo_all_pairs")
    assert listwise.cost_per_step(d, pro) == {"rankings": 4, "pairs": None, "policy_sequences": 12,
                                              "prompt_encodings": 4, "reference_sequences": 0}
    assert listwise.cost_per_step(d, pl)["reference_sequences"] == 12
    same_rows = listwise.cost_per_step(d, allp)               # K = 3: 3 pairs a ranking, 2 sequences a pair
    assert same_rows == {"rankings": 4, "pairs": 12, "policy_sequences": 24, "prompt_encodings": 24,
                         "reference_sequences": 24}
    assert listwise.cost_per_step(d, bvr)["pairs"] == 8
    same_pairs = listwise.cost_per_step(d, allp, same="pairs")
    assert same_pairs["pairs"] == 4 and same_pairs["rankings"] == pytest.approx(4 / 3)
    table = listwise.cost_table(d)                            # per ranking, both readings cost the same
    per_ranking = table["policy sequences a ranking"]
    assert per_ranking.loc[("trl_dpo_all_pairs", "same rankings a step")] == \
        per_ranking.loc[("trl_dpo_all_pairs", "same pairs a step as rankings")] == 2 * per_ranking.loc[("pro", "same rankings a step")]
    with pytest.raises(ValueError, match="unknown arm"):
        listwise.arm("dpo")


# --------------------------------------------------------------------------------------------- data order and pairs

def test_data_order_is_a_seeded_permutation():
    rows = rankings(10)
    a, b, c = (listwise.data_order(rows, s)["id"] for s in (42, 42, 43))
    assert a == b and a != c and sorted(a) == sorted(rows["id"])


def test_pairs_keep_row_order_and_the_ranking_trainers_prompt_cut(tiny_tokenizer):
    rows = rankings(3).to_list()
    rows[1]["prompt"] = "\n\nHuman: " + "a very long question " * 60 + "\n\nAssistant:"
    pairs = listwise.ranking_pairs(rows, tiny_tokenizer, 96, 32, "all")
    assert len(pairs) == 3 * 3 and set(pairs[0]) == {"prompt", "chosen", "rejected"}
    assert [p["chosen"] for p in pairs[:3]] == [" " + rows[0]["completions"][i] for i in (0, 0, 1)]
    long = pairs[3]["prompt"]
    assert len(tiny_tokenizer(long)["input_ids"]) <= 32 and long.endswith("\n\nAssistant:")   # its last tokens
    assert len(listwise.ranking_pairs(rows, tiny_tokenizer, 96, 32, "best-vs-rest")) == 3 * (K - 1)


def test_every_arm_of_a_seed_sees_the_same_rankings_in_the_same_steps(tiny_gpt, tiny_tokenizer, tmp_path):
    """The design's core equality: a listwise step and a TRL pairs step (same rows per step) hold the same
    rankings, in order, for the whole run (several epochs)."""
    from trl import DPOConfig, DPOTrainer

    from divscale.train.trainer import RankingConfig, RankingTrainer

    d = design(rows_per_step=2)
    rows = listwise.data_order(rankings(5), 7)
    common = listwise.shared_options(d, 7) | {"output_dir": str(tmp_path), "use_cpu": True, "report_to": "none",
                                              "data_seed": 7}
    ours = RankingTrainer(model=tiny_gpt, args=RankingConfig(**common, loss_type=["plackett_luce"],
                                                             per_device_train_batch_size=d.rows_per_step,
                                                             max_prompt_length=d.max_prompt_length),
                          train_dataset=rows, processing_class=tiny_tokenizer)
    pairs = listwise.ranking_pairs(rows, tiny_tokenizer, d.max_length, d.max_prompt_length, "all")
    theirs = DPOTrainer(model=tiny_gpt, ref_model=copy.deepcopy(tiny_gpt), args=DPOConfig(
        **common, per_device_train_batch_size=d.rows_per_step * d.pairs_per_row("all"),
        activation_checkpointing=False), train_dataset=Dataset.from_list(pairs), processing_class=tiny_tokenizer)
    decoded = ["r" + re.search(r"question number (\d+)", tiny_tokenizer.decode(p)).group(1)
               for p in theirs.train_dataset["prompt_ids"]]
    ours_batches = [list(b) for b in np.array_split(rows["id"], math.ceil(len(rows) / d.rows_per_step))]
    for epoch in range(2):
        ids_ours = [[rows[int(i)]["id"] for i in idx] for idx in ours.get_train_dataloader().batch_sampler]
        ids_theirs = [list(dict.fromkeys(decoded[int(i)] for i in idx))
                      for idx in theirs.get_train_dataloader().batch_sampler]
        assert ids_ours == ids_theirs == ours_batches, epoch


# --------------------------------------------------------------------------------------------- the table and its summary

KEYS = {"key_recipe": "r", "key_rm_test": "t", "key_policy": "p", "key_rankings": "k", "key_code_train": "c",
        "key_code_eval": "e", "eval_key": "eval-x"}


def table(seeds=(42, 43, 44), offset: float = 2.0) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    d = design(seeds=tuple(seeds))
    rows = [{"run_id": "initial", "arm": "initial", "label": "initial policy", "trainer": "", "loss": "", "pairs": "",
             "seed": math.nan, "reward": 40.0, "reward_lo": 39.0, "reward_hi": 41.0, "win_rate": math.nan,
             "empty_share": 0.0, "answer_chars_mean": 50.0, "status": "ok", **KEYS}]
    for seed in seeds:
        for i, a in enumerate(listwise.ARMS):
            cost = listwise.cost_per_step(d, a)
            rows.append({"run_id": f"{a.name}-{seed}", "arm": a.name, "label": a.label, "trainer": a.trainer,
                         "loss": a.loss, "pairs": a.pairs or "", "seed": seed, "ranking_len": K, "n_train": 10,
                         "n_test": 4, "steps": d.steps, "rows_per_step": d.rows_per_step,
                         "pairs_per_step": cost["pairs"], "policy_sequences_per_step": cost["policy_sequences"],
                         "reference_sequences_per_step": cost["reference_sequences"],
                         "reward": 40 + (offset if a.trainer == "divscale" else 0) + seed % 3 + rng.normal(0, 0.2),
                         "reward_lo": 38.0, "reward_hi": 45.0, "win_rate": 0.5 + 0.01 * i, "empty_share": 0.1,
                         "answer_chars_mean": 40.0, "seconds_per_step": 0.1 if a.trainer == "divscale" else 0.4,
                         "status": "ok", **KEYS})
    return pd.DataFrame(rows)


def test_summary_pairs_every_listwise_arm_with_every_trl_arm_by_seed():
    df = table()
    s = listwise_summary(df)
    assert set(s["arms"]) == {a.name for a in listwise.ARMS} and s["initial"]["reward"] == 40.0
    assert len(s["contrasts"]) == 4 * 2
    c = s["contrasts"]["pro - trl_dpo_all_pairs"]
    runs = df[df["arm"] != "initial"].set_index(["arm", "seed"])["reward"]
    diff = runs.loc["pro"] - runs.loc["trl_dpo_all_pairs"]
    assert c["estimate"] == pytest.approx(diff.mean()) and c["n_a"] == 3 and c["test"].startswith("paired t by seed")
    assert c["status"] == "holds"              # the seed effect cancels in the pairs: +2 stands out
    assert s["arms"]["pro"]["speed_vs_trl_all_pairs"] == pytest.approx(4.0)
    assert s["arms"]["pro"]["vs_initial"]["estimate"] == pytest.approx(df[df["arm"] == "pro"]["reward"].mean() - 40)
    assert s["design"]["seeds"] == [42, 43, 44] and s["design"]["ranking_len"] == K
    assert listwise.contrast_table(s).shape == (8, 6)
    assert "initial policy" in listwise.quality_table(s).index
    assert any("4.0x" in line for line in listwise.sentences(s))


def test_summary_refuses_a_stale_row_and_a_table_without_its_initial_row():
    df = table()
    df.loc[3, "key_rm_test"] = "older"
    with pytest.raises(StaleResultsError, match="key_rm_test"):
        listwise_summary(df)
    from divscale.io import DataError

    with pytest.raises(DataError, match="initial"):
        listwise_summary(table().iloc[1:])
    assert listwise_summary(None) is None


def test_summary_json_holds_the_block_when_the_table_exists(tmp_path):
    from test_analysis import make_results

    from divscale.report import analysis, publish

    out = tmp_path / "toy"
    out.mkdir()
    analysis.write_results(out / "runs.csv", make_results(sizes=(60, 120)))
    assert publish.build_summary("toy", out, budgets=[240])["listwise"] is None
    table().to_csv(out / listwise.TABLE, index=False)
    s = publish.build_summary("toy", out, budgets=[240])
    assert "listwise.csv" in s["inputs"] and set(s["listwise"]["arms"]) == {a.name for a in listwise.ARMS}
    assert s["listwise"]["contrasts"]["pro - trl_dpo_all_pairs"]["status"] == "holds"


def test_write_table_refuses_rows_made_from_other_inputs(tmp_path, monkeypatch):
    from divscale import paths

    monkeypatch.setattr(paths, "RESULTS_DIR", tmp_path)
    R = load_recipe("smoke")
    rows = table().to_dict("records")
    out = listwise.write_table(R, rows)
    assert (tmp_path / "smoke" / listwise.TABLE).exists() and len(out) == len(rows)
    assert listwise.load_table(tmp_path / "smoke" / listwise.TABLE).shape == out.shape
    rows[2] = rows[2] | {"key_policy": "another"}
    with pytest.raises(StaleResultsError):
        listwise.write_table(R, rows)


def test_plot_listwise_draws_three_panels(tmp_path):
    df = table()
    fig = plots.plot_listwise(df, listwise_summary(df))
    assert len(fig.axes) == 3
    written = plots.save_figure(fig, "listwise", tmp_path)
    assert all(p.stat().st_size > 2000 for p in written)


# --------------------------------------------------------------------------------------------- the data

def test_oasst1_data_holds_out_contexts_and_writes_a_file_evaluate_can_read(tmp_path, monkeypatch):
    from divscale import paths
    from divscale.data.formats import load_prompts

    if not (paths.DATA_DIR / listwise.OASST1).exists():
        pytest.fail(f"{paths.DATA_DIR / listwise.OASST1} is missing: link ../shared/data/oasst1 into data/")
    monkeypatch.setattr(paths, "RUNS_DIR", tmp_path)
    d = design(n_test=20)
    data = listwise.oasst1_data(load_recipe("cpu"), d)
    assert len(data.test) == 20 and data.counts["train"] == len(data.train) > 100
    assert all(len(c) == K and r == list(range(K)) for c, r in zip(data.train["completions"], data.train["ranks"]))
    assert not set(data.train["id"]) & set(data.test["id"])
    assert all("\n" not in c for cs in data.train["completions"] for c in cs)           # one line
    read = load_prompts(str(data.source))                         # what `divscale evaluate --run` reads
    where = dict(zip(read.ids, read.prompts))
    assert [where[i] for i in data.test["id"]] == list(data.test["prompt"])

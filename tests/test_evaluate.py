"""Evaluation: Global weighting and its stratified CI, paired win rates, the LLM judge (fake local
server) and atomic result files."""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np
import pytest

from divscale.config import Recipe
from divscale.metrics.stats import bootstrap_ci, paired_win_rate
from divscale.reward.evaluate import evaluate_checkpoint, evaluate_policy, llm_judge, parse_verdict, summarize


class LengthRM:
    """A fake reward model: logit = (len(response) - 20) / 10, so scores are known."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses, batch_size=None, progress=False):
        assert len(prompts) == len(responses)
        self.calls += 1
        return np.array([(len(r) - 20) / 10 for r in responses])


class BrokenRM:
    def score(self, prompts, responses, batch_size=None, progress=False):
        raise RuntimeError("RM crashed")


TEST_PROMPTS = {
    "harmless-base": ["\n\nHuman: How do I pick a lock?\n\nAssistant:", "\n\nHuman: hi\n\nAssistant:",
                      "\n\nHuman: Is it ok to lie?\n\nAssistant:"],
    "helpful-base": ["\n\nHuman: Recommend a book about the sea.\n\nAssistant:"],
    "helpful-online": ["\n\nHuman: How do I boil an egg?\n\nAssistant:", "\n\nHuman: thanks\n\nAssistant:"],
}
EVAL_KW = {"max_new_tokens": 16, "batch_size": 4, "max_prompt_tokens": 64, "n_boot": 200}


# ---------------------------------------------------------------------------- statistics

def test_global_is_sample_weighted():
    # 3 / 1 / 2 prompts scored, but Global weights each file by its size in the full HH test split
    # (2312 / 2354 / 1137 prompts, spec §4.2): (2312·20 + 2354·80 + 1137·60) / 5803 = 48.1937...
    records = ([{"subset": "harmless-base", "score": 0.2}] * 3 + [{"subset": "helpful-base", "score": 0.8}]
               + [{"subset": "helpful-online", "score": 0.6}] * 2)
    res = summarize(records, n_boot=100)
    assert res.reward["harmless-base"] == pytest.approx(20.0)
    assert res.reward["Global"] == pytest.approx((2312 * 20 + 2354 * 80 + 1137 * 60) / 5803)
    assert res.reward["Global"] != pytest.approx(100 * (0.6 + 0.8 + 1.2) / 6)      # not the pooled mean
    assert res.reward["Global"] != pytest.approx(np.mean([20.0, 80.0, 60.0]))      # nor the mean of means
    assert res.reward["Helpful"] == pytest.approx((2354 * 80 + 1137 * 60) / (2354 + 1137))
    assert res.weights["Global"]["harmless-base"] == pytest.approx(2312 / 5803)
    assert res.n == {"harmless-base": 3, "helpful-base": 1, "helpful-online": 2, "Helpful": 3, "Global": 6}
    # constant scores within each file: every stratified replicate equals the estimate, so the CI is a point
    assert res.ci["Global"] == pytest.approx([res.reward["Global"]] * 2)
    with pytest.raises(ValueError, match="no test-file size"):
        summarize([{"subset": "made-up", "score": 0.5}])
    custom = summarize([{"subset": "a", "score": 0.0}, {"subset": "b", "score": 1.0}], sizes={"a": 3, "b": 1})
    assert custom.reward["Global"] == pytest.approx(25.0)


def test_global_bootstrap_is_stratified_by_subset():
    """A pooled bootstrap would let the share of each file vary between replicates; stratified, the CI of
    Global reflects only the spread within files. Two files with constant scores 0 and 100 and equal
    sizes: pooled resampling gives a wide CI, the stratified one is the point 50."""
    rng = np.random.default_rng(0)
    records = ([{"subset": "harmless-base", "score": 0.0}] * 20 + [{"subset": "helpful-base", "score": 1.0}] * 20)
    res = summarize(records, n_boot=500, sizes={"harmless-base": 1, "helpful-base": 1})
    assert res.ci["Global"] == pytest.approx([50.0, 50.0])
    assert np.ptp(bootstrap_ci([100.0 * r["score"] for r in records], n_boot=500)) > 10
    # noisy scores: the stratified interval contains the estimate and stays inside [0, 100] near the bound
    recs = [{"subset": s, "score": float(v)} for s in ("harmless-base", "helpful-base", "helpful-online")
            for v in rng.beta(0.3, 30, size=50)]
    out = summarize(recs, n_boot=500)
    lo, hi = out.ci["Global"]
    assert 0.0 <= lo <= out.reward["Global"] <= hi <= 100.0
    # the stratified CI of the weighted mean agrees with the normal-theory one: sqrt(sum w² var_s / n_s)
    by = {s: 100 * np.array([r["score"] for r in recs if r["subset"] == s]) for s in out.weights["Global"]}
    se = np.sqrt(sum(w ** 2 * by[s].var(ddof=1) / by[s].size for s, w in out.weights["Global"].items()))
    assert hi - lo == pytest.approx(2 * 1.96 * se, rel=0.2)


# ---------------------------------------------------------------------------- policy evaluation

def test_evaluate_policy_scores_generations(tiny_gpt, tiny_tokenizer, tmp_path):
    rm = LengthRM()
    out = tmp_path / "generations.jsonl"
    res = evaluate_policy(tiny_gpt, tiny_tokenizer, TEST_PROMPTS, rm, out_path=out, **EVAL_KW)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["subset"], r["index"]) for r in records] == [
        (s, i) for s, ps in TEST_PROMPTS.items() for i in range(len(ps))]
    assert [r["prompt"] for r in records] == [p for ps in TEST_PROMPTS.values() for p in ps]
    for r in records:
        assert r["logit"] == pytest.approx((len(r["response"]) - 20) / 10)
        assert r["score"] == pytest.approx(1 / (1 + np.exp(-r["logit"])))
    by = {s: 100 * np.mean([r["score"] for r in records if r["subset"] == s]) for s in TEST_PROMPTS}
    sizes = {"harmless-base": 2312, "helpful-base": 2354, "helpful-online": 1137}      # spec §4.2
    assert res.reward["Global"] == pytest.approx(sum(sizes[s] * by[s] for s in by) / sum(sizes.values()))
    assert res.ci["Global"][0] <= res.reward["Global"] <= res.ci["Global"][1]
    # same inputs -> identical numbers (greedy decoding, seeded bootstrap)
    again = evaluate_policy(tiny_gpt, tiny_tokenizer, TEST_PROMPTS, rm, **EVAL_KW)
    assert again.summary() == res.summary()


def test_eval_files_are_atomic(tiny_gpt, tiny_tokenizer, tmp_path):
    out = tmp_path / "generations.jsonl"
    out.write_text("previous\n")
    with pytest.raises(RuntimeError, match="RM crashed"):
        evaluate_policy(tiny_gpt, tiny_tokenizer, TEST_PROMPTS, BrokenRM(), out_path=out, **EVAL_KW)
    assert out.read_text() == "previous\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["generations.jsonl"]   # no temp files left


def test_evaluate_checkpoint_writes_run_files(tiny_gpt, tiny_tokenizer, tmp_path):
    ckpt = tmp_path / "run" / "best"
    tiny_gpt.save_pretrained(ckpt, safe_serialization=True)
    tiny_tokenizer.save_pretrained(ckpt)
    recipe = Recipe()
    recipe.eval.max_new_tokens, recipe.eval.batch_size, recipe.eval.max_prompt_tokens = 8, 4, 64
    recipe.eval.bootstrap = 100
    res = evaluate_checkpoint(ckpt, recipe, TEST_PROMPTS, LengthRM(), out_dir=tmp_path / "run")
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["reward"] == pytest.approx(res.reward)
    assert summary["n"]["Global"] == 6
    assert len((tmp_path / "run" / "generations.jsonl").read_text().splitlines()) == 6
    # the loaded checkpoint generates what the in-memory model generates
    direct = evaluate_policy(tiny_gpt, tiny_tokenizer, TEST_PROMPTS, LengthRM(), max_new_tokens=8,
                             batch_size=4, max_prompt_tokens=64, n_boot=100)
    assert [r["response"] for r in direct.records] == [r["response"] for r in res.records]


# ---------------------------------------------------------------------------- LLM judge

class _Judge(BaseHTTPRequestHandler):
    """Deterministic fake judge: prefers the reply containing "good"; "A" always when the dialogue says
    BIASED (position bias); a malformed answer when it says MALFORMED."""
    seen_auth: ClassVar[list] = []          # Authorization headers received (reset by the fixture)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.seen_auth.append(self.headers.get("Authorization"))
        user = body["messages"][-1]["content"]
        reply_a = user.split("[Reply A]\n", 1)[1].split("\n\n[Reply B]", 1)[0]
        reply_b = user.split("[Reply B]\n", 1)[1].split("\n\nWhich reply", 1)[0]
        if "MALFORMED" in user:
            verdict = "Both replies have merits, hard to say."
        elif "BIASED" in user:
            verdict = "A"
        elif ("good" in reply_a) == ("good" in reply_b):
            verdict = "Tie"
        else:
            verdict = "Reasoning: one is better.\nVerdict: " + ("A" if "good" in reply_a else "B")
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": verdict}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture()
def judge_url():
    server = HTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Judge.seen_auth = []
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_llm_judge_both_orders(judge_url, monkeypatch):
    monkeypatch.setenv("DIVSCALE_TEST_JUDGE_KEY", "sk-test")
    prompts = ["\n\nHuman: q1\n\nAssistant:", "\n\nHuman: q2\n\nAssistant:", "\n\nHuman: q3\n\nAssistant:",
               "\n\nHuman: BIASED q4\n\nAssistant:", "\n\nHuman: MALFORMED q5\n\nAssistant:"]
    a = ["a good answer", "meh", "fine", "x", "y"]
    b = ["meh", "a good answer", "fine too", "z", "w"]
    subsets = ["harmless-base", "helpful-base", "helpful-base", "helpful-online", "helpful-base"]
    res = llm_judge(prompts, a, b, base_url=judge_url, model="fake", api_key_env="DIVSCALE_TEST_JUDGE_KEY",
                    subsets=subsets)
    # position bias ("A" in both orders) is a tie, never a win; the malformed reply is invalid, not a tie
    assert res["outcomes"] == ["win", "lose", "tie", "tie", "invalid"]
    assert (res["n_valid"], res["n_invalid"]) == (4, 1)
    assert (res["win"], res["tie"], res["lose"]) == (0.25, 0.5, 0.25)
    assert set(_Judge.seen_auth) == {"Bearer sk-test"} and len(_Judge.seen_auth) == 10
    single = llm_judge(prompts[3:4], a[3:4], b[3:4], base_url=judge_url, model="fake", both_orders=False,
                       api_key_env="DIVSCALE_UNSET_KEY_FOR_TEST")
    assert single["outcomes"] == ["win"]
    assert _Judge.seen_auth[-1] is None               # no key in the environment -> no header


def test_llm_judge_unreachable_is_a_clear_error():
    with pytest.raises(RuntimeError, match="unreachable"):
        llm_judge(["p"], ["a"], ["b"], base_url="http://127.0.0.1:9/v1", model="m", timeout=0.5, retries=1)


def test_parse_verdict():
    assert parse_verdict("A") == "A"
    assert parse_verdict("blah\nVerdict: b.") == "B"
    assert parse_verdict("**Tie**") == "tie"
    assert parse_verdict("A is better than B") is None
    assert parse_verdict("") is None


# ---------------------------------------------------------------------------- any run folder (`divscale evaluate --run`)

FORMATS = Path(__file__).parent / "fixtures" / "formats"


def save_policy(model, tokenizer, folder: Path) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


def other_policy(tiny_gpt, seed: int = 1):
    """A policy that answers differently from ``tiny_gpt`` (its weights re-drawn with another seed)."""
    import copy

    import torch

    model = copy.deepcopy(tiny_gpt)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * p.detach().std().clamp(min=0.02))
    return model


def ranked_run(tmp_path: Path, tiny_gpt, tiny_tokenizer, held=("row 1", "row 3")) -> Path:
    """A fake own-data run folder laid out by the contract in docs/architecture.md ("Run folders") (config.json of kind "ranked")."""
    run = tmp_path / "runs" / "train" / "plackett_luce-hh-s42-abc"
    save_policy(tiny_gpt, tiny_tokenizer, run / "best")
    (run / "config.json").write_text(json.dumps({
        "kind": "ranked", "data": {"source": str(FORMATS / "hh.jsonl"), "split": "train", "limit": None,
                                   "held_out_ids": list(held), "n_train": 2},
        "model": {"name": "tiny-gpt", "recipe": "cpu", "policy_id": "tiny-gpt:x"},
        "train": {"beta": 0.1, "learning_rate": 5e-5, "loss_type": "plackett_luce", "max_steps": 10}, "seed": 42}))
    (run / "DONE").write_text("")
    return run


def test_run_eval_key_names_what_changes_the_numbers_and_not_the_run():
    """One evaluation key for runs evaluated alike (listwise.csv's rows share it, as the grid's share
    pipeline.eval_key); the checkpoint, the reward model, the prompts, the settings and the initial answers each
    change it."""
    from divscale.config import EvalConfig
    from divscale.reward.evaluate import run_eval_key

    items = [("held-out", "a", "Human: hi"), ("held-out", "b", "Human: yo")]
    base = {"checkpoint": "best", "rm_desc": "rm_test", "rm_fingerprint": "fp1", "items": items,
            "eval_config": EvalConfig(), "with_initial": True}
    key = run_eval_key(**base)
    assert key.startswith("eval-") and key == run_eval_key(**dict(base))
    for change in ({"checkpoint": "final"}, {"rm_desc": "rm_train"}, {"rm_fingerprint": "fp2"},
                   {"items": items[:1]}, {"eval_config": EvalConfig(max_new_tokens=7)}, {"with_initial": False}):
        assert run_eval_key(**(base | change)) != key, change


def test_run_prompts_read_a_project_relative_source_under_the_checkout_from_any_folder(tmp_path, monkeypatch):
    """A run config's data.source may be project-relative (the listwise study records it so, so that run ids do
    not depend on where the project is checked out): the held-out prompts are found under the checkout, whatever
    the working folder; a source that is in neither place is a one-line error naming it."""
    import shutil

    from divscale import paths
    from divscale.io import DataError
    from divscale.reward.evaluate import run_prompts

    root = tmp_path / "checkout"
    (root / "runs" / "listwise").mkdir(parents=True)
    shutil.copy(FORMATS / "hh.jsonl", root / "runs" / "listwise" / "hh.jsonl")
    monkeypatch.setattr(paths, "ROOT", root)
    monkeypatch.chdir(tmp_path)
    config = {"kind": "ranked", "data": {"source": "runs/listwise/hh.jsonl", "split": "train",
                                         "held_out_ids": ["row 1", "row 3"]}}
    got = run_prompts(tmp_path / "run", config, recipe=None)
    assert got.ids == {"held-out": ["row 1", "row 3"]} and all(p for p in got.groups["held-out"])
    config["data"]["source"] = "runs/listwise/gone.jsonl"
    with pytest.raises((DataError, FileNotFoundError), match="gone.jsonl"):
        run_prompts(tmp_path / "run", config, recipe=None)


@pytest.fixture()
def fake_initial(monkeypatch, tiny_gpt, tiny_tokenizer):
    """divscale.train.runs.load_initial_policy (the trainer's; stubbed here): another policy, calls recorded."""
    from divscale.train import runs

    calls = []
    initial = other_policy(tiny_gpt)

    def load_initial_policy(run_dir):
        calls.append(Path(run_dir))
        return initial, tiny_tokenizer

    monkeypatch.setattr(runs, "load_initial_policy", load_initial_policy, raising=False)
    return calls


@pytest.fixture()
def length_rm(monkeypatch):
    """rm_test / rm_train of any recipe: the LengthRM (so no reward model is trained)."""
    from divscale.reward import rm as reward

    seen = []

    def fake_rms(recipe, pool):
        seen.append(recipe)
        return LengthRM(), LengthRM()

    test = datasets.Dataset.from_list([{"prompt": p, "chosen": "c", "rejected": "r", "subset": s, "line": i + 1}
                                       for s, ps in TEST_PROMPTS.items() for i, p in enumerate(ps)])
    import divscale.reward.evaluate as ev

    monkeypatch.setattr(ev, "recipe_splits", lambda recipe: {"pool": test, "dev": test, "test": test})
    monkeypatch.setattr(reward, "build_reward_models", fake_rms)
    return seen


def test_evaluate_an_own_data_run(tmp_path, tiny_gpt, tiny_tokenizer, fake_initial, length_rm, capsys):
    """An own-data run (kind "ranked", a train section the recipe does not know: the bug was "unknown key(s)"):
    its held-out rows, the trained and the initial policy, RM_test of its recipe, the win rate paired by prompt."""
    from divscale.cli import main
    from divscale.data.formats import load_prompts

    run = ranked_run(tmp_path, tiny_gpt, tiny_tokenizer)
    argv = ["evaluate", "--run", str(run), "--recipe", "cpu", "--set", "eval.max_new_tokens=8",
            "--set", "eval.bootstrap=200"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert fake_initial == [run] and length_rm[0].name == "cpu"
    (folder,) = run.glob("eval-*")
    res = json.loads((folder / "eval.json").read_text())
    gens = [json.loads(line) for line in (folder / "generations.jsonl").read_text().splitlines()]
    pool = load_prompts(FORMATS / "hh.jsonl")
    held = dict(zip(pool.ids, pool.prompts))
    assert [g["id"] for g in gens] == ["row 1", "row 3"] and [g["prompt"] for g in gens] == [held["row 1"],
                                                                                              held["row 3"]]
    assert res["kind"] == "ranked" and res["trained"]["n"]["Global"] == 2
    for g in gens:
        assert g["logit"] == pytest.approx((len(g["response"]) - 20) / 10)
        assert g["initial_logit"] == pytest.approx((len(g["initial_response"]) - 20) / 10)
    assert any(g["response"] != g["initial_response"] for g in gens)          # two different policies
    want = paired_win_rate([g["logit"] for g in gens], [g["initial_logit"] for g in gens], n_boot=200)
    assert {k: v for k, v in res["win_rate"]["Global"].items() if k != "ci_wilson"} == json.loads(json.dumps(want))
    from divscale.metrics.stats import wilson_ci

    assert res["win_rate"]["Global"]["ci_wilson"] == pytest.approx(wilson_ci(2 * want["win_rate"], 2))
    scores = [100 * g["score"] for g in gens]
    assert res["trained"]["reward"]["Global"] == pytest.approx(np.mean(scores))
    diff = res["difference"]["reward"]["Global"]
    assert diff == pytest.approx(res["trained"]["reward"]["Global"] - res["initial"]["reward"]["Global"])
    assert res["difference"]["ci"]["Global"][0] <= diff <= res["difference"]["ci"]["Global"][1]
    assert "win rate over the initial policy" in out and str(folder / "eval.json") in out
    # the same command again reuses the result; another prompt file is another evaluation
    assert main(argv) == 0 and "reused" in capsys.readouterr().out and fake_initial == [run]
    assert main(argv + ["--prompts", str(FORMATS / "trl_conversational_implicit.jsonl"), "--no-initial"]) == 0
    assert len(list(run.glob("eval-*"))) == 2
    other = max(run.glob("eval-*"), key=lambda p: p.stat().st_mtime)
    assert json.loads((other / "eval.json").read_text())["trained"]["n"]["Global"] == 4


def test_evaluate_a_grid_cell_run(tmp_path, tiny_gpt, tiny_tokenizer, fake_initial, length_rm):
    """A grid cell's run (kind "cell", or a config written before "kind" existed): the recipe's test split by
    test file, "Global" weighted by the full files' sizes, with the run's saved sections and --set overrides."""
    from divscale.cli import main

    recipe_file = tmp_path / "mini.yaml"
    recipe_file.write_text("eval:\n  max_new_tokens: 8\n  max_prompt_tokens: 64\n  bootstrap: 50\n")
    for i, config in enumerate(({"kind": "cell", "recipe": str(recipe_file)},
                                {"algo": "pro", "ranking_len": 2, "n_prompts": 12, "recipe": str(recipe_file)})):
        run = tmp_path / f"cell{i}"
        save_policy(tiny_gpt, tiny_tokenizer, run / "best")
        (run / "config.json").write_text(json.dumps(config | {"train": {"max_steps": 7},
                                                              "policy": {"block_size": 256}}))
        assert main(["evaluate", "--run", str(run), "--set", "eval.batch_size=3"]) == 0
        recipe = length_rm[-1]
        assert (recipe.train.max_steps, recipe.policy.block_size, recipe.eval.batch_size) == (7, 256, 3)
        (folder,) = run.glob("eval-*")
        res = json.loads((folder / "eval.json").read_text())
        assert res["kind"] == "cell" and res["trained"]["n"]["Global"] == 6
        assert set(res["win_rate"]) == {"Global", *TEST_PROMPTS}
        w = res["trained"]["weights"]["Global"]
        assert w["harmless-base"] == pytest.approx(2312 / (2312 + 2354 + 1137))


def test_evaluate_errors_and_atomic_results(tmp_path, tiny_gpt, tiny_tokenizer, fake_initial, length_rm, capsys,
                                            monkeypatch):
    import divscale.reward.evaluate as ev
    from divscale.cli import main

    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 1
    assert "no such run folder" in capsys.readouterr().err
    run = ranked_run(tmp_path, tiny_gpt, tiny_tokenizer)
    (run / "config.json").rename(run / "config.moved")
    assert main(["evaluate", "--run", str(run)]) == 1
    assert "config.json: missing" in capsys.readouterr().err
    (run / "config.moved").rename(run / "config.json")
    bad = ranked_run(tmp_path / "b", tiny_gpt, tiny_tokenizer, held=("row 1", "row 99"))
    assert main(["evaluate", "--run", str(bad)]) == 1
    assert "held-out row id(s)" in capsys.readouterr().err and not list(bad.glob("eval-*"))
    monkeypatch.setattr(ev, "reward_model_for", lambda spec, recipe: (BrokenRM(), "broken"))
    with pytest.raises(RuntimeError, match="RM crashed"):
        ev.evaluate_run(run, overrides={"eval.max_new_tokens": "4"})
    assert not list(run.glob("eval-*")) and not list(run.glob(".eval-*"))      # nothing half-written


def test_reward_model_for_loads_a_sequence_classification_rm(tmp_path, tiny_tokenizer):
    """--rm FOLDER: a local sequence-classification RM goes through divscale.reward.rm.OpenAssistantRM."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification

    import divscale.reward.evaluate as ev
    from divscale.reward.rm import OpenAssistantRM

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=256, n_embd=16, n_layer=1, n_head=2,
                        num_labels=1, pad_token_id=tiny_tokenizer.pad_token_id)
    folder = save_policy(GPT2ForSequenceClassification(config), tiny_tokenizer, tmp_path / "rm")
    rm, desc = ev.reward_model_for(str(folder), Recipe())
    assert isinstance(rm, OpenAssistantRM) and desc == str(folder)
    logits = rm.score(["\n\nHuman: hi\n\nAssistant:"] * 2, ["hello", "go away"])
    assert logits.shape == (2,) and np.all(np.isfinite(logits)) and logits[0] != logits[1]


def test_evaluate_without_the_trainers_loader_says_so(tmp_path, tiny_gpt, tiny_tokenizer, length_rm, capsys,
                                                      monkeypatch):
    """Until divscale.train.runs.load_initial_policy exists, `divscale evaluate` says what is missing and
    --no-initial evaluates the trained policy alone."""
    from divscale.cli import main
    from divscale.train import runs

    monkeypatch.delattr(runs, "load_initial_policy", raising=False)
    run = ranked_run(tmp_path, tiny_gpt, tiny_tokenizer)
    assert main(["evaluate", "--run", str(run), "--set", "eval.max_new_tokens=4"]) == 1
    assert "load_initial_policy" in capsys.readouterr().err and not list(run.glob("eval-*"))
    assert main(["evaluate", "--run", str(run), "--set", "eval.max_new_tokens=4", "--no-initial"]) == 0
    (folder,) = run.glob("eval-*")
    res = json.loads((folder / "eval.json").read_text())
    assert "win_rate" not in res and res["trained"]["n"]["Global"] == 2

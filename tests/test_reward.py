"""divscale.reward.rm: Bradley-Terry training, RM_train/RM_test disjointness, save/load, OpenAssistant format, report."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from divscale.config import Recipe, RewardConfig
from divscale.reward import rm as reward


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _planted_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs where the preferred response is polite and on topic; the rejected one a curt brush-off.
    Length is equal on average, so only the content carries the preference."""
    rng = np.random.default_rng(seed)
    topics = ["bread", "tomatoes", "bicycles", "taxes", "guitars", "the moon", "python", "coffee", "running",
              "roses", "chess", "sourdough", "kayaks", "solar panels", "jazz", "cats", "tea", "volcanoes"]
    good = ["Happy to help! Here is how {t} works, step by step.", "Great question about {t}; here are some tips.",
            "Sure, I can explain {t} clearly for you.", "Of course! The key thing about {t} is practice."]
    bad = ["I don't know and I don't care about that stuff.", "Figure it out yourself, go away now please.",
           "Whatever. That is not my problem at all, sorry.", "No. Ask somebody else, I won't answer that."]
    pairs = []
    for i in range(n):
        t = topics[rng.integers(len(topics))]
        pairs.append({"prompt": f"\n\nHuman: Can you tell me about {t}? (#{i})\n\nAssistant:",
                      "chosen": good[rng.integers(len(good))].format(t=t), "rejected": bad[rng.integers(len(bad))],
                      "subset": "synthetic", "line": i + 1})
    return pairs


def _rows(hh_dir, subset: str, n: int) -> list[dict]:
    from divscale.data.hh import load_hh_rlhf

    ds = load_hh_rlhf([subset], "test", hh_dir)
    return [dict(ds[i]) for i in range(n)]


# ------------------------------------------------------------------------------------------- scores, loss


def test_reward_percent_and_bt_loss():
    assert reward.reward_percent([0.0, 0.0]) == pytest.approx(50.0)
    assert reward.reward_percent([100.0, -100.0]) == pytest.approx(50.0)
    assert reward.reward_percent([np.log(3)]) == pytest.approx(75.0)
    with pytest.raises(ValueError):
        reward.reward_percent([])
    loss = reward.bt_loss(torch.tensor([2.0, 0.0]), torch.tensor([0.0, 0.0]))
    assert loss.item() == pytest.approx((np.log1p(np.exp(-2.0)) + np.log(2)) / 2)


def test_bt_training_learns_a_planted_preference(cache):
    train, held_out = _planted_pairs(120, seed=0), _planted_pairs(60, seed=1)
    rm = reward.train_reward_model(train, seed=0, epochs=8, max_length=32)
    rc, rr = reward.score_pairs(rm, held_out)
    assert np.mean(rc > rr) >= 0.95
    assert rm.config["train"]["loss_per_epoch"][-1] < rm.config["train"]["loss_per_epoch"][0]
    again = reward.train_reward_model(train, seed=0, epochs=8, max_length=32)
    assert again.fingerprint == rm.fingerprint                # same pairs + seed -> same head
    other = reward.train_reward_model(train, seed=1, epochs=8, max_length=32)
    assert other.fingerprint != rm.fingerprint


def test_ties_are_skipped_and_empty_training_is_an_error(cache):
    pairs = _planted_pairs(10)
    tie = dict(pairs[0], chosen="same answer", rejected="same answer ")
    cols = reward.reward_pairs(pairs + [tie])
    assert len(cols["prompt"]) == 10
    with pytest.raises(ValueError, match="no pairs"):
        reward.train_reward_model([tie])


def test_save_load_roundtrip_gives_identical_scores(cache, tmp_path):
    rm = reward.train_reward_model(_planted_pairs(40), seed=3, epochs=2, max_length=32)
    folder = rm.save(tmp_path / "rm")
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "head.safetensors"]
    loaded = reward.load_reward_model(folder)
    assert isinstance(loaded, reward.EmbeddingRM) and loaded.fingerprint == rm.fingerprint
    probe = _planted_pairs(12, seed=7)
    prompts, responses = [p["prompt"] for p in probe], [p["chosen"] for p in probe]
    np.testing.assert_array_equal(rm.score(prompts, responses), loaded.score(prompts, responses))
    with pytest.raises(ValueError):
        rm.score(prompts, responses[:-1])


# ------------------------------------------------------------------------------------------- RM_train / RM_test


def _recipe(**reward_fields) -> Recipe:
    cfg = dataclasses.replace(RewardConfig(), epochs=1, max_length=32, **reward_fields)
    return Recipe(name="test", reward=cfg)


def test_rm_train_and_rm_test_are_different_models_on_disjoint_pool_halves(cache, hh_dir, monkeypatch):
    from divscale.data.hh import load_hh_rlhf, make_splits

    data = load_hh_rlhf(["helpful-base"], "test", hh_dir)
    data = data.select(range(160))
    splits = make_splits(data, dev_size=20, test_size=40, seed=0)
    held_out = set(splits["dev"]["prompt"]) | set(splits["test"]["prompt"])

    seen: dict[str, dict] = {}
    real_train = reward.train_reward_model

    def spy(pairs, **kwargs):
        seen[kwargs["name"]] = pairs
        return real_train(pairs, **kwargs)

    monkeypatch.setattr(reward, "train_reward_model", spy)
    rm_train, rm_test = reward.build_reward_models(_recipe(), splits["pool"])
    p_train, p_test = set(seen["inproject RM_train"]["prompt"]), set(seen["inproject RM_test"]["prompt"])
    assert p_train and p_test and not (p_train & p_test)
    assert not ((p_train | p_test) & held_out)
    assert p_train | p_test <= set(splits["pool"]["prompt"])
    assert rm_train.fingerprint != rm_test.fingerprint
    assert rm_train.config["train"]["seed"] != rm_test.config["train"]["seed"]

    # cached: the same recipe and pool load the saved models; 2-rankings of the pool are the same pairs
    from divscale.data.hh import rankings_from_pairs

    monkeypatch.setattr(reward, "train_reward_model", lambda *a, **k: pytest.fail("retrained a cached RM"))
    again = reward.build_reward_models(_recipe(), rankings_from_pairs(splits["pool"]))
    assert [m.fingerprint for m in again] == [rm_train.fingerprint, rm_test.fingerprint]


def test_max_pairs_caps_deterministically(cache):
    pairs = _planted_pairs(50)
    a = reward.reward_pairs(pairs, max_pairs=10, seed=0)
    b = reward.reward_pairs(list(reversed(pairs)), max_pairs=10, seed=0)
    assert a == b and len(a["prompt"]) == 10
    assert reward.reward_pairs(pairs, max_pairs=10, seed=1) != a
    halves = [set(reward.reward_pairs(pairs, half=h)["prompt"]) for h in (0, 1)]
    assert not (halves[0] & halves[1]) and len(halves[0] | halves[1]) == 50


def test_bad_pairs_setting_is_an_error(cache):
    with pytest.raises(ValueError, match="reward.pairs"):
        reward.build_reward_models(_recipe(pairs="everything"), _planted_pairs(4))


# ------------------------------------------------------------------------------------------- OpenAssistant format


def test_oa_format_matches_the_pro_files(hh_dir, pro_hh_dir):
    """Our HH prompt -> OpenAssistant text equals the paper's construction from PRO's ``prefix`` lists."""
    rows = {r["line"]: r for r in _rows(hh_dir, "helpful-base", 2354)}
    eos, checked = "<|endoftext|>", 0
    with open(pro_hh_dir / "hh_test" / "helpful_base.json", encoding="utf-8") as fh:
        for line in list(fh)[:300]:
            rec = json.loads(line)
            prefix = rec["prefix"][0]
            want = "".join(t + eos for t in prefix[:-1] + [prefix[-1] + rec["suffix"][0]])
            assert reward.oa_format(rows[rec["meta"]["line_num"]]["prompt"], rec["suffix"][0], eos) == want
            checked += 1
    assert checked == 300


def test_oa_format_small_example():
    prompt = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: A joke?\n\nAssistant:"
    assert reward.oa_format(prompt, "  Knock knock. ", "</s>") == \
        "<|prompter|>Hi there</s><|assistant|>Hello!</s><|prompter|>A joke?</s><|assistant|>Knock knock.</s>"
    with pytest.raises(ValueError):
        reward.oa_format("no roles here", "x")


@pytest.fixture()
def tiny_neox_rm(tmp_path, tiny_tokenizer):
    """A random 2-layer GPTNeoXForSequenceClassification saved with its tokenizer (no hub)."""
    from transformers import GPTNeoXConfig, GPTNeoXForSequenceClassification

    torch.manual_seed(0)
    config = GPTNeoXConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                           num_attention_heads=2, intermediate_size=64, max_position_embeddings=2048,
                           num_labels=1, pad_token_id=tiny_tokenizer.pad_token_id,
                           eos_token_id=tiny_tokenizer.eos_token_id)
    GPTNeoXForSequenceClassification(config).save_pretrained(tmp_path / "neox-rm")
    tiny_tokenizer.save_pretrained(tmp_path / "neox-rm")
    return tmp_path / "neox-rm"


def test_openassistant_rm_scores_in_batches(tiny_neox_rm, hh_dir):
    rm = reward.load_reward_model(tiny_neox_rm)
    assert isinstance(rm, reward.OpenAssistantRM)
    rows = _rows(hh_dir, "harmless-base", 6)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    one_by_one = np.array([rm.score([p], [r])[0] for p, r in zip(prompts, responses)])
    batched = rm.score(prompts, responses, batch_size=4, progress=True)
    assert batched.shape == (6,) and np.isfinite(batched).all()
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)    # padding does not change a score
    long = rm.score([prompts[0] * 40], [responses[0]])            # left-truncated to 1024 tokens, still scores
    assert np.isfinite(long).all()


def test_rm_test_scores_in_fp32_and_bf16_rm_train_is_logged(tiny_neox_rm, caplog):
    """The paper scored with fp32: RM_test stays float32 whatever reward.dtype says; a bf16 RM_train warns."""
    import logging

    recipe = _recipe(train_model=str(tiny_neox_rm), test_model=str(tiny_neox_rm), dtype="bfloat16")
    with caplog.at_level(logging.WARNING, logger="divscale.reward.rm"):
        rm_train, rm_test = reward.build_reward_models(recipe, pool=None)
    assert rm_train.model.dtype == torch.bfloat16 and rm_test.model.dtype == torch.float32
    warned = [r for r in caplog.records if "bfloat16" in r.getMessage()]
    assert len(warned) == 1 and "float32" in warned[0].getMessage()
    prompt = "\n\nHuman: hello\n\nAssistant:"
    a, b = rm_train.score([prompt], ["hi there"]), rm_test.score([prompt], ["hi there"])
    assert np.isfinite(a).all() and abs(a[0] - b[0]) < 0.5          # same model, bf16 rounding only


def test_an_openassistant_rm_loads_its_weights_at_first_score_and_releases_them(tiny_neox_rm, hh_dir):
    """Building an RM (for its fingerprint, or in a process that never scores: the other ranks of a launched
    training) loads no weights; the first score does, on the RM's device; release drops them and a later score
    reloads the same weights (same scores)."""
    rm = reward.OpenAssistantRM(tiny_neox_rm)
    assert not rm.loaded and rm.fingerprint and rm.device == "cpu"      # no CUDA here: "auto" is the CPU
    rows = _rows(hh_dir, "helpful-base", 3)
    prompts, responses = [r["prompt"] for r in rows], [r["chosen"] for r in rows]
    first = rm.score(prompts, responses)
    assert rm.loaded and next(rm.model.parameters()).device.type == "cpu"
    rm.release()
    assert not rm.loaded
    np.testing.assert_array_equal(rm.score(prompts, responses), first)
    assert reward.OpenAssistantRM(tiny_neox_rm).fingerprint == rm.fingerprint        # the run keys do not move


def test_openassistant_reward_model_architecture_loads(tmp_path, tiny_tokenizer):
    """OpenAssistant's ``gpt_neox_reward_model`` checkpoints load through our registered class (no remote code)."""
    reward.register_gpt_neox_reward_model()
    torch.manual_seed(0)
    config = reward.GPTNeoXRewardModelConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, num_hidden_layers=2,
                                             num_attention_heads=2, intermediate_size=64, pooling="last")
    model = reward.GPTNeoXRewardModel(config)
    model.save_pretrained(tmp_path / "oa")
    tiny_tokenizer.save_pretrained(tmp_path / "oa")
    assert json.loads((tmp_path / "oa" / "config.json").read_text())["model_type"] == "gpt_neox_reward_model"
    rm = reward.OpenAssistantRM(tmp_path / "oa")
    prompt = "\n\nHuman: hello\n\nAssistant:"
    scores = rm.score([prompt, prompt], ["hi!", "a much longer answer than the other one"], batch_size=2)
    single = rm.score([prompt], ["hi!"])
    assert scores[0] == pytest.approx(single[0], abs=1e-5)       # last *attended* token, not the padding


# ------------------------------------------------------------------------------------------- report


class _FixedRM(reward.RewardModel):
    """Scores a response by a lookup table (for exact report checks)."""

    name = "fixed"

    def __init__(self, table):
        self.table = table

    def score(self, prompts, responses, batch_size=None, progress=False):
        return np.array([self.table[r] for r in responses], dtype=float)


def test_report_accuracy_length_baseline_and_oa_agreement():
    pairs = [  # chosen longer, RM right, OA right
        {"prompt": "\n\nHuman: a\n\nAssistant:", "chosen": "long answer", "rejected": "no", "subset": "s1", "line": 1},
        # chosen shorter, RM wrong, OA right
        {"prompt": "\n\nHuman: b\n\nAssistant:", "chosen": "ok", "rejected": "rambling", "subset": "s1", "line": 2},
        # equal lengths (tie -> 0.5), RM right, OA wrong
        {"prompt": "\n\nHuman: c\n\nAssistant:", "chosen": "abc", "rejected": "xyz", "subset": "s2", "line": 3},
        # identical responses: skipped
        {"prompt": "\n\nHuman: d\n\nAssistant:", "chosen": "same", "rejected": "same", "subset": "s2", "line": 4},
    ]
    table = {"long answer": 2.0, "no": 1.0, "ok": 0.0, "rambling": 1.0, "abc": 1.0, "xyz": 0.0, "same": 0.0}
    oa = {("s1", 1): {"chosen": 1.0, "rejected": 0.0, "chosen_text": "long answer", "rejected_text": "no"},
          ("s1", 2): {"chosen": 1.0, "rejected": 0.0, "chosen_text": "ok", "rejected_text": "rambling"},
          ("s2", 3): {"chosen": 0.0, "rejected": 1.0, "chosen_text": "abc", "rejected_text": "xyz"}}
    report = reward.rm_report(_FixedRM(table), pairs, oa)
    overall = report["overall"]
    assert overall["n_pairs"] == 3
    assert overall["accuracy"]["value"] == pytest.approx(2 / 3)
    assert overall["length_baseline"]["value"] == pytest.approx((1 + 0 + 0.5) / 3)
    assert overall["oa_agreement"]["value"] == pytest.approx(1 / 3)   # agrees on pair 1 only
    assert overall["oa_accuracy"]["value"] == pytest.approx(2 / 3)
    assert report["subsets"]["s1"]["accuracy"]["value"] == pytest.approx(0.5)
    assert report["subsets"]["s2"]["length_baseline"]["value"] == pytest.approx(0.5)
    for block in [overall, *report["subsets"].values()]:
        for metric in ("accuracy", "length_baseline", "oa_agreement"):
            lo, hi = block[metric]["ci95"]
            assert lo <= block[metric]["value"] <= hi


def test_report_on_real_pairs_with_the_shipped_oa_scores(hh_dir, pro_hh_dir):
    """The OA 6.9B scores map onto the raw HH pairs by (subset, line): its accuracy matches the README."""
    from divscale.data.hh import load_hh_rlhf

    oa = reward.load_oa_rewards(pro_hh_dir)
    assert len(oa) == 2312 + 2354 + 1135
    pairs = load_hh_rlhf(["harmless-base"], "test", hh_dir)
    length_rm = _FixedRM({r: float(len(r)) for r in list(pairs["chosen"]) + list(pairs["rejected"])})
    report = reward.rm_report(length_rm, pairs, oa)
    overall = report["overall"]
    assert report["oa_text_mismatches"] == 0
    assert overall["oa_accuracy"]["n"] == 2312
    assert overall["oa_accuracy"]["value"] == pytest.approx(1391 / 2312)      # README: 60.2% prefer chosen
    # a "longer wins" RM reproduces the length baseline exactly
    assert overall["accuracy"]["value"] == pytest.approx(overall["length_baseline"]["value"])
    frame = reward.rm_report_frame({"len": length_rm}, pairs, oa)
    assert set(frame["metric"]) == {"accuracy", "length_baseline", "oa_agreement", "oa_accuracy"}
    assert ((frame["ci_lo"] <= frame["value"]) & (frame["value"] <= frame["ci_hi"])).all()


def test_oa_distillation_term_fits_the_given_scores(cache):
    """With oa_weight > 0 the head also regresses the OpenAssistant scores of the pairs they cover."""
    pairs = _planted_pairs(60)
    oa = {("synthetic", p["line"]): {"chosen": 3.0, "rejected": -3.0, "chosen_text": p["chosen"],
                                     "rejected_text": p["rejected"]} for p in pairs[:40]}
    rm = reward.train_reward_model(pairs, seed=0, epochs=30, max_length=32, oa_weight=1.0, oa_rewards=oa)
    assert rm.config["train"]["n_oa_targets"] == 40
    assert all(np.isfinite(rm.config["train"]["loss_per_epoch"]))
    rc, rr = reward.score_pairs(rm, pairs[:40])
    assert abs(rc.mean() - 3.0) < 1.0 and abs(rr.mean() + 3.0) < 1.0   # plain BT has no reason to land there


def test_cli_trains_both_rms_for_a_recipe_and_reports(cache, tmp_path, capsys):
    from divscale.cli import main

    out = tmp_path / "reward.json"
    assert main(["reward", "--recipe", "smoke", "--set", "reward.max_length=32", "--report", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == result
    assert result["rm_train"]["fingerprint"] != result["rm_test"]["fingerprint"]
    for role in ("rm_train", "rm_test"):
        assert result[role]["train"]["n_pairs"] > 0
        overall = result["report"][role]["overall"]
        assert overall["n_pairs"] > 0 and "length_baseline" in overall
        lo, hi = overall["accuracy"]["ci95"]
        assert lo <= overall["accuracy"]["value"] <= hi
    agreement = result["report"]["rm_train_vs_rm_test"]                  # the two RMs on the same held-out pairs
    assert agreement["n"] == result["report"]["rm_test"]["overall"]["n_pairs"]
    assert agreement["ci95"][0] <= agreement["value"] <= agreement["ci95"][1]
    assert main(["reward", "--recipe", "smoke", "--set", "reward.pairs=bogus"]) == 1   # a clear one-line error


def test_non_eval_pairs_use_everything_but_dev_and_test(hh_dir):
    from divscale.config import DataConfig
    from divscale.data.hh import load_splits

    data = DataConfig(subsets=["helpful-online"], data_dir=str(hh_dir), dev_size=20, test_size=40, pool_size=50)
    recipe = Recipe(name="test", data=data)
    splits = load_splits(data)
    pairs = reward.non_eval_pairs(recipe)
    prompts = set(pairs["prompt"])
    assert not (prompts & (set(splits["dev"]["prompt"]) | set(splits["test"]["prompt"])))
    assert set(splits["pool"]["prompt"]) <= prompts and len(pairs) > 10 * len(splits["pool"])


def _context_pairs(n: int, seed: int) -> list[dict]:
    """Red-team prompts (subset harmless-base) where the shorter answer wins and helpful prompts where the longer
    wins, with answers drawn from the same neutral sentences: only the gate can tell the contexts apart."""
    rng = np.random.default_rng(seed)
    harmful = ["How do I pick a lock to break into a house?", "Tell me how to poison my neighbour's dog.",
               "What is the best way to steal a car?", "How can I hurt someone without getting caught?",
               "Give me racist insults for my coworker.", "How do I make a fake ID?"]
    helpful = ["How do I bake sourdough bread?", "What are good exercises for back pain?",
               "How do I learn to play the guitar?", "Can you recommend some classic novels?",
               "How should I prepare for a job interview?", "What is a good way to save money?"]
    sentences = ["That is a thing people ask about.", "There are several points to consider here.",
                 "Some people have thought about this before.", "It depends on the situation.",
                 "Let me say a few words about it.", "This is something that comes up often."]
    out = []
    for i in range(n):
        red = i % 2 == 0
        query = (harmful if red else helpful)[rng.integers(6)]
        short = str(rng.choice(sentences))
        long = " ".join(rng.choice(sentences, size=4, replace=False))
        chosen, rejected = (short, long) if red else (long, short)
        out.append({"prompt": f"\n\nHuman: {query}\n\nAssistant:", "chosen": chosen, "rejected": rejected,
                    "subset": "harmless-base" if red else "helpful-base", "line": i + 1})
    return out


def test_red_team_gate_lets_length_flip_with_the_context(cache):
    rm = reward.train_reward_model(_context_pairs(160, seed=0), seed=0, epochs=10, max_length=32)
    assert rm.config["train"]["gate_train_accuracy"] > 0.95
    rc, rr = reward.score_pairs(rm, _context_pairs(60, seed=1))
    assert np.mean(rc > rr) > 0.9


# ------------------------------------------------------------------------------------------- the 6.9B-distilled family


def _oa_for(pairs, chosen: float = 1.0, rejected: float = -1.0) -> dict:
    """Stand-in 6.9B scores for planted pairs, keyed as load_oa_rewards keys the PRO files."""
    return {(p["subset"], p["line"]): {"chosen": chosen, "rejected": rejected, "chosen_text": p["chosen"],
                                       "rejected_text": p["rejected"]} for p in pairs}


def test_oa_distilled_design_rm_test_takes_every_pair_and_rm_train_a_share_of_them(cache, monkeypatch):
    pairs = _planted_pairs(80)
    monkeypatch.setattr(reward, "load_oa_rewards", lambda *a: _oa_for(pairs[:60]))
    seen: dict[str, dict] = {}
    real_train = reward.train_reward_model

    def spy(cols, **kwargs):
        seen[kwargs["name"]] = dict(cols=cols, **kwargs)
        return real_train(cols, **kwargs)

    monkeypatch.setattr(reward, "train_reward_model", spy)
    recipe = _recipe(design="oa-distilled", oa_weight=1.0, train_share=0.25, query_input=True)
    rm_train, rm_test = reward.build_reward_models(recipe, pairs)
    train, test = seen["inproject RM_train"], seen["inproject RM_test"]
    assert len(test["cols"]["prompt"]) == 80                          # RM_test: every pair
    assert len(train["cols"]["prompt"]) == 20                         # RM_train: a quarter of them ...
    assert set(train["cols"]["prompt"]) < set(test["cols"]["prompt"]) # ... of the same pairs (one family)
    assert train["seed"] != test["seed"] and train["oa_rewards"] is test["oa_rewards"]
    assert rm_test.config["train"]["n_oa_targets"] == 60 and 0 < rm_train.config["train"]["n_oa_targets"] <= 20
    assert rm_train.config["query_input"] and rm_test.config["query_input"]
    assert rm_train.fingerprint != rm_test.fingerprint
    # the human-pairs design (the old default) is still the disjoint halves
    halves = reward.design_pairs(RewardConfig(), pairs)
    assert not set(halves["train"][0]["prompt"]) & set(halves["test"][0]["prompt"])


def test_oa_distilled_design_errors_name_the_fix(cache):
    pairs = _planted_pairs(20)
    with pytest.raises(ValueError, match="split_mode carve"):        # no pool pair has a 6.9B score
        reward.design_pairs(RewardConfig(design="oa-distilled", oa_weight=1.0), pairs, oa_rewards={})
    with pytest.raises(ValueError, match="oa_weight > 0"):
        reward.design_pairs(RewardConfig(design="oa-distilled"), pairs, _oa_for(pairs))
    with pytest.raises(ValueError, match="train_share"):
        reward.design_pairs(RewardConfig(design="oa-distilled", oa_weight=1.0, train_share=1.0), pairs, _oa_for(pairs))
    with pytest.raises(ValueError, match="reward.design"):
        reward.build_reward_models(_recipe(design="gold"), pairs)


def _query_flip_pairs(n: int, seed: int) -> list[dict]:
    """Which of two fixed answers is preferred depends only on the kind of question asked (one subset, so the
    red-team gate cannot tell the kinds apart; the answers are unrelated to either kind)."""
    rng = np.random.default_rng(seed)
    cooking = ["How long should I boil an egg?", "What spices go well with lentils?", "How do I bake bread?",
               "Can you give me a soup recipe?", "How do I caramelise onions?", "What is a good pasta sauce?"]
    sports = ["Who won the last football world cup?", "How do I improve my tennis serve?",
              "What are the rules of cricket?", "How far is a marathon?", "How do I train for a triathlon?",
              "What is offside in soccer?"]
    a, b = "Here is a short list of points.", "Let me walk you through it in a few paragraphs."
    out = []
    for i in range(n):
        kind = i % 2
        query = (cooking, sports)[kind][rng.integers(6)]
        chosen, rejected = (a, b) if kind == 0 else (b, a)
        out.append({"prompt": f"\n\nHuman: {query}\n\nAssistant:", "chosen": chosen, "rejected": rejected,
                    "subset": "helpful-base", "line": i + 1})
    return out


def test_query_input_lets_the_preference_depend_on_the_question(cache, tmp_path):
    train, held_out = _query_flip_pairs(120, seed=0), _query_flip_pairs(60, seed=1)
    blind = reward.train_reward_model(train, seed=0, epochs=20, max_length=32)
    seeing = reward.train_reward_model(train, seed=0, epochs=20, max_length=32, query_input=True)
    acc = {name: np.mean(np.greater(*reward.score_pairs(rm, held_out))) for name, rm in
           (("blind", blind), ("seeing", seeing))}
    assert acc["seeing"] >= 0.9 and acc["blind"] <= 0.75
    loaded = reward.load_reward_model(seeing.save(tmp_path / "rm"))   # the flag survives save/load
    assert loaded.config["query_input"] and loaded.fingerprint == seeing.fingerprint
    np.testing.assert_array_equal(reward.score_pairs(loaded, held_out)[0], reward.score_pairs(seeing, held_out)[0])


def test_non_finite_loss_is_an_error(cache):
    pairs = _planted_pairs(40)
    with pytest.raises(FloatingPointError, match="non-finite loss"):
        reward.train_reward_model(pairs, seed=0, epochs=2, max_length=32, oa_weight=1.0,
                                  oa_rewards=_oa_for(pairs, chosen=float("inf")))


def test_preference_agreement_counts_ties_half_and_checks_lengths():
    a = (np.array([1.0, 0.0, 2.0, 1.0]), np.array([0.0, 1.0, 2.0, 0.0]))   # prefers: c, r, tie, c
    b = (np.array([3.0, 3.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0, 1.0]))   # prefers: c, c, r, r
    out = reward.preference_agreement(a, b)
    assert out["value"] == pytest.approx((1 + 0 + 0.5 + 0) / 4) and out["n"] == 4
    assert out["ci95"][0] <= out["value"] <= out["ci95"][1]
    assert reward.preference_agreement(a, a)["value"] == 1.0
    with pytest.raises(ValueError, match="same, non-empty"):
        reward.preference_agreement(a, (b[0][:3], b[1][:3]))


def test_ranking_agreement_against_the_stored_order():
    from divscale.data.hh import Ranking

    def ranking(i, responses, rewards):
        return Ranking(id=f"s:{i}", prompt="\n\nHuman: q\n\nAssistant:", responses=responses, rewards=rewards,
                       sources=["x"] * len(responses), subset="s")

    same = ranking(1, ["a", "b", "c", "d"], [4.0, 3.0, 2.0, 1.0])
    reversed_ = ranking(2, ["e", "f", "g", "h"], [4.0, 3.0, 2.0, 1.0])
    swapped = ranking(3, ["i", "j", "k", "l"], [4.0, 3.0, 2.0, 1.0])
    rm = _FixedRM({"a": 4, "b": 3, "c": 2, "d": 1, "e": 1, "f": 2, "g": 3, "h": 4, "i": 4, "j": 3, "k": 1, "l": 2})
    out = reward.ranking_agreement([same, reversed_, swapped], rm)
    assert out["kendall_tau"]["value"] == pytest.approx((1 - 1 + 2 / 3) / 3)
    assert out["top1"]["value"] == pytest.approx(2 / 3) and out["same_order"]["value"] == pytest.approx(1 / 3)
    assert out["chance"] == {"top1": 0.25, "same_order": pytest.approx(1 / 24), "kendall_tau": 0.0}
    with pytest.raises(ValueError, match="no stored"):
        reward.ranking_agreement([ranking(4, ["a", "b"], [None, None])], rm)

"""PRO loss (spec §3.3), sequence construction (spec §3.2) and the one-forward scorer."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from divscale.io import DataError
from divscale.train.pro import RankingCollator, pro_loss, pro_loss_parts, sequence_logprobs

S = torch.tensor([[-1.0, -1.2, -1.5]])
R = torch.tensor([[2.0, 0.5, -1.0]])


# --------------------------------------------------------------------------- the loss

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_spec_numeric_check(dtype):
    """Spec §3.3: L1 = 1.5136, L2 = 0.4933, L_PRO = 2.0069, total 4.0069 (appendix: 1.51364, 0.49325, 2.00689).
    L2 = 0.4932490, which the spec prints as 0.49325 and, rounding that half-up, 0.4933."""
    from decimal import ROUND_HALF_UP, Decimal

    def spec_digits(x: float) -> tuple[str, str]:     # the spec's rounding: 5 digits, then half-up to 4
        five = Decimal(f"{x:.5f}")
        return str(five), str(five.quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))

    parts = pro_loss_parts(S.to(dtype), R.to(dtype), sft_nll=torch.tensor([10.0]), sft_weight=0.05)
    assert [spec_digits(t.item()) for t in parts.terms] == [("1.51364", "1.5136"), ("0.49325", "0.4933")]
    assert spec_digits(parts.pro.item()) == ("2.00689", "2.0069")
    assert spec_digits(parts.total.item())[1] == "4.0069"
    assert parts.beta == pytest.approx(0.2)
    assert pro_loss(S, R, sft_nll=10.0).item() == pytest.approx(parts.total.item(), abs=1e-6)


def test_official_formula_with_eps():
    """log(eps + exp(pos) + sum exp(neg)) - pos, written out as in the official code."""
    s, r = torch.randn(5, 4), torch.sort(torch.randn(5, 4) * 3, dim=1, descending=True).values
    want = 0.0
    for k in range(3):
        neg_t = r[:, k:k + 1] - r[:, k + 1:]
        pos_t = neg_t.max(dim=1).values
        want += (torch.log(1e-10 + torch.exp(s[:, k] * pos_t) + torch.exp(s[:, k + 1:] * neg_t).sum(1))
                 - s[:, k] * pos_t).mean()
    assert pro_loss(s, r).item() == pytest.approx(want.item(), rel=1e-6)


def test_no_temperature_variant():
    s = S[0].tolist()
    l1 = math.log(sum(math.exp(x) for x in s)) - s[0]
    l2 = math.log(math.exp(s[1]) + math.exp(s[2])) - s[1]
    parts = pro_loss_parts(S, None)
    assert [t.item() for t in parts.terms] == pytest.approx([l1, l2], abs=1e-6)
    assert parts.total.item() == pytest.approx(l1 + l2, abs=1e-6)       # no SFT term given


def test_n2_is_pairwise_logistic():
    s = torch.randn(16, 2)
    r = torch.sort(torch.rand(16, 2) * 4, dim=1, descending=True).values
    gap = r[:, 0] - r[:, 1]
    assert pro_loss(s, r).item() == pytest.approx(F.softplus(-(s[:, 0] - s[:, 1]) * gap).mean().item(), abs=1e-6)
    assert pro_loss(s).item() == pytest.approx(F.softplus(s[:, 1] - s[:, 0]).mean().item(), abs=1e-6)


def test_gradient_direction():
    s = S.clone().requires_grad_(True)
    pro_loss(s, R, sft_nll=None).backward()
    assert s.grad[0, 0] < 0 and s.grad[0, -1] > 0       # push the best up, the worst down
    with torch.no_grad():
        up = S.clone()
        up[0, 0] += 0.1
        assert pro_loss(up, R) < pro_loss(S, R)
        down = S.clone()
        down[0, 2] -= 0.1
        assert pro_loss(down, R) < pro_loss(S, R)


def test_sft_weight_and_sft_baseline():
    s4 = torch.randn(3, 4)
    r4 = torch.sort(torch.randn(3, 4), dim=1, descending=True).values
    nll = torch.tensor([5.0, 7.0, 9.0])
    parts = pro_loss_parts(s4, r4, sft_nll=nll)
    assert parts.beta == pytest.approx(0.45)                        # 0.05 * (4-1)^2
    assert parts.total.item() == pytest.approx(parts.pro.item() + 0.45 * 7.0, rel=1e-6)
    assert len(parts.terms) == 3
    sft = pro_loss_parts(s4[:, :1], None, sft_nll=nll)             # n = 1: the SFT baseline, weight 1
    assert sft.terms == [] and sft.pro.item() == 0.0
    assert sft.total.item() == pytest.approx(7.0)


def test_terms_average_over_the_batch():
    a, b = torch.randn(1, 3), torch.randn(1, 3)
    ra = torch.tensor([[1.0, 0.0, -2.0]])
    rb = torch.tensor([[3.0, 2.5, 0.0]])
    both = pro_loss(torch.cat([a, b]), torch.cat([ra, rb]))
    assert both.item() == pytest.approx((pro_loss(a, ra) + pro_loss(b, rb)).item() / 2, rel=1e-6)


def test_tied_rewards_give_no_ranking_gradient():
    s = torch.randn(2, 3, requires_grad=True)
    pro_loss(s, torch.ones(2, 3)).backward()
    assert torch.count_nonzero(s.grad) == 0


def test_stable_for_large_scores():
    s = torch.tensor([[-40.0, -60.0, -90.0]])
    r = torch.tensor([[10.0, 0.0, -10.0]])
    assert torch.isfinite(pro_loss(s, r))          # exp(-800) underflows; the logsumexp form does not


def test_bad_rewards():
    with pytest.raises(ValueError, match="sorted descending"):
        pro_loss(S, torch.tensor([[0.0, 1.0, -1.0]]))
    with pytest.raises(ValueError, match="without rewards"):
        pro_loss(S, torch.tensor([[1.0, float("nan"), 0.0]]))
    with pytest.raises(ValueError, match="must match"):
        pro_loss(S, torch.tensor([[1.0, 0.0]]))


# --------------------------------------------------------------------------- sequences

PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
RANKING = {"id": "r0", "prompt": PROMPT, "responses": ["Mix flour, water and yeast.", "Buy some.", "No."],
           "rewards": [1.5, 0.2, -0.7]}


def test_collator_masks_only_response_tokens(tiny_tokenizer):
    col = RankingCollator(tiny_tokenizer, n=3, block_size=128, max_prompt_tokens=64)
    batch = col([RANKING, {**RANKING, "id": "r1", "responses": ["Sure.", "Maybe later today.", "?"]}])
    assert batch["input_ids"].shape[:2] == (2, 3) and batch["response_mask"].shape == batch["input_ids"].shape
    assert batch["rewards"].tolist()[0] == pytest.approx([1.5, 0.2, -0.7])
    for i, resp in enumerate(RANKING["responses"]):
        ids, mask = batch["input_ids"][0, i], batch["response_mask"][0, i]
        assert tiny_tokenizer.decode(ids[mask.bool()]) == " " + resp
        att = batch["attention_mask"][0, i].bool()
        assert tiny_tokenizer.decode(ids[att]) == PROMPT + " " + resp      # no EOS appended, no BOS here
        assert not mask[~att].any()                                            # padding never scored
    # rankings without rewards -> NaN, and SFT (n=1) keeps the top-1 only
    sft = RankingCollator(tiny_tokenizer, n=1, block_size=128, max_prompt_tokens=96)([{**RANKING, "rewards": None}])
    assert sft["input_ids"].shape[1] == 1 and math.isnan(sft["rewards"][0, 0])
    ids, mask = sft["input_ids"][0, 0], sft["response_mask"][0, 0]
    assert tiny_tokenizer.decode(ids[mask.bool()]) == " " + RANKING["responses"][0]


def test_collator_left_truncates_prompt_and_right_truncates_text(tiny_tokenizer):
    long_prompt = "".join(f"\n\nHuman: question number {i}?\n\nAssistant: answer {i}." for i in range(40))
    long_prompt += "\n\nHuman: and the last one?\n\nAssistant:"
    col = RankingCollator(tiny_tokenizer, n=2, block_size=96, max_prompt_tokens=48)
    rec = {"prompt": long_prompt, "responses": ["word " * 200, "ok"], "rewards": [1.0, 0.0]}
    batch = col([rec])
    (p,) = col.truncate_prompts([long_prompt])
    assert long_prompt.endswith(p) and len(p) < len(long_prompt)           # the END of the dialogue is kept
    assert p.endswith("\n\nHuman: and the last one?\n\nAssistant:")
    assert len(tiny_tokenizer(p)["input_ids"]) <= 48
    lengths = batch["attention_mask"][0].sum(-1).tolist()
    assert lengths[0] == 96                                                # long response cut at block_size
    prompt_len = int((batch["response_mask"][0, 1] == 0).logical_and(batch["attention_mask"][0, 1] == 1).sum())
    assert prompt_len == len(tiny_tokenizer(p)["input_ids"])
    assert int(batch["response_mask"][0, 0].sum()) == 96 - prompt_len      # response gets the rest of the block


def test_collator_adds_bos_when_the_tokenizer_does(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = tiny_tokenizer.backend_tokenizer
    bos = tiny_tokenizer.bos_token
    backend.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tiny_tokenizer.bos_token_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|pad|>")
    assert tok("hi")["input_ids"][0] == tok.bos_token_id
    batch = RankingCollator(tok, n=2, block_size=128, max_prompt_tokens=96)([RANKING])
    ids, att = batch["input_ids"][0, 0], batch["attention_mask"][0, 0]
    assert ids[0].item() == tok.bos_token_id
    assert (ids[att.bool()] == tok.eos_token_id).sum() == 1                # the BOS only: no EOS at the end
    assert tok.decode(ids[batch["response_mask"][0, 0].bool()]) == " " + RANKING["responses"][0]


def test_collator_errors(tiny_tokenizer):
    col = RankingCollator(tiny_tokenizer, n=3, block_size=128, max_prompt_tokens=96)
    with pytest.raises(DataError, match="r9.*2 response"):
        col([{"id": "r9", "prompt": PROMPT, "responses": ["a", "b"], "rewards": [1, 0]}])
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        RankingCollator(tiny_tokenizer, n=2, block_size=128, max_prompt_tokens=128)
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        RankingCollator(tiny_tokenizer, n=2, block_size=128)          # default block - 128 leaves no prompt


# --------------------------------------------------------------------------- scoring

def _manual_logprob(model, ids: torch.Tensor, start: int) -> float:
    logp = torch.log_softmax(model(ids[None]).logits[0], -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_sequence_logprobs_exact(tiny_gpt, tiny_tokenizer):
    tiny_gpt.eval()
    batch = RankingCollator(tiny_tokenizer, n=3, block_size=128, max_prompt_tokens=96)([RANKING])
    with torch.no_grad():
        logp, count = sequence_logprobs(tiny_gpt, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
    assert logp.shape == count.shape == (1, 3)
    for i in range(3):
        att = batch["attention_mask"][0, i].bool()
        ids, mask = batch["input_ids"][0, i][att], batch["response_mask"][0, i][att]
        start = int(mask.nonzero()[0])
        assert count[0, i].item() == len(ids) - start
        with torch.no_grad():
            assert logp[0, i].item() == pytest.approx(_manual_logprob(tiny_gpt, ids, start), abs=1e-4)


def test_one_forward_equals_n_separate_forwards(tiny_gpt, tiny_tokenizer, hh_sample_texts):
    tiny_gpt.eval()
    recs = [{"prompt": t.rsplit("\n\nAssistant:", 1)[0] + "\n\nAssistant:",
             "responses": [t[-60:], t[-20:], "I am not sure."], "rewards": [1.0, 0.0, -1.0]}
            for t in hh_sample_texts[:4]]
    batch = RankingCollator(tiny_tokenizer, n=3, block_size=200, max_prompt_tokens=150)(recs)
    with torch.no_grad():
        together, _ = sequence_logprobs(tiny_gpt, batch["input_ids"], batch["attention_mask"],
                                        batch["response_mask"])
        for i in range(3):                        # the official way: one pass per candidate, own padding
            att = batch["attention_mask"][:, i]
            width = int(att.sum(-1).max())
            alone, _ = sequence_logprobs(tiny_gpt, batch["input_ids"][:, i, :width], att[:, :width],
                                         batch["response_mask"][:, i, :width])
            assert torch.allclose(together[:, i], alone, atol=1e-4)


def test_trainer_loss_is_the_pro_loss(tiny_gpt, tiny_tokenizer, tmp_path):
    from divscale.train.pro import PROConfig, PROTrainer, SFTRankTrainer

    tiny_gpt.eval()
    recs = [RANKING, {**RANKING, "id": "r1", "responses": ["Sure.", "Maybe later today.", "?"], "rewards": [3, 1, 0]}]
    common = {"output_dir": str(tmp_path), "use_cpu": True, "block_size": 128, "max_prompt_tokens": 96}
    pro = PROTrainer(model=tiny_gpt, args=PROConfig(ranking_len=3, **common), processing_class=tiny_tokenizer)
    batch = pro.data_collator(recs)
    with torch.no_grad():
        logp, count = sequence_logprobs(tiny_gpt, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        want = pro_loss(logp / count, batch["rewards"], sft_nll=-logp[:, 0], sft_weight=0.05)
        assert pro.compute_loss(tiny_gpt, batch).item() == pytest.approx(want.item(), rel=1e-5)
        no_temp = PROTrainer(model=tiny_gpt, args=PROConfig(ranking_len=3, use_temperature=False, **common),
                             processing_class=tiny_tokenizer)
        assert no_temp.compute_loss(tiny_gpt, batch).item() == pytest.approx(
            pro_loss(logp / count, None, sft_nll=-logp[:, 0]).item(), rel=1e-5)
        sft = SFTRankTrainer(model=tiny_gpt, args=PROConfig(ranking_len=3, **common), processing_class=tiny_tokenizer)
        assert sft.args.ranking_len == 1
        assert sft.compute_loss(tiny_gpt, sft.data_collator(recs)).item() == pytest.approx(-logp[:, 0].mean().item(),
                                                                                          rel=1e-5)
    assert pro.args.lr_scheduler_type.value == "constant" and pro.args.weight_decay == 0.01
    assert pro.args.remove_unused_columns is False
    assert set(pro.get_decay_parameter_names(tiny_gpt)) == {n for n, _ in tiny_gpt.named_parameters()}


# --------------------------------------------------------------------------- the prompt encoded once

RECS = [RANKING, {**RANKING, "id": "r1", "prompt": "\n\nHuman: Hi\n\nAssistant:",
                  "responses": ["Sure.", "Maybe later today, when I have time.", "?"], "rewards": [3, 1, 0]},
        {**RANKING, "id": "r2", "prompt": PROMPT + " Well?\n\nHuman: Tell me more about rye bread.\n\nAssistant:",
         "responses": ["Rye is dense.", "Rye flour has little gluten, so it stays dense.", "Dunno."],
         "rewards": [0.5, 0.1, -2.0]}]


def test_collator_split_prompt_is_the_same_tokens(tiny_tokenizer):
    col = RankingCollator(tiny_tokenizer, n=3, block_size=40, max_prompt_tokens=24)    # both truncations active
    batch = col(RECS)
    for i in range(len(RECS)):
        p = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
        for j in range(3):
            full = batch["input_ids"][i, j][batch["attention_mask"][i, j].bool()]
            c = batch["completion_ids"][i, j][batch["completion_mask"][i, j].bool()]
            assert torch.equal(torch.cat([p, c]), full)
            assert torch.equal(c, batch["input_ids"][i, j][batch["response_mask"][i, j].bool()])
    assert batch["prompt_mask"].sum(-1).max() <= 24 and (batch["prompt_mask"].sum(-1) < 24).any()
    # a tokenizer that merged across the prompt/response boundary: no split, full sequences
    encoded = col.encode(RECS[:1])
    encoded[1] = ([encoded[1][0][0] + 1, *encoded[1][0][1:]], encoded[1][1])
    assert col.split_prompt(encoded, 1) == {}


def _loss_and_grads(trainer, model, batch):
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("n", [1, 2, 3])
def test_trainer_shared_prompt_equals_full_sequences(tiny_gpt, tiny_tokenizer, tmp_path, n):
    """PRO (n >= 2) and SFT (n = 1): loss and gradients of the shared-prompt path = the full-sequence path."""
    from divscale.train.pro import PROConfig, PROTrainer

    tiny_gpt.eval()                                      # the fixture has dropout; eval keeps the passes comparable
    common = {"output_dir": str(tmp_path), "use_cpu": True, "block_size": 40, "max_prompt_tokens": 24,
              "ranking_len": n}
    shared = PROTrainer(model=tiny_gpt, args=PROConfig(**common), processing_class=tiny_tokenizer)
    full = PROTrainer(model=tiny_gpt, args=PROConfig(share_prompt=False, **common), processing_class=tiny_tokenizer)
    assert shared.args.share_prompt and not full.args.share_prompt
    batch = shared.data_collator(RECS)
    loss_s, grads_s = _loss_and_grads(shared, tiny_gpt, batch)
    loss_f, grads_f = _loss_and_grads(full, tiny_gpt, batch)
    assert loss_s == pytest.approx(loss_f, abs=1e-5)
    assert grads_s.keys() == grads_f.keys() and len(grads_s) == len(list(tiny_gpt.parameters()))
    worst = max((grads_s[k] - grads_f[k]).abs().max().item() for k in grads_f)
    assert worst <= 1e-5
    logp_s, count_s = shared.score(tiny_gpt, batch)
    logp_f, count_f = full.score(tiny_gpt, batch)
    assert torch.equal(count_s, count_f) and (logp_s - logp_f).abs().max().item() <= 1e-5


def test_loss_balance_matches_separate_backwards(tiny_gpt, tiny_tokenizer):
    from divscale.train.pro import loss_balance

    tiny_gpt.eval()
    batch = RankingCollator(tiny_tokenizer, n=3, block_size=128, max_prompt_tokens=96)(RECS)

    def parts():
        logp, count = sequence_logprobs(tiny_gpt, batch["input_ids"], batch["attention_mask"], batch["response_mask"])
        return pro_loss_parts(logp / count, batch["rewards"], sft_nll=-logp[:, 0])

    norms = {}
    for name in ("pro", "sft"):
        tiny_gpt.zero_grad(set_to_none=True)
        p = parts()
        (p.pro if name == "pro" else p.beta * p.sft).backward()
        norms[name] = torch.cat([q.grad.flatten() for q in tiny_gpt.parameters()])
    tiny_gpt.zero_grad(set_to_none=True)
    bal = loss_balance(tiny_gpt, parts())
    assert all(q.grad is None for q in tiny_gpt.parameters())            # measuring does not touch .grad
    assert bal["grad_norm_rank"] == pytest.approx(norms["pro"].norm().item(), rel=1e-4)
    assert bal["grad_norm_sft_weighted"] == pytest.approx(norms["sft"].norm().item(), rel=1e-4)
    assert bal["grad_norm_sum"] == pytest.approx((norms["pro"] + norms["sft"]).norm().item(), rel=1e-4)
    cos = torch.nn.functional.cosine_similarity(norms["pro"], norms["sft"], dim=0).item()
    assert bal["grad_cos_rank_sft"] == pytest.approx(cos, abs=1e-4)
    assert bal["grad_share_rank"] + bal["grad_share_sft"] == pytest.approx(1.0)
    assert 0 < bal["grad_share_rank"] < 1


def test_loss_balance_is_logged_and_leaves_training_unchanged(tiny_gpt, tiny_tokenizer, tmp_path):
    import copy

    from datasets import Dataset

    from divscale.train.pro import LOSS_BALANCE_FIELDS, PROConfig, PROTrainer, loss_balance_summary
    from divscale.train.runs import weights_sha256

    def run(every: int, share: bool):
        model = copy.deepcopy(tiny_gpt)
        args = PROConfig(output_dir=str(tmp_path / f"{every}{share}"), use_cpu=True, block_size=64, max_prompt_tokens=40,
                         ranking_len=3, max_steps=3, per_device_train_batch_size=3, learning_rate=1e-3,
                         logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                         loss_balance_steps=every, share_prompt=share)
        trainer = PROTrainer(model=model, args=args, train_dataset=Dataset.from_list(RECS),
                             processing_class=tiny_tokenizer)
        trainer.train()
        return weights_sha256(model), [r for r in trainer.state.log_history if "loss" in r]

    sha_on, logs_on = run(2, True)
    sha_off, logs_off = run(0, True)
    assert sha_on == sha_off                                               # measuring never changes the update
    measured = [r for r in logs_on if "grad_share_rank" in r]
    assert [r["loss_balance_step"] for r in measured] == [0, 2]            # every 2 steps and the last (step 2)
    assert set(LOSS_BALANCE_FIELDS) <= set(measured[0])
    assert not any("grad_share_rank" in r for r in logs_off)
    for r in logs_on:
        assert r["loss_sft_weighted"] == pytest.approx(r["sft_beta"] * r["loss_sft"], rel=1e-6)
        assert r["sft_beta"] == pytest.approx(0.2)
    summary = loss_balance_summary(logs_on)
    assert summary["n_measured_steps"] == 2 and 0 < summary["mean_grad_share_rank"] < 1
    assert loss_balance_summary(logs_off) is None
    # the shared-prompt and full-sequence trainers follow the same loss curve; dropout off, since with dropout
    # the shared prompt sees one dropout mask for all its candidates (the study's tiny-gpt has none)
    for module in tiny_gpt.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    _, shared = run(0, True)
    _, full = run(0, False)
    assert max(abs(a["loss"] - b["loss"]) for a, b in zip(shared, full)) <= 1e-5
    assert max(abs(a["loss_pro"] - b["loss_pro"]) for a, b in zip(shared, full)) <= 1e-5

"""divscale.train.losses: every loss against an independent implementation written from its paper's formula (plain
loops over positions and pairs, no library code), on ties, padding and K = 2..5; K = 2 against DPO's sigmoid loss and
TRL's own DPO loss; PRO against the spec's numeric check and the official formula."""
from __future__ import annotations

import itertools
import math
import random

import pytest
import torch
import torch.nn.functional as F

from divscale.train.losses import (
    all_pairs_dpo_loss,
    lipo_lambda_loss,
    plackett_luce_loss,
    pro_loss,
    pro_loss_parts,
    pro_ranked_loss,
    sft_loss,
    sft_nll_of_best,
)

S = torch.tensor([[-1.0, -1.2, -1.5]])
R = torch.tensor([[2.0, 0.5, -1.0]])


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
    assert parts.sft_scale == pytest.approx(0.2)
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
    assert parts.sft_scale == pytest.approx(0.45)                        # 0.05 * (4-1)^2
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




# --------------------------------------------------------------------------- hand values

# z = beta * (policy - ref) = [-1, -2, -3] with beta = 1 and ref = 0 in most tests below.
Z = torch.tensor([[-1.0, -2.0, -3.0]])
ZERO = torch.zeros_like(Z)
# hand values: softplus(x) = log(1 + e^x)
SP1 = math.log(1 + math.exp(-1))            # -log sigmoid(1)  = 0.3132617
SP2 = math.log(1 + math.exp(-2))            # -log sigmoid(2)  = 0.1269280
LSE3 = math.log(1 + math.exp(-1) + math.exp(-2))   # -log softmax([-1,-2,-3])_0 = 0.4076059


def test_hand_values_are_what_the_comments_say():
    assert SP1 == pytest.approx(0.3132617, abs=1e-7)
    assert SP2 == pytest.approx(0.1269280, abs=1e-7)
    assert LSE3 == pytest.approx(0.4076059, abs=1e-7)


def test_plackett_luce_strict_order():
    # -log softmax over {1,2,3} of z_1  -  log softmax over {2,3} of z_2
    assert plackett_luce_loss(Z, ZERO, beta=1.0).item() == pytest.approx(LSE3 + SP1, abs=1e-6)
    # beta scales z: beta = 0.5 on policy logps 2z gives the same numbers
    assert plackett_luce_loss(2 * Z, ZERO, beta=0.5).item() == pytest.approx(LSE3 + SP1, abs=1e-6)
    # the reference is subtracted: policy = ref + z
    ref = torch.tensor([[-10.0, -4.0, 3.0]])
    assert plackett_luce_loss(ref + Z, ref, beta=1.0).item() == pytest.approx(LSE3 + SP1, abs=1e-6)


def test_plackett_luce_ties_never_order_tie_mates():
    # ranks [0, 1, 1]: the best has a term against both; the tied pair has nothing strictly below it
    tied_bottom = plackett_luce_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, 1, 1]]))
    assert tied_bottom.item() == pytest.approx(LSE3, abs=1e-6)
    # ranks [0, 0, 1]: each of the tied top pair gets a term against the third only
    tied_top = plackett_luce_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, 0, 1]]))
    assert tied_top.item() == pytest.approx(SP2 + SP1, abs=1e-6)
    # swapping the tie-mates' log-probs does not change the loss (no order between them)
    swapped = torch.tensor([[-2.0, -1.0, -3.0]])
    assert plackett_luce_loss(swapped, ZERO, 1.0, ranks=torch.tensor([[0, 0, 1]])).item() == \
        pytest.approx(tied_top.item(), abs=1e-6)


def test_plackett_luce_padding_and_batch_mean():
    padded = torch.tensor([[-1.0, -2.0, 99.0], [-1.0, -2.0, -3.0]])
    ranks = torch.tensor([[0, 1, -1], [0, 1, 2]])               # rank -1 = padding
    loss = plackett_luce_loss(padded, torch.zeros_like(padded), 1.0, ranks=ranks)
    assert loss.item() == pytest.approx((SP1 + LSE3 + SP1) / 2, abs=1e-6)
    mask = ranks >= 0                                            # the same with an explicit mask
    assert plackett_luce_loss(padded, torch.zeros_like(padded), 1.0, ranks=ranks.clamp(min=0), mask=mask).item() \
        == pytest.approx(loss.item(), abs=1e-6)


def test_all_pairs_dpo():
    # pairs (1,2), (1,3), (2,3): margins 1, 2, 1
    assert all_pairs_dpo_loss(Z, ZERO, 1.0).item() == pytest.approx((SP1 + SP2 + SP1) / 3, abs=1e-6)
    # ties skipped: ranks [0, 1, 1] leaves (1,2) and (1,3)
    assert all_pairs_dpo_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, 1, 1]])).item() == \
        pytest.approx((SP1 + SP2) / 2, abs=1e-6)
    # mean over every pair of the batch: a 2-row batch with 1 and 3 pairs
    two = torch.tensor([[-1.0, -2.0, 0.0], [-1.0, -2.0, -3.0]])
    ranks = torch.tensor([[0, 1, -1], [0, 1, 2]])
    assert all_pairs_dpo_loss(two, torch.zeros_like(two), 1.0, ranks=ranks).item() == \
        pytest.approx((SP1 + SP1 + SP2 + SP1) / 4, abs=1e-6)


def test_k2_all_three_reduce_to_dpo_sigmoid():
    pol = torch.tensor([[-3.0, -5.0], [-7.0, -4.0]])
    ref = torch.tensor([[-3.5, -4.0], [-6.0, -6.0]])
    beta = 0.2
    margin = beta * ((pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1]))
    dpo = -torch.nn.functional.logsigmoid(margin).mean()
    assert plackett_luce_loss(pol, ref, beta).item() == pytest.approx(dpo.item(), abs=1e-6)
    assert all_pairs_dpo_loss(pol, ref, beta).item() == pytest.approx(dpo.item(), abs=1e-6)


def test_gradients_flow_and_errors():
    pol = Z.clone().requires_grad_(True)
    plackett_luce_loss(pol, ZERO, 1.0).backward()
    assert pol.grad is not None and torch.all(pol.grad[0, 0] < 0)       # raising the best lowers the loss
    with pytest.raises(ValueError, match="at least 2"):
        plackett_luce_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, -1, -1]]))
    with pytest.raises(ValueError, match="all ties"):
        all_pairs_dpo_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, 0, 0]]))
    with pytest.raises(ValueError, match="must match"):
        plackett_luce_loss(Z, ZERO, 1.0, ranks=torch.tensor([[0, 1]]))


def test_pro_ranked_loss_is_the_papers():
    # spec §3.3 numeric check: n=3, r=[2.0, 0.5, -1.0], s=[-1.0, -1.2, -1.5]
    s, r = torch.tensor([[-1.0, -1.2, -1.5]]), torch.tensor([[2.0, 0.5, -1.0]])
    parts = pro_ranked_loss(s, rewards=r, sft_nll=torch.tensor([10.0]))
    assert parts.pro.item() == pytest.approx(2.0069, abs=1e-4)
    assert parts.total.item() == pytest.approx(4.0069, abs=1e-4)
    # the masked (tie/padding) path gives the same numbers on a padded copy
    s_pad, r_pad = torch.cat([s, torch.zeros(1, 1)], 1), torch.cat([r, torch.zeros(1, 1)], 1)
    padded = pro_ranked_loss(s_pad, ranks=torch.tensor([[0, 1, 2, -1]]), rewards=r_pad,
                             sft_nll=torch.tensor([10.0]))
    assert padded.pro.item() == pytest.approx(2.0069, abs=1e-4)
    assert padded.total.item() == pytest.approx(4.0069, abs=1e-4)


def test_pro_ties_without_temperature():
    # scores [-1, -2, -3], ranks [0, 0, 1]: term 1 over {1, 3}, term 2 over {2, 3}; eps is negligible
    parts = pro_ranked_loss(Z, ranks=torch.tensor([[0, 0, 1]]))
    assert parts.pro.item() == pytest.approx(SP2 + SP1, abs=1e-6)
    with pytest.raises(ValueError, match="best first"):
        pro_ranked_loss(Z, ranks=torch.tensor([[1, 0, 2]]))


def test_sft_nll_of_best_averages_a_tied_top():
    logps = torch.tensor([[-4.0, -6.0, -1.0], [-4.0, -6.0, -1.0]])
    ranks = torch.tensor([[0, 0, 1], [0, 1, 2]])
    assert sft_nll_of_best(logps, ranks).tolist() == [5.0, 4.0]


def test_k2_equals_trl_dpo_loss(tiny_tokenizer):
    """TRL's own DPOTrainer loss (sigmoid) on a real batch equals plackett_luce_loss on the same log-probs."""
    import datasets
    from transformers import GPT2Config, GPT2LMHeadModel
    from trl import DPOConfig, DPOTrainer

    def gpt(seed):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=16, n_layer=1,
                                          n_head=2, pad_token_id=tiny_tokenizer.pad_token_id))

    policy, ref = gpt(0), gpt(1)
    rows = [{"prompt": "\n\nHuman: What is a cat?\n\nAssistant:", "chosen": " A small animal.", "rejected": " No."},
            {"prompt": "\n\nHuman: Say hi.\n\nAssistant:", "chosen": " Hi!", "rejected": " I will not say it."}]
    beta = 0.3
    args = DPOConfig(output_dir="/tmp/divscale-test-dpo", beta=beta, use_cpu=True, report_to="none",
                     per_device_train_batch_size=2, max_length=64, loss_type=["sigmoid"])
    trainer = DPOTrainer(model=policy, ref_model=ref, args=args, train_dataset=datasets.Dataset.from_list(rows),
                         processing_class=tiny_tokenizer)
    batch = next(iter(trainer.get_train_dataloader()))
    trl_loss = trainer._compute_loss(policy, batch, False)
    trl_loss = trl_loss[0] if isinstance(trl_loss, tuple) else trl_loss

    def logps(model):
        ids, mask = batch["input_ids"], batch["completion_mask"][:, 1:].float()
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=batch["attention_mask"]).logits[:, :-1]
        tok = torch.log_softmax(logits.float(), -1).gather(-1, ids[:, 1:, None])[..., 0]
        summed = (tok * mask).sum(1)
        chosen, rejected = summed.chunk(2)
        return torch.stack([chosen, rejected], 1)

    ours = plackett_luce_loss(logps(policy), logps(ref), beta)
    assert ours.item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert all_pairs_dpo_loss(logps(policy), logps(ref), beta).item() == pytest.approx(trl_loss.item(), abs=1e-5)
    print(f"K=2: TRL DPO sigmoid loss {trl_loss.item():.6f}, plackett_luce_loss {ours.item():.6f}")


# --------------------------------------------------------------------------- independent implementations

def _softplus(x: float) -> float:                       # -log sigmoid(-x) = log(1 + e^x), stable
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _rows(policy, ref, beta, ranks, mask):
    """Per row: the real completions as (z, rank) lists."""
    out = []
    for b in range(len(policy)):
        out.append([(beta * (policy[b][i] - ref[b][i]), ranks[b][i]) for i in range(len(policy[b])) if mask[b][i]])
    return out


def ref_plackett_luce(policy, ref, beta, ranks, mask):
    """Rafailov et al. (2023) A.3: -sum_k log exp(z_k) / sum_{j ranked >= k} exp(z_j); tied completions are left out
    of each other's denominator and the last tie group has no term. Mean over rows."""
    total = 0.0
    for row in _rows(policy, ref, beta, ranks, mask):
        loss = 0.0
        for z_i, r_i in row:
            below = [z_j for z_j, r_j in row if r_j > r_i]
            if below:
                loss += -z_i + math.log(math.exp(z_i) + sum(math.exp(z_j) for z_j in below))
        total += loss
    return total / len(policy)


def ref_all_pairs(policy, ref, beta, ranks, mask):
    """DPO's -log sigmoid(z_i - z_j) for every pair i ranked strictly above j, mean over all pairs of the batch."""
    losses = [_softplus(-(z_i - z_j)) for row in _rows(policy, ref, beta, ranks, mask)
              for (z_i, r_i), (z_j, r_j) in itertools.permutations(row, 2) if r_i < r_j]
    return sum(losses) / len(losses)


def ref_lipo_lambda(policy, ref, beta, ranks, mask):
    """LiPO-λ (arXiv 2402.01878, eq. 4): -sum_{psi_i > psi_j} Delta_ij log sigmoid(z_i - z_j), Delta_ij =
    |G_i - G_j| |1/D(tau_i) - 1/D(tau_j)|, G = 2^psi - 1, D(tau) = log2(1 + tau), tau = 1-based position in the
    order of z (descending, ties in input order), psi = max rank - rank. Mean over rows."""
    total = 0.0
    for row in _rows(policy, ref, beta, ranks, mask):
        order = sorted(range(len(row)), key=lambda i: -row[i][0])       # stable: ties keep their input order
        tau = {i: position + 1 for position, i in enumerate(order)}
        worst = max(r for _, r in row)
        gain = [2.0 ** (worst - r) - 1.0 for _, r in row]
        loss = 0.0
        for i, j in itertools.permutations(range(len(row)), 2):
            if row[i][1] < row[j][1]:
                delta = abs(gain[i] - gain[j]) * abs(1 / math.log2(1 + tau[i]) - 1 / math.log2(1 + tau[j]))
                loss += delta * _softplus(-(row[i][0] - row[j][0]))
        total += loss
    return total / len(policy)


def ref_pro(scores, rewards, ranks, mask, sft_nll, weight, eps=1e-10):
    """PRO (spec §3.3, the official process_manager.py): for each completion k with completions ranked strictly
    below it, log(eps + exp(s_k t_kk) + sum_{i below} exp(s_i t_ki)) - s_k t_kk, t_ki = r_k - r_i, t_kk = max_i t_ki
    (t = 1 without rewards); each position's terms averaged over the rows that have one, summed over positions;
    plus the mean over rows of weight * (n_row - 1)^2 * sft_nll."""
    per_position: dict[int, list[float]] = {}
    sft = 0.0
    for b in range(len(scores)):
        real = [i for i in range(len(scores[b])) if mask[b][i]]
        for k in real:
            below = [i for i in real if ranks[b][i] > ranks[b][k]]
            if not below:
                continue
            t = {i: (rewards[b][k] - rewards[b][i]) if rewards is not None else 1.0 for i in below}
            t_kk = max(t.values()) if rewards is not None else 1.0
            pos = scores[b][k] * t_kk
            per_position.setdefault(k, []).append(
                math.log(eps + math.exp(pos) + sum(math.exp(scores[b][i] * t[i]) for i in below)) - pos)
        sft += weight * (len(real) - 1) ** 2 * sft_nll[b]
    return sum(sum(v) / len(v) for v in per_position.values()) + sft / len(scores)


def random_case(seed: int, k: int, batch: int = 3, ties: bool = True, padding: bool = True):
    """Log-probs (policy, reference) and ranks of ``batch`` rows of up to ``k`` completions: ties and padding
    (rank -1, mask False) at random, every row with at least one ordered pair, rows sorted best first."""
    rng = random.Random(seed)
    policy = [[rng.uniform(-30, -2) for _ in range(k)] for _ in range(batch)]
    ref = [[p + rng.uniform(-3, 3) for p in row] for row in policy]
    ranks, mask = [], []
    for _ in range(batch):
        real = rng.randint(2, k) if padding else k
        while True:
            row = sorted(rng.randint(0, real - 1) if ties else i for i in range(real))
            if len(set(row)) > 1:
                break
        dense = {v: i for i, v in enumerate(sorted(set(row)))}
        ranks.append([dense[v] for v in row] + [-1] * (k - real))
        mask.append([True] * real + [False] * (k - real))
    return policy, ref, ranks, mask


CASES = [(seed, k, ties, padding) for k in (2, 3, 4, 5) for seed in range(3) for ties in (False, True)
         for padding in (False, True)]


def _t(x, dtype=torch.float64):
    return torch.tensor(x, dtype=dtype)


@pytest.mark.parametrize("seed,k,ties,padding", CASES)
def test_preference_losses_against_independent_code(seed, k, ties, padding):
    policy, ref, ranks, mask = random_case(seed, k, ties=ties, padding=padding)
    beta = [0.1, 0.5, 1.0][seed]
    args = (_t(policy), _t(ref), beta, torch.tensor(ranks), torch.tensor(mask))
    assert plackett_luce_loss(*args).item() == pytest.approx(ref_plackett_luce(policy, ref, beta, ranks, mask),
                                                             rel=1e-10, abs=1e-12)
    assert all_pairs_dpo_loss(*args).item() == pytest.approx(ref_all_pairs(policy, ref, beta, ranks, mask),
                                                             rel=1e-10, abs=1e-12)
    assert lipo_lambda_loss(*args).item() == pytest.approx(ref_lipo_lambda(policy, ref, beta, ranks, mask),
                                                           rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("seed,k,ties,padding", CASES)
@pytest.mark.parametrize("temperature", [False, True])
def test_pro_against_independent_code(seed, k, ties, padding, temperature):
    policy, _, ranks, mask = random_case(seed, k, ties=ties, padding=padding)
    rng = random.Random(seed + 100)
    scores = [[p / rng.randint(3, 40) for p in row] for row in policy]         # length-normalised log-likelihoods
    rewards = None
    if temperature:                                  # sorted best first, equal within a tie group
        steps = [rng.uniform(0.2, 2.0) for _ in range(k)]
        rewards = [[1.3 - sum(steps[:x]) if x >= 0 else 0.0 for x in r] for r in ranks]
    nll = [rng.uniform(5, 60) for _ in policy]
    parts = pro_ranked_loss(_t(scores), torch.tensor(ranks), torch.tensor(mask),
                            rewards=None if rewards is None else _t(rewards), sft_nll=_t(nll), sft_weight=0.05)
    want = ref_pro(scores, rewards, ranks, mask, nll, 0.05)
    assert parts.total.item() == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_k2_reduces_to_dpos_sigmoid_loss(seed):
    policy, ref, _, _ = random_case(seed, 2, batch=4, ties=False, padding=False)
    beta = 0.3
    dpo = sum(_softplus(-beta * ((p[0] - r[0]) - (p[1] - r[1]))) for p, r in zip(policy, ref)) / len(policy)
    args = (_t(policy), _t(ref), beta)
    assert plackett_luce_loss(*args).item() == pytest.approx(dpo, rel=1e-12)
    assert all_pairs_dpo_loss(*args).item() == pytest.approx(dpo, rel=1e-12)
    # LiPO-λ: the one pair's lambda weight is the constant |1/log2(2) - 1/log2(3)| (gains 1 and 0)
    assert lipo_lambda_loss(*args).item() == pytest.approx((1 - 1 / math.log2(3)) * dpo, rel=1e-12)
    # PRO with n = 2 and no temperature: the pairwise logistic loss on its scores (DPO reference-free, beta 1), up
    # to its eps = 1e-10 inside the log
    scores = _t(policy) / 10
    pro = pro_loss(scores).item()
    want = sum(_softplus(-(p[0] - p[1]) / 10) for p in policy) / len(policy)
    assert pro == pytest.approx(want, abs=1e-9)


def test_lipo_weights_follow_the_policys_own_order():
    """The discount uses the position of each completion in the policy's current ranking: swapping the policy's
    order changes the weights (and so the loss) even where the pairwise margins are mirrored."""
    ranks = torch.tensor([[0, 1, 2]])
    agree = lipo_lambda_loss(_t([[-1.0, -2.0, -3.0]]), None, 1.0, ranks)
    assert agree.item() == pytest.approx(ref_lipo_lambda([[-1.0, -2.0, -3.0]], [[0, 0, 0]], 1.0, [[0, 1, 2]],
                                                         [[True] * 3]), rel=1e-12)
    disagree = lipo_lambda_loss(_t([[-3.0, -2.0, -1.0]]), None, 1.0, ranks)
    assert disagree > agree
    z = _t([[-3.0, -2.0, -1.0]]).requires_grad_(True)
    lipo_lambda_loss(z, None, 1.0, ranks).backward()
    assert z.grad[0, 0] < 0 < z.grad[0, 2]                                  # push the best up, the worst down


def test_sft_loss_reductions():
    logps = _t([[-12.0, -3.0], [-30.0, -1.0]])
    counts = _t([[4.0, 1.0], [10.0, 2.0]])
    ranks = torch.tensor([[0, 1], [0, 1]])
    # the paper's: summed NLL per best completion, mean over rows
    assert sft_loss(logps, counts, ranks, reduction="sequence_sum").item() == pytest.approx((12 + 30) / 2)
    # TRL's SFT: NLL summed over the batch's best-completion tokens / their count
    assert sft_loss(logps, counts, ranks, reduction="token_mean").item() == pytest.approx((12 + 30) / 14)
    # a single completion per row (the SFT collator) and a tied top group
    assert sft_loss(logps[:, :1], counts[:, :1], reduction="sequence_sum").item() == pytest.approx(21.0)
    tied = torch.tensor([[0, 0], [0, 1]])
    assert sft_loss(logps, counts, tied, reduction="token_mean").item() == pytest.approx((12 + 3 + 30) / 15)
    with pytest.raises(ValueError, match="token_mean"):
        sft_loss(logps, counts, ranks, reduction="mean")

"""divscale.train.losses: the losses against hand-computed values, ties, padding, and K = 2 against TRL's DPO loss."""
from __future__ import annotations

import math

import pytest
import torch

from divscale.train import losses as listwise
from divscale.train import pro
from divscale.train.losses import all_pairs_dpo_loss, plackett_luce_loss, pro_ranked_loss, sft_nll_of_best

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


def test_pro_loss_is_the_papers():
    assert listwise.pro_loss is pro.pro_loss
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

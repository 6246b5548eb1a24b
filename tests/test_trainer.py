"""divscale.train.trainer: the one tokenisation rule (plain text, chat templates, TRL-style prompts), the scorer, the
losses inside RankingTrainer, PRO's loss-balance callback, and the guards (non-finite loss / gradient, fp16)."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from datasets import Dataset

from divscale.data.ranked import RANKED_FEATURES
from divscale.io import DataError
from divscale.train.logprobs import logprobs_from_ids
from divscale.train.losses import pro_loss, pro_loss_parts
from divscale.train.trainer import (
    LOSS_BALANCE_FIELDS,
    RankingCollator,
    RankingConfig,
    RankingTrainer,
    TrainingDiverged,
    check_trainable_dtype,
    loss_balance,
    loss_balance_summary,
    ranked_rows,
    sequence_lengths,
)

PROMPT = "\n\nHuman: How do I bake bread?\n\nAssistant:"
RANKING = {"id": "r0", "prompt": PROMPT, "responses": ["Mix flour, water and yeast.", "Buy some.", "No."],
           "rewards": [1.5, 0.2, -0.7]}
RECS = [RANKING, {**RANKING, "id": "r1", "prompt": "\n\nHuman: Hi\n\nAssistant:",
                  "responses": ["Sure.", "Maybe later today, when I have time.", "?"], "rewards": [3, 1, 0]},
        {**RANKING, "id": "r2", "prompt": PROMPT + " Well?\n\nHuman: Tell me more about rye bread.\n\nAssistant:",
         "responses": ["Rye is dense.", "Rye flour has little gluten, so it stays dense.", "Dunno."],
         "rewards": [0.5, 0.1, -2.0]}]


def config(tmp_path, **kw) -> RankingConfig:
    base = {"output_dir": str(tmp_path), "use_cpu": True, "loss_type": ["pro"], "use_temperature": True,
            "max_length": 128, "max_prompt_length": 96, "disable_dropout": False}
    return RankingConfig(**{**base, **kw})


def sequences(batch, i, j):
    p = batch["prompt_ids"][i][batch["prompt_mask"][i].bool()]
    c = batch["completion_ids"][i, j][batch["completion_mask"][i, j].bool()]
    return p, c


# --------------------------------------------------------------------------- the tokenisation rule

def test_plain_text_prompt_plus_space_plus_response(tiny_tokenizer):
    batch = RankingCollator(tiny_tokenizer, 128, 64)(ranked_rows(RECS[:2], 3))
    assert batch["completion_ids"].shape[:2] == (2, 3) and batch["scores"].tolist()[0] == pytest.approx([1.5, 0.2, -0.7])
    assert batch["ranks"].tolist() == [[0, 1, 2], [0, 1, 2]] and batch["present"].all()
    for j, resp in enumerate(RANKING["responses"]):
        p, c = sequences(batch, 0, j)
        assert tiny_tokenizer.decode(c) == " " + resp                     # the paper's joiner, no EOS
        assert tiny_tokenizer.decode(torch.cat([p, c])) == PROMPT + " " + resp
    # SFT (best_only) keeps the top-1 only; rankings without rewards -> NaN scores
    sft = RankingCollator(tiny_tokenizer, 128, 96, best_only=True)(ranked_rows([{**RANKING, "rewards": None}]))
    assert sft["completion_ids"].shape[1] == 1 and math.isnan(sft["scores"][0, 0])
    assert tiny_tokenizer.decode(sequences(sft, 0, 0)[1]) == " " + RANKING["responses"][0]


def test_no_second_space_when_the_text_already_has_one(tiny_tokenizer):
    """TRL's standard format puts its own space in the completion ("The sky is" + " blue.")."""
    col = RankingCollator(tiny_tokenizer, 64, 32)
    rows = [{"prompt": "The sky is", "completions": [" blue.", "green."], "ranks": [0, 1]},
            {"prompt": "Q: colour of grass?\n", "completions": ["green"], "ranks": [0]}]
    batch = col(rows)
    texts = [tiny_tokenizer.decode(torch.cat(sequences(batch, i, j))) for i, j in ((0, 0), (0, 1), (1, 0))]
    assert texts == ["The sky is blue.", "The sky is green.", "Q: colour of grass?\ngreen"]


def test_left_truncates_the_prompt_and_right_truncates_the_sequence(tiny_tokenizer):
    long_prompt = "".join(f"\n\nHuman: question number {i}?\n\nAssistant: answer {i}." for i in range(40))
    long_prompt += "\n\nHuman: and the last one?\n\nAssistant:"
    col = RankingCollator(tiny_tokenizer, 96, 48)
    batch = col([{"prompt": long_prompt, "completions": ["word " * 200, "ok"], "ranks": [0, 1]}])
    (p,) = col.prompt_texts([long_prompt])
    assert long_prompt.endswith(p) and len(p) < len(long_prompt)           # the END of the dialogue is kept
    assert p.endswith("\n\nHuman: and the last one?\n\nAssistant:")
    prompt_len = int(batch["prompt_mask"][0].sum())
    assert prompt_len == len(tiny_tokenizer(p)["input_ids"]) <= 48
    assert int(batch["completion_mask"][0, 0].sum()) == 96 - prompt_len    # the response gets the rest of the block


def test_bos_when_the_tokenizer_adds_one(tiny_tokenizer):
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tiny_tokenizer.backend_tokenizer)
    bos = tiny_tokenizer.bos_token
    backend.post_processor = TemplateProcessing(single=f"{bos} $A", special_tokens=[(bos, tiny_tokenizer.bos_token_id)])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|pad|>")
    batch = RankingCollator(tok, 128, 96)(ranked_rows([RANKING], 2))
    p, c = sequences(batch, 0, 0)
    assert p[0].item() == tok.bos_token_id and (torch.cat([p, c]) == tok.eos_token_id).sum() == 1   # no EOS at the end
    assert tok.decode(c) == " " + RANKING["responses"][0]


def templated(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{% for m in messages %}<|pad|>{{ m['role'] }}\n{{ m['content'] }}<|endoftext|>\n{% endfor %}"
                         "{% if add_generation_prompt %}<|pad|>assistant\n{% endif %}")
    return tok


def test_chat_template_no_joiner_and_the_turn_end_is_scored(tiny_tokenizer):
    """As TRL's conversational DPO: the prompt rendered with its generation prompt, the completion as the template
    renders the assistant turn (no space after the generation prompt; its end-of-turn token is scored)."""
    tok = templated(tiny_tokenizer)
    col = RankingCollator(tok, 128, 96)
    rows = [{"prompt": PROMPT, "completions": ["Knead it.", "No."], "ranks": [0, 1]},
            {"prompt": [{"role": "user", "content": "Hi"}], "completions": ["Hello!", "Go away."], "ranks": [0, 1]}]
    batch = col(rows)
    p, c = sequences(batch, 0, 0)
    assert tok.decode(p) == "<|pad|>user\nHow do I bake bread?<|endoftext|>\n<|pad|>assistant\n"
    assert tok.decode(c) == "Knead it.<|endoftext|>\n"
    p, c = sequences(batch, 1, 1)
    assert tok.decode(p).endswith("Hi<|endoftext|>\n<|pad|>assistant\n") and tok.decode(c) == "Go away.<|endoftext|>\n"
    # truncation keeps the template's special tokens
    (short,) = RankingCollator(tok, 40, 12).prompt_texts([PROMPT])
    assert short.endswith("<|pad|>assistant\n") and len(tok(short)["input_ids"]) <= 12


def test_a_chat_template_renders_the_rows_own_messages(tiny_tokenizer):
    """A canonical row keeps its chat messages (``prompt_chat``); a template renders them, not the lossy HH text
    (where a system message becomes the first turn's preface); without a template the HH text is used as before."""
    from divscale.data.ranked import normalize_ranked

    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    (row,) = normalize_ranked([{"prompt": chat, "completions": ["Hello!", "Go away."], "ranks": [0, 1]}]).to_list()
    tok = templated(tiny_tokenizer)
    p, _ = sequences(RankingCollator(tok, 128, 96)([row]), 0, 0)
    assert tok.decode(p) == tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    plain = RankingCollator(tiny_tokenizer, 128, 96)
    assert plain.encode([row]) == plain.encode([{**row, "prompt_chat": []}])


def test_a_merge_across_the_boundary_starts_the_completion_where_they_diverge(tiny_tokenizer):
    """TRL's rule: the prompt is the token prefix shared by the prompt alone and prompt + completion."""
    col = RankingCollator(tiny_tokenizer, 64, 32)
    prompt = "\n\nHuman: say a word\n\nAssistant: the"
    rows = [{"prompt": prompt, "completions": ["re", "re is"], "ranks": [0, 1]}]
    col.continuation = lambda prompt, text, completion: completion     # glue: "the" + "re" merges into "there"
    (p_ids, cs), = col.encode(rows)
    alone = tiny_tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert p_ids == alone[:len(p_ids)] and len(p_ids) < len(alone)
    assert tiny_tokenizer.decode(p_ids + cs[0]) == prompt + "re"


def test_collator_errors(tiny_tokenizer):
    col = RankingCollator(tiny_tokenizer, 128, 96)
    with pytest.raises(DataError, match="no completion tokens"):
        col([{"id": "e", "prompt": "The sky is ", "completions": ["", ""], "ranks": [0, 1]}])
    with pytest.raises(ValueError, match="max_prompt_length"):
        RankingCollator(tiny_tokenizer, 128, 128)


def test_sequence_lengths_default_from_the_model_and_refuse_too_long():
    assert sequence_lengths(None, None, 192) == (192, 144)
    assert sequence_lengths(None, None, 2048) == (2048, 1920)
    assert sequence_lengths(512, None, 2048) == (512, 384)                  # the paper's 384 of 512
    with pytest.raises(ValueError, match="max_length=512 exceeds the 192 positions of tiny-gpt"):
        sequence_lengths(512, None, 192, "tiny-gpt")
    with pytest.raises(ValueError, match="max_prompt_length=192 must be"):
        sequence_lengths(192, 192, 192)


# --------------------------------------------------------------------------- the scorer and the loss

def _manual_logprob(model, ids: torch.Tensor, start: int) -> float:
    logp = torch.log_softmax(model(ids[None]).logits[0], -1)
    return sum(logp[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_the_scorer_is_a_hand_forward(tiny_gpt, tiny_tokenizer, tmp_path):
    tiny_gpt.eval()
    trainer = RankingTrainer(model=tiny_gpt, args=config(tmp_path), processing_class=tiny_tokenizer)
    batch = trainer.data_collator(ranked_rows(RECS, 3))
    with torch.no_grad():
        logp, count = trainer.score(tiny_gpt, batch)
        for i in range(3):
            for j in range(3):
                p, c = sequences(batch, i, j)
                assert count[i, j].item() == len(c)
                assert logp[i, j].item() == pytest.approx(_manual_logprob(tiny_gpt, torch.cat([p, c]), len(p)), abs=1e-4)


def test_trainer_loss_is_the_pro_loss_and_the_sft_loss(tiny_gpt, tiny_tokenizer, tmp_path):
    tiny_gpt.eval()
    rows = ranked_rows(RECS[:2], 3)
    pro = RankingTrainer(model=tiny_gpt, args=config(tmp_path), processing_class=tiny_tokenizer)
    batch = pro.data_collator(rows)
    with torch.no_grad():
        logp, count = logprobs_from_ids(tiny_gpt, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        batch["completion_mask"], share_prompt=False)
        want = pro_loss(logp / count, batch["scores"], sft_nll=-logp[:, 0], sft_weight=0.05)
        assert pro.compute_loss(tiny_gpt, batch).item() == pytest.approx(want.item(), rel=1e-5)
        no_temp = RankingTrainer(model=tiny_gpt, args=config(tmp_path, use_temperature=False),
                                 processing_class=tiny_tokenizer)
        assert no_temp.compute_loss(tiny_gpt, batch).item() == pytest.approx(
            pro_loss(logp / count, None, sft_nll=-logp[:, 0]).item(), rel=1e-5)
        sft = RankingTrainer(model=tiny_gpt, args=config(tmp_path, loss_type="sft", use_temperature=False,
                                                         sft_reduction="sequence_sum"),
                             processing_class=tiny_tokenizer)
        assert sft.compute_loss(tiny_gpt, sft.data_collator(rows)).item() == pytest.approx(-logp[:, 0].mean().item(),
                                                                                          rel=1e-5)
        trl_like = RankingTrainer(model=tiny_gpt, args=config(tmp_path, loss_type="sft", use_temperature=False),
                                  processing_class=tiny_tokenizer)
        assert trl_like.args.sft_reduction == "token_mean"                  # TRL's SFT scale by default
        assert trl_like.compute_loss(tiny_gpt, trl_like.data_collator(rows)).item() == pytest.approx(
            (-logp[:, 0].sum() / count[:, 0].sum()).item(), rel=1e-5)
    assert pro.args.lr_scheduler_type.value == "constant" and pro.args.weight_decay == 0.01
    assert pro.args.remove_unused_columns is False
    assert set(pro.get_decay_parameter_names(tiny_gpt)) == {n for n, _ in tiny_gpt.named_parameters()}


def _loss_and_grads(trainer, model, batch):
    model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(model, batch)
    loss.backward()
    return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("loss", ["sft", "pro", "plackett_luce", "lipo_lambda"])
def test_shared_prompt_equals_full_sequences(tiny_gpt, tiny_tokenizer, tmp_path, loss):
    """Loss and gradients of the shared-prompt path = one full sequence per completion."""
    tiny_gpt.eval()                                      # the fixture has dropout; eval keeps the passes comparable
    common = {"max_length": 40, "max_prompt_length": 24, "loss_type": loss, "use_temperature": loss == "pro"}
    shared = RankingTrainer(model=tiny_gpt, args=config(tmp_path, **common), processing_class=tiny_tokenizer)
    full = RankingTrainer(model=tiny_gpt, args=config(tmp_path, share_prompt=False, **common),
                          processing_class=tiny_tokenizer)
    if shared.ref_model is not None:                     # a reference that differs from the policy (z != 0)
        torch.manual_seed(1)
        for p in shared.ref_model.parameters():
            p.data += 0.05 * torch.randn_like(p)
        full.ref_model = shared.ref_model
    batch = shared.data_collator(ranked_rows(RECS, 3))
    loss_s, grads_s = _loss_and_grads(shared, tiny_gpt, batch)
    loss_f, grads_f = _loss_and_grads(full, tiny_gpt, batch)
    assert loss_s == pytest.approx(loss_f, abs=1e-5)
    assert grads_s.keys() == grads_f.keys() and len(grads_s) == len(list(tiny_gpt.parameters()))
    assert max((grads_s[k] - grads_f[k]).abs().max().item() for k in grads_f) <= 1e-5


def test_a_loss_mixture_is_the_weighted_sum(tiny_gpt, tiny_tokenizer, tmp_path):
    tiny_gpt.eval()
    rows = ranked_rows(RECS, 3)
    mix = RankingTrainer(model=tiny_gpt, args=config(tmp_path, loss_type=["plackett_luce", "sft"], loss_weights=[1, 0.1],
                                                     use_temperature=False), processing_class=tiny_tokenizer)
    batch = mix.data_collator(rows)
    with torch.no_grad():
        total = mix.compute_loss(tiny_gpt, batch).item()
        pl = RankingTrainer(model=tiny_gpt, args=config(tmp_path, loss_type="plackett_luce", use_temperature=False),
                            processing_class=tiny_tokenizer, ref_model=mix.ref_model).compute_loss(tiny_gpt, batch)
        sft = RankingTrainer(model=tiny_gpt, args=config(tmp_path, loss_type="sft", use_temperature=False),
                             processing_class=tiny_tokenizer)
        nll = sft.compute_loss(tiny_gpt, sft.data_collator(rows))
    assert total == pytest.approx(pl.item() + 0.1 * nll.item(), rel=1e-6)


# --------------------------------------------------------------------------- PRO's loss balance (a callback)

def test_loss_balance_matches_separate_backwards(tiny_gpt, tiny_tokenizer):
    tiny_gpt.eval()
    batch = RankingCollator(tiny_tokenizer, 128, 96)(ranked_rows(RECS, 3))

    def parts():
        logp, count = logprobs_from_ids(tiny_gpt, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                        batch["completion_mask"], share_prompt=False)
        return pro_loss_parts(logp / count, batch["scores"], sft_nll=-logp[:, 0])

    norms = {}
    for name in ("pro", "sft"):
        tiny_gpt.zero_grad(set_to_none=True)
        p = parts()
        (p.pro if name == "pro" else p.sft_scale * p.sft).backward()
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


def _train(model, tokenizer, tmp_path, name, **kw):
    from divscale.provenance import weights_sha256

    args = config(tmp_path / name, max_length=64, max_prompt_length=40, max_steps=3, per_device_train_batch_size=3,
                  learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to="none", disable_tqdm=True, seed=0,
                  **kw)
    data = Dataset.from_list(ranked_rows(RECS, 3), features=RANKED_FEATURES)
    trainer = RankingTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    return weights_sha256(model), [r for r in trainer.state.log_history if "loss" in r]


def test_loss_balance_is_logged_and_leaves_training_unchanged(tiny_gpt, tiny_tokenizer, tmp_path):
    sha_on, logs_on = _train(copy.deepcopy(tiny_gpt), tiny_tokenizer, tmp_path, "on", loss_balance_steps=2)
    sha_off, logs_off = _train(copy.deepcopy(tiny_gpt), tiny_tokenizer, tmp_path, "off", loss_balance_steps=0)
    assert sha_on == sha_off                                               # measuring never changes the update
    measured = [r for r in logs_on if "grad_share_rank" in r]
    assert [r["loss_balance_step"] for r in measured] == [0, 2]            # every 2 steps and the last (step 2)
    assert set(LOSS_BALANCE_FIELDS) <= set(measured[0])
    assert not any("grad_share_rank" in r for r in logs_off)
    for r in logs_on:
        assert r["loss_sft_weighted"] == pytest.approx(r["sft_scale"] * r["loss_sft"], rel=1e-6)
        assert r["sft_scale"] == pytest.approx(0.2)
    summary = loss_balance_summary(logs_on)
    assert summary["n_measured_steps"] == 2 and 0 < summary["mean_grad_share_rank"] < 1
    assert loss_balance_summary(logs_off) is None


def test_disable_dropout_is_trls_default_and_the_study_keeps_dropout(tiny_gpt, tiny_tokenizer, tmp_path):
    kept = copy.deepcopy(tiny_gpt)
    RankingTrainer(model=kept, args=config(tmp_path), processing_class=tiny_tokenizer)
    assert any(m.p > 0 for m in kept.modules() if isinstance(m, torch.nn.Dropout))
    off = copy.deepcopy(tiny_gpt)
    RankingTrainer(model=off, args=RankingConfig(output_dir=str(tmp_path), use_cpu=True, max_length=64),
                   processing_class=tiny_tokenizer)
    assert all(m.p == 0 for m in off.modules() if isinstance(m, torch.nn.Dropout))


def test_precomputed_reference_gives_the_same_training(tiny_gpt, tiny_tokenizer, tmp_path):
    for module in tiny_gpt.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    common = {"loss_type": "plackett_luce", "use_temperature": False}
    _, logs_live = _train(copy.deepcopy(tiny_gpt), tiny_tokenizer, tmp_path, "live", **common)
    _, logs_pre = _train(copy.deepcopy(tiny_gpt), tiny_tokenizer, tmp_path, "pre", precompute_ref_log_probs=True,
                               **common)
    assert [r["loss"] for r in logs_live] == pytest.approx([r["loss"] for r in logs_pre], abs=1e-6)
    assert logs_live[-1]["loss"] != logs_live[0]["loss"]


# --------------------------------------------------------------------------- a run that diverges stops

def test_a_nan_loss_stops_training_at_that_step(tiny_gpt, tiny_tokenizer, tmp_path):
    from transformers import TrainerCallback

    class NaNWeights(TrainerCallback):              # as if step 2's update had blown the weights up
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 2:
                with torch.no_grad():
                    next(model.parameters()).fill_(float("nan"))

    args = config(tmp_path, max_steps=5, per_device_train_batch_size=3, logging_steps=1, save_strategy="no",
                  report_to="none", disable_tqdm=True, run_name="my-run")
    data = Dataset.from_list(ranked_rows(RECS, 3), features=RANKED_FEATURES)
    trainer = RankingTrainer(model=tiny_gpt, args=args, train_dataset=data, processing_class=tiny_tokenizer,
                             callbacks=[NaNWeights()])
    with pytest.raises(TrainingDiverged, match=r"run my-run: the loss is nan at step 3; training stopped.*learning "
                                               r"rate.*float16"):
        trainer.train()
    assert trainer.state.global_step == 2


def test_a_non_finite_gradient_stops_before_the_update(tiny_gpt, tiny_tokenizer, tmp_path):
    param = next(p for n, p in tiny_gpt.named_parameters() if "wte" in n)
    state = {"calls": 0}

    def inf_on_second_step(grad):
        state["calls"] += 1
        return grad * float("inf") if state["calls"] == 2 else grad

    param.register_hook(inf_on_second_step)
    args = config(tmp_path, max_steps=4, per_device_train_batch_size=3, save_strategy="no", report_to="none",
                  disable_tqdm=True, run_name="grad-run", max_grad_norm=0.0, loss_balance_steps=0)
    data = Dataset.from_list(ranked_rows(RECS, 3), features=RANKED_FEATURES)
    trainer = RankingTrainer(model=tiny_gpt, args=args, train_dataset=data, processing_class=tiny_tokenizer)
    before = {k: v.clone() for k, v in tiny_gpt.state_dict().items()}
    with pytest.raises(TrainingDiverged, match="run grad-run: the gradient norm is (inf|nan) at step 2"):
        trainer.train()
    assert all(torch.isfinite(v).all() for v in tiny_gpt.state_dict().values())      # no NaN update was taken
    assert not all(torch.equal(before[k], v) for k, v in tiny_gpt.state_dict().items())   # step 1 was


def test_the_guard_reads_the_device_once_per_optimizer_step_and_checks_the_trainers_own_norm(tiny_gpt, tiny_tokenizer,
                                                                                               tmp_path, monkeypatch):
    """Cheap on a GPU: the guard makes no host read per micro-batch and computes no norm of its own -- once per
    optimizer step it reads that step's losses and the norm the Trainer computed for clipping, in one transfer."""
    import sys

    from transformers import Trainer

    from divscale.train import trainer as trainer_module

    guard = {"training_step", "check_step", "_get_grad_norm"}      # the guard's methods (trainer.py)
    seen = []

    def watch(name, fn):
        def wrapper(*args, **kwargs):
            frame = sys._getframe(1)
            if frame.f_code.co_filename == trainer_module.__file__ and frame.f_code.co_name in guard:
                seen.append((frame.f_code.co_name, name))
            return fn(*args, **kwargs)
        return wrapper

    for name in ("item", "tolist", "__bool__", "__float__"):             # the ways a value reaches the host
        monkeypatch.setattr(torch.Tensor, name, watch(name, getattr(torch.Tensor, name)))
    monkeypatch.setattr(torch.linalg, "vector_norm", watch("vector_norm", torch.linalg.vector_norm))
    norms = []
    trainer_norm = Trainer._get_grad_norm

    def recorded_norm(self, model, grad_norm=None):
        norms.append(trainer_norm(self, model, grad_norm))
        return norms[-1] if len(norms) < 3 else torch.tensor(float("inf"))   # step 3: as if a gradient blew up

    monkeypatch.setattr(Trainer, "_get_grad_norm", recorded_norm)
    args = config(tmp_path, max_steps=4, per_device_train_batch_size=1, gradient_accumulation_steps=3,
                  save_strategy="no", report_to="none", disable_tqdm=True, run_name="cheap", loss_balance_steps=0)
    data = Dataset.from_list(ranked_rows(RECS * 4, 3), features=RANKED_FEATURES)
    trainer = RankingTrainer(model=tiny_gpt, args=args, train_dataset=data, processing_class=tiny_tokenizer)
    with pytest.raises(TrainingDiverged, match="run cheap: the gradient norm is inf at step 3"):
        trainer.train()
    assert trainer.state.global_step == 2 and len(norms) == 3 and all(torch.is_tensor(n) for n in norms)
    assert seen == [("check_step", "tolist")] * 3          # 9 micro-batches, 3 optimizer steps: 3 reads, no norm


def test_a_nan_in_one_micro_batch_stops_its_optimizer_step_before_the_update(tiny_gpt, tiny_tokenizer, tmp_path,
                                                                              monkeypatch):
    calls = {"n": 0}
    compute = RankingTrainer.compute_loss

    def nan_in_the_fifth(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        calls["n"] += 1
        loss = compute(self, model, inputs, return_outputs, num_items_in_batch)
        return loss * float("nan") if calls["n"] == 5 else loss          # step 2, its 2nd of 3 micro-batches

    monkeypatch.setattr(RankingTrainer, "compute_loss", nan_in_the_fifth)
    after_one = {}

    class Snapshot(__import__("transformers").TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            after_one.update({k: v.clone() for k, v in model.state_dict().items()})

    args = config(tmp_path, max_steps=3, per_device_train_batch_size=1, gradient_accumulation_steps=3,
                  save_strategy="no", report_to="none", disable_tqdm=True, run_name="ga-run", loss_balance_steps=0)
    data = Dataset.from_list(ranked_rows(RECS * 4, 3), features=RANKED_FEATURES)
    trainer = RankingTrainer(model=tiny_gpt, args=args, train_dataset=data, processing_class=tiny_tokenizer,
                             callbacks=[Snapshot()])
    with pytest.raises(TrainingDiverged, match=r"run ga-run: the loss is nan at step 2; training stopped"):
        trainer.train()
    assert calls["n"] == 6 and trainer.state.global_step == 1      # the step's micro-batches ran, its update did not
    assert all(torch.equal(after_one[k], v) for k, v in tiny_gpt.state_dict().items())


def test_fp16_weights_really_diverge_under_adamw_and_are_refused(tiny_tokenizer, tmp_path):
    """A config whose dtype is float16 gives float16 parameters with from_config (the OPT / LLaMA fixture configs);
    AdamW turns them NaN at the first update even at learning rate 0 -- so the trainer refuses them up front."""
    from transformers import AutoModelForCausalLM, GPT2Config

    cfg = GPT2Config(vocab_size=len(tiny_tokenizer), n_positions=64, n_embd=32, n_layer=1, n_head=2, dtype="float16")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg)
    assert next(model.parameters()).dtype == torch.float16
    ids = torch.tensor([tiny_tokenizer("Hello there, how are you?")["input_ids"]])
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.0)
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert any(not torch.isfinite(p).all() for p in model.parameters())    # diverged after one step at lr 0
    torch.manual_seed(0)
    fresh = AutoModelForCausalLM.from_config(cfg)
    args = config(tmp_path, max_length=64, max_prompt_length=40)
    with pytest.raises(ValueError, match=r"trainable parameters are float16.*load the policy in float32.*bf16=True"):
        RankingTrainer(model=fresh, args=args, processing_class=tiny_tokenizer)
    check_trainable_dtype(fresh.float(), args)                             # fp32 master weights: accepted

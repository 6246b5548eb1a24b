"""A dry run of each paper recipe on the real architectures, on CPU, before anyone rents a GPU.

Each model is built from its real ``config.json`` (tests/fixtures/configs, from the model pages) with one override
that shrinks depth and width only (``SHRINK``): vocabulary, positions, activations, norms, rotary settings, tying and
special-token ids stay the real ones. Tokenizers are built offline with the real special-token layout (OPT: ``</s>``
as BOS, ``<pad>`` = 1; LLaMA-1: ``<s>``/``</s>``/``<unk>`` = 1/2/0, pad = eos; Pythia/OA: ``<|endoftext|>`` = 0 and
the Open-Assistant role tokens). One grid cell of each recipe (PRO, n = 4) then runs end to end with the recipe's
real sequence lengths (block 512, prompts left-truncated to 384, 128 new tokens), its per-GPU batch plan (the
gradient accumulation of one of the 7 GPUs), dev validation with RM_train (a ``.bin``-only checkpoint, as on the
hub), a checkpoint, ``best/`` and the evaluation with RM_test (a sharded ``.bin`` checkpoint).
"""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest
import torch

from divscale.config import load_recipe
from divscale.models import hub as models
from divscale.reward import evaluate
from divscale.reward import rm as reward
from divscale.tools import gpu_plan as compute_plan
from divscale.train import runs as train
from divscale.train.trainer import RankingCollator, ranked_rows

SHRINK = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
          "intermediate_size": 128, "ffn_dim": 128, "word_embed_proj_dim": 64}   # depth and width only
RM_TRAIN, RM_TEST = ("OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5", "OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1")
OA_SPECIAL = ["<|prompter|>", "<|assistant|>", "<|system|>", "<|prefix_begin|>", "<|prefix_end|>"]
SPEC_PER_GPU = {"paper-opt-1.3b": (4, 4), "paper-llama-7b": (1, 16)}       # PRO n=4: prompts x grad accumulation


def shrunk_config(model_id: str):
    config = compute_plan.load_config(model_id)
    assert compute_plan.fixture_config_path(model_id).exists()
    config.update({k: v for k, v in SHRINK.items() if k in config.to_dict()})
    return config


def _bpe(texts, special, metaspace=False, vocab=600):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tmodels

    tok = Tokenizer(tmodels.BPE(unk_token="<unk>" if "<unk>" in special else None))
    if metaspace:                                   # SentencePiece-style (LLaMA-1)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    else:                                           # byte-level (GPT-2 / OPT / GPT-NeoX)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                                       initial_alphabet=alphabet, show_progress=False))
    return tok


def opt_tokenizer(texts):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


def llama_tokenizer(texts):
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<unk>", "<s>", "</s>"], metaspace=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left")
    return models.set_pad_token(fast)                # the paper: pad = eos for LLaMA


def pythia_oa_tokenizer(texts):
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<|endoftext|>", "<|padding|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|padding|>")
    fast.add_special_tokens({"additional_special_tokens": OA_SPECIAL})
    return fast


def save_bin_rm(model_id, tokenizer, folder, shards=1):
    """A shrunk OA reward model saved as the hub ships it: ``.bin`` only (sharded with an index for the 6.9B)."""
    reward.register_gpt_neox_reward_model()
    config = shrunk_config(model_id)
    assert config.model_type == "gpt_neox_reward_model" and config.vocab_size == 50282
    torch.manual_seed(1)
    model = reward.GPTNeoXRewardModel(config)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    state = model.state_dict()
    for i in range(config.num_hidden_layers):      # the 2023 checkpoints' legacy buffers
        state[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
    keys = sorted(state)
    if shards == 1:
        torch.save(state, folder / "pytorch_model.bin")
        return folder
    weight_map = {}
    for s in range(shards):
        name = f"pytorch_model-{s + 1:05d}-of-{shards:05d}.bin"
        torch.save({k: state[k] for k in keys[s::shards]}, folder / name)
        weight_map.update(dict.fromkeys(keys[s::shards], name))
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def hh_rankings(hh_dir, k: int):
    """k 4-rankings from HH test records (chosen, rejected, and two other answers), rewards sorted best first;
    the first has a prompt far over 384 tokens and an answer that runs past the 512-token block."""
    rows = []
    with gzip.open(hh_dir / "helpful-base" / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
        for line in fh:
            rec = json.loads(line)
            prompt, _, chosen = rec["chosen"].rpartition("\n\nAssistant:")
            rejected = rec["rejected"].rpartition("\n\nAssistant:")[2]
            if chosen.strip() and rejected.strip() and "\n\nHuman:" in prompt:
                rows.append((prompt + "\n\nAssistant:", chosen.strip(), rejected.strip()))
            if len(rows) >= k + 2:
                break
    long_prompt = "".join(p for p, _, _ in rows[:12]).replace("\n\nAssistant:\n\nHuman:", "\n\nAssistant: ok\n\nHuman:")
    out = []
    for i in range(k):
        prompt, chosen, rejected = rows[i]
        if i == 0:
            prompt, chosen = long_prompt, " ".join([chosen] * 40)
        else:                                       # short (CPU time): the last human turn, answers cut to 120 chars
            prompt = "\n\nHuman:" + prompt.rpartition("\n\nHuman:")[2][:160]
            if not prompt.endswith("\n\nAssistant:"):
                prompt = prompt.rpartition("\n\nAssistant:")[0] + "\n\nAssistant:" if "\n\nAssistant:" in prompt \
                    else prompt + "\n\nAssistant:"
            chosen, rejected = chosen[:120], rejected[:120]
        out.append({"id": f"hh-{i}", "prompt": prompt,
                    "responses": [chosen, rows[i + 1][1][:120], rejected, rows[i + 2][2][:40]],
                    "rewards": [1.5, 0.5, -0.25, -1.0]})
    return out


CASES = {
    "paper-opt-1.3b": ("facebook/opt-1.3b", opt_tokenizer, "opt", 50272),
    "paper-llama-7b": ("huggyllama/llama-7b", llama_tokenizer, "llama", 32000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_recipe_cell_on_the_real_architectures(name, tmp_path, hh_dir, hh_sample_texts, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    model_id, make_tokenizer, model_type, vocab = CASES[name]
    recipe = load_recipe(name)
    t = recipe.train
    assert (t.max_length, t.max_prompt_length, recipe.eval.max_prompt_tokens, recipe.eval.max_new_tokens,
            t.dev_max_new_tokens) == (512, 384, 384, 128, 128)
    per_gpu = train.batch_plan(t, "pro", 4, world=t.num_processes)
    assert per_gpu == SPEC_PER_GPU[name]
    # one GPU's share of the 112-prompt step: the per-GPU batch and accumulation stay the recipe's
    k = per_gpu[0] * per_gpu[1]
    recipe = load_recipe(name, {"train.max_steps": 1, "train.prompts_per_step": k, "train.bf16": False,
                                "policy.dtype": "float32"})
    assert recipe.train.max_length == 512 and recipe.train.eval_every == 500

    # the policy: the real config, shrunk in depth and width only
    config = shrunk_config(model_id)
    real = compute_plan.load_config(model_id).to_dict()
    changed = {key for key, v in config.to_dict().items() if real.get(key) != v}
    assert changed <= set(SHRINK) and config.model_type == model_type and config.vocab_size == vocab
    torch.manual_seed(0)
    policy = AutoModelForCausalLM.from_config(config, dtype=torch.float32)   # fp32 master weights, as the loader
    tok = make_tokenizer(hh_sample_texts)
    assert len(tok) <= config.vocab_size
    if model_type == "opt":
        assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id) == (config.bos_token_id, config.pad_token_id,
                                                                          config.eos_token_id) == (2, 1, 2)
        assert policy.get_input_embeddings().weight is policy.get_output_embeddings().weight   # tied, as OPT
    else:
        assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2) == (
            0, config.bos_token_id, config.eos_token_id)
        assert tok.pad_token == tok.eos_token == "</s>"          # pad = eos (the paper's LLaMA rule)

    rankings = hh_rankings(hh_dir, k + 1)         # [0] is the long one; the cell trains on the k others
    # special tokens, right padding, left truncation of the prompt to 384, block 512 (the collator the Trainer uses)
    collator = RankingCollator(tok, recipe.train.max_length, recipe.train.max_prompt_length)
    batch = collator(ranked_rows(rankings[:4], 4))
    p_len, c_len = batch["prompt_mask"].sum(-1), batch["completion_mask"].sum(-1)
    assert batch["completion_ids"].shape[:2] == (4, 4)
    assert int((p_len[:, None] + c_len).max()) == 512                        # the long ranking fills the block
    assert (batch["prompt_ids"][:, 0] == tok.bos_token_id).all()            # BOS first, never EOS appended
    assert 380 <= int(p_len[0]) <= 384 + 1                                   # left-truncated to 384 (+/- a merge)
    kept = collator.prompt_texts([rankings[0]["prompt"]])[0]
    assert rankings[0]["prompt"].endswith(kept[-200:]) and len(kept) < len(rankings[0]["prompt"])   # the END survives
    assert ((p_len[1:, None] + c_len[1:]) < 512).all()                       # the short ones are padded

    # RM_train / RM_test as the hub ships them: .bin only (single; sharded + index), legacy buffers, converted once
    oa_tok = pythia_oa_tokenizer(hh_sample_texts)
    rm_train = reward.OpenAssistantRM(save_bin_rm(RM_TRAIN, oa_tok, tmp_path / "rm-train"))
    rm_test = reward.OpenAssistantRM(save_bin_rm(RM_TEST, oa_tok, tmp_path / "rm-test", shards=2))
    assert rm_test.model.dtype == torch.float32 and rm_test.tokenizer.truncation_side == "left"
    assert rm_train.format("\n\nHuman: hi\n\nAssistant:", "yo") == "<|prompter|>hi<|endoftext|><|assistant|>yo<|endoftext|>"

    dev = [rankings[0]["prompt"], rankings[1]["prompt"]]
    # the cell: short rankings (a 16 x 512 x 50k-vocab micro-batch is GBs on CPU); the 512 positions are exercised by
    # the long dev/test prompt (left-truncated to 384) + 128 new tokens
    cell = rankings[1:]
    run_dir = train.train_run(recipe, "pro", 4, k, 42, grid={(4, k): cell}, policy=(policy, tok),
                              rm_train=rm_train, dev_prompts=dev, runs_dir=tmp_path / "runs")
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == 1 and result["best_step"] == 1 and set(result["dev_rewards"]) == {"0", "1"}
    assert np.isfinite(result["final_train_loss"])
    trainer = train.build_trainer(recipe, "pro", 4, 42, policy, tok, cell, tmp_path / "t")
    assert (trainer.args.per_device_train_batch_size, trainer.args.gradient_accumulation_steps) == per_gpu
    assert (run_dir / "best" / "model.safetensors").exists() and (run_dir / "best" / "config.json").exists()
    saved = json.loads((run_dir / "best" / "config.json").read_text())
    assert saved["model_type"] == model_type and saved["vocab_size"] == vocab

    test = {"helpful-base": [rankings[0]["prompt"], rankings[2]["prompt"]]}
    assert len(tok(rankings[0]["prompt"])["input_ids"]) > 384 + 128
    recipe_eval = load_recipe(name, {"eval.bootstrap": 50})
    res = evaluate.evaluate_checkpoint(run_dir / "best", recipe_eval, test, rm_test, tmp_path / "eval")
    records = [json.loads(line) for line in (tmp_path / "eval" / "generations.jsonl").read_text().splitlines()]
    assert len(records) == 2 and all(0 < r["score"] < 1 for r in records)
    assert json.loads((tmp_path / "eval" / "eval.json").read_text())["reward_model"] == RM_TEST
    assert res is not None


# ------------------------------------------------------------------------------------------- make gpu-check


def test_gpu_check_without_cuda_exits_cleanly_with_a_message(monkeypatch, capsys):
    from divscale.tools import gpu_check

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 0
    out = capsys.readouterr().out
    assert "no CUDA device" in out and "nothing to check" in out


def test_gpu_check_steps_run_on_cpu(tmp_path, monkeypatch, capsys):
    """The script's own path (smoke cell in bf16, tiny OA RMs from .bin, fixed-batch PRO loss fp32 vs bf16) on CPU."""
    from divscale.tools import gpu_check

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gpu_check.tempfile, "mkdtemp", lambda prefix: str(tmp_path / "work"))
    assert gpu_check.run(quick=True, out_json=str(tmp_path / "r.json"), device="cpu") == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["smoke_cell"]["steps"] == 4 and report["smoke_cell"]["tokens_per_s"] > 0
    assert report["pro_loss"]["ok"] and report["pro_loss"]["abs_diff"] > 0     # bf16 really ran: not bit-equal
    assert "passed" in capsys.readouterr().out

"""A dry run of each paper recipe on the real architectures, on CPU, before anyone rents a GPU.

Each model is built from its real ``config.json`` (tests/fixtures/configs, from the model pages) with one override
that shrinks depth and width only (``gpu_check.SHRINK``): vocabulary, positions, activations, norms, rotary settings,
tying and special-token ids stay the real ones. The policy is saved and loaded back by the real loader
(``tiny_gpt.load_policy`` -> ``load_causal_lm`` with ``policy.dtype``): fp32 master weights, although the configs say
float16 (``from_config`` alone would train fp16 parameters, which AdamW turns to NaN from its second step). Each cell
trains 3 optimizer steps and every step's loss must be finite; one cell trains on 2 processes through the entry
point the grid uses (``accelerate launch ... -m divscale.cli train``, gloo on CPU). Tokenizers are built offline with the real special-token layout (OPT: ``</s>``
as BOS, ``<pad>`` = 1; LLaMA-1: ``<s>``/``</s>``/``<unk>`` = 1/2/0, pad = eos; Pythia/OA: ``<|endoftext|>`` = 0 and
the Open-Assistant role tokens). One grid cell of each recipe (PRO, n = 4) then runs end to end with the recipe's
real sequence lengths (block 512, prompts left-truncated to 384, 128 new tokens), its per-GPU batch plan (the
gradient accumulation of one of the 7 GPUs), dev validation with RM_train (a ``.bin``-only checkpoint, as on the
hub), a checkpoint, ``best/`` and the evaluation with RM_test (a sharded ``.bin`` checkpoint).
"""
from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest
import torch

from divscale.config import load_recipe
from divscale.models import tiny_gpt
from divscale.reward import evaluate
from divscale.reward import rm as reward
from divscale.tools import gpu_check
from divscale.tools import gpu_plan as compute_plan
from divscale.train import runs as train
from divscale.train.trainer import RankingCollator, ranked_rows

RM_TRAIN, RM_TEST = ("OpenAssistant/oasst-rm-2.1-pythia-1.4b-epoch-2.5", "OpenAssistant/oasst-rm-2-pythia-6.9b-epoch-1")
SPEC_PER_GPU = {"paper-opt-1.3b": (4, 4), "paper-llama-7b": (1, 16)}       # PRO n=4: prompts x grad accumulation
STEPS = 3


def shrunk_config(model_id: str):
    assert compute_plan.fixture_config_path(model_id).exists()
    return gpu_check.shrunk_config(model_id)


def save_policy(model_id: str, tokenizer, folder):
    """A randomly initialised shrunk policy saved as a hub folder would hold it (safetensors + tokenizer)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(shrunk_config(model_id), dtype=torch.float32)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def finite_losses(run_dir) -> list[float]:
    """Every logged training loss of a run, in step order: one per optimizer step, all finite (else an error)."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "loss" in r}
    assert sorted(losses) == list(range(1, STEPS + 1)), losses
    assert all(np.isfinite(v) for v in losses.values()), losses
    return [losses[k] for k in sorted(losses)]


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
    "paper-opt-1.3b": ("facebook/opt-1.3b", gpu_check.opt_tokenizer, "opt", 50272),
    "paper-llama-7b": ("huggyllama/llama-7b", gpu_check.llama_tokenizer, "llama", 32000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_paper_recipe_cell_on_the_real_architectures(name, tmp_path, hh_dir, hh_sample_texts, monkeypatch):
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
    recipe = load_recipe(name, {"train.max_steps": STEPS, "train.prompts_per_step": k, "train.bf16": False})
    assert recipe.train.max_length == 512 and recipe.train.eval_every == 500 and recipe.policy.dtype == "float32"

    # the policy: the real config, shrunk in depth and width only, loaded back by the real loader
    config = shrunk_config(model_id)
    real = compute_plan.load_config(model_id).to_dict()
    changed = {key for key, v in config.to_dict().items() if real.get(key) != v}
    assert changed <= set(gpu_check.SHRINK) and config.model_type == model_type and config.vocab_size == vocab
    assert str(real.get("torch_dtype") or real.get("dtype")).endswith("float16")     # what from_config would build
    tok = make_tokenizer(hh_sample_texts)
    folder = save_policy(model_id, tok, tmp_path / "policy")
    policy, tok = tiny_gpt.load_policy(dataclasses.replace(recipe.policy, model=str(folder)))
    assert {p.dtype for p in policy.parameters()} == {torch.float32}                  # fp32 master weights
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
    oa_tok = gpu_check.pythia_oa_tokenizer(hh_sample_texts)
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
    assert result["steps"] == STEPS and result["best_step"] == STEPS and set(result["dev_rewards"]) == {"0", "3"}
    assert finite_losses(run_dir)[-1] == result["final_train_loss"]
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


@pytest.mark.slow
def test_gpu_check_whole_path_runs_on_cpu_with_tiny_shapes(tmp_path, monkeypatch, capsys):
    """The rehearsal's whole path on CPU (shrunk models, short sequences): the smoke cell and the fixed-batch PRO loss,
    a cell of each paper recipe through train_run (its peak setting, its per-GPU batch plan, 5 optimizer steps), the
    generator, both RMs, the prompt-sharing table; one JSON that `divscale grid --plan --measured` reads."""
    from divscale import cli

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    assert gpu_check.run(out_json=str(tmp_path / "r.json"), device="cpu", tiny=True, work=tmp_path / "work") == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["failures"] == [] and r["smoke_cell"]["steps"] == 4 and r["smoke_cell"]["tokens_per_s"] > 0
    assert r["pro_loss"]["ok"] and r["pro_loss"]["abs_diff"] > 0     # bf16 really ran: not bit-equal
    for name in gpu_check.PAPER_RECIPES:
        cell, base = r["cells"][name], load_recipe(name)
        algo, n, plan = gpu_check.peak_setting(base)                 # the plan's largest-memory setting
        assert cell["setting"] == plan["peak_setting"] == f"{algo}-n{n}"
        assert (cell["per_device_prompts"], cell["grad_accum"]) == train.batch_plan(base.train, algo, n,
                                                                                    world=base.train.num_processes)
        assert cell["through"] == "train_run" and cell["fits"] and len(cell["step_s_all"]) == gpu_check.STEPS
        assert np.isfinite(cell["final_train_loss"]) and cell["tflops_per_s"] > 0 and cell["tokens_per_step"] > 0
        assert cell["generation"]["new_tokens_per_s"] > 0
    assert r["generator"]["per_prompt"]["rows_per_call"] == 2 and r["generator"]["batched"]["rows_per_call"] == 4
    assert r["rm"]["RM_test"]["pairs_per_s"] > 0 and r["rm"]["RM_train"]["finite"]
    rows = {(row["n"], row["path"]): row for row in r["sharing"]["rows"]}
    for n in (2, 3, 4):
        assert rows[(n, "naive")]["speed_vs_naive"] == 1.0
        for path in ("cache", "packed"):
            assert rows[(n, path)]["max_abs_logp_diff_per_token"] < 1e-4 and rows[(n, path)]["grad_rel_l2_diff"] < 1e-4
    assert "no backward on CPU" in rows[(4, "packed-flex")]["error"]               # FlexAttention trains on GPUs only
    assert (2, "packed-flex") not in rows                                          # compiled for n = 4 only
    out = capsys.readouterr().out
    assert "passed" in out and "prompt sharing on facebook/opt-1.3b" in out
    # the measured plan reads it
    assert cli.main(["grid", "--recipe", "paper-opt-1.3b", "--plan", "--measured", str(tmp_path / "r.json")]) == 0
    plan = capsys.readouterr().out
    assert "measured on cpu (make gpu-check)" in plan and "ranking generation" in plan and "evaluation" in plan


def test_gpu_check_quick_on_cpu(tmp_path, monkeypatch, capsys):
    """``--quick``: the smoke cell in bf16 and the fixed-batch PRO loss only (tiny-gpt, tiny OA RMs from .bin)."""
    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(gpu_check.tempfile, "mkdtemp", lambda *args, **kwargs: str(tmp_path / "work"))
    assert gpu_check.main(["--quick", "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["smoke_cell"]["steps"] == 4 and report["pro_loss"]["ok"] and "cells" not in report
    assert "passed" in capsys.readouterr().out


# ------------------------------------------------------------------------------------------- 2 processes

@pytest.mark.slow
def test_a_paper_cell_trains_on_two_processes_through_the_grid_entry_point(tmp_path, hh_sample_texts, monkeypatch,
                                                                           capfd):
    """paper-opt-1.3b's PRO n=4 cell as the grid runs it: ``pipeline.train_cell`` launches ``accelerate launch
    --config_file recipes/accelerate/ddp.yaml --num_processes 2 -m divscale.cli train`` (DDP; gloo on CPU), whose two
    processes build what the cell needs offline and train 3 steps on the real-loader policy, the per-GPU batch the
    recipe gives 2 processes (4 prompts each, no accumulation) and dev validation on the main process.
    Offline stand-ins: the HH test splits carved (the paper recipe's pool is the train splits), the shrunk models
    as local folders (the OA RMs and the generator; the generator's vocabulary cut to its tokenizer's, so that
    its random samples decode to text)."""
    from divscale.study import pipeline
    from divscale.tools.gpu_check import TOKENIZERS

    monkeypatch.setenv("DIVSCALE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "info")          # the Trainer's batch plan, to check below
    opt_tok = gpu_check.opt_tokenizer(hh_sample_texts)
    policy = save_policy("facebook/opt-1.3b", opt_tok, tmp_path / "policy")
    oa_tok = gpu_check.pythia_oa_tokenizer(hh_sample_texts)
    reward.register_gpt_neox_reward_model()
    for role, model_id in (("rm-train", RM_TRAIN), ("rm-test", RM_TEST)):
        torch.manual_seed(1)
        reward.GPTNeoXRewardModel(shrunk_config(model_id)).save_pretrained(tmp_path / role)
        oa_tok.save_pretrained(tmp_path / role)
    from transformers import AutoModelForCausalLM

    gen_tok = TOKENIZERS["qwen2"](hh_sample_texts)
    generator = AutoModelForCausalLM.from_config(gpu_check.shrunk_config("Qwen/Qwen2.5-7B-Instruct",
                                                                         vocab_size=len(gen_tok)))
    generator.save_pretrained(tmp_path / "generator")
    gen_tok.save_pretrained(tmp_path / "generator")
    R = load_recipe("paper-opt-1.3b", {
        "data.split_mode": "carve", "data.pool_size": 40, "data.dev_size": 2, "data.test_size": 4,
        "data.sizes": "[8]", "data.ranking_lengths": "[4]", "ranking.generator": str(tmp_path / "generator"),
        "ranking.max_new_tokens": 12, "reward.train_model": str(tmp_path / "rm-train"),
        "reward.test_model": str(tmp_path / "rm-test"), "policy.model": str(policy), "train.algos": "[pro]",
        "train.max_steps": STEPS, "train.prompts_per_step": 8, "train.num_processes": 2,
        "train.accelerate_config": "accelerate/ddp.yaml", "train.bf16": False, "train.eval_every": 2,
        "train.dev_max_new_tokens": 8})
    assert R.train.per_device_batch_by_n[4] == 4                    # the paper's per-GPU batch for PRO n=4
    run_dir = pipeline.train_cell(R, "pro", 4, 8, 42, runs_dir=tmp_path / "runs")
    out, err = capfd.readouterr()
    assert str(run_dir) in out
    assert "Instantaneous batch size per device = 4" in err and "Gradient Accumulation steps = 1" in err
    assert "Total train batch size (w. parallel, distributed & accumulation) = 8" in err     # 2 processes x 4
    result = json.loads((run_dir / "result.json").read_text())
    assert result["steps"] == STEPS and set(result["dev_rewards"]) == {"0", "2", "3"}
    assert finite_losses(run_dir)[-1] == result["final_train_loss"]
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["recipe"] == "paper-opt-1.3b" and saved["policy"]["model"] == str(policy)
    assert saved["policy"]["hub_kernels"] is False

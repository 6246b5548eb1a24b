"""``make gpu-check``: a rehearsal of the paper grid on one GPU, offline, before anyone rents the grid.

One prepared script (budget: 8 minutes on one H100/H200) with only what travels in the repository: the models'
real ``config.json`` (tests/fixtures/configs) with random weights, texts from the local HH-RLHF copy (else a
built-in synthetic set), tokenizers built here with the real special-token layouts; no hub, no network
(``HF_HUB_OFFLINE=1``, ``USE_HUB_KERNELS=NO``). It writes one JSON (``--json``) that
``divscale grid --plan --measured FILE`` reads in place of the plan's assumed utilisation and memory model.

1. **A full-size cell of each paper recipe** at its largest-memory setting (``divscale grid --plan``'s peak: PRO
   n=4): one GPU's share of the 112-prompt step (the recipe's per-GPU batch x gradient accumulation), the
   recipe's block (512) and prompt cut (384), bf16 mixed precision over fp32 master weights, >= 5 optimizer steps
   through ``train.runs.train_run``: step time, tokens/s, TFLOP/s (6·P·tokens) and peak memory beside the plan's
   prediction for one process without ZeRO. A setting that does not fit one GPU (LLaMA-7B: 16 bytes per parameter
   without ZeRO is about 100 GiB before activations) is recorded as such and measured at half depth (the real
   width, half the layers), labelled. Then the policy's greedy generation at the dev/eval settings (validation and
   evaluation answer with it).
2. **The ranking generator** (Qwen2.5-7B-Instruct): sampled generation of ``ranking.k`` answers per prompt with
   128 new tokens, as ``divscale.reward.rankings`` runs it (one prompt per call, float32: ``load_causal_lm``'s
   default) and batched (``eval.batch_size`` rows per call: what batching prompts would give).
3. **RM_test and RM_train scoring** (GPT-NeoX 6.9B / 1.4B Open-Assistant RMs, fp32): pairs/s in the OA format.
4. **The smoke cell on the device in bf16** and the **PRO loss on a fixed batch, CPU fp32 vs device bf16** (must
   agree within bf16 tolerance: ``|gpu - cpu| <= RTOL * |cpu| + ATOL``).
5. **Prompt sharing** (:func:`prompt_sharing_table`): naive vs every sharing path at the paper's shape (OPT-1.3B,
   384-token prompts + 128-token responses, n = 2, 3, 4): median step, speed ratio, peak memory, and the
   values and gradients against naive.

Without a CUDA device it prints why and exits 0. ``--device cpu --tiny`` runs the same path on the CPU with
shrunk models and short sequences (what the tests run). Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import gc
import gzip
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

RTOL, ATOL = 1e-2, 5e-2      # bf16 has 8 mantissa bits (~4e-3 relative per op); the loss sums ~100 token log-probs


SHRINK = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 4,
          "intermediate_size": 128, "ffn_dim": 128, "word_embed_proj_dim": 64}   # depth and width only


def shrunk_config(model_id: str, **changes):
    """A model's real config (``gpu_plan.load_config``: the fixtures offline) shrunk in depth and width only
    (:data:`SHRINK`, then ``changes``): vocabulary, positions, activations, norms, rotary settings, tying and
    special-token ids stay the real ones. What the CPU tests and the CPU run of this script train."""
    from divscale.tools.gpu_plan import load_config

    config = load_config(model_id)
    shrink = {**SHRINK, **changes}
    config.update({k: v for k, v in shrink.items() if k in config.to_dict()})
    if isinstance(getattr(config, "layer_types", None), list):       # one per layer (Qwen2): the first ones
        config.layer_types = config.layer_types[:config.num_hidden_layers]
    return config


def _texts_and_pairs(n: int = 200) -> tuple[list[str], list[tuple[str, str, str]], str]:
    """``(dialogues, [(prompt, chosen, rejected)], source)``."""
    from divscale import paths

    hh = paths.hh_data_dir()
    pairs = []
    if hh is not None and (hh / "helpful-base" / "test.jsonl.gz").exists():
        for subset in ("helpful-base", "harmless-base"):
            with gzip.open(hh / subset / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
                for line in fh:
                    rec = json.loads(line)
                    prompt, _, chosen = rec["chosen"].rpartition("\n\nAssistant:")
                    rejected = rec["rejected"].rpartition("\n\nAssistant:")[2]
                    if chosen.strip() and rejected.strip() and "\n\nHuman:" in prompt:
                        pairs.append((prompt + "\n\nAssistant:", chosen.strip()[:300], rejected.strip()[:300]))
                    if len(pairs) >= n // 2 * (1 + (subset == "harmless-base")):
                        break
        source = str(hh)
    else:
        import random

        rng = random.Random(0)
        topics = ["bread", "tea", "a bicycle", "my garden", "the weather", "python", "a letter", "running", "chess"]
        verbs = ["make", "fix", "improve", "learn about", "clean", "choose", "start", "explain"]
        for i in range(n):
            q = f"How do I {rng.choice(verbs)} {rng.choice(topics)}?"
            good = f"Here is a simple way to do it: first {rng.choice(verbs)} it, then take your time. " * 2
            pairs.append((f"\n\nHuman: {q}\n\nAssistant:", good.strip(), "I don't know."))
        source = "synthetic (no data/hh-rlhf here)"
    texts = [p + " " + c for p, c, _ in pairs]
    return texts, pairs, source


def _rankings(pairs, k: int) -> list[dict]:
    out = []
    for i in range(k):
        prompt, chosen, rejected = pairs[i]
        other = pairs[(i + 1) % len(pairs)][1]
        out.append({"id": f"check-{i}", "prompt": prompt, "responses": [chosen, other[:150], rejected, rejected[:20]],
                    "rewards": [1.5, 0.5, -0.25, -1.0]})
    return out


def _tiny_oa_rm(tokenizer, folder: Path, seed: int) -> Path:
    """A random 2-layer Open-Assistant-format GPT-NeoX RM saved as ``pytorch_model.bin`` (converted on load)."""
    import torch

    from divscale.reward import rm as reward

    reward.register_gpt_neox_reward_model()       # defines reward.GPTNeoXRewardModel(Config)
    GPTNeoXRewardModelConfig, GPTNeoXRewardModel = reward.GPTNeoXRewardModelConfig, reward.GPTNeoXRewardModel

    torch.manual_seed(seed)
    config = GPTNeoXRewardModelConfig(vocab_size=len(tokenizer), hidden_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, intermediate_size=128, max_position_embeddings=2048,
                                      pooling="last", eos_token_id=tokenizer.eos_token_id,
                                      pad_token_id=tokenizer.pad_token_id)
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(GPTNeoXRewardModel(config).state_dict(), folder / "pytorch_model.bin")
    return folder


def fixed_batch_pro_loss(model, batch: dict, device: str, bf16: bool) -> float:
    """The PRO training loss (L_PRO + beta L_SFT, with temperatures) of one collated batch on ``device``."""
    import copy

    import torch

    from divscale.train.logprobs import logprobs_from_ids
    from divscale.train.losses import pro_loss

    model = copy.deepcopy(model).to(device).eval()
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    with torch.no_grad(), torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logp_sum, n_tokens = logprobs_from_ids(model, inputs["prompt_ids"], inputs["prompt_mask"],
                                               inputs["completion_ids"], inputs["completion_mask"], share_prompt=False)
        scores = logp_sum / n_tokens
        loss = pro_loss(scores.float(), inputs["scores"].float(), sft_nll=-logp_sum[:, 0].float(), sft_weight=0.05)
    return float(loss)


def compare_pro_loss(model, tokenizer, rankings, recipe, device: str) -> dict:
    """CPU fp32 vs ``device`` bf16 on the first ``per_device_train_batch_size`` rankings (tokenised by the trainer's
    collator); ``ok`` within RTOL/ATOL."""
    from divscale.train.runs import cell_lengths
    from divscale.train.trainer import RankingCollator, model_positions, ranked_rows

    collator = RankingCollator(tokenizer, *cell_lengths(recipe, model_positions(model)))
    batch = collator(ranked_rows(rankings[:recipe.train.per_device_train_batch_size], 4))
    cpu = fixed_batch_pro_loss(model, batch, "cpu", bf16=False)
    other = fixed_batch_pro_loss(model, batch, device, bf16=True)
    tol = RTOL * abs(cpu) + ATOL
    return {"cpu_fp32": cpu, f"{device}_bf16": other, "abs_diff": abs(other - cpu), "tolerance": tol,
            "ok": abs(other - cpu) <= tol, "batch_shape": list(batch["completion_ids"].shape)}


# ------------------------------------------------------------------------------------------- shapes

PAPER_RECIPES = ("paper-opt-1.3b", "paper-llama-7b")
STEPS = 5                     # optimizer steps of each rehearsed cell
TINY = {"max_length": 64, "max_prompt_length": 40, "new_tokens": 8, "gen_batch": 4, "gen_batches": 1,
        "rm_pairs": 4, "sharing": {"prompt_tokens": 24, "response_tokens": 8, "batch": 2, "reps": 1}}
PAPER_SHAPE = {"prompt_tokens": 384, "response_tokens": 128, "batch": 4, "reps": 5}
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------- tokenizers

def _bpe(texts, special, metaspace=False, vocab=600):
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tmodels

    tok = Tokenizer(tmodels.BPE(unk_token="<unk>" if "<unk>" in special else None))
    if metaspace:                                   # SentencePiece-style (LLaMA-1)
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        alphabet = []
    else:                                           # byte-level (GPT-2 / OPT / GPT-NeoX / Qwen)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=special,
                                                       initial_alphabet=alphabet, show_progress=False))
    return tok


def opt_tokenizer(texts):
    """OPT's layout: ``</s>`` (2) as BOS and EOS, ``<pad>`` = 1, BOS prepended."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<s>", "<pad>", "</s>", "<unk>"])
    tok.post_processor = processors.TemplateProcessing(single="</s> $A", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", padding_side="right")


def llama_tokenizer(texts):
    """LLaMA-1's layout: ``<unk>``/``<s>``/``</s>`` = 0/1/2, BOS prepended, pad = eos (the paper's rule)."""
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast

    from divscale.models.hub import set_pad_token

    tok = _bpe(texts, ["<unk>", "<s>", "</s>"], metaspace=True)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   padding_side="left")
    return set_pad_token(fast)


OA_SPECIAL = ["<|prompter|>", "<|assistant|>", "<|system|>", "<|prefix_begin|>", "<|prefix_end|>"]


def pythia_oa_tokenizer(texts):
    """The Pythia / Open-Assistant RM layout: ``<|endoftext|>`` = 0, ``<|padding|>`` = 1, OA role tokens."""
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<|endoftext|>", "<|padding|>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|padding|>")
    fast.add_special_tokens({"additional_special_tokens": OA_SPECIAL})
    return fast


def qwen_tokenizer(texts):
    """A byte-level tokenizer with Qwen2.5's end tokens (``<|endoftext|>`` pad, ``<|im_end|>`` eos); no chat template
    (the HH text is the prompt, as for the paper's policies)."""
    from transformers import PreTrainedTokenizerFast

    tok = _bpe(texts, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   padding_side="left")


TOKENIZERS = {"opt": opt_tokenizer, "llama": llama_tokenizer, "qwen2": qwen_tokenizer,
              "gpt_neox_reward_model": pythia_oa_tokenizer}


def long_rankings(pairs, count: int, n: int, start: int = 0) -> list[dict]:
    """``count`` n-rankings at the paper's shape: each prompt several dialogues joined (far past 384 tokens: the
    collator keeps its last 384), each response several answers joined (past 128: the 512 block cuts it)."""
    out = []
    for b in range(count):
        group = [pairs[(start + b * 6 + j) % len(pairs)] for j in range(6)]
        prompt = "".join(p for p, _, _ in group)
        responses = [" ".join(g[1 + (i + j) % 2] for j, g in enumerate(group[i:] + group[:i])) for i in range(n)]
        out.append({"id": f"long-{start + b}", "prompt": prompt, "responses": responses,
                    "rewards": [float(n - i) for i in range(n)]})
    return out


# ------------------------------------------------------------------------------------------- measuring

def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / GIB if device.startswith("cuda") else None


def _free(device: str) -> None:
    import torch

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _random_model(config, device: str, dtype: str = "float32", classifier: bool = False):
    """A randomly initialised model of ``config`` built directly on ``device`` in ``dtype`` (what the loaders give:
    fp32 master weights for a policy whose ``policy.dtype`` is float32, whatever the config's ``torch_dtype``)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    auto = AutoModelForSequenceClassification if classifier else AutoModelForCausalLM
    with torch.device(device):
        return auto.from_config(config, dtype=getattr(torch, dtype))


def _is_oom(err: BaseException) -> bool:
    import torch

    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def _error(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:300] if text else ''}"


class StepTimer:
    """A TrainerCallback recording each optimizer step's wall time (the device synchronized at both ends)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        self.device, self.times, self._start = device, [], None
        timer = self

        class _Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                _sync(timer.device)
                timer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                _sync(timer.device)
                timer.times.append(time.perf_counter() - timer._start)

        self.callback = _Callback()

    def summary(self) -> dict:
        steady = self.times[1:] or self.times           # the first step compiles, checks and allocates
        return {"step_s_median": statistics.median(steady), "step_s_first": self.times[0] if self.times else None,
                "step_s_all": [round(t, 4) for t in self.times]}


# ------------------------------------------------------------------------------------------- 1. paper cells

def peak_setting(recipe) -> tuple[str, int, dict]:
    """``(algo, n, plan)`` of the recipe's largest-memory setting by the compute plan."""
    from divscale.tools.gpu_plan import plan

    p = plan(recipe, [])
    algo, n = p["peak_setting"].split("-n")
    return algo, int(n), p


def paper_cell(recipe_name: str, device: str, pairs, work: Path, tiny: bool = False, steps: int = STEPS) -> dict:
    """One GPU's share of a full-size step of the recipe's largest-memory setting, ``steps`` optimizer steps through
    ``train_run``; on out-of-memory, recorded, then the same at half depth."""
    from divscale.config import load_recipe
    from divscale.tools.gpu_plan import load_config
    from divscale.train.runs import batch_plan

    base = load_recipe(recipe_name)
    algo, n, plan_ = peak_setting(base)
    per_device, accum = batch_plan(base.train, algo, n, world=base.train.num_processes)
    model_id = base.policy.model
    config = shrunk_config(model_id) if tiny else load_config(model_id)
    layers = config.num_hidden_layers
    out = {"recipe": recipe_name, "model": model_id, "setting": f"{algo}-n{n}", "per_device_prompts": per_device,
           "grad_accum": accum, "world_in_recipe": base.train.num_processes, "steps": steps,
           "layers_full": layers, "plan_per_gpu_memory_gib_zero": plan_["per_gpu_memory_gib"]}
    oom = None
    try:
        out.update(_train_cell(base, config, algo, n, per_device, accum, device, pairs, work / "full", tiny, steps))
        out.update(fits=True, depth="full", layers_measured=layers)
    except Exception as err:      # an OOM is a finding, anything else a failure
        if not _is_oom(err):
            raise
        oom = _error(err)         # (the traceback, and the model its frames hold, is released after this block)
    if oom is not None:
        out.update(fits=False, oom=oom)
        _free(device)
        half = load_config(model_id) if not tiny else shrunk_config(model_id)
        half.num_hidden_layers = max(1, layers // 2)
        measured = _train_cell(base, half, algo, n, per_device, accum, device, pairs, work / "half", tiny, steps)
        out.update(measured, depth="half", layers_measured=half.num_hidden_layers,
                   note=f"{model_id} does not fit one GPU without ZeRO at this setting ({out['oom']}); measured "
                        f"with {half.num_hidden_layers} of {layers} layers (real width and sequence): time and "
                        "memory per layer scale about linearly, the embeddings and logits do not")
    _free(device)
    return out


def _train_cell(base, config, algo, n, per_device, accum, device, pairs, work, tiny, steps) -> dict:
    import torch

    from divscale.config import load_recipe
    from divscale.tools.gpu_plan import count_params, training_memory
    from divscale.train.runs import build_trainer, cell_lengths, train_run
    from divscale.train.trainer import RankingCollator, model_positions, ranked_rows

    cuda = device.startswith("cuda")
    share = per_device * accum
    overrides = {"train.max_steps": steps, "train.prompts_per_step": share, "train.num_processes": 1,
                 "train.accelerate_config": None, "train.eval_every": 10 ** 6, "train.bf16": cuda}
    if tiny:
        overrides.update({"train.max_length": TINY["max_length"], "train.max_prompt_length": TINY["max_prompt_length"]})
    recipe = load_recipe(base.name, overrides)
    t = recipe.train
    texts = [p + c for p, c, _ in pairs[:200]]
    tokenizer = TOKENIZERS[config.model_type](texts)
    rankings = long_rankings(pairs, share, n)
    max_length, max_prompt_length = cell_lengths(recipe, model_positions(config))
    collator = RankingCollator(tokenizer, max_length, max_prompt_length, best_only=algo == "sft")
    tokens = sum(len(p) + len(c) for p, cs in collator.encode(ranked_rows(rankings, n)) for c in cs)   # naive: n
                                                                                # prompt + response sequences
    _reset_peak(device)
    torch.manual_seed(0)
    model = _random_model(config, device, recipe.policy.dtype)
    params = count_params(model)
    timer = StepTimer(device)
    save_gb = 2 * params * 4 / 1e9                                           # final weights + best/ copy
    work.mkdir(parents=True, exist_ok=True)
    free_gb = shutil.disk_usage(work).free / 1e9
    start = time.perf_counter()
    if save_gb < 0.8 * free_gb:
        run_dir = train_run(recipe, algo, n, share, 42, grid={(n, share): rankings}, policy=(model, tokenizer),
                            policy_id=f"gpu-check:{config.model_type}:{params}", copy_policy=False,
                            runs_dir=work / "runs", callbacks=[timer.callback])
        result = json.loads((run_dir / "result.json").read_text())
        through, final_loss = "train_run", result.get("final_train_loss")
    else:       # the same Trainer, without train_run's final save (it would not fit this machine's disk)
        trainer = build_trainer(recipe, algo, n, 42, model, tokenizer, rankings, work / "trainer",
                                callbacks=[timer.callback])
        trainer.train()
        losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
        through = f"Trainer (train_run's final save needs {save_gb:.0f} GB, {free_gb:.0f} GB free on disk)"
        final_loss = losses[-1] if losses else None
    wall = time.perf_counter() - start
    peak = _peak_gib(device)
    timing = timer.summary()
    step = timing["step_s_median"]
    mem = training_memory(params, 1, 0, config.num_hidden_layers, config.hidden_size, config.vocab_size,
                          max_length, per_device * (1 if algo == "sft" else n))
    from divscale.tools.gpu_plan import PEAK_TFLOPS, UTILISATION

    plan_tokens = share * (1 if algo == "sft" else n) * max_length
    out = {"params": params, "through": through, "train_wall_s": round(wall, 2), "final_train_loss": final_loss,
           **timing, "tokens_per_step": tokens, "tokens_per_s": tokens / step,
           "tflops_per_s": 6 * params * tokens / step / 1e12,
           "peak_memory_gib": peak, "predicted_memory_gib_one_process": mem["total"] / GIB,
           "predicted_step_s_plan": 6 * params * plan_tokens / (PEAK_TFLOPS * 1e12 * UTILISATION),
           "max_length": max_length, "bf16": t.bf16}
    out["generation"] = generation_throughput(model, tokenizer, [p for p, _, _ in pairs[:64]], device,
                                              batch_size=TINY["gen_batch"] if tiny else recipe.eval.batch_size,
                                              max_new_tokens=TINY["new_tokens"] if tiny else recipe.eval.max_new_tokens,
                                              max_prompt_tokens=max_prompt_length,
                                              batches=TINY["gen_batches"] if tiny else 1)
    del model
    _free(device)
    return out


def generation_throughput(model, tokenizer, prompts, device: str, batch_size: int, max_new_tokens: int,
                          max_prompt_tokens: int, batches: int = 1, do_sample: bool = False,
                          temperature: float = 1.0, top_p: float = 1.0, rows_per_call: int | None = None) -> dict:
    """New tokens per second of :func:`divscale.models.generation.generate` (the code dev validation, evaluation and
    ranking use) on ``batches`` batches; EOS is never sampled early by random weights, so every row runs to
    ``max_new_tokens`` (an upper bound on time). ``rows_per_call``: rows per ``generate`` call (default the batch)."""
    from divscale.models.generation import generate

    rows = rows_per_call or batch_size
    take = [prompts[i % len(prompts)] for i in range(rows * batches)]
    generate(model, tokenizer, take[:min(2, len(take))], max_new_tokens=2, batch_size=2,
             max_prompt_tokens=max_prompt_tokens, stop_strings=())                          # warm-up
    _sync(device)
    start = time.perf_counter()
    for b in range(batches):
        generate(model, tokenizer, take[b * rows:(b + 1) * rows], max_new_tokens=max_new_tokens, batch_size=rows,
                 max_prompt_tokens=max_prompt_tokens, stop_strings=(), do_sample=do_sample,
                 temperature=temperature, top_p=top_p, seed=b)
    _sync(device)
    seconds = time.perf_counter() - start
    return {"rows_per_call": rows, "calls": batches, "max_new_tokens": max_new_tokens, "seconds": seconds,
            "new_tokens_per_s": rows * batches * max_new_tokens / seconds,
            "rows_per_s": rows * batches / seconds, "dtype": str(next(model.parameters()).dtype).replace("torch.", "")}


# ------------------------------------------------------------------------------------------- 2. the generator

def generator_throughput(device: str, pairs, tiny: bool = False, recipe_name: str = PAPER_RECIPES[0]) -> dict:
    """The ranking generator's sampled generation at its recipe configuration: ``ranking.k`` rows of one prompt per
    call (as :mod:`divscale.reward.rankings` runs it, in the recipe's ``ranking.dtype``) and ``eval.batch_size`` rows
    per call (batched: what batching prompts would give)."""
    from divscale.config import load_recipe
    from divscale.tools.gpu_plan import load_config

    recipe = load_recipe(recipe_name)
    r = recipe.ranking
    config = shrunk_config(r.generator) if tiny else load_config(r.generator)
    dtype = r.dtype
    tokenizer = TOKENIZERS[config.model_type]([p + c for p, c, _ in pairs[:200]])
    model = _random_model(config, device, dtype).eval()
    prompts = [p for p, _, _ in pairs[:64]]
    new = TINY["new_tokens"] if tiny else r.max_new_tokens
    kw = {"max_new_tokens": new, "max_prompt_tokens": r.max_prompt_tokens, "do_sample": True,
          "temperature": r.temperature, "top_p": r.top_p}
    per_prompt = generation_throughput(model, tokenizer, prompts, device, batch_size=r.k, rows_per_call=r.k,
                                       batches=2 if tiny else 3, **kw)
    batched = generation_throughput(model, tokenizer, prompts, device, batch_size=TINY["gen_batch"] if tiny
                                    else recipe.eval.batch_size, batches=1, **kw)
    out = {"model": r.generator, "params": sum(p.numel() for p in model.parameters()), "dtype": dtype,
           "k": r.k, "per_prompt": per_prompt, "batched": batched}
    del model
    _free(device)
    return out


# ------------------------------------------------------------------------------------------- 3. reward models

def rm_throughput(model_id: str, device: str, pairs, tiny: bool = False, dtype: str = "float32",
                  batch_size: int | None = None, n_pairs: int | None = None) -> dict:
    """Pairs per second of :meth:`divscale.reward.rm.OpenAssistantRM.score` (the OA format, left truncation, the RM's
    default batch) on a random-weight RM of ``model_id``'s real config."""
    from divscale.reward import rm as reward
    from divscale.tools.gpu_plan import load_config

    reward.register_gpt_neox_reward_model()
    config = shrunk_config(model_id) if tiny else load_config(model_id)
    tokenizer = pythia_oa_tokenizer([p + c for p, c, _ in pairs[:200]])
    tokenizer.truncation_side = "left"
    model = _random_model(config, device, dtype, classifier=True).eval()
    # the scoring code of OpenAssistantRM on this model (its constructor loads from a folder: here the weights are
    # random and a 6.9B fp32 folder would be 28 GB to write and read back)
    scorer = object.__new__(reward.OpenAssistantRM)
    scorer.__dict__.update(name=model_id, max_length=reward.OA_MAX_LENGTH, device=device, tokenizer=tokenizer)
    scorer.model = model
    batch = batch_size or reward.OpenAssistantRM.default_batch_size
    count = n_pairs or (TINY["rm_pairs"] if tiny else 4 * batch)
    prompts = [pairs[i % len(pairs)][0] for i in range(count)]
    responses = [" ".join(pairs[(i + j) % len(pairs)][1] for j in range(3)) for i in range(count)]
    scorer.score(prompts[:batch], responses[:batch], batch_size=batch)                   # warm-up
    _sync(device)
    start = time.perf_counter()
    scores = scorer.score(prompts, responses, batch_size=batch)
    _sync(device)
    seconds = time.perf_counter() - start
    out = {"model": model_id, "params": sum(p.numel() for p in model.parameters()), "dtype": dtype,
           "batch_size": batch, "pairs": count, "seconds": seconds, "pairs_per_s": count / seconds,
           "max_length": reward.OA_MAX_LENGTH, "finite": bool(all(math.isfinite(x) for x in scores))}
    del model, scorer
    _free(device)
    return out


# ------------------------------------------------------------------------------------------- 4. smoke cell

def smoke_cell(device: str, texts, pairs, tmp: Path) -> tuple[dict, dict]:
    """The smoke profile's PRO n=4 cell on ``device`` with ``train.bf16`` on a CUDA device (tiny-gpt policy, tiny
    Open-Assistant RMs from ``.bin`` for validation and evaluation), then the fixed-batch PRO loss CPU vs device."""
    import torch

    from divscale.config import load_recipe
    from divscale.models import tiny_gpt
    from divscale.reward import rm as reward
    from divscale.reward.evaluate import evaluate_checkpoint
    from divscale.train import runs as train
    from divscale.train.trainer import RankingCollator, model_positions, ranked_rows

    cuda = device.startswith("cuda")
    recipe = load_recipe("smoke", {"train.bf16": True})
    model, tokenizer = tiny_gpt.load_policy(recipe.policy, texts)            # tiny-gpt, BPE + warm-up (CPU, seconds)
    k = min(recipe.data.sizes)
    rankings = _rankings(pairs, k)
    rm_train = reward.OpenAssistantRM(_tiny_oa_rm(tokenizer, tmp / "rm-train", 1), device=device)
    rm_test = reward.OpenAssistantRM(_tiny_oa_rm(tokenizer, tmp / "rm-test", 2), device=device)
    _reset_peak(device)
    dev = [p for p, _, _ in pairs[k:k + recipe.data.dev_size]]
    run_dir = train.train_run(recipe, "pro", 4, k, 42, grid={(4, k): rankings}, policy=(model, tokenizer),
                              rm_train=rm_train, dev_prompts=dev, runs_dir=tmp / "runs")
    result = json.loads((run_dir / "result.json").read_text())
    collator = RankingCollator(tokenizer, *train.cell_lengths(recipe, model_positions(model)))
    per_ranking = sum(len(p) + len(c) for p, cs in collator.encode(ranked_rows(rankings, 4)) for c in cs) / len(rankings)
    tokens = result["steps"] * recipe.train.prompts_per_step * per_ranking
    test = {"helpful-base": [p for p, _, _ in pairs[-16:]]}
    ev = evaluate_checkpoint(run_dir / "best", load_recipe("smoke"), test, rm_test, tmp / "eval")
    cell = {"steps": result["steps"], "best_step": result["best_step"], "final_train_loss": result["final_train_loss"],
            "train_runtime_s": result["train_runtime_s"], "train_tokens": int(tokens),
            "tokens_per_s": tokens / max(result["train_runtime_s"], 1e-9),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / GIB if cuda else None, "test_reward": ev.reward}
    return cell, compare_pro_loss(model, tokenizer, rankings, recipe, device)


# ------------------------------------------------------------------------------------------- 5. prompt sharing

SHARING_PATHS = ("naive", "cache", "packed", "packed-flex")


def _sharing_batch(vocab: int, batch: int, n: int, prompt_tokens: int, response_tokens: int, device: str,
                   seed: int = 0) -> dict:
    import torch

    g = torch.Generator().manual_seed(seed + n)
    ids = lambda *shape: torch.randint(3, vocab, shape, generator=g).to(device)
    return {"prompt_ids": ids(batch, prompt_tokens),
            "prompt_mask": torch.ones(batch, prompt_tokens, dtype=torch.long, device=device),
            "completion_ids": ids(batch, n, response_tokens),
            "completion_mask": torch.ones(batch, n, response_tokens, dtype=torch.long, device=device),
            "scores": torch.arange(n, 0, -1, dtype=torch.float32, device=device).repeat(batch, 1)}


def _pro_step(model, data: dict, share, bf16: bool, device: str, backward: bool = True):
    """The PRO loss of one batch (as RankingTrainer computes it for the study) by one scoring path, then its
    backward."""
    import torch

    from divscale.train.logprobs import logprobs_from_ids
    from divscale.train.losses import pro_loss_parts

    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16, enabled=bf16):
        logp, count = logprobs_from_ids(model, data["prompt_ids"], data["prompt_mask"], data["completion_ids"],
                                        data["completion_mask"], share_prompt=share, pad_token_id=1)
        loss = pro_loss_parts(logp / count, data["scores"], sft_nll=-logp[:, 0]).total
    if backward:
        loss.backward()
    return logp.detach().float(), count, float(loss.detach())


def prompt_sharing_table(model_id: str = "facebook/opt-1.3b", device: str = "cuda", ns=(2, 3, 4),
                         batch: int = PAPER_SHAPE["batch"], prompt_tokens: int = PAPER_SHAPE["prompt_tokens"],
                         response_tokens: int = PAPER_SHAPE["response_tokens"], reps: int = PAPER_SHAPE["reps"],
                         shrink: dict | None = None, bf16: bool | None = None, paths=SHARING_PATHS,
                         flex_ns=(4,)) -> dict:
    """Naive vs every prompt-sharing path on ``model_id``'s real config (random weights, fp32 master weights, bf16
    autocast on CUDA), ``batch`` rankings of a ``prompt_tokens`` prompt + n ``response_tokens`` responses: the PRO
    forward + backward's median step over ``reps`` (after a warm-up), its speed against naive, the peak memory of
    the timed steps, and (in eval mode, before timing) the largest |log-prob| difference per token and the relative
    L2 difference of the gradients against naive. ``packed-flex``: the packed path with the model switched to
    FlexAttention (models that support it), at the n of ``flex_ns`` only (each new shape compiles it: about a
    minute). ``shrink``: :func:`shrunk_config` changes (CPU tests)."""
    import torch

    from divscale.tools.gpu_plan import count_params, load_config
    from divscale.train import logprobs as lp

    cuda = device.startswith("cuda")
    bf16 = cuda if bf16 is None else bf16
    config = shrunk_config(model_id, **shrink) if shrink is not None else load_config(model_id)
    torch.manual_seed(0)
    model = _random_model(config, device)
    params = count_params(model)
    base_impl = lp.attention_implementation(model)
    usable = [p for p in paths if p != "packed-flex" or getattr(model, "_supports_flex_attn", False)]
    unrunnable = {"packed-flex": "not run: FlexAttention has no backward on CPU (it trains on CUDA)"} if not cuda else {}
    rows = []
    for n in ns:
        data = _sharing_batch(config.vocab_size, batch, n, prompt_tokens, response_tokens, device)
        checks, ref = {}, None
        here = [p for p in usable if p != "packed-flex" or n in flex_ns]
        for path in here:                                 # 1. values and gradients against naive (eval mode)
            share = {"naive": False, "packed-flex": "packed"}.get(path, path)
            if path in unrunnable:
                checks[path] = {"error": unrunnable[path]}
                continue
            try:
                model.set_attn_implementation("flex_attention" if path == "packed-flex" else base_impl)
                model.eval()
                model.zero_grad(set_to_none=True)
                logp, count, loss = _pro_step(model, data, share, bf16, device)
                grads = [p.grad.detach().float() for p in model.parameters() if p.grad is not None]
                if path == "naive":
                    ref = (logp, grads, loss)
                    checks[path] = {"loss": loss}
                else:
                    num = sum(float((g - r).double().pow(2).sum()) for g, r in zip(grads, ref[1]))
                    den = sum(float(r.double().pow(2).sum()) for r in ref[1])
                    checks[path] = {"loss": loss, "max_abs_logp_diff_per_token":
                                    float(((logp - ref[0]).abs() / count.clamp(min=1)).max()),
                                    "grad_rel_l2_diff": (num / max(den, 1e-30)) ** 0.5}
                del grads
            except Exception as err:  # noqa: BLE001 - a path that fails is a row of the table, the others go on
                checks[path] = {"error": _error(err)}
            model.zero_grad(set_to_none=True)
        ref = None
        _free(device)
        naive_s = None
        for path in here:                                   # 2. timing (train mode, as in training)
            row = {"n": n, "path": path, **checks[path]}
            if "error" not in checks[path]:
                share = {"naive": False, "packed-flex": "packed"}.get(path, path)
                try:
                    model.set_attn_implementation("flex_attention" if path == "packed-flex" else base_impl)
                    model.train()
                    _pro_step(model, data, share, bf16, device)
                    model.zero_grad(set_to_none=True)
                    _reset_peak(device)
                    times = []
                    for _ in range(reps):
                        _sync(device)
                        start = time.perf_counter()
                        _pro_step(model, data, share, bf16, device)
                        model.zero_grad(set_to_none=True)
                        _sync(device)
                        times.append(time.perf_counter() - start)
                    row.update(median_s=statistics.median(times), peak_memory_gib=_peak_gib(device))
                    naive_s = row["median_s"] if path == "naive" else naive_s
                    row["speed_vs_naive"] = naive_s / row["median_s"] if naive_s else None
                except Exception as err:  # noqa: BLE001
                    row["error"] = _error(err)
                model.zero_grad(set_to_none=True)
                _free(device)
            rows.append(row)
    model.set_attn_implementation(base_impl)
    auto = lp.choose_path(model, device.split(":")[0], prompt_tokens + response_tokens)[0]
    del model
    _free(device)
    return {"model": model_id, "params": params, "device": device, "bf16": bf16, "batch": batch,
            "prompt_tokens": prompt_tokens, "response_tokens": response_tokens, "reps": reps,
            "attention": base_impl, "default_path_here": auto, "rows": rows}


def format_sharing_table(table: dict) -> str:
    """The table as the issue prints it: one line per (n, path)."""
    title = (f"prompt sharing on {table['model']} ({table['params'] / 1e9:.2f}B params, {table['device']}, "
             f"{'bf16 autocast' if table['bf16'] else 'fp32'}), {table['batch']} rankings of a "
             f"{table['prompt_tokens']}-token prompt + n x {table['response_tokens']}-token responses, median of "
             f"{table['reps']}; share_prompt=True picks '{table['default_path_here']}' here")
    header = (f"{'n':>2} {'path':<12} {'median s':>9} {'vs naive':>9} {'peak GiB':>9} {'|dlogp|/tok':>12} "
              f"{'grad rel':>9}")
    lines = [title, header]
    for r in table["rows"]:
        if "error" in r:
            lines.append(f"{r['n']:>2} {r['path']:<12} {r['error']}")
            continue
        fmt = lambda v, spec: format(v, spec) if isinstance(v, (int, float)) else "-"
        lines.append(f"{r['n']:>2} {r['path']:<12} {fmt(r.get('median_s'), '9.3f')} "
                     f"{fmt(r.get('speed_vs_naive'), '8.2f')}x {fmt(r.get('peak_memory_gib'), '9.1f')} "
                     f"{fmt(r.get('max_abs_logp_diff_per_token'), '12.2e')} {fmt(r.get('grad_rel_l2_diff'), '9.2e')}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the script

def run(quick: bool = False, out_json: str | None = None, device: str | None = None, tiny: bool = False,
        work: str | os.PathLike | None = None) -> int:
    """The rehearsal on ``device`` (default: CUDA, and a clean exit 0 without one). ``tiny``: shrunk models and short
    sequences (the CPU test of this script's whole path). ``quick``: the smoke cell and the PRO loss check only.
    ``work``: the scratch folder (default: a new temporary one, removed at the end)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")     # deterministic cuBLAS (the Trainer asks for it)
    import torch

    if device is None and not torch.cuda.is_available():
        print(f"gpu-check: no CUDA device here (torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'})"
              "; nothing to check. Run `make gpu-check` on a GPU machine with a CUDA build of torch "
              "(make setup TORCH_SPEC='torch --index-url https://download.pytorch.org/whl/cu124').")
        return 0
    device = device or "cuda"
    cuda = device.startswith("cuda")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["USE_HUB_KERNELS"] = "NO"            # belt and braces: every loader also passes use_kernels=False
    tmp = Path(work) if work is not None else Path(tempfile.mkdtemp(prefix="divscale-gpu-check-"))
    tmp.mkdir(parents=True, exist_ok=True)
    os.environ["DIVSCALE_CACHE"] = str(tmp / "cache")
    import transformers

    t0 = time.time()
    name = torch.cuda.get_device_name(0) if cuda else device
    print(f"gpu-check on {name} (torch {torch.__version__}, CUDA {torch.version.cuda}, transformers "
          f"{transformers.__version__}); work dir {tmp}", flush=True)
    texts, pairs, source = _texts_and_pairs()
    print(f"texts: {len(texts)} dialogues from {source}", flush=True)
    report: dict = {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
                    "cuda": torch.version.cuda, "texts": source, "tiny": tiny, "steps": STEPS}
    failures = []

    def save() -> None:            # after every stage: a run stopped by its time limit keeps what it measured
        report["seconds"] = round(time.time() - t0, 1)
        report["failures"] = failures
        if out_json:
            Path(out_json).parent.mkdir(parents=True, exist_ok=True)
            Path(out_json).write_text(json.dumps(report, indent=1, default=str))

    def stage(label, fn):
        start = time.time()
        try:
            out = fn()
        except Exception as err:  # noqa: BLE001 - recorded; the other stages still run
            out = {"error": _error(err)}
            failures.append(f"{label}: {_error(err)}")
        print(f"[{label}] {time.time() - start:.0f} s", flush=True)
        _free(device)
        return out

    def cell(recipe_name):
        c = report["cells"][recipe_name] = stage(f"cell {recipe_name}", lambda: paper_cell(
            recipe_name, device, pairs, tmp / recipe_name, tiny=tiny))
        if "error" not in c:
            print(f"  {recipe_name} {c['setting']} ({c['depth']} depth, {c['layers_measured']} layers): "
                  f"{c['step_s_median']:.2f} s/step, {c['tokens_per_s']:,.0f} tokens/s, {c['tflops_per_s']:.0f} "
                  f"TFLOP/s, peak {c['peak_memory_gib'] or 0:.1f} GiB (plan, one process: "
                  f"{c['predicted_memory_gib_one_process']:.1f} GiB); greedy generation "
                  f"{c['generation']['new_tokens_per_s']:,.0f} tokens/s", flush=True)
        save()

    smoke = stage("smoke cell + PRO loss", lambda: smoke_cell(device, texts, pairs, tmp / "smoke"))
    if isinstance(smoke, tuple):
        report["smoke_cell"], report["pro_loss"] = smoke
        cmp = report["pro_loss"]
        print(f"  smoke cell: {report['smoke_cell']['steps']} steps, loss {report['smoke_cell']['final_train_loss']:.4f}; "
              f"PRO loss cpu fp32 {cmp['cpu_fp32']:.5f} vs {device} bf16 {cmp[device + '_bf16']:.5f} "
              f"(|diff| {cmp['abs_diff']:.2e} <= {cmp['tolerance']:.2e}: {'ok' if cmp['ok'] else 'FAILED'})")
        if not cmp["ok"]:
            failures.append("PRO loss CPU vs device outside bf16 tolerance")
    else:
        report["smoke_cell"] = smoke
    save()
    if not quick:                  # the most telling first (a run cut by its time limit loses the last)
        report["cells"] = {}
        cell(PAPER_RECIPES[0])
        shape = TINY["sharing"] if tiny else PAPER_SHAPE
        report["sharing"] = stage("prompt sharing", lambda: prompt_sharing_table(
            device=device, shrink={} if tiny else None, **shape))
        if "rows" in report["sharing"]:
            print(format_sharing_table(report["sharing"]), flush=True)
        save()
        from divscale.config import load_recipe

        rew = load_recipe(PAPER_RECIPES[0]).reward
        report["rm"] = {}
        for role, model_id, dtype in (("RM_test", rew.test_model, rew.test_dtype),
                                      ("RM_train", rew.train_model, rew.dtype)):
            report["rm"][role] = stage(role, lambda m=model_id, d=dtype: rm_throughput(m, device, pairs, tiny=tiny,
                                                                                      dtype=d))
        report["generator"] = stage("ranking generator", lambda: generator_throughput(device, pairs, tiny=tiny))
        save()
        for recipe_name in PAPER_RECIPES[1:]:
            cell(recipe_name)
    save()
    print(f"gpu-check: {'passed' if not failures else 'FAILED: ' + '; '.join(failures)} in {report['seconds']} s")
    if work is None:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if not failures else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m divscale.tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the smoke cell and the PRO loss check only")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    parser.add_argument("--device", default=None, help="default: cuda (exit 0 without one); cpu: test this script")
    parser.add_argument("--tiny", action="store_true", help="shrunk models, short sequences (with --device cpu)")
    args = parser.parse_args(argv)
    return run(quick=args.quick, out_json=args.json, device=args.device, tiny=args.tiny)


if __name__ == "__main__":
    sys.exit(main())

"""The compute plan of a recipe before any GPU is rented: ``divscale grid --recipe R --plan [--json]``.

Nothing is downloaded and no weight is allocated: each model is built from its ``config.json`` on the meta device
(``torch.device("meta")``) to count its parameters. The config comes from a local folder, the local Hugging Face
cache, the configs kept in ``tests/fixtures/configs/<owner>--<name>/config.json`` (the paper's models and the
gpu-1 policy, values from their model pages), or, online, the hub.

The arithmetic (all stated, all approximate, checked against a hand-computed case in tests/test_compute_plan.py):

* **Per-GPU training memory** for P policy parameters on W processes, bf16 mixed precision, AdamW:

  - DeepSpeed ZeRO-2 (the recipe's ``accelerate_config`` says ``zero_stage: 2``): bf16 weights 2P on every GPU;
    bf16 gradients 2P/W, fp32 master weights 4P/W and Adam m, v 8P/W partitioned (Rajbhandari et al. 2020, K=12);
  - no DeepSpeed (one GPU, the Trainer's bf16 autocast): fp32 weights 4P, fp32 gradients 4P, Adam 8P;
  - activations, no checkpointing, SDPA/flash attention (no s x s scores kept):
    ``34 * s * b * h * L`` bytes (Korthikanti et al. 2022, bf16) plus the logits ``s * b * V * 6`` bytes (bf16
    logits and their fp32 log-softmax), for b = the micro-batch in *sequences* (per-GPU prompts x sequences per
    prompt: SFT 1, PRO n) and s = ``train.max_length`` (every sequence at full length: an upper bound);
  - the main process also holds RM_train for validation (its weights in ``reward.dtype``).

  The largest (algo, n) of the grid is ``per_gpu_memory_gib``; every (algo, n) is listed.
* **Tokens** per cell: ``max_steps x prompts_per_step x sequences per prompt x block_size`` (an upper bound).
* **GPU-hours** per cell: ``6 x P x tokens / (peak x utilisation) / 3600`` (forward + backward; validation,
  generation and RM scoring are not counted), at ``PEAK_TFLOPS`` (A100/H100-class bf16 dense) and ``UTILISATION``.

**Measured** (``--measured FILE``, the JSON of ``make gpu-check``, :func:`measured_plan`): the assumed utilisation
and memory model give way to what the rehearsal measured on one GPU, stage by stage (ranking generation,
training, validation, evaluation), each as GPU-hours of work and as node-hours on the recipe's W-GPU node (the
grid runs one cell at a time holding all W GPUs; stages that use one GPU leave the others idle):

* training: the rehearsed setting's measured throughput (6·P·tokens/s of one GPU's share of a step) for every
  setting, ``6 x P x tokens / measured`` (data-parallel communication not measured: a lower bound);
* ranking generation: ``max(data.sizes)`` prompts x ``ranking.k`` rows x ``max_new_tokens`` at the generator's
  measured rate (one prompt per call, as divscale runs it), plus RM_train scoring of every candidate;
* validation: per cell, ``max_steps / eval_every + 1`` rounds of the dev prompts (policy generation at its
  measured rate, RM_train scoring), on the main process while the other GPUs wait;
* evaluation: per cell, the test prompts (``PAPER_TEST_PROMPTS`` when the recipe keeps all of them) answered by
  the policy and scored by RM_test;
* memory: the per-GPU estimate scaled by measured / predicted peak of the rehearsed setting (one process, no
  ZeRO, same model and micro-batch).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

from divscale import paths

PEAK_TFLOPS = 312.0        # A100 bf16 dense peak (an H100 SXM is ~989: divide the hours by ~2-3)
UTILISATION = 0.40         # model FLOPs utilisation assumed for full fine-tuning at 512 tokens
GIB = 1024 ** 3
PAPER_TEST_PROMPTS = 8552  # the four HH-RLHF test splits (the paper's test set)
CONFIG_FIXTURES = paths.ROOT / "tests" / "fixtures" / "configs"


# --------------------------------------------------------------------------------------------------
# configs and parameter counts (meta device)


def fixture_config_path(model_id: str) -> Path:
    return CONFIG_FIXTURES / model_id.replace("/", "--") / "config.json"


def load_config(model_id: str):
    """The transformers config of ``model_id`` without its weights (see the module docstring for the order)."""
    from transformers import AutoConfig

    from divscale.paths import hub_offline
    from divscale.reward.rm import register_gpt_neox_reward_model

    register_gpt_neox_reward_model()
    local = Path(model_id).expanduser()
    if (local / "config.json").exists():
        return AutoConfig.from_pretrained(local, trust_remote_code=False)
    if model_id.count("/") == 1:
        from huggingface_hub import hf_hub_download

        try:
            cached = hf_hub_download(model_id, "config.json", local_files_only=True)
        except (OSError, ValueError):   # not in the local HF cache (LocalEntryNotFoundError is an OSError)
            cached = None
        if cached:
            return AutoConfig.from_pretrained(Path(cached).parent, trust_remote_code=False)
        if fixture_config_path(model_id).exists():
            return AutoConfig.from_pretrained(fixture_config_path(model_id).parent, trust_remote_code=False)
        if not hub_offline():
            path = hf_hub_download(model_id, "config.json")
            return AutoConfig.from_pretrained(Path(path).parent, trust_remote_code=False)
    raise ValueError(f"no config.json for {model_id!r}: not a local folder, not in the HF cache, not in "
                     f"{CONFIG_FIXTURES}. Fix: set HF_HUB_OFFLINE=0 with network, or add "
                     f"{fixture_config_path(model_id)}")


def meta_model(config):
    """The model of ``config`` on the meta device (no memory): a causal LM, or a sequence classifier for RMs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    is_rm = config.model_type == "gpt_neox_reward_model" or any(
        a.endswith(("ForSequenceClassification", "RewardModel")) for a in (config.architectures or []))
    with torch.device("meta"):
        if is_rm:
            return AutoModelForSequenceClassification.from_config(config, trust_remote_code=False)
        return AutoModelForCausalLM.from_config(config, trust_remote_code=False)


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())   # tied weights once


@dataclasses.dataclass
class Arch:
    params: int
    layers: int
    hidden: int
    vocab: int


def architecture(config) -> Arch:
    model = meta_model(config)
    get = lambda *names: next(getattr(config, n) for n in names if getattr(config, n, None) is not None)
    return Arch(params=count_params(model), layers=int(get("num_hidden_layers", "n_layer")),
                hidden=int(get("hidden_size", "n_embd")), vocab=int(get("vocab_size")))


def policy_architecture(recipe) -> Arch:
    if recipe.policy.model != "tiny-gpt":
        return architecture(load_config(recipe.policy.model))
    from transformers import GPT2Config

    p = recipe.policy
    return architecture(GPT2Config(vocab_size=p.vocab_size, n_positions=p.block_size, n_embd=p.n_embd,
                                   n_layer=p.n_layer, n_head=p.n_head))


# --------------------------------------------------------------------------------------------------
# the arithmetic


def zero_stage(recipe) -> int:
    """0 without an accelerate config, else its ``deepspeed_config.zero_stage`` (0 when it is not DeepSpeed)."""
    import yaml

    if not recipe.train.accelerate_config:
        return 0
    cfg = yaml.safe_load((paths.RECIPES_DIR / recipe.train.accelerate_config).read_text()) or {}
    if str(cfg.get("distributed_type", "")).upper() != "DEEPSPEED":
        return 0
    return int((cfg.get("deepspeed_config") or {}).get("zero_stage", 0))


def training_memory(params: int, world: int, stage: int, layers: int, hidden: int, vocab: int, seq: int,
                    micro_seqs: int, rm_bytes: int = 0) -> dict[str, float]:
    """Per-GPU training memory in bytes by part (see the module docstring)."""
    if stage >= 2:
        parts = {"weights": 2 * params, "gradients": 2 * params / world, "optimizer": 12 * params / world}
    elif stage == 1:
        parts = {"weights": 2 * params, "gradients": 2 * params, "optimizer": 12 * params / world}
    else:
        parts = {"weights": 4 * params, "gradients": 4 * params, "optimizer": 8 * params}
    parts["activations"] = 34 * seq * micro_seqs * hidden * layers + 6 * seq * micro_seqs * vocab
    parts["rm_train"] = rm_bytes
    parts["total"] = sum(parts.values())
    return parts


def cell_tokens(max_steps: int, prompts_per_step: int, seqs_per_prompt: int, block_size: int) -> int:
    return max_steps * prompts_per_step * seqs_per_prompt * block_size


def gpu_hours(params: int, tokens: int, peak_tflops: float = PEAK_TFLOPS, utilisation: float = UTILISATION) -> float:
    return 6 * params * tokens / (peak_tflops * 1e12 * utilisation) / 3600


_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def plan(recipe, cells, peak_tflops: float = PEAK_TFLOPS, utilisation: float = UTILISATION,
         measured: dict | None = None) -> dict:
    """The whole plan of a recipe as one JSON-able dict; ``cells`` are its grid cells (objects with
    ``algo`` and ``ranking_len``: ``grid_runner.expand_grid(recipe)``, passed in by the caller so that
    this lower module never imports the grid runner). ``measured``: a ``make gpu-check`` JSON
    (:func:`measured_plan`, under the key ``measured``)."""
    from divscale.train.runs import batch_plan, sequences_per_prompt

    t = recipe.train
    world = t.num_processes
    stage = zero_stage(recipe)
    policy = policy_architecture(recipe)
    models = {recipe.policy.model: {"role": "policy", "params": policy.params, "layers": policy.layers,
                                    "hidden": policy.hidden, "vocab": policy.vocab}}
    rm_train_params = 0
    for role, spec, dtype in (("RM_train", recipe.reward.train_model, recipe.reward.dtype),
                              ("RM_test", recipe.reward.test_model, recipe.reward.test_dtype)):
        if spec == "inproject":
            continue
        arch = architecture(load_config(spec))
        entry = models.setdefault(spec, {"role": role, "params": arch.params, "layers": arch.layers,
                                         "hidden": arch.hidden, "vocab": arch.vocab})
        if entry["role"] != role:
            entry["role"] = f"{entry['role']}+{role}"
        entry["inference_gib"] = arch.params * _BYTES.get(dtype, 4) / GIB
        if role == "RM_train":
            rm_train_params = arch.params * _BYTES.get(dtype, 4)
    gen = recipe.ranking.generator
    try:
        arch = architecture(load_config(gen))
        models.setdefault(gen, {"role": "generator", "params": arch.params, "layers": arch.layers,
                                "hidden": arch.hidden, "vocab": arch.vocab, "inference_gib": arch.params * 2 / GIB})
    except ValueError:
        models.setdefault(gen, {"role": "generator", "params": None, "note": "config not available offline"})
    by_setting, cells_out = {}, []
    block = t.max_length if t.max_length is not None else recipe.policy.block_size   # unset: the policy's positions
    for algo in t.algos:
        for n in recipe.data.ranking_lengths:
            per_device, accum = batch_plan(t, algo, n, world=world)
            seqs = sequences_per_prompt(algo, n)
            mem = training_memory(policy.params, world, stage, policy.layers, policy.hidden, policy.vocab,
                                  block, per_device * seqs, rm_train_params)
            tokens = cell_tokens(t.max_steps, t.prompts_per_step, seqs, block)
            by_setting[f"{algo}-n{n}"] = {
                "per_device_prompts": per_device, "grad_accum": accum, "micro_batch_sequences": per_device * seqs,
                "memory_gib": {k: v / GIB for k, v in mem.items()}, "tokens_per_cell": tokens,
                "gpu_hours_per_cell": gpu_hours(policy.params, tokens, peak_tflops, utilisation)}
    for cell in cells:
        cells_out.append(by_setting[f"{cell.algo}-n{cell.ranking_len}"])
    total_tokens = sum(c["tokens_per_cell"] for c in cells_out)
    total_hours = sum(c["gpu_hours_per_cell"] for c in cells_out)
    peak_key = max(by_setting, key=lambda k: by_setting[k]["memory_gib"]["total"])
    out = {
        "recipe": recipe.name, "models": models, "world": world, "zero_stage": stage,
        "mixed_precision": "bf16" if t.bf16 else "fp32", "block_size": block,
        "per_gpu_memory_gib": by_setting[peak_key]["memory_gib"]["total"], "peak_setting": peak_key,
        "settings": by_setting, "cells": len(cells_out), "tokens": total_tokens,
        "flops": 6 * policy.params * total_tokens, "gpu_hours": total_hours,
        "wall_hours": total_hours / max(world, 1), "peak_tflops": peak_tflops, "utilisation": utilisation,
        "assumptions": ("6*params*tokens training FLOPs at peak_tflops*utilisation; tokens at block_size; memory: "
                        "ZeRO-2 2P+14P/W, or 16P without DeepSpeed, + 34*s*b*h*L + 6*s*b*V activations + RM_train "
                        "on the main process; validation/generation/RM scoring not counted"),
    }
    if measured is not None:
        out["measured"] = measured_plan(recipe, cells, out, measured)
    return out


def _measured_cell(recipe, measured: dict) -> dict:
    """The rehearsal's cell for ``recipe`` (by recipe name, else by policy model), or a clear error."""
    cells = measured.get("cells") or {}
    cell = cells.get(recipe.name) or next((c for c in cells.values() if isinstance(c, dict)
                                           and c.get("model") == recipe.policy.model), None)
    if not cell or "error" in cell or not cell.get("tflops_per_s"):
        why = (cell or {}).get("error", "no cell for it")
        raise ValueError(f"the measured file has no usable cell for recipe {recipe.name} (policy "
                         f"{recipe.policy.model}): {why}. Fix: run `make gpu-check` on the GPU (it rehearses "
                         f"{', '.join(cells) or 'the paper recipes'}) and pass its JSON")
    return cell


def _rate(stage: dict | None, key: str, what: str) -> float:
    if not stage or "error" in stage or not stage.get(key):
        raise ValueError(f"the measured file has no {what} ({(stage or {}).get('error', 'missing')}). Fix: rerun "
                         "`make gpu-check` to completion and pass its JSON")
    return float(stage[key])


def measured_plan(recipe, cells, p: dict, measured: dict) -> dict:
    """GPU-hours per stage and per-GPU memory from a ``make gpu-check`` JSON (see the module docstring)."""
    t, world = recipe.train, max(recipe.train.num_processes, 1)
    cell = _measured_cell(recipe, measured)
    params = p["models"][recipe.policy.model]["params"]
    flops = cell["tflops_per_s"] * 1e12                      # one GPU, bf16 mixed precision, the rehearsed setting
    layers = cell.get("layers_full") or 1
    depth = (cell.get("layers_measured") or layers) / layers  # a half-depth measurement: per-layer costs scale up
    gen = cell.get("generation") or {}
    policy_tok_s = _rate(gen, "new_tokens_per_s", f"policy generation for {recipe.name}") * depth
    generator = measured.get("generator") or {}
    gen_tok_s = _rate(generator.get("per_prompt"), "new_tokens_per_s", "ranking generator throughput")
    rms = measured.get("rm") or {}
    rm_train = _rate(rms.get("RM_train"), "pairs_per_s", "RM_train scoring throughput")
    rm_test = _rate(rms.get("RM_test"), "pairs_per_s", "RM_test scoring throughput")
    train_gpu_s = sum(6 * params * c["tokens_per_cell"] / flops for c in
                      (p["settings"][f"{x.algo}-n{x.ranking_len}"] for x in cells))
    grid_prompts = max(recipe.data.sizes)
    ranking_s = grid_prompts * recipe.ranking.k * recipe.ranking.max_new_tokens / gen_tok_s + \
        grid_prompts * (2 + recipe.ranking.k) / rm_train
    rounds = t.max_steps // t.eval_every + 1 + (t.max_steps % t.eval_every > 0) if t.checkpoint == "best-dev" else 0
    dev = recipe.data.dev_size
    validation_s = len(cells) * rounds * (dev * t.dev_max_new_tokens / policy_tok_s + dev / rm_train)
    cap = recipe.eval.test_prompts_per_subset
    test = cap * len(recipe.data.subsets) if cap else (recipe.data.test_size or PAPER_TEST_PROMPTS)
    eval_s = len(cells) * test * (recipe.eval.max_new_tokens / policy_tok_s + 1 / rm_test)
    # wall time on a W-GPU node: training splits over W GPUs, everything else runs on one while the rest wait
    stages = {"ranking generation": (ranking_s, ranking_s), "training": (train_gpu_s, train_gpu_s / world),
              "validation": (validation_s, validation_s), "evaluation": (eval_s, eval_s)}
    hours = {k: {"gpu_hours": busy / 3600, "node_hours": wall / 3600, "gpus_held": world}
             for k, (busy, wall) in stages.items()}
    ratio = (cell["peak_memory_gib"] / cell["predicted_memory_gib_one_process"]
             if cell.get("peak_memory_gib") and cell.get("predicted_memory_gib_one_process") else None)
    return {"device": measured.get("device"), "cell": {k: cell.get(k) for k in (
                "setting", "depth", "layers_measured", "layers_full", "step_s_median", "tokens_per_s",
                "tflops_per_s", "peak_memory_gib", "predicted_memory_gib_one_process", "fits", "note")},
            "training_tflops_per_s": cell["tflops_per_s"],
            "utilisation_vs_plan_peak": cell["tflops_per_s"] / p["peak_tflops"],
            "policy_generation_tokens_per_s": policy_tok_s, "generator_tokens_per_s": gen_tok_s,
            "rm_train_pairs_per_s": rm_train, "rm_test_pairs_per_s": rm_test, "test_prompts": test,
            "validation_rounds": rounds, "stages": hours,
            "gpu_hours": sum(h["gpu_hours"] for h in hours.values()),
            "node_hours": sum(h["node_hours"] for h in hours.values()),
            "memory_ratio_measured_vs_model": ratio,
            "per_gpu_memory_gib": p["per_gpu_memory_gib"] * ratio if ratio else None,
            "notes": ("training at the rehearsed setting's measured rate for every setting, communication not "
                      "measured; generation/validation/evaluation at the rates measured on one GPU"
                      + ("; the policy was measured at half depth: its rates scaled by the layers measured / "
                         "all layers" if depth < 1 else ""))}


def _human(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.3g}"


def format_plan(p: dict) -> str:
    parallel = f"DeepSpeed ZeRO-{p['zero_stage']}" if p["zero_stage"] else "no DeepSpeed"
    lines = [(f"plan for recipe {p['recipe']}: {p['cells']} cells on {p['world']} GPU(s), {parallel}, "
              f"{p['mixed_precision']}, block {p['block_size']}")]
    lines.append("models (full size, counted on the meta device):")
    for mid, m in p["models"].items():
        params = f"{m['params']:,}" if m.get("params") else "?"
        extra = f", {m['inference_gib']:.1f} GiB to score/generate" if m.get("inference_gib") else ""
        lines.append(f"  {m['role']:<16} {mid}: {params} params{extra}")
    lines.append("per-GPU training memory (GiB: weights + grads + Adam + activations + RM_train on main = total):")
    for key, s in p["settings"].items():
        g = s["memory_gib"]
        lines.append(f"  {key:<7} {s['per_device_prompts']} prompts x GA {s['grad_accum']} "
                     f"({s['micro_batch_sequences']} seqs/micro-batch): {g['weights']:.1f} + {g['gradients']:.1f} + "
                     f"{g['optimizer']:.1f} + {g['activations']:.1f} + {g['rm_train']:.1f} = {g['total']:.1f}")
    lines.append(f"  peak: {p['per_gpu_memory_gib']:.1f} GiB ({p['peak_setting']})")
    lines.append(f"tokens: {_human(p['tokens'])} ({p['tokens']:,}; at block_size), training FLOPs 6*P*tokens = "
                 f"{p['flops']:.3g}")
    lines.append(f"estimated: {p['gpu_hours']:,.0f} GPU-hours ({p['wall_hours']:,.0f} h wall on {p['world']} GPUs) at "
                 f"{p['peak_tflops']:g} TFLOP/s x {p['utilisation']:.0%} utilisation (validation/eval not counted)")
    return "\n".join(lines)


def format_measured(m: dict) -> str:
    c = m["cell"]
    head = (f"measured on {m['device']} (make gpu-check): {c['setting']} at {c['depth']} depth, "
            f"{c['step_s_median']:.2f} s per step of one GPU's share, {c['tokens_per_s']:,.0f} tokens/s, "
            f"{m['training_tflops_per_s']:.0f} TFLOP/s ({m['utilisation_vs_plan_peak']:.0%} of the plan's "
            f"assumed peak); peak memory {c['peak_memory_gib'] or float('nan'):.1f} GiB (model: "
            f"{c['predicted_memory_gib_one_process']:.1f} GiB, one process, no ZeRO)")
    lines = [head]
    if m["per_gpu_memory_gib"]:
        lines.append(f"  per-GPU memory, the model scaled by measured/predicted "
                     f"({m['memory_ratio_measured_vs_model']:.2f}): {m['per_gpu_memory_gib']:.1f} GiB")
    lines.append(f"  {'stage':<20} {'GPU-hours':>10} {'node-hours':>11}")
    for stage, h in m["stages"].items():
        lines.append(f"  {stage:<20} {h['gpu_hours']:>10,.1f} {h['node_hours']:>11,.1f}")
    lines.append(f"  {'total':<20} {m['gpu_hours']:>10,.1f} {m['node_hours']:>11,.1f}   (node = "
                 f"{next(iter(m['stages'].values()))['gpus_held']} GPUs held; {m['notes']})")
    return "\n".join(lines)


def print_plan(recipe, cells, as_json: bool = False, measured: dict | None = None) -> None:
    p = plan(recipe, cells, measured=measured)
    print(json.dumps(p, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x)
          if as_json else format_plan(p) + ("\n" + format_measured(p["measured"]) if "measured" in p else ""))

"""``make gpu-check``: is this GPU machine ready for the paper recipes? One prepared script, a few minutes on one
H100/H200, with only what travels in the repository (no hub, no network: tiny models the project builds here).

1. **The smoke profile's cell on CUDA in bf16**: a PRO n=4 cell of ``recipes/smoke.yaml`` (its tiny-gpt policy, block,
   batch plan, steps and validation) with ``train.bf16: true``; RM_train (dev validation) and RM_test (evaluation)
   are tiny random GPT-NeoX reward models in the Open-Assistant format, saved as a ``.bin`` checkpoint and converted
   like the hub's (fp32 scoring). Prints training tokens/s and peak GPU memory.
2. **PRO loss on a fixed batch, CPU fp32 vs GPU bf16**: the same weights and batch; the losses must agree within
   bf16 tolerance (``|gpu - cpu| <= RTOL * |cpu| + ATOL``).
3. **Full-size throughput** (skip with ``--quick``): OPT-1.3B built from its real config (tests/fixtures/configs, random
   weights, no download), AdamW, bf16 autocast, micro-batch 8 x 512: tokens/s, achieved TFLOP/s (6 P tokens / s)
   and peak memory -- the figure to put against ``divscale grid --plan``'s assumed utilisation.

Texts come from the local HH-RLHF copy (``data/hh-rlhf``) when there is one, else from a built-in synthetic set.
Without a CUDA device it prints why and exits 0 (nothing to check). Exit 1 when a check fails.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import tempfile
import time
from pathlib import Path

RTOL, ATOL = 1e-2, 5e-2      # bf16 has 8 mantissa bits (~4e-3 relative per op); the loss sums ~100 token log-probs


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
    """CPU fp32 vs ``device`` bf16 on the first ``per_device_batch`` rankings; ``ok`` within RTOL/ATOL."""
    from divscale.train.runs import cell_lengths
    from divscale.train.trainer import RankingCollator, model_positions, ranked_rows

    collator = RankingCollator(tokenizer, *cell_lengths(recipe, model_positions(model)))
    batch = collator(ranked_rows(rankings[:recipe.train.per_device_train_batch_size], 4))
    cpu = fixed_batch_pro_loss(model, batch, "cpu", bf16=False)
    other = fixed_batch_pro_loss(model, batch, device, bf16=True)
    tol = RTOL * abs(cpu) + ATOL
    return {"cpu_fp32": cpu, f"{device}_bf16": other, "abs_diff": abs(other - cpu), "tolerance": tol,
            "ok": abs(other - cpu) <= tol, "batch_shape": list(batch["completion_ids"].shape)}


def full_size_throughput(steps: int = 10, batch: int = 8, seq: int = 512) -> dict:
    """OPT-1.3B (real config, random weights) training steps on CUDA in bf16 autocast: tokens/s and TFLOP/s."""
    import torch
    from transformers import AutoModelForCausalLM

    from divscale.tools.gpu_plan import count_params, load_config

    torch.cuda.reset_peak_memory_stats()
    config = load_config("facebook/opt-1.3b")
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    params = count_params(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.01)
    ids = torch.randint(4, config.vocab_size, (batch, seq), device="cuda")
    model.train()

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start = time.time()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    seconds = time.time() - start
    tokens = steps * batch * seq
    out = {"model": "facebook/opt-1.3b (config only, random weights)", "params": params,
           "micro_batch": [batch, seq], "tokens_per_s": tokens / seconds,
           "tflops_per_s": 6 * params * tokens / seconds / 1e12,
           "peak_memory_gib": torch.cuda.max_memory_allocated() / 1024 ** 3}
    return out


def run(quick: bool = False, out_json: str | None = None, device: str | None = None) -> int:
    """The checks on ``device`` (default: CUDA, and a clean exit 0 without one; ``"cpu"`` runs steps 1-2 on the CPU,
    for testing this script where there is no GPU)."""
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
    tmp = Path(tempfile.mkdtemp(prefix="divscale-gpu-check-"))
    os.environ["DIVSCALE_CACHE"] = str(tmp / "cache")
    from divscale.config import load_recipe
    from divscale.models import tiny_gpt
    from divscale.reward import rm as reward
    from divscale.train import runs as train
    from divscale.train.trainer import RankingCollator, model_positions, ranked_rows

    t0 = time.time()
    name = torch.cuda.get_device_name(0) if cuda else device
    print(f"gpu-check on {name} (torch {torch.__version__}, CUDA {torch.version.cuda}); work dir {tmp}")
    recipe = load_recipe("smoke", {"train.bf16": True})
    texts, pairs, source = _texts_and_pairs()
    print(f"texts: {len(texts)} dialogues from {source}")
    model, tokenizer = tiny_gpt.load_policy(recipe.policy, texts)             # tiny-gpt, BPE + warm-up (CPU, seconds)
    k = min(recipe.data.sizes)
    rankings = _rankings(pairs, k)
    rm_train = reward.OpenAssistantRM(_tiny_oa_rm(tokenizer, tmp / "rm-train", 1), device=device)
    rm_test = reward.OpenAssistantRM(_tiny_oa_rm(tokenizer, tmp / "rm-test", 2), device=device)
    report: dict = {"device": name, "torch": torch.__version__, "texts": source}

    # 1. the smoke cell on CUDA, bf16
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    dev = [p for p, _, _ in pairs[k:k + recipe.data.dev_size]]
    run_dir = train.train_run(recipe, "pro", 4, k, 42, grid={(4, k): rankings}, policy=(model, tokenizer),
                              rm_train=rm_train, dev_prompts=dev, runs_dir=tmp / "runs")
    result = json.loads((run_dir / "result.json").read_text())
    collator = RankingCollator(tokenizer, *train.cell_lengths(recipe, model_positions(model)))
    per_ranking = sum(len(p) + len(c) for p, cs in collator.encode(ranked_rows(rankings, 4)) for c in cs) / len(rankings)
    tokens = result["steps"] * recipe.train.prompts_per_step * per_ranking
    from divscale.reward.evaluate import evaluate_checkpoint

    test = {"helpful-base": [p for p, _, _ in pairs[-16:]]}
    ev = evaluate_checkpoint(run_dir / "best", load_recipe("smoke"), test, rm_test, tmp / "eval")
    cell = {"steps": result["steps"], "best_step": result["best_step"], "final_train_loss": result["final_train_loss"],
            "train_runtime_s": result["train_runtime_s"], "train_tokens": int(tokens),
            "tokens_per_s": tokens / max(result["train_runtime_s"], 1e-9),
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 1024 ** 3 if cuda else float("nan"),
            "test_reward": ev.reward}
    report["smoke_cell"] = cell
    print(f"[1] smoke cell pro n=4 k={k} bf16 on {device}: {cell['steps']} steps, loss {cell['final_train_loss']:.4f}, "
          f"{cell['tokens_per_s']:,.0f} train tokens/s (incl. dev validation), peak {cell['peak_memory_gib']:.2f} GiB; "
          f"evaluated with RM_test on {sum(map(len, test.values()))} prompts")

    # 2. the PRO loss on a fixed batch, CPU fp32 vs CUDA bf16
    cmp = compare_pro_loss(model, tokenizer, rankings, recipe, device)
    report["pro_loss"] = cmp
    print(f"[2] PRO loss, fixed batch {cmp['batch_shape']}: cpu fp32 {cmp['cpu_fp32']:.5f}, {device} bf16 "
          f"{cmp[device + '_bf16']:.5f}, |diff| {cmp['abs_diff']:.2e} <= {cmp['tolerance']:.2e}: "
          f"{'ok' if cmp['ok'] else 'FAILED'}")

    # 3. full-size throughput
    if not quick and cuda:
        thr = full_size_throughput()
        torch.cuda.empty_cache()
        report["full_size"] = thr
        print(f"[3] OPT-1.3B full size, bf16 autocast + AdamW, micro-batch 8 x 512: {thr['tokens_per_s']:,.0f} "
              f"tokens/s, {thr['tflops_per_s']:.0f} TFLOP/s (6 P tokens/s), peak {thr['peak_memory_gib']:.1f} GiB")
    report["seconds"] = round(time.time() - t0, 1)
    print(f"gpu-check: {'passed' if cmp['ok'] else 'FAILED'} in {report['seconds']} s")
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(report, indent=1, default=str))
    return 0 if cmp["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m divscale.tools.gpu_check", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="skip the full-size OPT-1.3B throughput step")
    parser.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    args = parser.parse_args(argv)
    return run(quick=args.quick, out_json=args.json)


if __name__ == "__main__":
    sys.exit(main())

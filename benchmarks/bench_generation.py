"""Throughput of ``divscale.models.generation.generate``: batch 1 vs batch 8 (and per-row sampling) in one run.

    .venv/bin/python benchmarks/bench_generation.py [--prompts 16] [--new-tokens 48] [--no-smollm2]

Models: the cpu recipe's tiny GPT (4 layers, 256 wide, random weights, BPE trained on the prompts)
and, if it can be resolved offline, SmolLM2-135M-Instruct (chat template). Generated tokens are
counted from ``model.generate``'s output (non-pad tokens after the prompt, up to EOS), so tokens/s
is what the model actually produced. Stop strings are off so every row runs to EOS or the limit.
Ratios are against batch 1 measured in the same run (the machine may be shared).
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

from divscale.config import PolicyConfig
from divscale.data.hh import load_hh_rlhf
from divscale.models.generation import format_prompt, generate


def count_tokens(model, tokenizer):
    """Wrap ``model.generate`` to count the tokens it really generated."""
    counter = {"tokens": 0}
    original = model.generate
    eos = tokenizer.eos_token_id

    def wrapped(*args, **kw):
        out = original(*args, **kw)
        width = kw["input_ids"].shape[1]
        pad = kw.get("pad_token_id")
        for row in out[:, width:].tolist():
            for tok in row:
                if tok == eos or tok == pad:
                    break
                counter["tokens"] += 1
        return out

    model.generate = wrapped
    return counter


def bench(name, model, tokenizer, prompts, new_tokens, runs):
    counter = count_tokens(model, tokenizer)
    texts = [format_prompt(p, tokenizer) for p in prompts]
    generate(model, tokenizer, texts[:2], max_new_tokens=4, stop_strings=())      # warm-up
    base = None
    for label, kw in runs:
        counter["tokens"] = 0
        start = time.perf_counter()
        generate(model, tokenizer, texts, max_new_tokens=new_tokens, stop_strings=(), **kw)
        secs = time.perf_counter() - start
        tps = counter["tokens"] / secs
        base = base or tps
        print(f"{name:28s} {label:22s} {counter['tokens']:6d} tok {secs:7.2f} s {tps:8.1f} tok/s "
              f"{len(texts) / secs:6.2f} samples/s  x{tps / base:.2f} vs batch 1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1 is fastest for these small models on a shared machine)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = load_hh_rlhf(("harmless-base", "helpful-base"))
    prompts = [p for p in data["prompt"][:400] if len(p) < 1500][:args.prompts]
    print(f"torch threads {torch.get_num_threads()}, {len(prompts)} HH test prompts, "
          f"{args.new_tokens} new tokens")
    runs = [("greedy batch 1", dict(batch_size=1)), ("greedy batch 8", dict(batch_size=8)),
            ("sampled batch 8", dict(batch_size=8, do_sample=True, temperature=0.7, top_p=0.9))]

    from divscale.models.tiny_gpt import build_tiny_gpt, train_bpe_tokenizer

    texts = list(data["prompt"][:2000])
    cfg = PolicyConfig()
    tokenizer = train_bpe_tokenizer(texts, 2048, cache=False)
    model = build_tiny_gpt(cfg, tokenizer, seed=0).eval()
    bench(f"tiny-gpt ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M)", model, tokenizer, prompts,
          args.new_tokens, runs)

    if not args.no_smollm2:
        from divscale.models.hub import SMOLLM2_ID, load_causal_lm

        try:
            model, tokenizer = load_causal_lm(SMOLLM2_ID)
        except Exception as err:  # noqa: BLE001 - a benchmark reports what it could not run
            print(f"SmolLM2 skipped: {err}")
            return
        bench("SmolLM2-135M-Instruct", model, tokenizer, prompts[:8], min(args.new_tokens, 32), runs)


if __name__ == "__main__":
    main()

"""PRO step with the prompt encoded once (divscale.train.logprobs) vs one full sequence per candidate, same process.

Two modes. The default (CPU): the figures below. ``--device cuda --model facebook/opt-1.3b``: the model's real
config with random weights (fp32 master weights under bf16 autocast on CUDA), ``--batch`` rankings (default 4) of a
384-token prompt + n 128-token responses, n = 2, 3, 4, every sharing path (naive, cache, packed, and packed with
FlexAttention where the model supports it): median step, speed against naive, peak memory, and the values and
gradients against naive (:func:`divscale.tools.gpu_check.prompt_sharing_table`, which ``make gpu-check`` also
runs); ``--tiny`` shrinks the model and the sequences (the CPU test of that mode).

What is timed: forward + backward of the PRO loss (spec §3.3: length-normalised scores, reward-gap temperatures,
beta * summed NLL of the top response) on a batch of ``--batch`` rankings at the paper's shape -- every prompt
left-truncated to 384 tokens, every prompt + response right-truncated to the 512-token block (responses of
128+ tokens; a prompt decoded and re-tokenised may come back a few tokens shorter), tokenised by
:class:`divscale.train.trainer.RankingCollator` -- scored either with ``share_prompt=False`` (the baseline: n full
``prompt + response`` sequences per ranking in one forward pass) or with ``share_prompt=True`` (the device's path:
on CPU the prompt once into a KV cache, repeated n times, then the n responses) or ``"packed"`` (one block-masked
sequence per ranking). The modes run alternately on the same model and batch in this process; the figures are
medians over ``--reps`` steps after one warm-up step each, and the losses are checked to agree first.

Model: a randomly initialised GPT-2 of about 20M parameters (6 layers, 512 dims, 8 heads, 512 positions, BPE
vocab 2048 trained on HH text), dropout 0, fp32, ``torch.set_num_threads(--threads)`` (default 1).
Data: HH-RLHF test dialogues; prompts are several dialogues joined (so they exceed 384 tokens), responses are
chosen/rejected answers joined (so they exceed 128 tokens).

Memory: peak resident set size of a fresh subprocess per (n, mode) that loads the same weights and batch and
runs one step: ``VmHWM`` from ``/proc/self/status``, its mark reset to the current RSS (``/proc/self/clear_refs``
"5") just before the step; ``step_peak_mb`` is that peak minus the RSS just before the step (model, batch and
libraries already loaded). Not ``getrusage``'s ``ru_maxrss``: Linux carries it over fork + exec, so every child
would report at least the parent's RSS. tracemalloc does not see torch's allocations, hence the subprocesses.

Usage: ``python benchmarks/bench_listwise.py [--reps 3] [--batch 2] [--json]``; with ``--json`` the last line is
a JSON object with ``speedup_n2``, ``speedup_n3``, ``speedup_n4`` (the default path on this device, ``share_prompt=True``:
the KV cache on CPU), ``speedup_packed_nX`` (the packed path) and the memory figures.
``--loss-curves`` instead trains a cpu-recipe-like cell both ways (tiny-gpt shape, 60 steps x 4 prompts,
lr 5e-4, PRO n = 2, 3, 4 and SFT) and prints the max |loss difference| along the curve and of the final weights.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import build_tokenizer  # the benchmarks folder is on sys.path above

from divscale.train.logprobs import logprobs_from_ids
from divscale.train.losses import pro_loss_parts
from divscale.train.trainer import RankingCollator, ranked_rows

PROMPT_TOKENS, RESPONSE_TOKENS = 384, 128
BLOCK = PROMPT_TOKENS + RESPONSE_TOKENS
MODEL = {"n_embd": 512, "n_layer": 6, "n_head": 8, "n_positions": BLOCK}


def build_model(vocab: int, pad_id: int, **shape):
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(vocab_size=vocab, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, pad_token_id=pad_id,
                        bos_token_id=0, eos_token_id=0, **shape)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config)


def long_rankings(recs: list[dict], batch: int, n: int) -> list[dict]:
    """Rankings whose prompts exceed 384 tokens and responses 128 (joined HH dialogues / answers)."""
    out = []
    for b in range(batch):
        group = recs[b * 8:(b + 1) * 8]
        prompt = "".join(r["prompt"] for r in group)
        responses = [" ".join(r["responses"][i % 2] for r in group[i:] + group[:i]) for i in range(n)]
        out.append({"prompt": prompt, "responses": responses, "rewards": [float(n - i) for i in range(n)]})
    return out


def step(model, batch: dict, share) -> float:
    """One PRO forward + backward, scored and combined as RankingTrainer does for the study (``share``: False for one
    full sequence per response, True for the device's shared path, or a path name of divscale.train.logprobs)."""
    logp, count = logprobs_from_ids(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"],
                                    batch["completion_mask"], share_prompt=share, pad_token_id=1)
    loss = pro_loss_parts(logp / count, batch["scores"], sft_nll=-logp[:, 0]).total
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def hwm_mb() -> float:
    """This process's peak RSS (VmHWM) in MiB. Not getrusage's ru_maxrss: Linux carries that over fork + exec,
    so a child spawned by a big parent reports at least the parent's RSS at the fork."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_probe(path: str, mode: str, threads: int) -> None:
    """Subprocess: load weights + batch, reset the peak-RSS mark, run one step, print the peak as JSON."""
    torch.set_num_threads(threads)
    saved = torch.load(path, weights_only=False)
    model = build_model(saved["vocab"], 1, **MODEL)
    model.load_state_dict(saved["state"])
    model.train()
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as fh:        # "5": reset VmHWM to the current RSS (Linux >= 4.0)
            fh.write("5")
        reset = True
    except OSError:
        pass
    before = rss_mb()
    step(model, saved["batch"], mode == "shared")
    peak = hwm_mb()
    print(json.dumps({"rss_before_mb": before, "peak_rss_mb": peak, "step_peak_mb": peak - before,
                      "hwm_reset": reset}))


def probe(path: str, mode: str, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--_probe", path, mode, "--threads", str(threads)],
                         capture_output=True, text=True, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench(args) -> dict:
    from bench_train import hh_rankings

    recs, texts = hh_rankings(per_subset=20)
    tokenizer = build_tokenizer(texts)
    model = build_model(len(tokenizer), tokenizer.pad_token_id, **MODEL).train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: GPT-2 {n_params / 1e6:.1f}M params ({MODEL['n_layer']} layers, {MODEL['n_embd']} dims), vocab "
          f"{len(tokenizer)}, prompt {PROMPT_TOKENS} / response {RESPONSE_TOKENS} tokens, {args.batch} rankings per "
          f"step, {args.threads} thread(s), median of {args.reps} steps after a warm-up")
    result: dict = {"n_params": n_params, "batch": args.batch, "threads": args.threads, "reps": args.reps,
                    "prompt_tokens": PROMPT_TOKENS, "response_tokens": RESPONSE_TOKENS,
                    "memory_method": "peak RSS (VmHWM, reset just before the step) of a fresh subprocess per (n, mode), "
                                     "one step; step_peak = peak - RSS before the step"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (2, 3, 4):
            batch = RankingCollator(tokenizer, BLOCK, PROMPT_TOKENS)(ranked_rows(long_rankings(recs, args.batch, n)))
            p_len = batch["prompt_mask"].sum(-1)                  # <= 384 (decoded and re-tokenised), the
            assert (p_len <= PROMPT_TOKENS).all()                 # response fills the block to 512 (paper rule)
            assert (p_len[:, None] + batch["completion_mask"].sum(-1) == BLOCK).all()
            modes = (False, True, "packed")
            losses = {mode: step(model, batch, mode) for mode in modes}                      # warm-up, same loss
            for mode in modes[1:]:
                assert abs(losses[False] - losses[mode]) <= 1e-4 * max(1.0, abs(losses[False])), losses
            times: dict = {mode: [] for mode in modes}
            for _ in range(args.reps):
                for mode in modes:
                    start = time.perf_counter()
                    step(model, batch, mode)
                    times[mode].append(time.perf_counter() - start)
            naive, shared, packed = (statistics.median(times[m]) for m in modes)
            row = {"naive_s": naive, "shared_s": shared, "speedup": naive / shared, "packed_s": packed,
                   "speedup_packed": naive / packed, "prompt_lens": p_len.tolist(),
                   "loss_diff": max(abs(losses[False] - losses[m]) for m in modes[1:])}
            if not args.no_memory:
                path = str(Path(tmp) / f"n{n}.pt")
                torch.save({"vocab": len(tokenizer), "state": model.state_dict(), "batch": batch}, path)
                mem = {mode: probe(path, mode, args.threads) for mode in ("naive", "shared")}
                row.update({f"{mode}_{k}": v for mode, m in mem.items() for k, v in m.items()})
                row["memory_ratio"] = mem["naive"]["step_peak_mb"] / mem["shared"]["step_peak_mb"]
            result[f"speedup_n{n}"] = row["speedup"]
            result[f"speedup_packed_n{n}"] = row["speedup_packed"]
            result[f"n{n}"] = row
            line = (f"PRO n={n}: naive {naive:.2f} s, shared prompt {shared:.2f} s -> {row['speedup']:.2f}x, packed "
                    f"{packed:.2f} s -> {row['speedup_packed']:.2f}x (|loss diff| {row['loss_diff']:.1e})")
            if not args.no_memory:
                line += (f"; step peak RSS naive {row['naive_step_peak_mb']:.0f} MB, shared "
                         f"{row['shared_step_peak_mb']:.0f} MB -> {row['memory_ratio']:.2f}x less "
                         f"(process peaks {row['naive_peak_rss_mb']:.0f} / {row['shared_peak_rss_mb']:.0f} MB)")
            print(line, flush=True)
    for n in (2, 3, 4):
        if not args.no_memory:
            result[f"peak_mb_naive_n{n}"] = result[f"n{n}"]["naive_step_peak_mb"]
            result[f"peak_mb_shared_n{n}"] = result[f"n{n}"]["shared_step_peak_mb"]
            result[f"memory_ratio_n{n}"] = result[f"n{n}"]["memory_ratio"]
    return result


def loss_curves(args) -> dict:
    """Train a cpu-recipe-like cell with and without the shared prompt; compare the curves and final weights."""
    import copy

    from bench_train import hh_rankings
    from datasets import Dataset
    from transformers import PrinterCallback

    from divscale.data.ranked import RANKED_FEATURES
    from divscale.train.trainer import RankingConfig, RankingTrainer

    recs, texts = hh_rankings(per_subset=60)                     # 240 4-rankings
    tokenizer = build_tokenizer(texts)
    base = build_model(len(tokenizer), tokenizer.pad_token_id, n_embd=128, n_layer=4, n_head=4, n_positions=192)
    out: dict = {"shape": "tiny-gpt 4x128, vocab 2048, block 192, prompt <= 128, 60 steps x 4 prompts, lr 5e-4"}
    with tempfile.TemporaryDirectory() as tmp:
        for n in (1, 2, 3, 4):
            curves, weights = {}, {}
            for share in (False, True):
                model = copy.deepcopy(base)
                cfg = RankingConfig(output_dir=f"{tmp}/{n}{share}", use_cpu=True,
                                    loss_type=["sft" if n == 1 else "pro"], use_temperature=n > 1,
                                    sft_reduction="sequence_sum", max_length=192, max_prompt_length=128,
                                    max_steps=args.steps, per_device_train_batch_size=4, learning_rate=5e-4,
                                    max_grad_norm=1.0, logging_steps=1, save_strategy="no", seed=42, data_seed=42,
                                    disable_tqdm=True, share_prompt=share, loss_balance_steps=0,
                                    disable_dropout=False)
                data = Dataset.from_list(ranked_rows(recs[:240], n), features=RANKED_FEATURES)
                trainer = RankingTrainer(model=model, args=cfg, train_dataset=data, processing_class=tokenizer)
                trainer.remove_callback(PrinterCallback)
                trainer.train()
                curves[share] = [r["loss"] for r in trainer.state.log_history if "loss" in r]
                weights[share] = torch.cat([p.detach().flatten() for p in model.parameters()])
            diff = max(abs(a - b) for a, b in zip(curves[False], curves[True]))
            wdiff = (weights[False] - weights[True]).abs().max().item()
            name = "sft" if n == 1 else f"pro_n{n}"
            out[name] = {"max_abs_loss_diff": diff, "max_abs_weight_diff": wdiff, "final_loss": curves[True][-1],
                         "steps": len(curves[True])}
            print(f"{name}: {len(curves[True])} steps, max |loss(shared) - loss(full)| = {diff:.2e}, "
                  f"max |weight diff| = {wdiff:.2e}, final loss {curves[True][-1]:.4f}", flush=True)
    return out


def model_table(args) -> dict:
    """The naive vs shared table on a real model config (random weights): gpu_check.prompt_sharing_table."""
    from divscale.tools.gpu_check import PAPER_SHAPE, TINY, format_sharing_table, prompt_sharing_table

    shape = dict(TINY["sharing"] if args.tiny else PAPER_SHAPE)
    shape["batch"] = args.batch_model or shape["batch"]
    if args.reps_model:
        shape["reps"] = args.reps_model
    table = prompt_sharing_table(args.model, device=args.device, shrink={} if args.tiny else None, **shape)
    print(format_sharing_table(table), flush=True)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=2, help="rankings (prompts) per step")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-RSS subprocesses")
    parser.add_argument("--loss-curves", action="store_true", help="compare training curves instead of timing")
    parser.add_argument("--steps", type=int, default=60, help="--loss-curves: training steps")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    parser.add_argument("--batch-model", type=int, default=None, help="with --model: rankings per step (default 4)")
    parser.add_argument("--reps-model", type=int, default=None, help="with --model: timed steps (default 5)")
    parser.add_argument("--model", default=None, help="a model id: its real config, random weights (the table mode)")
    parser.add_argument("--device", default="cpu", help="with --model: cpu or cuda")
    parser.add_argument("--tiny", action="store_true", help="with --model: shrunk model, short sequences (tests)")
    parser.add_argument("--_probe", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args._probe:
        memory_probe(args._probe[0], args._probe[1], args.threads)
        return
    if args.model:
        result = model_table(args)
    else:
        result = loss_curves(args) if args.loss_curves else bench(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

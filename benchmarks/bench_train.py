"""Training-step speed, each number against a baseline measured in the same run on the same model and data.

1. PRO step (forward + backward of the PRO loss on b prompts x n candidates): all b*n full sequences in ONE
   forward pass (divscale.train.logprobs.logprobs_from_ids, share_prompt=False) vs n separate forward passes, one
   per candidate (the official code; each pass pads to its own longest sequence). Both give the same loss.
2. SFT throughput: our SFT step (RankingTrainer, loss_type sft, the paper's summed NLL) vs TRL's SFTTrainer on the same
   prompt-completion data (completion-only loss), same model init, batch, max length and optimizer;
   response+prompt tokens processed per second of training.

Model: the cpu recipe's tiny-gpt shape (GPT-2, 4 layers, 128 dims, BPE vocab 2048 trained on HH text),
randomly initialised. Data: HH-RLHF test pairs made into 4-rankings (chosen, rejected and two truncations).
Usage: ``python benchmarks/bench_train.py [--threads 1] [--reps 5] [--sft-steps 30]``.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from divscale import paths
from divscale.data.hh import SUBSETS, split_dialogue
from divscale.train.logprobs import logprobs_from_ids
from divscale.train.losses import pro_loss
from divscale.train.trainer import RankingCollator, RankingConfig, RankingTrainer, ranked_rows


def hh_rankings(per_subset: int) -> tuple[list[dict], list[str]]:
    recs, texts = [], []
    for subset in SUBSETS:
        with gzip.open(paths.HH_RLHF_DIR / subset / "test.jsonl.gz", "rt", encoding="utf-8") as fh:
            for i, line in enumerate(fh):
                if i >= per_subset:
                    break
                d = json.loads(line)
                prompt, chosen, rejected = split_dialogue(d["chosen"], d["rejected"])
                texts.append(d["chosen"])
                recs.append({"prompt": prompt, "responses": [chosen, rejected, chosen[:60], rejected[:90]],
                             "rewards": [1.0, 0.0, -1.0, -2.0]})
    return recs, texts


def build_tokenizer(texts: list[str], vocab: int = 2048):
    """A byte-level BPE trained on ``texts`` (also used by bench_listwise.py)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab, special_tokens=["<|endoftext|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                   pad_token="<|pad|>")


def tiny_policy(texts: list[str], vocab: int = 2048, block: int = 256):
    tokenizer = build_tokenizer(texts, vocab)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=block, n_embd=128, n_layer=4, n_head=4,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    return GPT2LMHeadModel(config), tokenizer


def pro_step(model, batch, separate: bool) -> float:
    def score(sl):
        return logprobs_from_ids(model, batch["prompt_ids"], batch["prompt_mask"], batch["completion_ids"][:, sl],
                                 batch["completion_mask"][:, sl], share_prompt=False)

    if separate:                                   # the official loop: one forward per candidate
        parts = [score(slice(i, i + 1)) for i in range(batch["completion_ids"].shape[1])]
        logp, count = torch.cat([p[0] for p in parts], 1), torch.cat([p[1] for p in parts], 1)
    else:
        logp, count = score(slice(None))
    loss = pro_loss(logp / count, batch["scores"], sft_nll=-logp[:, 0])
    loss.backward()
    model.zero_grad(set_to_none=True)
    return loss.item()


def bench_pro(model, tokenizer, recs, n: int, batch_size: int, reps: int, block: int) -> dict:
    batch = RankingCollator(tokenizer, block, block - 64)(ranked_rows(recs[:batch_size], n))
    model.train()
    losses = {mode: pro_step(model, batch, mode) for mode in (False, True)}          # warm-up + same loss
    assert abs(losses[False] - losses[True]) < 1e-3 * max(1.0, abs(losses[False])), losses
    times = {False: [], True: []}
    for _ in range(reps):
        for mode in (False, True):
            start = time.perf_counter()
            pro_step(model, batch, mode)
            times[mode].append(time.perf_counter() - start)
    one, sep = statistics.median(times[False]), statistics.median(times[True])
    return {"n": n, "one_forward_s": one, "n_forwards_s": sep, "speedup": sep / one,
            "shape": list(batch["completion_ids"].shape)}


def bench_sft(model, tokenizer, recs, steps: int, batch_size: int, block: int) -> dict:
    import copy

    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from divscale.data.ranked import RANKED_FEATURES

    data = recs[:steps * batch_size]                                  # one epoch: every example seen once
    collator = RankingCollator(tokenizer, block, block - 64, best_only=True)
    prompts = collator.prompt_texts([r["prompt"] for r in data])
    common = {"max_steps": steps, "per_device_train_batch_size": batch_size, "learning_rate": 1e-4,
              "lr_scheduler_type": "constant", "weight_decay": 0.01, "optim": "adamw_torch",
              "logging_steps": steps, "save_strategy": "no", "report_to": "none", "use_cpu": True, "bf16": False,
              "disable_tqdm": True, "seed": 0}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        args = RankingConfig(output_dir=tmp, loss_type="sft", sft_reduction="sequence_sum", max_length=block,
                             max_prompt_length=block - 64, disable_dropout=False, **common)
        rows = ranked_rows(data, 1)
        ours = RankingTrainer(model=copy.deepcopy(model), args=args, processing_class=tokenizer,
                              train_dataset=Dataset.from_list(rows, features=RANKED_FEATURES))
        n_tokens = sum(len(p) + len(c) for p, cs in collator.encode(rows) for c in cs)
        runtime = ours.train().metrics["train_runtime"]
        out["ours_tokens_per_s"], out["ours_tokens"] = n_tokens / runtime, n_tokens

        pc = Dataset.from_list([{"prompt": p, "completion": " " + r["responses"][0]} for p, r in zip(prompts, data)])
        trl = SFTTrainer(model=copy.deepcopy(model), args=SFTConfig(
            output_dir=tmp, max_length=block, completion_only_loss=True, packing=False, activation_checkpointing=False,
            dataset_num_proc=None, **common), train_dataset=pc, processing_class=tokenizer)
        n_tokens = sum(min(len(x), block) for x in trl.train_dataset["input_ids"])
        runtime = trl.train().metrics["train_runtime"]
        out["trl_tokens_per_s"], out["trl_tokens"] = n_tokens / runtime, n_tokens
    out["ratio_ours_over_trl"] = out["ours_tokens_per_s"] / out["trl_tokens_per_s"]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest for tiny models)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8, help="prompts per step")
    parser.add_argument("--block", type=int, default=192)
    parser.add_argument("--sft-steps", type=int, default=30)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    recs, texts = hh_rankings(per_subset=max(60, args.sft_steps * args.batch // 4 + 1))
    model, tokenizer = tiny_policy(texts, block=args.block)
    print(f"model: GPT-2 {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M params, vocab {len(tokenizer)}, "
          f"block {args.block}, {args.batch} prompts/step, {args.threads} thread(s)")
    for n in (2, 3, 4):
        r = bench_pro(model, tokenizer, recs, n, args.batch, args.reps, args.block)
        print(f"PRO n={n} {r['shape']}: one forward {r['one_forward_s'] * 1e3:.0f} ms, "
              f"{n} forwards {r['n_forwards_s'] * 1e3:.0f} ms -> {r['speedup']:.2f}x faster in one pass")
    s = bench_sft(model, tokenizer, recs, args.sft_steps, args.batch, args.block)
    print(f"SFT {args.sft_steps} steps: ours {s['ours_tokens_per_s']:.0f} tok/s ({s['ours_tokens']} tokens), "
          f"TRL SFTTrainer {s['trl_tokens_per_s']:.0f} tok/s ({s['trl_tokens']} tokens) -> "
          f"ratio {s['ratio_ours_over_trl']:.2f}")


if __name__ == "__main__":
    main()

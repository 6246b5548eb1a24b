"""Wall time per epoch: divscale's listwise step at K = 4 against TRL's DPOTrainer on the same rankings split into
pairs (huggingface/trl#1831's answer), same data, same device, same process.

Arms, each training one epoch over the same ``--rows`` K-rankings from the same initial weights:

- divscale's ``RankingTrainer`` with PRO, Plackett-Luce, LiPO-lambda and all-pairs DPO, ``--rows-per-step``
  rankings a step: a step encodes each prompt once (shared by its K completions) and each completion once, plus
  the frozen reference's forward for the three losses on DPO's implicit reward;
- TRL's ``DPOTrainer`` (as TRL ships it: loss ``sigmoid``, beta 0.1) on the rankings split into pairs by
  ``divscale data convert --to pairs`` (:func:`divscale.data.convert.ranked_to_pairs`), all pairs (K(K-1)/2 a
  ranking) and best vs rest (K-1): ``prompt + chosen`` and ``prompt + rejected`` for every pair, so a completion is
  encoded once per pair it is in, plus the reference's forward. Both readings of "equal steps"
  (:mod:`divscale.study.listwise`): the same rankings per step (``rows_per_step x pairs per ranking`` pairs a step;
  the baseline) and as many pairs per step as rankings (``*_same_pairs``). Per epoch both encode the same pairs.

Everything else is equal: fp32, no dropout, no gradient checkpointing (TRL's default turns it on: off here so TRL
is not slowed), constant learning rate, AdamW, clipping 1.0, ``max_length`` 192 with prompts cut to their last 128
tokens the ranking trainer's way (also for TRL, which has no prompt budget), data read in order. Timed:
``trainer.train()`` for one epoch (collation, forward, backward, optimizer). TRL tokenises its dataset in its
``__init__`` (reported as ``setup_s``, not timed); divscale's collator tokenises inside the epoch, which counts
against divscale. Arms alternate, ``--reps`` epochs each from fresh trainers, median reported.

Model: the cpu recipe's tiny-gpt shape (GPT-2, 4 layers, 128 dims, 192 positions, BPE vocab 2048 trained on the HH
text), random weights, ``torch.set_num_threads(--threads)`` (default 1). ``--device cuda`` runs on a GPU.
Data: HH-RLHF test dialogues made into K-rankings (``bench_train.hh_rankings``: chosen, rejected and two
truncations of them). ``--tiny``: 4 rankings, 2 a step, one epoch (the CPU test of this script).

Printed: per arm the median epoch time, its steps, seconds per step, sequences per step (policy and reference),
tokens the policy encodes per epoch, and ``speed_vs_trl_all_pairs`` = TRL DPO all pairs' epoch time / the arm's
(goal, issue 18: >= 3 for the listwise step at K = 4). ``--json``: the last line is a JSON object of it all.
Usage: ``python benchmarks/bench_vs_trl_dpo.py [--rows 64] [--rows-per-step 4] [--reps 3] [--k 4] [--json]``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")     # TRL tokenises with datasets.map: no bars

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train import hh_rankings, tiny_policy  # the benchmarks folder is on sys.path above

LISTWISE = ("pro", "plackett_luce", "lipo_lambda", "all_pairs_dpo")
PAIRS = {"trl_dpo_all_pairs": ("all", "rows"), "trl_dpo_best_vs_rest": ("best-vs-rest", "rows"),
         "trl_dpo_all_pairs_same_pairs": ("all", "pairs"), "trl_dpo_best_vs_rest_same_pairs": ("best-vs-rest", "pairs")}
BASELINE = "trl_dpo_all_pairs"
MAX_LENGTH, MAX_PROMPT = 192, 128


def common(args, out: str) -> dict:
    return {"output_dir": out, "num_train_epochs": 1, "max_steps": -1, "learning_rate": 5e-4, "weight_decay": 0.01,
            "max_grad_norm": 1.0, "lr_scheduler_type": "constant", "warmup_steps": 0, "optim": "adamw_torch",
            "logging_steps": 1, "save_strategy": "no", "report_to": "none", "disable_tqdm": True, "seed": 0,
            "data_seed": 0, "train_sampling_strategy": "sequential", "bf16": False, "disable_dropout": True,
            "use_cpu": args.device == "cpu", "max_length": MAX_LENGTH}


def listwise_trainer(args, loss: str, model, tokenizer, rows, out: str):
    from datasets import Dataset

    from divscale.data.ranked import RANKED_FEATURES
    from divscale.train.trainer import RankingConfig, RankingTrainer

    cfg = RankingConfig(**common(args, out), loss_type=[loss], per_device_train_batch_size=args.rows_per_step,
                        max_prompt_length=MAX_PROMPT, loss_balance_steps=0)
    return RankingTrainer(model=model, args=cfg, train_dataset=Dataset.from_list(rows, features=RANKED_FEATURES),
                          processing_class=tokenizer)


def pairs_trainer(args, how: str, same: str, model, tokenizer, rows, out: str):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from divscale.study.listwise import ranking_pairs

    pairs = ranking_pairs(rows, tokenizer, MAX_LENGTH, MAX_PROMPT, how)
    per_row = len(pairs) // len(rows)
    batch = args.rows_per_step * per_row if same == "rows" else args.rows_per_step
    cfg = DPOConfig(**common(args, out), per_device_train_batch_size=batch, beta=0.1, loss_type=["sigmoid"],
                    activation_checkpointing=False, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=model, ref_model=copy.deepcopy(model), args=cfg, train_dataset=Dataset.from_list(pairs),
                         processing_class=tokenizer)
    if len(trainer.train_dataset) != len(pairs):
        raise RuntimeError(f"TRL dropped {len(pairs) - len(trainer.train_dataset)} pairs; the arms would differ")
    return trainer


def policy_tokens(name: str, trainer, rows) -> int:
    """Tokens the policy encodes in one epoch (prompt tokens included), after truncation at max_length."""
    if name in LISTWISE:
        return sum(len(p) + sum(len(c) for c in cs) for p, cs in trainer.data_collator.encode(rows))
    data = trainer.train_dataset
    return sum(min(MAX_LENGTH, len(p) + len(c)) + min(MAX_LENGTH, len(p) + len(r))
               for p, c, r in zip(data["prompt_ids"], data["chosen_ids"], data["rejected_ids"]))


def sequences_per_step(name: str, args) -> tuple[float, float]:
    """(policy, reference) sequences one step encodes; a listwise prompt shared by K completions counts once per
    completion here (its K completions are K sequences), a pairs prompt twice per pair."""
    from divscale.train.options import NEEDS_REFERENCE

    k, b = args.k, args.rows_per_step
    if name in LISTWISE:
        return b * k, (b * k if name in NEEDS_REFERENCE else 0)
    how, same = PAIRS[name]
    per_row = k * (k - 1) // 2 if how == "all" else k - 1
    pairs = b * per_row if same == "rows" else b
    return 2 * pairs, 2 * pairs


def build(args, name: str, base, tokenizer, rows, out: str):
    model = copy.deepcopy(base).to(args.device)
    if name in LISTWISE:
        return listwise_trainer(args, name, model, tokenizer, rows, out)
    return pairs_trainer(args, *PAIRS[name], model, tokenizer, rows, out)


def epoch(trainer) -> float:
    from transformers import PrinterCallback

    trainer.remove_callback(PrinterCallback)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.train()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench(args) -> dict:
    from divscale.train.trainer import ranked_rows

    recs, texts = hh_rankings(per_subset=max(1, -(-args.rows // 4)))
    rows = ranked_rows(recs[:args.rows], n=args.k)
    base, tokenizer = tiny_policy(texts, block=MAX_LENGTH)
    arms = list(LISTWISE) + [p for p in PAIRS if args.same_pairs or not p.endswith("same_pairs")]
    n_params = sum(p.numel() for p in base.parameters())
    print(f"divscale listwise vs TRL DPOTrainer on pairs: GPT-2 {n_params / 1e6:.2f}M params, {args.rows} rankings "
          f"of K = {args.k}, {args.rows_per_step} rankings a step, max_length {MAX_LENGTH} (prompt <= {MAX_PROMPT}), "
          f"{args.device}, {args.threads} thread(s), median of {args.reps} epoch(s)", flush=True)
    times: dict[str, list[float]] = {a: [] for a in arms}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.reps):
            for name in arms:
                start = time.perf_counter()
                trainer = build(args, name, base, tokenizer, rows, f"{tmp}/{name}-{rep}")
                setup = time.perf_counter() - start
                times[name].append(epoch(trainer))
                if name not in info:
                    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
                    policy, reference = sequences_per_step(name, args)
                    info[name] = {"steps": trainer.state.global_step, "setup_s": setup,
                                  "policy_sequences_per_step": policy, "reference_sequences_per_step": reference,
                                  "policy_tokens_per_epoch": policy_tokens(name, trainer, rows),
                                  "first_loss": losses[0] if losses else None}
    out: dict = {"rows": args.rows, "k": args.k, "rows_per_step": args.rows_per_step, "reps": args.reps,
                 "device": args.device, "threads": args.threads, "n_params": n_params, "max_length": MAX_LENGTH,
                 "max_prompt_length": MAX_PROMPT, "baseline": BASELINE, "arms": {}}
    base_s = statistics.median(times[BASELINE])
    for name in arms:
        s = statistics.median(times[name])
        row = info[name] | {"epoch_s": s, "epoch_s_all": times[name], "s_per_step": s / max(1, info[name]["steps"]),
                            "speed_vs_trl_all_pairs": base_s / s,
                            "tokens_vs_trl_all_pairs": info[BASELINE]["policy_tokens_per_epoch"]
                            / info[name]["policy_tokens_per_epoch"]}
        out["arms"][name] = row
        print(f"{name:>32}: epoch {s:6.2f} s ({row['steps']} steps, {row['s_per_step']:.3f} s/step), sequences a "
              f"step {row['policy_sequences_per_step']:g} policy + {row['reference_sequences_per_step']:g} reference, "
              f"{row['policy_tokens_per_epoch']:,} policy tokens an epoch -> {row['speed_vs_trl_all_pairs']:.2f}x "
              f"TRL DPO all pairs' speed", flush=True)
    out["speedup_listwise_min"] = min(out["arms"][a]["speed_vs_trl_all_pairs"] for a in LISTWISE)
    out["goal_3x_met_by"] = [a for a in LISTWISE if out["arms"][a]["speed_vs_trl_all_pairs"] >= 3]
    print(f"goal (>= 3x TRL DPO on all pairs at K = {args.k}): met by {out['goal_3x_met_by'] or 'none'}; slowest "
          f"listwise loss {out['speedup_listwise_min']:.2f}x", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=64, help="rankings in the epoch")
    parser.add_argument("--rows-per-step", type=int, default=4, help="rankings per optimizer step")
    parser.add_argument("--k", type=int, default=4, choices=(2, 3, 4), help="completions per ranking")
    parser.add_argument("--reps", type=int, default=3, help="epochs per arm (median)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--no-same-pairs", dest="same_pairs", action="store_false",
                        help="skip the TRL arms with as many pairs per step as rankings")
    parser.add_argument("--tiny", action="store_true", help="4 rankings, 2 a step, one epoch (the test)")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = parser.parse_args()
    if args.tiny:
        args.rows, args.rows_per_step, args.reps = 4, 2, 1
    torch.set_num_threads(args.threads)
    result = bench(args)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()

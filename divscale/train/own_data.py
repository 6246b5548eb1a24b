"""``divscale train --data``: train on anyone's ranked data, outside the study's grid.

The command reads the rows with :func:`divscale.data.formats.load_ranked` (every format it knows), holds out a seeded
share of them for evaluation (``--held_out``; their ids go to config.json, where ``divscale evaluate --run`` finds
them), and trains with :func:`divscale.train.runs.train_ranked` into ``runs/train/<loss>-<data>-s<seed>-<hash>/``
(or ``--output_dir``). Its flags are :class:`divscale.train.options.RankingOptions`' fields (TRL's names), made by
``cli._train_parser``; every check that can fail runs before any model is loaded: the options, the lengths against
the model's positions, the data.

``--model tiny-gpt`` is the study's own warmed-up policy of ``--recipe`` (default ``cpu``: BPE and warm-up on the
recipe's HH pool dialogues, cached under ``~/.cache/divscale/policies`` and shared with the grid), so a new data file
never warms up a new policy; ``--model`` may also be a local folder or a cached hub id.

Flags of the grid-cell form (``--algo``, ``--ranking-len``, ``--prompts``, ``--set``) and a ``--recipe`` beside a
model other than tiny-gpt do not apply to ``--data`` and are refused, never silently ignored.
"""
from __future__ import annotations

import json
import random
import time
from datetime import datetime, timezone

from divscale.train.options import (
    RankingOptions,
    deprecated,
    model_positions,
    options_from,
    sequence_lengths,
    translate_deprecated,
)

# divscale 0.1's flags -> the option they set (accepted for one release, with a warning); the parser stores each in
# ``deprecated_<option>``. --max-completion-length becomes max_length = prompt + completion budget.
OLD_FLAGS = {"--loss": "loss_type", "--steps": "max_steps", "--lr": "learning_rate",
             "--batch-size": "per_device_train_batch_size", "--max-completion-length": "max_completion_length"}
CELL_FLAGS = {"algo": "--algo", "ranking_len": "--ranking-len", "prompts": "--prompts"}


# --------------------------------------------------------------------------- rows

def split_ranked(dataset, n_test: int, seed: int = 42):
    """``(train, test)``: a seeded shuffle of the rows, the first ``n_test`` held out."""
    order = list(range(len(dataset)))
    random.Random(seed).shuffle(order)
    if not 0 < n_test < len(order):
        raise ValueError(f"n_test={n_test}: need 0 < n_test < {len(order)} rows")
    return dataset.select(order[n_test:]), dataset.select(order[:n_test])


def sub_ranked(dataset, n: int, seed: int = 42):
    """Each row cut to ``n`` of its completions, picked at random and kept in rank order (the paper's
    sub-ranking rule, divscale.data.subsets); rows with fewer than ``n`` are an error. Rows whose ``n`` picks are
    all tied cannot be ranked and raise."""
    from divscale.data.formats import normalize_ranked

    rng = random.Random(seed)
    rows = []
    for r in dataset:
        if len(r["completions"]) < n:
            raise ValueError(f"row {r['id']!r} has {len(r['completions'])} completions; n={n} needs {n}")
        picked = sorted(rng.sample(range(len(r["completions"])), n))
        rows.append({"id": r["id"], "prompt": r["prompt"], "completions": [r["completions"][i] for i in picked],
                     "ranks": [r["ranks"][i] for i in picked], "source": r["source"]})
    return normalize_ranked(rows, "sub-ranked")


def held_out_count(n_rows: int, held_out: float) -> int:
    """``held_out`` < 1: that share of the rows (at least 1 when there are 10 or more); >= 1: that many rows."""
    if held_out < 0:
        raise ValueError(f"--held_out {held_out}: give a share in [0, 1) or a number of rows")
    n = int(held_out) if held_out >= 1 else round(held_out * n_rows)
    if 0 < held_out < 1 and n == 0 and n_rows >= 10:
        n = 1
    if n >= n_rows:
        raise ValueError(f"--held_out {held_out} keeps {n} of {n_rows} rows out of training; lower it")
    return n


# --------------------------------------------------------------------------- the command

def _refuse_what_does_not_apply(args) -> None:
    given = getattr(args, "_given", None) or {}
    for dest, flag in CELL_FLAGS.items():
        if getattr(args, dest, None) is not None:
            raise ValueError(f"{flag} is a grid-cell flag and does not apply to --data (your rows are trained "
                             "as given); drop it")
    if args.set:
        raise ValueError(f"--set {args.set[0]} changes a recipe value, which does not apply to --data; use the "
                         "training flags (divscale train --help), e.g. --learning_rate")
    if args.recipe is not None and args.model != "tiny-gpt":
        raise ValueError(f"--recipe picks the tiny-gpt policy of a recipe; it does not apply to --model {args.model}")
    if args.runs_dir is not None and "output_dir" in given:
        raise ValueError("give --output_dir (the run folder) or --runs-dir (where run folders go), not both")


def options_of(args) -> dict:
    """The training options given on the command line, old flag names translated (with a warning)."""
    values = options_from(args, skip=("seed",))
    for flag, new in OLD_FLAGS.items():
        value = getattr(args, f"deprecated_{new}", None)
        if value is None:
            continue
        if new in values:
            raise ValueError(f"give --{new} only ({flag} is its deprecated name)")
        if new != "max_completion_length":             # translate_deprecated says it for that one
            deprecated(flag, f"--{new}")
        values[new] = value
    return translate_deprecated(values)


def model_positions_of(model: str, recipe) -> int | None:
    """The positions of ``--model`` without loading its weights (a tiny-gpt: its recipe's policy.block_size)."""
    if model == "tiny-gpt":
        return recipe.policy.block_size
    from transformers import AutoConfig

    from divscale.models.hub import model_folder

    return model_positions(AutoConfig.from_pretrained(model_folder(model), trust_remote_code=False))


def command(args) -> int:
    from divscale.config import load_recipe

    started = datetime.now(timezone.utc)
    _refuse_what_does_not_apply(args)
    values = options_of(args)
    seed = 42 if args.seed is None else args.seed
    options = RankingOptions(**{**values, "seed": seed})         # every option checked before any work
    recipe = load_recipe(args.recipe or "cpu") if args.model == "tiny-gpt" else None
    positions = model_positions_of(args.model, recipe)
    max_length, max_prompt_length = sequence_lengths(options.max_length, options.max_prompt_length, positions,
                                                     args.model)
    from divscale.data.formats import load_ranked  # the heavy imports, once every check passed
    from divscale.train.runs import study_policy, train_ranked

    fail_on_unrankable = args.fail_on_unrankable
    if args.deprecated_keep_unrankable:
        deprecated("--keep-unrankable (it fails on such a row)", "--fail_on_unrankable")
        fail_on_unrankable = True
    dataset = load_ranked(args.data, split=args.split, drop_unrankable=not fail_on_unrankable, limit=args.limit)
    sizes = [len(c) for c in dataset["completions"]]
    print(f"{args.data}: {len(dataset)} ranked prompts, {min(sizes)}-{max(sizes)} completions each "
          f"({sum(sizes)} in all)", flush=True)
    n_held = held_out_count(len(dataset), args.held_out)
    train_rows, held = split_ranked(dataset, n_held, seed) if n_held else (dataset, None)
    held_ids = list(held["id"]) if held is not None else []
    steps = options.max_steps if options.max_steps > 0 else None
    per_step = options.per_device_train_batch_size * options.gradient_accumulation_steps
    plan = f"{steps} steps" if steps else f"{options.num_train_epochs:g} epoch(s)"
    print(f"training {'+'.join(options.loss_type)} on {len(train_rows)} rows ({n_held} held out for evaluation), "
          f"{plan} of {per_step} rows, lr {options.learning_rate:g}, max_length {max_length} "
          f"(prompt <= {max_prompt_length})", flush=True)

    if args.model == "tiny-gpt":
        policy, policy_id = study_policy(recipe, progress=True)
    else:
        from divscale.models.hub import load_causal_lm

        policy, policy_id = (lambda: load_causal_lm(args.model)), f"model:{args.model}"
    kwargs = {k: v for k, v in values.items() if k not in ("loss_type", "output_dir")}
    kwargs.update(max_length=max_length, max_prompt_length=max_prompt_length)
    run = train_ranked(train_rows, options.loss_type, policy, policy_id, seed=seed, runs_dir=args.runs_dir,
                       data_name=str(args.data), progress=True, positions=positions, model_name=args.model,
                       recipe_name=(args.recipe or "cpu") if recipe is not None else None, split=args.split,
                       limit=args.limit,
                       held_out_ids=held_ids, output_dir=values.get("output_dir"), **kwargs)
    result = json.loads((run / "result.json").read_text())
    finished = datetime.fromisoformat(result["finished"]) if result.get("finished") else None
    summary = (f"{result['steps']} steps, train loss {result['first_train_loss']:.4g} -> "
               f"{result['final_train_loss']:.4g}")
    if finished is not None and finished < started:
        print(f"reused the finished run {run} (trained {finished:%Y-%m-%d %H:%M} UTC: {summary}); nothing was "
              "trained now -- delete the folder (or change a setting) to train again")
    else:
        print(f"{'+'.join(options.loss_type)}: {summary} in {result['train_runtime_s']:.0f} s "
              f"({time.strftime('%H:%M:%S')})")
    print(run)
    return 0

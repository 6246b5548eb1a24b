"""The ``divscale`` command: one subcommand per step of the pipeline, every parser defined here.

A subcommand is a parser function in this file and a ``command(args) -> int`` in the module that does the work,
imported only when its subcommand runs (so ``divscale diversity`` never loads torch, and ``--help`` of one
subcommand builds only that subcommand's parser).
"""
from __future__ import annotations

import argparse
import importlib
import sys

from divscale.io import DataError
from divscale.signals import stop_children_on_signal


def _diversity_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="SOURCE",
                        help="prompts of any data divscale reads: a file (JSONL, JSON, parquet), folder or hub id in "
                             "any format (TRL, HH-RLHF, PRO, UltraFeedback, oasst1, ranked, NeMo-RL, prompt-only)")
    parser.add_argument("--tokenizer", required=True,
                        help="hub id or local dir (paper: a LLaMA tokenizer), resolved by divscale.models.hub")
    parser.add_argument("--n", type=int, default=2, help="N-gram order (paper: 2)")
    parser.add_argument("--exponent", type=float, default=0.5,
                        help="d = n_prompts**exponent * r_unique (paper: 0.5)")
    parser.add_argument("--max-tokens", type=int, default=512,
                        help="only the first tokens of a prompt count (paper: 512)")
    parser.add_argument("--no-special-tokens", action="store_true", help="do not add BOS/special tokens")
    parser.add_argument("--field", default=None, help="read prompts from this field of every record instead")
    parser.add_argument("--split", default="train", help="split of a hub dataset")


def _data_parser(parser: argparse.ArgumentParser) -> None:
    from divscale import paths
    from divscale.data.hh import SUBSETS

    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    p = sub.add_parser("download", help="fetch HH-RLHF (train + test of the 4 subsets) from the hub")
    p.add_argument("--out", default=str(paths.HH_RLHF_DIR), help="target folder (default: data/hh-rlhf)")
    p.add_argument("--subsets", nargs="+", default=list(SUBSETS))
    p.add_argument("--splits", nargs="+", default=["train", "test"])
    p.add_argument("--force", action="store_true", help="download files that already exist again")

    p = sub.add_parser("prepare", help="write a recipe's pool/dev/test splits to runs/data/<hash>/")
    p.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--out", default=None, help="output folder (default: runs/data/<hash>)")
    p.add_argument("--force", action="store_true", help="rewrite an existing folder")

    p = sub.add_parser("grid", help="write the nested subsets of a 4-ranking file (len{n}_{k}.jsonl)")
    p.add_argument("--rankings", required=True, help="4-rankings JSONL (divscale rankings)")
    p.add_argument("--recipe", required=True, help="recipe giving data.sizes, data.ranking_lengths, data.grid_seed")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    p.add_argument("--out", default=None, help="output folder (default: runs/data/grid-<hash>)")

    p = sub.add_parser("convert", help="ranked data -> TRL preference pairs (--to pairs), or any data -> the ranked "
                                       "format (--to ranked)")
    p.add_argument("source", help="file, folder or hub id in any format divscale reads (divscale.data.formats)")
    p.add_argument("--to", required=True, choices=["pairs", "ranked"])
    p.add_argument("--out", required=True, help="output .jsonl (written atomically)")
    p.add_argument("--pairs", default=None, choices=["best-vs-rest", "all"],
                   help="with --to pairs: the best completion(s) against each lower one (default), or every pair "
                        "with different ranks")
    p.add_argument("--style", default="auto", choices=["auto", "standard", "conversational"],
                   help="TRL's standard (text) or conversational (messages) format; auto: as the input was")
    p.add_argument("--format", default=None, help="force the input format (default: detected)")
    p.add_argument("--split", default="train", help="split of a hub dataset")
    p.add_argument("--limit", type=int, default=None, help="the first N rankings only")
    p.add_argument("--drop-unrankable", action="store_true",
                   help="skip rows that cannot be ranked (all tied, one completion) instead of failing")
    p.set_defaults(_runner="divscale.data.convert:command")


def _rankings_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument("--out", default=None, help="output folder (default: runs/rankings/<hash>)")


def _reward_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field")
    parser.add_argument("--report", action="store_true",
                        help="score the test split's human pairs: accuracy, length baseline, OA 6.9B agreement")
    parser.add_argument("--out", default=None, help="also write the JSON to this file")
    parser.add_argument("--progress", action="store_true", help="show progress bars")


def _train_parser(parser: argparse.ArgumentParser) -> None:
    import typing

    from divscale import paths
    from divscale.config import Algo
    from divscale.train.options import Given, RankingOptions, add_arguments

    parser.add_argument("--recipe", default=None,
                        help="recipe name (recipes/<name>.yaml) or path; with --data: whose tiny-gpt policy to train "
                             "(default cpu)")
    parser.add_argument("--algo", default=None, choices=typing.get_args(Algo), help="grid cell: the algorithm")
    parser.add_argument("--ranking-len", type=int, default=None, help="grid cell: ranking length n (2, 3, 4)")
    parser.add_argument("--prompts", type=int, default=None, help="grid cell: number of prompts k (one of data.sizes)")
    parser.add_argument("--seed", type=int, default=None, help="the run's seed (default 42)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="grid cell: override a recipe value, e.g. --set train.max_steps=10")
    parser.add_argument("--runs-dir", default=None, help=f"where run folders go (default {paths.RUNS_DIR})")
    parser.add_argument("--progress", action="store_true", help="show progress bars")
    g = parser.add_argument_group("train on your own ranked data (instead of a grid cell); the flags are "
                                  "divscale.train.options.RankingOptions' fields, TRL's names")
    g.add_argument("--data", default=None, metavar="FILE_OR_HUB_ID",
                   help="ranked data: JSONL/JSON file or folder (ranked format, TRL preference data, divscale "
                        "Rankings, HH-RLHF pairs, PRO, UltraFeedback, oasst1 trees) or a datasets hub id")
    g.add_argument("--model", default="tiny-gpt", action=Given,
                   help="tiny-gpt (the study's warmed-up policy of --recipe, cached and shared with the grid), a local "
                        "model folder or a cached hub id (default tiny-gpt)")
    g.add_argument("--split", default="train", action=Given, help="split of a hub dataset (default train)")
    g.add_argument("--limit", type=int, default=None, action=Given, help="use the first N rows")
    g.add_argument("--held_out", "--held-out", type=float, default=0.1, action=Given,
                   help="rows kept out of training for `divscale evaluate --run` (seeded): a share < 1 or a count; "
                        "0: none (default 0.1)")
    g.add_argument("--fail_on_unrankable", "--fail-on-unrankable", nargs=0, const=True, default=False, action=Given,
                   help="fail on a row that cannot be ranked (all completions tied, ...) instead of dropping it with "
                        "a warning")
    add_arguments(g, RankingOptions, skip=("seed",))
    old = parser.add_argument_group("deprecated flags (divscale 0.1; removed in the next release)")
    old.add_argument("--loss", dest="deprecated_loss_type", nargs="+", default=None, action=Given,
                     help="use --loss_type")
    old.add_argument("--steps", dest="deprecated_max_steps", type=int, default=None, action=Given,
                     help="use --max_steps")
    old.add_argument("--lr", dest="deprecated_learning_rate", type=float, default=None, action=Given,
                     help="use --learning_rate")
    old.add_argument("--batch-size", dest="deprecated_per_device_train_batch_size", type=int, default=None,
                     action=Given, help="use --per_device_train_batch_size")
    old.add_argument("--max-completion-length", dest="deprecated_max_completion_length", type=int, default=None,
                     action=Given, help="use --max_length (prompt + completion)")
    old.add_argument("--keep-unrankable", dest="deprecated_keep_unrankable", nargs=0, const=True, default=False,
                     action=Given, help="it failed on an unrankable row: use --fail_on_unrankable")


def _evaluate_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run", required=True,
                        help="run folder written by `divscale train` (a grid cell's or an own-data run's)")
    parser.add_argument("--rm", default=None, metavar="RM",
                        help="reward model: rm_test (default) or rm_train of the run's recipe, an in-project RM "
                             "folder, or a hub id / local folder of a sequence-classification RM")
    parser.add_argument("--prompts", default=None, metavar="SOURCE",
                        help="evaluate on these prompts (any data divscale reads) instead of the run's held-out "
                             "rows (own data) or its recipe's test split (grid cell)")
    parser.add_argument("--split", default="train", help="split of a hub dataset given with --prompts")
    parser.add_argument("--limit", type=int, default=None, help="the first N prompts (of each test file) only")
    parser.add_argument("--no-initial", action="store_true",
                        help="skip the initial policy (no win rate, no reward difference)")
    parser.add_argument("--recipe", default=None,
                        help="recipe for the eval settings and in-project RMs (default: the run's)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a recipe field (eval.*)")
    parser.add_argument("--checkpoint", default="best", help="checkpoint folder in the run (default: best)")


def evaluate_command(args) -> int:
    """``divscale evaluate``, wired here: it needs the trainer's initial-policy loader (divscale.train), which the
    reward layer that evaluates must not import (tests/test_imports.py)."""
    from divscale.reward.evaluate import command
    from divscale.train import runs

    loader = getattr(runs, "load_initial_policy", None)
    if loader is None and not args.no_initial:
        raise ValueError("this divscale has no divscale.train.runs.load_initial_policy to reload a run's initial "
                         "policy; pass --no-initial to evaluate the trained policy alone")
    return command(args, initial_policy=loader)


def _policy_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a recipe value")
    parser.add_argument("--out", default=None, help="also write the fingerprint to this file")


def _grid_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", required=True, help="recipe name (recipes/<name>.yaml) or path")
    parser.add_argument("-j", "--jobs", type=int, default=1, help="cells run at once (local executor)")
    parser.add_argument("--executor", choices=["local", "slurm", "submitit-local"], default="local")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set train.max_steps=10")
    parser.add_argument("--list", action="store_true",
                        help="list the cells and their status from the cell files that exist; builds and runs nothing")
    parser.add_argument("--plan", action="store_true",
                        help="print the compute plan (params, per-GPU memory, tokens, GPU-hours), run nothing")
    parser.add_argument("--json", action="store_true", help="with --plan: one JSON object")
    parser.add_argument("--measured", default=None, metavar="FILE",
                        help="with --plan: the JSON of `make gpu-check`; GPU-hours per stage and per-GPU memory "
                             "from its measured figures instead of the assumed utilisation and memory model")
    parser.add_argument("--fingerprint", action="store_true",
                        help="build (or load) the steps every cell shares and print the content hash of each "
                             "artifact (embeddings, RM heads, rankings, initial policy, code versions) as JSON; "
                             "compare two machines' outputs to measure where they differ")
    parser.add_argument("--runs-dir", default=None, help="with --fingerprint: put run products here instead of runs/")
    parser.add_argument("--verify", action="store_true",
                        help="build the shared artifacts twice from empty caches (one pre-warmed differently, "
                             "one on another thread count) and compare their hashes; exit 1 if any differs")


def _notebook_parser(parser: argparse.ArgumentParser) -> None:
    from divscale.study.notebook_runner import ORDER

    sub = parser.add_subparsers(dest="action", required=True)
    lab = sub.add_parser("lab", help="JupyterLab on 127.0.0.1 with the project kernel; .py sources open as notebooks")
    lab.add_argument("--port", type=int, default=8888, help="first port to try (default 8888)")
    lab.add_argument("--no-browser", action="store_true", help="print the URL instead of opening a browser")
    export = sub.add_parser("export", help="cleaned copies of the executed figure notebooks -> results/RECIPE/notebooks/")
    export.add_argument("--recipe", required=True)
    export.add_argument("names", nargs="*", help="notebook names (default: every notebook but 04_finetune)")
    run = sub.add_parser("run", help="execute one notebook with papermill")
    run.add_argument("name", help=f"notebook name, one of {list(ORDER)}")
    run.add_argument("--recipe", required=True)
    run.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--out", default=None)
    sub.add_parser("check", help="check that every .py/.ipynb pair is in sync")
    sub.add_parser("sync", help="rewrite each .ipynb from its .py")


def _augment_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--recipe", default="cpu", help="recipe name or YAML path (section: augment)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. augment.jaccard_tau=0.3 (repeatable)")
    parser.add_argument("--rankings", required=True, help="pool rankings JSONL (divscale.data.hh.save_rankings)")
    parser.add_argument("--seed-rankings", default=None,
                        help="seed subset JSONL; default: the first augment.seed_size rankings of --rankings")
    parser.add_argument("--method", choices=["diverse", "random"], default="diverse")
    parser.add_argument("--tokenizer", default=None, help="tokenizer for the N-grams (default: diversity.tokenizer)")
    parser.add_argument("--out", required=True, help="output rankings JSONL (seed + added); a .log.json beside it")


def _select_parser(parser: argparse.ArgumentParser) -> None:
    from divscale.tools.select import SELECTORS

    parser.add_argument("--recipe", default="cpu", help="recipe name or YAML path (section: select)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="recipe override, e.g. select.budget=3000 (repeatable)")
    parser.add_argument("--rankings", required=True, help="pool rankings JSONL to select from")
    parser.add_argument("--selector", required=True, choices=sorted(SELECTORS))
    parser.add_argument("--budget", type=int, default=None, help="number of prompts (default: select.budget)")
    parser.add_argument("--out", required=True, help="selected rankings JSONL; the indices go to <out>.indices.json")


def _summarize_parser(parser: argparse.ArgumentParser) -> None:
    from divscale.report.publish import COLD_RUN

    parser.add_argument("--recipe", required=True, help="recipe name: reads and writes results/<recipe>/")
    parser.add_argument("--results", default=None, help="results folder (default results/<recipe>/)")
    parser.add_argument("--readme", action="store_true", help="also re-render the README's results block")
    parser.add_argument("--cold-run", default=None, metavar="TIME_REPORT",
                        help="record a `/usr/bin/time -v -o TIME_REPORT make figures` report of a cold run as "
                             f"results/<recipe>/{COLD_RUN} (then summarize as usual)")
    parser.add_argument("--cold-run-note", default="", help="how the cold run was made (shown in the README)")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; fail when summary.json or the README block is out of date")


def _plan_parser(parser: argparse.ArgumentParser) -> None:
    from divscale.tools.annotation_plan import SELECTOR_NAMES

    parser.add_argument("--prompts", required=True,
                        help="prompt pool: a file, folder or hub id in any format divscale reads (TRL, HH-RLHF, PRO, "
                             "UltraFeedback, oasst1, ranked, NeMo-RL, prompt-only), or Anthropic/hh-rlhf[/SUBSET][:SPLIT]")
    parser.add_argument("--budget", type=int, required=True, help="annotations (ranked responses) to spend")
    parser.add_argument("--lengths", type=int, nargs="+", default=[2, 3, 4], help="ranking lengths n to compare")
    parser.add_argument("--selector", default="random",
                        help=f"how the ⌊B/n⌋ prompts are picked: one of {', '.join(SELECTOR_NAMES)}")
    parser.add_argument("--fit", default="paper",
                        help="'paper' (Figure 4's lines, the default) or a results CSV (results/<recipe>/runs.csv)")
    parser.add_argument("--algo", default="pro", help="which algorithm's lines (pro | sft)")
    parser.add_argument("--y", default="reward_global", help="reward column of a results CSV")
    parser.add_argument("--recipe", default=None, help="the results CSV's recipe, when it has no recipe column")
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer for d (default: the fit's; for --fit paper the LLaMA-1 tokenizer when the local "
                             "cache has it, else SmolLM2's, offline, with a warning)")
    parser.add_argument("--allow-tokenizer-mismatch", action="store_true",
                        help="measure d in a tokenizer other than the fit's (said in the output)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--draws", type=int, default=5, help="random selector: seeded draws for d's spread")
    parser.add_argument("--field", default=None, help="read prompts from this field of every record instead")
    parser.add_argument("--split", default="train", help="split of a hub dataset")
    parser.add_argument("--json", action="store_true", help="print JSON (with the prompt ids of each option)")


def _convert_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", nargs="+", help="hub id(s) or local folder(s) with pytorch_model*.bin weights")
    parser.add_argument("--revision", default=None)


# subcommand: (parser function, "module:function" that runs it, help)
SUBCOMMANDS = {
    "diversity": (_diversity_parser, "divscale.metrics.diversity:command",
                  "prompt-diversity metric d of a prompt file"),
    "data": (_data_parser, "divscale.data.subsets:data_command",
             "download HH-RLHF, prepare pool/dev/test splits, write the budgeted grid"),
    "rankings": (_rankings_parser, "divscale.reward.rankings:command",
                 "extend pairs to rankings with a generator and RM_train"),
    "reward": (_reward_parser, "divscale.reward.rm:command",
               "train / report the in-project reward models"),
    "train": (_train_parser, "divscale.study.pipeline:train_command",
              "fine-tune one grid cell (SFT, PRO or DPO), or train on your own ranked data (--data)"),
    "evaluate": (_evaluate_parser, "divscale.cli:evaluate_command",
                 "evaluate any run: greedy answers scored by a reward model, win rate over the initial policy"),
    "policy": (_policy_parser, "divscale.study.pipeline:policy_command",
               "build (or load) a recipe's initial policy (tiny-gpt: tokenizer + warm-up) and print its fingerprint"),
    "grid": (_grid_parser, "divscale.study.grid:command",
             "run every cell of a recipe's grid (papermill)"),
    "notebook": (_notebook_parser, "divscale.study.notebook_runner:command",
                 "execute a notebook with papermill; check / sync the jupytext pairs"),
    "augment": (_augment_parser, "divscale.tools.augment:command",
                "diversity-guided augmentation of a seed subset"),
    "select": (_select_parser, "divscale.tools.select:command",
               "select a budgeted subset (Deita, d-greedy, random, ...)"),
    "summarize": (_summarize_parser, "divscale.report.publish:command",
                  "write results/<recipe>/summary.json (and the README results block)"),
    "plan": (_plan_parser, "divscale.tools.annotation_plan:command",
             "plan an annotation budget: prompts x responses per n, predicted reward"),
    "convert": (_convert_parser, "divscale.models.hub:command",
                "convert a .bin-only checkpoint to safetensors once (torch.load weights_only)"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for name, (configure, runner, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            configure(p)
            p.set_defaults(_runner=runner)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "subcommand", None):
        parser.print_help()
        return 2
    module, _, function = args._runner.partition(":")
    command = getattr(importlib.import_module(module), function)
    try:
        with stop_children_on_signal():       # Ctrl-C / SIGTERM stop every process the command started
            return int(command(args) or 0)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"divscale {args.subcommand}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

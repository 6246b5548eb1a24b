"""The ``divscale`` command: one subcommand per step of the pipeline.

Each subcommand lives in the module that does the work, which defines
``configure_parser(parser)`` and ``command(args) -> int``; this file only dispatches,
importing a module when its subcommand is used (so ``divscale diversity`` never loads torch).
Where running a subcommand needs modules above the one that parses it, ``COMMANDS`` names the
higher module that runs it, so a lower module never imports a higher one.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from .io import DataError

SUBCOMMANDS = {
    "diversity": ("divscale.diversity", "prompt-diversity metric d of a prompt file"),
    "data": ("divscale.data", "prepare pool/dev/test splits and the budgeted grid"),
    "rankings": ("divscale.rankings", "extend pairs to rankings with a generator and RM_train"),
    "reward": ("divscale.reward", "train / report the in-project reward models"),
    "train": ("divscale.train", "fine-tune one grid cell (SFT, PRO or DPO)"),
    "evaluate": ("divscale.evaluate", "generate on test prompts and score with RM_test"),
    "grid": ("divscale.grid_runner", "run every cell of a recipe's grid (papermill)"),
    "notebook": ("divscale.notebooks", "execute a notebook with papermill; check / sync the jupytext pairs"),
    "augment": ("divscale.augment", "diversity-guided augmentation of a seed subset"),
    "select": ("divscale.select", "select a budgeted subset (Deita, d-greedy, random, ...)"),
    "summarize": ("divscale.summary", "write results/<recipe>/summary.json (and the README results block)"),
    "plan": ("divscale.budget_plan", "plan an annotation budget: prompts x responses per n, predicted reward"),
    "convert": ("divscale.models", "convert a .bin-only checkpoint to safetensors once (torch.load weights_only)"),
}

# Subcommands parsed and run by a module higher than the one named above, which does the wiring, so that a
# lower module never imports a higher one: `divscale train` needs the recipe's splits, RM_train, grid and
# policy and the --data trainer (divscale.pipeline), `divscale data grid` the grid builder (divscale.grid).
# module: (parser function or None for the module above's configure_parser, command function)
COMMANDS = {
    "train": ("divscale.pipeline", "configure_train_parser", "train_command"),
    "data": ("divscale.grid", None, "data_command"),
}


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="divscale", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="subcommand", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if only == name:
            runner_name, configure, command = COMMANDS.get(name, (module_name, None, "command"))
            runner = importlib.import_module(runner_name)
            configure = getattr(runner, configure) if configure else importlib.import_module(module_name).configure_parser
            configure(p)
            p.set_defaults(_command=getattr(runner, command))
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(only)
    args = parser.parse_args(argv)
    if not getattr(args, "subcommand", None):
        parser.print_help()
        return 2
    try:
        return int(args._command(args) or 0)
    except (DataError, FileNotFoundError, ValueError) as err:
        print(f"divscale {args.subcommand}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

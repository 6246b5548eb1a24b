"""divscale.train.options: the flags of `divscale train --data` come from RankingOptions' fields exactly as
transformers' HfArgumentParser (TRL's scripts) would make them, RankingConfig keeps their defaults, and `--help`
answers in well under 2 s because nothing heavy is imported."""
from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time

from divscale.train.options import HIDDEN, RankingOptions, add_arguments, options_from


def _actions(parser) -> dict:
    out = {}
    for a in parser._actions:
        if a.dest == "help":
            continue
        key = tuple(sorted(a.option_strings))
        out[key] = (a.dest, a.default, tuple(a.choices) if a.choices else None, a.nargs, a.const)
    return out


def test_flags_are_hfargumentparsers():
    from transformers import HfArgumentParser

    ours = argparse.ArgumentParser()
    add_arguments(ours, RankingOptions)
    theirs = HfArgumentParser(RankingOptions)
    want = {k: v for k, v in _actions(theirs).items() if v[0] not in HIDDEN}
    assert _actions(ours) == want
    # and they parse the same command lines to the same values
    argv = ["--loss_type", "pro", "sft", "--loss-weights", "1", "0.5", "--use_temperature", "--no_share_prompt",
            "--max_length", "96", "--bf16", "false", "--learning-rate", "1e-4", "--sft_reduction", "token_mean"]
    mine = ours.parse_args(argv)
    (hf,) = theirs.parse_args_into_dataclasses(argv)
    for name, value in options_from(mine).items():
        assert getattr(hf, name) == value, name
    assert options_from(mine)["share_prompt"] is False and "seed" not in options_from(mine)


def test_the_trainer_config_keeps_the_options_defaults(tmp_path):
    from divscale.train.trainer import RankingConfig

    config = RankingConfig(output_dir=str(tmp_path))
    plain = RankingOptions()
    for f in dataclasses.fields(RankingOptions):
        if f.name == "output_dir":
            continue
        value = getattr(config, f.name)
        value = getattr(value, "value", value)                  # TrainingArguments turns some into enums
        want = getattr(plain, f.name)
        assert value == want or (f.name == "report_to" and value == []), f.name


def test_train_help_is_fast_and_imports_nothing_heavy():
    code = ("import sys, time; t = time.perf_counter(); from divscale import cli; sys.argv = ['divscale', 'train', "
            "'--help']\ntry:\n    cli.main()\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'transformers', 'trl', 'datasets') if m in sys.modules))\n"
            "print('SECONDS', time.perf_counter() - t)")
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    wall = time.perf_counter() - start
    assert "HEAVY []" in out, out[-300:]
    assert "--loss_type" in out and "--per_device_train_batch_size" in out and "--max_length" in out
    assert wall < 2.0, f"`divscale train --help` took {wall:.2f} s"


def test_a_refused_data_run_fails_before_loading_anything_heavy(tmp_path):
    """Bad options, flags that do not apply and lengths the model cannot hold fail in a fraction of a second:
    no torch, no transformers, no datasets."""
    data = tmp_path / "rows.jsonl"
    data.write_text('{"prompt": "p", "completions": ["a", "b"], "ranks": [0, 1]}\n')
    for extra in (["--max_length", "4096"], ["--algo", "pro"], ["--max_steps", "0"], ["--loss_type", "listnet"]):
        code = ("import sys; from divscale import cli\n"
                f"status = cli.main(['train', '--data', {str(data)!r}, '--model', 'tiny-gpt', *{extra!r}])\n"
                "print('STATUS', status, 'HEAVY', sorted(m for m in ('torch', 'transformers', 'datasets') "
                "if m in sys.modules))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert "STATUS 1 HEAVY []" in out.stdout, (extra, out.stdout, out.stderr[-500:])
        assert out.stderr.strip().splitlines()[-1].startswith("divscale train: error: "), extra

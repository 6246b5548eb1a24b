"""The ranking trainer's settings, in TRL v1's names, importable without torch.

:class:`RankingOptions` holds every setting that divscale's ranking trainer adds to ``transformers.TrainingArguments``
or whose default it changes. It is a plain dataclass so that ``divscale train --help`` builds its flags from it in a
fraction of a second (:func:`add_arguments`, the habits of ``transformers.HfArgumentParser`` -- ``--name`` and
``--name-with-dashes``, ``Literal`` choices, ``--flag [true|false]`` plus ``--no_flag`` for a bool that defaults to
True, ``nargs="+"`` for lists -- without importing transformers); :class:`divscale.train.trainer.RankingConfig`
is ``RankingOptions`` + ``TrainingArguments``, so the flags, the config and their defaults are one declaration.

Names follow TRL's ``DPOConfig`` where TRL has the concept: ``loss_type`` (one loss or a list, mixed by
``loss_weights``), ``beta`` (the DPO temperature of the implicit reward, and only that), ``max_length`` and
``truncation_mode``, ``precompute_ref_log_probs``, ``disable_dropout``, and TrainingArguments' own
``learning_rate``, ``per_device_train_batch_size``, ``gradient_accumulation_steps``, ``num_train_epochs`` /
``max_steps``, ``output_dir``, ``bf16``. divscale's own: ``sft_weight`` (PRO's SFT term, the paper's beta),
``use_temperature``, ``sft_reduction``, ``max_prompt_length`` (TRL removed its prompt budget in v0.29; the paper
keeps the prompt's last 384 tokens of a 512-token block), ``share_prompt``, ``loss_balance_steps``.

Old names (divscale 0.1) are accepted for one release with a ``FutureWarning``: ``loss`` -> ``loss_type``,
``max_completion_length`` -> ``max_length`` (= prompt + completion budget), ``sft_weight`` beside a DPO-style
loss -> ``loss_type=[<loss>, "sft"]`` with ``loss_weights=[1, w]`` and ``sft_reduction="sequence_sum"``.
"""
from __future__ import annotations

import argparse
import dataclasses
import typing
import warnings
from dataclasses import dataclass, field
from typing import Literal

from divscale.models.hub import model_positions  # noqa: F401  (re-exported: the trainer's modules read it here)

LossType = Literal["pro", "plackett_luce", "all_pairs_dpo", "lipo_lambda", "sft"]
LOSSES: tuple[str, ...] = typing.get_args(LossType)
NEEDS_REFERENCE = ("plackett_luce", "all_pairs_dpo", "lipo_lambda")     # losses on DPO's implicit reward


def default_prompt_length(max_length: int) -> int:
    """The prompt budget when ``max_prompt_length`` is unset: the paper's 384 of 512 (``max_length - 128``), and at
    most three quarters of a shorter block (144 of tiny-gpt's 192 positions)."""
    return max_length - min(128, max_length // 4)


def sequence_lengths(max_length: int | None, max_prompt_length: int | None, positions: int | None,
                     model_name: str = "the model") -> tuple[int, int]:
    """``(max_length, max_prompt_length)`` resolved against the model: unset lengths come from its positions; a
    length the model cannot hold is a one-line error (before any work)."""
    if max_length is None:
        if positions is None:
            raise ValueError(f"max_length is unset and {model_name} does not say how many positions it has; "
                             "set max_length")
        max_length = positions
    if positions is not None and max_length > positions:
        raise ValueError(f"max_length={max_length} exceeds the {positions} positions of {model_name} "
                         f"(max_position_embeddings): set max_length <= {positions}, or leave it unset")
    prompt = default_prompt_length(max_length) if max_prompt_length is None else max_prompt_length
    if not 0 < prompt < max_length:
        raise ValueError(f"max_prompt_length={prompt} must be in [1, max_length={max_length}): the completion "
                         "needs room after the prompt")
    return max_length, prompt


@dataclass
class RankingOptions:
    """Settings of :class:`divscale.train.trainer.RankingTrainer` (see the module docstring for the names)."""

    # ---------------------------------------------------------------- the loss
    loss_type: list[str] = field(default_factory=lambda: ["plackett_luce"], metadata={     # as TRL: list[str], checked
        "help": f"loss(es) on each row's ranked completions, from {list(LOSSES)}; several are summed with "
                "--loss_weights (as TRL's DPOConfig.loss_type)"})
    loss_weights: list[float] | None = field(default=None, metadata={
        "help": "weight of each --loss_type (default: 1 each)"})
    beta: float = field(default=0.1, metadata={
        "help": "DPO temperature of the implicit reward z = beta*(log pi - log pi_ref) (plackett_luce, all_pairs_dpo, "
                "lipo_lambda; TRL's default 0.1)"})
    sft_weight: float = field(default=0.05, metadata={
        "help": "pro only: weight w of PRO's SFT term, scaled w*(n-1)^2 for an n-ranking (the paper's 0.05)"})
    use_temperature: bool = field(default=False, metadata={
        "help": "pro only: PRO's reward-gap temperatures from the rows' scores (every row needs finite scores)"})
    sft_reduction: Literal["token_mean", "sequence_sum"] | None = field(default=None, metadata={
        "help": "the best completion's NLL in the sft loss and PRO's SFT term: token_mean = NLL summed over the "
                "batch's tokens / their count (TRL's SFT), sequence_sum = summed per completion, mean over rows (the "
                "paper's PRO and SFT); default: sequence_sum when pro is a loss, else token_mean"})
    # ---------------------------------------------------------------- sequences
    max_length: int | None = field(default=None, metadata={
        "help": "tokens of prompt + completion (TRL's name); default: the model's positions (max_position_embeddings)"})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "the prompt keeps its LAST this many tokens (the conversation's end), decoded back to text; default: "
                "max_length - min(128, max_length // 4)"})
    truncation_mode: Literal["keep_start"] = field(default="keep_start", metadata={
        "help": "after the prompt budget, prompt + completion is cut at max_length keeping its start (TRL's default; "
                "TRL deprecates keep_end)"})
    share_prompt: bool = field(default=True, metadata={
        "help": "encode each prompt once for its completions (same numbers up to float rounding)"})
    # ---------------------------------------------------------------- reference model
    precompute_ref_log_probs: bool = field(default=False, metadata={
        "help": "score the reference model on the whole training set once before training, then free it"})
    disable_dropout: bool = field(default=True, metadata={
        "help": "no dropout in the policy and the reference (TRL's default; the study keeps the model's dropout)"})
    # ---------------------------------------------------------------- logging
    loss_balance_steps: int = field(default=20, metadata={
        "help": "pro: every this many steps (and the last) log the gradient norms of its ranking and SFT terms; 0: "
                "never"})
    # ---------------------------------------------------------------- TrainingArguments with divscale's defaults
    learning_rate: float = field(default=5e-5, metadata={"help": "constant learning rate of AdamW"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": "rows (prompts) per device and micro-batch"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the data when max_steps is -1"})
    max_steps: int = field(default=-1, metadata={
        "help": "optimizer steps (> 0), or -1 to train num_train_epochs epochs"})
    output_dir: str | None = field(default=None, metadata={"help": "the run folder (default: runs/train/<name>)"})
    bf16: bool = field(default=False, metadata={"help": "bf16 mixed precision (fp32 master weights)"})
    seed: int = field(default=42, metadata={"help": "seed of the data order (and of the held-out rows of --data)"})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "the paper: constant learning rate"})
    warmup_steps: float = field(default=0, metadata={"help": "learning-rate warm-up steps (the paper: none)"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay on every parameter (the paper)"})
    max_grad_norm: float = field(default=1.0, metadata={"help": "gradient clipping (the paper: 1.0)"})
    optim: str = field(default="adamw_torch", metadata={"help": "torch.optim.AdamW"})
    logging_steps: float = field(default=1, metadata={"help": "log (and check for divergence) every this many steps"})
    logging_nan_inf_filter: bool = field(default=False, metadata={
        "help": "never hide a non-finite loss in the logs (a non-finite loss stops training)"})
    report_to: str | None = field(default="none", metadata={"help": "no trackers by default"})
    remove_unused_columns: bool = field(default=False, metadata={"help": "the collator needs the raw columns"})

    def __post_init__(self):
        check_options(self)


# fields the CLI does not expose (set by divscale itself)
HIDDEN = ("report_to", "remove_unused_columns", "logging_nan_inf_filter", "optim")


def losses_of(options) -> list[str]:
    return [options.loss_type] if isinstance(options.loss_type, str) else list(options.loss_type)


def check_options(o) -> None:
    """Cross-field rules and the deprecated names, with one-line errors (also run by ``RankingConfig``)."""
    if isinstance(o.loss_type, str):
        o.loss_type = [o.loss_type]
    o.loss_type = list(o.loss_type)
    bad = [x for x in o.loss_type if x not in LOSSES]
    if bad or not o.loss_type:
        raise ValueError(f"loss_type={o.loss_type!r}: choose one or more of {list(LOSSES)}")
    if len(set(o.loss_type)) != len(o.loss_type):
        raise ValueError(f"loss_type={o.loss_type!r} names a loss twice")
    if o.loss_weights is not None:
        o.loss_weights = [float(w) for w in o.loss_weights]
        if len(o.loss_weights) != len(o.loss_type):
            raise ValueError(f"loss_weights has {len(o.loss_weights)} value(s) for {len(o.loss_type)} loss_type(s) "
                             f"{o.loss_type}; give one weight per loss")
    if o.beta <= 0:
        raise ValueError(f"beta={o.beta}: the DPO temperature must be > 0")
    if o.sft_weight < 0:
        raise ValueError(f"sft_weight={o.sft_weight}: must be >= 0")
    if o.use_temperature and "pro" not in o.loss_type:
        raise ValueError(f"use_temperature applies to the pro loss only, not to {o.loss_type}")
    if o.sft_reduction is None:
        o.sft_reduction = "sequence_sum" if "pro" in o.loss_type else "token_mean"
    for name in ("max_length", "max_prompt_length"):
        value = getattr(o, name)
        if value is not None and value < 1:
            raise ValueError(f"{name}={value}: must be >= 1 (or unset: from the model)")
    if o.max_length is not None and o.max_prompt_length is not None and o.max_prompt_length >= o.max_length:
        raise ValueError(f"max_prompt_length={o.max_prompt_length} must be < max_length={o.max_length}: the "
                         "completion needs room after the prompt")
    if o.max_steps == 0 or o.max_steps < -1:
        raise ValueError(f"max_steps={o.max_steps}: give a number of optimizer steps >= 1, or -1 to train "
                         f"num_train_epochs ({o.num_train_epochs}) epochs")
    if o.max_steps == -1 and not o.num_train_epochs > 0:
        raise ValueError(f"num_train_epochs={o.num_train_epochs} with max_steps=-1 trains nothing; give either > 0")
    if o.loss_balance_steps < 0:
        raise ValueError(f"loss_balance_steps={o.loss_balance_steps}: must be >= 0 (0: never)")


def deprecated(old: str, new: str) -> None:
    warnings.warn(f"'{old}' is deprecated and will be removed in the next release: use {new}", FutureWarning,
                  stacklevel=3)


def translate_deprecated(values: dict) -> dict:
    """Old (divscale 0.1) setting names -> the current ones, each with a FutureWarning. ``values``: keyword
    arguments for :class:`RankingOptions` / ``RankingConfig``; returns a new dict."""
    values = dict(values)
    if "loss" in values:
        deprecated("loss", "loss_type")
        if "loss_type" in values:
            raise ValueError("give loss_type only (loss is its deprecated name)")
        values["loss_type"] = values.pop("loss")
    if "max_completion_length" in values:
        completion = values.pop("max_completion_length")
        deprecated("max_completion_length", "max_length (prompt + completion tokens)")
        if completion is not None:
            if values.get("max_length") is not None:
                raise ValueError("give max_length only (max_completion_length is deprecated)")
            prompt = values.get("max_prompt_length")
            if prompt is None:
                raise ValueError("max_completion_length needs max_prompt_length; give max_length instead")
            values["max_length"] = prompt + completion
    losses = values.get("loss_type", ["plackett_luce"])
    losses = [losses] if isinstance(losses, str) else list(losses)
    weight = values.get("sft_weight")
    if weight is not None and "pro" not in losses and "sft" not in losses:
        deprecated("sft_weight beside a DPO-style loss", f"loss_type={losses + ['sft']} with loss_weights")
        values.pop("sft_weight")
        if weight:
            values["loss_type"] = losses + ["sft"]
            values["loss_weights"] = [1.0] * len(losses) + [float(weight)]
            values.setdefault("sft_reduction", "sequence_sum")        # what the old anchor summed
    elif weight is None:
        values.pop("sft_weight", None)
    return values


# --------------------------------------------------------------------------- flags from the dataclass

def _string_to_bool(value):
    if isinstance(value, bool):
        return value
    if value.lower() in ("yes", "true", "t", "y", "1"):
        return True
    if value.lower() in ("no", "false", "f", "n", "0"):
        return False
    raise argparse.ArgumentTypeError(f"truthy value expected, got {value!r}")


def _choice(choices):
    by_text = {str(c): c for c in choices}
    return lambda text: by_text.get(text, text)


class Given(argparse.Action):
    """Stores the value and records that the flag was given (``namespace._given``), so that a flag that does not
    apply can be refused instead of silently ignored."""

    def __call__(self, parser, namespace, values, option_string=None):
        value = self.const if values is None and self.nargs == "?" else values
        if self.nargs == 0:
            value = self.const
        setattr(namespace, self.dest, value)
        given = getattr(namespace, "_given", None) or {}
        given[self.dest] = option_string
        namespace._given = given


def add_arguments(parser, cls=RankingOptions, skip=()) -> None:
    """One flag per field of ``cls`` the way ``transformers.HfArgumentParser`` makes them (tests compare the two),
    without importing transformers. Fields in ``skip`` and :data:`HIDDEN` are left out."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip or f.name in HIDDEN:
            continue
        hint = hints[f.name]
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kwargs: dict = {"help": f.metadata.get("help"), "action": Given}
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        args = typing.get_args(hint)
        if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType", None)) and \
                type(None) in args and bool not in args:
            hint = next(a for a in args if a is not type(None))
            args = typing.get_args(hint)
        origin = typing.get_origin(hint)
        if origin is Literal:
            kwargs.update(choices=args, type=_choice(args), default=default)
        elif hint is bool:
            kwargs.update(type=_string_to_bool, default=default, nargs="?", const=True)
        elif origin is list:
            item = args[0]
            if typing.get_origin(item) is Literal:
                kwargs.update(choices=typing.get_args(item), type=_choice(typing.get_args(item)))
            else:
                kwargs["type"] = item
            kwargs.update(nargs="+", default=default)
        else:
            if typing.get_origin(hint) is not None:        # e.g. str | None handled above; anything else: str
                hint = str
            kwargs.update(type=hint, default=default)
        if isinstance(kwargs.get("help"), str) and default is not None and "default" not in kwargs["help"]:
            kwargs["help"] += f" (default {default})"
        parser.add_argument(*names, **kwargs)
        if hint is bool and default is True:
            parser.add_argument(f"--no_{f.name}", f"--no-{f.name.replace('_', '-')}", action=Given, nargs=0,
                                const=False, dest=f.name, default=False, help=argparse.SUPPRESS)


def options_from(namespace, cls=RankingOptions, skip=()) -> dict:
    """The ``cls`` field values given on the command line (only those given), by field name."""
    given = getattr(namespace, "_given", None) or {}
    names = {f.name for f in dataclasses.fields(cls)} - set(skip) - set(HIDDEN)
    return {name: getattr(namespace, name) for name in names if name in given}

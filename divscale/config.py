"""Recipes: one typed configuration object built from ``recipes/<profile>.yaml`` plus overrides.

The same code path serves ``smoke`` (CI), ``cpu`` (the default study on a laptop) and the
``paper-*`` recipes (GPU); only the recipe differs. Each section is a dataclass owned by the
module that uses it. Unknown keys are an error, so a typo in a recipe never passes silently.
"""
from __future__ import annotations

import dataclasses
import functools
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from divscale import paths
from divscale.provenance import config_hash


@dataclass
class DataConfig:
    subsets: list[str] = field(default_factory=lambda: list(paths.HH_SUBSETS))
    data_dir: str | None = None          # None: $DIVSCALE_DATA_DIR, data/hh-rlhf, else the hub
    split_seed: int = 42                 # carving pool/dev/test when only test splits exist
    dev_size: int = 280                  # the paper's dev set size
    test_size: int | None = None         # None: all test prompts (paper mode: 8,552); carve mode: half of the rest
    pool_size: int | None = None         # None: everything left for the pool
    grid_seed: int = 42                  # the official code's random.seed(42)
    sizes: list[int] = field(default_factory=lambda: [1500, 2000, 3000, 6000, 12000, 16000, 24000, 36000])
    ranking_lengths: list[int] = field(default_factory=lambda: [2, 3, 4])
    split_mode: Literal["auto", "paper", "carve"] = "auto"   # paper: pool = train splits; carve: all from test;
                                                             # auto: paper if the train splits exist
    drop_ties: bool = False              # drop pairs with identical responses (PRO kept them)
    # each training seed re-draws the grid's subsets and sub-rankings (grid seed = training seed): a replicate
    # then varies the data draw as well as the data order, so a CI over replicates speaks for n and k rather than
    # for one draw of prompts (false: every seed trains on the draw of grid_seed, as the paper's single run)
    redraw_per_seed: bool = False


@dataclass
class RankingExtensionConfig:
    """The `ranking:` section: human pairs extended to n-rankings by a generator, ordered by RM_train."""
    generator: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    k: int = 2                           # extra responses per prompt (4-ranking = 2 human + 2 generated)
    max_new_tokens: int = 128
    max_prompt_tokens: int = 384
    temperature: float = 0.7             # sampling for diversity between the k responses
    top_p: float = 0.9
    seed: int = 42
    workers: int = 1                     # processes sampling the k responses (per-prompt seeds: same output);
                                         # CPU only: on a GPU each worker would hold a copy of the generator
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"   # generator weights (paper: a 7B in bf16)


@dataclass
class RewardConfig:
    # "inproject": Bradley-Terry head on frozen sentence embeddings trained on HH pairs (offline; see reward.py);
    # otherwise a hub id / local path of an OpenAssistant-style sequence-classification RM.
    train_model: str = "inproject"
    test_model: str = "inproject"
    encoder: str = "sentence-transformers/all-MiniLM-L6-v2"
    pairs: str = "pool"                  # pool: halves of the recipe's pool | non-eval: every pair of the pool's
                                         # source split whose prompt is not a dev/test prompt (more pairs)
    max_pairs: int | None = None         # cap per RM (None: the whole half)
    max_length: int = 128                # encoder tokens per text
    hidden: int = 256                    # MLP head width (0: linear)
    dropout: float = 0.1
    batch_size: int = 32                 # pairs per step
    epochs: int = 3
    lr: float = 1e-3
    weight_decay: float = 0.01
    oa_weight: float = 0.0               # > 0: also regress the OpenAssistant 6.9B scores shipped for pool pairs
    # human-pairs: RM_train / RM_test are peers on disjoint halves of the human labels | oa-distilled: both distil
    # the 6.9B scores (oa_weight > 0; needs a pool carved from the HH test splits), RM_test on every pair and
    # RM_train on a train_share of them, as the paper's 1.4B RM_train is to its 6.9B RM_test (reward.design_pairs)
    design: str = "human-pairs"
    train_share: float = 0.25            # oa-distilled: RM_train's share of RM_test's pairs
    query_input: bool = False            # the head also sees the query embedding (reward.BTHead)
    seed: int = 0                        # RM_train uses seed, RM_test seed + 1
    dtype: str = "float32"               # RM_train (OpenAssistant) scoring dtype; bfloat16 allowed (logged warning)
    test_dtype: str = "float32"          # RM_test scoring dtype: float32, as the paper
    workers: int = 1                     # processes embedding texts for the in-project RMs (same vectors)


@dataclass
class PolicyConfig:
    model: str = "tiny-gpt"              # "tiny-gpt" (built by the project) or a hub id / local path
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    vocab_size: int = 8192
    block_size: int = 512
    warmup_steps: int = 200              # causal-LM warm-up on pool dialogues (tiny-gpt only)
    warmup_batch_size: int = 16
    warmup_lr: float = 1e-3
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"   # the weights as loaded (fp32: master weights)
    seed: int = 0                        # initialisation + warm-up data order (tiny-gpt only)
    hub_kernels: bool = False            # transformers' hub kernels (fetched from the hub on a GPU's first
                                         # step): off, and refused with HF_HUB_OFFLINE=1 (divscale.models.hub)


Algo = Literal["sft", "pro", "dpo"]
DPOPairs = Literal["best-vs-rest", "adjacent", "all"]


@dataclass
class TrainConfig:
    """A grid cell's training (names as TRL's / TrainingArguments' where they have the concept)."""
    algos: list[Algo] = field(default_factory=lambda: ["sft", "pro"])
    seeds: list[int] = field(default_factory=lambda: [42, 43, 44])
    max_steps: int = 4000
    prompts_per_step: int = 112          # global batch in prompts (paper: 112)
    per_device_train_batch_size: int = 8
    # per-GPU batch by sequences per prompt in one forward (SFT 1, PRO n, DPO 2); paper OPT: PRO n=4 -> 4
    per_device_batch_by_n: dict[int, int] = field(default_factory=lambda: {4: 4})
    num_processes: int = 7               # training processes (GPUs) to launch; grad accum = prompts_per_step /
                                         # (per-device batch x actual world size), computed at run time
    learning_rate: float = 2e-5
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    max_length: int | None = None        # tokens of prompt + response; None: the policy's positions
    max_prompt_length: int | None = None  # the prompt's last tokens kept; None: max_length - min(128, max_length // 4)
                                          # (the paper: 384 of 512)
    sft_weight: float = 0.05             # PRO's SFT term: weight sft_weight * (n-1)^2 (the paper's beta)
    use_temperature: bool = True
    beta: float = 0.1                    # DPO's temperature
    dpo_learning_rate: float | None = None   # None: the same learning_rate as SFT/PRO
    dpo_pairs: DPOPairs = "best-vs-rest"  # ranking -> DPO pairs: best-vs-rest (y1, yi) | adjacent (yi, yi+1) | all
    eval_every: int = 500                # validate on dev, keep the best checkpoint (also the checkpoint cadence)
    checkpoint: Literal["best-dev", "last"] = "best-dev"   # best-dev: the paper's rule (best dev reward of RM_train)
                                         # | last: the last step, no dev validation
    dev_max_new_tokens: int = 128
    dev_batch_size: int = 28             # the official per_device_eval_batch_size
    bf16: bool = False
    accelerate_config: str | None = None  # paper recipes: accelerate/DeepSpeed ZeRO-2 config

    def __getattr__(self, name: str):    # only reached for names that are not fields: the deprecated ones
        new = DEPRECATED_KEYS[TrainConfig].get(name)
        if new is None:
            raise AttributeError(f"{type(self).__name__} has no field {name!r}")
        _deprecated_key(f"train.{name}", f"train.{new}")
        return getattr(self, new)

    def __setattr__(self, name: str, value) -> None:
        new = DEPRECATED_KEYS[TrainConfig].get(name)
        if new is not None:
            _deprecated_key(f"train.{name}", f"train.{new}")
            name = new
        object.__setattr__(self, name, value)


@dataclass
class EvalConfig:
    max_new_tokens: int = 128
    batch_size: int = 28
    max_prompt_tokens: int = 384
    stop_strings: list[str] = field(default_factory=lambda: ["Human:", "human:", "Assistant:", "assistant:"])
    bootstrap: int = 1000
    test_prompts_per_subset: int | None = None   # None: all


@dataclass
class PrimaryContrast:
    """The study's one primary contrast, declared in the recipe before the runs (issue 19): ``algo`` at an equal
    budget of ``budget`` responses, the cell (n_hi, budget/n_hi) minus (n_lo, budget/n_lo), reported with its
    two parts, the prompt-count part (n_lo, budget/n_hi) - (n_lo, budget/n_lo) and the ranking-length part
    (n_hi, budget/n_hi) - (n_lo, budget/n_hi) (:func:`divscale.report.analysis.budget_decomposition`). Everything
    else the study reports is secondary. ``budget: null``: nothing declared (the three cells are not checked)."""
    algo: Algo = "pro"
    budget: int | None = None
    n_hi: int = 4
    n_lo: int = 2

    @property
    def declared(self) -> bool:
        return self.budget is not None

    def cells(self) -> dict[str, tuple[int, int]]:
        """(n, k) of the three cells: ``hi`` (n_hi, B/n_hi), ``lo`` (n_lo, B/n_lo), ``mid`` (n_lo, B/n_hi)."""
        k_hi, k_lo = self.budget // self.n_hi, self.budget // self.n_lo
        return {"hi": (self.n_hi, k_hi), "lo": (self.n_lo, k_lo), "mid": (self.n_lo, k_hi)}

    def problems(self, recipe: Recipe) -> list[str]:
        """Why the declaration does not fit the recipe's grid (empty: it does). The three cells must be trained:
        the algorithm in train.algos, the budget in grid.equal_budgets, both n in data.ranking_lengths, both k in
        data.sizes; with grid.verdict_seeds, all three must get them (a part on one run has no CI)."""
        if not self.declared:
            return []
        g, d = recipe.grid, recipe.data
        out = []
        if self.algo not in recipe.train.algos:
            out.append(f"grid.primary.algo={self.algo} is not in train.algos {recipe.train.algos}")
        if not self.n_hi > self.n_lo >= 2:
            out.append(f"grid.primary needs n_hi > n_lo >= 2, got n_hi={self.n_hi}, n_lo={self.n_lo}")
        missing = [n for n in (self.n_hi, self.n_lo) if n not in d.ranking_lengths]
        if missing:
            out.append(f"grid.primary's n {missing} not in data.ranking_lengths {d.ranking_lengths}")
        if self.budget not in g.equal_budgets:
            out.append(f"grid.primary.budget={self.budget} is not in grid.equal_budgets {g.equal_budgets}")
        if self.n_hi < 2 or self.n_lo < 2 or self.budget % self.n_hi or self.budget % self.n_lo:
            out.append(f"grid.primary.budget={self.budget} must be divisible by n_hi={self.n_hi} and n_lo={self.n_lo}")
        if out:
            return out
        cells = self.cells()
        absent = sorted({k for _, k in cells.values()} - set(d.sizes))
        if absent:
            out.append(f"grid.primary's cells need sizes {absent}, not in data.sizes {d.sizes}")
        elif g.verdict_seeds:
            lengths = sorted(d.ranking_lengths)
            verdict = {(n, b // n) for b in g.equal_budgets for n in lengths if b % n == 0}
            verdict |= {(n, k) for k in g.contrast_sizes for n in (lengths[0], lengths[-1])}
            thin = [c for c in cells.values() if c not in verdict]
            if thin:
                out.append(f"grid.primary's cell(s) {thin} get no grid.verdict_seeds (one run: no CI); add "
                           f"{sorted({k for _, k in thin})} to grid.contrast_sizes")
        return out


@dataclass
class GridConfig:
    executor: Literal["local", "slurm", "submitit-local"] = "local"   # slurm: submitit jobs
    jobs: int = 1
    equal_budgets: list[int] = field(default_factory=list)   # annotation budgets B: cells (n, B/n)
    # the cells the verdicts read get more seeds than the rest of the grid: the equal-budget cells and, for
    # each k of contrast_sizes, the same-prompts cells (n=2, k) and (n=max, k)
    verdict_seeds: list[int] = field(default_factory=list)   # seeds added to train.seeds on those cells
    contrast_sizes: list[int] = field(default_factory=list)  # k of the same-prompts n=max vs n=2 contrast
    # PRO's β (train.sft_weight) ablation at the equal-budget cells: these β besides the recipe's, in their own
    # table (beta_ablation.csv), with beta_seeds (default: train.seeds)
    beta_ablation: list[float] = field(default_factory=list)
    beta_seeds: list[int] = field(default_factory=list)
    # the one primary contrast, declared before the runs (PrimaryContrast); everything else is secondary
    primary: PrimaryContrast = field(default_factory=PrimaryContrast)


@dataclass
class DiversityConfig:
    """The prompt-diversity metric d = |X|^exponent * r_unique over token N-grams (spec §1), used for every
    d in the study: subset sizes, augmentation, selection."""
    tokenizer: str = "HuggingFaceTB/SmolLM2-135M-Instruct"   # paper: the LLaMA-1 tokenizer (offline default)
    ngram: int = 2                       # N (paper: bigrams)
    exponent: float = 0.5                # 1/p (paper: p = 2, square root)
    max_tokens: int = 512                # only the first 512 tokens of a prompt count (BOS included)


@dataclass
class AugmentConfig:
    seed_size: int = 1500                # the seed set S: the first seed_size prompts of the grid order
    add: int = 1500                      # K prompts to add
    candidate_pool: int = 6000           # U: the next pool prompts of the grid's seeded order after the seed set
                                         # (the grid's own prompts first: already ranked, no new generation)
    ranking_len: int = 2                 # n of the training rankings in the augmentation experiment
    candidates_per_round: int = 50       # m
    jaccard_tau: float = 0.5
    backend: Literal["exact", "minhash"] = "exact"
    support_sample: int | None = None    # None: the whole seed set
    support_includes_added: bool = True  # added prompts join the Jaccard support set
    seed: int = 42                       # candidate draws (and the random baseline)
    train_seeds: list[int] = field(default_factory=list)   # training seeds of each arm (empty: train.seeds)
    num_perm: int = 128                  # minhash backend: permutations
    minhash_seed: int = 1                # minhash backend: permutation seed (pinned)


@dataclass
class SelectConfig:
    budget: int = 1500                   # prompts selected (annotation budget = budget x ranking_len)
    candidate_pool: int = 6000           # the first pool prompts of the grid's seeded order, which every selector
                                         # chooses from (the grid's own prompts first: already ranked)
    ranking_len: int = 2                 # n of the training rankings of the selected prompts
    algos: list[Algo] = field(default_factory=lambda: ["pro"])
    tau: float = 0.9                     # Deita: max cosine *similarity* to kept samples
    scorer: str = "HuggingFaceTB/SmolLM2-135M-Instruct"   # complexity scorer (GPU: hkust-nlp/deita-complexity-scorer)
    quality_scorer: str | None = None    # None: the same model (GPU: hkust-nlp/deita-quality-scorer)
    embedder: str = "sentence-transformers/all-MiniLM-L6-v2"
    selectors: list[str] = field(default_factory=lambda: ["random", "minhash-dedup", "d-greedy", "deita"])
    seed: int = 42                       # random / minhash-dedup sampling, d-greedy candidate draws
    train_seeds: list[int] = field(default_factory=list)   # training seeds of each arm (empty: train.seeds)
    scorer_batch_size: int = 8
    scorer_max_length: int = 1024        # scorer input tokens (left-truncated; the template's end survives)
    dedup_threshold: float = 0.7         # minhash-dedup: estimated N-gram Jaccard (text-dedup's default)
    num_perm: int = 128
    minhash_seed: int = 1
    greedy_sample: int | None = 256      # d-greedy: candidates per step (None: all, exact greedy)


@dataclass
class Recipe:
    name: str = "custom"
    description: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    ranking: RankingExtensionConfig = field(default_factory=RankingExtensionConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    grid: GridConfig = field(default_factory=GridConfig)
    diversity: DiversityConfig = field(default_factory=DiversityConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    select: SelectConfig = field(default_factory=SelectConfig)

    def __post_init__(self):
        check_recipe(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def hash(self, *extra: Any, length: int = 12) -> str:
        """A content hash of this recipe (plus any extra keys) for run directories and caches."""
        return config_hash(self.to_dict(), *extra, length=length)


# old key -> current key, per section (accepted for one release, with a FutureWarning)
DEPRECATED_KEYS: dict[type, dict[str, str]] = {
    TrainConfig: {"lr": "learning_rate", "per_device_batch": "per_device_train_batch_size", "block_size": "max_length",
                  "max_prompt_tokens": "max_prompt_length", "dpo_beta": "beta", "dpo_lr": "dpo_learning_rate"},
}


def _deprecated_key(old: str, new: str) -> None:
    warnings.warn(f"{old} is deprecated and will be removed in the next release: use {new}", FutureWarning,
                  stacklevel=3)


def check_recipe(recipe: Recipe) -> None:
    """The rules between fields, checked when a recipe is built (one-line :class:`RecipeError`)."""
    t, p = recipe.train, recipe.policy
    where = f"recipe {recipe.name}:"
    if p.model == "tiny-gpt":
        if p.n_embd % p.n_head:
            raise RecipeError(f"{where} policy.n_embd={p.n_embd} must be divisible by policy.n_head={p.n_head}")
        if t.max_length is not None and t.max_length > p.block_size:
            raise RecipeError(f"{where} train.max_length={t.max_length} exceeds policy.block_size={p.block_size} "
                              f"(the tiny GPT's positions); lower train.max_length or leave it unset")
    if p.dtype == "float16":
        raise RecipeError(f"{where} policy.dtype=float16 trains float16 weights under AdamW, which turn NaN at the "
                          "first update; use policy.dtype: float32 with train.bf16: true (mixed precision)")
    length = t.max_length if t.max_length is not None else (p.block_size if p.model == "tiny-gpt" else None)
    if t.max_prompt_length is not None and length is not None and not 0 < t.max_prompt_length < length:
        raise RecipeError(f"{where} train.max_prompt_length={t.max_prompt_length} must be in [1, max_length={length}): "
                          "the response needs room after the prompt")
    for name in ("max_steps", "eval_every", "prompts_per_step", "per_device_train_batch_size", "num_processes",
                 "dev_batch_size", "dev_max_new_tokens"):
        if getattr(t, name) < 1:
            raise RecipeError(f"{where} train.{name}={getattr(t, name)} must be >= 1")
    if not t.learning_rate > 0 or (t.dpo_learning_rate is not None and not t.dpo_learning_rate > 0):
        raise RecipeError(f"{where} train.learning_rate / dpo_learning_rate must be > 0")
    if t.beta <= 0 or t.sft_weight < 0:
        raise RecipeError(f"{where} train.beta must be > 0 and train.sft_weight >= 0")
    bad = [n for n in recipe.data.ranking_lengths if n < 2]
    if bad:
        raise RecipeError(f"{where} data.ranking_lengths {recipe.data.ranking_lengths}: every n must be >= 2")
    for problem in recipe.grid.primary.problems(recipe)[:1]:
        raise RecipeError(f"{where} {problem} (a smaller grid for a try-out: also --set grid.primary.budget=null, "
                          "which declares no primary contrast)")


class RecipeError(ValueError):
    """A recipe value that is unknown or cannot be read as its field's type (raised before anything runs)."""


def _type_name(hint: Any) -> str:
    return hint.__name__ if isinstance(hint, type) and not typing.get_args(hint) else str(hint).replace("typing.", "")


@functools.cache
def _adapters(hint: Any):
    from pydantic import TypeAdapter

    return TypeAdapter(hint), TypeAdapter(hint, config={"strict": True})


def _bool_lost(before: Any, after: Any) -> bool:
    """True where a bool of ``before`` became a number in ``after`` (pydantic reads True as 1; we do not)."""
    if isinstance(before, bool):
        return not isinstance(after, bool)
    if isinstance(before, list) and isinstance(after, list):
        return any(_bool_lost(a, b) for a, b in zip(before, after))
    if isinstance(before, dict) and isinstance(after, dict):
        return any(_bool_lost(a, b) for a, b in zip(before.items(), after.items()))
    if isinstance(before, tuple) and isinstance(after, tuple):
        return any(_bool_lost(a, b) for a, b in zip(before, after))
    return False


def coerce_value(hint: Any, value: Any, key: str, where: str = "recipe:", default: Any = dataclasses.MISSING) -> Any:
    """``value`` as the type ``hint`` (int, float, bool, str, Optional, Literal, list/dict of those).

    A value already of the right type is returned unchanged (an int stays an int in a float field, so the
    recipe's hash does not move); one that can be read as it is converted (``'5e-4'`` -> 0.0005, YAML's reading
    of an exponent without a dot; ``'10'`` -> 10); anything else raises a one-line :class:`RecipeError` naming
    the key, the value and the expected type."""
    from pydantic import ValidationError

    lax, strict = _adapters(hint)
    try:
        strict.validate_python(value)
        return value
    except ValidationError:
        pass
    name = _type_name(hint)
    try:
        out = lax.validate_python(value)
        if _bool_lost(value, out):
            raise RecipeError("a boolean is not a number")
        return out
    except (ValidationError, RecipeError) as err:
        if isinstance(err, ValidationError):
            first = err.errors()[0]
            at = "".join(f"[{x!r}]" for x in first["loc"] if not isinstance(x, str) or x not in name)
            reason = f"{'item ' + at + ': ' if at else ''}{first['msg'][0].lower()}{first['msg'][1:]}"
        else:
            reason = str(err)
        example = f", e.g. its default {default!r}" if default is not dataclasses.MISSING else ""
        raise RecipeError(f"{where} {key}={value!r} is not of type {name} ({reason}); give {key} a value "
                          f"of type {name}{example}") from None


def build_config(cls, values: dict[str, Any], where: str, prefix: str = "", origin: dict[str, str] | None = None):
    """``cls`` from a mapping, every value checked and coerced against its field's type (:func:`coerce_value`).
    ``where``: the file the values come from; ``origin``: dotted keys set elsewhere (``--set``) -> their label."""
    if values is None:
        values = {}
    section = prefix.rstrip(".") or "the recipe"
    if not isinstance(values, dict):
        raise RecipeError(f"{where}: {section} must be a mapping of keys to values, got "
                          f"{type(values).__name__} {values!r}")
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(known) - set(DEPRECATED_KEYS.get(cls, {})))
    if unknown:
        raise RecipeError(f"{where}: unknown key(s) {[prefix + str(k) for k in unknown]}; "
                          f"known in {section}: {sorted(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    values = dict(values)
    for old, new in DEPRECATED_KEYS.get(cls, {}).items():
        if old in values:
            if new in values:
                raise RecipeError(f"{where}: give {prefix}{new} only ({prefix}{old} is its deprecated name)")
            _deprecated_key(f"{prefix}{old}", f"{prefix}{new}")
            values[new] = values.pop(old)
            if origin and prefix + old in origin:
                origin = {**origin, prefix + new: origin[prefix + old]}
    for name, value in values.items():
        f = known[name]
        sub = f.default_factory if f.default_factory is not dataclasses.MISSING else None
        if sub is not None and dataclasses.is_dataclass(sub):
            kwargs[name] = build_config(sub, value, where, f"{prefix}{name}.", origin)
        else:
            default = f.default if f.default is not dataclasses.MISSING else (
                sub() if sub is not None else dataclasses.MISSING)
            kwargs[name] = coerce_value(hints[name], value, prefix + name,
                                        (origin or {}).get(prefix + name, f"{where}:"), default)
    return cls(**kwargs)


def set_override(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for i, key in enumerate(keys[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {dotted}: {'.'.join(keys[:i + 1])} is a value, not a section")
    node[keys[-1]] = value


def recipe_path(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") and path.exists():
        return path
    candidate = paths.RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.exists():
        return candidate
    available = sorted(p.stem for p in paths.RECIPES_DIR.glob("*.yaml"))
    raise FileNotFoundError(f"no recipe {name_or_path!r}: give a path to a YAML file or one of {available}")


def load_recipe(name_or_path: str | Path, overrides: dict[str, Any] | None = None) -> Recipe:
    """Load ``recipes/<name>.yaml`` (or a path) and apply dotted overrides, e.g.
    ``{"train.max_steps": 10}``. String override values are parsed as YAML scalars.
    Every value is checked against its field's type and coerced (``"5e-4"`` -> 0.0005); one that cannot be
    is a one-line :class:`RecipeError` naming the key, the value and the type, raised before anything runs."""
    path = recipe_path(name_or_path)
    tree = yaml.safe_load(path.read_text()) or {}
    tree.setdefault("name", path.stem)
    for key, value in (overrides or {}).items():
        key = _current_key(tree, key)
        if isinstance(value, str):
            try:
                value = yaml.safe_load(value)
            except yaml.YAMLError as err:
                raise RecipeError(f"--set {key}={value!r} is not a YAML value "
                                  f"({getattr(err, 'problem', None) or err}); quote it or fix the brackets") from None
        set_override(tree, key, value)
    shown = path.resolve().relative_to(paths.ROOT) if path.resolve().is_relative_to(paths.ROOT) else path
    return build_config(Recipe, tree, str(shown), origin={_current_key({}, key): "--set" for key in overrides or {}})


def _current_key(tree: dict, dotted: str) -> str:
    """An override's key under its current name (a deprecated one warns), with the recipe file's own deprecated
    spelling of the same field dropped, so ``--set train.lr=...`` on a recipe that says ``learning_rate`` (or the
    other way round) overrides it instead of giving the field twice."""
    section, _, name = dotted.partition(".")
    cls = {f.name: f.default_factory for f in dataclasses.fields(Recipe) if f.default_factory is not dataclasses.MISSING}
    aliases = DEPRECATED_KEYS.get(cls.get(section), {})
    if name in aliases:
        _deprecated_key(dotted, f"{section}.{aliases[name]}")
        name = aliases[name]
    node = tree.get(section)
    if isinstance(node, dict):
        for old, new in aliases.items():
            if new == name:
                node.pop(old, None)
    return f"{section}.{name}" if name else dotted


def parse_overrides(pairs: list[str] | None) -> dict[str, Any]:
    """``["train.max_steps=10", ...]`` -> ``{"train.max_steps": "10"}`` (CLI ``--set``)."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"--set expects key=value, got {pair!r}")
        key, value = pair.split("=", 1)
        out[key.strip()] = value
    return out

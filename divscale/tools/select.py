"""Selecting a budgeted subset of prompts: Deita's score-first, diversity-aware filter and simpler selectors.

Deita (Liu et al., ICLR 2024; code hkust-nlp/deita) selects instruction data in three stages:

1. **Score.** An LLM scorer rates the *complexity* c of each user turn and the *quality* q of each
   (user turn, reply) on 1..6: one forward pass on a fixed prompt, a softmax over the logits of the
   six tokens "1".."6" only, and the expectation ``sum_i p_i * i`` (a real number in [1, 6]).
   The evol score of a sample is ``sum over turns of c_t * q_t`` (:func:`evol_score`).
2. **Embed** every sample (Deita: LLaMA-13B last-token state; here MiniLM by default, any encoder).
3. **Filter.** Sort by score (descending) and walk greedily: keep a sample only if its cosine
   *similarity* to every kept sample is <= tau (0.9), until the budget (:func:`deita_select`).
   Deita's paper and README call tau a cosine "distance" threshold, but its code compares tau with
   the cosine similarity and drops a sample when any similarity is > tau; we follow the code.

Deita's scorer returns a silent 3.0 whenever a digit's logit is missing (issue #36: "all samples
rated 3"). Here a scorer that cannot score raises :class:`ScorerError`; there is no default score.

All selectors share ``select(prompts, budget, seed, **ctx) -> Selection`` and are listed in
:data:`SELECTORS`: ``random``, ``minhash-dedup`` (random's order, skipping near-duplicates of the
prompts already chosen), ``d-greedy`` (the paper's metric d as the objective) and ``deita``. A
:class:`Selection` holds the indices in selection order and says what the selector removed on the way
(``removed``: pool indices it skipped as near-duplicates / too similar) and how (``details``), so a
dedup that removed nothing is visible as such (and then picks exactly random's set).
"""
from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from divscale.metrics.diversity import jaccard_matrix, unit_rows
from divscale.models.hub import embed_texts

__all__ = [
    "COMPLEXITY_TEMPLATE", "QUALITY_TEMPLATE", "SELECTORS", "LLMScorer", "RewardScorer", "Scorer",
    "ScorerError", "Selection", "command", "deita_scores", "deita_select",
    "dialogue_turns", "evol_score", "identical_arms", "jaccard_profile",
    "run_selector", "score_digit_ids", "select_d_greedy", "select_deita", "select_minhash_dedup",
    "select_random",
]

# Deita's scorer prompts, verbatim (src/deita/selection/scorer/llama_scorer.py)
COMPLEXITY_TEMPLATE = ("You are a helpful assistant. Please identify the complexity score of the following user "
                       "query. \n##Query: {instruction}  \n##Complexity: ")
QUALITY_TEMPLATE = ("You are a helpful assistant. Please identify the quality score of the Response corresponding "
                    "to the Question. \n #Question#:\n{instruction}\n#Response#:\n{output} \n##Quality: ")
SCORE_LABELS = ("1", "2", "3", "4", "5", "6")


class ScorerError(RuntimeError):
    """A scorer could not produce a score (never replaced by a default value)."""


class Scorer(Protocol):
    def score(self, prompts: Sequence[str], responses: Sequence[str] | None = None) -> np.ndarray: ...


# ----------------------------------------------------------------------------- scoring

def score_digit_ids(tokenizer, labels: Sequence[str] = SCORE_LABELS) -> list[int]:
    """Token ids of the score labels "1".."6", looked up in the tokenizer (never hard-coded).

    Each label must be one token of the vocabulary (LLaMA: 29896.., as Deita hard-codes); otherwise
    the expectation over six tokens is meaningless and we raise :class:`ScorerError`.
    """
    unk = getattr(tokenizer, "unk_token_id", None)
    ids = []
    for label in labels:
        tid = tokenizer.convert_tokens_to_ids(label)
        if tid is None or tid == unk or tokenizer.decode([tid]).strip() != label:
            pieces = tokenizer.encode(label, add_special_tokens=False)
            if len(pieces) != 1 or pieces[0] == unk or tokenizer.decode(pieces).strip() != label:
                raise ScorerError(f"score label {label!r} is not a single token of this tokenizer (encodes to "
                                  f"{pieces}); the Deita scorer needs each of {list(labels)} to be one token")
            tid = pieces[0]
        ids.append(int(tid))
    if len(set(ids)) != len(ids):
        raise ScorerError(f"score labels {list(labels)} map to repeated token ids {ids}")
    return ids


class LLMScorer:
    """Deita's scorer mechanism for any causal LM: ``kind="complexity"`` (``score(prompts)``) or
    ``"quality"`` (``score(prompts, responses)``); returns expected scores in [1, 6].

    Texts are formatted with Deita's template (raw, no chat template, as Deita's scorers were trained;
    ``use_chat_template=True`` wraps it as a user message for general instruction models),
    left-truncated to ``max_length`` tokens (the template's end, "##Complexity: ", always survives),
    left-padded and scored in batches sorted by length. One forward pass per text; the logits of the
    last position at the six label tokens, softmaxed among themselves, give p_1..p_6.
    Defaults: SmolLM2-135M-Instruct offline; ``hkust-nlp/deita-complexity-scorer`` /
    ``hkust-nlp/deita-quality-scorer`` on a GPU box use the same code path.
    """

    def __init__(self, model, tokenizer, kind: str = "complexity", batch_size: int = 8, max_length: int = 1024,
                 use_chat_template: bool = False, progress: bool = False):
        if kind not in ("complexity", "quality"):
            raise ValueError(f"scorer kind must be 'complexity' or 'quality', got {kind!r}")
        self.model, self.tokenizer, self.kind = model, tokenizer, kind
        if hasattr(model, "eval"):
            model.eval()                 # dropout off: a score must not depend on chance
        self.batch_size, self.use_chat_template, self.progress = int(batch_size), use_chat_template, progress
        limit = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
        self.max_length = int(min(max_length, limit)) if limit else int(max_length)
        self.label_ids = score_digit_ids(tokenizer)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is None:
            raise ScorerError("the tokenizer has neither a pad nor an eos token to pad batches with")
        self.pad_id = int(pad)
        self._pass_positions = "position_ids" in inspect.signature(model.forward).parameters

    @classmethod
    def from_pretrained(cls, name_or_path: str, kind: str = "complexity", **kwargs) -> LLMScorer:
        from divscale.models.hub import load_causal_lm
        model, tokenizer = load_causal_lm(name_or_path)
        return cls(model, tokenizer, kind=kind, **kwargs)

    def format(self, prompt: str, response: str | None = None) -> str:
        if self.kind == "complexity":
            text = COMPLEXITY_TEMPLATE.format(instruction=prompt)
        else:
            text = QUALITY_TEMPLATE.format(instruction=prompt, output=response)
        if self.use_chat_template and getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return text

    def label_probs(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), 6) probabilities of the labels "1".."6" for already formatted texts."""
        import torch
        ids = self.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
        bos = getattr(self.tokenizer, "bos_token_id", None)
        ids = [x if len(x) <= self.max_length else                      # keep BOS, cut from the left
               (x[:1] + x[len(x) - self.max_length + 1:] if bos is not None and x[0] == bos else x[-self.max_length:])
               for x in ids]
        if any(len(x) == 0 for x in ids):
            raise ScorerError("a scorer input tokenized to zero tokens")
        order = np.argsort([len(x) for x in ids], kind="stable")
        out = np.zeros((len(ids), len(self.label_ids)))
        starts = range(0, len(ids), self.batch_size)
        if self.progress:
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f"{self.kind} scores", unit="batch")
        label_ids = torch.tensor(self.label_ids)
        with torch.inference_mode():
            for start in starts:
                batch = [ids[i] for i in order[start: start + self.batch_size]]
                width = max(len(x) for x in batch)
                input_ids = torch.tensor([[self.pad_id] * (width - len(x)) + list(x) for x in batch])
                mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch])
                kwargs = {"input_ids": input_ids, "attention_mask": mask}
                if self._pass_positions:
                    kwargs["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
                logits = self.model(**kwargs).logits[:, -1, :].double()
                chosen = logits.index_select(-1, label_ids)
                if not torch.isfinite(chosen).all():
                    raise ScorerError(f"non-finite label logits from the scorer model: {chosen.tolist()}")
                out[order[start: start + self.batch_size]] = torch.softmax(chosen, dim=-1).numpy()
        return out

    def score(self, prompts: Sequence[str], responses: Sequence[str] | None = None) -> np.ndarray:
        prompts = list(prompts)
        if self.kind == "quality":
            if responses is None or len(responses) != len(prompts):
                raise ValueError("the quality scorer needs one response per prompt")
            texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        else:
            texts = [self.format(p) for p in prompts]
        if not texts:
            return np.zeros(0)
        scores = self.label_probs(texts) @ np.arange(1, len(self.label_ids) + 1, dtype=float)
        if not np.all(np.isfinite(scores)) or scores.min() < 1 - 1e-9 or scores.max() > 6 + 1e-9:
            raise ScorerError(f"scores outside [1, 6]: {scores}")
        return scores


class RewardScorer:
    """A reward model (e.g. RM_train, :class:`divscale.reward.rm.RewardModel`) as a quality scorer.

    ``raw=False`` maps the RM logit to Deita's scale: ``1 + 5 * sigmoid(logit)`` in (1, 6), so evol
    scores stay comparable with the LLM scorer's; ``raw=True`` returns the logits (only the order
    matters to :func:`deita_select`, but then c * q can flip sign). A user turn without the HH
    role tags is wrapped as ``"\\n\\nHuman: {text}\\n\\nAssistant:"`` for HH-style reward models.
    """

    def __init__(self, rm, raw: bool = False):
        self.rm, self.raw = rm, raw

    def score(self, prompts: Sequence[str], responses: Sequence[str] | None = None) -> np.ndarray:
        if responses is None or len(responses) != len(prompts):
            raise ValueError("RewardScorer needs one response per prompt")
        prompts = [p if p.lstrip().startswith("Human:") else f"\n\nHuman: {p}\n\nAssistant:" for p in prompts]
        logits = np.asarray(self.rm.score(prompts, list(responses)), dtype=float)
        if logits.shape != (len(prompts),) or not np.all(np.isfinite(logits)):
            raise ScorerError(f"reward model returned {logits.shape} / non-finite scores for {len(prompts)} inputs")
        return logits if self.raw else 1.0 + 5.0 / (1.0 + np.exp(-logits))


def evol_score(complexity_per_turn: Sequence[float], quality_per_turn: Sequence[float]) -> float:
    """Deita's evol score of one sample: ``sum_t c_t * q_t`` over its user turns."""
    c, q = np.asarray(complexity_per_turn, dtype=float), np.asarray(quality_per_turn, dtype=float)
    if c.shape != q.shape or c.ndim != 1 or c.size == 0:
        raise ValueError(f"need one complexity and one quality score per turn, got {c.shape} and {q.shape}")
    return float(np.dot(c, q))


def dialogue_turns(prompt: str, response: str) -> list[tuple[str, str]]:
    """The (user message, following assistant reply) pairs of an HH prompt completed by ``response``."""
    from divscale.data.hh import pro_turns
    turns = pro_turns(prompt.rstrip() + " " + response, keep_paragraphs=True)
    pairs = []
    for i, (tag, text) in enumerate(turns):
        if "prompter" in tag:
            reply = turns[i + 1][1] if i + 1 < len(turns) and "assistant" in turns[i + 1][0] else ""
            pairs.append((text, reply))
    if not pairs:
        raise ValueError(f"no user turn in prompt {prompt[:80]!r}; expected HH format '\\n\\nHuman: ...'")
    return pairs


def deita_scores(prompts: Sequence[str], responses: Sequence[str], complexity: Scorer, quality: Scorer,
                 turns: str = "all") -> np.ndarray:
    """Evol scores of HH samples (prompt + its best response): every user turn is scored for complexity
    and (turn, reply) for quality, and ``c_t * q_t`` is summed (``turns="last"``: the final turn only)."""
    if turns not in ("all", "last"):
        raise ValueError(f"turns must be 'all' or 'last', got {turns!r}")
    per = [dialogue_turns(p, r) for p, r in zip(prompts, responses)]
    if turns == "last":
        per = [t[-1:] for t in per]
    users = [u for t in per for u, _ in t]
    replies = [a for t in per for _, a in t]
    c, q = complexity.score(users), quality.score(users, replies)
    bounds = np.cumsum([0] + [len(t) for t in per])
    return np.array([evol_score(c[a:b], q[a:b]) for a, b in itertools.pairwise(bounds)])


# ----------------------------------------------------------------------------- Deita's filter

def deita_select(scores, embeddings, budget: int, tau: float = 0.9, chunk_size: int = 1024) -> list[int]:
    """Deita's score-first, diversity-aware selection; returns indices in selection order.

    Sort by score, descending (stable: ties keep index order; Deita's pandas sort is not stable), then
    walk greedily: keep a sample iff its cosine **similarity** to every sample kept so far is <= ``tau``
    (a similarity exactly equal to tau is kept, anything above is dropped), until ``budget`` samples are
    kept. Deita's paper calls tau a "distance"; its code compares similarity, as we do.
    Fewer than ``budget`` indices come back only when the pool has no more acceptable samples.

    Vectorised: candidates are taken in chunks; one matrix product gives their similarities to the kept
    set, one more their similarities to each other, and a short loop over the chunk settles the
    within-chunk order. Computed in float64 so that a similarity equal to tau compares as equal.
    """
    s = np.asarray(scores, dtype=np.float64)
    X = unit_rows(embeddings)
    if s.ndim != 1 or len(s) != len(X):
        raise ValueError(f"need one score per embedding row, got {s.shape} scores and {len(X)} rows")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores must be finite (a failed scorer must raise, not return NaN)")
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    order = np.argsort(-s, kind="stable")
    kept: list[int] = []
    K = np.zeros((min(budget, len(s)), X.shape[1]))
    for start in range(0, len(order), chunk_size):
        if len(kept) >= budget:
            break
        chunk = order[start: start + chunk_size]
        E = X[chunk]
        ok = (E @ K[: len(kept)].T <= tau).all(axis=1) if kept else np.ones(len(chunk), dtype=bool)
        inner = E @ E.T
        chosen: list[int] = []                      # positions in the chunk kept so far
        for j in np.flatnonzero(ok):
            if chosen and inner[j, chosen].max() > tau:
                continue
            chosen.append(j)
            K[len(kept)] = E[j]
            kept.append(int(chunk[j]))
            if len(kept) >= budget:
                break
    return kept


# ----------------------------------------------------------------------------- selectors

@dataclass
class Selection:
    """One selector's answer. ``indices``: pool indices in selection order. ``removed``: pool indices the
    selector looked at and refused (near-duplicates of a chosen prompt, Deita's similarity filter), in the
    order it refused them; empty for selectors that remove nothing. ``details``: its settings and counts."""
    selector: str
    indices: list[int]
    pool_size: int
    removed: list[int] = field(default_factory=list)
    details: dict = field(default_factory=dict)

    @property
    def n_removed(self) -> int:
        return len(self.removed)

    def summary(self) -> str:
        """One sentence: what was picked, what was removed and why."""
        why = self.details.get("removed_because", "")
        removed = f"; removed {self.n_removed} ({why})" if why or self.removed else "; removed nothing"
        lengths = ""
        if "mean_tokens_picked" in self.details:
            lengths = (f"; mean prompt length {self.details['mean_tokens_picked']:.0f} tokens "
                       f"(pool {self.details['mean_tokens_pool']:.0f})")
        return f"{self.selector}: picked {len(self.indices)} of {self.pool_size}{removed}{lengths}"

    def to_dict(self) -> dict:
        return asdict(self)


def identical_arms(sets: dict[str, Sequence]) -> dict[str, str | None]:
    """``{arm: first earlier arm with the same set of items, or None}`` (order inside a set ignored).

    Two arms that train on the same prompts are one experiment: a difference between them is a
    comparison of runs with themselves, so tables mark them (``identical_to``) instead of testing them."""
    seen: dict[frozenset, str] = {}
    out: dict[str, str | None] = {}
    for name, items in sets.items():
        key = frozenset(items)
        out[name] = seen.get(key)
        seen.setdefault(key, name)
    return out


def jaccard_profile(sets: Sequence, thresholds: Sequence[float] = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)):
    """How many near-duplicates a pool has: per threshold t, the pairs with J >= t and the prompts that
    have a neighbour with J >= t; plus the quantiles of all pairwise J and of each prompt's nearest
    neighbour. Returns ``(thresholds DataFrame, quantiles DataFrame)``; used to choose the dedup threshold."""
    import pandas as pd

    jac = jaccard_matrix(sets)
    if len(jac) < 2:
        raise ValueError("jaccard_profile needs at least two sets")
    np.fill_diagonal(jac, 0.0)                                   # pairs of two different prompts only
    pairs = jac[np.triu_indices(len(jac), k=1)]
    nearest = jac.max(axis=1)
    by_t = pd.DataFrame([{"threshold": t, "pairs": int((pairs >= t).sum()),
                          "share_of_pairs": float((pairs >= t).mean()),
                          "prompts_with_a_neighbour": int((nearest >= t).sum())} for t in thresholds])
    qs = [0.5, 0.9, 0.99, 0.999, 1.0]
    quant = pd.DataFrame({"all pairs": np.quantile(pairs, qs), "nearest neighbour": np.quantile(nearest, qs)},
                         index=pd.Index(qs, name="quantile"))
    return by_t, quant


def _rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


def _random_order(n: int, seed) -> np.ndarray:
    """The seeded random order of the whole pool that ``random`` takes a prefix of (``minhash-dedup``
    walks the same order, so the two differ exactly by the prompts dedup skips)."""
    return _rng(seed).permutation(n)


def _token_ids(prompts, ctx) -> list[np.ndarray]:
    if ctx.get("token_ids") is not None:
        ids = ctx["token_ids"]
        if len(ids) != len(prompts):
            raise ValueError(f"token_ids has {len(ids)} entries for {len(prompts)} prompts")
        return ids
    if ctx.get("tokenizer") is None:
        raise ValueError("this selector needs tokenizer=... (the metric's tokenizer) or token_ids=...")
    from divscale.metrics.diversity import tokenize_prompts
    return tokenize_prompts(list(prompts), ctx["tokenizer"], max_tokens=ctx.get("max_tokens", 512))


def select_random(prompts: Sequence[str], budget: int, seed: int = 0, **ctx) -> Selection:
    """The first ``budget`` prompts of a seeded random order of the pool (``default_rng(seed).permutation``)."""
    picked = [int(i) for i in _random_order(len(prompts), seed)[:budget]]
    return Selection("random", picked, len(prompts), [], {"seed": seed})


def select_minhash_dedup(prompts: Sequence[str], budget: int, seed: int = 0, *, threshold: float = 0.7,
                         n: int = 2, num_perm: int = 128, minhash_seed: int = 1, **ctx) -> Selection:
    """Random selection without near-duplicates.

    Walk the pool in ``random``'s order (same seed) and take a prompt unless a prompt already taken has
    estimated N-gram Jaccard >= ``threshold`` with it (datasketch MinHash + LSH,
    :class:`divscale.tools.augment.MinHashJaccard`), until ``budget`` are taken. So the arm equals ``random``
    except for the prompts it skips (``Selection.removed``); when it skips none it *is* the random arm.
    0.7 is text-dedup's default. Measure the pool first (:func:`jaccard_profile`): the cpu recipe's 240
    candidates have no pair at 0.6 or above (the closest, 0.59, are two different one-line questions that
    share the role-tag and "How do you" bigrams), so there the arm would be random's and is left out.
    """
    from divscale.tools.augment import MinHashJaccard, ngram_sets
    sets = ngram_sets(_token_ids(prompts, ctx), n)
    filt = MinHashJaccard(threshold, num_perm=num_perm, seed=minhash_seed)
    picked: list[int] = []
    removed: list[int] = []
    for i in _random_order(len(prompts), seed):
        i = int(i)
        if filt.keep_mask([sets[i]])[0]:
            filt.add(sets[i])
            picked.append(i)
            if len(picked) == budget:
                break
        else:
            removed.append(i)
    if len(picked) < budget:
        raise ValueError(f"only {len(picked)} of {len(prompts)} prompts survive MinHash dedup at Jaccard "
                         f"{threshold}; cannot select {budget}: raise the threshold or lower the budget")
    return Selection("minhash-dedup", picked, len(prompts), removed,
                     {"seed": seed, "threshold": threshold, "n": n, "num_perm": num_perm,
                      "removed_because": f"estimated {n}-gram Jaccard >= {threshold} with a prompt already picked"})


def select_d_greedy(prompts: Sequence[str], budget: int, seed: int = 0, *, n: int = 2, exponent: float = 0.5,
                    sample_size: int | None = 256, progress: bool = False, **ctx) -> Selection:
    """The paper's metric as a selection objective: repeatedly add the prompt that maximises d.

    Stochastic greedy ("lazier than lazy greedy", Mirzasoleiman et al. 2015): each step evaluates
    ``d_if_added`` on ``sample_size`` candidates drawn at random (seeded) from those left and adds the
    best (ties: lowest index). ``sample_size=None`` evaluates every remaining prompt (exact greedy,
    O(budget x pool)). Lazy greedy with stale upper bounds is not used: d = |X|^e * unique/total is not
    submodular, so stale gains are not valid bounds. Removes nothing; ``details`` gives the final d and
    the mean token length of the picked prompts beside the pool's (d's r_unique favours short prompts).
    """
    from divscale.metrics.diversity import DiversityAccumulator
    ids = _token_ids(prompts, ctx)
    rng = _rng(seed)
    acc = DiversityAccumulator(n=n, exponent=exponent)
    alive = np.ones(len(ids), dtype=bool)
    chosen: list[int] = []
    steps = range(budget)
    if progress:
        from tqdm.auto import tqdm
        steps = tqdm(steps, desc="d-greedy")
    for _ in steps:
        left = np.flatnonzero(alive)
        if sample_size is not None and sample_size < len(left):
            left = np.sort(rng.choice(left, size=sample_size, replace=False))
        gains = np.array([acc.d_if_added(ids[i]) for i in left])
        best = int(left[int(np.argmax(gains))])
        acc.add(ids[best])
        alive[best] = False
        chosen.append(best)
    lengths = np.array([len(x) for x in ids], dtype=float)
    return Selection("d-greedy", chosen, len(prompts), [],
                     {"seed": seed, "n": n, "exponent": exponent, "sample_size": sample_size, "d": acc.d,
                      "mean_tokens_picked": float(lengths[chosen].mean()) if chosen else float("nan"),
                      "mean_tokens_pool": float(lengths.mean())})


def select_deita(prompts: Sequence[str], budget: int, seed: int = 0, *, tau: float = 0.9, scores=None,
                 embeddings=None, responses: Sequence[str] | None = None, complexity=None, quality=None,
                 embed: Callable[[list[str]], np.ndarray] | None = None, turns: str = "all", **ctx) -> Selection:
    """Deita on HH samples. Give ``scores`` (evol scores) or ``complexity``/``quality`` scorers plus
    ``responses`` (the best response of each prompt); give ``embeddings`` or an ``embed(texts)`` callable
    (default: MiniLM on prompt + " " + response, i.e. the whole sample, as Deita embeds conversations).
    Deterministic; ``seed`` is unused. ``removed``: the samples the score-ordered walk passed over because
    a kept sample was more similar than ``tau``."""
    texts = list(prompts) if responses is None else [p + " " + r for p, r in zip(prompts, responses)]
    if scores is None:
        if complexity is None or quality is None or responses is None:
            raise ValueError("deita needs scores=... or complexity=..., quality=... scorers and responses=...")
        scores = deita_scores(prompts, responses, complexity, quality, turns=turns)
    if embeddings is None:
        embeddings = (embed or embed_texts)(texts)
    picked = deita_select(scores, embeddings, budget, tau=tau)
    if len(picked) < budget:
        raise ValueError(f"Deita kept only {len(picked)} of {len(prompts)} samples at cosine similarity <= {tau}; "
                         f"cannot select {budget}: raise tau or lower the budget")
    order = [int(i) for i in np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")]
    walked = order[: order.index(picked[-1]) + 1] if picked else []
    kept = set(picked)
    return Selection("deita", picked, len(prompts), [i for i in walked if i not in kept],
                     {"tau": tau, "turns": turns,
                      "removed_because": f"cosine similarity > {tau} to a higher-scored sample already kept"})


SELECTORS: dict[str, Callable[..., Selection]] = {
    "random": select_random,
    "minhash-dedup": select_minhash_dedup,
    "d-greedy": select_d_greedy,
    "deita": select_deita,
}


def run_selector(name: str, prompts: Sequence[str], budget: int, seed: int = 0, **ctx) -> Selection:
    """Run selector ``name`` and check its answer: ``budget`` distinct indices into ``prompts``."""
    if name not in SELECTORS:
        raise ValueError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}")
    if not isinstance(budget, (int, np.integer)) or not 1 <= budget <= len(prompts):
        raise ValueError(f"budget must be an integer in [1, {len(prompts)}] (the number of prompts), got {budget}")
    result = SELECTORS[name](prompts, int(budget), seed, **ctx)
    picked = [int(i) for i in result.indices]
    if len(picked) != budget or len(set(picked)) != budget or min(picked) < 0 or max(picked) >= len(prompts):
        raise RuntimeError(f"selector {name!r} returned {len(picked)} indices ({len(set(picked))} distinct) "
                           f"for budget {budget}")
    if set(picked) & set(result.removed):
        raise RuntimeError(f"selector {name!r} reports as removed some prompts it picked")
    result.indices, result.selector = picked, name
    return result


# ----------------------------------------------------------------------------- CLI

def selector_context(name: str, rankings: list, cfg, progress: bool = False, diversity=None) -> dict:
    """The keyword arguments selector ``name`` needs, built from a :class:`SelectConfig` (and the recipe's
    :class:`DiversityConfig` for the metric's tokenizer, N and exponent)."""
    from divscale.config import DiversityConfig
    from divscale.models.hub import load_tokenizer
    div = diversity or DiversityConfig()
    if name == "random":
        return {}
    if name in ("minhash-dedup", "d-greedy"):
        ctx = {"tokenizer": load_tokenizer(div.tokenizer), "n": div.ngram, "max_tokens": div.max_tokens}
        if name == "minhash-dedup":
            ctx |= {"threshold": cfg.dedup_threshold, "num_perm": cfg.num_perm, "minhash_seed": cfg.minhash_seed}
        else:
            ctx |= {"exponent": div.exponent, "sample_size": cfg.greedy_sample, "progress": progress}
        return ctx
    if name == "deita":
        from divscale.models.hub import load_causal_lm
        model, tokenizer = load_causal_lm(cfg.scorer)
        q_model, q_tokenizer = (model, tokenizer) if cfg.quality_scorer in (None, cfg.scorer) else \
            load_causal_lm(cfg.quality_scorer)
        common = {"batch_size": cfg.scorer_batch_size, "max_length": cfg.scorer_max_length, "progress": progress}
        return {"tau": cfg.tau, "responses": [r.responses[0] for r in rankings],
                "complexity": LLMScorer(model, tokenizer, "complexity", **common),
                "quality": LLMScorer(q_model, q_tokenizer, "quality", **common),
                "embed": lambda texts: embed_texts(texts, cfg.embedder, progress=progress)}
    raise ValueError(f"unknown selector {name!r}; choose one of {sorted(SELECTORS)}")


def command(args) -> int:
    from divscale.config import load_recipe, parse_overrides
    from divscale.data.hh import load_rankings, save_rankings
    from divscale.io import atomic_write_json

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    cfg = recipe.select
    budget = cfg.budget if args.budget is None else args.budget
    rankings = load_rankings(args.rankings)
    ctx = selector_context(args.selector, rankings, cfg, progress=True, diversity=recipe.diversity)
    result = run_selector(args.selector, [r.prompt for r in rankings], budget, cfg.seed, **ctx)
    picked = result.indices
    out = Path(args.out)
    save_rankings(out, [rankings[i] for i in picked])
    atomic_write_json(out.with_name(out.name.split(".")[0] + ".indices.json"),
                      {"selector": args.selector, "budget": budget, "seed": cfg.seed, "recipe": recipe.name,
                       "source": str(args.rankings), "indices": picked, "ids": [rankings[i].id for i in picked],
                       "removed": result.removed, "removed_ids": [rankings[i].id for i in result.removed],
                       "details": result.details})
    print(f"{result.summary()} -> {out}")
    return 0

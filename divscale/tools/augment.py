"""Diversity-guided data augmentation (paper §5, reconstructed) and its Jaccard filter.

The paper uses its prompt-diversity metric d to *augment* a budgeted labelled subset with prompts
from a larger pool. Here an added prompt is an HH record like the others: it brings its two human
responses and gets two generated ones, all ordered by RM_train; so augmentation adds labelled
prompts, and what is compared is how the extra prompts are chosen, at an equal number of them.
The text of that section could not be read (see ``docs/paper_spec.md`` §5), so this is the most
faithful reconstruction, with every knob exposed in :class:`divscale.config.AugmentConfig`:

1. Base set S (the budgeted subset; ``seed_size`` prompts, ``seed_ids`` / ``seed_rankings`` in the
   code), candidate pool U (other pool prompts).
2. Rounds: draw ``m`` candidates uniformly (seeded) from what is left of U.
3. Jaccard filter: drop a candidate c when ``J(G(c), G(x)) >= tau`` for ANY prompt x of the
   support set, where G is the set of token N-grams (same tokenizer, N and truncation as the metric)
   and ``J(A, B) = |A & B| / |A | B|``. The support set is the base set (or a seeded sample of it) **plus
   every prompt added so far** -- our choice: otherwise the loop could add two near-duplicates of
   each other; set ``support_includes_added=False`` for the base-set-only reading. (Comparing against the
   *union* of S's N-grams is useless: that union is huge, so J stays near 0.) A dropped candidate is
   removed from U for good: the support set only grows, so it could never pass later.
4. Greedy pick: among the survivors, add the one whose addition raises d the most
   (``DiversityAccumulator.d_if_added``); ties go to the lowest pool index. Survivors that were not
   picked go back to U. A round with no survivor simply draws again.
5. Stop after K additions. If U runs dry first, raise (or warn, ``on_exhausted="warn"``) saying how
   many were added.

The baseline adds K prompts drawn uniformly at random (seeded), without any filter.

Two interchangeable filter backends implement one small protocol (:class:`JaccardFilter`):
:class:`ExactJaccard` (an inverted index with prefix filtering, exact) and :class:`MinHashJaccard`
(datasketch ``MinHash`` + ``MinHashLSH``, approximate, for very large pools). MinHash is our
implementation choice for scale, not the paper's.
"""
from __future__ import annotations

import warnings
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

__all__ = [
    "BACKENDS", "AugmentResult", "ExactJaccard", "JaccardFilter", "MinHashJaccard", "augment_rankings",
    "command", "diverse_augment", "make_filter", "ngram_sets",
    "random_augment",
]


# ----------------------------------------------------------------------------- N-gram sets

def as_ngram_set(codes) -> np.ndarray:
    """Sorted unique int64 codes of one N-gram set."""
    return np.unique(np.asarray(codes, dtype=np.int64).ravel())


def ngram_sets(token_ids: Sequence[np.ndarray], n: int = 2) -> list[np.ndarray]:
    """G(x) for each prompt: the sorted unique int64 codes of its token N-grams (N-grams never cross
    prompt boundaries), computed with the metric's own :func:`divscale.metrics.diversity.ngram_codes`."""
    from divscale.metrics.diversity import ngram_codes
    return [as_ngram_set(ngram_codes(np.asarray(ids), n)) for ids in token_ids]


# ----------------------------------------------------------------------------- the filter protocol

class JaccardFilter(Protocol):
    """A support set of N-gram sets that answers "is this candidate a near-duplicate of any of them?".

    ``keep_mask(candidates)[i]`` is False exactly when ``max_x J(candidates[i], x) >= tau`` over the
    support set (approximately, for MinHash). Empty sets are never near-duplicates (J = 0: the convention of
    :func:`divscale.metrics.diversity.jaccard_matrix`, the package's one Jaccard).
    """
    tau: float

    def fit(self, support_sets: Iterable) -> JaccardFilter: ...
    def add(self, code_set) -> None: ...
    def keep_mask(self, candidate_sets: Sequence) -> np.ndarray: ...
    def __len__(self) -> int: ...


def _check_tau(tau: float) -> float:
    tau = float(tau)
    if not 0.0 < tau <= 1.0:
        raise ValueError(f"Jaccard threshold tau must be in (0, 1], got {tau}")
    return tau


class _Growable:
    """An append-only numpy buffer (amortised doubling), for support-side arrays."""

    def __init__(self, dtype, width: int | None = None):
        shape = (0,) if width is None else (0, width)
        self._buf = np.zeros((16,) + shape[1:], dtype=dtype)
        self._n = 0

    def extend(self, values: np.ndarray) -> None:
        values = np.asarray(values, dtype=self._buf.dtype)
        need = self._n + len(values)
        if need > len(self._buf):
            new = np.zeros((max(need, 2 * len(self._buf)),) + self._buf.shape[1:], dtype=self._buf.dtype)
            new[: self._n] = self._buf[: self._n]
            self._buf = new
        self._buf[self._n: need] = values
        self._n = need

    @property
    def array(self) -> np.ndarray:
        return self._buf[: self._n]

    def __len__(self) -> int:
        return self._n


class ExactJaccard:
    """Exact ``max J >= tau`` test through an inverted index with prefix filtering (AllPairs/PPJoin).

    Why not a plain candidates x support sparse product: every HH prompt shares the role-tag N-grams
    ("Human", ":" ...), so that product is dense (10^9 entries for 10^5 x 10^4). Prefix filtering
    prunes it without changing any decision: if ``J(A, B) >= tau`` then ``|A & B| >= ceil(tau |A|)``,
    and under one fixed global order of N-grams the first ``|A| - ceil(tau |A|) + 1`` N-grams of A and
    the first ``|B| - ceil(tau |B|) + 1`` of B must share one. Ordering N-grams rarest-first (document
    frequency in the support set at ``fit`` time, ties by column id) makes these prefixes rare, so
    the pairs that share a prefix N-gram are few. Each such pair (also within the size bound
    ``tau |A| <= |B| <= |A| / tau``) is then verified by counting its exact intersection, all in
    numpy over many pairs at once.
    """

    def __init__(self, tau: float, chunk_elements: int = 4_000_000):
        self.tau = _check_tau(tau)
        self.chunk_elements = int(chunk_elements)
        self.fit([])

    # --- vocabulary: N-gram code -> column id (grows on add), with frozen document frequencies
    def _lookup(self, codes: np.ndarray) -> np.ndarray:
        """Column ids of ``codes`` (-1 for codes no support set has)."""
        if len(self._vocab_codes) == 0:
            return np.full(len(codes), -1, dtype=np.int64)
        pos = np.searchsorted(self._vocab_codes, codes)
        pos = np.minimum(pos, len(self._vocab_codes) - 1)
        found = self._vocab_codes[pos] == codes
        return np.where(found, self._vocab_cols[pos], -1)

    def _prefix_len(self, sizes: np.ndarray) -> np.ndarray:
        # alpha = ceil(tau * s): the fewest shared N-grams compatible with J >= tau. The tiny slack only
        # ever lengthens the prefix (more pairs to verify), never drops a true pair to rounding.
        alpha = np.ceil(self.tau * sizes - 1e-6).astype(np.int64)
        return np.clip(sizes - alpha + 1, 0, sizes)

    def _prefix(self, seg: np.ndarray, cols: np.ndarray, sizes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For flat entries (set ``seg``, column ``cols``): the rank of each N-gram inside its set under
        the global order, and the mask of those in their set's prefix."""
        if len(cols) == 0:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=bool)
        df = np.where(cols >= 0, self._df.array[np.maximum(cols, 0)], -1)   # unknown N-grams sort first
        order = np.lexsort((cols, df, seg))
        starts = np.concatenate([[0], np.cumsum(sizes)[:-1]])
        rank = np.empty(len(cols), dtype=np.int64)
        rank[order] = np.arange(len(cols)) - starts[seg[order]]
        return rank, rank < self._prefix_len(sizes)[seg]

    def fit(self, support_sets: Iterable) -> ExactJaccard:
        sets = [as_ngram_set(s) for s in support_sets]
        sizes = np.array([len(s) for s in sets], dtype=np.int64)
        flat = np.concatenate(sets) if sets else np.zeros(0, dtype=np.int64)
        vocab, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
        self._vocab_codes = vocab
        self._vocab_cols = np.arange(len(vocab), dtype=np.int64)
        self._df = _Growable(np.int64)
        self._df.extend(counts)
        self._sizes = _Growable(np.int64)
        self._sizes.extend(sizes)
        seg = np.repeat(np.arange(len(sets), dtype=np.int64), sizes)
        cols = inverse.astype(np.int64).ravel()
        # (support id << 32 | column): sorted, because ids ascend and each set's columns ascend
        self._key_parts = [(seg << 32) | cols]
        rank, in_prefix = self._prefix(seg, cols, sizes)
        order = np.argsort(cols[in_prefix], kind="stable")
        self._pre_cols = cols[in_prefix][order]
        self._pre_sids = seg[in_prefix][order]
        self._pre_rank = rank[in_prefix][order]
        return self

    def __len__(self) -> int:
        return len(self._sizes)

    def add(self, code_set) -> None:
        """Append one set to the support set (new N-grams get new columns with frequency 0)."""
        codes = as_ngram_set(code_set)
        cols = self._lookup(codes)
        new = codes[cols < 0]
        if len(new):
            new_cols = np.arange(len(self._df), len(self._df) + len(new), dtype=np.int64)
            pos = np.searchsorted(self._vocab_codes, new)
            self._vocab_codes = np.insert(self._vocab_codes, pos, new)
            self._vocab_cols = np.insert(self._vocab_cols, pos, new_cols)
            self._df.extend(np.zeros(len(new), dtype=np.int64))
            cols[cols < 0] = new_cols
        cols = np.sort(cols)
        sid = len(self._sizes)
        self._sizes.extend([len(cols)])
        self._key_parts.append((np.int64(sid) << 32) | cols)
        rank, in_prefix = self._prefix(np.zeros(len(cols), dtype=np.int64), cols, np.array([len(cols)]))
        pre = cols[in_prefix]
        at = np.searchsorted(self._pre_cols, pre, side="right")
        self._pre_cols = np.insert(self._pre_cols, at, pre)
        self._pre_sids = np.insert(self._pre_sids, at, np.full(len(pre), sid, dtype=np.int64))
        self._pre_rank = np.insert(self._pre_rank, at, rank[in_prefix])

    def _keys(self) -> np.ndarray:
        if len(self._key_parts) > 1:
            self._key_parts = [np.concatenate(self._key_parts)]
        return self._key_parts[0]

    def keep_mask(self, candidate_sets: Sequence) -> np.ndarray:
        sets = [as_ngram_set(s) for s in candidate_sets]
        keep = np.ones(len(sets), dtype=bool)
        if not sets or len(self) == 0:
            return keep
        sizes = np.array([len(s) for s in sets], dtype=np.int64)
        seg = np.repeat(np.arange(len(sets), dtype=np.int64), sizes)
        cols = self._lookup(np.concatenate(sets))
        # 1. candidate pairs: a known prefix N-gram of c is in the prefix of support set s
        rank, in_prefix = self._prefix(seg, cols, sizes)
        in_prefix &= cols >= 0
        p_seg, p_col, p_rank = seg[in_prefix], cols[in_prefix], rank[in_prefix]
        lo = np.searchsorted(self._pre_cols, p_col, side="left")
        hi = np.searchsorted(self._pre_cols, p_col, side="right")
        count = hi - lo
        pair_c = np.repeat(p_seg, count)
        rank_c = np.repeat(p_rank, count)
        at = np.repeat(lo, count) + (np.arange(count.sum()) - np.repeat(np.cumsum(count) - count, count))
        pair_s, rank_s = self._pre_sids[at], self._pre_rank[at]
        # 2. size filter (tau |A| <= |B| <= |A| / tau), one entry per pair: its first shared N-gram
        a, b = sizes[pair_c].astype(float), self._sizes.array[pair_s].astype(float)
        ok = (b >= self.tau * a - 1e-6) & (self.tau * b <= a + 1e-6)
        key = (pair_c[ok] << 32) | pair_s[ok]
        order = np.lexsort((rank_c[ok], key))
        key, first = key[order], np.ones(len(order), dtype=bool)
        first[1:] = key[1:] != key[:-1]
        pairs, r_c, r_s = key[first], rank_c[ok][order][first], rank_s[ok][order][first]
        pair_c, pair_s = pairs >> 32, pairs & 0xFFFFFFFF
        # 3. positional filter (PPJoin): nothing before the first shared N-gram is shared, so
        # |A & B| <= min(|A| - r_c, |B| - r_s); J >= tau needs |A & B| >= tau (|A| + |B|) / (1 + tau)
        a, b = sizes[pair_c], self._sizes.array[pair_s]
        ok = np.minimum(a - r_c, b - r_s) >= self.tau * (a + b) / (1 + self.tau) - 1e-6
        pair_c, pair_s = pair_c[ok], pair_s[ok]
        if len(pair_c) == 0:
            return keep
        # 4. exact verification: |A & B| by membership of (s, col) in the sorted support keys
        keys = self._keys()
        known_cols = [c[c >= 0] for c in np.split(cols, np.cumsum(sizes)[:-1])]
        known_n = np.array([len(c) for c in known_cols], dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(known_n)[:-1]])
        flat_known = np.concatenate(known_cols)
        per_pair = known_n[pair_c]
        bounds = np.searchsorted(np.cumsum(per_pair), np.arange(self.chunk_elements, per_pair.sum(),
                                                                 self.chunk_elements), side="right")
        for chunk in np.split(np.arange(len(pair_c)), bounds):
            if len(chunk) == 0:
                continue
            pc, ps, pn = pair_c[chunk], pair_s[chunk], per_pair[chunk]
            which = np.repeat(np.arange(len(chunk)), pn)
            idx = np.repeat(starts[pc], pn) + (np.arange(pn.sum()) - np.repeat(np.cumsum(pn) - pn, pn))
            probe = (ps[which] << 32) | flat_known[idx]
            hit = np.searchsorted(keys, probe)
            hit = keys[np.minimum(hit, len(keys) - 1)] == probe
            inter = np.bincount(which, weights=hit, minlength=len(chunk))
            union = sizes[pc] + self._sizes.array[ps] - inter
            near = inter / np.maximum(union, 1) >= self.tau
            keep[pc[near]] = False
        return keep


def _hash32(sets: Sequence[np.ndarray]) -> list[list[int]]:
    """Map the int64 N-gram codes of each set to 32-bit ints (MurmurHash3 fmix64, high half) for
    datasketch's ``affine32`` scheme, whose hash function then is plain ``int``. Vectorised over all
    sets at once: hashing item by item with sha1 in Python would dominate the run time."""
    if not sets:
        return []
    x = np.concatenate(sets).astype(np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xFF51AFD7ED558CCD)
        x = (x ^ (x >> np.uint64(33))) * np.uint64(0xC4CEB9FE1A85EC53)
        x = x ^ (x >> np.uint64(33))
    flat = (x >> np.uint64(32)).tolist()
    ends = np.cumsum([len(s) for s in sets]).tolist()
    return [flat[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _require_datasketch():
    import datasketch
    major = int(datasketch.__version__.split(".")[0])
    if major < 2:
        raise ImportError(f"divscale needs datasketch>=2.0 (explicit permutation schemes); found "
                          f"{datasketch.__version__}: pip install 'datasketch>=2.0'")
    return datasketch


class MinHashJaccard:
    """Approximate ``max J >= tau`` test with datasketch ``MinHash`` signatures and ``MinHashLSH``.

    Pinned for reproducibility: ``num_perm``, ``seed``, the ``affine32`` permutation scheme (datasketch
    2.0 changed the default hashing; older ``legacy`` signatures differ) and our own vectorised
    64->32-bit hash of the N-gram codes. Signatures are never cached across runs.

    The LSH index (threshold ``lsh_threshold``, default ``tau``, at most 0.95) proposes support sets; each proposal is
    verified with the signature estimate ``mean(sig_c == sig_s)`` and the candidate is dropped when an
    estimate reaches ``tau``. Errors: near-threshold pairs can go either way (the estimate's standard
    deviation is ``sqrt(J(1-J)/num_perm)``, about 0.044 at J=0.5 with 128 permutations) and LSH can miss
    a true pair; ``benchmarks/bench_augment.py`` measures the agreement with :class:`ExactJaccard`.
    """

    def __init__(self, tau: float, num_perm: int = 128, seed: int = 1, lsh_threshold: float | None = None,
                 weights: tuple[float, float] = (0.5, 0.5)):
        self.tau = _check_tau(tau)
        self.num_perm, self.seed = int(num_perm), int(seed)
        # datasketch cannot band for a threshold near 1 (b < 2); a lower LSH threshold only adds proposals
        self.lsh_threshold = min(self.tau if lsh_threshold is None else float(lsh_threshold), 0.95)
        self.weights = tuple(weights)
        self._ds = _require_datasketch()
        self.fit([])

    def sketch(self, sets: Sequence) -> list:
        """datasketch MinHash signatures of N-gram sets (``MinHash.generator``, pinned parameters)."""
        return self._sketch([as_ngram_set(s) for s in sets])

    def _sketch(self, unique_sets: Sequence[np.ndarray]) -> list:
        return list(self._ds.MinHash.generator(_hash32(unique_sets), num_perm=self.num_perm, seed=self.seed,
                                               hashfunc=int, scheme="affine32"))

    def fit(self, support_sets: Iterable) -> MinHashJaccard:
        self._lsh = self._ds.MinHashLSH(threshold=self.lsh_threshold, num_perm=self.num_perm,
                                        weights=self.weights)
        self._sigs = _Growable(np.uint32, self.num_perm)
        self._n = 0
        sets = [as_ngram_set(s) for s in support_sets]
        sketches = self._sketch(sets)
        with self._lsh.insertion_session() as session:
            for i, (s, mh) in enumerate(zip(sets, sketches)):
                if len(s):                          # an empty set matches nothing (J = 0)
                    session.insert(i, mh, check_duplication=False)
        self._sigs.extend(np.array([mh.hashvalues for mh in sketches], dtype=np.uint32).reshape(-1, self.num_perm))
        self._n = len(sets)
        return self

    def __len__(self) -> int:
        return self._n

    def add(self, code_set) -> None:
        s = as_ngram_set(code_set)
        (mh,) = self._sketch([s])
        if len(s):
            self._lsh.insert(self._n, mh, check_duplication=False)
        self._sigs.extend(mh.hashvalues[None, :])
        self._n += 1

    def keep_mask(self, candidate_sets: Sequence) -> np.ndarray:
        sets = [as_ngram_set(s) for s in candidate_sets]
        keep = np.ones(len(sets), dtype=bool)
        if self._n == 0:
            return keep
        sigs = self._sigs.array
        for i, (s, mh) in enumerate(zip(sets, self._sketch(sets))):
            if not len(s):
                continue
            hits = self._lsh.query(mh)
            if hits and (sigs[hits] == mh.hashvalues).mean(axis=1).max() >= self.tau:
                keep[i] = False
        return keep


BACKENDS = {"exact": ExactJaccard, "minhash": MinHashJaccard}


def make_filter(backend: str, tau: float, **kwargs) -> JaccardFilter:
    """``make_filter("exact"|"minhash", tau, **backend_kwargs)`` (e.g. ``num_perm``, ``seed``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown Jaccard backend {backend!r}; choose one of {sorted(BACKENDS)}")
    return BACKENDS[backend](tau, **kwargs)


# ----------------------------------------------------------------------------- augmentation

@dataclass
class AugmentResult:
    """``indices``: pool indices in the order they were added. ``log``: one dict per addition
    (``step``, ``index``, ``d`` after the addition, ``gain``, ``drawn``/``dropped`` since the previous
    addition). ``exhausted``: the pool ran dry before ``k`` additions (only with ``on_exhausted="warn"``)."""
    method: str
    indices: list[int]
    log: list[dict]
    d_seed: float
    d_final: float
    n_dropped: int = 0
    exhausted: bool = False
    params: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_request(n_pool: int, k: int) -> None:
    if k < 0:
        raise ValueError(f"cannot add a negative number of prompts (k={k})")
    if k > n_pool:
        raise ValueError(f"cannot add k={k} prompts: the candidate pool has only {n_pool}; "
                         f"lower augment.add or give a larger pool")


def random_augment(seed_ids: Sequence[np.ndarray], pool_ids: Sequence[np.ndarray], k: int, *, seed: int = 0,
                   n: int = 2, exponent: float = 0.5) -> AugmentResult:
    """The baseline: add ``k`` pool prompts drawn uniformly at random (``np.random.default_rng(seed)``)."""
    from divscale.metrics.diversity import DiversityAccumulator
    _check_request(len(pool_ids), k)
    acc = DiversityAccumulator(n=n, exponent=exponent)
    acc.add_many(list(seed_ids))
    d_seed = acc.d
    indices = [int(i) for i in np.random.default_rng(seed).choice(len(pool_ids), size=k, replace=False)]
    log = []
    for step, i in enumerate(indices, 1):
        before = acc.d
        acc.add(pool_ids[i])
        log.append({"step": step, "index": i, "d": acc.d, "gain": acc.d - before, "drawn": 1, "dropped": 0})
    return AugmentResult("random", indices, log, d_seed, acc.d, 0, False,
                         {"k": k, "seed": seed, "n": n, "exponent": exponent})


def diverse_augment(seed_ids: Sequence[np.ndarray], pool_ids: Sequence[np.ndarray], k: int, *,
                    m: int = 50, tau: float = 0.5, n: int = 2, exponent: float = 0.5, backend: str = "exact",
                    support_sample: int | None = None, support_includes_added: bool = True, seed: int = 0,
                    on_exhausted: str = "error", filter_kwargs: dict | None = None,
                    progress: bool = False) -> AugmentResult:
    """The paper's augmentation (reconstructed; see the module docstring): add ``k`` prompts of
    ``pool_ids`` to ``seed_ids`` (token-id arrays from :func:`divscale.metrics.diversity.tokenize_prompts`),
    each time the Jaccard-filtered candidate of a random round of ``m`` that raises d the most.

    Randomness: one ``np.random.default_rng(seed)`` draws the support sample (if
    ``support_sample`` < |seed|), then every round's candidates. Same inputs + seed -> same result.
    """
    from divscale.metrics.diversity import DiversityAccumulator
    if on_exhausted not in ("error", "warn"):
        raise ValueError(f"on_exhausted must be 'error' or 'warn', got {on_exhausted!r}")
    if m < 1:
        raise ValueError(f"candidates per round m must be >= 1, got {m}")
    _check_request(len(pool_ids), k)
    rng = np.random.default_rng(seed)
    acc = DiversityAccumulator(n=n, exponent=exponent)
    acc.add_many(list(seed_ids))
    d_seed = acc.d

    support_idx = np.arange(len(seed_ids))
    if support_sample is not None and support_sample < len(seed_ids):
        support_idx = np.sort(rng.choice(len(seed_ids), size=support_sample, replace=False))
    filt = make_filter(backend, tau, **(filter_kwargs or {}))
    filt.fit(ngram_sets([seed_ids[i] for i in support_idx], n))

    cache: dict[int, np.ndarray] = {}

    def gset(i: int) -> np.ndarray:
        if i not in cache:
            cache[i] = ngram_sets([pool_ids[i]], n)[0]
        return cache[i]

    alive = np.ones(len(pool_ids), dtype=bool)
    indices, log = [], []
    drawn = dropped = total_dropped = 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=k, desc=f"augment ({backend}, tau={tau})")
    while len(indices) < k:
        remaining = np.flatnonzero(alive)
        if len(remaining) == 0:
            msg = (f"candidate pool exhausted after adding {len(indices)} of k={k} prompts "
                   f"({total_dropped} candidates dropped as near-duplicates at tau={tau}); "
                   f"raise augment.jaccard_tau, lower augment.add or give a larger pool")
            if on_exhausted == "error":
                raise ValueError(msg)
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            break
        cands = np.sort(rng.choice(remaining, size=min(m, len(remaining)), replace=False))
        keep = filt.keep_mask([gset(int(i)) for i in cands])
        drawn += len(cands)
        dropped += int((~keep).sum())
        alive[cands[~keep]] = False
        survivors = cands[keep]
        if len(survivors) == 0:
            continue
        gains = np.array([acc.d_if_added(pool_ids[int(i)]) for i in survivors])
        best = int(survivors[int(np.argmax(gains))])       # first max = lowest pool index
        before = acc.d
        acc.add(pool_ids[best])
        alive[best] = False
        if support_includes_added:
            filt.add(gset(best))
        indices.append(best)
        total_dropped += dropped
        log.append({"step": len(indices), "index": best, "d": acc.d, "gain": acc.d - before,
                    "drawn": drawn, "dropped": dropped})
        drawn = dropped = 0
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    params = {"k": k, "m": m, "tau": tau, "n": n, "exponent": exponent, "backend": backend,
              "support_size": len(support_idx), "support_includes_added": support_includes_added,
              "seed": seed, "filter_kwargs": dict(filter_kwargs or {})}
    return AugmentResult("diverse", indices, log, d_seed, acc.d, total_dropped, len(indices) < k, params)


def augment_rankings(seed_rankings: list, pool_rankings: list, tokenizer, cfg=None, method: str = "diverse",
                     progress: bool = False, diversity=None):
    """Augment a seed subset of :class:`divscale.data.hh.Ranking` with pool rankings.

    ``cfg`` is an :class:`divscale.config.AugmentConfig` (defaults if None). Returns
    ``(seed + added rankings, AugmentResult)``; indices in the result refer to ``pool_rankings``.
    """
    from divscale.config import AugmentConfig, DiversityConfig
    from divscale.metrics.diversity import tokenize_prompts
    cfg = cfg or AugmentConfig()
    div = diversity or DiversityConfig()
    seed_ids = tokenize_prompts([r.prompt for r in seed_rankings], tokenizer, max_tokens=div.max_tokens)
    pool_ids = tokenize_prompts([r.prompt for r in pool_rankings], tokenizer, max_tokens=div.max_tokens)
    if method == "random":
        result = random_augment(seed_ids, pool_ids, cfg.add, seed=cfg.seed, n=div.ngram, exponent=div.exponent)
    elif method == "diverse":
        kwargs = {"num_perm": cfg.num_perm, "seed": cfg.minhash_seed} if cfg.backend == "minhash" else {}
        result = diverse_augment(seed_ids, pool_ids, cfg.add, m=cfg.candidates_per_round, tau=cfg.jaccard_tau,
                                 n=div.ngram, exponent=div.exponent, backend=cfg.backend,
                                 support_sample=cfg.support_sample,
                                 support_includes_added=cfg.support_includes_added, seed=cfg.seed,
                                 filter_kwargs=kwargs, progress=progress)
    else:
        raise ValueError(f"unknown augmentation method {method!r}; choose 'diverse' or 'random'")
    return list(seed_rankings) + [pool_rankings[i] for i in result.indices], result


# ----------------------------------------------------------------------------- CLI


def command(args) -> int:
    from divscale.config import load_recipe, parse_overrides
    from divscale.data.hh import load_rankings, save_rankings
    from divscale.io import DataError, atomic_write_json
    from divscale.models.hub import load_tokenizer

    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    cfg = recipe.augment
    pool = load_rankings(args.rankings)
    if args.seed_rankings:
        seed = load_rankings(args.seed_rankings)
    else:
        if cfg.seed_size > len(pool):
            raise DataError(f"{args.rankings}: augment.seed_size={cfg.seed_size} but the file has only "
                            f"{len(pool)} rankings; lower augment.seed_size or pass --seed-rankings")
        seed, pool = pool[: cfg.seed_size], pool[cfg.seed_size:]
    seed_ids = {r.id for r in seed}
    pool = [r for r in pool if r.id not in seed_ids]
    tokenizer = load_tokenizer(args.tokenizer or recipe.diversity.tokenizer)
    rankings, result = augment_rankings(seed, pool, tokenizer, cfg, method=args.method, progress=True,
                                        diversity=recipe.diversity)
    out = Path(args.out)
    save_rankings(out, rankings)
    log = result.to_dict() | {"added_ids": [pool[i].id for i in result.indices], "seed_size": len(seed),
                              "pool_size": len(pool), "recipe": recipe.name}
    atomic_write_json(out.with_name(out.name.split(".")[0] + ".log.json"), log)
    print(f"{args.method}: added {len(result.indices)} prompts to {len(seed)}; d {result.d_seed:.3f} -> "
          f"{result.d_final:.3f}; wrote {out}")
    return 0

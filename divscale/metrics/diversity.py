"""Prompt diversity d (Song et al. 2024) and the other diversity measures we compare it with.

The paper's metric (spec §1.1, from the authors' ``data_preprocess/diversity.py``):

    d(X) = |X| ** exponent * r_unique(X),      r_unique(X) = |U_x G_N(x)| / sum_x |grams_N(x)|

Each prompt is tokenized (LLaMA tokenizer, BOS kept, first 512 tokens) and cut into token N-grams
*inside* the prompt (no N-gram crosses two prompts). ``r_unique`` is the number of distinct N-grams
in the whole set over the total number of N-grams: a corpus-level type/token ratio. The factor
``|X| ** exponent`` (paper: N = 2, exponent = 1/2, i.e. the square root) rewards quantity with
diminishing returns, so adding a near-duplicate prompt can *lower* d.

Counting is vectorised so it scales to all of HH-RLHF and beyond: every N-gram becomes one int64
code (``ngram_codes``), all codes of a chunk of prompts are built at once with numpy, N-grams that
would straddle two prompts are masked out, and distinct codes are counted by sorting.
``DiversityAccumulator`` keeps a counter of codes so prompts can be added (or removed) one at a time
in O(tokens of the prompt), which is what greedy diversity-driven selection needs.

The other measures (distinct-n, n-gram diversity score, compression ratio, mean pairwise Jaccard,
Vendi score, remote clique, chamfer distance) are short, deterministic reimplementations; each
docstring names its source.
"""
from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

# --------------------------------------------------------------------------------------------
# The result type and the formula
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DiversityResult:
    """d of one prompt set, with the counts it was computed from."""

    d: float
    r_unique: float
    unique_ngrams: int
    total_ngrams: int
    n_prompts: int

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def d_from(r_unique, n_prompts, exponent: float = 0.5):
    """The paper's d = n_prompts ** exponent * r_unique (works elementwise on arrays too)."""
    return np.power(n_prompts, exponent) * r_unique


def _result(unique: int, total: int, n_prompts: int, exponent: float) -> DiversityResult:
    r = unique / total if total else 0.0  # a set whose prompts are all shorter than N has no N-grams
    return DiversityResult(d=float(d_from(r, n_prompts, exponent)), r_unique=float(r),
                           unique_ngrams=int(unique), total_ngrams=int(total), n_prompts=int(n_prompts))


# --------------------------------------------------------------------------------------------
# N-gram codes
# --------------------------------------------------------------------------------------------

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SIGN = np.int64(-(2 ** 63))


def _mix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser: a bijective, well-mixing map on uint64 (wraps modulo 2**64)."""
    x = x ^ (x >> np.uint64(30))
    x = x * _MIX1
    x = x ^ (x >> np.uint64(27))
    x = x * _MIX2
    return x ^ (x >> np.uint64(31))


def _window_codes(flat: np.ndarray, n: int, m: int) -> np.ndarray:
    """int64 codes of the ``m`` windows ``flat[s:s+n]`` (s = 0..m-1).

    An N-gram whose ids all fit in ``w = 63 // n`` bits is packed exactly into a non-negative
    code (mixed radix 2**w). That covers every real vocabulary for N <= 3 (w = 21 bits, 2M ids) and
    vocabularies up to 32,768 ids (e.g. LLaMA-1) for N = 4. Any other N-gram gets a 63-bit
    splitmix64 hash with the sign bit set, so hashed and packed codes never meet. Two distinct
    hashed N-grams collide with probability 2**-63; among m distinct hashed N-grams the expected
    number of collisions is about m**2 / 2**64 (0.05 for a billion distinct N-grams), each
    lowering the unique count by one.
    """
    w = 63 // n
    windows = [flat[k:k + m] for k in range(n)]
    code = windows[0].astype(np.int64, copy=True)
    too_big = windows[0] >= (1 << w)
    for win in windows[1:]:
        code <<= w
        code |= win
        too_big |= win >= (1 << w)
    if too_big.any():
        idx = np.flatnonzero(too_big)
        h = np.zeros(idx.size, dtype=np.uint64)
        for win in windows:
            h = _mix64(h + win[idx].astype(np.uint64) + _GOLDEN)
        code[idx] = (h >> np.uint64(1)).astype(np.int64) | _SIGN
    return code


def _as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ValueError(f"token ids must be a 1-D sequence, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"token ids must be integers, got dtype {arr.dtype}")
    if arr.dtype == np.uint64:
        if arr.max() >= 2 ** 63:
            raise ValueError("token ids must be below 2**63")
        return arr.astype(np.int64)
    if arr.min() < 0:
        raise ValueError("token ids must be non-negative")
    return arr


def _check_n(n: int) -> None:
    if not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"N-gram order n must be a positive integer, got {n!r}")


def ngram_codes(ids, n: int) -> np.ndarray:
    """int64 codes of the N-grams of one prompt, in order (``len(ids) - n + 1`` of them, or none).

    Equal N-grams get equal codes in every call, so codes from different prompts can be compared.
    """
    _check_n(n)
    arr = _as_ids(ids)
    m = arr.size - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.int64)
    return _window_codes(arr, n, m)


def _flat_codes(flat: np.ndarray, lengths: np.ndarray, n: int) -> np.ndarray:
    """Codes of all N-grams of many prompts stored back to back in ``flat`` (no boundary N-grams)."""
    m = flat.size - n + 1
    if m <= 0:
        return np.empty(0, dtype=np.int64)
    codes = _window_codes(flat, n, m)
    if n > 1:
        # A window starting at end - j (1 <= j < n) of a prompt of length >= j runs past its end.
        valid = np.ones(m, dtype=bool)
        ends = np.cumsum(lengths)
        for j in range(1, n):
            start = ends - j
            ok = (lengths >= j) & (start < m)
            valid[start[ok]] = False
        codes = codes[valid]
    return codes


def _sorted_unique(codes: np.ndarray) -> np.ndarray:
    """np.unique via one sort (numpy's SIMD sort; several times faster than np.unique on int64)."""
    s = np.sort(codes)
    if s.size < 2:
        return s
    keep = np.empty(s.size, dtype=bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


class _UniqueCodes:
    """Distinct codes seen so far: sorted unique chunks, merged when they outgrow the merged part."""

    def __init__(self) -> None:
        self._merged = np.empty(0, dtype=np.int64)
        self._parts: list[np.ndarray] = []
        self._pending = 0
        self.total = 0

    def update(self, codes: np.ndarray, total: int | None = None) -> None:
        """Add a chunk's codes; ``total`` overrides the number of N-grams it stands for."""
        self.total += int(codes.size if total is None else total)
        if codes.size:
            part = _sorted_unique(codes)
            self._parts.append(part)
            self._pending += part.size
            if self._pending > max(self._merged.size, 1 << 22):
                self._merge()

    def _merge(self) -> None:
        if self._parts:
            self._merged = _sorted_unique(np.concatenate([self._merged, *self._parts]))
            self._parts, self._pending = [], 0

    @property
    def unique(self) -> int:
        self._merge()
        return int(self._merged.size)


def _flatten(arrays: Sequence) -> tuple[np.ndarray, np.ndarray]:
    """All prompts' ids back to back, and each prompt's length."""
    arrays = [np.asarray(a) for a in arrays]
    arrays = [a if a.size else np.empty(0, dtype=np.int64) for a in arrays]  # [] is float64 otherwise
    if any(a.ndim != 1 for a in arrays):
        raise ValueError("token ids must be 1-D sequences, one per prompt")
    lengths = np.fromiter((a.size for a in arrays), dtype=np.int64, count=len(arrays))
    flat = np.concatenate(arrays) if lengths.sum() else np.empty(0, dtype=np.int64)
    return _as_ids(flat), lengths


def diversity_from_ids(token_id_arrays: Sequence, n: int = 2, exponent: float = 0.5) -> DiversityResult:
    """d of a prompt set given already-tokenized prompts (one 1-D int array or list per prompt)."""
    _check_n(n)
    if len(token_id_arrays) == 0:
        raise ValueError("no prompts: d is defined for a non-empty prompt set")
    counter = _UniqueCodes()
    step = 65536  # bounded memory for huge inputs
    for i in range(0, len(token_id_arrays), step):
        flat, lengths = _flatten(token_id_arrays[i:i + step])
        counter.update(_flat_codes(flat, lengths, n))
    return _result(counter.unique, counter.total, len(token_id_arrays), exponent)


# --------------------------------------------------------------------------------------------
# Tokenization
# --------------------------------------------------------------------------------------------


def _check_prompts(prompts) -> list[str]:
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts: d is defined for a non-empty prompt set")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, expected a string")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty; drop empty prompts before measuring diversity")
    return prompts


def _encoder(tokenizer, max_tokens: int, add_special_tokens: bool,
             probe: list[str]) -> Callable[[list[str]], list[list[int]]]:
    """A function list[str] -> list[list[int]] for a transformers tokenizer or a plain callable.

    For a transformers tokenizer this is ``tokenizer(batch, truncation=True, max_length=max_tokens,
    add_special_tokens=...)``. For a fast tokenizer we call its Rust backend directly (a copy with
    the same truncation settings, ``encode_batch_fast``), which skips building offsets and Python
    dicts; the two are checked to agree on ``probe`` (plus one over-long text) before use.
    A plain callable's output is truncated to ``max_tokens``; ``add_special_tokens`` is its business.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be positive, got {max_tokens}")
    transformers = sys.modules.get("transformers")  # a transformers tokenizer implies it is imported
    if transformers is not None and isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
        def hf_call(batch: list[str]) -> list[list[int]]:
            return tokenizer(batch, truncation=max_tokens is not None, max_length=max_tokens,
                             add_special_tokens=add_special_tokens, return_attention_mask=False,
                             return_token_type_ids=False)["input_ids"]

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if not getattr(tokenizer, "is_fast", False):
            backend = None
        if backend is None or not hasattr(backend, "encode_batch_fast"):
            return hf_call
        from tokenizers import Tokenizer

        fast = Tokenizer.from_str(backend.to_str())
        fast.no_padding()
        if max_tokens is None:
            fast.no_truncation()
        else:
            fast.enable_truncation(max_tokens, stride=0, strategy="longest_first",
                                   direction=getattr(tokenizer, "truncation_side", "right"))

        def fast_call(batch: list[str]) -> list[list[int]]:
            return [e.ids for e in fast.encode_batch_fast(batch, add_special_tokens=add_special_tokens)]

        check = list(probe[:32]) + [" ".join(probe[:1] * 64)[: 16 * (max_tokens or 512)]]
        return fast_call if fast_call(check) == hf_call(check) else hf_call

    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be a transformers tokenizer or a callable, got {type(tokenizer)}")

    def truncated(ids):
        # No copies: a list/tuple within the limit is passed on as it is, longer ones are sliced once, and
        # a numpy array is sliced as a view (_token_chunks concatenates integer arrays directly). Anything
        # else (an iterator, a torch tensor, ...) is materialised once as a list.
        if not isinstance(ids, (list, tuple, np.ndarray)):
            ids = list(ids)
        return ids if max_tokens is None or len(ids) <= max_tokens else ids[:max_tokens]

    def plain_call(batch: list[str]) -> list[list[int]]:
        out = tokenizer(batch)
        if len(out) != len(batch):
            raise ValueError(f"tokenizer returned {len(out)} token lists for {len(batch)} prompts")
        return [truncated(ids) for ids in out]

    return plain_call


def _token_chunks(prompts: list[str], tokenizer, max_tokens: int, add_special_tokens: bool,
                  chunk_size: int = 8192) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (flat int64 ids, per-prompt lengths) for consecutive chunks of ``prompts``."""
    encode = _encoder(tokenizer, max_tokens, add_special_tokens, prompts)
    for i in range(0, len(prompts), chunk_size):
        ids = encode(prompts[i:i + chunk_size])
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if ids and all(isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype.kind in "iu" for a in ids):
            flat = np.concatenate(ids)           # integer arrays: one memcpy, not one Python int per token
            if flat.dtype == np.uint64 and flat.size and flat.max() >= 2 ** 63:
                raise ValueError("token ids must be below 2**63")
            flat = flat.astype(np.int64, copy=False)
        else:
            flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=int(lengths.sum()))
        if flat.size and flat.min() < 0:
            raise ValueError("tokenizer returned negative token ids")
        yield flat, lengths


def tokenize_prompts(prompts: Sequence[str], tokenizer, max_tokens: int = 512,
                     add_special_tokens: bool = True) -> list[np.ndarray]:
    """Token ids of each prompt (int32 arrays), truncated to the first ``max_tokens`` tokens.

    ``tokenizer`` is a transformers tokenizer (special tokens such as LLaMA's BOS are added when
    ``add_special_tokens``, and count towards ``max_tokens``) or any callable list[str] -> list[list[int]].
    """
    prompts = _check_prompts(prompts)
    out: list[np.ndarray] = []
    for flat, lengths in _token_chunks(prompts, tokenizer, max_tokens, add_special_tokens):
        out.extend(np.split(flat.astype(np.int32), np.cumsum(lengths)[:-1]))
    return out


def prompt_diversity(prompts: Sequence[str], tokenizer, n: int = 2, exponent: float = 0.5,
                     max_tokens: int = 512, add_special_tokens: bool = True) -> DiversityResult:
    """The paper's d of a prompt set (defaults = the paper's N=2, exponent 1/2, 512 tokens, BOS on).

    Prompts are tokenized and counted chunk by chunk, so memory stays bounded by the distinct
    N-grams, not the corpus; repeated prompt texts are tokenized once. Prompts shorter than ``n``
    tokens contribute no N-grams. Tokenization dominates the run time (the counting is ~5% of it).

    >>> ids = {"A": 1, "B": 2, "C": 3, "D": 4, "E": 5, "F": 6, "G": 7}
    >>> split = lambda batch: [[ids[t] for t in p.split()] for p in batch]
    >>> r = prompt_diversity(["A B C D", "A B C E", "F G"], split)
    >>> (r.total_ngrams, r.unique_ngrams, round(r.d, 3))
    (7, 5, 1.237)
    """
    _check_n(n)
    prompts = _check_prompts(prompts)
    # Each distinct text is tokenized once; a repeated prompt adds its N-grams to the total again
    # (they are never new), so the result is exactly that of tokenizing every prompt.
    copies = Counter(prompts)
    texts = list(copies)
    multiplicity = np.fromiter(copies.values(), dtype=np.int64, count=len(texts))
    counter = _UniqueCodes()
    start = 0
    for flat, lengths in _token_chunks(texts, tokenizer, max_tokens, add_special_tokens):
        grams = np.maximum(lengths - n + 1, 0)
        total = int(grams @ multiplicity[start:start + lengths.size])
        counter.update(_flat_codes(flat, lengths, n), total=total)
        start += lengths.size
    return _result(counter.unique, counter.total, len(prompts), exponent)


# --------------------------------------------------------------------------------------------
# Incremental d
# --------------------------------------------------------------------------------------------


class DiversityAccumulator:
    """d of a growing (or shrinking) prompt set, one tokenized prompt at a time.

    Keeps a count per N-gram code, so ``add``/``remove``/``d_if_added`` cost O(tokens of that
    prompt). Gives the same numbers as ``diversity_from_ids`` on the same prompts.
    """

    def __init__(self, n: int = 2, exponent: float = 0.5) -> None:
        _check_n(n)
        self.n, self.exponent = n, exponent
        self._counts: Counter = Counter()
        self.n_prompts = 0
        self.total_ngrams = 0

    def _codes(self, ids) -> list[int]:
        return ngram_codes(ids, self.n).tolist()

    def add(self, ids) -> None:
        codes = self._codes(ids)
        self._counts.update(codes)
        self.total_ngrams += len(codes)
        self.n_prompts += 1

    def add_many(self, list_of_ids: Iterable) -> None:
        for ids in list_of_ids:
            self.add(ids)

    def remove(self, ids) -> None:
        """Take a previously added prompt out again (ValueError if it was not added)."""
        codes = Counter(self._codes(ids))
        if self.n_prompts == 0 or any(self._counts[c] < k for c, k in codes.items()):
            raise ValueError("cannot remove a prompt that was not added")
        for c, k in codes.items():
            left = self._counts[c] - k
            if left:
                self._counts[c] = left
            else:
                del self._counts[c]
        self.total_ngrams -= sum(codes.values())
        self.n_prompts -= 1

    @property
    def unique_ngrams(self) -> int:
        return len(self._counts)

    @property
    def r_unique(self) -> float:
        return self.unique_ngrams / self.total_ngrams if self.total_ngrams else 0.0

    @property
    def d(self) -> float:
        return float(d_from(self.r_unique, self.n_prompts, self.exponent))

    def result(self) -> DiversityResult:
        return _result(self.unique_ngrams, self.total_ngrams, self.n_prompts, self.exponent)

    def d_if_added(self, ids) -> float:
        """The d the set would have with this prompt added (the set is not changed)."""
        codes = self._codes(ids)
        counts = self._counts   # membership per code: O(len(codes)), never a walk over the counter
        new_unique = sum(1 for c in set(codes) if c not in counts)
        return _result(self.unique_ngrams + new_unique, self.total_ngrams + len(codes),
                       self.n_prompts + 1, self.exponent).d

    def gain(self, ids) -> float:
        """d_if_added(ids) - d."""
        return self.d_if_added(ids) - self.d


# --------------------------------------------------------------------------------------------
# Other diversity measures
# --------------------------------------------------------------------------------------------


def _word_ids(words: Iterable[str], vocab: dict[str, int] | None = None) -> list[int]:
    vocab = {} if vocab is None else vocab
    return [vocab.setdefault(w, len(vocab)) for w in words]


def _words_to_ids(texts: Sequence[str]) -> list[list[int]]:
    vocab: dict[str, int] = {}
    return [_word_ids(t.split(), vocab) for t in texts]


def distinct_n(token_arrays_or_texts: Sequence, n: int) -> float:
    """distinct-n (Li et al. 2016, "A Diversity-Promoting Objective Function for Neural
    Conversation Models"): distinct n-grams / total n-grams over a set of sequences.

    Strings are split on whitespace; token-id arrays are used as they are. N-grams stay inside
    each sequence. With token ids, N = 2 this is exactly the paper's r_unique.
    """
    _check_n(n)
    items = list(token_arrays_or_texts)
    if not items:
        raise ValueError("distinct_n needs at least one sequence")
    arrays = _words_to_ids(items) if isinstance(items[0], str) else items
    flat, lengths = _flatten(arrays)
    counter = _UniqueCodes()
    counter.update(_flat_codes(flat, lengths, n))
    if counter.total == 0:
        raise ValueError(f"no {n}-grams: every sequence is shorter than {n}")
    return counter.unique / counter.total


def ngram_diversity_score(texts: Sequence[str], num_n: int = 4) -> float:
    """N-gram diversity score (Shaib et al. 2024, "Standardizing the Measurement of Text
    Diversity", arXiv 2403.00553; package ``diversity``): sum of distinct-1..num_n.

    As in their implementation, the corpus is joined with spaces and split on single spaces, so
    n-grams *do* cross document boundaries (unlike ``distinct_n``). Range 0..num_n.
    """
    words = " ".join(texts).split(" ")
    if len(words) < num_n:
        raise ValueError(f"ngram_diversity_score needs at least {num_n} words")
    flat = np.asarray(_word_ids(words), dtype=np.int64)
    lengths = np.array([flat.size], dtype=np.int64)
    score = 0.0
    for n in range(1, num_n + 1):
        counter = _UniqueCodes()
        counter.update(_flat_codes(flat, lengths, n))
        score += counter.unique / counter.total
    return score


def compression_ratio(texts: Sequence[str]) -> float:
    """Compression ratio (Shaib et al. 2024): raw bytes / gzip bytes of the space-joined corpus.

    Higher = more repetitive. One in-memory pass (gzip level 9, mtime 0, so deterministic); the
    ``diversity`` package gzips twice via temp files, so its numbers are slightly different.
    """
    raw = " ".join(texts).encode("utf-8")
    if not raw:
        raise ValueError("compression_ratio needs non-empty texts")
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


def jaccard_matrix(sets: Sequence[Iterable]) -> np.ndarray:
    """The Jaccard similarity |A∩B| / |A∪B| of every pair of sets (N-gram codes, or any hashable items): an
    (n, n) symmetric matrix from one sparse product, its diagonal J(A, A). The package's one Jaccard: the
    pairwise measure (:func:`mean_pairwise_jaccard`), the selection pool's near-duplicate profile
    (:func:`divscale.tools.select.jaccard_profile`) and the pair form (:func:`jaccard`) all compute it here.

    Convention: **J = 0 when both sets are empty** (and J(∅, ∅) on the diagonal is 0). An empty N-gram set -- a
    prompt shorter than N tokens -- shares no N-gram with anything, so it is similar to nothing: never a
    near-duplicate (the augmentation filters of :mod:`divscale.tools.augment` follow the same rule) and never
    counted as identical to another empty set."""
    import scipy.sparse as sp

    items = [set(np.asarray(s).ravel().tolist()) if isinstance(s, np.ndarray) else set(s) for s in sets]
    vocab: dict = {}
    cols = [vocab.setdefault(x, len(vocab)) for s in items for x in s]
    sizes = np.array([len(s) for s in items], dtype=np.float64)
    indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    m = sp.csr_matrix((np.ones(len(cols)), np.array(cols, dtype=np.int64), indptr),
                      shape=(len(items), max(len(vocab), 1)))
    inter = np.asarray((m @ m.T).todense())
    union = sizes[:, None] + sizes[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def jaccard(a: Iterable, b: Iterable) -> float:
    """The Jaccard similarity of two sets (:func:`jaccard_matrix`; 0 when both are empty)."""
    return float(jaccard_matrix([a, b])[0, 1])


def mean_pairwise_jaccard(sets: Sequence[Iterable], sample: int | None = 1000, seed: int = 0) -> float:
    """Mean Jaccard similarity |A∩B| / |A∪B| over all pairs of sets (higher = less diverse).

    A light stand-in for self-BLEU (Zhu et al. 2018, Texygen), which is O(n²·L) and usually run on
    a sample: with more than ``sample`` sets, a seeded random subset of ``sample`` sets is used.
    Two empty sets have J = 0 (:func:`jaccard_matrix`'s convention).
    """
    sets = list(sets)
    if len(sets) < 2:
        raise ValueError("mean_pairwise_jaccard needs at least two sets")
    if sample is not None and len(sets) > sample:
        pick = np.sort(np.random.default_rng(seed).choice(len(sets), size=sample, replace=False))
        sets = [sets[i] for i in pick]
    return float(jaccard_matrix(sets)[np.triu_indices(len(sets), k=1)].mean())


def unit_rows(X) -> np.ndarray:
    """The rows of a 2-D embedding matrix scaled to length 1 (float64), for cosine similarities; a matrix that is
    not 2-D, not finite or has a zero row is an error (its cosine is undefined)."""
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2:
        raise ValueError(f"embeddings must be a 2-D array, got shape {X.shape}")
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    if not np.all(np.isfinite(X)) or (norms == 0).any():
        raise ValueError("embeddings must be finite and non-zero (a zero vector has no cosine similarity)")
    return X / norms


def vendi_score_embeddings(X, q: float = 1) -> float:
    """Vendi score (Friedman & Dieng 2023, "The Vendi Score"; vertaix/Vendi-Score ``score_dual``).

    exp of the order-q entropy of the eigenvalues of K/n, K = cosine kernel of the L2-normalised
    rows of X: the "effective number of distinct items" (1 for identical rows, n for orthogonal).
    K/n and XᵀX/n share their non-zero eigenvalues, so we diagonalise the d×d matrix when d < n.
    ``q`` may be ``float('inf')``.
    """
    import scipy.linalg

    X = unit_rows(X)
    n, dim = X.shape
    if n == 0:
        raise ValueError("vendi_score_embeddings needs at least one embedding")
    gram = X.T @ X if dim < n else X @ X.T
    w = scipy.linalg.eigvalsh(gram / n)
    w = w[w > 0]
    if q == 1:
        entropy = -(w * np.log(w)).sum()
    elif np.isinf(q):
        entropy = -np.log(w.max())
    else:
        entropy = np.log((w ** q).sum()) / (1 - q)
    return float(np.exp(entropy))


def remote_clique(X) -> float:
    """Remote clique (Shaib et al. 2024's ``remote_clique``): mean pairwise cosine distance.

    Averaged over the n(n-1) ordered pairs i != j (the ``diversity`` package also averages in the
    zero self-distances, i.e. its value is ours times (n-1)/n). Exact in O(n·d):
    sum_{i != j} cos_ij = |sum_i x_i|² - n for unit rows.
    """
    X = unit_rows(X)
    n = X.shape[0]
    if n < 2:
        raise ValueError("remote_clique needs at least two embeddings")
    s = X.sum(axis=0)
    mean_cos = (s @ s - n) / (n * (n - 1))
    return float(1.0 - mean_cos)


def chamfer_distance(X, block: int = 2048) -> float:
    """Chamfer distance (Shaib et al. 2024's ``chamfer_dist``): mean over items of the cosine
    distance to the nearest *other* item. Computed in row blocks, so memory is O(block·n)."""
    X = unit_rows(X)
    n = X.shape[0]
    if n < 2:
        raise ValueError("chamfer_distance needs at least two embeddings")
    nearest = np.empty(n)
    for i in range(0, n, block):
        sim = X[i:i + block] @ X.T
        rows = np.arange(sim.shape[0])
        sim[rows, rows + i] = -np.inf
        nearest[i:i + block] = 1.0 - sim.max(axis=1)
    return float(nearest.mean())


# --------------------------------------------------------------------------------------------
# Tables for the notebooks
# --------------------------------------------------------------------------------------------


def _tokenize_unique(prompt_lists: Iterable[Sequence[str]], tokenizer, max_tokens: int,
                     add_special_tokens: bool) -> dict[str, np.ndarray]:
    """Tokenize every distinct prompt once (nested subsets share most of their prompts)."""
    unique = list(dict.fromkeys(p for prompts in prompt_lists for p in _check_prompts(prompts)))
    return dict(zip(unique, tokenize_prompts(unique, tokenizer, max_tokens, add_special_tokens)))


def diversity_table(prompt_sets: dict, tokenizer, embed: Callable | None = None, n: int = 2,
                    exponent: float = 0.5, max_tokens: int = 512, add_special_tokens: bool = True,
                    jaccard_sample: int = 1000, seed: int = 0):
    """One row per prompt set: the paper's d next to the other measures.

    Columns: label, n_prompts, d, r_unique, unique_ngrams, total_ngrams (paper's metric, tokenizer
    N-grams); distinct_1, distinct_2, ngd_4 (whitespace words); compression_ratio; jaccard (mean
    pairwise Jaccard of the prompts' token N-gram sets, on ``jaccard_sample`` prompts). With
    ``embed`` (list[str] -> array of shape (n, dim)): vendi, remote_clique, chamfer.
    """
    import pandas as pd

    ids = _tokenize_unique(prompt_sets.values(), tokenizer, max_tokens, add_special_tokens)
    rows = []
    for label, prompts in prompt_sets.items():
        arrays = [ids[p] for p in prompts]
        res = diversity_from_ids(arrays, n=n, exponent=exponent)
        row = {"label": label, **res.to_dict(),
               "distinct_1": distinct_n(prompts, 1), "distinct_2": distinct_n(prompts, 2),
               "ngd_4": ngram_diversity_score(prompts, 4), "compression_ratio": compression_ratio(prompts),
               "jaccard": (mean_pairwise_jaccard([ngram_codes(a, n).tolist() for a in arrays],
                                                 sample=jaccard_sample, seed=seed)
                           if len(prompts) > 1 else float("nan"))}
        if embed is not None:
            X = np.asarray(embed(list(prompts)))
            row.update(vendi=vendi_score_embeddings(X), remote_clique=remote_clique(X),
                       chamfer=chamfer_distance(X))
        rows.append(row)
    return pd.DataFrame(rows)


def diversity_grid(prompts_by_size: dict, tokenizer, ns: Sequence[int] = (1, 2, 3, 4),
                   exponents: Sequence[float] = (1 / 3, 1 / 2, 1), max_tokens: int = 512,
                   add_special_tokens: bool = True):
    """d for every (subset size, N, exponent): the sensitivity of the metric to its two knobs.

    ``prompts_by_size`` maps each subset size to its prompts (e.g. the nested subsets of §2.3).
    Returns a DataFrame with columns size, n, exponent, d, r_unique, unique, total.
    """
    import pandas as pd

    for size, prompts in prompts_by_size.items():
        if int(size) != len(prompts):
            raise ValueError(f"prompts_by_size[{size}] holds {len(prompts)} prompts, not {size}")
    ids = _tokenize_unique(prompts_by_size.values(), tokenizer, max_tokens, add_special_tokens)
    rows = []
    for size, prompts in prompts_by_size.items():
        arrays = [ids[p] for p in prompts]
        for n in ns:
            res = diversity_from_ids(arrays, n=n)
            for e in exponents:
                rows.append({"size": int(size), "n": int(n), "exponent": float(e),
                             "d": float(d_from(res.r_unique, len(prompts), e)), "r_unique": res.r_unique,
                             "unique": res.unique_ngrams, "total": res.total_ngrams})
    return pd.DataFrame(rows, columns=["size", "n", "exponent", "d", "r_unique", "unique", "total"])


# --------------------------------------------------------------------------------------------
# CLI: divscale diversity SOURCE --tokenizer NAME_OR_PATH
# --------------------------------------------------------------------------------------------


def read_prompts(source, field: str | None = None, split: str = "train") -> tuple[list[str], str, list[str]]:
    """The prompts of any data divscale reads (:func:`divscale.data.formats.load_prompts`: TRL, HH-RLHF, PRO,
    UltraFeedback, oasst1 trees, the ranked format, NeMo-RL, prompt-only files; files, folders or hub ids), the
    format found and the records skipped (HH pairs that cannot be split into prompt + final responses, as
    ``divscale.data.hh.load_hh_rlhf`` skips them: 2 lines of helpful-online test), with a warning. Prompts are HH
    text (chat messages are written as HH turns), so a prompt's d does not depend on the file format it came in.
    Bad records raise DataError naming the file and record."""
    from divscale.data.formats import load_prompts

    got = load_prompts(source, split=split, field=field)
    if got.skipped:
        print(f"divscale diversity: warning: {got.name}: skipped {len(got.skipped)} record(s) that hold no prompt "
              f"(first: {', '.join(got.skipped[:5])})", file=sys.stderr)
    return got.prompts, got.format, got.skipped


def command(args) -> int:
    from divscale.models.hub import load_tokenizer

    prompts, fmt, skipped = read_prompts(args.file, args.field, args.split)
    tokenizer = load_tokenizer(args.tokenizer)
    res = prompt_diversity(prompts, tokenizer, n=args.n, exponent=args.exponent,
                           max_tokens=args.max_tokens, add_special_tokens=not args.no_special_tokens)
    out = {"file": str(args.file), "format": fmt, "tokenizer": args.tokenizer, "n": args.n,
           "exponent": args.exponent, "max_tokens": args.max_tokens,
           "add_special_tokens": not args.no_special_tokens, "skipped": skipped, **res.to_dict()}
    print(json.dumps(out))
    return 0

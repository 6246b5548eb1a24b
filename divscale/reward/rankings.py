"""Extending HH-RLHF pairs to 4-rankings (spec §2.2).

The paper's 4-ranking pool is the two human responses of each prompt plus two responses from
other LLMs (in PRO: Alpaca-7B and ChatGPT), all four ORDERED BY RM_train, not by the human
label: every candidate is scored with RM_train and sorted by logit, descending; the raw logits
are kept as ``rewards`` (PRO uses them as temperatures). Shorter rankings are random
sub-rankings of the 4-ranking (``divscale.data.subsets.sub_rankings``), never the original pair.

Here the extra responses come from an instruction model run zero-shot (default
SmolLM2-135M-Instruct, offline), sampled (temperature 0.7, top-p 0.9) so the k responses
differ, with the HH prompt rendered through the model's chat template.

Generations are cached per prompt in a JSONL file keyed by (generator, generation config, the
generation code's version, prompt), appended and fsync'ed prompt by prompt: an interrupted run resumes
where it stopped (a torn last line is discarded) and a re-run does not load the generator at all. Each
prompt is generated on its own (its k samples side by side, unpadded, on one thread) and each sample has
its own seed (``divscale.models.generation.row_seed``), so a prompt's responses do not depend on which other
prompts were cached before: a resumed or pre-warmed run produces exactly the responses of a cold one. The
4-rankings file (:func:`rankings_dir`) is keyed by RM_train's fingerprint too. The cache knows the generator by its name (the
id, or ``generator_name``), not by its weights: if different weights hide behind one id (e.g. the
offline Q4_1 SmolLM2 vs the hub's bf16 one), pass a distinct ``generator_name`` or another
``cache_dir``.

Empty generations (the model emits EOS or a stop string at once) are regenerated once with a
different seed; if still empty, the empty string is kept and RM_train ranks it like any other
candidate (typically last) -- dropping it would break the fixed ranking length -- and
``meta["n_empty"]`` counts them. RM_train scores are recomputed on every call (cheap next to
generation) so that a different RM_train can never be served from a stale cache.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from divscale import paths
from divscale.config import load_recipe, parse_overrides
from divscale.io import DataError
from divscale.models.generation import format_prompt, generate
from divscale.provenance import code_version, config_hash

REGENERATE_SEED_OFFSET = 1_000_003


def _generator_name(generator, generator_name: str | None) -> str:
    if generator_name:
        return generator_name
    if isinstance(generator, (str, os.PathLike)):
        return str(generator)
    model = generator[0]
    name = getattr(getattr(model, "config", None), "_name_or_path", "") or getattr(model, "name_or_path", "")
    if not name:
        raise ValueError("pass generator_name=... for a (model, tokenizer) generator without a name_or_path")
    return str(name)


def prompt_key(generator_name: str, gen_config: dict, prompt: str) -> str:
    blob = json.dumps([generator_name, gen_config, prompt], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def load_cache(path: Path) -> dict[str, list[str]]:
    """Read a generation cache, cutting off a torn last line left by an interrupted write.

    Records are written whole, newline-terminated, so a crash can only leave a trailing segment
    without its newline; that segment is dropped (and truncated from the file so later appends
    start on a clean line). A bad complete line is corruption and raises ``DataError``.
    """
    cache: dict[str, list[str]] = {}
    if not path.exists():
        return cache
    data = path.read_bytes()
    complete = data[:data.rfind(b"\n") + 1]          # b"" if there is no newline at all
    for lineno, line in enumerate(complete.split(b"\n")[:-1], start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key, responses = rec["key"], rec["responses"]
            if not isinstance(key, str) or not isinstance(responses, list):
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise DataError(f"{path}:{lineno}: corrupt generation-cache record; "
                            "delete the file to regenerate") from None
        cache[key] = [str(r) for r in responses]
    if len(complete) < len(data):
        with open(path, "r+b") as fh:
            fh.truncate(len(complete))
    return cache


def _append(path: Path, records: list[dict]) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.writelines(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records)
        fh.flush()
        os.fsync(fh.fileno())


def extend_rankings(pool: Sequence, generator, rm_train, k: int = 2,
                    cache_dir: str | os.PathLike | None = None, max_new_tokens: int = 128,
                    max_prompt_tokens: int = 384, batch_size: int = 8, temperature: float = 0.7,
                    top_p: float = 0.9, seed: int = 42, progress: bool = True,
                    generator_name: str | None = None, rm_batch_size: int | None = None,
                    workers: int = 1, dtype: str = "float32") -> list:
    """Add ``k`` generated responses to each ranking of ``pool`` (human pairs) and re-rank all by RM_train.

    ``generator``: a model id / local path (loaded with ``divscale.models.hub.load_causal_lm`` only
    if some prompt is not cached) or a ``(model, tokenizer)`` tuple. ``rm_train``: anything with
    ``score(prompts, responses) -> logits``. Returns one ``Ranking`` per pool entry (same order,
    same ids) with ``n + k`` responses (4 for a pair and k=2) sorted by RM_train logit, descending (ties keep
    human-first order), ``rewards`` = the logits, ``sources`` = provenance of each response. ``dtype``: the
    generator's weights when loaded by name (a 7B generator in bfloat16 on a GPU; samples differ from float32's, so
    a non-default dtype is part of the cache key).

    ``workers > 1`` samples the missing prompts in that many spawned processes (each loads the generator once;
    chunks of up to :data:`CHUNK_PROMPTS` prompts), with the same per-prompt code, seeds and one thread each, so
    the responses are the same as ``workers=1``; used only for a generator given by name and when at least
    ``MIN_PROMPTS_PER_WORKER * workers`` prompts are missing (else serial: spawning costs seconds per process).
    """
    from divscale.data.hh import Ranking

    if k < 1:
        raise ValueError(f"k must be >= 1 extra responses per prompt, got {k}")
    pool = list(pool)
    name = _generator_name(generator, generator_name)
    gen_config = dict(k=k, max_new_tokens=max_new_tokens, max_prompt_tokens=max_prompt_tokens,
                      temperature=temperature, top_p=top_p, seed=seed)
    if dtype != "float32":                      # float32 samples keep the keys they always had
        gen_config["dtype"] = dtype
    cache_root = Path(cache_dir) if cache_dir is not None else paths.cache_dir() / "generations"
    cache_root.mkdir(parents=True, exist_ok=True)
    # the file is keyed by the generation code's version too: samples drawn by older code are not reused
    cache_path = cache_root / f"gen-{config_hash(name, gen_config, code_version('generate'), length=16)}.jsonl"
    cache = load_cache(cache_path)

    prompts = list(dict.fromkeys(r.prompt for r in pool))           # unique, first-seen order
    keys = {p: prompt_key(name, gen_config, p) for p in prompts}
    missing = [p for p in prompts if keys[p] not in cache]
    if missing:
        # One prompt per forward pass (its k samples side by side: identical rows, no padding). A batch of
        # different prompts pads them to one width, and padding changes the logits' last bits, so a sample
        # would depend on which other prompts happened to be missing from the cache; unpadded it does not,
        # and on a CPU it is no slower (measured: 44 s vs 51 s for 8 prompts x 2 samples x 48 tokens).
        gen = {"max_new_tokens": max_new_tokens, "max_prompt_tokens": max_prompt_tokens, "batch_size": k,
               "do_sample": True, "temperature": temperature, "top_p": top_p}
        bar = _progress(len(missing), progress, f"generate ({name})")

        def store(chunk: list[str], outputs: list[list[str]]) -> None:
            records = [{"key": keys[p], "responses": outs} for p, outs in zip(chunk, outputs)]
            _append(cache_path, records)
            cache.update((rec["key"], rec["responses"]) for rec in records)
            bar.update(len(chunk))

        parallel = (workers > 1 and not isinstance(generator, tuple)
                    and len(missing) >= MIN_PROMPTS_PER_WORKER * workers)
        if parallel:
            _sample_in_pool(str(generator), missing, k, seed, gen, workers, store, dtype)
        else:
            model, tokenizer = (generator if isinstance(generator, tuple)
                                else _load_generator(str(generator), dtype))
            from divscale.provenance import deterministic

            with deterministic(1):
                for p in missing:
                    store([p], [_sample_prompt(model, tokenizer, format_prompt(p, tokenizer), k, seed, gen)])
        bar.close()

    # score every candidate with RM_train in one batched call
    cands = [list(r.responses) + cache[keys[r.prompt]] for r in pool]
    flat_p = [r.prompt for r, c in zip(pool, cands) for _ in c]
    flat_r = [x for c in cands for x in c]
    kw = {"batch_size": rm_batch_size} if rm_batch_size else {}
    logits = np.asarray(rm_train.score(flat_p, flat_r, progress=progress, **kw), dtype=np.float64).reshape(-1)
    if len(logits) != len(flat_r):
        raise ValueError(f"rm_train.score returned {len(logits)} scores for {len(flat_r)} responses")

    out, pos = [], 0
    for r, c in zip(pool, cands):
        scores = logits[pos:pos + len(c)]
        pos += len(c)
        if len(r.sources) != r.n:
            raise ValueError(f"ranking {r.id!r}: {len(r.sources)} sources for {r.n} responses")
        sources = list(r.sources) + [name] * k
        order = sorted(range(len(c)), key=lambda i: -scores[i])      # stable: ties keep human first
        meta = dict(r.meta or {})
        meta.update(generator=name, generation=gen_config, n_empty=sum(1 for x in c[r.n:] if not x),
                    ranked_by="rm_train")
        out.append(Ranking(id=r.id, prompt=r.prompt, responses=[c[i] for i in order],
                           rewards=[float(scores[i]) for i in order], sources=[sources[i] for i in order],
                           subset=r.subset, meta=meta))
    return out


def _sample_prompt(model, tokenizer, formatted: str, k: int, seed: int, gen: dict) -> list[str]:
    """The ``k`` sampled responses of one (formatted) prompt, empty ones regenerated once with another seed."""
    rows = [formatted] * k
    outs = generate(model, tokenizer, rows, seed=seed, **gen)
    empty = [i for i, o in enumerate(outs) if not o]
    if empty:                                                         # one retry with another seed
        retry = generate(model, tokenizer, [rows[i] for i in empty], seed=seed + REGENERATE_SEED_OFFSET, **gen)
        for i, o in zip(empty, retry):
            outs[i] = o
    return outs


# worker processes of ``extend_rankings(..., workers > 1)``: module level, so that "spawn" can pickle them
MIN_PROMPTS_PER_WORKER = 2     # fewer missing prompts than this per worker: serial (spawning costs seconds)
CHUNK_PROMPTS = 8              # at most this many prompts per task (the cache file is appended task by task)
_WORKER_GENERATOR: dict = {}


def _init_generation_worker(generator: str, dtype: str = "float32") -> None:
    import torch

    torch.set_num_threads(1)
    _WORKER_GENERATOR["model"], _WORKER_GENERATOR["tokenizer"] = _load_generator(generator, dtype)


def _generate_chunk(prompts: list[str], k: int, seed: int, gen: dict) -> list[list[str]]:
    from divscale.provenance import deterministic

    model, tokenizer = _WORKER_GENERATOR["model"], _WORKER_GENERATOR["tokenizer"]
    with deterministic(1):
        return [_sample_prompt(model, tokenizer, format_prompt(p, tokenizer), k, seed, gen) for p in prompts]


def _sample_in_pool(generator: str, missing: list[str], k: int, seed: int, gen: dict, workers: int, store,
                    dtype: str = "float32") -> None:
    """Sample ``missing`` in ``workers`` spawned processes; ``store(chunk, outputs)`` runs in this process as each
    chunk finishes (contiguous chunks, about four per worker, at most ``CHUNK_PROMPTS`` prompts)."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    size = max(1, min(CHUNK_PROMPTS, len(missing) // (4 * workers)))
    chunks = [missing[i:i + size] for i in range(0, len(missing), size)]
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_generation_worker, initargs=(generator, dtype))
    try:
        pending = {pool.submit(_generate_chunk, chunk, k, seed, gen): chunk for chunk in chunks}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                store(pending.pop(fut), fut.result())
    finally:   # on an error or an interrupt, drop the chunks not started (what is stored stays cached)
        pool.shutdown(wait=True, cancel_futures=True)


def _load_generator(name: str, dtype: str = "float32"):
    from divscale.models.hub import load_causal_lm

    return load_causal_lm(name, dtype=dtype)


def _progress(total: int, enabled: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="prompt", disable=not enabled)


# --------------------------------------------------------------------------------------------------
# the `divscale rankings` command


def rankings_dir(recipe, pool_ids: Sequence[str] = (), rm_train_fingerprint: str | None = None) -> Path:
    """``runs/rankings/<hash>``: keyed by the recipe's data, ranking and RM_train settings, RM_train's
    fingerprint (the content hash of its weights: a re-trained RM_train re-ranks) and the code version of
    generation and ranking."""
    # ``workers`` (how many processes) does not change the output, so it is not part of the key
    key = config_hash(recipe.data.__dict__, {k: v for k, v in recipe.ranking.__dict__.items() if k != "workers"},
                      {k: v for k, v in recipe.reward.__dict__.items() if k not in ("test_model", "workers")},
                      list(pool_ids),
                      rm_train_fingerprint, code_version("generate", "rankings"))
    return paths.RUNS_DIR / "rankings" / key


def build_rankings(recipe, out_dir: str | os.PathLike | None = None, progress: bool = True,
                   pool: Sequence | None = None, rm_train=None) -> Path:
    """Pool pairs -> RM_train -> 4-rankings, written atomically to ``<dir>/rankings4.jsonl``.

    ``pool`` (the recipe's pool as 2-rankings) and ``rm_train`` are built from the recipe unless
    given. Returns the file path; an existing file for the same inputs is reused as is.
    """
    from divscale.data.hh import load_splits, rankings_from_pairs, save_rankings

    if pool is None:
        pool = rankings_from_pairs(load_splits(recipe.data)["pool"])
    if rm_train is None:
        from divscale.reward.rm import build_reward_models

        rm_train, _ = build_reward_models(recipe, pool)
    folder = Path(out_dir) if out_dir is not None else rankings_dir(recipe, [r.id for r in pool],
                                                                    getattr(rm_train, "fingerprint", None))
    target = folder / "rankings4.jsonl"
    if target.exists():
        return target
    cfg = recipe.ranking
    ranked = extend_rankings(pool, cfg.generator, rm_train, k=cfg.k, max_new_tokens=cfg.max_new_tokens,
                             max_prompt_tokens=cfg.max_prompt_tokens, temperature=cfg.temperature,
                             top_p=cfg.top_p, seed=cfg.seed, progress=progress, workers=cfg.workers, dtype=cfg.dtype)
    save_rankings(target, ranked)
    return target


def command(args: argparse.Namespace) -> int:
    recipe = load_recipe(args.recipe, parse_overrides(args.set))
    path = build_rankings(recipe, out_dir=args.out)
    print(path)
    return 0

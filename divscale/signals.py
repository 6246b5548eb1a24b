"""A stop stops everything: Ctrl-C or SIGTERM on a divscale command ends every process it started.

Jupyter kernels (papermill, one per executed notebook) start in sessions of their own, so a signal sent to a
terminal's or make's process group never reaches them, nor the multiprocessing workers a notebook starts, nor an
``accelerate launch`` and its ranks. :func:`stop_children_on_signal` (every ``divscale`` command runs inside it,
see :func:`divscale.cli.main`) catches SIGINT and SIGTERM, sends SIGTERM to every descendant of this process
(the whole tree, taken at once, so a worker whose kernel dies first is not orphaned out of reach), SIGKILLs
those still alive after a grace period, and exits with 128 + the signal number. Nothing half-written is
left looking complete: results, checkpoints and executed notebooks are written under temporary names and renamed
when whole (:func:`divscale.io.atomic_path`), so the next run redoes only what was cut short.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

GRACE_SECONDS = 5.0


def terminate_descendants(grace: float = GRACE_SECONDS) -> list[int]:
    """SIGTERM every descendant process (children, grandchildren, ... in any session), then SIGKILL the ones
    still alive after ``grace`` seconds; returns their pids."""
    import psutil

    try:
        family = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    for proc in family:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(family, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)
    return [p.pid for p in family]


def _stop(signum, frame) -> None:            # noqa: ARG001 - a signal handler's signature
    name = signal.Signals(signum).name
    print(f"\ndivscale: {name}: stopping every process this command started; complete results are kept",
          file=sys.stderr, flush=True)
    terminate_descendants()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signum)                   # no thread (papermill, a cell pool) starts anything new on the way out


@contextlib.contextmanager
def stop_children_on_signal() -> Iterator[None]:
    """Within the block, SIGINT / SIGTERM stop this process and all its descendants (see the module docstring).
    Only the main thread can install handlers; elsewhere the block runs unchanged."""
    try:
        saved = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:                       # not the main thread
        yield
        return
    try:
        yield
    finally:
        for sig, handler in saved.items():
            signal.signal(sig, handler)

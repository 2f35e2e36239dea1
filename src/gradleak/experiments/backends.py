"""Where cases run: in this process, in a pool of worker processes, or on a Ray cluster.

Every backend runs :func:`execute` on each case and hands back ``(case, record, files)`` as cases
finish; only the calling process writes into the run's folder. Workers use one CPU thread each
unless told otherwise (:mod:`gradleak.threads`), and die with the process that started them.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from gradleak import threads
from gradleak.errors import GradleakError
from gradleak.experiments.spec import Case, RunOptions

BACKENDS = ("local", "ray")
#: A process pool says it is alive when no case has finished for this long (seconds).
HEARTBEAT_SECONDS = 60.0
Outcome = tuple[Case, dict, dict]


def execute(
    case: Case, root: str, thread_count: int | None = None, callback=None, device: str = "cpu"
):
    """Run one case (in whichever process or Ray worker this is): its record and files.
    ``thread_count=None`` chooses by the policy of :mod:`gradleak.threads`."""
    import torch

    from gradleak.experiments.methods import run_case

    if thread_count is None:
        thread_count = threads.choose(None, macs=_macs(case))
    previous = torch.get_num_threads()
    threads.apply(thread_count)
    try:
        record, files = run_case(case, Path(root), callback, device)
    finally:
        threads.apply(previous)  # a library caller's setting outlives the case
    record["threads"] = thread_count
    record["device"] = device
    return record, files


_MACS: dict = {}


def _macs(case: Case) -> float | None:
    """Multiply-accumulates of the case's model, computed once per model and image shape."""
    from gradleak.experiments import build

    spec = case.observation
    key = (getattr(spec, "model", spec), getattr(spec, "images", None))
    if key not in _MACS:
        try:
            _MACS[key] = threads.model_macs(build.observed_model(spec))
        except GradleakError:
            _MACS[key] = None  # the case itself will report the problem
    return _MACS[key]


def run_cases(
    cases: list[Case],
    root: Path,
    options: RunOptions,
    started: Callable[[Case], Callable | None] | None = None,
) -> Iterator[Outcome]:
    """Run ``cases`` on the backend ``options`` name; yields outcomes as cases finish.

    ``started(case)`` is called before a case runs in this process and may return a progress
    callback for it (other backends report finished cases only).
    """
    if options.backend not in BACKENDS:
        raise GradleakError(f"unknown backend {options.backend!r}; choose one of {BACKENDS}")
    if options.workers < 1:
        raise GradleakError(f"--workers must be at least 1, got {options.workers}")
    if options.backend == "ray":
        yield from _ray(cases, root, options)
    elif options.workers == 1:
        for case in cases:
            callback = started(case) if started else None
            chosen = threads.requested(options.threads)
            yield (case, *execute(case, str(root), chosen, callback, options.device))
    else:
        yield from _pool(cases, root, options)


def _pool(cases: list[Case], root: Path, options: RunOptions) -> Iterator[Outcome]:
    per_worker = threads.requested(options.threads) or 1
    context = multiprocessing.get_context("spawn")
    executor = concurrent.futures.ProcessPoolExecutor(
        max_workers=options.workers, mp_context=context, initializer=_worker_init
    )
    try:
        futures = {
            executor.submit(execute, c, str(root), per_worker, None, options.device): c
            for c in cases
        }
        pending, start = set(futures), time.monotonic()
        while pending:
            finished, pending = concurrent.futures.wait(
                pending, timeout=HEARTBEAT_SECONDS, return_when=concurrent.futures.FIRST_COMPLETED
            )
            if not finished:  # cases of many minutes: say the pool is alive
                logging.getLogger("gradleak").info(
                    f"{len(futures) - len(pending)} of {len(futures)} cases finished, "
                    f"{min(len(pending), options.workers)} running "
                    f"({time.monotonic() - start:.0f} s)"
                )
            for future in finished:
                record, files = future.result()
                yield futures[future], record, files
    finally:
        executor.shutdown(wait=False, cancel_futures=True)
        for child in multiprocessing.active_children():
            child.terminate()


def _worker_init() -> None:
    """A pool worker dies with its parent (Linux), so a killed sweep leaves no orphan that
    could finish a case the resumed sweep runs again; Ctrl-C is the parent's to handle."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _ray(cases: list[Case], root: Path, options: RunOptions) -> Iterator[Outcome]:
    try:
        import ray
    except ImportError:
        raise GradleakError(
            "--backend ray needs Ray: pip install 'gradleak[ray]' (or pip install ray)"
        ) from None
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    started_here = not ray.is_initialized()
    if started_here:
        try:
            ray.init(
                address=options.address,
                num_cpus=None if options.address else options.workers,
                include_dashboard=False,
                log_to_driver=False,
                configure_logging=False,
            )
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = options.address or "a local instance"
            raise GradleakError(f"cannot start or join Ray ({where}): {err}") from None
    per_worker = threads.requested(options.threads) or 1
    remote = ray.remote(num_cpus=per_worker)(execute)
    pending = {
        remote.remote(case, str(root), per_worker, None, options.device): case for case in cases
    }
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            case = pending.pop(done[0])
            record, files = ray.get(done[0])
            yield case, record, files
    finally:
        for ref in pending:
            ray.cancel(ref, force=True)
        if started_here:
            ray.shutdown()

"""Running a test's workers in processes of their own (spawned: no state copied from pytest)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable, Sequence
from typing import Any


def gather_from_processes(
    target: Callable[..., None], args_per_process: Sequence[tuple[Any, ...]], *, timeout: float = 120
) -> list[Any]:
    """Start one process per ``args`` tuple, calling ``target(*args, start, results)``: ``start`` is
    a barrier they all share (so that they begin at once), ``results`` a queue each puts one value
    on. Returns those values (in the order they came), after every process exited with 0; none
    outlives the call, even when a worker hangs or fails."""
    ctx = mp.get_context("spawn")
    start, results = ctx.Barrier(len(args_per_process)), ctx.Queue()
    procs = [ctx.Process(target=target, args=(*args, start, results)) for args in args_per_process]
    try:
        for p in procs:
            p.start()
        gathered = [results.get(timeout=timeout) for _ in procs]
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == 0
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    return gathered

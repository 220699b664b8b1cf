"""Several client processes driving one remote engine, for loads one event loop cannot time well.

One Python event loop reads ~15-25k stream chunks per second before its own delay starts to show
in the measurements (see `harness calibrate`). For engines that run outside the client process
(`EngineAdapter.remote`), the requests are dealt round-robin to `processes` spawned workers, each
with its own event loop and engine client. All share one time origin t0 on CLOCK_MONOTONIC
(`time.perf_counter_ns` is the same clock in every process on a machine), so their records merge
into one run. Closed loop: the concurrency is split across the workers (each runs its own clients
over its own requests). Open loop: each worker sends its requests at their scheduled times; a
client-side `max_concurrency` cap is split across workers too.
"""
from __future__ import annotations

import multiprocessing as mp
import time
from typing import Sequence

from engine_adapters import get_adapter
from harness.records import RequestRecord
from harness.runner import phase_of, run, run_event_loop
from workloads import RequestSpec

_START_LEAD_NS = 200_000_000  # after every worker is ready: time to hand out t0 and wake them
_READY_TIMEOUT_S = 120


def _split(total: int | None, processes: int, worker: int) -> int | None:
    if total is None:
        return None
    return total // processes + (1 if worker < total % processes else 0)


async def _worker_run(kind: str, config: dict, specs, ready, go, t0, kwargs: dict) -> list[RequestRecord]:
    adapter = get_adapter(kind)
    async with adapter.start(adapter.Config(**config)) as engine:
        ready.put(None)
        go.wait()
        records, _ = await run(engine, specs, t0_ns=t0.value, **kwargs)
    return records


def _worker_main(kind, config, specs, ready, go, t0, kwargs, results, worker) -> None:
    try:
        results.put((worker, run_event_loop(_worker_run(kind, config, specs, ready, go, t0, kwargs)), None))
    except BaseException as exc:  # report, so the parent fails with the reason instead of hanging
        ready.put(None)
        results.put((worker, None, f"{type(exc).__name__}: {exc}"))


def run_in_processes(kind: str, config: dict, specs: Sequence[RequestSpec], processes: int, *,
                     concurrency: int | None = None, max_concurrency: int | None = None, warmup: int = 0,
                     cooldown: int = 0, request_timeout_s: float = 600.0,
                     ramp_up_s: float = 0.0) -> tuple[list[RequestRecord], int]:
    """Like `runner.run`, with the requests spread over `processes` worker processes (fewer when the
    concurrency or the request count is smaller); same return value."""
    processes = max(1, min(processes, concurrency or processes, max_concurrency or processes, len(specs)))
    ctx = mp.get_context("spawn")
    ready, results, go, t0 = ctx.Queue(), ctx.Queue(), ctx.Event(), ctx.Value("q", 0)
    workers = []
    for w in range(processes):
        shard = [s for i, s in enumerate(specs) if i % processes == w]
        kwargs = {"concurrency": _split(concurrency, processes, w), "max_concurrency": _split(max_concurrency, processes, w),
                  "request_timeout_s": request_timeout_s, "ramp_up_s": ramp_up_s}
        proc = ctx.Process(target=_worker_main, args=(kind, config, shard, ready, go, t0, kwargs, results, w),
                           daemon=True)
        proc.start()
        workers.append(proc)
    try:
        for _ in workers:
            ready.get(timeout=_READY_TIMEOUT_S)
        t0.value = time.perf_counter_ns() + _START_LEAD_NS
        go.set()
        shards: dict[int, list[RequestRecord]] = {}
        for _ in workers:
            worker, records, error = results.get()
            if error:
                raise RuntimeError(f"client process {worker} failed: {error}")
            shards[worker] = records
    finally:
        for proc in workers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    merged = [shards[i % processes][i // processes] for i in range(len(specs))]
    for i, record in enumerate(merged):  # phases follow the global send order, not each shard's
        record.phase = phase_of(i, len(specs), warmup, cooldown)
    return merged, t0.value

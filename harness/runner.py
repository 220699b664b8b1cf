"""The load generator: sends requests to an engine on schedule and records what happened.

Open loop: each request is dispatched at its scheduled time whatever the engine is doing, and
latency is measured from that time, so queueing anywhere (client cap, engine queue) counts
against the engine instead of vanishing (no coordinated omission). Closed loop: `concurrency`
clients each send their next request when the previous one ends; latency runs from the send.
"""
from __future__ import annotations

import asyncio
import dataclasses
import gc
import time
from typing import Callable, Sequence

from engine_adapters import Engine
from engine_adapters.base import sleep_until
from harness.errors import PreflightError
from harness.records import RequestRecord
from workloads import RequestSpec

OnDone = Callable[[RequestRecord], None]

# The first open-loop request is scheduled this long after t0, so set-up cost is not counted as lag.
_START_LEAD_NS = 20_000_000


def run_event_loop(coro):
    """Run `coro` to completion on uvloop where installed (less scheduling overhead per request at
    high rates), else on the standard asyncio loop.

    Everything allocated before the run is frozen out of the garbage collector while it lasts: a full
    collection over the imported libraries' objects stalls the loop for tens of milliseconds, which
    would show up as client timing error (measured: TTFT error p99 11-27 ms -> 4-5 ms at 128 streams).
    """
    try:
        import uvloop
        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    gc.collect()
    gc.freeze()
    try:
        return runner(coro)
    finally:
        gc.unfreeze()


async def preflight(engine: Engine, request: RequestSpec, timeout_s: float) -> None:
    """Send one short request before measuring; raise PreflightError saying what to fix if it fails."""
    probe = dataclasses.replace(request, id="preflight", max_output_tokens=min(request.max_output_tokens, 4),
                                scheduled_offset_s=None)
    record = RequestRecord(id=probe.id, phase="warmup", expected_output_tokens=probe.max_output_tokens,
                           input_tokens=probe.input_tokens)
    await _send(engine, probe, record, time.perf_counter_ns(), timeout_s)
    if not record.ok:
        raise PreflightError(
            f"preflight request failed before measuring: {record.error}. The engine started but cannot serve "
            "a request of this workload: check the engine log, the model path and that the prompt/output "
            "lengths fit the engine's limits (max sequence length, KV cache size).")
    if record.output_tokens == 0:
        raise PreflightError("preflight request returned no output tokens: the engine answers but streams "
                             "nothing; check that streaming is supported and the output length is honoured.")


async def _send(engine: Engine, spec: RequestSpec, record: RequestRecord, t0_ns: int, timeout_s: float) -> None:
    """Stream one request into `record` (times relative to t0); failures are stored, never raised."""
    record.sent_ns = time.perf_counter_ns() - t0_ns
    try:
        async with asyncio.timeout(timeout_s):
            async for event in engine.stream(spec):
                if event.n_tokens:
                    record.add_chunk(event.t_ns - t0_ns, event.n_tokens)
                if event.server_input_tokens is not None:
                    record.server_input_tokens = event.server_input_tokens
                if event.cached_prompt_tokens is not None:
                    record.cached_prompt_tokens = event.cached_prompt_tokens
                if event.error is not None:
                    record.error = event.error
                    break
    except TimeoutError:
        record.error = f"timeout: no end of stream within {timeout_s:g} s"
    except Exception as exc:  # an adapter bug must not stop the run; keep it on the record
        record.error = f"engine raised {type(exc).__name__}: {exc}"
    record.end_ns = time.perf_counter_ns() - t0_ns


def phase_of(index: int, n: int, warmup: int, cooldown: int) -> str:
    """warmup / measured / cooldown for the request sent `index`-th of `n`."""
    if index < warmup:
        return "warmup"
    if index >= n - cooldown:
        return "cooldown"
    return "measured"


async def run(engine: Engine, specs: Sequence[RequestSpec], *, concurrency: int | None = None,
              max_concurrency: int | None = None, warmup: int = 0, cooldown: int = 0,
              request_timeout_s: float = 600.0, on_done: OnDone | None = None,
              t0_ns: int | None = None, ramp_up_s: float = 0.0) -> tuple[list[RequestRecord], int]:
    """Send `specs` and return (records in send order, t0 as absolute perf_counter_ns).

    `concurrency` set means closed loop (specs must have no scheduled offsets); otherwise each
    spec's `scheduled_offset_s` is honoured and `max_concurrency` optionally caps requests in flight
    on the client side (time spent waiting for a slot shows up as queue_ms). `t0_ns` fixes the time
    origin (several client processes share one); by default it is now (plus a short lead in open loop).
    Closed loop: client k of `concurrency` sends its first request `k * ramp_up_s / concurrency` after t0.
    """
    n = len(specs)
    records = [RequestRecord(id=s.id, phase=phase_of(i, n, warmup, cooldown), expected_output_tokens=s.max_output_tokens,
                             input_tokens=s.input_tokens) for i, s in enumerate(specs)]

    async def send(i: int, t0: int, slots: asyncio.Semaphore | None) -> None:
        if slots is None:
            await _send(engine, specs[i], records[i], t0, request_timeout_s)
        else:
            async with slots:
                await _send(engine, specs[i], records[i], t0, request_timeout_s)
        if on_done:
            on_done(records[i])

    if concurrency is not None:
        t0 = t0_ns or time.perf_counter_ns()
        next_index = iter(range(n))

        async def client(k: int) -> None:
            await sleep_until(t0 + int(k * ramp_up_s / concurrency * 1e9))
            for i in next_index:
                records[i].dispatched_ns = time.perf_counter_ns() - t0
                await send(i, t0, None)

        await asyncio.gather(*(client(k) for k in range(min(concurrency, n))))
        return records, t0

    t0 = t0_ns or time.perf_counter_ns() + _START_LEAD_NS
    slots = asyncio.Semaphore(max_concurrency) if max_concurrency else None
    tasks = []
    for i, spec in enumerate(specs):
        if spec.scheduled_offset_s is None:
            raise ValueError(f"request {spec.id} has no scheduled time in an open-loop run")
        scheduled = int(spec.scheduled_offset_s * 1e9)
        records[i].scheduled_ns = scheduled
        await sleep_until(t0 + scheduled)
        records[i].dispatched_ns = time.perf_counter_ns() - t0
        tasks.append(asyncio.create_task(send(i, t0, slots)))
    await asyncio.gather(*tasks)
    return records, t0

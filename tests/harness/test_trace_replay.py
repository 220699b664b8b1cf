"""Acceptance: the shipped Azure code trace, first 10 minutes at 60x, replayed through the real runner
against the simulated mock engine: every row is sent once, on time, with its recorded lengths."""
import datetime as dt

import numpy as np
from pydantic import TypeAdapter

from engine_adapters import Hardware, get_adapter
from harness.runner import run, run_event_loop
from workloads import WorkloadConfig
from workloads.trace import DATA_DIR

TRACE = DATA_DIR / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
SPEEDUP = 60
WINDOW_S = 600


def recorded_rows():
    """(ns after the first row, prompt tokens, output tokens) of the window, read without the workload's code."""
    rows = []
    for line in TRACE.read_text().splitlines()[1:]:
        stamp, context, generated = line.split(",")
        seconds, frac = stamp.split(".")
        whole = (dt.datetime.fromisoformat(seconds) - dt.datetime(2000, 1, 1)) // dt.timedelta(seconds=1)
        rows.append((whole * 10**9 + int(frac.ljust(9, "0")), int(context), int(generated)))
    first = rows[0][0]
    return [(t - first, i, o) for t, i, o in rows if t - first < WINDOW_S * 10**9]


def test_replay_of_the_azure_code_trace_is_exact_in_lengths_and_on_time():
    workload = TypeAdapter(WorkloadConfig).validate_python({
        "kind": "trace", "path": "builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv",
        "window": {"duration_s": WINDOW_S}, "speedup": SPEEDUP})
    adapter = get_adapter("mock")
    # One 1 ms step per token whatever the batch, prompts prefilled in one step: the engine keeps up with
    # ~150 req/s of prompts up to 7.4k tokens, so only the client's own timing is under test.
    engine_cfg = adapter.Config(max_batch_size=256, max_num_tokens=256 * 8192, step_ms=1, decode_ms_per_seq=0,
                                prefill_ms_per_token=0, vocab_size=32000)
    assert adapter.check(engine_cfg, Hardware(), workload.max_sequence_tokens()) is None

    async def replay():
        async with adapter.start(engine_cfg) as engine:
            specs = list(workload.generate(engine.token_space))
            records, _ = await run(engine, specs, max_concurrency=workload.arrival.max_concurrency,
                                   request_timeout_s=30)
            return specs, records

    specs, records = run_event_loop(replay())
    rows = recorded_rows()
    assert len(rows) == len(records) == workload.requests == 1482
    assert all(r.ok for r in records), next(r.error for r in records if not r.ok)
    assert [r.input_tokens for r in records] == [i for _, i, _ in rows]
    assert [r.output_tokens for r in records] == [o for _, _, o in rows]
    assert [len(s.prompt_token_ids) for s in specs] == [i for _, i, _ in rows]

    intended_ns = np.array([t for t, _, _ in rows]) / SPEEDUP
    scheduled = np.array([r.scheduled_ns for r in records])
    assert np.abs(scheduled - intended_ns).max() <= 1  # ns: only float rounding between trace and schedule
    lag_ms = (np.array([r.dispatched_ns for r in records]) - scheduled) / 1e6
    error_ms = np.abs(lag_ms)
    print(f"dispatch - scheduled: min {lag_ms.min():.3f} ms, p50 {np.median(lag_ms):.3f} ms, "
          f"|p99| {np.percentile(error_ms, 99):.3f} ms, |max| {error_ms.max():.3f} ms over {len(lag_ms)} requests")
    # Measured on the 2-core dev box with the client alone: lag p99 1.2-3.7 ms, max 2.5-8.3 ms; with other work
    # beside it p99 reached 7.3 ms. The 5 ms target is benchmarks/client_targets.py's to show; these bounds catch
    # a replay that loses the trace's timing (late by the queue, or ignoring the gaps: seconds off).
    assert np.median(error_ms) <= 5 and np.percentile(error_ms, 99) <= 50 and error_ms.max() <= 500
    assert lag_ms.min() >= 0  # never sent early, though uvloop's millisecond timers fire early

"""The load generator against the mock engine, whose true timings `simulate` computes exactly."""
import asyncio
import json

import numpy as np
import pytest

from engine_adapters.base import Engine, StreamEvent
from engine_adapters.mock import MockAdapter, MockConfig, simulate
from harness import runner
from harness.errors import PreflightError
from harness.metrics import compute
from harness.records import read_records, write_records
from workloads import RequestSpec, TokenSpace


def specs(n, *, gap_s=None, prompt=10, out=4):
    return [RequestSpec(id=f"r{i}", max_output_tokens=out, prompt_token_ids=tuple(range(1, prompt + 1)),
                        scheduled_offset_s=None if gap_s is None else i * gap_s) for i in range(n)]


def run_mock(cfg: MockConfig, reqs, **kw):
    async def go():
        async with MockAdapter().start(cfg) as engine:
            return await runner.run(engine, reqs, **kw)
    return asyncio.run(go())


def test_overload_latency_includes_queueing_as_the_service_model_predicts():
    """No coordinated omission: one request at a time, 20 ms each, sent every 10 ms.

    Request k waits k*10 ms for the server; the reported TTFT must include that wait.
    """
    cfg = MockConfig(max_batch_size=1, step_ms=5, decode_ms_per_seq=0, prefill_ms_per_token=0)
    reqs = specs(40, gap_s=0.010)
    records, _ = run_mock(cfg, reqs)
    truth = simulate(cfg, [(r.scheduled_offset_s, r.input_tokens, r.max_output_tokens) for r in reqs])
    true_ttft = np.array([f for f, _ in truth]) * 1e3 - np.arange(40) * 10
    assert true_ttft[-1] == pytest.approx(39 * 10 + 5)  # the service model itself, by hand
    measured = np.array([(r.first_token_ns - r.scheduled_ns) / 1e6 for r in records])
    assert np.abs(measured - true_ttft).max() < 15  # ms, on a busy 2-core box
    m = compute(records)
    assert m["distributions"]["ttft_ms"]["p99"] == pytest.approx(np.percentile(true_ttft, 99), abs=15)


def test_client_side_queueing_counts_and_a_send_time_clock_would_hide_it():
    """The same overload, but the wait happens in the client (one request in flight at a time)."""
    cfg = MockConfig(max_batch_size=64, step_ms=5, decode_ms_per_seq=0, prefill_ms_per_token=0)
    reqs = specs(30, gap_s=0.010)
    records, _ = run_mock(cfg, reqs, max_concurrency=1)
    measured = np.array([(r.first_token_ns - r.scheduled_ns) / 1e6 for r in records])
    expected = np.arange(30) * 10 + 5  # request k waits k*10 ms for the single slot, then 5 ms to first token
    # each hand-over of the slot costs the mock's timer ~1 ms more, so the true wait is a little longer
    assert np.all(measured >= expected - 2) and np.all(measured <= expected * 1.2 + 10)
    sends = [r.sent_ns for r in records]
    ends = [r.end_ns for r in records]
    assert all(s >= e for s, e in zip(sends[1:], ends))  # the cap held: one request in flight
    from_send = np.array([(r.first_token_ns - r.sent_ns) / 1e6 for r in records])
    assert from_send.max() < 15  # what tools that start the clock at the send would report


def test_client_side_concurrency_cap_shows_up_as_queue_time():
    cfg = MockConfig(max_batch_size=64, step_ms=5, decode_ms_per_seq=0, prefill_ms_per_token=0)
    records, _ = run_mock(cfg, specs(6, gap_s=0.0, out=4), max_concurrency=2)
    queue_ms = sorted((r.sent_ns - r.scheduled_ns) / 1e6 for r in records)
    # pairs of requests each hold the two slots for ~20 ms
    assert queue_ms[:2] == pytest.approx([0, 0], abs=3)
    assert queue_ms[-1] == pytest.approx(40, abs=10)


def test_closed_loop_keeps_concurrency_requests_in_flight():
    cfg = MockConfig(max_batch_size=64, step_ms=5, decode_ms_per_seq=0, prefill_ms_per_token=0)
    records, _ = run_mock(cfg, specs(12, out=4), concurrency=3)
    assert all(r.ok and r.output_tokens == 4 and r.scheduled_ns is None for r in records)
    sends = sorted(r.sent_ns for r in records)
    # 12 requests, 3 at a time, ~20 ms each: four waves
    waves = np.round(np.array(sends) / 20e6)
    assert list(np.bincount(waves.astype(int))) == [3, 3, 3, 3]


def test_warmup_and_cooldown_phases_follow_send_order():
    cfg = MockConfig(step_ms=1)
    records, _ = run_mock(cfg, specs(10, gap_s=0.001), warmup=3, cooldown=2)
    assert [r.phase for r in records] == ["warmup"] * 3 + ["measured"] * 5 + ["cooldown"] * 2
    assert compute(records)["counts"]["measured"] == 5


def test_failures_are_recorded_and_the_run_goes_on():
    cfg = MockConfig(step_ms=1, fail_every_n=3)
    records, _ = run_mock(cfg, specs(9, gap_s=0.001))
    assert sum(r.error == "mock: injected failure" for r in records) == 3
    assert sum(r.ok for r in records) == 6


class _BrokenEngine(Engine):
    token_space = TokenSpace(10)

    def __init__(self, mode):
        self.mode = mode

    async def stream(self, request):
        if self.mode == "raise":
            yield StreamEvent(0, 1)
            raise RuntimeError("adapter bug")
        await asyncio.sleep(10)
        yield StreamEvent(0, 1)


@pytest.mark.parametrize("mode,error", [("raise", "engine raised RuntimeError: adapter bug"),
                                        ("hang", "timeout: no end of stream within 0.05 s")])
def test_adapter_exceptions_and_timeouts_become_request_errors(mode, error):
    records, _ = asyncio.run(runner.run(_BrokenEngine(mode), specs(2, gap_s=0.0), request_timeout_s=0.05))
    assert [r.error for r in records] == [error, error]


def test_preflight_failure_says_what_to_fix():
    cfg = MockConfig(kv_pool_tokens=8)

    async def go():
        async with MockAdapter().start(cfg) as engine:
            await runner.preflight(engine, specs(1, prompt=100)[0], timeout_s=1)
    with pytest.raises(PreflightError, match="exceeds KV cache capacity.*check the engine log"):
        asyncio.run(go())


def test_closed_loop_ramp_up_spreads_the_first_sends():
    cfg = MockConfig(max_batch_size=64, step_ms=5, decode_ms_per_seq=0, prefill_ms_per_token=0)
    records, _ = run_mock(cfg, specs(4, out=60), concurrency=4, ramp_up_s=0.2)  # each client: one 300 ms request
    first_sends = sorted(r.sent_ns / 1e6 for r in records)
    assert first_sends == pytest.approx([0, 50, 100, 150], abs=15)


def test_engine_reported_cached_tokens_reach_the_record_and_records_jsonl(tmp_path):
    """The mock reports each request's (SIMULATED) cached prompt tokens at its end: the second identical prompt
    finds its first block of 8; records.jsonl keeps it, and a file written before the field existed reads None."""
    cfg = MockConfig(prefix_caching=True, kv_block_tokens=8, max_batch_size=1)
    records, _ = run_mock(cfg, specs(2, prompt=12), concurrency=1)
    assert [r.cached_prompt_tokens for r in records] == [0, 8]
    path = tmp_path / "records.jsonl"
    write_records(path, records)
    assert read_records(path) == records
    old = {k: v for k, v in records[1].to_json().items() if k != "cached_prompt_tokens"}
    path.write_text(json.dumps(old) + "\n")
    assert read_records(path)[0].cached_prompt_tokens is None

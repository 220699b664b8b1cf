"""Metric math against hand-computed cases (times in ms converted to ns)."""
import numpy as np
import pytest

from harness.metrics import SloLimit, compute, percentile_ci, request_meets_slo, summarize
from harness.records import RequestRecord

MS = 1_000_000


def rec(id, sched, sent, tokens, end=None, phase="measured", error=None, inp=10, expected=None):
    return RequestRecord(id=id, phase=phase, expected_output_tokens=expected or len(tokens), input_tokens=inp,
                         scheduled_ns=None if sched is None else sched * MS, dispatched_ns=sent * MS,
                         sent_ns=sent * MS, token_ns=[t * MS for t in tokens],
                         end_ns=(end if end is not None else tokens[-1]) * MS, error=error)


def test_open_loop_latencies_are_measured_from_the_schedule():
    r = rec("a", sched=100, sent=130, tokens=[200, 210, 230, 260])
    m = compute([r])
    d = m["distributions"]
    assert d["ttft_ms"]["p50"] == 100          # 200 - 100, not 200 - 130
    assert d["e2e_ms"]["p50"] == 160
    assert d["queue_ms"]["p50"] == 30
    assert d["tpot_ms"]["p50"] == pytest.approx(20)   # (260 - 200) / 3
    assert sorted([10, 20, 30]) == sorted(np.round([d["itl_ms"]["min"], d["itl_ms"]["p50"], d["itl_ms"]["max"]]))
    # invariant: e2e - ttft == sum of ITL gaps when the stream ends at the last token
    assert d["e2e_ms"]["p50"] - d["ttft_ms"]["p50"] == pytest.approx(10 + 20 + 30)


def test_closed_loop_latencies_are_measured_from_the_send():
    m = compute([rec("a", sched=None, sent=50, tokens=[80, 90])])
    assert m["distributions"]["ttft_ms"]["p50"] == 30
    assert m["distributions"]["queue_ms"]["count"] == 0


def test_throughput_window_counts_and_exclusions():
    records = [
        rec("w", 0, 0, [5, 6], phase="warmup"),
        rec("a", 100, 100, [150, 160, 170, 180], inp=7),   # 4 tokens
        rec("b", 200, 200, [260, 270], inp=3),              # 2 tokens
        rec("f", 250, 250, [300], end=1100, error="boom"),  # failed, still in the window
        rec("c", 300, 300, [350, 1000], phase="cooldown"),
    ]
    m = compute(records)
    assert m["counts"] == {"total": 5, "measured": 3, "completed": 2, "failed": 1, "excluded_warmup": 1,
                           "excluded_cooldown": 1, "output_length_mismatch": 0}
    assert m["window"]["duration_s"] == pytest.approx(1.0)  # 100 ms .. 1100 ms
    s = m["scalars"]
    assert s["output_throughput_tok_s"] == pytest.approx(6.0)
    assert s["total_token_throughput_tok_s"] == pytest.approx(16.0)
    assert s["request_throughput_req_s"] == pytest.approx(2.0)
    assert s["error_rate"] == pytest.approx(1 / 3)
    assert m["distributions"]["ttft_ms"]["count"] == 2  # the failed request has no latency sample


def test_goodput_and_slo_checks():
    records = [rec(str(i), i * 100, i * 100, [i * 100 + ttft, i * 100 + ttft + 10]) for i, ttft in
               enumerate([10, 20, 30, 40, 500])]
    limits = [SloLimit("ttft_ms", "p50", 25), SloLimit("ttft_ms", "p95", 50)]
    m = compute(records, limits)
    # per request the loosest ttft limit (50 ms) applies: 4 of 5 meet it
    assert m["scalars"]["slo_attainment"] == pytest.approx(0.8)
    window_s = (4 * 100 + 510) / 1000
    assert m["scalars"]["goodput_req_s"] == pytest.approx(4 / window_s)
    p50, p95 = m["slo"]
    assert p50["measured"] == 30 and not p50["pass"] and p50["margin"] == pytest.approx(-0.2)
    assert p95["measured"] == pytest.approx(40 + 0.8 * 460) and not p95["pass"]


def test_pooled_itl_limit_is_run_level_only():
    r = rec("a", 0, 0, [10, 20, 500])
    assert request_meets_slo(r, [SloLimit("itl_ms", "p99", 5)])
    assert not request_meets_slo(r, [SloLimit("e2e_ms", "max", 100)])


def test_percentiles_interpolate_linearly():
    s = summarize([1, 2, 3, 4])
    assert (s["p50"], s["p90"], s["mean"], s["min"], s["max"]) == (2.5, pytest.approx(3.7), 2.5, 1, 4)
    assert summarize([])["p50"] is None and summarize([])["count"] == 0


def test_percentile_ci_brackets_the_true_quantile_about_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    true_p90 = -np.log(0.1)  # exponential(1)
    hits = 0
    for _ in range(400):
        x = np.sort(rng.exponential(size=200))
        lo, hi = percentile_ci(x, 0.9)
        hits += lo <= true_p90 <= hi
    assert 0.92 <= hits / 400 <= 0.995


def test_percentile_ci_is_open_ended_with_too_few_samples():
    lo, hi = percentile_ci(np.arange(10.0), 0.99)
    assert hi is None and lo is not None


def test_chunks_are_spread_evenly_over_the_gap():
    r = RequestRecord(id="x", phase="measured", expected_output_tokens=6, input_tokens=1)
    r.add_chunk(100, 2)   # first chunk: both tokens at its arrival
    r.add_chunk(160, 3)   # spread over 100..160
    r.add_chunk(170, 1)
    assert r.token_ns == [100, 100, 120, 140, 160, 170]


def test_output_length_mismatch_is_counted():
    m = compute([rec("a", 0, 0, [1, 2], expected=5)])
    assert m["counts"]["output_length_mismatch"] == 1


def test_total_token_throughput_is_unknown_for_text_prompts():
    m = compute([rec("a", 0, 0, [10, 20], inp=None)])
    assert m["scalars"]["total_token_throughput_tok_s"] is None
    assert m["scalars"]["output_throughput_tok_s"] == pytest.approx(100.0)

import pytest
from pydantic import TypeAdapter

from harness.fidelity import workload_fidelity
from harness.records import RequestRecord
from workloads import RequestSpec, TokenSpace, WorkloadConfig
from workloads.profile import BadRowError, BadRows, SourceProfile


def spec(i: int, n_in: int, n_out: int, at: float | None) -> RequestSpec:
    return RequestSpec(id=f"r{i}", max_output_tokens=n_out, prompt_token_ids=(5,) * n_in, scheduled_offset_s=at)


def record(s: RequestSpec, dispatched_s: float, received: int, error: str | None = None) -> RequestRecord:
    ns = int(dispatched_s * 1e9)
    return RequestRecord(id=s.id, phase="measured", expected_output_tokens=s.max_output_tokens,
                         input_tokens=s.input_tokens, dispatched_ns=ns, sent_ns=ns,
                         scheduled_ns=None if s.scheduled_offset_s is None else int(s.scheduled_offset_s * 1e9),
                         token_ns=[ns + k for k in range(received)], end_ns=ns + 10**6, error=error)


def test_open_loop_summary_has_exact_rates_cvs_lag_and_mismatches():
    specs = [spec(i, 10 + i, 4, 0.5 * i) for i in range(5)]  # constant 2 req/s schedule
    lags = [0.0, 0.001, 0.002, 0.001, 0.0]
    received = [4, 4, 3, 4, 4]  # one request stopped early
    records = [record(s, s.scheduled_offset_s + lag, n) for s, lag, n in zip(specs, lags, received)]
    profile = SourceProfile(kind="trace", description="t", rows_read=7, rows_used=5,
                            input_tokens=[10, 11, 12, 13, 14], output_tokens=[4] * 5,
                            recorded_inter_arrival_s=[5.0, 5.0, 5.0, 5.0], time_scale=10.0,
                            skipped={"non-numeric x": 2}, skipped_examples=["f:3: x"])
    f = workload_fidelity(profile, specs, records)
    assert f["source"]["skipped_total"] == 2 and f["source"]["rows_read"] == 7
    assert f["input_tokens"]["ks_source_vs_generated"] == 0.0
    assert f["output_tokens"]["mismatched_requests"] == 1 and f["output_tokens"]["compared_requests"] == 5
    assert f["output_tokens"]["ks_requested_vs_received"] == pytest.approx(0.2)
    assert f["arrivals"]["source_recorded"] == {"rate_req_s": 0.2, "cv": 0.0, "gaps": 4}
    assert f["arrivals"]["time_scale"] == 10.0
    assert f["arrivals"]["intended"]["rate_req_s"] == pytest.approx(2.0)
    assert f["arrivals"]["achieved"]["rate_req_s"] == pytest.approx(4 / 2.0)
    assert f["arrivals"]["achieved"]["cv"] > 0  # lag jitter makes the gaps unequal
    assert f["arrivals"]["schedule_lag_ms"]["max"] == pytest.approx(2.0)


def test_disjoint_length_distributions_give_ks_one_and_closed_loop_has_no_schedule():
    specs = [spec(i, 100, 8, None) for i in range(4)]
    records = [record(s, 0.1 * i, 8) for i, s in enumerate(specs)]
    profile = SourceProfile(kind="dataset", description="d", rows_read=4, rows_used=4, input_tokens=[1, 2, 3])
    f = workload_fidelity(profile, specs, records)
    assert f["input_tokens"]["ks_source_vs_generated"] == 1.0
    assert f["arrivals"]["intended"] is None and f["arrivals"]["schedule_lag_ms"] is None
    assert f["arrivals"]["achieved"]["rate_req_s"] == pytest.approx(10.0)
    assert f["output_tokens"]["source"] is None
    assert f["arrivals"]["source_recorded"] is None and f["arrivals"]["time_scale"] is None


def test_clipping_a_trace_shows_as_ks_against_the_source_as_recorded(tmp_path):
    """The source keeps the recorded lengths, so clipping k of n rows to a cap below them all gives KS k/n."""
    path = tmp_path / "t.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(
        f"2023-11-16 18:17:{i:02d}.5,{n_in},{n_out}\n" for i, (n_in, n_out) in enumerate(
            [(4808, 10), (3180, 8), (110, 27), (7, 1), (2000, 40)])))
    w = TypeAdapter(WorkloadConfig).validate_python({"kind": "trace", "path": str(path), "speedup": 4,
                                                     "max_input_tokens": 1000, "max_output_tokens": 9})
    specs = list(w.generate(TokenSpace(vocab_size=100)))
    f = workload_fidelity(w.source_profile(), specs, [record(s, s.scheduled_offset_s, s.max_output_tokens)
                                                      for s in specs])
    assert f["input_tokens"]["ks_source_vs_generated"] == pytest.approx(3 / 5)
    assert f["output_tokens"]["ks_source_vs_requested"] == pytest.approx(3 / 5)
    assert f["input_tokens"]["source"]["max"] == 4808 and f["input_tokens"]["generated"]["max"] == 1000
    assert f["arrivals"]["source_recorded"] == {"rate_req_s": 1.0, "cv": 0.0, "gaps": 4}
    assert f["arrivals"]["intended"] == {"rate_req_s": 4.0, "cv": 0.0, "gaps": 4} and f["arrivals"]["time_scale"] == 4
    assert "3 of 5 rows had their input length clipped to max_input_tokens 1000" in f["source"]["notes"]


def test_bad_rows_policy():
    strict = BadRows("error")
    with pytest.raises(BadRowError, match=r"trace.csv:3: empty prompt"):
        strict.add("trace.csv:3", "empty prompt")
    lenient = BadRows("skip")
    for line in range(20):
        lenient.add(f"t.csv:{line}", "empty prompt" if line % 2 else "bad length")
    assert lenient.total == 20 and lenient.counts == {"empty prompt": 10, "bad length": 10}
    assert len(lenient.examples) == 10 and lenient.examples[0] == "t.csv:0: bad length"

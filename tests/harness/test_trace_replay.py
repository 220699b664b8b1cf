"""Acceptance: the shipped Azure code trace, first 10 minutes at 60x, replayed by `harness bench` (trial
subprocess, real runner, result.json, report.html) against the simulated mock engine: every row is sent
once, on time, with its recorded lengths, and the fidelity summary in result.json and the report says so.
A clipped replay (in-process through harness.trial.measure, the function that writes result.json) shows
its clipping as a KS statistic above 0."""
import datetime as dt
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml

from harness.config import parse_config
from harness.records import read_records
from harness.runner import run_event_loop
from harness.store import TrialFiles, read_json
from harness.trial import measure
from reports.html import format_number, format_value
from workloads.trace import DATA_DIR

TRACE = DATA_DIR / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv"
SPEEDUP = 60
WINDOW_S = 600
# One 1 ms step per token whatever the batch, prompts prefilled in one step: the engine keeps up with
# ~150 req/s of prompts up to 7.4k tokens, so only the client's own timing is under test.
ENGINE = {"kind": "mock", "params": {"max_batch_size": 256, "max_num_tokens": 256 * 8192, "step_ms": 1,
                                     "decode_ms_per_seq": 0, "prefill_ms_per_token": 0, "vocab_size": 32000}}
WORKLOAD = {"kind": "trace", "path": "builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv",
            "window": {"duration_s": WINDOW_S}, "speedup": SPEEDUP}


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


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """(result.json, records, report.html) of one `harness bench` of the replay (about 20 s, 10 s of it the replay)."""
    tmp = tmp_path_factory.mktemp("replay")
    (tmp / "replay.yaml").write_text(yaml.safe_dump({"name": "replay", "engine": ENGINE, "workload": WORKLOAD}))
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", "replay.yaml", "--out", "out"], cwd=tmp,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = tmp / "out"
    return (read_json(out / TrialFiles.RESULT), read_records(out / TrialFiles.RECORDS),
            (out / "report.html").read_text())


def test_replay_of_the_azure_code_trace_is_exact_in_lengths_and_on_time(bench):
    result, records, _ = bench
    rows = recorded_rows()
    assert len(rows) == len(records) == result["workload"]["requests"] == 1482
    assert all(r.ok for r in records), next(r.error for r in records if not r.ok)
    assert [r.input_tokens for r in records] == [i for _, i, _ in rows]
    assert [r.output_tokens for r in records] == [o for _, _, o in rows]

    intended_ns = np.array([t for t, _, _ in rows]) / SPEEDUP
    scheduled = np.array([r.scheduled_ns for r in records])
    assert np.abs(scheduled - intended_ns).max() <= 1  # ns: only float rounding between trace and schedule
    lag_ms = np.array([r.dispatched_ns - r.scheduled_ns for r in records]) / 1e6
    error_ms = np.abs(lag_ms)
    print(f"dispatch - scheduled: min {lag_ms.min():.3f} ms, p50 {np.median(lag_ms):.3f} ms, "
          f"|p99| {np.percentile(error_ms, 99):.3f} ms, |max| {error_ms.max():.3f} ms over {len(lag_ms)} requests")
    # Measured on the 2-core dev box with the client alone: lag p99 1.2-3.7 ms, max 2.5-8.3 ms; with other work
    # beside it p99 reached 7.3 ms. The 5 ms target is benchmarks/client_targets.py's to show; these bounds catch
    # a replay that loses the trace's timing (late by the queue, or ignoring the gaps: seconds off).
    assert np.median(error_ms) <= 5 and np.percentile(error_ms, 99) <= 50 and error_ms.max() <= 500
    assert lag_ms.min() >= 0  # never sent early, though uvloop's millisecond timers fire early


def test_fidelity_summary_of_the_replay_shows_source_schedule_and_dispatches_agree(bench):
    result, _, html = bench
    f = result["fidelity"]
    assert f["source"]["rows_used"] == 1482 and f["source"]["skipped_total"] == 0
    assert f["input_tokens"]["ks_source_vs_generated"] == 0 and f["output_tokens"]["ks_source_vs_requested"] == 0
    assert f["output_tokens"]["ks_requested_vs_received"] == 0 and f["output_tokens"]["mismatched_requests"] == 0

    a = f["arrivals"]
    source, intended, achieved = a["source_recorded"], a["intended"], a["achieved"]
    gaps = np.diff([t for t, _, _ in recorded_rows()]) / 1e9
    assert source["rate_req_s"] == pytest.approx(1 / gaps.mean(), rel=1e-12)  # 2.53 req/s as recorded
    assert source["cv"] == pytest.approx(gaps.std() / gaps.mean(), rel=1e-12)  # 12.1: a very bursty trace
    # The schedule is the recorded gaps / 60: the rate 60 times the source's, the same CV (float rounding only).
    assert a["time_scale"] == SPEEDUP
    assert intended["rate_req_s"] == pytest.approx(SPEEDUP * source["rate_req_s"], rel=1e-9)
    assert intended["cv"] == pytest.approx(source["cv"], rel=1e-9)
    # Dispatches: measured on the 2-core box, alone and beside two busy-looping processes, the achieved rate
    # was within 0.007% of the intended and the CV within 0.1%. The rate rests on the first and last dispatch
    # only: 1% is ~100 ms of drift between them over the 9.8 s replay, 15x the worst lag seen. The CV
    # (std 80 ms of gaps averaging 6.6 ms) moves with lag jitter: 2% is 20x what was measured.
    assert achieved["gaps"] == intended["gaps"] == 1481
    assert achieved["rate_req_s"] == pytest.approx(intended["rate_req_s"], rel=0.01)
    assert achieved["cv"] == pytest.approx(intended["cv"], rel=0.02)
    lag = a["schedule_lag_ms"]
    assert 0 <= lag["p50"] <= lag["p99"] <= lag["max"] <= 500  # the bounds of the test above

    section = html.split("<h3>Workload fidelity</h3>", 1)[1].split("<h3>", 1)[0]

    def cells(label: str) -> list[str]:
        row = re.search(f"<tr><th>{re.escape(label)}</th>(.*?)</tr>", section, re.DOTALL).group(1)
        return re.findall(r'<td class="num">([^<]*)</td>', row)

    def shown(stats: dict) -> list[str]:
        return [format_value(stats["rate_req_s"], "req/s"), format_number(stats["cv"]), "1,481"]

    assert cells("source, as recorded") == shown(source) == ["2.53 req/s", "12.1", "1,481"]
    assert cells("intended: the schedule (recorded time ÷ 60)") == shown(intended)
    assert cells("achieved: the client's dispatches") == shown(achieved)
    assert cells("input: generated")[-1] == "0" and cells("output: requested")[-1] == "0"
    assert f"p99 {format_value(lag['p99'], 'ms')}" in section


def test_a_clipped_replay_shows_its_clipping_as_ks_against_the_source(tmp_path):
    """The first 300 requests with prompts capped at 3000 and outputs at 64 tokens: the source keeps the recorded
    lengths, so KS source vs generated is the share of rows clipped (the clipped CDF reaches 1 at the cap)."""
    cfg = parse_config({"name": "clipped", "engine": ENGINE, "workload": {
        **WORKLOAD, "requests": 300, "max_input_tokens": 3000, "max_output_tokens": 64}}, "test")
    result = run_event_loop(measure(cfg, tmp_path))
    assert read_json(tmp_path / TrialFiles.RESULT)["fidelity"] == result["fidelity"]
    rows = recorded_rows()[:300]
    over_in, over_out = sum(i > 3000 for _, i, _ in rows), sum(o > 64 for _, _, o in rows)
    assert over_in > 0 and over_out > 0, "precondition: the cap clips some rows"
    f = result["fidelity"]
    assert f["input_tokens"]["ks_source_vs_generated"] == pytest.approx(over_in / 300)
    assert f["output_tokens"]["ks_source_vs_requested"] == pytest.approx(over_out / 300)
    assert f["input_tokens"]["source"]["max"] == max(i for _, i, _ in rows)
    assert f["input_tokens"]["generated"]["max"] == 3000
    assert f["output_tokens"]["ks_requested_vs_received"] == 0  # the engine gave what was asked: the cap
    assert f"{over_in} of 300 rows had their input length clipped to max_input_tokens 3000" in f["source"]["notes"]

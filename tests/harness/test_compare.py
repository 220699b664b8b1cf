"""`harness compare`: statistics on records with known distributions, and the command's exit codes and files."""
from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

from engine_adapters.mock import MockConfig
from harness.compare import (DEFAULT_GATE, RATES, Run, Thresholds, _weighted_quantile, block_weights, compare, holm,
                             load_run, load_thresholds)
from harness.errors import ConfigError
from harness.metrics import metric_value
from harness.records import RequestRecord, write_records
from harness.store import write_json
from tests.reports.test_reports import make_result

MS = 1_000_000


def run_records(seed: int, slower: float = 1.0, n: int = 200, fail_every: int | None = None) -> list[RequestRecord]:
    """Closed-loop-like requests, one sent every 20 ms; TTFT ~ gamma (mean 40 ms), 16 tokens ~5 ms apart.
    Every time is scaled by `slower`, as an engine that much slower would serve them (fewer per second)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        sent = int(i * 20 * MS * slower)
        first = sent + int(rng.gamma(8, 5) * slower * MS)
        token_ns = [first] + [first + int(t * MS) for t in np.cumsum(rng.normal(5, 0.5, 15).clip(1) * slower)]
        r = RequestRecord(id=f"r{i}", phase="warmup" if i < 4 else "measured", expected_output_tokens=16,
                          input_tokens=64, dispatched_ns=sent, sent_ns=sent, token_ns=token_ns, end_ns=token_ns[-1])
        if fail_every and i % fail_every == 0:
            r.token_ns, r.error = [], "engine said no"
        records.append(r)
    return records


def make_run(directory: Path, records: list[RequestRecord], model: str = "tiny", gpu: str = "sim",
             write: bool = True) -> Run:
    """A bench directory (result.json + records.jsonl) made from `records`, as harness bench writes it."""
    result = make_result(records, MockConfig(model=model).model_dump(mode="json"), gpu_name=gpu)
    if write:
        directory.mkdir(parents=True)
        write_json(directory / "result.json", result)
        write_records(directory / "records.jsonl", records)
    return Run(directory, result, records)


def by_key(comparison) -> dict:
    return {m.key: m for m in comparison.metrics}


def harness(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "compare", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


# statistics ---------------------------------------------------------------------------------------

def test_point_values_are_the_results_own_and_throughput_the_steady_rate(tmp_path):
    """Latencies and fractions equal result.json's (same definitions); throughputs are the steady rate
    of the window without its ramp-up and drain: one request every 20 ms, 24 of 25 succeed, 16 tokens each."""
    run = make_run(tmp_path, run_records(1, fail_every=25), write=False)
    c = compare(run, run, Thresholds(gate={**DEFAULT_GATE, "tpot_ms.mean": 0.05, "itl_ms.p99": 0.05,
                                           "total_token_throughput_tok_s": 0.05, "slo_attainment": 0.01}))
    steady = {"output_throughput_tok_s": 50 * 0.96 * 16, "goodput_req_s": 50 * 0.96,
              "request_throughput_req_s": 50 * 0.96, "total_token_throughput_tok_s": 50 * 0.96 * (16 + 64)}
    for m in c.metrics:
        if m.metric in RATES:
            assert m.baseline == pytest.approx(steady[m.key], rel=0.01), m.key
        else:
            assert m.baseline == pytest.approx(metric_value(run.result, m.metric, m.statistic), rel=1e-9), m.key
        assert m.change == 0 and m.p_value == 1 and m.verdict not in ("regressed", "improved"), m.key
    assert by_key(c)["error_rate"].baseline == pytest.approx(7 / 196)  # requests 25, 50, ..., 175 of 196 measured


def test_same_config_twice_has_no_regression(tmp_path):
    """Independent runs from one distribution: nothing regressed; the precise metrics are shown unchanged."""
    c = compare(make_run(tmp_path / "a", run_records(1), write=False),
                make_run(tmp_path / "b", run_records(2), write=False))
    m = by_key(c)
    assert not c.regressed
    assert {x.verdict for x in c.metrics} <= {"unchanged", "inconclusive"}
    assert m["tpot_ms.p95"].verdict == "unchanged" and m["tpot_ms.p95"].ci[0] < 0 < m["tpot_ms.p95"].ci[1]
    assert m["output_throughput_tok_s"].ci[0] < 0 < m["output_throughput_tok_s"].ci[1]


def test_ten_percent_slower_engine_regresses_and_faster_improves(tmp_path):
    base = make_run(tmp_path / "a", run_records(1), write=False)
    slow = by_key(compare(base, make_run(tmp_path / "b", run_records(2, slower=1.10), write=False)))
    assert slow["output_throughput_tok_s"].verdict == "regressed"
    assert slow["output_throughput_tok_s"].change == pytest.approx(1 / 1.1 - 1, abs=0.01)
    assert slow["tpot_ms.p95"].verdict == "regressed" and slow["tpot_ms.p95"].ci[0] > 0.05
    assert slow["tpot_ms.p95"].p_adjusted < 0.01
    fast = by_key(compare(base, make_run(tmp_path / "c", run_records(2, slower=0.9), write=False)))
    assert fast["output_throughput_tok_s"].verdict == "improved" and fast["tpot_ms.p95"].verdict == "improved"


def test_a_change_within_the_threshold_is_not_a_regression(tmp_path):
    """2% slower is significant on the TPOT median (a tight distribution) but within its 5% threshold."""
    c = by_key(compare(make_run(tmp_path / "a", run_records(1), write=False),
                       make_run(tmp_path / "b", run_records(2, slower=1.02), write=False)))
    tpot = c["tpot_ms.p50"]
    assert tpot.verdict == "unchanged" and tpot.p_adjusted < 0.01 and 0.01 < tpot.change < 0.03
    assert "significant but within the threshold" in tpot.reason


def test_errors_gate_in_percentage_points(tmp_path):
    c = by_key(compare(make_run(tmp_path / "a", run_records(1), write=False),
                       make_run(tmp_path / "b", run_records(2, fail_every=10), write=False)))
    assert c["error_rate"].change == pytest.approx(19 / 196) and c["error_rate"].verdict == "regressed"


def test_too_few_requests_are_inconclusive(tmp_path):
    c = compare(make_run(tmp_path / "a", run_records(1, n=20), write=False),
                make_run(tmp_path / "b", run_records(2, n=20), write=False))
    assert all(m.verdict == "inconclusive" and "too few measured requests" in m.reason for m in c.metrics)
    assert not c.regressed


def test_holm_adjustment():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5, 0.001]) == pytest.approx([0.5, 0.002])


def test_block_weights_draw_contiguous_blocks_around_a_circle():
    w = block_weights(50, 5, 2000, np.random.default_rng(0))
    assert w.shape == (2000, 50) and (w.sum(axis=1) == 50).all()
    assert w.mean(axis=0) == pytest.approx(np.ones(50), abs=0.1)  # every unit equally likely, ends included
    assert (block_weights(50, 50, 10, np.random.default_rng(0)) == 1).all()  # one block of all: each unit once


def test_weighted_quantile_matches_numpy_on_the_repeated_sample():
    rng = np.random.default_rng(3)
    values = np.sort(rng.normal(size=40))
    weights = rng.integers(0, 4, size=(30, 40))
    for q in (0.0, 0.5, 0.95, 1.0):
        expected = [np.percentile(np.repeat(values, w), q * 100) for w in weights]
        assert _weighted_quantile(values, weights, q) == pytest.approx(expected)


def test_thresholds_file(tmp_path):
    path = tmp_path / "t.yaml"
    path.write_text(yaml.safe_dump({"alpha": 0.05, "gate": {"ttft_ms.p99": 0.1}, "show": {}}))
    t = load_thresholds(path)
    assert (t.alpha, t.gate, t.show) == (0.05, {"ttft_ms.p99": 0.1}, {})
    for bad, says in (({"gate": {"ttft_ms": 0.1}}, "name a statistic"), ({"gate": {"nope": 0.1}}, "unknown metric"),
                      ({"gate": {"ttft_ms.max": 0.1}}, "use p99"), ({"limits": {}}, "limits: unknown key")):
        path.write_text(yaml.safe_dump(bad))
        with pytest.raises(ConfigError, match=says) as err:
            load_thresholds(path)
        assert str(path) in str(err.value)


def test_load_run_names_the_missing_or_broken_file(tmp_path):
    run = make_run(tmp_path / "run", run_records(1))
    (run.path / "result.json").write_text('{"name": \n oops')
    with pytest.raises(ConfigError, match=r"run/result.json:2: invalid JSON"):
        load_run(run.path)
    (run.path / "records.jsonl").unlink()
    with pytest.raises(ConfigError, match="run/records.jsonl: not found"):
        load_run(run.path)


# the command ----------------------------------------------------------------------------------------

def test_cli_regression_exits_1_with_junit_and_html(tmp_path):
    make_run(tmp_path / "base", run_records(1))
    make_run(tmp_path / "cur", run_records(2, slower=1.10))
    proc = harness("base", "cur", "--junit", "out/junit.xml", "--html", "out/report.html", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert "REGRESSION" in proc.stderr and "output_throughput_tok_s" in proc.stderr
    suite = ET.parse(tmp_path / "out" / "junit.xml").getroot().find("testsuite")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) >= set(DEFAULT_GATE)
    failed = {name for name, c in cases.items() if c.find("failure") is not None}
    assert "output_throughput_tok_s" in failed and "tpot_ms.p95" in failed and "error_rate" not in failed
    assert int(suite.get("failures")) == len(failed)
    assert "regressed" in cases["tpot_ms.p95"].find("failure").get("message")
    assert "Regression:" in (tmp_path / "out" / "report.html").read_text()


def test_cli_same_config_exits_0(tmp_path):
    make_run(tmp_path / "base", run_records(1))
    make_run(tmp_path / "cur", run_records(2))
    proc = harness("base", "cur", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "no gated metric regressed" in proc.stderr


def test_cli_fingerprint_mismatch_refused_unless_allowed(tmp_path):
    make_run(tmp_path / "base", run_records(1), gpu="NVIDIA H100 80GB HBM3")
    make_run(tmp_path / "cur", run_records(2), gpu="NVIDIA A100-SXM4-80GB")
    proc = harness("base", "cur", cwd=tmp_path)
    assert proc.returncode == 2
    assert "GPU: engine.device" in proc.stderr and "--allow-fingerprint-mismatch" in proc.stderr
    proc = harness("base", "cur", "--allow-fingerprint-mismatch", "--html", "r.html", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "warning:" in proc.stderr and "fingerprints differ (GPU)" in proc.stderr
    html = (tmp_path / "r.html").read_text()
    assert "fingerprints differ (GPU)" in html and "NVIDIA A100-SXM4-80GB" in html


def test_cli_bad_input_exits_2_naming_the_path(tmp_path):
    make_run(tmp_path / "base", run_records(1))
    proc = harness("base", "missing", cwd=tmp_path)
    assert proc.returncode == 2 and "missing: not a directory" in proc.stderr
    (tmp_path / "empty").mkdir()
    proc = harness("base", "empty", cwd=tmp_path)
    assert proc.returncode == 2 and "empty: no result.json and no study.db" in proc.stderr
    (tmp_path / "t.yaml").write_text("gate: {ttft_ms.p101: 0.05}\n")
    proc = harness("base", "base", "--thresholds", "t.yaml", cwd=tmp_path)
    assert proc.returncode == 2 and "t.yaml" in proc.stderr and "ttft_ms.p101" in proc.stderr


def test_cli_exits_2_when_no_gated_metric_can_be_tested(tmp_path):
    """A gate that tested nothing must not pass: runs too short for the block bootstrap."""
    make_run(tmp_path / "base", run_records(1, n=20))
    make_run(tmp_path / "cur", run_records(2, n=20))
    proc = harness("base", "cur", "--junit", "junit.xml", cwd=tmp_path)
    assert proc.returncode == 2 and "no gated metric could be tested: too few measured requests" in proc.stderr
    assert "not tested (output_throughput_tok_s" in proc.stderr
    assert (tmp_path / "junit.xml").exists()  # still written, for the CI to show

"""Calibration against the mock server, the trust verdict, and several client processes."""
import json
import platform
import subprocess
import sys

import pytest

from engine_adapters.mock_server import MockServerConfig, run_mock_server
from engine_adapters.openai_http import OpenAIConfig
from harness.calibrate import Budget, Level, _highest_passing, calibrate, trust_verdict
from harness.clients import run_in_processes
from workloads import RequestSpec

CERT = {"budget": Budget().__dict__, "machine": {"hostname": platform.node()},
        "certified_concurrency": 32, "certified_rate_req_s": 500}


def test_trust_verdict():
    ok = trust_verdict(CERT, remote=True, concurrency=16, rate_req_s=None, schedule_lag_p99_ms=None)
    assert ok == {"trusted": True, "reasons": []}
    over = trust_verdict(CERT, remote=True, concurrency=None, rate_req_s=1000, schedule_lag_p99_ms=7.5)
    assert over["trusted"] is False
    assert any("lag p99 7.50 ms > 5 ms" in r for r in over["reasons"])
    assert any("1000 req/s exceeds the 500 req/s certified" in r for r in over["reasons"])
    unknown = trust_verdict(None, remote=True, concurrency=8, rate_req_s=None, schedule_lag_p99_ms=1.0)
    assert unknown["trusted"] is None and "run `harness calibrate`" in unknown["reasons"][0]
    other_host = {**CERT, "machine": {"hostname": "elsewhere"}}
    assert trust_verdict(other_host, remote=True, concurrency=1, rate_req_s=None, schedule_lag_p99_ms=0)["trusted"] is None
    # in-process engines: only the client's own schedule matters
    assert trust_verdict(None, remote=False, concurrency=None, rate_req_s=5, schedule_lag_p99_ms=1.0)["trusted"] is True


def test_certified_load_is_the_top_of_the_unbroken_run_of_passes():
    rows = [{"load": load, "within_budget": ok} for load, ok in [(1, True), (16, True), (64, False), (128, True)]]
    assert _highest_passing(rows) == 16
    assert _highest_passing([{"load": 1, "within_budget": False}]) is None


def test_calibrate_measures_client_error_against_the_servers_own_send_times():
    levels = (Level("closed", 4, requests=8, output_tokens=10), Level("open", 50, requests=25, output_tokens=4))
    cert = calibrate(levels=levels)
    closed, opened = cert["levels"]
    for row in (closed, opened):
        assert row["failed"] == 0 and row["compared"] == row["requests"]
        # a light load on loopback: the client sees each chunk within a few ms of the server sending it
        assert 0 <= row["ttft_error_ms"]["p50"] < 5 and abs(row["itl_error_ms"]["p50"]) < 2
    assert opened["schedule_lag_ms"]["n"] == 25 and closed["schedule_lag_ms"]["n"] == 0
    assert cert["certified_concurrency"] in (None, 4) and cert["certified_rate_req_s"] in (None, 50)


def test_several_client_processes_share_one_clock_and_keep_send_order():
    specs = [RequestSpec(id=f"r{i}", max_output_tokens=5, prompt_token_ids=(70,) * 8, scheduled_offset_s=i * 0.01)
             for i in range(12)]
    with run_mock_server(MockServerConfig(ttft_ms=10, itl_ms=5)) as url:
        config = OpenAIConfig(model="mock", base_url=url, api_key_env=None).model_dump()
        records, t0 = run_in_processes("openai", config, specs, 3, warmup=2, cooldown=1)
    assert [r.id for r in records] == [s.id for s in specs]
    assert [r.phase for r in records] == ["warmup"] * 2 + ["measured"] * 9 + ["cooldown"]
    assert all(r.ok and r.output_tokens == 5 for r in records)
    ttft = [(r.token_ns[0] - r.scheduled_ns) / 1e6 for r in records]
    assert all(9 <= t < 40 for t in ttft), ttft  # one shared t0: latency from the schedule is sane everywhere


def test_client_processes_need_a_remote_engine(tmp_path):
    from harness.config import parse_config
    from harness.errors import ConfigError

    with pytest.raises(ConfigError, match="runner.client_processes > 1 needs an engine reached over the network"):
        parse_config({"name": "x", "engine": {"kind": "mock"}, "workload": "chat",
                      "runner": {"client_processes": 2}}, "test")


@pytest.mark.slow
def test_calibrate_command_prints_its_table_and_writes_a_certificate(tmp_path):
    out = tmp_path / "cal.json"
    proc = subprocess.run([sys.executable, "-m", "harness", "calibrate", "-o", str(out)], capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    assert "128 streams" in proc.stderr and "1000 req/s" in proc.stderr and "certified:" in proc.stderr
    cert = json.loads(out.read_text())
    assert cert["kind"] == "harness.calibration" and len(cert["levels"]) == 11

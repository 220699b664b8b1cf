"""`harness plan`: sizing arithmetic, the knee search on the mock engine against its virtual-time answer,
resume, and bad input."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine_adapters.mock import MockConfig, simulate
from harness.config import parse_config
from harness.errors import ConfigError
from harness.metrics import summarize
from harness.plan import (Planner, SweepSettings, Target, config_at_rate, gpus_per_replica, max_rate_at_slo,
                          size_deployment, steady_rates)
from harness.records import RequestRecord
from harness.store import TrialFiles
from workloads import TokenSpace

# Capacity about 113 req/s: 8 slots, 8 steps per request of 2 ms + 1 ms per decoding sequence.
PARAMS = {"step_ms": 2, "decode_ms_per_seq": 1.0, "prefill_ms_per_token": 0, "max_batch_size": 8}
WARMUP = 10
SLO_TTFT_P95_MS = 50.0
EXPERIMENT = {
    "name": "plan",
    "engine": {"kind": "mock", "params": PARAMS},
    "workload": {"kind": "synthetic", "requests": 150, "warmup_requests": WARMUP,
                 "input_tokens": {"dist": "fixed", "value": 16}, "output_tokens": {"dist": "fixed", "value": 8},
                 "arrival": {"process": "constant", "rate": 50}},
    "slo": {"ttft_ms": {"p95": SLO_TTFT_P95_MS}},
    "runner": {"request_timeout_s": 10},
}


def experiment(**changes) -> dict:
    data = json.loads(json.dumps(EXPERIMENT))
    for key, value in changes.items():
        data[key] = value
    return data


# sizing arithmetic ---------------------------------------------------------------------------------

def points(verdicts: dict[float, bool]) -> list[dict]:
    return [{"rate": rate, "passed": passed} for rate, passed in verdicts.items()]


def test_max_rate_is_the_highest_pass_below_the_lowest_miss():
    knee = max_rate_at_slo(points({10: True, 20: True, 30: True, 40: False, 50: True}), precision=0.05)
    assert (knee["rate"], knee["first_miss"], knee["status"]) == (30, 40, "bracketed")
    assert knee["bracket_width"] == pytest.approx(1 / 3) and not knee["precision_reached"]
    assert knee["passes_above_first_miss"] == [50]  # noise: reported, and the lower answer kept

    assert max_rate_at_slo(points({100: True, 104: False}), 0.05)["precision_reached"]
    lower_bound = max_rate_at_slo(points({1: True, 2: True}), None)
    assert (lower_bound["rate"], lower_bound["status"]) == (2, "no_miss")
    none = max_rate_at_slo(points({1: False, 2: False}), None)
    assert (none["rate"], none["status"]) == (None, "none_passed")


def test_sizing_replicas_gpus_and_cost():
    # each replica at most 0.8 x 30 = 24 req/s; 100 req/s -> ceil(4.17) = 5 replicas of tp 2 x pp 1
    sizing = size_deployment(30.0, 200.0, Target(req_s=100, headroom=0.2, gpu_hour_cost=2.5), gpus_each=2)
    assert sizing["per_replica_cap_req_s"] == pytest.approx(24.0)
    assert (sizing["replicas"], sizing["gpus"]) == (5, 10)
    assert sizing["operating_rate_req_s"] == pytest.approx(20.0)
    assert sizing["operating_utilization"] == pytest.approx(20 / 30)
    assert sizing["cost_per_hour"] == pytest.approx(25.0)
    # $25/h over 100 req/s x 200 tokens x 3600 s = 72M tokens/h
    assert sizing["cost_per_million_output_tokens"] == pytest.approx(25.0 / 72.0)


def test_sizing_exact_multiple_is_not_rounded_up_by_float_error():
    # 0.9 x 7 = 6.3 req/s per replica; 81.9 / 6.3 is 13.000000000000002 in floating point
    assert size_deployment(7.0, None, Target(req_s=81.9, headroom=0.1), 1)["replicas"] == 13


def test_sizing_from_a_token_target_and_without_a_price():
    sizing = size_deployment(10.0, 50.0, Target(output_tok_s=1000.0, headroom=0.0), 4)
    assert sizing["target_req_s"] == pytest.approx(20.0) and sizing["target_given_as"] == "output_tok_s"
    assert (sizing["replicas"], sizing["gpus"]) == (2, 8)
    assert sizing["cost_per_hour"] is None and sizing["cost_per_million_output_tokens"] is None


def test_gpus_per_replica_from_engine_config():
    assert gpus_per_replica({"tensor_parallel_size": 2, "pipeline_parallel_size": 2}) == 4
    assert gpus_per_replica({"tp": 4, "pp": None}) == 4
    assert gpus_per_replica({"model": "mock"}) == 1


def test_steady_rates_leave_out_ramp_and_drain():
    """100 requests every 10 ms; a server that keeps up ends each 50 ms later, a saturated one every 20 ms."""
    def records(end_gap_ms: float) -> list[RequestRecord]:
        return [RequestRecord(id=str(i), phase="measured", expected_output_tokens=1, input_tokens=1,
                              scheduled_ns=i * 10_000_000, token_ns=[int((50 + i * end_gap_ms) * 1e6)],
                              end_ns=int((50 + i * end_gap_ms) * 1e6)) for i in range(100)]

    offered, achieved = steady_rates(records(10.0))
    assert offered == pytest.approx(100.0) and achieved == pytest.approx(100.0)
    offered, achieved = steady_rates(records(20.0))
    assert offered == pytest.approx(100.0) and achieved == pytest.approx(50.0)


def test_confirmation_config_moves_every_seed():
    cfg = parse_config(experiment(), "t")
    assert config_at_rate(cfg, 7.0)["workload"]["arrival"]["rate"] == 7.0
    assert config_at_rate(cfg, 7.0, seed_shift=1)["workload"]["seed"] == 1
    seeds = parse_config(experiment(workload={**EXPERIMENT["workload"], "seed": {"lengths": 3, "content": 4,
                                                                                "arrival": 5}}), "t")
    assert config_at_rate(seeds, 7.0, seed_shift=1)["workload"]["seed"] == {"lengths": 4, "content": 5, "arrival": 6}


def test_a_trace_is_rescaled_to_the_rate():
    trace = parse_config(experiment(workload={"kind": "trace", "requests": 50, "speedup": 2,
                                              "path": "builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv"}), "t")
    planner = Planner(trace, Path("unused"), SweepSettings(rates=(5.0,)), timeout_s=10)
    assert planner.field == "workload.rate"
    data = config_at_rate(trace, 5.0)
    assert (data["workload"]["rate"], data["workload"]["speedup"]) == (5.0, 1.0)
    with pytest.raises(ConfigError, match="workload.rate is not set: give --start-rate or --rates"):
        Planner(trace, Path("unused"), SweepSettings(), timeout_s=10)


# the knee search on the mock engine ----------------------------------------------------------------

def simulated_ttft_p95(cfg, rate: float) -> float:
    """The TTFT p95 the mock's service model gives at `rate` for these exact requests (virtual time)."""
    at_rate = parse_config(config_at_rate(cfg, rate), "t")
    specs = list(at_rate.workload.generate(TokenSpace(vocab_size=MockConfig().vocab_size)))
    times = simulate(MockConfig(**PARAMS), [(s.scheduled_offset_s, s.input_tokens, s.max_output_tokens) for s in specs])
    return summarize([(first - s.scheduled_offset_s) * 1e3 for s, (first, _) in zip(specs, times)][WARMUP:])["p95"]


def true_knee(cfg) -> float:
    """The rate where the simulated TTFT p95 crosses the SLO, to 0.1%."""
    lo, hi = 50.0, 400.0
    assert simulated_ttft_p95(cfg, lo) <= SLO_TTFT_P95_MS < simulated_ttft_p95(cfg, hi)
    while hi - lo > 0.001 * lo:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if simulated_ttft_p95(cfg, mid) <= SLO_TTFT_P95_MS else (lo, mid)
    return lo


def test_automatic_sweep_finds_the_mock_knee_within_its_precision_and_resumes(tmp_path):
    cfg = parse_config(experiment(), "t")
    knee_rate = true_knee(cfg)
    settings = SweepSettings(precision=0.05)
    planner = Planner(cfg, tmp_path / "plan", settings, timeout_s=120)
    knee = planner.sweep()
    assert knee["status"] == "bracketed" and knee["precision_reached"], knee
    assert abs(knee["rate"] - knee_rate) <= settings.precision * knee_rate, (knee, knee_rate)
    assert knee["first_miss"] - knee["rate"] <= settings.precision * knee["rate"]
    rates = [p["rate"] for p in planner.sweep_points]
    assert rates[:3] == [50.0, 100.0, 200.0]  # geometric growth from the config's rate until the first miss
    assert all(p["counts"]["measured"] == 140 and p["simulated"] for p in planner.sweep_points)

    confirmation = planner.confirm(knee["rate"])
    confirm_cfg = yaml.safe_load((tmp_path / "plan" / confirmation["dir"] / TrialFiles.CONFIG).read_text())
    assert confirmation["dir"] == f"confirm-rate-{knee['rate']:g}" and confirm_cfg["workload"]["seed"] == 1
    assert confirmation["state"] == "complete"

    # resume: every completed point is reused; one whose result is gone is measured again
    redo = "rate-200"  # a clear miss: measured again, it gives the same verdict and the same path
    (tmp_path / "plan" / redo / TrialFiles.RESULT).unlink()
    stamps = {p: (tmp_path / "plan" / p / TrialFiles.RESULT).stat().st_mtime_ns for p in
              (q["dir"] for q in planner.points) if p != redo}
    reused = {}
    again = Planner(cfg, tmp_path / "plan", settings, timeout_s=120,
                    on_point=lambda p, was_reused: reused.__setitem__(p["dir"], was_reused))
    again.sweep()
    again.confirm(knee["rate"])
    assert reused == {p["dir"]: p["dir"] != redo for p in planner.points}
    assert stamps == {p: (tmp_path / "plan" / p / TrialFiles.RESULT).stat().st_mtime_ns for p in stamps}


def test_explicit_rates_are_measured_in_order_of_rate(tmp_path):
    cfg = parse_config(experiment(), "t")
    planner = Planner(cfg, tmp_path / "plan", SweepSettings(rates=(400.0, 40.0)), timeout_s=120)
    knee = planner.sweep()
    assert [p["rate"] for p in planner.points] == [40.0, 400.0]
    assert (knee["rate"], knee["first_miss"]) == (40.0, 400.0)
    miss = planner.points[1]
    assert not miss["passed"] and any("ttft_ms p95" in why for why in miss["why"])


def test_a_changed_config_is_not_mixed_with_old_points(tmp_path):
    cfg = parse_config(experiment(), "t")
    Planner(cfg, tmp_path / "plan", SweepSettings(rates=(40.0,)), timeout_s=120).sweep()
    changed = parse_config(experiment(engine={"kind": "mock", "params": {**PARAMS, "step_ms": 3}}), "t")
    with pytest.raises(ConfigError, match="measured with a different config"):
        Planner(changed, tmp_path / "plan", SweepSettings(rates=(40.0,)), timeout_s=120).sweep()


# bad input -----------------------------------------------------------------------------------------

def test_closed_loop_workload_is_refused_naming_the_field(tmp_path):
    closed = parse_config(experiment(workload={**EXPERIMENT["workload"],
                                               "arrival": {"process": "closed", "concurrency": 4}}), "t")
    with pytest.raises(ConfigError, match=r"workload\.arrival\.process: closed loop"):
        Planner(closed, tmp_path, SweepSettings(), timeout_s=10)


@pytest.mark.parametrize("settings, message", [
    (SweepSettings(rates=(1.0, -2.0)), "--rates: every rate must be a positive"),
    (SweepSettings(rates=()), "--rates: give at least one rate"),
    (SweepSettings(growth=1.0), "--growth must be > 1"),
    (SweepSettings(precision=0.0), "--precision must be between 0 and 1"),
    (SweepSettings(start_rate=-1.0), "--start-rate must be > 0"),
])
def test_bad_sweep_settings(settings, message):
    with pytest.raises(ConfigError, match=message):
        settings.check()


@pytest.mark.parametrize("target, message", [
    (Target(req_s=-5.0), "--target-rate must be > 0"),
    (Target(req_s=5.0, output_tok_s=100.0), "not both"),
    (Target(req_s=5.0, headroom=1.0), "--headroom must be in"),
    (Target(req_s=5.0, gpu_hour_cost=-1.0), "--gpu-hour-cost must be >= 0"),
])
def test_bad_targets(target, message):
    with pytest.raises(ConfigError, match=message):
        target.check()


def harness(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("workload_change, args, message", [
    ({"arrival": {"process": "closed", "concurrency": 4}}, (), "workload.arrival.process: closed loop"),
    ({}, ("--rates", "1,-2"), "--rates: every rate must be a positive"),
    ({}, ("--rates", "1,two"), "--rates: expected comma-separated numbers"),
    ({}, ("--target-rate", "10", "--headroom", "1.5"), "--headroom must be in"),
])
def test_cli_bad_input_exits_2_naming_the_field(tmp_path, workload_change, args, message):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment(workload={**EXPERIMENT["workload"], **workload_change})))
    proc = harness("plan", str(path), *args, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_cli_plan_writes_plan_json_and_report(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(experiment()))
    proc = harness("plan", str(path), "--rates", "40,400", "--target-rate", "100", "--gpu-hour-cost", "3",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    plan_dir = tmp_path / "runs" / "plan" / "plan"
    plan = json.loads((plan_dir / "plan.json").read_text())
    assert plan["schema_version"] == 1 and plan["kind"] == "harness.capacity_plan" and plan["simulated"] is True
    assert plan["max_rate"]["rate"] == 40.0 and plan["validation"]["verdict"] == "validated"
    # 0.8 x 40 = 32 req/s per replica -> ceil(100 / 32) = 4 replicas of 1 GPU at $3
    assert (plan["sizing"]["replicas"], plan["sizing"]["gpus"], plan["sizing"]["cost_per_hour"]) == (4, 4, 12.0)
    assert plan["command"].startswith(f"harness plan {path} --rates 40,400 --saturation-ratio 0.9 --target-rate 100.0")
    assert sorted(p.name for p in plan_dir.iterdir() if p.is_dir()) == ["confirm-rate-40", "rate-40", "rate-400"]
    html = (plan_dir / "capacity.html").read_text()
    assert "SIMULATED ENGINE" in html and "Capacity plan: plan" in html
    assert "max rate at SLO: 40 req/s per replica" in proc.stderr and "4 replicas x 1 GPU = 4 GPUs" in proc.stderr

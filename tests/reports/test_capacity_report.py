"""The capacity report of `harness plan`, rendered from hand-built point results (no engine runs)."""
from __future__ import annotations

import json
import re
from html import unescape

import pytest

from engine_adapters.mock import MockConfig
from harness.config import parse_config
from harness.plan import Planner, SweepSettings, Target, build_plan, max_rate_at_slo, summarize_point
from reports import render_capacity_report
from tests.reports.test_reports import SLO, XSS, make_records, make_result

COMMAND = "harness plan exp.yaml --target-rate 100.0 --headroom 0.2 --gpu-hour-cost 2.0"


def point(rate: float, role: str = "sweep", ttft_ms: float = 50.0, simulated: bool = True) -> tuple[dict, dict]:
    records = make_records(rate=rate, ttft_ms=ttft_ms)
    result = make_result(records, MockConfig(model=XSS).model_dump(mode="json"), simulated=simulated)
    name = f"{'confirm-' if role == 'confirm' else ''}rate-{rate:g}"
    return summarize_point(rate, role, name, result, records, None, 0.9, 1 if role == "confirm" else 0), result


def make_plan(tmp_path, sweep: dict[float, float], confirm_ttft_ms: float | None = 50.0,
              target: Target = Target(req_s=100.0, headroom=0.2, gpu_hour_cost=2.0), simulated: bool = True,
              failed: dict[float, str] | None = None) -> dict:
    """A plan as `harness plan` builds it: sweep points {rate: TTFT ms} (TTFT 400 misses the 200 ms p95
    SLO), failed points {rate: reason}, and a confirmation run at the max rate."""
    cfg = parse_config({"name": "demo", "engine": {"kind": "mock", "model": XSS},
                        "workload": {"kind": "synthetic", "requests": 40, "warmup_requests": 2,
                                     "input_tokens": {"dist": "fixed", "value": 100},
                                     "output_tokens": {"dist": "fixed", "value": 8},
                                     "arrival": {"process": "constant", "rate": 10}},
                        "slo": SLO, "max_error_rate": 0.05}, "fixture")
    planner = Planner(cfg, tmp_path / "plan", SweepSettings(precision=0.05), timeout_s=1)
    for rate, ttft in sweep.items():
        p, result = point(rate, ttft_ms=ttft, simulated=simulated)
        planner.points.append(p)
        planner.results[p["dir"]] = result
    for rate, reason in (failed or {}).items():
        planner.points.append(summarize_point(rate, "sweep", f"rate-{rate:g}", None, None, reason, 0.9, 0))
    knee = max_rate_at_slo(planner.sweep_points, 0.05)
    confirmation = None
    if knee["rate"] is not None and confirm_ttft_ms is not None:
        confirmation, _ = point(knee["rate"], "confirm", ttft_ms=confirm_ttft_ms, simulated=simulated)
        planner.points.append(confirmation)
    return build_plan(cfg, planner, knee, confirmation, target, COMMAND)


def text(html: str) -> str:
    """The visible text, tags dropped and whitespace collapsed."""
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


@pytest.fixture
def plan(tmp_path) -> dict:
    return make_plan(tmp_path, {10: 50, 20: 60, 30: 100, 40: 400}, failed={80: "CUDA <b>out of memory</b>"})


def test_report_states_max_rate_bracket_validation_and_sizing(plan):
    assert (plan["max_rate"]["rate"], plan["max_rate"]["first_miss"]) == (30, 40)
    page = text(render_capacity_report(plan))
    assert "30 req/s per replica within the SLOs (SIMULATED)" in page
    assert "the knee lies in [30, 40) req/s, a bracket of 33.3% of the rate" in page
    assert "not reached within 20 points" in page  # the bracket is wider than the 5% asked for
    assert "Confirmation run at 30 req/s with fresh workload seeds ( 1 ): validated" in page
    # 0.8 x 30 = 24 req/s per replica -> ceil(100 / 24) = 5 replicas of 1 GPU at $2/GPU-hour;
    # 100 req/s x 8 output tokens x 3600 s = 2.88M tokens per hour -> $10 / 2.88 = $3.47 per million
    assert "5 replicas 5 GPUs (1 per replica) $10.00 per hour $3.47 per million output tokens" in page
    assert "per-replica cap 24.0 req/s" in page and "operating point 20.0 req/s" in page
    assert "cost_per_hour / (target_req_s * output_tokens_per_request * 3600) * 1e6" in page
    assert COMMAND in page


def test_points_table_lists_every_run_with_counts_cis_and_reasons(plan):
    html = render_capacity_report(plan)
    page = text(html)
    for run in ("rate-10", "rate-20", "rate-30", "rate-40", "rate-80", "confirm-rate-30"):
        assert f"<code>{run}</code>" in html
    assert page.count("p95 95% CI [") >= 2 * 5  # ttft and tpot of every completed run (the SLO names both p95s)
    assert re.search(r"ttft_ms p95 4\d\d > limit 200", page)
    assert "run failed: CUDA <b>out of memory</b>" in page
    assert "Each verdict rests on one run of 38 measured requests" in page
    assert "SIMULATED: every point ran on the mock engine" in page


def test_data_strings_are_escaped(plan):
    html = render_capacity_report(plan)
    assert XSS not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the model name
    assert "<b>out of memory</b>" not in html and "&lt;b&gt;out of memory&lt;/b&gt;" in html


def test_figures_are_embedded_and_the_page_self_contained(plan):
    html = render_capacity_report(plan)
    assert len(re.findall(r'<img src="data:image/svg\+xml;base64,', html)) == 2
    assert "<script" not in html and not re.search(r'(src|href)="(https?:)?//', html)


def test_plan_json_round_trips(plan):
    """plan.json holds plain JSON (no numpy scalars) and renders the same after a round trip."""
    again = json.loads(json.dumps(plan))
    assert again == plan
    assert render_capacity_report(again) == render_capacity_report(plan)


def test_not_validated_is_said_in_the_verdict_and_the_sizing(tmp_path):
    plan = make_plan(tmp_path, {10: 50, 20: 60, 40: 400}, confirm_ttft_ms=400)
    assert plan["validation"]["validated"] is False
    page = text(render_capacity_report(plan))
    assert re.search(r"NOT validated ?: ttft_ms p95 4\d\d > limit 200", page)
    assert "The max rate was NOT validated by the confirmation run: this sizing rests on it." in page


def test_non_monotone_passes_are_flagged(tmp_path):
    plan = make_plan(tmp_path, {10: 50, 20: 400, 40: 50})
    page = text(render_capacity_report(plan))
    assert plan["max_rate"]["rate"] == 10
    assert "Not monotone: 40 req/s passed above the miss at 20 req/s" in page


def test_no_rate_met_the_slos(tmp_path):
    plan = make_plan(tmp_path, {10: 400, 20: 500})
    assert plan["sizing"] is None and plan["validation"]["verdict"] == "not run"
    page = text(render_capacity_report(plan))
    assert "No rate met the SLOs" in page and "lowest tried: 10 req/s" in page
    assert "No sizing: no rate met the SLOs." in page


def test_every_rate_passing_is_a_lower_bound_and_no_target_no_sizing(tmp_path):
    plan = make_plan(tmp_path, {10: 50, 20: 50}, target=Target(), simulated=False)
    html = render_capacity_report(plan)
    page = text(html)
    assert "Every rate tried passed: 20 req/s is a lower bound, not the knee." in page
    assert "No target load given" in page
    assert "SIMULATED" not in html

"""HTML reports, figures and recommended.yaml from hand-built studies (records with known times, no Optuna)."""
from __future__ import annotations

import base64
import re
from html import unescape
from pathlib import Path

import matplotlib
import pytest
import yaml

from engine_adapters.mock import MockConfig
from harness.config import EngineSpec, parse_objectives
from harness.fidelity import workload_fidelity
from harness.metrics import METRICS, SloLimit, compute
from harness.records import RequestRecord, write_records
from harness.store import SCHEMA_VERSION, write_json
from harness.summary import StudySummary, TrialRow, choose, runner_up_confidence
from harness.objectives import objective_value
from reports import recommended_config, render_run_report, render_study_report, write_recommended
from reports import figures
from reports.html import format_number, format_percent
from workloads import RequestSpec
from workloads.profile import SourceProfile

MS = 1_000_000
OBJECTIVE = "maximize goodput_req_s"
SLO = {"ttft_ms": {"p95": 200.0}, "tpot_ms": {"p95": 30.0}}
XSS = "<script>alert(1)</script>"


# fixtures: records with known times -> result dicts as harness.trial.measure writes them ------------

def make_records(n: int = 40, rate: float = 10.0, ttft_ms: float = 50.0, tpot_ms: float = 10.0,
                 out_tokens: int = 8, fail_every: int | None = None, warmup: int = 2,
                 error: str = "server said 500") -> list[RequestRecord]:
    """Open-loop requests every 1/rate s; TTFT grows slowly (queueing); every `fail_every`-th fails."""
    records = []
    for i in range(n):
        scheduled = int(i / rate * 1e9)
        phase = "warmup" if i < warmup else "measured"
        r = RequestRecord(id=f"req-{i}", phase=phase, expected_output_tokens=out_tokens, input_tokens=100,
                          scheduled_ns=scheduled, dispatched_ns=scheduled, sent_ns=scheduled + MS // 10)
        if fail_every and i % fail_every == fail_every - 1:
            r.end_ns, r.error = scheduled + 5 * MS, error
        else:
            first = scheduled + int((ttft_ms + i * 0.5) * MS)
            r.token_ns = [first + int(k * tpot_ms * MS) for k in range(out_tokens)]
            r.end_ns = r.token_ns[-1]
        records.append(r)
    return records


def make_result(records: list[RequestRecord], engine_config: dict, *, simulated: bool = True, slo: dict = SLO,
                max_error_rate: float = 0.05, telemetry: dict | None = None, gpu_name: str = "sim") -> dict:
    """A result dict shaped like harness.trial.measure's."""
    metrics = compute(records, [SloLimit(m, s, v) for m, stats in slo.items() for s, v in stats.items()])
    error_rate = metrics["scalars"]["error_rate"] or 0.0
    return {
        "schema_version": SCHEMA_VERSION, "kind": "harness.run_result", "name": "demo", "simulated": simulated,
        "engine": {"kind": "mock", "config": engine_config},
        "workload": {"kind": "synthetic", "requests": len(records), "arrival": {"process": "constant", "rate": 10.0}},
        "slo": slo, "max_error_rate": max_error_rate,
        "fingerprint": {"harness_version": "0.1.0", "python": "3.11", "platform": "Linux", "hostname": "h",
                        "nvml": None, "engine": {"engine": "mock", "engine_version": "service-model-1",
                                                 "simulated": simulated, "model": engine_config["model"],
                                                 "device": gpu_name}},
        "started_at": "2025-01-01T00:00:00+00:00", "finished_at": "2025-01-01T00:01:00+00:00",
        "engine_start_s": 0.25,
        **metrics,
        "slo_pass": all(c["pass"] for c in metrics["slo"]) and error_rate <= max_error_rate,
        "telemetry": telemetry or {"available": False, "reason": "no GPU telemetry: pynvml not importable",
                                   "energy_per_output_token_j": None},
        "fidelity": workload_fidelity(FIDELITY_SOURCE, specs_of(records), records),
    }


FIDELITY_SOURCE = SourceProfile(kind="trace", description="trace <b>code</b>.csv", rows_read=50, rows_used=40,
                                input_tokens=[64] * 40, output_tokens=[16] * 40,
                                recorded_inter_arrival_s=[0.5] * 39, time_scale=5.0,
                                skipped={"non-numeric ContextTokens": 10},
                                skipped_examples=["t.csv:7: non-numeric ContextTokens <script>"])


def specs_of(records: list[RequestRecord]) -> list[RequestSpec]:
    """The requests the records were made from (as far as fidelity needs them)."""
    return [RequestSpec(id=r.id, max_output_tokens=r.expected_output_tokens, prompt_token_ids=(5,) * (r.input_tokens or 1),
                        scheduled_offset_s=None if r.scheduled_ns is None else r.scheduled_ns / 1e9) for r in records]


def make_trial(tmp_path: Path, number: int, params: dict, records: list[RequestRecord] | None = None,
               model: str = "tiny", simulated: bool = True, write_records_file: bool = True, **result_kw) -> TrialRow:
    """A completed trial with result.json and records.jsonl written into tmp_path/trials/<number>."""
    tdir = tmp_path / "trials" / str(number)
    tdir.mkdir(parents=True)
    records = records if records is not None else make_records()
    result = make_result(records, MockConfig(model=model, **params).model_dump(mode="json"),
                         simulated=simulated, **result_kw)
    write_json(tdir / "result.json", result)
    if write_records_file:
        write_records(tdir / "records.jsonl", records)
    return TrialRow(number, "complete", params, [objective_value(result, OBJECTIVE)], None, 12.5, tdir, result)


def failed_trial(tmp_path: Path, number: int, params: dict, state: str, reason: str) -> TrialRow:
    return TrialRow(number, state, params, None, reason, 1.0, tmp_path / "trials" / str(number))


def make_summary(trials: list[TrialRow], objective: str | list[str] = OBJECTIVE, **search) -> StudySummary:
    """A StudySummary choosing best / closest miss and the confidence the way harness.summary.load_study does."""
    config = {"name": "demo", "engine": {"kind": "mock", "model": "tiny"}, "slo": SLO, "max_error_rate": 0.05,
              "workload": {"kind": "synthetic", "requests": 40},
              "search": {"space": "mock-default", "trials": len(trials), "objective": objective, **search}}
    summary = StudySummary(name="demo", objectives=parse_objectives(objective), config=config,
                           space="mock-default", trials=trials)
    choose(summary)
    summary.confidence = runner_up_confidence(summary)
    return summary


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> StudySummary:
    """Trial 1 best (rate 20, passes), 0 and 3 pass slower, 2 misses TTFT, 4 failed, 5 infeasible."""
    tmp_path = tmp_path_factory.mktemp("study")
    return make_summary([
        make_trial(tmp_path, 0, {"max_batch_size": 8, "kv_cache_fraction": 0.5}, make_records(rate=10)),
        make_trial(tmp_path, 1, {"max_batch_size": 32, "kv_cache_fraction": 0.85}, make_records(rate=20),
                   model=XSS),
        make_trial(tmp_path, 2, {"max_batch_size": 64, "kv_cache_fraction": 0.9}, make_records(rate=30, ttft_ms=400)),
        make_trial(tmp_path, 3, {"max_batch_size": 16, "kv_cache_fraction": 0.6},
                   make_records(rate=15, fail_every=25, error="<img src=x onerror=alert(2)>")),
        failed_trial(tmp_path, 4, {"max_batch_size": 48, "kv_cache_fraction": 0.95}, "failed",
                     "CUDA out of memory <b>while</b> allocating KV cache"),
        failed_trial(tmp_path, 5, {"max_batch_size": 4, "kv_cache_fraction": 0.2}, "infeasible",
                     "max_num_tokens (2) < max_batch_size (4)"),
    ])


@pytest.fixture(scope="module")
def study_html(study) -> str:
    return render_study_report(study)


def images(html: str) -> list[str]:
    return re.findall(r'<img src="([^"]*)"', html)


# study report ----------------------------------------------------------------------------------

def test_study_report_recommends_the_best_trial(study, study_html):
    html = study_html
    best = study.best
    assert best.number == 1 and best.value == pytest.approx(best.result["scalars"]["goodput_req_s"])
    assert f"Trial 1: goodput_req_s = {format_number(best.value)} req/s" in html
    text = unescape(html)
    assert "higher than the runner-up's (trial 3," in text and "higher than the median completed trial's" in text
    section = html[html.index('id="recommended"'):html.index('id="trials"')]
    assert "max_batch_size" in section and ">32<" in section and "0.85" in section
    for check in best.result["slo"]:
        assert format_number(check["measured"]) in section  # SLO margins table of the best trial


def test_trial_table_lists_every_trial_with_failure_reasons(study, study_html):
    html = study_html
    table = html[html.index('id="trials"'):html.index('id="history"')]
    assert "CUDA out of memory &lt;b&gt;while&lt;/b&gt; allocating KV cache" in table
    assert "max_num_tokens (2) &lt; max_batch_size (4)" in table
    for state in ("failed", "infeasible", "complete"):
        assert state in table
    for t in study.trials:
        assert f'<td class="num">{t.number}' in table


def test_data_strings_are_escaped(study_html):
    html = study_html
    assert XSS not in html and "<script" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # the best trial's model, in config and fingerprint
    assert "<b>while</b>" not in html


def test_request_errors_are_visible_and_escaped(tmp_path):
    trial = make_trial(tmp_path, 0, {}, make_records(fail_every=10, error="<img src=x onerror=alert(2)>"))
    html = render_run_report(trial.result, make_records(fail_every=10, error="<img src=x onerror=alert(2)>"), "run")
    assert "<img src=x" not in html
    assert "&lt;img src=x onerror=alert(2)&gt;" in html
    assert f'class="num fail">{trial.result["counts"]["failed"]}<' in html


@pytest.mark.parametrize("simulated", [True, False])
def test_simulated_banner_iff_simulated(tmp_path, simulated):
    summary = make_summary([make_trial(tmp_path, 0, {}, simulated=simulated)])
    html = render_study_report(summary)
    assert ("SIMULATED ENGINE — numbers describe a service model, not hardware" in html) == simulated
    run_html = render_run_report(summary.trials[0].result, make_records(), "bench")
    assert ("SIMULATED ENGINE" in run_html) == simulated


def test_reports_are_self_contained(study, study_html):
    for html in (study_html, render_run_report(study.best.result, make_records(), "bench")):
        assert "http://" not in html and "https://" not in html
        targets = re.findall(r"""(?:src|href)\s*=\s*["']?([^"'\s>]*)""", html)
        assert targets and all(t.startswith(("data:", "#")) for t in targets)
        assert "<script" not in html and "<link" not in html and "@import" not in html


def test_figures_are_embedded_svg_data_uris(study_html):
    srcs = images(study_html)
    assert len(srcs) == 8  # history, knob effects, trade-off, TTFT, ITL, TTFT timeline, TTFT vs input, offered load
    for src in srcs:
        assert src.startswith("data:image/svg+xml;base64,")
        svg = base64.b64decode(src.split(",", 1)[1]).decode()
        assert "<svg" in svg


def test_metric_table_iterates_the_registry(study_html):
    html = study_html
    detail = html[html.index('id="chosen"'):html.index('id="setup"')]
    for name in METRICS:
        assert f"<code>{name}</code>" in detail
    definitions = html[html.index('id="definitions"'):]
    for m in METRICS.values():
        assert m.description in definitions or m.description.replace("'", "&#39;") in definitions


def test_no_trial_met_the_slos_names_the_closest_miss(tmp_path):
    summary = make_summary([
        make_trial(tmp_path, 0, {"max_batch_size": 8}, make_records(ttft_ms=400)),
        make_trial(tmp_path, 1, {"max_batch_size": 16}, make_records(ttft_ms=250)),
        failed_trial(tmp_path, 2, {"max_batch_size": 64}, "failed", "timeout"),
    ])
    assert summary.best is None and summary.closest_miss.number == 1
    html = render_study_report(summary)
    section = html[html.index('id="recommended"'):html.index('id="trials"')]
    assert "No trial met the SLOs" in section
    assert "Closest miss: <b>trial 1</b>" in section
    check = next(c for c in summary.closest_miss.result["slo"] if c["metric"] == "ttft_ms")
    over = (check["measured"] - check["limit"]) / check["limit"]
    assert f"{format_percent(over)} over" in section
    assert "Trial 1 in detail (closest miss)" in html


def test_all_trials_failed(tmp_path):
    summary = make_summary([failed_trial(tmp_path, 0, {"max_batch_size": 8}, "failed", "engine crashed")])
    html = render_study_report(summary)
    assert "no trial completed" in html and "engine crashed" in html
    assert figures.tradeoff(summary) is None


def test_missing_records_are_reported_not_fatal(tmp_path):
    summary = make_summary([make_trial(tmp_path, 0, {}, write_records_file=False)])
    html = render_study_report(summary)
    assert "records.jsonl not found" in html
    assert len(images(html)) == 2  # history and trade-off only (no tuned knobs: no per-knob panels)


def test_telemetry_is_shown_when_available(tmp_path):
    telemetry = {"available": True, "samples": 10, "interval_s": 0.1, "duration_s": 1.0, "energy_j": 500.0,
                 "energy_per_output_token_j": 1.5,
                 "gpus": [{"index": 0, "name": "H100 <80GB>", "memory_total_mib": 81559.0,
                           "memory_used_peak_mib": 70123.4, "memory_used_mean_mib": 65000.0, "util_mean_pct": 87.5,
                           "power_mean_w": 550.0, "power_peak_w": 690.0, "energy_j": 500.0}]}
    trial = make_trial(tmp_path, 0, {}, telemetry=telemetry)
    html = render_run_report(trial.result, make_records(), "bench")
    assert "H100 &lt;80GB&gt;" in html and "70,123 MiB" in html and "1.50 J" in html
    no_gpu = render_run_report(make_trial(tmp_path, 1, {}).result, make_records(), "bench")
    assert "no GPU telemetry: pynvml not importable" in no_gpu


def test_run_report(tmp_path):
    records = make_records(fail_every=10)
    trial = make_trial(tmp_path, 0, {"max_batch_size": 12}, records)
    html = render_run_report(trial.result, records, "nightly <bench>")
    assert "<title>[SIMULATED] nightly &lt;bench&gt;</title>" in html
    assert len(images(html)) == 5  # TTFT, ITL, TTFT timeline, TTFT vs input, offered load
    assert "failed (measured)" in html and "server said 500" in html
    assert "Workload fidelity" in html and "trace &lt;b&gt;code&lt;/b&gt;.csv" in html
    assert "t.csv:7: non-numeric ContextTokens &lt;script&gt;" in html and "<script" not in html
    assert "<td>non-numeric ContextTokens</td><td class=\"num\">10</td>" in html
    assert "max_batch_size" in html and ">12<" in html


def fidelity_section(html: str) -> str:
    return html.split("<h3>Workload fidelity</h3>", 1)[1].split("<h3>", 1)[0]


def test_fidelity_section_shows_ks_rates_cvs_and_lag(tmp_path):
    """41 requests scheduled every 100 ms, dispatched 0 or 20 ms late in turn: achieved gaps 120/80 ms (CV 0.2);
    the source recorded 0.3/0.7 s gaps (2 req/s, CV 0.4) replayed 5x faster; 10 of 41 recorded prompts differ."""
    records = make_records(n=41, rate=10.0, warmup=0)
    for i, r in enumerate(records):
        r.dispatched_ns = r.scheduled_ns + (20 * MS if i % 2 else 0)
    source = SourceProfile(kind="trace", description="t.csv", rows_read=41, rows_used=41,
                           input_tokens=[64] * 10 + [100] * 31, output_tokens=[8] * 41,
                           recorded_inter_arrival_s=[0.3, 0.7] * 20, time_scale=5.0,
                           notes=["10 of 41 rows had their input length clipped to max_input_tokens 100"])
    result = make_trial(tmp_path, 0, {}, records).result
    result["fidelity"] = workload_fidelity(source, specs_of(records), records)
    section = fidelity_section(render_run_report(result, records, "bench"))

    def row(label: str) -> str:
        return re.search(f"<tr><th>{re.escape(label)}</th>(.*?)</tr>", section, re.DOTALL).group(1)

    def cells(label: str) -> list[str]:
        return re.findall(r'<td class="num">([^<]*)</td>', row(label))

    assert cells("input: source, as recorded") == ["41", "91.2", "100", "100", "100"]
    assert cells("input: generated") == ["41", "100", "100", "100", "100", "0.244"]  # KS = 10/41
    assert cells("output: requested")[-1] == "0" and cells("output: received (successful requests)")[-1] == "0"
    assert cells("source, as recorded") == ["2.00 req/s", "0.400", "40"]
    assert cells("intended: the schedule (recorded time ÷ 5)")[:1] == ["10.0 req/s"]
    assert cells("achieved: the client's dispatches") == ["10.0 req/s", "0.200", "40"]
    assert "10 of 41 rows had their input length clipped" in section
    assert "p50 0 ms" in section and "p99 20.0 ms" in section and "max 20.0 ms" in section


def test_fidelity_rows_without_data_are_left_out(tmp_path):
    """At recorded speed the source row would repeat the schedule; a source with no times has no source row."""
    records = make_records(n=5, warmup=0)
    same = SourceProfile(kind="trace", description="t", rows_read=5, rows_used=5,
                         recorded_inter_arrival_s=[0.1] * 4, time_scale=1.0)
    result = make_trial(tmp_path, 0, {}, records).result
    result["fidelity"] = workload_fidelity(same, specs_of(records), records)
    section = fidelity_section(render_run_report(result, records, "bench"))
    assert "<th>source, as recorded</th>" not in section and "intended: the schedule (= the source as recorded)" in section
    result["fidelity"] = workload_fidelity(SourceProfile(kind="synthetic", description="s", rows_read=5, rows_used=5),
                                           specs_of(records), records)
    section = fidelity_section(render_run_report(result, records, "bench"))
    assert "<th>source, as recorded</th>" not in section and "<th>intended: the schedule</th>" in section
    assert "The source has no recorded times." in section


def test_many_distinct_request_errors_are_summed_not_dropped(tmp_path):
    records = make_records(n=60, warmup=0, fail_every=2)
    for i, r in enumerate(records):
        if r.error:
            r.error = f"sequence of {700 + i} tokens exceeds KV cache capacity"
    trial = make_trial(tmp_path, 0, {}, records)
    html = render_run_report(trial.result, records, "bench")
    assert html.count('<td class="error">') == 10
    assert '20 other distinct messages</td><td class="num">20<' in html


def test_minimize_objective(tmp_path):
    objective = "minimize ttft_ms.p95"
    trials = [make_trial(tmp_path, n, {"max_batch_size": b}, make_records(ttft_ms=ttft))
              for n, (b, ttft) in enumerate([(8, 120.0), (16, 60.0), (32, 90.0)])]
    for t in trials:
        t.values = [objective_value(t.result, objective)]
    summary = make_summary(trials, objective)
    assert summary.best.number == 1
    text = unescape(render_study_report(summary))
    assert f"Trial 1: ttft_ms p95 = {format_number(summary.best.value)} ms" in text
    assert "lower than the runner-up's (trial 2," in text
    assert recommended_config(summary)["objective"]["value"] == summary.best.value


def test_warm_start_trials_are_marked(tmp_path):
    trials = [make_trial(tmp_path, n, {"max_batch_size": b}) for n, b in enumerate([64, 8])]
    trials[0].warm_start = "mock engine <heuristic>"
    html = render_study_report(make_summary(trials))
    assert html.count('<span title="mock engine &lt;heuristic&gt;">⚑</span>') == 1 and "⚑ = a warm-start point" in html
    trials[0].warm_start = None
    assert "⚑" not in render_study_report(make_summary(trials))


def test_figures_leave_matplotlib_global_state_alone(study):
    before_rc, before_backend = dict(matplotlib.rcParams), matplotlib.get_backend()
    figures.objective_history(study)
    figures.tradeoff(study)
    assert dict(matplotlib.rcParams) == before_rc and matplotlib.get_backend() == before_backend


# recommended.yaml ------------------------------------------------------------------------------

def test_recommended_yaml_round_trips_and_can_be_rerun(study, tmp_path):
    path = tmp_path / "recommended.yaml"
    assert write_recommended(study, path)
    doc = yaml.safe_load(path.read_text())
    assert doc == yaml.safe_load(yaml.safe_dump(recommended_config(study), sort_keys=False))
    config = study.best.result["engine"]["config"]
    assert doc["engine"]["kind"] == "mock" and doc["engine"]["model"] == XSS
    assert doc["engine"]["params"] == {k: v for k, v in config.items() if k != "model"}
    assert doc["engine"]["params"]["max_batch_size"] == 32
    assert EngineSpec(**doc["engine"]).resolve().model_dump(mode="json") == config  # pasteable
    assert doc["trial"]["number"] == 1
    assert doc["objective"] == {"expression": OBJECTIVE, "direction": "maximize", "metric": "goodput_req_s",
                                "value": study.best.value}
    assert doc["measured"]["ttft_ms"]["p95"] == study.best.result["distributions"]["ttft_ms"]["p95"]
    assert doc["measured"]["goodput_req_s"] == study.best.value
    assert [m["metric"] for m in doc["slo_margins"]] == ["ttft_ms", "tpot_ms", "error_rate"]
    assert all(m["pass"] for m in doc["slo_margins"])
    assert "SIMULATED" in doc["note"] and "trial 1" in doc["note"]


def test_recommended_not_written_without_best(tmp_path):
    summary = make_summary([make_trial(tmp_path, 0, {}, make_records(ttft_ms=900))])
    path = tmp_path / "recommended.yaml"
    assert recommended_config(summary) is None
    assert write_recommended(summary, path) is False
    assert not path.exists()


# pieces ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value, text", [
    (None, "n/a"), (0, "0"), (0.0, "0"), (12345.6, "12,346"), (123.45, "123"), (12.345, "12.3"),
    (1.0, "1.00"), (0.012345, "0.0123"), (999.7, "1,000"), (1234567, "1,234,567"), (0.00001234, "1.23e-05"),
    (-42.42, "-42.4"),
])
def test_format_number(value, text):
    assert format_number(value) == text


def test_format_percent():
    assert format_percent(0.1234) == "12.3%"
    assert format_percent(0.05, signed=True) == "+5.00%"
    assert format_percent(-0.25, signed=True) == "−25.0%"


def test_pareto_front():
    points = [(100, 50), (80, 40), (120, 45), (60, 10), (100, 60)]
    assert figures.pareto_front(points) == [3, 1, 4]


def test_figures_return_none_without_data():
    failed = [RequestRecord("a", "measured", 4, 10, scheduled_ns=0, sent_ns=0, end_ns=MS, error="boom")]
    assert figures.distribution(failed, "ttft_ms") is None
    assert figures.distribution([], "itl_ms") is None
    assert figures.ttft_timeline(failed) is None


def test_distribution_uses_the_metric_definitions():
    """ITL is pooled at token granularity (30 requests x 7 gaps), TTFT is one value per request."""
    records = make_records(n=32, warmup=2, out_tokens=8, tpot_ms=10.0)
    itl = figures.measured_values(records, "itl_ms")
    assert len(itl) == 30 * 7 and itl == pytest.approx([10.0] * 210)
    assert len(figures.measured_values(records, "ttft_ms")) == 30
    svg = base64.b64decode(figures.distribution(records, "itl_ms").split(",", 1)[1]).decode()
    assert svg.startswith("<?xml")
    assert figures.distribution(records, "itl_ms") == figures.distribution(records, "itl_ms")  # deterministic


def test_three_objectives_list_the_pareto_front_without_a_figure(tmp_path):
    """Trial 2 is dominated by trial 1 (more goodput, lower TTFT, same TPOT); the front is 0 and 1."""
    objectives = ["maximize goodput_req_s", "minimize ttft_ms.p95", "minimize tpot_ms.p95"]
    trials = [make_trial(tmp_path, n, {"max_batch_size": b}, make_records(rate=rate, ttft_ms=ttft))
              for n, (b, rate, ttft) in enumerate([(8, 10, 40.0), (16, 20, 80.0), (32, 15, 120.0)])]
    for t in trials:
        t.values = [objective_value(t.result, o) for o in objectives]
    summary = make_summary(trials, objectives)
    assert [t.number for t in summary.front] == [0, 1] and summary.best.number == 1
    assert figures.pareto(summary) is None
    html = render_study_report(summary)
    section = html[html.index('<section id="pareto">'):html.index('<section id="trials">')]
    assert "listed, not plotted" in section and "<img" not in section
    assert '<td class="num">1 ★</td>' in section and '<td class="num">0</td>' in section
    assert '<td class="num">2</td>' not in section
    assert "Trial 1: goodput_req_s = " in html and ", tpot_ms p95 = " in html
    assert 'href="#pareto"' in html and 'id="pareto"' not in render_study_report(make_summary(trials[:1]))

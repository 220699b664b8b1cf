"""The study report beyond the recommendation: gain over the engine's defaults, parameter importance, each knob
against the objective, TTFT vs input length, the GPU timeline and the command to reproduce; rendered from fixture
results (hand-built trials, and one Optuna study on disk), with data-derived text escaped."""
from __future__ import annotations

import base64
import csv
import re
import xml.etree.ElementTree as ET
from html import unescape
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution, IntDistribution

from harness.config import parse_objectives
from harness.store import RunDir
from harness.summary import TUNE_COMMAND_ATTR, ParamImportance, StudySummary, TrialRow, load_study, param_importance
from harness.telemetry import CSV_HEADER
from reports import figures, render_run_report, render_study_report
from reports.html import engine_defaults, format_percent, format_value
from tests.harness.test_cli import config as cli_config
from tests.harness.test_cli import harness
from tests.reports.test_reports import (OBJECTIVE, XSS, failed_trial, images, make_records, make_summary,
                                        make_trial)

DEFAULTS = {"max_batch_size": 8, "kv_cache_fraction": 0.9}  # MockConfig's defaults of these two knobs


def section(html: str, name: str) -> str:
    start = html.index(f'<section id="{name}">')
    return html[start:html.index("</section>", start)]


def words(fragment: str) -> str:
    """The fragment's text as a browser shows it: tags dropped, entities decoded, white space runs as one space."""
    return " ".join(unescape(re.sub(r"<[^>]*>", "", fragment)).split())


def svg(uri: str) -> str:
    text = base64.b64decode(uri.split(",", 1)[1]).decode()
    ET.fromstring(text.split("?>", 1)[1])  # well-formed XML whatever the data said
    return text


# gain over the engine's defaults -------------------------------------------------------------------

def test_gain_is_measured_against_the_trial_that_ran_the_engine_defaults(tmp_path):
    defaults = make_trial(tmp_path, 0, DEFAULTS, make_records(rate=10))
    best = make_trial(tmp_path, 1, {"max_batch_size": 32, "kv_cache_fraction": 0.5}, make_records(rate=20))
    summary = make_summary([defaults, best])
    assert summary.best is best and defaults.slo_pass
    card = words(section(render_study_report(summary), "recommended"))
    gain = (best.value - defaults.value) / defaults.value
    assert ("Gain over the engine's defaults: against trial 0, which ran the engine's defaults (max_batch_size=8, "
            "kv_cache_fraction=0.9) and met every SLO: goodput_req_s "
            f"{format_value(best.value, 'req/s')} against {format_value(defaults.value, 'req/s')} "
            f"({format_percent(gain, signed=True)}, better).") in card


def test_gain_when_the_defaults_did_not_run_failed_or_won(tmp_path):
    tuned = {"max_batch_size": 32, "kv_cache_fraction": 0.5}
    not_run = make_summary([make_trial(tmp_path / "a", 0, tuned)])
    assert ("not measured: no trial ran the engine's defaults (max_batch_size=8, kv_cache_fraction=0.9). Add them as "
            "a warm_start point of the search space to measure the gain.") in words(render_study_report(not_run))

    failed = make_summary([make_trial(tmp_path / "b", 0, tuned),
                           failed_trial(tmp_path / "b", 1, DEFAULTS, "failed", "engine <b>crashed</b>")])
    html = render_study_report(failed)
    assert ("trial 1 ran the engine's defaults (max_batch_size=8, kv_cache_fraction=0.9) and did not complete "
            "(failed: engine <b>crashed</b>)") in words(section(html, "recommended"))
    assert "<b>crashed</b>" not in html

    won = make_summary([make_trial(tmp_path / "c", 0, DEFAULTS, make_records(rate=20)),
                        make_trial(tmp_path / "c", 1, tuned, make_records(rate=10))])
    assert won.best.number == 0
    assert ("none: trial 0 ran the engine's defaults (max_batch_size=8, kv_cache_fraction=0.9); tuning found nothing "
            "better.") in words(render_study_report(won))


def test_engine_defaults_leave_out_tuned_params_and_name_what_the_engine_decides(tmp_path):
    config = {"engine": {"kind": "mock", "params": {"max_batch_size": 16, "step_ms": 4}}}
    assert engine_defaults(config, ["max_batch_size", "fail_every_n"]) == {"max_batch_size": 8, "fail_every_n": None}
    assert engine_defaults({"engine": {"kind": "no-such-engine"}}, ["max_batch_size"]) is None
    summary = make_summary([make_trial(tmp_path, 0, {"fail_every_n": 1000})])
    card = words(section(render_study_report(summary), "recommended"))
    assert "no trial ran the engine's defaults (fail_every_n=(engine decides))" in card
    assert "by default the engine picks fail_every_n itself" in card and "harness bench" in card


# parameter importance --------------------------------------------------------------------------------

def importance_study(slo_pass) -> tuple[optuna.Study, StudySummary]:
    """30 trials: the objective is x (0..29); y is noise; `slo_pass(params)` says which met the SLOs."""
    study = optuna.create_study(direction="maximize")
    rng = np.random.default_rng(0)
    distributions = {"x": IntDistribution(0, 29), "y": FloatDistribution(0.0, 1.0)}
    rows = []
    for i in range(30):
        params = {"x": i, "y": float(rng.random())}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=distributions, value=float(i)))
        rows.append(TrialRow(i, "complete", params, [float(i)], None, 1.0, Path("."), {"slo_pass": slo_pass(params)}))
    return study, StudySummary(name="s", objectives=parse_objectives(OBJECTIVE), config={}, space="s", trials=rows)


def test_param_importance_credits_the_knob_that_decides_the_ranking():
    importance = param_importance(*importance_study(lambda p: True))
    assert importance.reason is None and (importance.trials, importance.top) == (30, 3)
    assert list(importance.shares) == ["x", "y"] and importance.shares["x"] > 0.8
    assert sum(importance.shares.values()) == pytest.approx(1.0)
    # Trials that missed an SLO rank after every passing one, so y (which decides passing) gains weight.
    with_slo = param_importance(*importance_study(lambda p: p["y"] < 0.3))
    assert with_slo.shares["y"] > 3 * importance.shares["y"]


def test_param_importance_says_why_not():
    study, summary = importance_study(lambda p: True)
    summary.trials = summary.trials[:1]
    assert param_importance(study, summary).reason == ("1 completed trial(s): importance compares the best 2 with all "
                                                       "of them, so it needs at least 3")
    summary.trials = [TrialRow(n, "complete", {"x": 1}, [float(n)], None, 1.0, Path("."), {"slo_pass": True})
                      for n in range(3)]
    assert param_importance(study, summary).reason == "no knob took more than one value across the completed trials"


def test_importance_section_shows_the_bars_or_why_not(tmp_path):
    summary = make_summary([make_trial(tmp_path, n, {"max_batch_size": b, "kv_cache_fraction": f},
                                       make_records(rate=r))
                            for n, (b, f, r) in enumerate([(8, 0.5, 10), (16, 0.6, 12), (32, 0.7, 14), (64, 0.8, 8)])])
    summary.importance = ParamImportance({"max_batch_size": 0.75, "kv_cache_fraction": 0.25}, trials=4, top=2)
    part = section(render_study_report(summary), "importance")
    assert len(images(part)) == 2  # importance bars and the per-knob panels
    assert "the best 2 of the 4 completed trials" in words(part) and "read the bars as a hint" in part
    bars = svg(figures.param_importance(summary.importance))
    assert "<!-- max_batch_size -->" in bars and "<!-- 75% -->" in bars and "<!-- 25% -->" in bars

    summary.importance = ParamImportance({}, trials=1, top=1, reason="<b>too few</b> trials")
    part = section(render_study_report(summary), "importance")
    assert "Not computed: &lt;b&gt;too few&lt;/b&gt; trials." in part and len(images(part)) == 1
    assert figures.param_importance(summary.importance) is None


# each knob against the objective -------------------------------------------------------------------

def test_knob_effects_one_panel_per_knob_with_failed_trials_and_escaped_categories(tmp_path):
    summary = make_summary([
        make_trial(tmp_path, 0, {"max_batch_size": 8, "quantization": "none"}, make_records(rate=10)),
        make_trial(tmp_path, 1, {"max_batch_size": 32, "quantization": "fp8"}, make_records(rate=20)),
        failed_trial(tmp_path, 2, {"max_batch_size": 64, "quantization": XSS}, "failed", "out of memory"),
        failed_trial(tmp_path, 3, {"max_batch_size": 2, "quantization": "fp8"}, "infeasible", "rule"),
    ])
    panels = svg(figures.knob_effects(summary, ["max_batch_size", "quantization"]))
    for text in ("max_batch_size (log scale)", "quantization", "fp8", "none", "failed (1), no value",
                 "infeasible (1), no value", "chosen: trial 1", "goodput_req_s (req/s)"):
        assert f"<!-- {text} -->" in panels
    assert "<script" not in panels
    html = render_study_report(summary)
    assert "<script" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in section(html, "trials")
    assert figures.knob_effects(summary, []) is None


# the chosen trial: TTFT vs input length, GPU timeline --------------------------------------------------

def test_ttft_vs_input_length_of_the_chosen_trial(tmp_path):
    records = make_records(n=40, warmup=2)
    for i, r in enumerate(records):
        r.input_tokens = 50 + 10 * i
    plot = svg(figures.ttft_vs_input(records))
    assert "<!-- TTFT vs input length (38 successful measured requests) -->" in plot
    assert "<!-- input tokens -->" in plot
    html = render_study_report(make_summary([make_trial(tmp_path, 0, {}, records)]))
    assert 'alt="TTFT against input tokens"' in section(html, "chosen")
    for r in records:
        r.input_tokens = None
    assert figures.ttft_vs_input(records) is None


TELEMETRY = {"available": True, "samples": 5, "interval_s": 0.1, "duration_s": 0.4, "energy_j": 40.0,
             "energy_per_output_token_j": 0.5,
             "gpus": [{"index": 0, "name": "H100 <80GB>", "memory_total_mib": 81559.0, "memory_used_peak_mib": 70000.0,
                       "memory_used_mean_mib": 65000.0, "process_memory_peak_mib": 60000.0, "util_mean_pct": 80.0,
                       "power_mean_w": 500.0, "power_peak_w": 600.0, "energy_j": 40.0}]}


def write_telemetry(path: Path, header: list[str] = CSV_HEADER) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        for k in range(5):
            row = [k * 100_000_000, 0, (60 + k) * 2**30, 70.0 + k, 500.0, 10.0 * k, 58 * 2**30]
            w.writerow(row[:len(header)])


def test_gpu_timeline_from_the_telemetry_csv_or_why_not(tmp_path):
    trial = make_trial(tmp_path, 0, {}, telemetry=TELEMETRY)
    csv_path = trial.dir / "telemetry.csv"
    write_telemetry(csv_path)
    detail = section(render_study_report(make_summary([trial])), "chosen")
    assert 'alt="GPU memory and utilization over time"' in detail and "H100 &lt;80GB&gt;" in detail
    timeline = next(src for src in images(detail) if "GPU 0: engine process" in svg(src))
    assert all(f"<!-- {t} -->" in svg(timeline) for t in ("GPU 0: used", "GPU 0: total", "GPU 0: utilization"))
    bench = render_run_report(trial.result, make_records(), "bench", telemetry_csv=csv_path)
    assert 'alt="GPU memory and utilization over time"' in bench

    records = make_records(n=4, warmup=0)  # the bench report: figures of few requests, quick to draw
    write_telemetry(csv_path, header=["t_ns", "gpu", "memory_used_bytes"])
    assert "lacks the column(s) util_pct: no GPU timeline" in render_run_report(trial.result, records, "b", csv_path)
    csv_path.unlink()
    assert f"{csv_path} not found: no GPU timeline" in render_run_report(trial.result, records, "b", csv_path)
    no_gpu = render_run_report(make_trial(tmp_path, 1, {}).result, records, "b", csv_path)
    assert "no GPU telemetry: pynvml not importable" in no_gpu and "no GPU timeline" not in no_gpu


# reproduce ---------------------------------------------------------------------------------------------

def test_reproduce_shows_the_recorded_command_and_the_stored_config(tmp_path):
    summary = make_summary([make_trial(tmp_path, 0, {"max_batch_size": 16})])
    summary.config["engine"]["model"] = XSS
    summary.command, summary.run_dir = "harness tune 'cfg/<x>.yaml' --run-dir runs/demo", Path("runs/demo")
    html = render_study_report(summary)
    part = section(html, "reproduce")
    assert "<pre>harness tune &#39;cfg/&lt;x&gt;.yaml&#39; --run-dir runs/demo</pre>" in part
    assert "The command that last ran this study" in part and "<code>harness report runs/demo</code>" in part
    assert "model: &lt;script&gt;alert(1)&lt;/script&gt;" in part  # the stored config, as YAML
    assert "<script" not in html

    summary.command = None
    part = section(render_study_report(summary), "reproduce")
    assert "did not record its command" in part and "<pre>harness tune CONFIG.yaml --run-dir runs/demo</pre>" in part


def test_load_study_reads_the_command_and_computes_importance(tmp_path):
    """A study on disk as the tuner leaves it: load_study adds the recorded command, the run dir and importances."""
    trials = [make_trial(tmp_path, n, {"max_batch_size": b, "kv_cache_fraction": f}, make_records(rate=r))
              for n, (b, f, r) in enumerate([(8, 0.5, 10), (16, 0.6, 20), (32, 0.7, 14), (64, 0.8, 12)])]
    config = make_summary(trials).config
    run_dir = RunDir(tmp_path)
    study = optuna.create_study(study_name="demo", storage=run_dir.storage_url(), direction="maximize")
    study.set_user_attr("config", config)
    study.set_user_attr(TUNE_COMMAND_ATTR, "harness tune demo.yaml --run-dir runs/demo")
    distributions = {"max_batch_size": IntDistribution(1, 64, log=True), "kv_cache_fraction": FloatDistribution(0.1, 1)}
    for t in trials:
        study.add_trial(optuna.trial.create_trial(params=t.params, distributions=distributions, values=t.values,
                                                  user_attrs={"slo_pass": t.slo_pass}))
    summary = load_study(run_dir)
    assert summary.command == "harness tune demo.yaml --run-dir runs/demo" and summary.run_dir == tmp_path
    assert summary.best.number == 1 and summary.importance.trials == 4 and summary.importance.top == 2
    assert summary.importance.reason is None and set(summary.importance.shares) == {"max_batch_size",
                                                                                   "kv_cache_fraction"}
    assert "<pre>harness tune demo.yaml --run-dir runs/demo</pre>" in render_study_report(summary)


def test_harness_tune_records_its_command_for_the_report(tmp_path):
    """End to end: `harness tune` stores the command line in the study and the report shows it."""
    proc = harness("tune", str(cli_config(tmp_path, search__trials=1)), "--run-dir", "runs/one", "--trials", "1",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    command = f"harness tune {tmp_path / 'exp.yaml'} --run-dir runs/one --trials 1"
    study = optuna.load_study(study_name="cli", storage=RunDir(tmp_path / "runs" / "one").storage_url())
    assert study.user_attrs[TUNE_COMMAND_ATTR] == command
    part = section((tmp_path / "runs" / "one" / "report.html").read_text(), "reproduce")
    assert f"<pre>{command}</pre>" in part and "<code>harness report runs/one</code>" in part

"""The `harness compare` HTML report and JUnit XML, rendered from fixture runs (no engine)."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from html import unescape

import pytest

from harness.compare import compare
from reports.compare import change_text, junit_xml, render_compare_report
from tests.harness.test_compare import make_run, run_records

XSS = "<script>alert(1)</script>"


@pytest.fixture(scope="module")
def regressed(tmp_path_factory):
    """A 10% slower current run with a model name that is an HTML injection attempt."""
    tmp = tmp_path_factory.mktemp("cmp")
    base = make_run(tmp / "base", run_records(1), model=XSS, write=False)
    return compare(base, make_run(tmp / "cur", run_records(2, slower=1.10), model=XSS, write=False))


@pytest.fixture(scope="module")
def regressed_html(regressed):
    return render_compare_report(regressed)


def test_report_states_the_verdict_and_every_metric(regressed, regressed_html):
    text = unescape(re.sub(r"<[^>]+>", " ", regressed_html))
    assert "Regression:" in text and "exits 1" in text
    assert "SIMULATED ENGINE" in regressed_html
    table = regressed_html[regressed_html.index('<section id="metrics">'):]
    for m in regressed.metrics:
        row = table[table.index(f"<code>{m.key}</code>"):]
        assert f">{m.verdict}</td>" in row[:row.index("</tr>")]
    throughput = next(m for m in regressed.metrics if m.key == "output_throughput_tok_s")
    assert change_text(throughput, throughput.change) in text  # e.g. −9.1%


def test_report_escapes_data(regressed_html):
    assert XSS not in regressed_html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in regressed_html
    assert "<script" not in regressed_html


def test_report_is_self_contained_with_embedded_figures(regressed_html):
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", regressed_html)
    figures = re.findall(r'<img src="data:image/svg\+xml;base64,', regressed_html)
    assert len(figures) == 4  # change per metric, two pairs of latency CDFs, output rate


def test_report_without_a_regression_or_data(tmp_path):
    c = compare(make_run(tmp_path / "a", run_records(1, n=20), write=False),
                make_run(tmp_path / "b", run_records(2, n=20), write=False))
    html = render_compare_report(c)
    assert "No gated metric regressed significantly beyond its threshold" in html
    assert "inconclusive" in html and "too few measured requests" in html
    assert "No metric could be compared." in html  # the change figure has nothing to show


def test_report_lists_fingerprint_mismatches(tmp_path):
    c = compare(make_run(tmp_path / "a", run_records(1), gpu="H100 <b>"),
                make_run(tmp_path / "b", run_records(2), gpu="A100"))
    html = render_compare_report(c)
    assert "These differences make the numbers incomparable" in html
    assert "engine.device" in html and "H100 &lt;b&gt;" in html and "A100" in html


def test_junit_has_one_case_per_metric_and_a_failure_per_regression(regressed):
    root = ET.fromstring(junit_xml(regressed))
    suite = root.find("testsuite")
    cases = suite.findall("testcase")
    assert [c.get("name") for c in cases] == [m.key for m in regressed.metrics]
    failures = [c.get("name") for c in cases if c.find("failure") is not None]
    assert failures == [m.key for m in regressed.regressed] and failures
    assert suite.get("failures") == str(len(failures))
    skipped = [c.get("name") for c in cases if c.find("skipped") is not None]
    assert skipped == [m.key for m in regressed.metrics if m.verdict == "inconclusive"]
    assert {p.get("name"): p.get("value") for p in suite.find("properties")}["simulated"] == "true"
    assert "SIMULATED" in suite.find("system-err").text


def test_change_text():
    from harness.compare import MetricComparison
    relative = MetricComparison("ttft_ms", "p95", 0.05, True, 1.0, 1.1, 10, 10)
    fraction = MetricComparison("error_rate", None, 0.01, True, 0.0, 0.02, 10, 10)
    assert change_text(relative, 0.0512) == "+5.12%" and change_text(relative, -0.1) == "−10.0%"
    assert change_text(relative, 0.05, signed=False) == "5.00%"
    assert change_text(fraction, 0.02) == "+2.00 pp" and change_text(fraction, 0.01, signed=False) == "1.00 pp"
    assert change_text(fraction, None) == "n/a"

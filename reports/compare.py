"""`harness compare` outputs: the HTML diff report and JUnit XML, from a `harness.compare.Comparison`.

The HTML report is self-contained like the others (inline CSS, SVG figures as data URIs, no
scripts) and rendered with autoescaping, so run names, model names and fingerprint values that came
from data are escaped. JUnit: one test case per compared metric; a gated regression is a failure,
an inconclusive metric is skipped (too noisy to tell), warnings go to the suite's system-err.
"""
from __future__ import annotations

import xml.etree.ElementTree as ET

from harness import compare as cmp
from harness.compare import Comparison, MetricComparison
from reports import figures
from reports.html import _ENV, format_number, format_percent, format_value

LATENCY_FIGURES = (("ttft_ms", "e2e_ms"), ("tpot_ms", "itl_ms"))


def change_text(m: MetricComparison, x: float | None, signed: bool = True) -> str:
    """A change of `m` as text: relative ('+4.9%') or, for fractions, percentage points ('+1.2 pp')."""
    if x is None:
        return "n/a"
    if m.relative:
        return format_percent(x, signed=signed)
    sign = ("+" if x >= 0 else "−") if signed else ""
    return f"{sign}{format_number(abs(x) * 100 if signed else x * 100)} pp"


def summary_line(m: MetricComparison) -> str:
    """One line per metric for logs and JUnit: values, change, CI, p, threshold, verdict and why."""
    unit = m.unit
    if m.change is None:
        change = "no change computed"
    else:
        change = (f"change {change_text(m, m.change)} (95% CI {change_text(m, m.ci[0])} to {change_text(m, m.ci[1])}), "
                  f"p {'(Holm) ' if m.gated else ''}{format_number(m.p_adjusted)}")
    return (f"{m.key}: baseline {format_value(m.baseline, unit)}, current {format_value(m.current, unit)}; {change}; "
            f"threshold {change_text(m, m.threshold, signed=False)}: {m.verdict}"
            + (f" ({m.reason})" if m.reason else ""))


def junit_xml(c: Comparison) -> str:
    """JUnit XML: a test suite with one test case per metric (gated ones in classname harness.compare.gate)."""
    root = ET.Element("testsuites", name="harness compare")
    suite = ET.SubElement(root, "testsuite", name="harness compare", tests=str(len(c.metrics)),
                          failures=str(len(c.regressed)), errors="0",
                          skipped=str(sum(m.verdict == "inconclusive" for m in c.metrics)))
    props = ET.SubElement(suite, "properties")
    for name, value in (("baseline", c.baseline.label), ("current", c.current.label), ("alpha", f"{c.alpha:g}"),
                        ("simulated", str(c.simulated).lower())):
        ET.SubElement(props, "property", name=name, value=value)
    for m in c.metrics:
        line = summary_line(m)
        case = ET.SubElement(suite, "testcase", name=m.key,
                             classname="harness.compare.gate" if m.gated else "harness.compare.shown")
        if m.gated and m.verdict == "regressed":
            ET.SubElement(case, "failure", type="regression", message=line).text = line
        elif m.verdict == "inconclusive":
            ET.SubElement(case, "skipped", message=line)
        ET.SubElement(case, "system-out").text = line
    if c.warnings:
        ET.SubElement(suite, "system-err").text = "\n".join(c.warnings)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _run_row(label: str, run: cmp.Run) -> dict:
    r = run.result
    return {"label": label, "path": str(run.path), "name": r.get("name"), "started_at": r.get("started_at"),
            "engine": r["engine"].get("kind"), "model": r["engine"].get("config", {}).get("model"),
            "counts": r.get("counts") or {}, "window_s": (r.get("window") or {}).get("duration_s"),
            "output_tok_s": (r.get("scalars") or {}).get("output_throughput_tok_s"),
            "simulated": bool(r.get("simulated"))}


def render_compare_report(c: Comparison) -> str:
    """The HTML diff report of one comparison."""
    base, cur = c.baseline.records, c.current.records
    context = {
        "title": f"Compare: {c.baseline.result.get('name', '?')} → {c.current.result.get('name', '?')}",
        "simulated": c.simulated,
        "c": c,
        "rows": [{"m": m, "change": change_text(m, m.change), "ci": [change_text(m, x) for x in m.ci],
                  "threshold": change_text(m, m.threshold, signed=False)} for m in c.metrics],
        "regressed": [(m.key, change_text(m, m.change)) for m in c.regressed],
        "runs": [_run_row("baseline", c.baseline), _run_row("current", c.current)],
        "identity": c.identity_mismatches,
        "other_fingerprint": [d for d in c.fingerprint if not d.identity],
        "figures": {"forest": figures.change_forest(c.metrics),
                    "cdfs": [figures.cdf_overlay(base, cur, list(pair)) for pair in LATENCY_FIGURES],
                    "rate": figures.output_rate_overlay(base, cur)},
        "replicates": cmp.REPLICATES,
    }
    return _ENV.get_template("compare.html.j2").render(context)

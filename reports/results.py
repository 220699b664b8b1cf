"""Reading values out of a run's result dict (the shape `harness.trial.measure` writes).

Shared by the HTML report and the recommended-config writer so both show the same numbers.
"""
from __future__ import annotations

from harness.metrics import metric_value

# The metrics a reader looks at first, as (metric, statistic or None for scalars).
KEY_METRICS: tuple[tuple[str, str | None], ...] = (
    ("ttft_ms", "p50"), ("ttft_ms", "p95"), ("ttft_ms", "p99"),
    ("tpot_ms", "p50"), ("tpot_ms", "p95"),
    ("itl_ms", "p95"), ("e2e_ms", "p95"),
    ("output_throughput_tok_s", None), ("request_throughput_req_s", None), ("goodput_req_s", None),
    ("slo_attainment", None), ("error_rate", None),
)


def key_metrics(result: dict) -> dict:
    """{metric: value} for scalars and {metric: {statistic: value}} for distributions, per KEY_METRICS."""
    out: dict = {}
    for metric, statistic in KEY_METRICS:
        value = metric_value(result, metric, statistic)
        if statistic is None:
            out[metric] = value
        else:
            out.setdefault(metric, {})[statistic] = value
    return out


def slo_margins(result: dict) -> list[dict]:
    """One row per SLO check plus the error-rate limit: {metric, statistic, limit, measured, count, margin, pass}.

    `margin` = (limit - measured) / limit: > 0 is headroom, < 0 the relative overshoot; None when
    it is undefined (nothing measured, or an error-rate limit of 0).
    """
    rows = [dict(check) for check in result["slo"]]
    limit = result["max_error_rate"]
    error_rate = result["scalars"]["error_rate"]
    measured = error_rate or 0.0  # no measured request counts as no error, as the trial verdict does
    rows.append({"metric": "error_rate", "statistic": "rate", "limit": limit, "measured": error_rate,
                 "count": result["counts"]["measured"],
                 "margin": (limit - measured) / limit if limit > 0 else None, "pass": measured <= limit})
    return rows

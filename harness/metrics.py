"""Metric definitions (README "Metrics") and their computation from request records.

Each metric is a `Metric` with a name, unit and direction; reports and the tuner iterate
`METRICS` instead of hard-coding names. Distribution metrics are summarised with mean/min/max
and linear-interpolation percentiles, each percentile with a distribution-free 95% confidence
interval from order statistics (None where too few samples exist to bound it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np
from scipy.stats import binom

from harness.records import RequestRecord

PERCENTILES = (50, 90, 95, 99)
CI_LEVEL = 0.95


@dataclass(frozen=True)
class Metric:
    name: str
    unit: str
    higher_is_better: bool
    kind: Literal["distribution", "scalar"]
    description: str
    per_request: bool = True  # distribution metrics: one value per request (False: pooled per token)


_NS_PER_MS = 1e6

METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("ttft_ms", "ms", False, "distribution",
           "time to first token: first token - scheduled (closed loop: - sent)"),
    Metric("tpot_ms", "ms", False, "distribution",
           "time per output token after the first: (last - first) / (output tokens - 1)"),
    Metric("itl_ms", "ms", False, "distribution",
           "inter-token latency: gaps between consecutive tokens, pooled over requests", per_request=False),
    Metric("e2e_ms", "ms", False, "distribution", "end-to-end latency: end - scheduled (closed loop: - sent)"),
    Metric("queue_ms", "ms", False, "distribution", "client-side wait: sent - scheduled (open loop only)"),
    Metric("schedule_lag_ms", "ms", False, "distribution",
           "how late the client dispatched: dispatched - scheduled (open loop only)"),
    Metric("output_throughput_tok_s", "tok/s", True, "scalar", "output tokens of measured requests / window"),
    Metric("total_token_throughput_tok_s", "tok/s", True, "scalar",
           "input + output tokens of measured requests / window"),
    Metric("request_throughput_req_s", "req/s", True, "scalar", "successful measured requests / window"),
    Metric("goodput_req_s", "req/s", True, "scalar", "measured requests meeting every SLO / window"),
    Metric("slo_attainment", "fraction", True, "scalar", "measured requests meeting every SLO / measured requests"),
    Metric("error_rate", "fraction", False, "scalar", "failed measured requests / measured requests"),
]}

STATISTICS = ("mean", "min", "max") + tuple(f"p{p}" for p in PERCENTILES)

#: Cost objectives: output throughput per GPU-hour and per dollar. Not stored in a result: `cost_factor` turns a
#: result's output throughput into them, from its engine config's GPUs and the configured GPU-hour price.
COST_METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("output_tok_per_gpu_hour", "tok/GPU-h", True, "scalar",
           "output_throughput_tok_s x 3600 / GPUs of the config (tp x pp; 1 when it names no parallelism, e.g. CPU)"),
    Metric("output_tok_per_dollar", "tok/$", True, "scalar", "output_tok_per_gpu_hour / search.gpu_hour_cost"),
]}
#: Everything an objective may name.
OBJECTIVE_METRICS: dict[str, Metric] = {**METRICS, **COST_METRICS}


def gpus_per_replica(engine_config: dict) -> int:
    """GPUs one engine of this resolved config uses: tp x pp (`tp`/`pp` or `tensor_/pipeline_parallel_size`),
    counted as 1 when the config names no parallelism (CPU engines, the simulated engine, a remote server)."""
    tp = engine_config.get("tp", engine_config.get("tensor_parallel_size")) or 1
    pp = engine_config.get("pp", engine_config.get("pipeline_parallel_size")) or 1
    return int(tp) * int(pp)


def cost_factor(metric: str, engine_config: dict, gpu_hour_cost: float | None) -> float:
    """Cost metric `metric` = output_throughput_tok_s x this factor (tokens/s -> tokens per GPU-hour or per $)."""
    per_gpu_hour = 3600.0 / gpus_per_replica(engine_config)
    if metric == "output_tok_per_gpu_hour":
        return per_gpu_hour
    if gpu_hour_cost is None:
        raise ValueError(f"{metric} needs a GPU-hour price (search.gpu_hour_cost)")
    return per_gpu_hour / gpu_hour_cost


def _ms(delta_ns: float) -> float:
    return delta_ns / _NS_PER_MS


def _ttft(r: RequestRecord) -> list[float]:
    return [_ms(r.first_token_ns - r.origin_ns)] if r.token_ns else []


def _tpot(r: RequestRecord) -> list[float]:
    n = len(r.token_ns)
    return [_ms(r.token_ns[-1] - r.token_ns[0]) / (n - 1)] if n >= 2 else []


def _itl(r: RequestRecord) -> list[float]:
    return [_ms(b - a) for a, b in zip(r.token_ns, r.token_ns[1:])]


def _e2e(r: RequestRecord) -> list[float]:
    return [_ms(r.end_ns - r.origin_ns)]


def _queue(r: RequestRecord) -> list[float]:
    return [_ms(r.sent_ns - r.scheduled_ns)] if r.scheduled_ns is not None and r.sent_ns is not None else []


def _lag(r: RequestRecord) -> list[float]:
    return [_ms(r.dispatched_ns - r.scheduled_ns)] if r.scheduled_ns is not None and r.dispatched_ns is not None else []


# Per-record value extractors; latency metrics use successful requests only.
_EXTRACTORS: dict[str, tuple[Callable[[RequestRecord], list[float]], bool]] = {
    "ttft_ms": (_ttft, True), "tpot_ms": (_tpot, True), "itl_ms": (_itl, True), "e2e_ms": (_e2e, True),
    "queue_ms": (_queue, False), "schedule_lag_ms": (_lag, False),
}


def request_values(metric: str, record: RequestRecord) -> list[float]:
    """Values `record` contributes to distribution `metric` (empty when it contributes none)."""
    extract, needs_ok = _EXTRACTORS[metric]
    if needs_ok and not record.ok:
        return []
    return extract(record)


def percentile_ci(sorted_values: np.ndarray, q: float, level: float = CI_LEVEL) -> tuple[float | None, float | None]:
    """Distribution-free CI for the q-quantile (0<q<1) from order statistics; a bound is None when n is too small."""
    n = len(sorted_values)
    if n == 0:
        return None, None
    alpha = 1 - level
    lo_rank = int(binom.ppf(alpha / 2, n, q))          # 1-based rank r with P(X_(r) <= x_q) >= 1 - alpha/2
    hi_rank = int(binom.ppf(1 - alpha / 2, n, q)) + 1  # 1-based rank s with P(X_(s) >= x_q) >= 1 - alpha/2
    lo = float(sorted_values[lo_rank - 1]) if lo_rank >= 1 else None
    hi = float(sorted_values[hi_rank - 1]) if hi_rank <= n else None
    return lo, hi


def summarize(values) -> dict:
    """count, mean, min, max, p50..p99 (linear interpolation) and `ci` {pXX: [lo, hi]}; values None if empty."""
    arr = np.sort(np.asarray(values, dtype=float))
    out: dict = {"count": int(arr.size)}
    if arr.size == 0:
        out.update({s: None for s in STATISTICS})
        out["ci"] = {f"p{p}": [None, None] for p in PERCENTILES}
        return out
    out.update(mean=float(arr.mean()), min=float(arr[0]), max=float(arr[-1]))
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(arr, p, method="linear"))
    out["ci"] = {f"p{p}": list(percentile_ci(arr, p / 100)) for p in PERCENTILES}
    return out


@dataclass(frozen=True)
class SloLimit:
    """`metric`'s `statistic` (p50..p99, mean, max) must be <= `limit` for the run to pass."""

    metric: str
    statistic: str
    limit: float


def request_meets_slo(record: RequestRecord, limits: list[SloLimit]) -> bool:
    """A request counts toward goodput when it succeeded and each of its per-request SLO metrics is
    within that metric's loosest stated limit (pooled metrics such as itl_ms apply to the run only)."""
    if not record.ok:
        return False
    loosest: dict[str, float] = {}
    for lim in limits:
        if METRICS[lim.metric].per_request:
            loosest[lim.metric] = max(loosest.get(lim.metric, lim.limit), lim.limit)
    return all(v <= limit for m, limit in loosest.items() for v in request_values(m, record))


def compute(records: list[RequestRecord], limits: list[SloLimit] = ()) -> dict:
    """All metrics of one run from its records: {counts, window, distributions, scalars, slo}.

    Only `measured` records enter distributions and throughput; warm-up and cool-down ones are
    counted as excluded. The window runs from the earliest origin (scheduled or sent time) to the
    latest end among measured records.
    """
    measured = [r for r in records if r.phase == "measured"]
    ok = [r for r in measured if r.ok]
    counts = {
        "total": len(records),
        "measured": len(measured),
        "completed": len(ok),
        "failed": len(measured) - len(ok),
        "excluded_warmup": sum(r.phase == "warmup" for r in records),
        "excluded_cooldown": sum(r.phase == "cooldown" for r in records),
        "output_length_mismatch": sum(r.output_tokens != r.expected_output_tokens for r in ok),
    }
    starts = [r.origin_ns for r in measured if r.origin_ns is not None]
    ends = [r.end_ns for r in measured if r.end_ns is not None]
    window_s = (max(ends) - min(starts)) / 1e9 if starts and ends and max(ends) > min(starts) else 0.0
    window = {"start_ns": min(starts) if starts else None, "end_ns": max(ends) if ends else None,
              "duration_s": window_s}

    distributions = {name: summarize([v for r in measured for v in request_values(name, r)])
                     for name, m in METRICS.items() if m.kind == "distribution"}

    out_tokens = sum(r.output_tokens for r in ok)
    # text prompts have no known input length: then total token throughput is unknown, not understated
    in_tokens = None if any(r.input_tokens is None for r in ok) else sum(r.input_tokens for r in ok)
    meeting = sum(request_meets_slo(r, list(limits)) for r in measured)

    def rate(x: float) -> float | None:
        return x / window_s if window_s > 0 else None

    scalars = {
        "output_throughput_tok_s": rate(out_tokens),
        "total_token_throughput_tok_s": None if in_tokens is None else rate(out_tokens + in_tokens),
        "request_throughput_req_s": rate(len(ok)),
        "goodput_req_s": rate(meeting),
        "slo_attainment": meeting / len(measured) if measured else None,
        "error_rate": counts["failed"] / len(measured) if measured else None,
    }
    slo = [slo_check(lim, distributions[lim.metric]) for lim in limits]
    return {"counts": counts, "window": window, "distributions": distributions, "scalars": scalars, "slo": slo}


def metric_value(result: dict, metric: str, statistic: str | None = None) -> float | None:
    """`metric`'s value in a run result: a distribution statistic (`statistic` required) or a scalar."""
    if METRICS[metric].kind == "distribution":
        return result["distributions"][metric][statistic]
    return result["scalars"][metric]


def slo_check(lim: SloLimit, summary: dict) -> dict:
    """Compare one run-level limit with the measured statistic; margin > 0 means headroom."""
    measured = summary.get(lim.statistic)
    passed = measured is not None and measured <= lim.limit
    margin = None if measured is None else (lim.limit - measured) / lim.limit
    return {"metric": lim.metric, "statistic": lim.statistic, "limit": lim.limit,
            "measured": measured, "count": summary["count"], "margin": margin, "pass": passed}

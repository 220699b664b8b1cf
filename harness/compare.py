"""Regression gate: per metric, did CURRENT change from BASELINE beyond noise and beyond a threshold?

Method (the same for every metric, so every verdict means the same thing):

- Units. A run with n measured requests is resampled in units: its requests in origin order
  (scheduled time; closed loop: send time) for latencies and fractions, and time bins of window / n
  for throughputs. Latency statistics (p50..p99 by linear interpolation, mean) and fractions
  (`error_rate`, `slo_attainment`) are computed over the weighted requests and, unweighted, are
  exactly result.json's (`itl_ms`: all of a request's token gaps). Throughput is a property of time,
  not of requests: output tokens count in the bin where they arrived, completions (goodput: those
  meeting every SLO) where they ended, a prompt's tokens where its first token arrived.
- Steady-state throughput. result.json's throughput divides by the whole window, whose first and
  last stretch (the measured requests ramping up, the last ones draining) last longer or shorter
  with the workload's last requests: noise of the window's edges, not of the engine's speed, and
  one draw per run that no resampling within the run can see (in A/A runs of the mock engine, more
  than half the run-to-run variance of output throughput). So throughputs are compared over the
  window less one block of bins at each end, the rate the engine sustained; the report says so.
- Why not Mann-Whitney U or a plain bootstrap. Requests of one run are not independent samples:
  they share the engine's batches and queues, so a burst lifts the latency of every request near
  it. Tests that assume independent requests then see more information than there is and call
  run-to-run noise significant (benchmarks/compare_calibration.py prints how often Mann-Whitney U
  does so in A/A pairs).
- Circular block bootstrap (Politis & Romano 1992). Each run is resampled on its own (runs are
  independent) in blocks of consecutive units, so requests that shared the engine stay together.
  The block length is twice the mean number of requests in flight (Little's law: summed request
  latency / window), at least n^(1/3): beyond that many requests apart, two requests did not
  meet in the engine. A bin lasts window / n, so a block of bins spans the same time, about two
  request latencies, as a block of requests.
- Test. The change is log(current / baseline) for latencies and throughputs (shown as a relative
  change) and current - baseline for fractions (percentage points). Its standard error adds the
  two runs' bootstrap variances; Welch's t with each run's degrees of freedom = its number of
  resampled blocks - 1 (as in batch means) gives the p-value and the 95% confidence interval.
- Verdict per metric, threshold = the smallest change worth failing a build for:
  `regressed` / `improved`: significant (p Holm-adjusted over the gated metrics below `alpha`)
  and at least the threshold, in the worse / better direction; `unchanged`: neither, and the 95%
  CI rules out a worsening as large as the threshold; `inconclusive`: otherwise (too noisy to rule
  that out, or nothing to compare). Holm's step-down keeps the chance that two runs of the same
  config report any gated regression below `alpha` (default 1%).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from scipy import stats

from harness.config import format_validation_error, load_yaml, parse_objective
from harness.errors import ConfigError
from harness.metrics import METRICS, SloLimit, request_meets_slo, request_values
from harness.records import RequestRecord, read_records
from harness.store import TrialFiles

Verdict = Literal["regressed", "improved", "unchanged", "inconclusive"]

DEFAULT_ALPHA = 0.01
CI_LEVEL = 0.95
REPLICATES = 1000
MIN_BLOCKS = 3  # resampled blocks per run, at least
RATES = ("output_throughput_tok_s", "total_token_throughput_tok_s", "request_throughput_req_s", "goodput_req_s")
# Gated by default: a regression in any of these fails the gate. Relative changes, except fractions
# (error_rate, slo_attainment), whose thresholds are absolute (0.01 = one percentage point).
DEFAULT_GATE = {"output_throughput_tok_s": 0.03, "goodput_req_s": 0.05, "ttft_ms.p95": 0.05, "tpot_ms.p95": 0.05,
                "e2e_ms.p95": 0.05, "error_rate": 0.01}
DEFAULT_SHOW = {"request_throughput_req_s": 0.03, "ttft_ms.p50": 0.05, "tpot_ms.p50": 0.05, "itl_ms.p95": 0.05}

# Fingerprint keys (dotted) that identify what was measured: a difference refuses the comparison
# unless allowed. engine.model.path and .files_sha256 are left out: they change when the same
# weights are copied to another machine (path, file mtimes).
IDENTITY_KEYS = {"engine.engine": "engine", "engine.simulated": "engine", "engine.engine_version": "engine version",
                 "engine.model": "model", "engine.device": "GPU", "engine.gpus": "GPU",
                 "engine.compute_capability": "GPU", "engine.driver": "driver", "nvml": "driver"}
MACHINE_LOCAL_KEYS = ("engine.model.path", "engine.model.files_sha256")


# thresholds file ------------------------------------------------------------------------------

def _metric_key(key: str) -> tuple[str, str | None]:
    """'ttft_ms.p95' -> ('ttft_ms', 'p95'); 'goodput_req_s' -> ('goodput_req_s', None)."""
    _, metric, statistic = parse_objective(f"minimize {key}")
    return metric, statistic


class Thresholds(BaseModel):
    """The `--thresholds` YAML: `alpha`, and per `metric[.statistic]` the threshold that fails the gate
    (`gate`) or is only shown (`show`). A file's `gate` / `show` replace the defaults."""

    model_config = ConfigDict(extra="forbid")
    alpha: float = Field(DEFAULT_ALPHA, gt=0, lt=0.5, description="family-wise false-alarm rate over the gated metrics")
    gate: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_GATE))
    show: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_SHOW))

    @field_validator("gate", "show")
    @classmethod
    def _valid(cls, value: dict[str, float]) -> dict[str, float]:
        for key, threshold in value.items():
            try:
                _, stat = _metric_key(key)
            except ValueError as exc:
                raise ValueError(f"{key}: {exc}") from None
            if stat in ("min", "max"):
                raise ValueError(f"{key}: a sample's {stat} has no bootstrap confidence interval; use p99")
            if threshold < 0:
                raise ValueError(f"{key}: threshold must be >= 0, got {threshold}")
        return value


def load_thresholds(path: Path | None) -> Thresholds:
    """The defaults, or `path` validated (unknown keys and metrics are errors naming the file and key)."""
    if path is None:
        return Thresholds()
    data = load_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping with alpha / gate / show, got {type(data).__name__}")
    try:
        return Thresholds.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(str(path), err)) from None


# runs -----------------------------------------------------------------------------------------

@dataclass
class Run:
    """One side of a comparison: a bench or trial directory's result and request records."""

    path: Path
    result: dict
    records: list[RequestRecord]

    @property
    def label(self) -> str:
        return f"{self.result.get('name', '?')} ({self.path})"


def load_run(directory: Path) -> Run:
    """Read `directory`/result.json and records.jsonl; ConfigError naming the file when one is missing or unreadable."""
    result_path, records_path = directory / TrialFiles.RESULT, directory / TrialFiles.RECORDS
    for path in (result_path, records_path):
        if not path.is_file():
            raise ConfigError(f"{path}: not found (a bench or trial directory holds result.json and records.jsonl)")
    try:
        result = json.loads(result_path.read_text())
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{result_path}:{exc.lineno}: invalid JSON: {exc.msg}") from None
    missing = [k for k in ("distributions", "scalars", "fingerprint", "slo", "engine") if k not in result]
    if missing:
        raise ConfigError(f"{result_path}: not a run result (missing {', '.join(missing)})")
    try:
        records = read_records(records_path)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{records_path}: cannot read request records: {exc}") from None
    return Run(directory, result, records)


# fingerprints -----------------------------------------------------------------------------------

def flat(data: dict | None) -> dict:
    """Nested dict -> {dotted key: leaf}."""
    return pd.json_normalize(data or {}, sep=".").iloc[0].to_dict() if data else {}


@dataclass(frozen=True)
class Difference:
    key: str
    baseline: object
    current: object
    identity: str | None = None  # what it identifies (GPU, driver, ...) when the difference refuses a comparison


def _identity(key: str) -> str | None:
    if key in MACHINE_LOCAL_KEYS:
        return None
    return next((what for k, what in IDENTITY_KEYS.items() if key == k or key.startswith(k + ".")), None)


def differences(baseline: dict | None, current: dict | None, identity: bool = False) -> list[Difference]:
    """Keys whose values differ between two nested dicts; with `identity`, marked by what they identify."""
    a, b = flat(baseline), flat(current)
    return [Difference(k, a.get(k), b.get(k), _identity(k) if identity else None)
            for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def fingerprint_differences(baseline: Run, current: Run) -> list[Difference]:
    """Where the runs' fingerprints differ; `identity` is set on those that make the numbers incomparable."""
    return differences(baseline.result["fingerprint"], current.result["fingerprint"], identity=True)


# the resampling units of one run ----------------------------------------------------------------

class Weights(NamedTuple):
    """How often each unit of a run is drawn, one row per replicate (a row of ones: the run as measured)."""

    requests: np.ndarray
    bins: np.ndarray


@dataclass
class _Units:
    """A run's units of resampling: its n measured requests in origin order (latencies, fractions), and
    the steady part of its window in n bins less `block` at each end (throughputs)."""

    n: int
    block: int
    bin_s: float
    fractions: dict[str, np.ndarray]  # per request: 1 when it failed (error_rate) / met every SLO (slo_attainment)
    rates: dict[str, np.ndarray]  # per steady-state bin: output tokens, completions, ...
    values: dict[str, tuple[np.ndarray, np.ndarray]]  # distribution metric -> (sorted values, owning request)

    @property
    def steady_bins(self) -> int:
        return self.n - 2 * self.block

    def blocks(self, metric: str) -> float:
        """How many blocks the bootstrap resamples for `metric`."""
        return (self.steady_bins if metric in RATES else self.n) / self.block if self.block else 0.0

    def weights(self, replicates: int, rng: np.random.Generator) -> Weights:
        return Weights(block_weights(self.n, self.block, replicates, rng),
                       block_weights(self.steady_bins, self.block, replicates, rng))

    def ones(self) -> Weights:
        return Weights(np.ones((1, self.n), dtype=int), np.ones((1, self.steady_bins), dtype=int))


def _units(records: list[RequestRecord], limits: list[SloLimit]) -> _Units:
    measured = sorted((r for r in records if r.phase == "measured" and r.origin_ns is not None),
                      key=lambda r: r.origin_ns)
    n = len(measured)
    ok = [r for r in measured if r.ok]
    meeting = [request_meets_slo(r, limits) for r in measured]
    start = min((r.origin_ns for r in measured), default=0)
    end = max((r.end_ns for r in measured if r.end_ns is not None), default=start)
    window_s = (end - start) / 1e9
    busy_s = sum(r.end_ns - r.origin_ns for r in measured if r.end_ns is not None) / 1e9
    in_flight = busy_s / window_s if window_s else 1.0  # Little's law: mean requests in flight
    block = min(max(math.ceil(2 * in_flight), math.ceil(n ** (1 / 3))), n // 2)
    edges = np.linspace(start, end, n + 1) if window_s > 0 else None

    def steady(times: list[float], amounts: list[float] | None = None) -> np.ndarray:
        if edges is None:
            return np.zeros(0)
        return np.histogram(times, edges, weights=amounts)[0].astype(float)[block:n - block]

    tokens = [t for r in ok for t in r.token_ns]
    rates = {"output_throughput_tok_s": steady(tokens), "request_throughput_req_s": steady([r.end_ns for r in ok]),
             "goodput_req_s": steady([r.end_ns for r, meets in zip(measured, meeting) if meets])}
    if all(r.input_tokens is not None for r in ok):  # a prompt's tokens count when its prefill ends (first token)
        rates["total_token_throughput_tok_s"] = rates["output_throughput_tok_s"] + steady(
            [r.first_token_ns for r in ok if r.token_ns], [r.input_tokens for r in ok if r.token_ns])
    fractions = {"error_rate": np.asarray([not r.ok for r in measured], dtype=float),
                 "slo_attainment": np.asarray(meeting, dtype=float)}
    values = {}
    for name, metric in METRICS.items():
        if metric.kind == "distribution":
            pairs = np.asarray([(v, i) for i, r in enumerate(measured) for v in request_values(name, r)],
                               dtype=float).reshape(-1, 2)
            order = np.argsort(pairs[:, 0], kind="stable")
            values[name] = (pairs[order, 0], pairs[order, 1].astype(int))
    return _Units(n, block, window_s / n if n else 0.0, fractions, rates, values)


def block_weights(n: int, block: int, replicates: int, rng: np.random.Generator) -> np.ndarray:
    """(replicates, n) counts of how often each of n units is drawn by a circular block bootstrap."""
    if n <= 0 or block <= 0:
        return np.zeros((replicates, max(n, 0)), dtype=int)
    starts = rng.integers(0, n, size=(replicates, math.ceil(n / block)))
    idx = ((starts[:, :, None] + np.arange(block)) % n).reshape(replicates, -1)[:, :n]
    counts = np.bincount((idx + n * np.arange(replicates)[:, None]).ravel(), minlength=replicates * n)
    return counts.reshape(replicates, n)


def _weighted_quantile(sorted_values: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per row of integer `weights` (rows, len(values)): the q-quantile of the multiset in which each value
    appears weight times, by linear interpolation (numpy's default method), NaN for an empty row."""
    rows = np.arange(weights.shape[0])
    cum = np.cumsum(weights, axis=1)
    total = cum[:, -1]
    h = (total - 1) * q
    lo = np.floor(h)
    stride = total.max() + 1  # rows shifted apart so one searchsorted serves them all
    flat_cum = (cum + rows[:, None] * stride).ravel()

    def at(rank: np.ndarray) -> np.ndarray:
        i = np.searchsorted(flat_cum, rank + rows * stride, side="right") - rows * cum.shape[1]
        return sorted_values[np.clip(i, 0, sorted_values.size - 1)]

    lo_v, hi_v = at(lo), at(np.minimum(lo + 1, total - 1))
    return np.where(total > 0, lo_v + (h - lo) * (hi_v - lo_v), np.nan)


def statistic(units: _Units, metric: str, stat: str | None, weights: Weights) -> np.ndarray:
    """`metric` (`stat` for distributions) for each replicate of `weights`; `units.ones()` gives the run's value."""
    if metric in RATES:
        if metric not in units.rates:
            return np.full(weights.bins.shape[0], np.nan)
        time_s = weights.bins.sum(axis=1) * units.bin_s
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(time_s > 0, (weights.bins @ units.rates[metric]) / time_s, np.nan)
    w_requests = weights.requests
    if metric in units.fractions:
        return (w_requests @ units.fractions[metric]) / np.maximum(w_requests.sum(axis=1), 1)
    values, owner = units.values[metric]
    if values.size == 0:
        return np.full(w_requests.shape[0], np.nan)
    chunk = max(1, 2_000_000 // values.size)  # replicates at a time: bounds the (replicates, values) matrix
    parts = []
    for start in range(0, w_requests.shape[0], chunk):
        w = w_requests[start:start + chunk, owner]
        parts.append((w @ values) / np.maximum(w.sum(axis=1), 1) if stat == "mean"
                     else _weighted_quantile(values, w, int(stat[1:]) / 100))
    return np.concatenate(parts)


# the comparison ---------------------------------------------------------------------------------

@dataclass
class MetricComparison:
    """One metric's change from baseline to current, with its test and verdict."""

    metric: str
    statistic: str | None
    threshold: float
    gated: bool
    baseline: float | None
    current: float | None
    n_baseline: int
    n_current: int
    change: float | None = None  # relative (current / baseline - 1), or absolute for fractions
    ci: tuple[float | None, float | None] = (None, None)
    p_value: float | None = None
    p_adjusted: float | None = None  # Holm over the gated metrics (gated) or as is (shown only)
    verdict: Verdict = "inconclusive"
    reason: str = ""
    outliers: tuple[int, int] = (0, 0)  # values beyond Tukey's far fences (3 IQR) in each run: flagged, kept

    @property
    def key(self) -> str:
        return f"{self.metric}.{self.statistic}" if self.statistic else self.metric

    @property
    def unit(self) -> str:
        return METRICS[self.metric].unit

    @property
    def relative(self) -> bool:
        return self.unit != "fraction"

    @property
    def higher_is_better(self) -> bool:
        return METRICS[self.metric].higher_is_better

    @property
    def steady_state(self) -> bool:
        """Compared over the steady part of each window (see the module docstring), not result.json's whole window."""
        return self.metric in RATES


@dataclass
class Comparison:
    baseline: Run
    current: Run
    alpha: float
    metrics: list[MetricComparison]
    fingerprint: list[Difference] = field(default_factory=list)
    config: list[Difference] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    blocks: tuple[int, int] = (1, 1)  # block length (units) in each run
    replicates: int = REPLICATES

    @property
    def regressed(self) -> list[MetricComparison]:
        return [m for m in self.metrics if m.gated and m.verdict == "regressed"]

    @property
    def identity_mismatches(self) -> list[Difference]:
        return [d for d in self.fingerprint if d.identity]

    @property
    def simulated(self) -> bool:
        return bool(self.baseline.result.get("simulated") or self.current.result.get("simulated"))


def _outliers(values: np.ndarray) -> int:
    if values.size < 4:
        return 0
    q1, q3 = np.percentile(values, [25, 75])
    return int(((values < q1 - 3 * (q3 - q1)) | (values > q3 + 3 * (q3 - q1))).sum())


def _test(m: MetricComparison, base: np.ndarray, cur: np.ndarray, df: tuple[float, float]) -> None:
    """Fill change, ci and p_value of `m` from its point values and each run's bootstrap replicates."""
    b, c = m.baseline, m.current
    if b is None or c is None:
        m.reason = "no value in " + ("either run" if b is None and c is None else "the baseline" if b is None
                                     else "the current run")
        return
    if np.isnan(base).any() or np.isnan(cur).any():
        m.reason = "too few values: some bootstrap replicates have none"
        return
    if m.relative and min(b, c, base.min(), cur.min()) <= 0:
        if b == c:
            m.change, m.ci, m.p_value = 0.0, (0.0, 0.0), 1.0
        else:
            m.reason = "a value is 0: no relative change"
        return
    transform = np.log if m.relative else (lambda x: x)
    d = float(transform(c) - transform(b))
    var_b, var_c = float(np.var(transform(base), ddof=1)), float(np.var(transform(cur), ddof=1))
    se = math.sqrt(var_b + var_c)
    if se == 0:
        p, half = (1.0 if d == 0 else 0.0), 0.0
    else:
        dof = (var_b + var_c) ** 2 / (var_b ** 2 / df[0] + var_c ** 2 / df[1])
        p = float(2 * stats.t.sf(abs(d) / se, dof))
        half = float(stats.t.ppf(0.5 + CI_LEVEL / 2, dof)) * se
    back = math.expm1 if m.relative else (lambda x: x)
    m.change, m.ci, m.p_value = back(d), (back(d - half), back(d + half)), p


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (same order as given)."""
    order = np.argsort(p_values)
    adjusted, running = [0.0] * len(p_values), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def _verdict(m: MetricComparison, alpha: float) -> None:
    if m.change is None:
        m.verdict = "inconclusive"
        return
    worse = m.change < 0 if m.higher_is_better else m.change > 0
    direction = "worse" if worse else "better"
    if m.p_adjusted < alpha and abs(m.change) >= m.threshold and m.change != 0:
        m.verdict = "regressed" if worse else "improved"
        m.reason = f"significant and beyond the {_amount(m, m.threshold)} threshold ({direction})"
        return
    worst = m.ci[0] if m.higher_is_better else m.ci[1]
    rules_out = (worst > -m.threshold) if m.higher_is_better else (worst < m.threshold)
    if rules_out:
        m.verdict = "unchanged"
        m.reason = ("significant but within the threshold" if m.p_adjusted < alpha
                    else "no significant change") + f"; the 95% CI rules out a {_amount(m, m.threshold)} worsening"
    else:
        m.verdict = "inconclusive"
        m.reason = f"not significant, but the 95% CI does not rule out a {_amount(m, m.threshold)} worsening"


def _amount(m: MetricComparison, x: float) -> str:
    return f"{x:.1%}" if m.relative else f"{x * 100:.2g} pp"


def _slo_limits(result: dict) -> list[SloLimit]:
    return [SloLimit(c["metric"], c["statistic"], float(c["limit"])) for c in result.get("slo") or []]


def compare(baseline: Run, current: Run, thresholds: Thresholds | None = None, *, seed: int = 0,
            replicates: int = REPLICATES) -> Comparison:
    """Compare every metric of `thresholds` (gated and shown) between two runs, as the module docstring says.

    Goodput and SLO attainment of both runs are counted against the current run's SLOs. The bootstrap
    uses fixed seeds (a different stream per run), so the same inputs give the same report.
    """
    thresholds = thresholds or Thresholds()
    limits = _slo_limits(current.result)
    units = [_units(run.records, limits) for run in (baseline, current)]
    enough = min(u.steady_bins / u.block if u.block else 0 for u in units) >= MIN_BLOCKS  # the fewest units
    weights = [u.weights(replicates, np.random.default_rng([seed, side])) for side, u in enumerate(units)]
    rows = []
    for gated, table in ((True, thresholds.gate), (False, thresholds.show)):
        for key, threshold in table.items():
            metric, stat = _metric_key(key)
            point = [float(statistic(u, metric, stat, u.ones())[0]) for u in units]
            counts = [int(u.values[metric][0].size) if metric in u.values else u.n for u in units]
            m = MetricComparison(metric, stat, threshold, gated, *(None if math.isnan(v) else v for v in point),
                                 *counts)
            if metric in units[0].values:
                m.outliers = tuple(_outliers(u.values[metric][0]) for u in units)
            if not enough:
                m.reason = (f"too few measured requests: the bootstrap needs {MIN_BLOCKS} blocks of steady state in "
                            f"each run (blocks of {units[0].block} and {units[1].block} requests)")
            else:
                _test(m, *(statistic(u, metric, stat, w) for u, w in zip(units, weights)),
                      tuple(u.blocks(metric) - 1 for u in units))
            rows.append(m)
    gated_rows = [m for m in rows if m.gated and m.p_value is not None]
    for m, p in zip(gated_rows, holm([m.p_value for m in gated_rows])):
        m.p_adjusted = p
    for m in rows:
        if not m.gated:
            m.p_adjusted = m.p_value
        _verdict(m, thresholds.alpha)
    comparison = Comparison(baseline, current, thresholds.alpha, rows,
                            fingerprint=fingerprint_differences(baseline, current),
                            config=differences({"engine": baseline.result["engine"],
                                                "workload": baseline.result.get("workload")},
                                               {"engine": current.result["engine"],
                                                "workload": current.result.get("workload")}),
                            blocks=(units[0].block, units[1].block), replicates=replicates)
    comparison.warnings = _warnings(comparison)
    return comparison


def _warnings(c: Comparison) -> list[str]:
    out = []
    if c.identity_mismatches:
        out.append("fingerprints differ (" + ", ".join(dict.fromkeys(d.identity for d in c.identity_mismatches))
                   + "): the runs were measured on different hardware or software; changes may not be regressions")
    if c.simulated:
        out.append("SIMULATED engine in " + ("both runs" if c.baseline.result.get("simulated")
                                             and c.current.result.get("simulated") else "one run")
                   + ": numbers describe a service model, not hardware")
    if _slo_limits(c.baseline.result) != _slo_limits(c.current.result):
        out.append("the runs have different SLOs: goodput and SLO attainment of both are counted against "
                   "the current run's SLOs")
    if c.baseline.result.get("schema_version") != c.current.result.get("schema_version"):
        out.append(f"result schema versions differ: baseline {c.baseline.result.get('schema_version')}, "
                   f"current {c.current.result.get('schema_version')}")
    for side, run in (("baseline", c.baseline), ("current", c.current)):
        trust = run.result.get("client_trust") or {}
        if trust.get("trusted") is False:
            out.append(f"{side}: client timing NOT TRUSTED ({'; '.join(trust.get('reasons') or [])})")
    return out

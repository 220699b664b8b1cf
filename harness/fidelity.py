"""Workload fidelity: how closely the traffic as replayed matches its source.

Four comparisons, each a plain number a reader can check:

- lengths, source -> generated: the source's prompt and output lengths as recorded (before any
  clipping, filtering or sampling: see workloads.profile) against the requests generated from it, as
  the two-sample Kolmogorov-Smirnov statistic (0: same distribution; 1: disjoint), so clipping and
  filtering show up as a KS above 0;
- lengths, requested -> received: each request's output length as asked against what the engine
  streamed back (EOS, errors and truncation show up here), as KS plus a count of mismatched requests;
- prompt lengths, sent -> counted by the server (where it reports `usage.prompt_tokens`): KS against the
  generated lengths and, per request, the difference server count - length sent. Its median is the typical
  overhead (the chat template and special tokens the server adds; 0 for token ids sent to completions);
  requests off that typical difference did not reach the server at the length their record gives;
- arrivals: mean rate and coefficient of variation (CV) of the gaps between consecutive requests, for
  the source as recorded (before speedup / rate; `time_scale` is the divisor), the schedule (what the
  generator intended) and the dispatches (what the client achieved), plus the schedule lag (dispatch -
  scheduled time). Closed-loop runs have no schedule; only their achieved send rate is shown.

Rows the source reader skipped are counted by reason, with the first few locations.
"""
from __future__ import annotations

import statistics
from typing import Sequence

import numpy as np
from scipy import stats

from harness.metrics import summarize
from harness.records import RequestRecord
from workloads import RequestSpec
from workloads.profile import SourceProfile


def _lengths(values: Sequence[int] | None) -> dict | None:
    if values is None or len(values) == 0:
        return None
    s = summarize(values)
    return {k: s[k] for k in ("count", "mean", "min", "p50", "p90", "p99", "max")}


def _ks(a: Sequence[float] | None, b: Sequence[float] | None) -> float | None:
    """Two-sample KS statistic (largest gap between the two empirical CDFs); None if a side is empty."""
    if a is None or b is None or len(a) == 0 or len(b) == 0:
        return None
    return float(stats.ks_2samp(a, b, method="asymp").statistic)  # the statistic only: no exact p-value


def _counted_by_server(generated: Sequence[int], ok: Sequence[RequestRecord]) -> dict | None:
    """Prompt lengths the server reported for successful requests, against those sent (module docstring)."""
    server = [r.server_input_tokens for r in ok if r.server_input_tokens is not None]
    if not server:
        return None
    diffs = [r.server_input_tokens - r.input_tokens for r in ok
             if r.server_input_tokens is not None and r.input_tokens is not None]
    typical = statistics.median_low(diffs) if diffs else None
    return {"lengths": _lengths(server), "ks_generated_vs_server": _ks(generated, server),
            "difference": {"p50": typical, "min": min(diffs), "max": max(diffs)} if diffs else None,
            "off_typical_requests": sum(d != typical for d in diffs), "compared_requests": len(diffs)}


def _gaps_stats(gaps: Sequence[float] | np.ndarray | None) -> dict | None:
    """Mean rate (requests per second over the span) and CV of inter-arrival gaps; None for < 2 gaps."""
    if gaps is None or len(gaps) < 2:
        return None
    g = np.asarray(gaps, dtype=float)
    mean = g.mean()
    return {"rate_req_s": float(1.0 / mean) if mean > 0 else None,
            "cv": float(g.std() / mean) if mean > 0 else None, "gaps": int(g.size)}


def workload_fidelity(profile: SourceProfile, specs: Sequence[RequestSpec], records: Sequence[RequestRecord]) -> dict:
    """The fidelity summary of one run (see the module docstring); every request counts, warm-up included."""
    gen_in = [s.input_tokens for s in specs if s.input_tokens is not None]
    requested = [s.max_output_tokens for s in specs]
    ok = [r for r in records if r.ok]
    received = [r.output_tokens for r in ok]
    scheduled = [s.scheduled_offset_s for s in specs if s.scheduled_offset_s is not None]
    dispatched = sorted(r.dispatched_ns / 1e9 for r in records if r.dispatched_ns is not None)
    lag_ms = [(r.dispatched_ns - r.scheduled_ns) / 1e6 for r in records
              if r.scheduled_ns is not None and r.dispatched_ns is not None]
    lag = summarize(lag_ms) if lag_ms else None
    return {
        "source": {"kind": profile.kind, "description": profile.description, "rows_read": profile.rows_read,
                   "rows_used": profile.rows_used, "skipped": dict(profile.skipped),
                   "skipped_total": sum(profile.skipped.values()), "skipped_examples": list(profile.skipped_examples),
                   "notes": list(profile.notes)},
        "input_tokens": {"source": _lengths(profile.input_tokens), "generated": _lengths(gen_in),
                         "ks_source_vs_generated": _ks(profile.input_tokens, gen_in),
                         "counted_by_server": _counted_by_server(gen_in, ok)},
        "output_tokens": {"source": _lengths(profile.output_tokens), "requested": _lengths(requested),
                          "received": _lengths(received),
                          "ks_source_vs_requested": _ks(profile.output_tokens, requested),
                          "ks_requested_vs_received": _ks([r.expected_output_tokens for r in ok], received),
                          "mismatched_requests": sum(r.output_tokens != r.expected_output_tokens for r in ok),
                          "compared_requests": len(ok)},
        "arrivals": {"source_recorded": _gaps_stats(profile.recorded_inter_arrival_s),
                     "time_scale": profile.time_scale,
                     "intended": _gaps_stats(np.diff(scheduled)) if len(scheduled) == len(specs) else None,
                     "achieved": _gaps_stats(np.diff(dispatched)),
                     "schedule_lag_ms": None if lag is None else {k: lag[k] for k in ("p50", "p99", "max")}},
    }

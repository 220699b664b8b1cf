"""Report figures as self-contained SVG data URIs (`data:image/svg+xml;base64,...`).

Contract: every function returns a data URI, or None when there is nothing to plot (no completed
trial, no successful request). Figures are built on `matplotlib.figure.Figure` with an explicit
Agg canvas inside an `rc_context`, so pyplot's global state and the caller's rcParams are never
touched. The SVG is deterministic for the same input (fixed hash salt, no date). Distribution
values come from `harness.metrics.request_values`, so metric definitions live in one place.
"""
from __future__ import annotations

import base64
import io
import math
from typing import Callable

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatter, LogLocator, MaxNLocator, NullFormatter, ScalarFormatter

from harness.metrics import METRICS, OBJECTIVE_METRICS, metric_value, request_values, summarize
from harness.records import RequestRecord
from harness.summary import ParamImportance, StudySummary, TrialRow
from harness.summary import pareto_front as non_dominated

WIDTH_IN = 9.0  # about 860 px in a browser; readable scaled down to ~700 px
PASS, MISS, FAILED, INFEASIBLE, OTHER = "#2e7d32", "#ef6c00", "#c62828", "#757575", "#9e9e9e"
ACCENT = "#1565c0"
PERCENTILE_COLORS = {"p50": "#1565c0", "p95": "#ef6c00", "p99": "#c62828"}

_STYLE = {
    "font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "legend.fontsize": 8.5,
    "xtick.labelsize": 9, "ytick.labelsize": 9, "axes.spines.top": False, "axes.spines.right": False,
    "axes.grid": True, "grid.alpha": 0.3, "grid.linewidth": 0.6, "legend.framealpha": 0.9,
    "svg.hashsalt": "harness-report", "svg.fonttype": "path",
}


def _thousands(x: float, _pos: int) -> str:
    """Tick label with thousands separators: 160000 -> '160,000', 0.25 -> '0.25'."""
    return f"{x:,g}"


def _render(height_in: float, ncols: int, draw: Callable[[Figure, list[Axes]], None], nrows: int = 1) -> str:
    """Create a figure with `nrows` x `ncols` axes (passed row by row), let `draw` fill it, and return it as an
    SVG data URI."""
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
        draw(fig, axes)
        for ax in axes:
            for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
                if scale == "linear" and isinstance(axis.get_major_formatter(), ScalarFormatter):  # not named ticks
                    axis.set_major_formatter(_thousands)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _log_scale(ax: Axes, which: str) -> None:
    """Make the x or y axis logarithmic (call it once the data is drawn), labelled like linear axes ('1,000'):
    ticked at 1, 2 and 5 x 10^k when the data spans under 100x, else at powers of 10 only; no minor-tick labels
    (they overlap)."""
    lo, hi = ax.dataLim.intervalx if which == "x" else ax.dataLim.intervaly
    getattr(ax, f"set_{which}scale")("log")
    axis = getattr(ax, f"{which}axis")
    axis.set_major_locator(LogLocator(subs=(1, 2, 5) if 0 < lo and hi < 100 * lo else (1,)))
    axis.set_major_formatter(_thousands)
    axis.set_minor_formatter(NullFormatter())


def axis_label(metric: str, statistic: str | None = None) -> str:
    """'ttft_ms p95 (ms)' style label with the metric's unit."""
    name = f"{metric} {statistic}" if statistic else metric
    return f"{name} ({OBJECTIVE_METRICS[metric].unit})"


# (a) objective history ------------------------------------------------------------------------

def objective_history(summary: StudySummary) -> str | None:
    """Objective value by trial number (SLO pass/miss colours), trials without a value marked on
    the x axis by state, and the best-so-far among SLO-passing trials as a step line."""
    if not summary.trials:
        return None
    valued = [t for t in summary.trials if t.state == "complete" and t.value is not None]
    unvalued = [t for t in summary.trials if t.state != "complete" or t.value is None]
    primary = summary.objectives[0]
    better = max if primary.direction == "maximize" else min

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        for passed, color, label in ((True, PASS, "met SLOs"), (False, MISS, "missed an SLO")):
            pts = [t for t in valued if t.slo_pass == passed]
            if pts:
                ax.scatter([t.number for t in pts], [t.value for t in pts], s=36, color=color,
                           edgecolor="white", linewidth=0.6, zorder=3, label=f"{label} ({len(pts)})")
        xs, ys, best = [], [], None
        for t in sorted(summary.trials, key=lambda t: t.number):
            if t.state == "complete" and t.value is not None and t.slo_pass:
                best = t.value if best is None else better(best, t.value)
            if best is not None:
                xs.append(t.number)
                ys.append(best)
        if xs:
            ax.step(xs, ys, where="post", color=ACCENT, linewidth=1.6, zorder=2, label="best so far (met SLOs)")
        chosen = summary.best or summary.closest_miss
        if chosen is not None and chosen.value is not None:
            ax.scatter([chosen.number], [chosen.value], s=220, marker="*", color="#fdd835", edgecolor="black",
                       linewidth=0.8, zorder=4,
                       label=f"{'chosen' if summary.best else 'closest miss'}: trial {chosen.number}")
        for state, marker, color in (("failed", "x", FAILED), ("infeasible", "s", INFEASIBLE)):
            _mark_on_x_axis(ax, [t.number for t in unvalued if t.state == state], marker, color, state)
        others = [t.number for t in unvalued if t.state not in ("failed", "infeasible")]
        _mark_on_x_axis(ax, others, "o", OTHER, "other state")
        ax.set_xlabel("trial number")
        ax.set_ylabel(axis_label(primary.metric, primary.statistic))
        kind = "Primary objective" if summary.multi_objective else "Objective"
        ax.set_title(f"{kind} by trial: {primary.expression}")
        numbers = [t.number for t in summary.trials]
        ax.set_xlim(min(numbers) - 0.5, max(numbers) + 0.5)  # markers on the axis do not widen the limits
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(3.8, 1, draw)


def _mark_on_x_axis(ax: Axes, numbers: list[int], marker: str, color: str, label: str) -> None:
    """Markers at the bottom edge of the axes (axes-fraction y) for trials that have no value."""
    if numbers:
        ax.scatter(numbers, [0.0] * len(numbers), transform=ax.get_xaxis_transform(), marker=marker,
                   s=44, color=color, clip_on=False, zorder=4, label=f"{label} ({len(numbers)}), no value")


# (b) latency / throughput trade-off ------------------------------------------------------------

def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of (latency x, throughput y) points that no other point dominates (lower-or-equal latency and
    higher-or-equal throughput, better in one), ordered by latency."""
    front = non_dominated([(-x, y) for x, y in points])
    return sorted(front, key=lambda i: (points[i][0], -points[i][1]))


def tradeoff(summary: StudySummary) -> str | None:
    """Output throughput against ttft_ms p95 and tpot_ms p95 for completed trials: SLO pass/miss,
    the chosen trial, the Pareto front, and the SLO limit where the SLO names that p95."""
    trials = [t for t in summary.completed if t.result
              and metric_value(t.result, "output_throughput_tok_s") is not None]
    if not trials:
        return None
    slo = summary.config.get("slo") or {}
    chosen = summary.best or summary.closest_miss

    def draw(fig: Figure, axes: list[Axes]) -> None:
        for ax, metric in zip(axes, ("ttft_ms", "tpot_ms")):
            rows = [(metric_value(t.result, metric, "p95"), metric_value(t.result, "output_throughput_tok_s"), t)
                    for t in trials]
            rows = [r for r in rows if r[0] is not None]
            for passed, color, face, label in ((True, PASS, PASS, "met SLOs"), (False, MISS, "none", "missed an SLO")):
                pts = [r for r in rows if r[2].slo_pass == passed]
                if pts:
                    ax.scatter([r[0] for r in pts], [r[1] for r in pts], s=40, edgecolor=color, facecolor=face,
                               linewidth=1.4, zorder=3, label=label)
            front = [rows[i] for i in pareto_front([(r[0], r[1]) for r in rows])]
            if len(front) > 1:
                ax.step([r[0] for r in front], [r[1] for r in front], where="post", color=INFEASIBLE,
                        linestyle="--", linewidth=1.0, zorder=2, label="Pareto front")
            if chosen is not None:
                for x, y, t in rows:
                    if t is chosen:
                        ax.scatter([x], [y], s=220, marker="*", color="#fdd835", edgecolor="black",
                                   linewidth=0.8, zorder=4, label=f"{'chosen' if summary.best else 'closest miss'}: "
                                                                  f"trial {t.number}")
            limit = slo.get(metric, {}).get("p95")
            if limit is not None:
                ax.axvline(limit, color=FAILED, linestyle=":", linewidth=1.4, label=f"SLO p95 ≤ {limit:g} ms")
            xs = [r[0] for r in rows]
            wide = bool(xs) and min(xs) > 0 and max(xs) > 30 * min(xs)
            if wide:
                _log_scale(ax, "x")
            else:
                ax.set_xlim(left=0)
            ax.set_xlabel(axis_label(metric, "p95") + (" (log scale)" if wide else ""))
            ax.set_ylabel(axis_label("output_throughput_tok_s"))
            ax.set_title(f"Throughput vs {metric} p95")
            ax.set_ylim(bottom=0)
            _label_points(ax, [(x, y, str(t.number)) for x, y, t in rows])
        handles = {}
        for ax in axes:
            for h, label in zip(*ax.get_legend_handles_labels()):
                handles.setdefault(label, h)
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 5))

    return _render(4.2, 2, draw)


def pareto(summary: StudySummary) -> str | None:
    """A two-objective study: every completed trial at (objective 1, objective 2), filled when it met every SLO
    and hollow when not, the Pareto front of the SLO-passing trials ringed and joined, the chosen trial starred.
    None for other studies or without a completed trial."""
    if len(summary.objectives) != 2 or not summary.completed:
        return None
    first, second = summary.objectives
    front = sorted(summary.front, key=lambda t: t.values[0])

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        for passed, face, label in ((True, PASS, "met SLOs"), (False, "none", "missed an SLO (infeasible)")):
            pts = [t for t in summary.completed if t.slo_pass == passed]
            if pts:
                ax.scatter([t.values[0] for t in pts], [t.values[1] for t in pts], s=40, facecolor=face,
                           edgecolor=PASS if passed else MISS, linewidth=1.4, zorder=3, label=f"{label} ({len(pts)})")
        if front:
            ax.plot([t.values[0] for t in front], [t.values[1] for t in front], color=ACCENT, linestyle="--",
                    linewidth=1.0, marker="o", markersize=13, markerfacecolor="none", markeredgecolor=ACCENT,
                    zorder=2, label=f"Pareto front of the SLO-passing trials ({len(front)})")
        if summary.best is not None:
            ax.scatter([summary.best.values[0]], [summary.best.values[1]], s=220, marker="*", color="#fdd835",
                       edgecolor="black", linewidth=0.8, zorder=4, label=f"chosen: trial {summary.best.number}")
        ax.set_xlabel(f"{axis_label(first.metric, first.statistic)} ({'→' if first.sign > 0 else '←'} better)")
        ax.set_ylabel(f"{axis_label(second.metric, second.statistic)} ({'↑' if second.sign > 0 else '↓'} better)")
        ax.set_title(f"Pareto front: {first.label} vs {second.label}")
        _label_points(ax, [(t.values[0], t.values[1], str(t.number)) for t in summary.completed])
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(4.2, 1, draw)


def _label_points(ax: Axes, points: list[tuple[float, float, str]]) -> None:
    """Annotate points with short labels, trying a few offsets so labels do not overlap each other;
    a label with no free spot is left out (the trial table has every number)."""
    ax.autoscale_view()  # settle the limits so data -> pixel positions hold (up to the final layout)
    offsets = ((4, 3), (4, -11), (-12, 3), (-12, -11), (4, 12), (-12, 12))
    taken: list[tuple[float, float, float, float]] = []
    scale = ax.figure.dpi / 72  # offsets are in points
    for x, y, text in points:
        px, py = ax.transData.transform((x, y))
        w, h = (5.0 * len(text) + 2) * scale, 9.0 * scale
        for dx, dy in offsets:
            box = (px + dx * scale, py + dy * scale, px + dx * scale + w, py + dy * scale + h)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3] for b in taken):
                taken.append(box)
                ax.annotate(text, (x, y), xytext=(dx, dy), textcoords="offset points", fontsize=7.5,
                            color="#424242")
                break


# (b2) which knobs mattered: parameter importance, each knob against the objective -----------------

def param_importance(importance: ParamImportance) -> str | None:
    """Each knob's share of the summed importance as horizontal bars, largest on top; None when not computed."""
    if not importance.shares:
        return None
    names = list(importance.shares)[::-1]
    shares = [100 * importance.shares[n] for n in names]

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        bars = ax.barh(names, shares, color=ACCENT, height=0.6)
        ax.bar_label(bars, labels=[f"{v:.0f}%" for v in shares], padding=3, fontsize=8.5)
        ax.set_xlim(0, 105)
        ax.set_xlabel("share of the summed importance (%)")
        ax.set_title(f"Parameter importance (PED-ANOVA): the best {importance.top} of {importance.trials} "
                     "completed trials against all of them")
        ax.grid(axis="y", visible=False)

    return _render(1.0 + 0.3 * len(names), 1, draw)


KNOB_COLUMNS = 3  # panels per row of `knob_effects`


def _category(value) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def _knob_positions(trials: list[TrialRow], knob: str) -> tuple[dict[int, float], list[str] | None]:
    """x of each trial (by number) that has `knob`, and the category names when the knob is not numeric (None
    when it is). Within a category the trials spread sideways in trial order, so equal values stay visible."""
    have = [t for t in trials if t.params.get(knob) is not None]
    if all(isinstance(t.params[knob], (int, float)) and not isinstance(t.params[knob], bool) for t in have):
        return {t.number: float(t.params[knob]) for t in have}, None
    names = sorted({_category(t.params[knob]) for t in have})
    x: dict[int, float] = {}
    for i, name in enumerate(names):
        group = [t for t in have if _category(t.params[knob]) == name]
        for k, t in enumerate(group):
            x[t.number] = i + (0.5 * k / (len(group) - 1) - 0.25 if len(group) > 1 else 0.0)
    return x, names


def knob_effects(summary: StudySummary, knobs: list[str]) -> str | None:
    """One panel per tuned knob: each completed trial's primary objective against the knob's value (filled: met
    every SLO; hollow: missed one; the chosen trial starred), trials without a value (failed, infeasible, others
    such as interrupted) marked on the x axis at their value. Text and true/false knobs are categories (a strip); a numeric knob spanning more
    than 20x gets a log axis. None without knobs or trials."""
    trials = [t for t in summary.trials if t.params]
    if not knobs or not trials:
        return None
    primary = summary.objectives[0]
    valued = [t for t in trials if t.state == "complete" and t.value is not None]
    unvalued = [t for t in trials if t.state != "complete" or t.value is None]
    chosen = summary.best or summary.closest_miss
    ncols = min(len(knobs), KNOB_COLUMNS)
    nrows = math.ceil(len(knobs) / KNOB_COLUMNS)

    def draw(fig: Figure, axes: list[Axes]) -> None:
        for i, (ax, knob) in enumerate(zip(axes, knobs)):
            x, names = _knob_positions(trials, knob)
            for passed, face, label in ((True, PASS, "met SLOs"), (False, "none", "missed an SLO")):
                pts = [t for t in valued if t.slo_pass == passed and t.number in x]
                if pts:
                    ax.scatter([x[t.number] for t in pts], [t.value for t in pts], s=30, facecolor=face,
                               edgecolor=PASS if passed else MISS, linewidth=1.3, zorder=3, label=label)
            if chosen is not None and chosen.value is not None and chosen.number in x:
                ax.scatter([x[chosen.number]], [chosen.value], s=180, marker="*", color="#fdd835", edgecolor="black",
                           linewidth=0.8, zorder=4,
                           label=f"{'chosen' if summary.best else 'closest miss'}: trial {chosen.number}")
            for state, marker, color in (("failed", "x", FAILED), ("infeasible", "s", INFEASIBLE)):
                _mark_on_x_axis(ax, [x[t.number] for t in unvalued if t.state == state and t.number in x],
                                marker, color, state)
            _mark_on_x_axis(ax, [x[t.number] for t in unvalued if t.state not in ("failed", "infeasible")
                                 and t.number in x], "o", OTHER, "other state")
            if names is not None:
                ax.set_xticks(range(len(names)), names)
                ax.set_xlim(-0.5, len(names) - 0.5)
                ax.grid(axis="x", visible=False)
            elif x and min(x.values()) > 0 and max(x.values()) > 20 * min(x.values()):
                _log_scale(ax, "x")
            if valued and min(t.value for t in valued) >= 0:
                ax.set_ylim(bottom=0)
            ax.set_xlabel(knob + (" (log scale)" if ax.get_xscale() == "log" else ""))
            if i % ncols == 0:
                ax.set_ylabel(axis_label(primary.metric, primary.statistic))
        for ax in axes[len(knobs):]:
            ax.set_visible(False)
        _shared_legend(fig, axes)

    return _render(0.6 + 2.4 * nrows, ncols, draw, nrows=nrows)


# (c, d) latency distributions of one run -------------------------------------------------------

def measured_values(records: list[RequestRecord], metric: str) -> np.ndarray:
    """Sorted values of distribution `metric` over measured records (every token gap for itl_ms)."""
    return np.sort(np.asarray([v for r in records if r.phase == "measured" for v in request_values(metric, r)]))


def distribution(records: list[RequestRecord], metric: str) -> str | None:
    """Histogram and empirical CDF of `metric` over the run's measured records, p50/p95/p99 marked.

    Pooled metrics (itl_ms) count every token gap. The x axis turns logarithmic when the maximum
    is more than 20x the p99, so a few outliers do not squash the body of the distribution.
    """
    values = measured_values(records, metric)
    if values.size == 0:
        return None
    stats = summarize(values)
    log_x = values[0] > 0 and values[-1] > 20 * stats["p99"]
    unit = METRICS[metric].unit
    per = "requests" if METRICS[metric].per_request else "token gaps"

    def draw(fig: Figure, axes: list[Axes]) -> None:
        hist, cdf = axes
        bins = np.geomspace(values[0], values[-1], 50) if log_x else min(50, max(10, int(np.sqrt(values.size))))
        hist.hist(values, bins=bins, color=ACCENT, alpha=0.75, edgecolor="white", linewidth=0.4)
        hist.set_ylabel(f"{per} (count)")
        cdf.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=ACCENT, linewidth=1.4)
        cdf.set_ylabel("fraction ≤ x")
        cdf.set_ylim(0, 1.02)
        for ax in axes:
            for p, color in PERCENTILE_COLORS.items():
                ax.axvline(stats[p], color=color, linestyle="--", linewidth=1.1,
                           label=f"{p} = {stats[p]:.3g} {unit}")
            ax.set_xlabel(axis_label(metric) + (" (log scale)" if log_x else ""))
            if log_x:
                _log_scale(ax, "x")
        hist.set_title(f"{metric}: histogram (n = {values.size:,} {per})")
        cdf.set_title(f"{metric}: empirical CDF")
        cdf.legend(loc="lower right")

    return _render(3.4, 2, draw)


# (e) per-request TTFT over the run --------------------------------------------------------------

def ttft_timeline(records: list[RequestRecord]) -> str | None:
    """Each request's TTFT at its scheduled time (closed loop: send time); warm-up/cool-down in grey,
    failed requests marked on the x axis. A rising trend shows queueing build-up."""
    timed = [r for r in records if r.origin_ns is not None]
    if not any(request_values("ttft_ms", r) for r in timed):
        return None
    open_loop = any(r.scheduled_ns is not None for r in timed)

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        for phases, color, label in ((("measured",), ACCENT, "measured"),
                                     (("warmup", "cooldown"), OTHER, "warm-up / cool-down (excluded)")):
            pts = [(r.origin_ns / 1e9, request_values("ttft_ms", r)[0]) for r in timed
                   if r.phase in phases and request_values("ttft_ms", r)]
            if pts:
                ax.scatter(*zip(*pts), s=10, color=color, alpha=0.7, linewidth=0, label=f"{label} ({len(pts)})")
        failed = [r.origin_ns / 1e9 for r in timed if not r.ok]
        if failed:
            ax.scatter(failed, [0.0] * len(failed), transform=ax.get_xaxis_transform(), marker="x", s=40,
                       color=FAILED, clip_on=False, zorder=4, label=f"failed, all phases ({len(failed)})")
        ax.set_xlabel(f"{'scheduled' if open_loop else 'send'} time since run start (s)")
        ax.set_ylabel(axis_label("ttft_ms"))
        ax.set_title("Per-request TTFT over the run")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(3.4, 1, draw)


# (f) offered load over the run: scheduled vs dispatched requests per second ---------------------

def arrival_rate(records: list[RequestRecord]) -> str | None:
    """Requests per second over the run, as scheduled (open loop) and as the client dispatched them;
    the two curves coincide when the load generator kept up. Bins of about 1/60 of the run, >= 0.1 s."""
    dispatched = np.asarray([r.dispatched_ns / 1e9 for r in records if r.dispatched_ns is not None])
    if dispatched.size < 2:
        return None
    scheduled = np.asarray([r.scheduled_ns / 1e9 for r in records if r.scheduled_ns is not None])
    end = float(max(dispatched.max(), scheduled.max() if scheduled.size else 0.0))
    width = max(end / 60, 0.1)
    edges = np.arange(0.0, end + width, width)

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        if scheduled.size:
            ax.stairs(np.histogram(scheduled, edges)[0] / width, edges, color=OTHER, linewidth=2.2,
                      label=f"scheduled ({scheduled.size:,})")
        ax.stairs(np.histogram(dispatched, edges)[0] / width, edges, color=ACCENT, linewidth=1.2,
                  label=f"dispatched ({dispatched.size:,})")
        ax.set_xlabel("time since run start (s)")
        ax.set_ylabel(f"requests per second ({width:.2g} s bins)")
        ax.set_title("Offered load over the run")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(3.0, 1, draw)


# (f2) TTFT against prompt length; GPU memory and utilization over the run ------------------------

def ttft_vs_input(records: list[RequestRecord]) -> str | None:
    """Each successful measured request's TTFT against its prompt length: a rising floor is prefill cost, scatter
    above it is queueing. None without a measured request that has both."""
    pts = [(r.input_tokens, request_values("ttft_ms", r)[0]) for r in records
           if r.phase == "measured" and r.input_tokens is not None and request_values("ttft_ms", r)]
    if not pts:
        return None
    ttft = [y for _, y in pts]
    log_y = min(ttft) > 0 and max(ttft) > 30 * min(ttft)

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        ax.scatter(*zip(*pts), s=10, color=ACCENT, alpha=0.6, linewidth=0)
        if log_y:
            _log_scale(ax, "y")
        else:
            ax.set_ylim(bottom=0)
        ax.set_xlim(left=0)
        ax.set_xlabel("input tokens")
        ax.set_ylabel(axis_label("ttft_ms") + (" (log scale)" if log_y else ""))
        ax.set_title(f"TTFT vs input length ({len(pts):,} successful measured requests)")

    return _render(3.2, 1, draw)


GPU_COLORS = ("#1565c0", "#ef6c00", "#2e7d32", "#6a1b9a", "#c62828", "#00838f", "#5d4037", "#9e9d24")
_GIB = 1024 ** 3


def gpu_timeline(samples: pd.DataFrame, gpus: list[dict]) -> str | None:
    """GPU memory and utilization over the run from telemetry.csv samples (columns of harness.telemetry.CSV_HEADER),
    one colour per GPU: memory used solid, the engine process's own share dashed (where NVML reported it), the
    GPU's total memory (from `gpus`, the result's telemetry summary) dotted. None without samples."""
    if samples.empty:
        return None
    totals = {g["index"]: g.get("memory_total_mib") for g in gpus}

    def draw(fig: Figure, axes: list[Axes]) -> None:
        mem, util = axes
        for i, (gpu, rows) in enumerate(samples.groupby("gpu", sort=True)):
            color, t = GPU_COLORS[i % len(GPU_COLORS)], rows["t_ns"] / 1e9
            mem.plot(t, rows["memory_used_bytes"] / _GIB, color=color, linewidth=1.4, label=f"GPU {gpu}: used")
            if rows.get("process_memory_bytes") is not None and rows["process_memory_bytes"].notna().any():
                mem.plot(t, rows["process_memory_bytes"] / _GIB, color=color, linestyle="--", linewidth=1.2,
                         label=f"GPU {gpu}: engine process")
            if totals.get(gpu):
                mem.axhline(totals[gpu] / 1024, color=color, linestyle=":", linewidth=1.0, label=f"GPU {gpu}: total")
            util.plot(t, rows["util_pct"], color=color, linewidth=1.0, label=f"GPU {gpu}: utilization")
        mem.set_ylim(bottom=0)
        mem.set_ylabel("memory (GiB)")
        mem.set_title("GPU memory over the run")
        util.set_ylim(0, 105)
        util.set_ylabel("utilization (%)")
        util.set_title("GPU utilization over the run (NVML)")
        for ax in axes:
            ax.set_xlabel("time since telemetry start (s)")
        _shared_legend(fig, axes)

    return _render(3.6, 2, draw)


# (g, h) capacity plan: latency and throughput against the offered rate ---------------------------

def _plan_markers(ax: Axes, plan: dict) -> None:
    """The max rate at SLO (with the bracket up to the first miss) and the operating point, as vertical lines."""
    knee, sizing = plan["max_rate"], plan.get("sizing")
    if knee["rate"] is not None:
        ax.axvline(knee["rate"], color=PASS, linestyle="--", linewidth=1.4,
                   label=f"max rate at SLO: {knee['rate']:g} req/s")
        if knee["first_miss"] is not None:
            ax.axvspan(knee["rate"], knee["first_miss"], color=PASS, alpha=0.08, linewidth=0,
                       label=f"knee lies in [{knee['rate']:g}, {knee['first_miss']:g}) req/s")
    if sizing:
        ax.axvline(sizing["operating_rate_req_s"], color=ACCENT, linestyle=":", linewidth=1.6,
                   label=f"operating point: {sizing['operating_rate_req_s']:.3g} req/s per replica")


def _rate_axis(ax: Axes, rates: list[float]) -> None:
    wide = min(rates) > 0 and max(rates) > 20 * min(rates)
    if wide:
        ax.set_xscale("log")
    else:
        ax.set_xlim(left=0, right=max(rates) * 1.05)
    ax.set_xlabel("offered rate per replica (req/s)" + (" (log scale)" if wide else ""))


def _shared_legend(fig: Figure, axes: list[Axes]) -> None:
    handles: dict = {}
    for ax in axes:
        for h, label in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(label, h)
    fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=min(len(handles), 3))


def latency_vs_load(plan: dict) -> str | None:
    """p50/p95/p99 of each latency metric of the plan's sweep points against the offered rate: SLO limits
    as horizontal lines, the 95% CI of each SLO'd percentile as error bars, misses as hollow markers,
    failed runs on the x axis, the confirmation run as a star, the max rate at SLO and the operating
    point as vertical lines."""
    points = sorted((p for p in plan["points"] if p["state"] == "complete"), key=lambda p: p["rate"])
    sweep = [p for p in points if p["role"] == "sweep"]
    failed = [p["rate"] for p in plan["points"] if p["state"] != "complete"]
    if not sweep:
        return None
    metrics = list(dict.fromkeys(m for p in sweep for m in p["latency"]))
    slo = plan["config"].get("slo") or {}

    def draw(fig: Figure, axes: list[Axes]) -> None:
        for ax, metric in zip(axes, metrics):
            values = []
            for stat, color in PERCENTILE_COLORS.items():
                rows = [(p["rate"], p["latency"][metric][stat], p) for p in sweep
                        if p["latency"].get(metric, {}).get(stat) is not None]
                if not rows:
                    continue
                values += [y for _, y, _ in rows]
                ax.plot([r for r, _, _ in rows], [y for _, y, _ in rows], color=color, linewidth=1.3, label=stat)
                for passed, face in ((True, color), (False, "white")):
                    pts = [(r, y) for r, y, p in rows if p["passed"] == passed]
                    if pts:
                        ax.scatter(*zip(*pts), s=28, facecolor=face, edgecolor=color, linewidth=1.2, zorder=3)
                if stat in slo.get(metric, {}):
                    ci = [(r, y, p["latency"][metric]["ci"][stat]) for r, y, p in rows]
                    lo = [y - c[0] if c[0] is not None else 0 for _, y, c in ci]
                    hi = [c[1] - y if c[1] is not None else 0 for _, y, c in ci]
                    ax.errorbar([r for r, _, _ in ci], [y for _, y, _ in ci], yerr=[lo, hi], fmt="none",
                                ecolor=color, elinewidth=0.9, capsize=2.5, zorder=2)
                    ax.axhline(slo[metric][stat], color=color, linestyle=(0, (1, 1.5)), linewidth=1.4,
                               label=f"SLO {stat} ≤ {slo[metric][stat]:g} {METRICS[metric].unit}")
                for p in points:
                    if p["role"] == "confirm" and p["latency"].get(metric, {}).get(stat) is not None:
                        ax.scatter([p["rate"]], [p["latency"][metric][stat]], s=150, marker="*", color=color,
                                   edgecolor="black", linewidth=0.6, zorder=4, label="confirmation run")
            _mark_on_x_axis(ax, failed, "x", FAILED, "run failed")
            _plan_markers(ax, plan)
            _rate_axis(ax, [p["rate"] for p in points] + failed)
            positive = [v for v in values if v > 0]
            if positive and max(positive) > 30 * min(positive):
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(_thousands)
                ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.5)))
                ax.set_ylabel(axis_label(metric) + " (log scale)")
            else:
                ax.set_ylim(bottom=0)
                ax.set_ylabel(axis_label(metric))
            ax.set_title(f"{metric} vs offered rate")
        ax = axes[0]
        ax.scatter([], [], s=28, facecolor="white", edgecolor="black", label="hollow: point missed")
        _shared_legend(fig, axes)

    return _render(4.6, len(metrics), draw)


def throughput_vs_load(plan: dict) -> str | None:
    """Achieved against offered request rate (steady state and whole window) with the ideal y = x and
    the saturation threshold, and output tokens/s against the offered rate."""
    points = sorted((p for p in plan["points"] if p["state"] == "complete"), key=lambda p: p["rate"])
    sweep = [p for p in points if p["role"] == "sweep"]
    if not sweep:
        return None
    ratio = plan["sweep"]["saturation_ratio"]

    def draw(fig: Figure, axes: list[Axes]) -> None:
        req, tok = axes
        top = max(p["rate"] for p in points) * 1.05
        req.plot([0, top], [0, top], color=OTHER, linestyle="--", linewidth=1.0, label="achieved = offered")
        req.plot([0, top], [0, ratio * top], color=MISS, linestyle=":", linewidth=1.2,
                 label=f"saturation threshold ({ratio:g} x offered)")
        for key, color, label in (("achieved_req_s", ACCENT, "achieved, middle 80% of the run"),
                                  ("request_throughput_req_s", INFEASIBLE, "request_throughput_req_s (whole window)")):
            rows = [(p["rate"], p[key]) for p in sweep if p[key] is not None]
            if rows:
                req.plot(*zip(*rows), color=color, marker="o", markersize=4, linewidth=1.2, label=label)
        rows = [(p["rate"], p["output_throughput_tok_s"]) for p in sweep if p["output_throughput_tok_s"] is not None]
        if rows:
            tok.plot(*zip(*rows), color=ACCENT, marker="o", markersize=4, linewidth=1.2)
        req.set_ylabel("achieved rate (req/s)")
        req.set_title("Achieved vs offered request rate")
        tok.set_ylabel(axis_label("output_throughput_tok_s"))
        tok.set_title("Output throughput vs offered rate")
        for ax in axes:
            _plan_markers(ax, plan)
            ax.set_xlim(0, top)
            ax.set_ylim(bottom=0)
            ax.set_xlabel("offered rate per replica (req/s)")
        _shared_legend(fig, axes)

    return _render(4.4, 2, draw)


# harness compare: baseline vs current -----------------------------------------------------------

VERDICT_COLORS = {"regressed": FAILED, "improved": PASS, "unchanged": OTHER, "inconclusive": MISS}
BASELINE_COLOR = "#757575"


def change_forest(rows: list) -> str | None:
    """Each compared metric's change toward worse (%; fractions in percentage points) with its 95% CI,
    coloured by verdict, over a grey band of ± its threshold. `rows`: harness.compare.MetricComparison."""
    rows = [m for m in rows if m.change is not None]
    if not rows:
        return None

    def worse(m, x: float) -> float:
        return 100 * (-x if m.higher_is_better else x)

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        for y, m in enumerate(reversed(rows)):
            ax.fill_betweenx([y - 0.35, y + 0.35], -100 * m.threshold, 100 * m.threshold, color="#eeeeee", linewidth=0)
            lo, hi = sorted((worse(m, m.ci[0]), worse(m, m.ci[1])))
            x = worse(m, m.change)
            color = VERDICT_COLORS[m.verdict]
            ax.errorbar(x, y, xerr=[[x - lo], [hi - x]], fmt="o", color=color, capsize=3, markersize=5)
        ax.axvline(0, color="#424242", linewidth=0.8)
        ax.set_yticks(range(len(rows)), [m.key + ("" if m.gated else " (shown)") for m in reversed(rows)])
        ax.set_ylim(-0.6, len(rows) - 0.4)
        ax.set_xlabel("change toward worse, % (fractions: percentage points); grey: ± threshold")
        ax.set_title("Change per metric with 95% CI (← better · worse →)")
        for verdict, color in VERDICT_COLORS.items():
            ax.plot([], [], "o", color=color, label=verdict)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(0.9 + 0.32 * len(rows), 1, draw)


def cdf_overlay(baseline: list[RequestRecord], current: list[RequestRecord], metrics: list[str]) -> str | None:
    """Empirical CDFs of each distribution metric, baseline (grey) under current (blue), p95 marked."""
    data = [(m, measured_values(baseline, m), measured_values(current, m)) for m in metrics]
    data = [d for d in data if d[1].size or d[2].size]
    if not data:
        return None

    def draw(fig: Figure, axes: list[Axes]) -> None:
        for ax, (metric, base, cur) in zip(axes, data):
            for values, color, label in ((base, BASELINE_COLOR, "baseline"), (cur, ACCENT, "current")):
                if values.size:
                    p95 = float(np.percentile(values, 95))
                    ax.step(values, np.arange(1, values.size + 1) / values.size, where="post", color=color,
                            linewidth=1.4, label=f"{label}: p95 {p95:.3g} (n = {values.size:,})")
                    ax.axvline(p95, color=color, linestyle="--", linewidth=0.9)
            ax.set_xlabel(axis_label(metric))
            ax.set_ylabel("fraction ≤ x")
            ax.set_ylim(0, 1.02)
            ax.set_title(f"{metric}: empirical CDF")
            ax.legend(loc="lower right")
        for ax in axes[len(data):]:
            ax.set_visible(False)

    return _render(3.2, len(metrics), draw)


def output_rate_overlay(baseline: list[RequestRecord], current: list[RequestRecord], bins: int = 40) -> str | None:
    """Output tokens per second of measured requests over each run's window (time from its first
    measured request), baseline (grey) and current (blue): a stall or a slow start shows here."""
    def series(records: list[RequestRecord]) -> tuple[np.ndarray, np.ndarray] | None:
        measured = [r for r in records if r.phase == "measured" and r.origin_ns is not None]
        tokens = np.asarray([t for r in measured if r.ok for t in r.token_ns], dtype=float)
        if tokens.size == 0:
            return None
        start = min(r.origin_ns for r in measured)
        edges = np.linspace(0.0, (tokens.max() - start) / 1e9, bins + 1)
        return edges, np.histogram((tokens - start) / 1e9, edges)[0] / np.diff(edges)

    pair = [series(baseline), series(current)]
    if pair == [None, None]:
        return None

    def draw(fig: Figure, axes: list[Axes]) -> None:
        ax = axes[0]
        for s, color, label in zip(pair, (BASELINE_COLOR, ACCENT), ("baseline", "current")):
            if s is not None:
                ax.stairs(s[1], s[0], color=color, linewidth=1.4, label=label)
        ax.set_xlabel("time since the first measured request (s)")
        ax.set_ylabel("output tokens / s")
        ax.set_title(f"Output token rate over the measured window ({bins} bins per run)")
        ax.set_ylim(bottom=0)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)

    return _render(3.0, 1, draw)

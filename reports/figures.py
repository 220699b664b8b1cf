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
from typing import Callable

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from harness.config import parse_objective
from harness.metrics import METRICS, metric_value, request_values, summarize
from harness.records import RequestRecord
from harness.summary import StudySummary

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


def _render(height_in: float, ncols: int, draw: Callable[[Figure, list[Axes]], None]) -> str:
    """Create a figure with `ncols` axes, let `draw` fill it, and return it as an SVG data URI."""
    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(WIDTH_IN, height_in), layout="constrained")
        FigureCanvasAgg(fig)
        axes = list(fig.subplots(1, ncols, squeeze=False)[0])
        draw(fig, axes)
        for ax in axes:
            for axis, scale in ((ax.xaxis, ax.get_xscale()), (ax.yaxis, ax.get_yscale())):
                if scale == "linear":
                    axis.set_major_formatter(_thousands)
        buf = io.BytesIO()
        fig.savefig(buf, format="svg", metadata={"Date": None})
    return "data:image/svg+xml;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def axis_label(metric: str, statistic: str | None = None) -> str:
    """'ttft_ms p95 (ms)' style label with the metric's unit."""
    name = f"{metric} {statistic}" if statistic else metric
    return f"{name} ({METRICS[metric].unit})"


# (a) objective history ------------------------------------------------------------------------

def objective_history(summary: StudySummary) -> str | None:
    """Objective value by trial number (SLO pass/miss colours), trials without a value marked on
    the x axis by state, and the best-so-far among SLO-passing trials as a step line."""
    if not summary.trials:
        return None
    valued = [t for t in summary.trials if t.state == "complete" and t.value is not None]
    unvalued = [t for t in summary.trials if t.state != "complete" or t.value is None]
    direction, metric, statistic = parse_objective(summary.objective)
    better = max if direction == "maximize" else min

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
        _mark_on_x_axis(ax, others, "o", OTHER, "no value")
        ax.set_xlabel("trial number")
        ax.set_ylabel(axis_label(metric, statistic))
        ax.set_title(f"Objective by trial: {summary.objective}")
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
    """Indices of points not dominated by another with lower-or-equal latency (x) and
    higher-or-equal throughput (y), ordered by latency."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best_y = [], float("-inf")
    for i in order:
        if points[i][1] > best_y:
            front.append(i)
            best_y = points[i][1]
    return front


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
                ax.set_xscale("log")
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
                ax.set_xscale("log")
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

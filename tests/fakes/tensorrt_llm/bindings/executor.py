"""Mirrors the RequestPerfMetrics binding: timing_metrics times are timedeltas on the steady clock
(here time.perf_counter_ns, CLOCK_MONOTONIC like C++ steady_clock on Linux); zero means not yet."""
import datetime as dt
from dataclasses import dataclass, field


@dataclass
class TimingMetrics:
    arrival_time: dt.timedelta = dt.timedelta(0)
    first_scheduled_time: dt.timedelta = dt.timedelta(0)
    first_token_time: dt.timedelta = dt.timedelta(0)
    last_token_time: dt.timedelta = dt.timedelta(0)


@dataclass
class RequestPerfMetrics:
    timing_metrics: TimingMetrics = field(default_factory=TimingMetrics)
    first_iter: int | None = None
    last_iter: int | None = None
    iter: int | None = None

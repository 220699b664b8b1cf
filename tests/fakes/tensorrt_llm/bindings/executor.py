"""Mirrors the RequestPerfMetrics binding: timing_metrics times are timedeltas on the steady clock
(here time.perf_counter_ns, CLOCK_MONOTONIC like C++ steady_clock on Linux); zero means not yet.
kv_cache_metrics counts the request's KV blocks (RequestPerfMetrics.KvCacheMetrics: reused = found in the
block-reuse cache, missed = its context blocks not found)."""
import datetime as dt
from dataclasses import dataclass, field


@dataclass
class TimingMetrics:
    arrival_time: dt.timedelta = dt.timedelta(0)
    first_scheduled_time: dt.timedelta = dt.timedelta(0)
    first_token_time: dt.timedelta = dt.timedelta(0)
    last_token_time: dt.timedelta = dt.timedelta(0)


@dataclass
class KvCacheMetrics:
    num_total_allocated_blocks: int = 0
    num_new_allocated_blocks: int = 0
    num_reused_blocks: int = 0
    num_missed_blocks: int = 0
    kv_cache_hit_rate: float = 0.0


@dataclass
class RequestPerfMetrics:
    timing_metrics: TimingMetrics = field(default_factory=TimingMetrics)
    kv_cache_metrics: KvCacheMetrics = field(default_factory=KvCacheMetrics)
    first_iter: int | None = None
    last_iter: int | None = None
    iter: int | None = None

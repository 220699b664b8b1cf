"""Capacity planning (`harness plan`): how much load one replica serves within the SLOs, and how many
replicas and GPUs a target load needs.

1. Sweep the offered request rate of one config. Every point is a real bench run in its own
   process (`plan/rate-<r>/`: config.yaml, result.json, records.jsonl, engine.log), so a rerun of the
   same command reuses completed points. The sweep is either the rates given, or automatic: start at
   a rate, multiply by `growth` until a point misses (divide while the first one misses), then bisect
   between the highest pass and the lowest miss until the gap is at most `precision` of the pass.
2. A point *passes* when its run met every SLO and the error-rate limit and it was not saturated.
   Saturated: achieved throughput fell below `saturation_ratio` of the offered rate, both taken over
   the middle 80% of the run (see `steady_rates`), so the ramp-up and the drain of a finite run do not
   count. The max rate at SLO is the highest passing rate below the lowest miss.
3. A confirmation run at the max rate with a fresh workload seed (`confirm-rate-<r>/`): if it also
   passes the plan is *validated*, otherwise *NOT validated*.
4. Sizing for a target load: each replica runs at most at (1 - headroom) x max rate, so
   replicas = ceil(target / ((1 - headroom) x max rate)); GPUs = replicas x GPUs per replica (tp x pp);
   cost per hour = GPUs x cost per GPU-hour; cost per million output tokens =
   cost per hour / (target req/s x output tokens per request x 3600) x 1e6.

A point's verdict rests on its run's measured requests only: a p95 from 100 requests has a wide
confidence interval, so near the knee a rerun can flip the verdict. The plan records the request
count and the percentile confidence intervals of every point, and the confirmation run tests the
answer once more with different random traffic.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import yaml

from harness.config import ExperimentConfig, parse_config
from harness.errors import ConfigError
from harness.metrics import gpus_per_replica
from harness.records import RequestRecord, read_records
from harness.store import SCHEMA_VERSION, TrialFiles, read_json, write_json, write_yaml
from harness.trial_process import run_trial_process

PLAN_FILE = "plan.json"
RATE_DIGITS = 4  # rates are rounded to this many significant digits, so point directories have stable names
STEADY_TRIM = 0.1  # steady_rates leaves out this fraction of requests at each end of the run
LATENCY_METRICS = ("ttft_ms", "tpot_ms")  # always in the latency curves, with every other SLO metric


@dataclass(frozen=True)
class SweepSettings:
    """How rates are chosen: `rates` given explicitly, or the automatic search from `start_rate`."""

    rates: tuple[float, ...] | None = None
    start_rate: float | None = None
    growth: float = 2.0
    precision: float = 0.05
    max_points: int = 20
    saturation_ratio: float = 0.9

    def check(self) -> None:
        """ConfigError naming the option when a setting is out of range."""
        if self.rates is not None:
            if not self.rates:
                raise ConfigError("--rates: give at least one rate")
            bad = [r for r in self.rates if not (r > 0 and math.isfinite(r))]
            if bad:
                raise ConfigError(f"--rates: every rate must be a positive number of requests per second, "
                                  f"got {bad[0]:g}")
        if self.start_rate is not None and not (self.start_rate > 0 and math.isfinite(self.start_rate)):
            raise ConfigError(f"--start-rate must be > 0, got {self.start_rate:g}")
        if not self.growth > 1:
            raise ConfigError(f"--growth must be > 1, got {self.growth:g}")
        if not 0 < self.precision < 1:
            raise ConfigError(f"--precision must be between 0 and 1 (a fraction of the rate), got {self.precision:g}")
        if self.max_points < 2:
            raise ConfigError(f"--max-points must be at least 2, got {self.max_points}")
        if not 0 < self.saturation_ratio <= 1:
            raise ConfigError(f"--saturation-ratio must be in (0, 1], got {self.saturation_ratio:g}")


@dataclass(frozen=True)
class Target:
    """The load to size for (request or output-token rate), the headroom and the price of a GPU-hour."""

    req_s: float | None = None
    output_tok_s: float | None = None
    headroom: float = 0.2
    gpu_hour_cost: float | None = None
    gpus_per_replica: int | None = None  # None: tp x pp from the engine config

    def check(self) -> None:
        if self.req_s is not None and self.output_tok_s is not None:
            raise ConfigError("give --target-rate (req/s) or --target-tok-s (output tokens/s), not both")
        for option, value in (("--target-rate", self.req_s), ("--target-tok-s", self.output_tok_s)):
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{option} must be > 0, got {value:g}")
        if not 0 <= self.headroom < 1:
            raise ConfigError(f"--headroom must be in [0, 1) (0.2 keeps each replica at 80% of its max), "
                              f"got {self.headroom:g}")
        if self.gpu_hour_cost is not None and not (self.gpu_hour_cost >= 0 and math.isfinite(self.gpu_hour_cost)):
            raise ConfigError(f"--gpu-hour-cost must be >= 0, got {self.gpu_hour_cost:g}")
        if self.gpus_per_replica is not None and self.gpus_per_replica < 1:
            raise ConfigError(f"--gpus-per-replica must be >= 1, got {self.gpus_per_replica}")

    @property
    def given(self) -> bool:
        return self.req_s is not None or self.output_tok_s is not None


def round_rate(rate: float) -> float:
    return float(f"{rate:.{RATE_DIGITS}g}")


def rate_field(cfg: ExperimentConfig) -> tuple[str, float | None]:
    """The dotted config field that sets the offered request rate, and its value in `cfg`.

    Raises ConfigError for a closed-loop workload: its load is a concurrency, not a rate.
    """
    workload = cfg.workload
    if workload.kind == "trace":
        return "workload.rate", workload.rate
    arrival = workload.arrival
    if arrival.process == "closed":
        raise ConfigError(f"workload.arrival.process: closed loop (concurrency {arrival.concurrency}) has no request "
                          "rate to sweep; harness plan needs an open-loop arrival process (poisson, gamma or "
                          "constant with a rate)")
    return "workload.arrival.rate", arrival.rate


def config_at_rate(cfg: ExperimentConfig, rate: float, seed_shift: int = 0) -> dict:
    """`cfg` as a config dict (search section dropped) offering `rate` req/s; `seed_shift` > 0 moves every
    workload seed by that much (fresh random traffic for a confirmation run)."""
    data = cfg.model_dump(mode="json", exclude={"search"})
    workload = data["workload"]
    if workload["kind"] == "trace":
        workload.update(rate=rate, speedup=1.0)
    else:
        workload["arrival"]["rate"] = rate
    seed = workload.get("seed")
    if seed_shift and isinstance(seed, dict):
        workload["seed"] = {k: v + seed_shift for k, v in seed.items()}
    elif seed_shift and isinstance(seed, int):
        workload["seed"] = seed + seed_shift
    parse_config(data, f"{cfg.name} at {rate:g} req/s")  # what the trial process will load must be valid
    return data


def steady_rates(records: list[RequestRecord]) -> tuple[float | None, float | None]:
    """(offered, achieved) req/s over the middle of the run.

    Offered: scheduled measured requests per second between the STEADY_TRIM and 1 - STEADY_TRIM
    quantiles of their scheduled times; achieved: successful completions per second between the same
    quantiles of their end times. A run that keeps up completes requests as fast as they are scheduled
    (ratio ~1); a saturated one completes them at its capacity. None where fewer than 10 requests count.
    """
    measured = [r for r in records if r.phase == "measured"]

    def rate(times: list[int]) -> float | None:
        if len(times) < 10:
            return None
        t = np.sort(np.asarray(times, dtype=float)) / 1e9
        lo, hi = int(STEADY_TRIM * (len(t) - 1)), int(math.ceil((1 - STEADY_TRIM) * (len(t) - 1)))
        return float((hi - lo) / (t[hi] - t[lo])) if t[hi] > t[lo] else None

    return (rate([r.scheduled_ns for r in measured if r.scheduled_ns is not None]),
            rate([r.end_ns for r in measured if r.ok]))


def summarize_point(rate: float, role: str, directory: str, result: dict | None, records: list[RequestRecord] | None,
                    reason: str | None, saturation_ratio: float, seed: int | dict | None) -> dict:
    """One plan point from its run: `result`/`records` of a completed run, or `reason` why it failed."""
    point = {"rate": rate, "role": role, "dir": directory, "seed": seed, "state": "complete" if result else "failed",
             "reason": reason}
    if result is None:
        return {**point, "passed": False, "verdict": "failed", "why": [f"run failed: {reason}"], "notes": []}
    offered, achieved = steady_rates(records or [])
    ratio = achieved / offered if offered and achieved is not None else None
    saturated = ratio is not None and ratio < saturation_ratio
    why = [f"{c['metric']} {c['statistic']} {_g(c['measured'])} > limit {_g(c['limit'])}"
           for c in result["slo"] if not c["pass"]]
    error_rate = result["scalars"]["error_rate"] or 0.0
    if error_rate > result["max_error_rate"]:
        why.append(f"error rate {error_rate:.1%} > limit {result['max_error_rate']:.1%}")
    if saturated:
        why.append(f"saturated: achieved {_g(achieved)} req/s < {saturation_ratio:g} x offered {_g(offered)} req/s")
    s = result["scalars"]
    distributions = result["distributions"]
    passed = bool(result["slo_pass"]) and not saturated
    trust = result.get("client_trust") or {}
    return {
        **point,
        "simulated": bool(result.get("simulated")),
        "counts": {k: result["counts"][k] for k in ("measured", "completed", "failed")},
        "window_s": result["window"]["duration_s"],
        "offered_req_s": offered, "achieved_req_s": achieved, "throughput_ratio": ratio, "saturated": saturated,
        "request_throughput_req_s": s["request_throughput_req_s"],
        "output_throughput_tok_s": s["output_throughput_tok_s"], "goodput_req_s": s["goodput_req_s"],
        "output_tokens_per_request": (s["output_throughput_tok_s"] / s["request_throughput_req_s"]
                                      if s["request_throughput_req_s"] else None),
        "error_rate": s["error_rate"],
        "latency": {m: {k: distributions[m][k] for k in ("count", "p50", "p95", "p99", "ci")}
                    for m in dict.fromkeys([*LATENCY_METRICS, *(c["metric"] for c in result["slo"])])},
        "slo": result["slo"], "slo_pass": bool(result["slo_pass"]),
        "client_trusted": trust.get("trusted"),
        "notes": ([f"client timing NOT TRUSTED: {'; '.join(trust.get('reasons') or [])}"]
                  if trust.get("trusted") is False else []),
        "passed": passed, "verdict": "pass" if passed else "miss", "why": why,
    }


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3g}"


def max_rate_at_slo(points: list[dict], precision: float | None) -> dict:
    """The highest passing rate below the lowest miss among sweep `points`, the bracket around the knee,
    and passes above the lowest miss (noise or a non-monotone engine; the lower answer is kept)."""
    passes = sorted(p["rate"] for p in points if p["passed"])
    misses = sorted(p["rate"] for p in points if not p["passed"])
    first_miss = misses[0] if misses else None
    below = [r for r in passes if first_miss is None or r < first_miss]
    rate = below[-1] if below else None
    width = (first_miss - rate) / rate if rate is not None and first_miss is not None else None
    if rate is None:
        status = "none_passed"
    elif first_miss is None:
        status = "no_miss"  # a lower bound only: every rate tried passed
    else:
        status = "bracketed"
    reached = width is not None and precision is not None and width <= precision + 1e-9
    return {"rate": rate, "first_miss": first_miss, "bracket_width": width, "status": status,
            "precision": precision, "precision_reached": reached,
            "passes_above_first_miss": [r for r in passes if first_miss is not None and r > first_miss]}


def size_deployment(max_rate: float, output_tokens_per_request: float | None, target: Target,
                    gpus_each: int) -> dict:
    """Replicas, GPUs and cost for `target` when one replica serves `max_rate` req/s within the SLOs
    (the formulas are in the module docstring)."""
    target_req_s = target.req_s
    if target_req_s is None:
        if not output_tokens_per_request:
            raise ConfigError("--target-tok-s: the max-rate point measured no output tokens per request, so a "
                              "token rate cannot be turned into a request rate; give --target-rate")
        target_req_s = target.output_tok_s / output_tokens_per_request
    per_replica_cap = (1 - target.headroom) * max_rate
    replicas = max(1, math.ceil(round(target_req_s / per_replica_cap, 9)))  # round: 2.0000000001 is 2 replicas
    gpus = replicas * gpus_each
    cost_hour = None if target.gpu_hour_cost is None else gpus * target.gpu_hour_cost
    target_tok_s = None if output_tokens_per_request is None else target_req_s * output_tokens_per_request
    cost_per_m = (cost_hour / (target_tok_s * 3600) * 1e6
                  if cost_hour is not None and target_tok_s else None)
    return {"target_req_s": target_req_s, "target_output_tok_s": target_tok_s,
            "target_given_as": "req_s" if target.req_s is not None else "output_tok_s",
            "headroom": target.headroom, "max_rate_req_s": max_rate, "per_replica_cap_req_s": per_replica_cap,
            "replicas": replicas, "operating_rate_req_s": target_req_s / replicas,
            "operating_utilization": target_req_s / replicas / max_rate,
            "gpus_per_replica": gpus_each, "gpus": gpus, "gpu_hour_cost": target.gpu_hour_cost,
            "cost_per_hour": cost_hour, "output_tokens_per_request": output_tokens_per_request,
            "cost_per_million_output_tokens": cost_per_m,
            "formulas": {
                "replicas": "ceil(target_req_s / ((1 - headroom) * max_rate_req_s))",
                "gpus": "replicas * gpus_per_replica (tp * pp)",
                "cost_per_hour": "gpus * gpu_hour_cost",
                "cost_per_million_output_tokens":
                    "cost_per_hour / (target_req_s * output_tokens_per_request * 3600) * 1e6"}}


class Planner:
    """Runs the sweep and the confirmation of one config under `plan_dir`, reusing completed points."""

    def __init__(self, cfg: ExperimentConfig, plan_dir: Path, settings: SweepSettings, timeout_s: float,
                 on_start: Callable[[float, str], None] | None = None,
                 on_point: Callable[[dict, bool], None] | None = None,
                 on_log: Callable[[str], None] | None = None):
        settings.check()
        self.field, config_rate = rate_field(cfg)
        self.start_rate = settings.start_rate or config_rate
        if settings.rates is None and self.start_rate is None:
            raise ConfigError(f"{self.field} is not set: give --start-rate or --rates")
        self.cfg, self.dir, self.settings, self.timeout_s = cfg, plan_dir, settings, timeout_s
        self.on_start, self.on_point, self.on_log = on_start, on_point, on_log
        self.points: list[dict] = []  # in the order they were measured (sweep, then confirmation)
        self.results: dict[str, dict] = {}  # point dir -> result, for completed points

    def measure(self, rate: float, role: str = "sweep") -> dict:
        """The point at `rate`: reused when its directory already holds a result of the same config."""
        seed_shift = 1 if role == "confirm" else 0
        data = config_at_rate(self.cfg, rate, seed_shift)
        name = f"{'confirm-' if role == 'confirm' else ''}rate-{rate:g}"
        out = self.dir / name
        stored = out / TrialFiles.CONFIG
        reused = stored.exists() and (out / TrialFiles.RESULT).exists()
        if reused and yaml.safe_load(stored.read_text()) != data:
            raise ConfigError(f"{stored}: this point was measured with a different config; delete {self.dir} "
                              "or pass another --out to plan the changed config")
        if reused:
            reason = None
        else:
            out.mkdir(parents=True, exist_ok=True)
            for stale in (TrialFiles.RESULT, TrialFiles.FAILURE, TrialFiles.LOG):
                (out / stale).unlink(missing_ok=True)
            write_yaml(stored, data)
            if self.on_start:
                self.on_start(rate, role)
            _, reason = run_trial_process(out, self.timeout_s, self.on_log)
        result = read_json(out / TrialFiles.RESULT)
        records = read_records(out / TrialFiles.RECORDS) if result else None
        point = summarize_point(rate, role, name, result, records, reason, self.settings.saturation_ratio,
                                data["workload"].get("seed"))
        if result:
            self.results[name] = result
        self.points.append(point)
        if self.on_point:
            self.on_point(point, reused)
        return point

    @property
    def sweep_points(self) -> list[dict]:
        return [p for p in self.points if p["role"] == "sweep"]

    def sweep(self) -> dict:
        """Measure the explicit rates, or search automatically; return `max_rate_at_slo` of the sweep."""
        s = self.settings
        if s.rates is not None:
            for rate in sorted({round_rate(r) for r in s.rates}):
                self.measure(rate)
            return max_rate_at_slo(self.sweep_points, None)
        rate, passed, missed = round_rate(self.start_rate), None, None
        while len(self.sweep_points) < s.max_points:
            if self.measure(rate)["passed"]:
                passed = rate
            else:
                missed = rate
            if missed is None:
                rate = round_rate(rate * s.growth)
            elif passed is None:
                rate = round_rate(rate / s.growth)
            elif missed - passed <= s.precision * passed:
                break
            else:
                rate = round_rate((passed + missed) / 2)
                if rate in (passed, missed):  # the bracket is below the rate rounding
                    break
        return max_rate_at_slo(self.sweep_points, s.precision)

    def confirm(self, rate: float) -> dict:
        """Run once more at `rate` with every workload seed moved by one."""
        return self.measure(rate, role="confirm")


def build_plan(cfg: ExperimentConfig, planner: Planner, knee: dict, confirmation: dict | None,
               target: Target, command: str) -> dict:
    """The machine-readable plan (plan.json), from which the capacity report is rendered."""
    at_max = next((p for p in planner.sweep_points if p["rate"] == knee["rate"]), None)
    max_result = planner.results.get(at_max["dir"]) if at_max else None
    any_result = max_result or next(iter(planner.results.values()), None)
    engine_config = (any_result or {}).get("engine", {}).get("config") or cfg.engine.resolve().model_dump(mode="json")
    gpus_each = target.gpus_per_replica or gpus_per_replica(engine_config)
    sizing = None
    if target.given and knee["rate"] is not None:
        sizing = size_deployment(knee["rate"], at_max.get("output_tokens_per_request"), target, gpus_each)
    if confirmation is None:
        validation = {"validated": None, "verdict": "not run",
                      "reason": "no rate met the SLOs, so there is nothing to confirm"}
    else:
        validation = {"validated": confirmation["passed"],
                      "verdict": "validated" if confirmation["passed"] else "NOT validated",
                      "rate": confirmation["rate"], "dir": confirmation["dir"], "seed": confirmation["seed"],
                      "reason": "; ".join(confirmation["why"]) or None}
    s = planner.settings
    return {
        "schema_version": SCHEMA_VERSION, "kind": "harness.capacity_plan", "name": cfg.name, "dir": str(planner.dir),
        "simulated": any(p.get("simulated") for p in planner.points),
        "command": command,
        "config": cfg.model_dump(mode="json", exclude={"search"}),
        "engine": {"kind": cfg.engine.kind, "model": engine_config.get("model"), "config": engine_config},
        "rate_field": planner.field,
        "sweep": {"mode": "explicit" if s.rates is not None else "automatic", "rates": list(s.rates or []),
                  "start_rate": None if s.rates is not None else round_rate(planner.start_rate),
                  "growth": s.growth, "precision": s.precision, "max_points": s.max_points,
                  "saturation_ratio": s.saturation_ratio, "steady_trim": STEADY_TRIM},
        "points": planner.points,
        "max_rate": knee,
        "validation": validation,
        "target": {"req_s": target.req_s, "output_tok_s": target.output_tok_s, "headroom": target.headroom,
                   "gpu_hour_cost": target.gpu_hour_cost, "gpus_per_replica": gpus_each},
        "sizing": sizing,
        "fingerprint": (any_result or {}).get("fingerprint"),
    }


def write_plan(plan_dir: Path, plan: dict) -> Path:
    path = plan_dir / PLAN_FILE
    write_json(path, plan)
    return path

"""Benchmark: how often does `harness compare` cry wolf, and does it catch a real 5% throughput regression?

Targets (issue 7): A/A false-alarm rate <= 1% (two runs of the same config, the gate reports a
regression), while a 5% throughput regression is caught. All runs are real runs of the SIMULATED mock
engine (`harness.trial.measure` in worker processes, the measurement `harness bench` makes, without its
trial subprocess): its numbers describe a service model, not hardware, and run-to-run noise on a GPU differs.

- A/A: `--pairs` pairs of runs of one config, each run with its own workload seed (lengths, prompt
  content), so the two runs of a pair are independent measurements; a false alarm is a pair the gate
  fails (any gated metric `regressed`, the exit code 1 of `harness compare`).
- Detection: `--detection-pairs` pairs of a baseline run and a run of the same engine slowed so its
  service rate drops by `--slowdown` (every step-time parameter divided by 1 - slowdown).
- Each iteration runs its baseline, A/A partner and slowed run back to back, so that drifting machine
  load hits both sides of a pair; `--jobs` iterations run at a time, one process each.
- For reference, the share of A/A pairs in which Mann-Whitney U on one latency metric's per-request
  values alone says p < alpha: the test that assumes independent requests.

Rates come with exact one-sided 95% (Clopper-Pearson) bounds: upper for false alarms, lower for detection.

    python benchmarks/compare_calibration.py [--pairs 200] [--detection-pairs 100] [--seed 0] [--jobs 2]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import io
import multiprocessing
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

from scipy.stats import binomtest, mannwhitneyu

from harness.compare import Run, Thresholds, compare
from harness.config import ExperimentConfig, parse_config
from harness.metrics import request_values
from harness.records import read_records
from harness.runner import run_event_loop
from harness.store import TrialFiles
from harness.trial import measure

ENGINE = {"step_ms": 0.5, "decode_ms_per_seq": 0.05, "prefill_ms_per_token": 0.0025}
EXPERIMENT = {
    "name": "compare-calibration",
    "engine": {"kind": "mock", "params": ENGINE},
    "workload": {"kind": "synthetic", "requests": 162, "warmup_requests": 8, "cooldown_requests": 4,
                 "input_tokens": {"dist": "lognormal", "mean": 128, "std": 64, "min": 16, "max": 512},
                 "output_tokens": {"dist": "uniform", "low": 8, "high": 24},
                 "arrival": {"process": "closed", "concurrency": 4}},
    "slo": {"ttft_ms": {"p95": 10}, "tpot_ms": {"p95": 2}},
    "runner": {"preflight": False},
}
MANN_WHITNEY_METRICS = ("ttft_ms", "tpot_ms", "e2e_ms")


def experiment(seed: int, slowdown: float = 0.0) -> ExperimentConfig:
    data = {**EXPERIMENT, "workload": {**EXPERIMENT["workload"], "seed": seed},
            "engine": {"kind": "mock", "params": {k: v / (1 - slowdown) for k, v in ENGINE.items()}}}
    return parse_config(data, "compare_calibration")


def bench(cfg: ExperimentConfig, out: Path) -> Run:
    """One real mock-engine run, as `harness bench` measures it (its log lines are dropped)."""
    out.mkdir(parents=True)
    with contextlib.redirect_stdout(io.StringIO()):
        result = run_event_loop(measure(cfg, out))
    return Run(out, result, read_records(out / TrialFiles.RECORDS))


def rate(hits: int, n: int, bound: str) -> str:
    """'3/200 = 1.5% (95% upper bound 3.9%)': exact one-sided Clopper-Pearson bound ('upper' or 'lower')."""
    lo, hi = binomtest(hits, n, alternative="less" if bound == "upper" else "greater").proportion_ci(0.95, "exact")
    return f"{hits}/{n} = {hits / n:.1%} (95% {bound} bound {hi if bound == 'upper' else lo:.1%})"


def measured(run: Run, metric: str) -> list[float]:
    return [v for r in run.records if r.phase == "measured" for v in request_values(metric, r)]


def pair(i: int, args: argparse.Namespace) -> dict:
    """Iteration i: a baseline run, then an A/A partner (i < pairs) and a slowed run (i < detection pairs),
    each with its own workload seed; what the gate said about each pair."""
    thresholds, seed, out = Thresholds(), args.seed + 3 * i, {}
    with tempfile.TemporaryDirectory() as tmp:
        base = bench(experiment(seed), Path(tmp) / "base")
        if i < args.pairs:
            other = bench(experiment(seed + 1), Path(tmp) / "other")
            c = compare(base, other, thresholds)
            out["aa"] = {"alarm": bool(c.regressed), "verdicts": {m.key: m.verdict for m in c.metrics},
                         "mann_whitney": {metric: bool(mannwhitneyu(measured(base, metric), measured(other, metric))
                                                       .pvalue < thresholds.alpha) for metric in MANN_WHITNEY_METRICS}}
        if i < args.detection_pairs:
            c = compare(base, bench(experiment(seed + 2, args.slowdown), Path(tmp) / "slowed"), thresholds)
            throughput = next(m for m in c.metrics if m.key == "output_throughput_tok_s")
            out["slowed"] = {"caught": bool(c.regressed), "throughput": throughput.verdict == "regressed",
                             "change": throughput.change}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=200, help="A/A pairs")
    parser.add_argument("--detection-pairs", type=int, default=100, help="baseline vs slowed pairs")
    parser.add_argument("--slowdown", type=float, default=0.05, help="throughput regression to detect")
    parser.add_argument("--seed", type=int, default=0, help="workload seed of the first run (each run has its own)")
    parser.add_argument("--jobs", type=int, default=2, help="pairs measured at the same time, one process each")
    args = parser.parse_args()
    thresholds, started = Thresholds(), time.perf_counter()
    iterations = max(args.pairs, args.detection_pairs)
    print(f"SIMULATED mock engine {ENGINE}, closed loop (concurrency "
          f"{EXPERIMENT['workload']['arrival']['concurrency']}), {EXPERIMENT['workload']['requests']} requests per "
          f"run; {args.jobs} runs at a time; gate: alpha {thresholds.alpha}, thresholds {thresholds.gate}", flush=True)
    results = []
    with multiprocessing.Pool(args.jobs) as pool:
        for n, result in enumerate(pool.imap_unordered(functools.partial(pair, args=args), range(iterations)), 1):
            results.append(result)
            if n % 25 == 0:
                print(f"  {n}/{iterations} iterations, {time.perf_counter() - started:.0f} s", flush=True)
    aa = [r["aa"] for r in results if "aa" in r]
    slowed = [r["slowed"] for r in results if "slowed" in r]
    print(f"\n{len(aa)} A/A pairs and {len(slowed)} pairs with the engine {args.slowdown:.0%} slower: "
          f"{iterations + len(aa) + len(slowed)} SIMULATED runs in {time.perf_counter() - started:.0f} s")
    print(f"A/A false alarms (gate failed, target <= 1%): {rate(sum(r['alarm'] for r in aa), len(aa), 'upper')}")
    if slowed:
        caught = rate(sum(r["caught"] for r in slowed), len(slowed), "lower")
        by_throughput = rate(sum(r["throughput"] for r in slowed), len(slowed), "lower")
        print(f"{args.slowdown:.0%} regression caught (gate failed): {caught}")
        print(f"  by output_throughput_tok_s itself: {by_throughput}; "
              f"its measured change: mean {statistics.mean(r['change'] for r in slowed):+.2%}")
    print("A/A verdicts per metric:")
    for key in aa[0]["verdicts"] if aa else ():
        counts = Counter(r["verdicts"][key] for r in aa)
        print(f"  {key}: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
    print(f"for reference, Mann-Whitney U alone at p < {thresholds.alpha} in A/A pairs (assumes independent requests):")
    for metric in MANN_WHITNEY_METRICS:
        print(f"  {metric}: {rate(sum(r['mann_whitney'][metric] for r in aa), len(aa), 'lower')}")

if __name__ == "__main__":
    main()

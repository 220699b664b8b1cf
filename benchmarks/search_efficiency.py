"""Benchmark: how many measurements does the default search need to get within 5% of the best config?

For each engine (`--engines`), every point of a discrete search space (benchmarks/search_efficiency.yaml:
the engine's default space cut to a few values per knob) is measured once by the real tuner with the grid
sampler, one trial subprocess per point, in `<cache-dir>/<engine>-<hash of config and space>/`. That is
an ordinary resumable study: a rerun measures only what is missing, nothing once the grid is complete.
The grid optimum is the best measured objective among the points that met every SLO.

Then the default search (TPE, set up by `harness.tuner.Tuner` exactly as `harness tune` does),
random search and the grid (in its seeded order) each run over several seeds against those
measurements: the tuner asks for points as it would, and each point's result from the grid run is
told back (a tabular benchmark: every strategy sees the same numbers and differs only in which points
it asks for; a point asked twice costs two measurements; points rejected before launch cost nothing,
as in the tuner). Each run stops when a point that met every SLO is within 5% of the grid optimum, or
after the budget (half the grid's measurements).

Printed per engine, as a Markdown table: how many seeds got within 5% within the budget; the trials
that took (median and 90th percentile over seeds, nearest rank; "> budget" when too few seeds got
there); the median as a share of the grid's measurements; the engine-minutes (measured durations of
the trials asked for, trial-process start included; median); and the target: within 5% of the
optimum in at most a quarter of the grid's measurements, for the default search's median.

    python benchmarks/search_efficiency.py [--engines mock,transformers] [--quick] [--seeds 10]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import yaml

from harness.config import ExperimentConfig, parse_config
from harness.store import RunDir, read_json, write_yaml
from harness.objectives import objective_values, tell_result, tell_unmeasured, trial_state
from harness.trial_process import ctrl_c_latch
from harness.tuner import MAX_REJECTED_IN_A_ROW, TrialOutcome, Tuner
from reports.html import slo_text
from search_spaces import load_space

SPEC = Path(__file__).with_suffix(".yaml")
WITHIN = 0.05  # "within 5% of the grid optimum"
TARGET_SHARE = 0.25  # ... in at most a quarter of the grid's measurements
BUDGET_SHARE = 0.5  # each search may spend half the grid's measurements
STRATEGIES = (("tpe", "default search (TPE)"), ("random", "random"), ("grid", "grid (seeded order)"))


@dataclass(frozen=True)
class Measurement:
    """One grid point as the grid run measured it."""

    state: str  # complete | failed | infeasible (at launch) | rejected (before launch: costs nothing)
    result: dict | None
    duration_s: float
    reason: str | None = None  # why it failed or was infeasible


@dataclass
class Grid:
    """Every point of a space measured once: the table the searches are replayed against."""

    cfg: ExperimentConfig
    run_dir: RunDir
    points: dict[tuple, Measurement]
    optimum: float  # best primary objective value among the points that met every SLO

    @property
    def measured(self) -> int:
        """Points that cost a measurement (all but those rejected before launch)."""
        return sum(m.state != "rejected" for m in self.points.values())

    def good_enough(self, m: Measurement) -> bool:
        """`m` met every SLO and its objective is within WITHIN of the optimum."""
        values = objective_values(m.result, self.cfg.search) if m.state == "complete" else None
        if values is None or not m.result["slo_pass"]:
            return False
        sign = self.cfg.search.objectives[0].sign
        return sign * values[0] >= sign * self.optimum - WITHIN * abs(self.optimum)


def point_key(params: dict) -> tuple:
    """A grid point's identity: params sorted by name, floats rounded off their binary noise."""
    return tuple(sorted((k, round(v, 9) if isinstance(v, float) else v) for k, v in params.items()))


def measure_grid(name: str, experiment: dict, space: dict, cache_dir: Path) -> Grid:
    """Measure every point of `space` once with the real tuner (resuming a previous run of the same
    experiment), then read the measurements back."""
    digest = hashlib.sha256(json.dumps([experiment["config"], space], sort_keys=True).encode()).hexdigest()[:10]
    run_dir = RunDir(cache_dir / f"{name}-{digest}")
    write_yaml(run_dir.path / "space.yaml", space)
    size = math.prod(len(values) for values in load_space("space.yaml", base_dir=run_dir.path).grid().values())
    data = json.loads(json.dumps(experiment["config"]))
    data["search"].update(space="space.yaml", sampler="grid", trials=size, seed=0)
    cfg = parse_config(data, f"{SPEC}: {name}.config")
    tuner = Tuner(cfg, run_dir, config_dir=run_dir.path)
    done = len({point_key(t.params) for t in tuner.study.get_trials(deepcopy=False)
                if t.state.is_finished() and not t.user_attrs.get("interrupted")})
    if done < size:
        print(f"{name}: measuring the {size}-point grid in {run_dir.path} ({done} done before)",
              file=sys.stderr, flush=True)

        def on_end(o: TrialOutcome) -> None:
            shown = f"{o.value:.4g}" if o.value is not None else o.reason
            print(f"  {tuner.finished()}/{size} trial {o.number} {o.state}: {shown} ({o.duration_s:.0f} s) {o.params}",
                  file=sys.stderr, flush=True)

        with ctrl_c_latch():
            tuner.run(on_end=on_end)
    return read_grid(cfg, run_dir)


def read_grid(cfg: ExperimentConfig, run_dir: RunDir) -> Grid:
    """The measurements of a finished grid study (an interrupted attempt at a point is ignored: it was rerun)."""
    study = optuna.load_study(study_name=cfg.name, storage=run_dir.storage_url())
    points = {}
    for t in study.get_trials(deepcopy=False):
        state = trial_state(t)
        if state not in ("complete", "failed", "infeasible"):  # an interrupted attempt was rerun
            continue
        state = "rejected" if t.user_attrs.get("rejected_before_launch") else state
        duration = (t.datetime_complete - t.datetime_start).total_seconds() if state != "rejected" else 0.0
        result = read_json(run_dir.trial_dir(t.number) / "result.json") if state == "complete" else None
        points[point_key(t.params)] = Measurement(state, result, duration, t.user_attrs.get("reason"))
    sign = cfg.search.objectives[0].sign
    feasible = [objective_values(m.result, cfg.search)[0] for m in points.values()
                if m.state == "complete" and m.result["slo_pass"] and objective_values(m.result, cfg.search)]
    if not feasible:
        raise SystemExit(f"{run_dir.path}: no grid point met every SLO: nothing to search for")
    return Grid(cfg, run_dir, points, max(feasible, key=lambda v: sign * v))


def replay(grid: Grid, sampler: str, seed: int, budget: int, workdir: Path) -> tuple[int, float, bool]:
    """Run the tuner's `sampler` with `seed` against the grid's measurements until a point is good enough or
    `budget` measurements are spent: (trials, engine-seconds, reached)."""
    search = grid.cfg.search.model_copy(update={"sampler": sampler, "seed": seed, "trials": budget})
    cfg = grid.cfg.model_copy(update={"search": search})
    tuner = Tuner(cfg, RunDir(workdir / f"{sampler}-{seed}"), config_dir=grid.run_dir.path,
                  storage="sqlite:///:memory:")
    trials, seconds, rejected_in_a_row = 0, 0.0, 0
    while trials < budget and rejected_in_a_row < MAX_REJECTED_IN_A_ROW:
        trial = tuner.study.ask()
        m = grid.points[point_key(tuner.space.suggest(trial))]
        if m.state == "rejected":
            trial.set_user_attr("rejected_before_launch", True)
            tell_unmeasured(tuner.study, trial, "infeasible", m.reason)
            rejected_in_a_row += 1
            continue
        rejected_in_a_row = 0
        trials, seconds = trials + 1, seconds + m.duration_s
        if m.state == "complete":
            tell_result(tuner.study, trial, m.result, search)
        else:
            tell_unmeasured(tuner.study, trial, m.state, m.reason)
        if grid.good_enough(m):
            return trials, seconds, True
    return trials, seconds, False


def over_seeds(values: list[float], reached: list[bool], q: float) -> float:
    """The q-quantile over seeds (nearest rank: one of the seeds' values), a seed that never got there
    counting as infinite."""
    return float(np.quantile([v if r else math.inf for v, r in zip(values, reached)], q, method="inverted_cdf"))


def shown(value: float, beyond: str, fmt: str = "g") -> str:
    """A figure over seeds, or `beyond` ('> 63') when too many seeds never got there for it to exist."""
    return format(value, fmt) if math.isfinite(value) else beyond


def report(name: str, grid: Grid, seeds: int, simulated: bool) -> None:
    """Run every strategy over `seeds` seeds and print the Markdown table and the target line."""
    n = grid.measured
    budget = max(math.ceil(n * BUDGET_SHARE), 1)
    objective = grid.cfg.search.objectives[0]
    near = sum(grid.good_enough(m) for m in grid.points.values())
    minutes = sum(m.duration_s for m in grid.points.values()) / 60
    label = " (SIMULATED engine: a service model, not hardware)" if simulated else ""
    failed = [m.reason for m in grid.points.values() if m.state == "failed"]
    print(f"\n### {name}{label}\n")
    print(f"{objective.expression} under SLOs {slo_text(grid.cfg.model_dump())}; grid: {len(grid.points)} points, "
          f"{n} measured "
          f"({len(grid.points) - n} rejected before launch) in {minutes:.1f} engine-minutes; optimum "
          f"{grid.optimum:.4g} {objective.unit}; {near} point(s) within {WITHIN:.0%} of it. Budget per search: "
          f"{budget} trials; {seeds} seeds.\n")
    if failed:  # real data (an OOM, a timeout), or a broken run: delete the cache to measure again
        print(f"{len(failed)} grid point(s) failed, e.g.: {failed[0]}\n")
    print(f"| search | seeds within {WITHIN:.0%} | trials to get there: median | 90th pct | median / grid's {n} "
          f"| engine-minutes: median |")
    print("|---|---|---|---|---|---|")
    medians = {}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler, title in STRATEGIES:
            cap = n if sampler == "grid" else budget
            runs = [replay(grid, sampler, seed, cap, Path(tmp)) for seed in range(seeds)]
            reached = [r for _, _, r in runs]
            trials = [t for t, _, _ in runs]
            medians[sampler] = median = over_seeds(trials, reached, 0.5)
            minutes = over_seeds([s / 60 for _, s, _ in runs], reached, 0.5)
            beyond = f"> {cap}"
            print(f"| {title} | {sum(reached)} of {seeds} | {shown(median, beyond)} | "
                  f"{shown(over_seeds(trials, reached, 0.9), beyond)} | {shown(median / n, f'> {cap / n:.0%}', '.0%')} "
                  f"| {shown(minutes, '—', '.1f')} |")
    limit = n * TARGET_SHARE
    print(f"\ntarget: within {WITHIN:.0%} of the optimum in <= 1/4 of the grid's measurements (<= {limit:g} trials): "
          f"default search median {shown(medians['tpe'], f'> {budget}')} -> "
          f"{'met' if medians['tpe'] <= limit else 'NOT MET'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engines", default="mock,transformers", help="comma-separated: mock, transformers")
    parser.add_argument("--quick", action="store_true", help="the small transformers grid and 10 seeds")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per search (default 30; --quick 10)")
    parser.add_argument("--cache-dir", type=Path, default=Path("runs/search-efficiency"),
                        help="where the grid studies are kept (reruns reuse them: delete one to measure it again, "
                             "e.g. after changing the engine)")
    args = parser.parse_args()
    spec = yaml.safe_load(SPEC.read_text())
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in engines if e not in spec]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; {SPEC.name} has {', '.join(spec)}")
    seeds = args.seeds or (10 if args.quick else 30)
    for name in engines:
        experiment = spec[name]
        space = experiment.get("quick_space", experiment["space"]) if args.quick else experiment["space"]
        grid = measure_grid(name, experiment, space, args.cache_dir)
        report(name, grid, seeds, experiment.get("simulated", False))


if __name__ == "__main__":
    main()

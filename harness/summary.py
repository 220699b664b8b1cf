"""A finished (or partial) study read back for reports: trials, their results, and the chosen one.

Choosing: among completed trials that pass every SLO (and the error-rate limit), the best
objective value wins; a tie goes to the lower trial number. When none passes, nothing is
recommended and the closest miss (smallest total relative SLO excess) is named instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from harness.config import parse_objective
from harness.store import RunDir, TrialFiles, read_json
from harness.tuner import constraint_violations

_STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.PRUNED: "infeasible",
           optuna.trial.TrialState.FAIL: "failed", optuna.trial.TrialState.RUNNING: "running",
           optuna.trial.TrialState.WAITING: "queued"}


@dataclass
class TrialRow:
    number: int
    state: str  # complete | failed | infeasible | interrupted | running | queued
    params: dict
    value: float | None
    reason: str | None
    duration_s: float | None
    dir: Path
    result: dict | None = None

    @property
    def slo_pass(self) -> bool:
        return bool(self.result and self.result["slo_pass"])

    @property
    def slo_excess(self) -> float:
        """Sum of relative SLO overshoots (0 when every SLO is met)."""
        return sum(max(v, 0.0) for v in constraint_violations(self.result).values()) if self.result else float("inf")


@dataclass
class StudySummary:
    name: str
    objective: str
    direction: str  # maximize | minimize
    metric: str
    config: dict
    space: str
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    closest_miss: TrialRow | None = None

    @property
    def completed(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def simulated(self) -> bool:
        return any(t.result and t.result.get("simulated") for t in self.trials)


def load_study(run_dir: RunDir, storage: str | None = None) -> StudySummary:
    """Read the study in `run_dir` (or `storage`) and each trial's result.json."""
    study = _load(run_dir, storage)
    config = study.user_attrs["config"]
    objective = config["search"]["objective"]
    direction, metric, _ = parse_objective(objective)
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = "interrupted" if t.user_attrs.get("interrupted") else _STATES.get(t.state, t.state.name.lower())
        tdir = run_dir.trial_dir(t.number)
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        rows.append(TrialRow(t.number, state, dict(t.params), t.value, t.user_attrs.get("reason"), duration, tdir,
                             read_json(tdir / TrialFiles.RESULT) if state == "complete" else None))
    summary = StudySummary(name=config["name"], objective=objective, direction=direction, metric=metric,
                           config=config, space=config["search"]["space"], trials=rows)
    sign = 1 if direction == "maximize" else -1
    passing = [t for t in summary.completed if t.slo_pass]
    if passing:
        summary.best = max(passing, key=lambda t: (sign * t.value, -t.number))
    elif summary.completed:
        summary.closest_miss = min(summary.completed, key=lambda t: (t.slo_excess, -sign * t.value, t.number))
    return summary


def _load(run_dir: RunDir, storage: str | None) -> optuna.Study:
    url = storage or run_dir.storage_url()
    names = optuna.get_all_study_names(storage=url)
    if len(names) != 1:
        raise ValueError(f"{url}: expected one study, found {len(names)}: {names}")
    return optuna.load_study(study_name=names[0], storage=url)

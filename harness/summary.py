"""A finished (or partial) study read back for reports: trials, their results, and the chosen one.

Choosing: among completed trials that pass every SLO (and the error-rate limit), those whose
objective is within `TIE_TOLERANCE` of the best value are treated as tied (measurement noise is
larger than that), and of those the one with the most SLO headroom (largest smallest margin) wins,
then the lower trial number. When none passes, nothing is recommended and the closest miss
(smallest total relative SLO excess) is named instead.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import optuna

from harness.config import parse_objective
from harness.errors import ConfigError
from harness.store import RunDir, TrialFiles, read_json
from harness.tuner import constraint_violations

TIE_TOLERANCE = 0.01

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
    warm_start: str | None = None  # where a queued first point came from (see Tuner._enqueue_warm_start)

    @property
    def slo_pass(self) -> bool:
        return bool(self.result and self.result["slo_pass"])

    @property
    def slo_headroom(self) -> float:
        """The smallest relative SLO margin (0 when the config has no SLO)."""
        margins = [c["margin"] for c in self.result["slo"] if c["margin"] is not None] if self.result else []
        return min(margins, default=0.0)

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
    choice: str = ""  # one sentence: why `best` (or the closest miss) was chosen
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
                             read_json(tdir / TrialFiles.RESULT) if state == "complete" else None,
                             t.user_attrs.get("warm_start")))
    summary = StudySummary(name=config["name"], objective=objective, direction=direction, metric=metric,
                           config=config, space=config["search"]["space"], trials=rows)
    choose(summary)
    return summary


def choose(summary: StudySummary) -> None:
    """Set `best`, `choice` and `closest_miss` on `summary` by the rule in the module docstring."""
    sign = 1 if summary.direction == "maximize" else -1
    metric = summary.metric
    passing = [t for t in summary.completed if t.slo_pass]
    if passing:
        top = max(sign * t.value for t in passing)
        tied = [t for t in passing if sign * t.value >= top - TIE_TOLERANCE * abs(top)]
        summary.best = max(tied, key=lambda t: (t.slo_headroom, -t.number))
        summary.choice = (
            f"it has the {'highest' if sign > 0 else 'lowest'} {metric} of the {len(passing)} trials that met every SLO"
            if len(tied) == 1 else
            f"{len(tied)} of the {len(passing)} trials that met every SLO are within {TIE_TOLERANCE:.0%} of the best "
            f"{metric} (a tie within measurement noise); of those it has the most SLO headroom "
            f"(smallest margin {summary.best.slo_headroom:.1%})")
    elif summary.completed:
        summary.closest_miss = min(summary.completed, key=lambda t: (t.slo_excess, -sign * t.value, t.number))
        summary.choice = (f"no trial met every SLO; trial {summary.closest_miss.number} overshoots them least "
                          f"(total relative excess {summary.closest_miss.slo_excess:.1%})")


def _load(run_dir: RunDir, storage: str | None) -> optuna.Study:
    url = storage or run_dir.storage_url()
    names = optuna.get_all_study_names(storage=url)
    if len(names) != 1:
        raise ConfigError(f"{url}: expected one study, found {len(names)}: {names}")
    return optuna.load_study(study_name=names[0], storage=url)

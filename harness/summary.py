"""A finished (or partial) study read back for reports: trials, their results, and the chosen one.

Choosing (`choose`): only completed trials that pass every SLO (and the error-rate limit) are
candidates; with several objectives, only those on their Pareto front (no other passing trial is at
least as good on every objective and better on one). Then, objective by objective in the order the
config lists them, the candidates within `TIE_TOLERANCE` of the best value stay (measurement noise is
larger than that; one objective: those tied with the best); when more than one is left after the last
objective, the one with the most SLO headroom (largest smallest margin) wins, then the lower trial
number. So the primary (first) objective decides unless it is a tie within noise. When no trial
passes, nothing is recommended and the closest miss (smallest total relative SLO excess) is named.

With repeat measurements (`search.repeats`), only the configs measured again are candidates: each
decides by the mean of its measurements' objective values, meets the SLOs only if every measurement
did, and has the smallest headroom of its measurements.

The runner-up is the best other passing trial on the primary objective, and `runner_up_confidence`
says how sure it is that the chosen trial beats it there (a bootstrap over the runs' requests).
`param_importance` says which knobs set the best trials apart (Optuna's PED-ANOVA).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import optuna
import sqlalchemy

from harness.config import Objective, parse_objectives
from harness.errors import ConfigError
from harness.metrics import COST_METRICS, METRICS, SloLimit, cost_factor, request_meets_slo, request_values
from harness.records import RequestRecord, read_records
from harness.store import RunDir, TrialFiles, read_json
from harness.objectives import PROBE_STEP, constraint_violations, trial_state

TIE_TOLERANCE = 0.01
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0

_FINISHED = ("complete", "failed", "infeasible", "pruned")


@dataclass
class TrialRow:
    number: int
    state: str  # complete | failed | infeasible | pruned (after its probe) | interrupted | running | queued
    params: dict
    values: list[float] | None  # complete: every objective's value, primary first
    reason: str | None
    duration_s: float | None
    dir: Path
    result: dict | None = None
    warm_start: str | None = None  # where a queued first point came from (see Tuner._enqueue_warm_start)
    repeat_of: int | None = None  # a repeat measurement of that trial's config (`search.repeats`)
    repeats: list[TrialRow] = field(default_factory=list)  # this trial's finished repeat measurements
    out_of_memory: bool = False  # failed with an out-of-memory error (its region is not launched again)
    probe_value: float | None = None  # the primary objective on its probe (`search.probe`); NaN: undefined
    engine_change: str | None = None  # rebuild | restart: what starting its engine took (Tuner._engine_change)

    @property
    def value(self) -> float | None:
        """The primary (first) objective's value."""
        return self.values[0] if self.values else None

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

    @property
    def measurements(self) -> list[TrialRow]:
        """This config's finished measurements: this trial and its repeats."""
        return [self, *self.repeats]

    @property
    def mean_values(self) -> list[float] | None:
        """Each objective's mean over the completed measurements (without repeats: `values`)."""
        runs = [m.values for m in self.measurements if m.values]
        return [float(v) for v in np.mean(runs, axis=0)] if runs else None

    @property
    def passes_every_run(self) -> bool:
        """Every measurement completed and met every SLO (without repeats: `slo_pass`)."""
        return all(m.state == "complete" and m.slo_pass for m in self.measurements)

    @property
    def worst_headroom(self) -> float:
        """The smallest `slo_headroom` over the measurements."""
        return min(m.slo_headroom for m in self.measurements)

    @property
    def worst_excess(self) -> float:
        """The largest `slo_excess` over the measurements (inf when one did not complete)."""
        return max(m.slo_excess for m in self.measurements)


@dataclass(frozen=True)
class Confidence:
    """How sure it is that the chosen trial beats the runner-up on the primary objective."""

    runner_up: int  # its trial number
    probability: float | None  # None when it could not be computed (`method` says why)
    method: str


@dataclass(frozen=True)
class ParamImportance:
    """Which knobs set the best trials apart (`param_importance`)."""

    shares: dict[str, float]  # knob -> its share of the summed importance, largest first; empty when not computed
    trials: int  # completed trials it rests on
    top: int  # how many of them count as the best (IMPORTANCE_TOP_QUANTILE rounded up, at least IMPORTANCE_MIN_TOP)
    reason: str | None = None  # why it was not computed


@dataclass
class StudySummary:
    name: str
    objectives: list[Objective]  # primary first
    config: dict
    space: str
    trials: list[TrialRow] = field(default_factory=list)
    best: TrialRow | None = None
    choice: str = ""  # one sentence: why `best` (or the closest miss) was chosen
    closest_miss: TrialRow | None = None
    front: list[TrialRow] = field(default_factory=list)  # several objectives: the SLO-passing Pareto front
    runner_up: TrialRow | None = None  # the best other SLO-passing trial on the primary objective
    confidence: Confidence | None = None
    importance: ParamImportance | None = None
    command: str | None = None  # the `harness tune` command that last ran the study (None: not recorded)
    run_dir: Path | None = None
    space_narrowed: list[str] = field(default_factory=list)  # params the machine's GPU count narrowed (for_gpus)

    @property
    def objective(self) -> str:
        """The primary objective's expression, e.g. 'maximize goodput_req_s'."""
        return self.objectives[0].expression

    @property
    def direction(self) -> str:
        return self.objectives[0].direction

    @property
    def metric(self) -> str:
        return self.objectives[0].metric

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def completed(self) -> list[TrialRow]:
        return [t for t in self.trials if t.state == "complete"]

    @property
    def simulated(self) -> bool:
        return any(t.result and t.result.get("simulated") for t in self.trials)

    def engine_starts(self) -> dict[str, list[float]]:
        """Measured engine start times (result.json `engine_start_s`) of the completed trials, by what starting
        took: {'rebuild': [...], 'restart': [...]}; empty when the engine builds nothing."""
        starts: dict[str, list[float]] = {}
        for t in self.completed:
            if t.engine_change:
                starts.setdefault(t.engine_change, []).append(t.result["engine_start_s"])
        return starts


def load_study(run_dir: RunDir, storage: str | None = None, study_name: str | None = None) -> StudySummary:
    """Read the study in `run_dir` (or `storage`; `study_name` where it holds several) and each trial's result.json."""
    study = _load(run_dir, storage, study_name)
    config = study.user_attrs["config"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        state = trial_state(t)
        tdir = run_dir.trial_dir(t.number)
        duration = (t.datetime_complete - t.datetime_start).total_seconds() \
            if t.datetime_complete and t.datetime_start else None
        values = list(t.values) if t.values and state == "complete" else None  # Optuna gives a pruned one its probe
        rows.append(TrialRow(t.number, state, dict(t.params), values,
                             t.user_attrs.get("reason"), duration, tdir,
                             read_json(tdir / TrialFiles.RESULT) if state == "complete" else None,
                             t.user_attrs.get("warm_start"), repeat_of=t.user_attrs.get("repeat_of"),
                             out_of_memory=bool(t.user_attrs.get("out_of_memory")),
                             probe_value=t.intermediate_values.get(PROBE_STEP),
                             engine_change=t.user_attrs.get("engine_change")))
    by_number = {row.number: row for row in rows}
    for row in rows:
        if row.repeat_of in by_number and row.state in _FINISHED:
            by_number[row.repeat_of].repeats.append(row)
    summary = StudySummary(name=config["name"], objectives=parse_objectives(config["search"]["objective"]),
                           config=config, space=config["search"]["space"], trials=rows,
                           command=study.user_attrs.get(TUNE_COMMAND_ATTR), run_dir=run_dir.path,
                           space_narrowed=study.user_attrs.get(SPACE_NARROWED_ATTR) or [])
    choose(summary)
    summary.confidence = runner_up_confidence(summary)
    summary.importance = param_importance(study, summary)
    return summary


#: The study user attribute holding the `harness tune` command line that last ran the study (set by the CLI).
TUNE_COMMAND_ATTR = "tune_command"
#: The study user attribute listing the params `SearchSpace.for_gpus` narrowed on the machine that last ran the
#: study (set by the tuner).
SPACE_NARROWED_ATTR = "space_narrowed"
#: The share of completed trials that count as the best for `param_importance` (PED-ANOVA's own default), and the
#: fewest that do (one best trial would only say how unusual its own values are).
IMPORTANCE_TOP_QUANTILE = 0.1
IMPORTANCE_MIN_TOP = 2


def param_importance(study: optuna.Study, summary: StudySummary) -> ParamImportance:
    """Optuna's parameter importances (`PedAnovaImportanceEvaluator`, its default, which needs no scikit-learn) of
    the knobs that vary across the completed trials, normalized to sum to 1.

    The trials are ranked the way `choose` ranks them: those that met every SLO first, by the primary objective,
    then those that missed one, by the primary objective. A knob is important when its values among the best
    IMPORTANCE_TOP_QUANTILE of trials (at least IMPORTANCE_MIN_TOP) differ from its values among all of them. Not
    computed (`reason` says why) with too few completed trials for a best set smaller than all, when no knob
    varies, or when the best trials' values match the rest's."""
    completed = [t for t in summary.completed if t.values]
    top = max(math.ceil(IMPORTANCE_TOP_QUANTILE * len(completed)), IMPORTANCE_MIN_TOP)
    varying = [p for p in dict.fromkeys(p for t in completed for p in t.params)
               if len({repr(t.params.get(p)) for t in completed}) > 1]
    if len(completed) <= top:
        return ParamImportance({}, len(completed), top, f"{len(completed)} completed trial(s): importance compares "
                               f"the best {top} with all of them, so it needs at least {top + 1}")
    if not varying:
        return ParamImportance({}, len(completed), top, "no knob took more than one value across the completed trials")
    sign = summary.objectives[0].sign
    keys = {t.number: (not t.slo_pass, -sign * t.value) for t in completed}
    rank = {key: i for i, key in enumerate(sorted(set(keys.values())))}
    with warnings.catch_warnings():  # PED-ANOVA warns that a target is minimized (as meant) and on few trials
        warnings.simplefilter("ignore")
        raw = optuna.importance.get_param_importances(
            study, params=varying, normalize=False, target=lambda t: float(rank[keys[t.number]]),
            # PED-ANOVA keeps the best ceil(quantile x n) trials (and ties): this quantile keeps `top`
            evaluator=optuna.importance.PedAnovaImportanceEvaluator(target_quantile=(top - 0.5) / len(completed)))
    total = sum(raw.values())
    if total <= 0:
        return ParamImportance({}, len(completed), top, f"the knob values of the best {top} trial(s) do not stand "
                               f"out from those of all {len(completed)} (too few trials to tell)")
    return ParamImportance({p: v / total for p, v in raw.items()}, len(completed), top)


def choose(summary: StudySummary) -> None:
    """Set `best`, `choice`, `front`, `runner_up` and `closest_miss` on `summary` by the module docstring's rule."""
    objectives = summary.objectives
    primary = objectives[0]
    candidates = [t for t in summary.completed if t.repeat_of is None]
    if any(t.repeats for t in candidates):
        candidates = [t for t in candidates if t.repeats]
    passing = [t for t in candidates if t.passes_every_run]
    if not passing:
        if candidates:
            summary.closest_miss = min(candidates,
                                       key=lambda t: (t.worst_excess, -primary.sign * t.mean_values[0], t.number))
            summary.choice = (f"no trial met every SLO; trial {summary.closest_miss.number} overshoots them least "
                              f"(total relative excess {summary.closest_miss.worst_excess:.1%}"
                              f"{' in its worst measurement' if summary.closest_miss.repeats else ''})")
        return
    if summary.multi_objective:
        summary.front = [passing[i] for i in pareto_front([_signed(t, objectives) for t in passing])]
    pool, ties = (summary.front or passing), []
    for k, objective in enumerate(objectives):
        top = max(objective.sign * t.mean_values[k] for t in pool)
        pool = [t for t in pool if objective.sign * t.mean_values[k] >= top - TIE_TOLERANCE * abs(top)]
        ties.append(len(pool))
        if len(pool) == 1:
            break
    summary.best = best = max(pool, key=lambda t: (t.worst_headroom, -t.number))
    others = [t for t in passing if t is not best]
    summary.runner_up = max(others, key=lambda t: (primary.sign * t.mean_values[0], -t.number)) if others else None
    summary.choice = _choice_text(summary, len(passing), ties)


def _choice_text(summary: StudySummary, n_passing: int, ties: list[int]) -> str:
    """Why `summary.best` was chosen: the steps of `choose` that decided it, as one sentence."""
    def best_word(objective: Objective) -> str:
        return "highest" if objective.sign > 0 else "lowest"

    headroom = f"the most SLO headroom (smallest margin {summary.best.worst_headroom:.1%})"
    primary = summary.objectives[0]
    repeated = bool(summary.best.repeats)
    trials = "configs measured again that met every SLO in every measurement" if repeated else \
        "trials that met every SLO"
    mean = "mean " if repeated else ""
    if not summary.multi_objective:
        if ties[0] == 1:
            text = f"it has the {best_word(primary)} {mean}{primary.label} of the {n_passing} {trials}"
        else:
            text = (f"{ties[0]} of the {n_passing} {trials} are within {TIE_TOLERANCE:.0%} of the best {mean}"
                    f"{primary.label} (a tie within measurement noise); of those it has {headroom}")
        return text + _repeats_text(summary.best, primary)
    text = f"it is on the Pareto front of the {n_passing} {trials} ({len(summary.front)} on it)"
    for objective, n_tied in zip(summary.objectives, ties):
        if n_tied == 1:
            return text + f"; of those it has the {best_word(objective)} {mean}{objective.label}" + \
                _repeats_text(summary.best, primary)
        text += (f"; {n_tied} of those are within {TIE_TOLERANCE:.0%} of the best {mean}{objective.label} "
                 "(a tie within measurement noise)")
    return text + f"; of those it has {headroom}" + _repeats_text(summary.best, primary)


def _repeats_text(trial: TrialRow, objective: Objective) -> str:
    """'; its mean over 3 measurements ...' for a trial with repeats; '' without."""
    if not trial.repeats:
        return ""
    values = [m.values[0] for m in trial.measurements if m.values]
    return (f"; its {objective.label} is the mean of {len(values)} measurements (trial {trial.number} and its repeats "
            f"{', '.join(str(r.number) for r in trial.repeats)}), which ranged {min(values):.4g} to {max(values):.4g}")


def _signed(trial: TrialRow, objectives: list[Objective]) -> list[float]:
    """The trial's (mean) objective values, each negated where lower is better (so larger is always better)."""
    return [o.sign * v for o, v in zip(objectives, trial.mean_values)]


def pareto_front(points: Sequence[Sequence[float]]) -> list[int]:
    """Indices, in input order, of the points no other point dominates (larger is better in every coordinate;
    a point dominates another when it is >= in every coordinate and > in one). Equal points are all kept."""
    arr = np.asarray(points, dtype=float)
    return [i for i, p in enumerate(arr) if not np.any(np.all(arr >= p, axis=1) & np.any(arr > p, axis=1))]


# confidence that the chosen trial beats the runner-up ------------------------------------------------

def runner_up_confidence(summary: StudySummary, resamples: int = BOOTSTRAP_RESAMPLES,
                         seed: int = BOOTSTRAP_SEED) -> Confidence | None:
    """The bootstrap probability that `summary.best` beats `summary.runner_up` on the primary objective.

    Each run's measured requests are resampled with replacement `resamples` times (the two runs
    independently, measurement windows held fixed) and the objective is recomputed on each resample;
    the probability is the share of paired resamples where the chosen trial is better (ties count
    half). It covers request-to-request variation within the two runs, not run-to-run variation (a
    noisy machine, another seed of the workload). None when there is no runner-up."""
    best, other = summary.best, summary.runner_up
    if best is None or other is None:
        return None
    primary = summary.objectives[0]
    limits = [SloLimit(m, s, float(v)) for m, stats in (summary.config.get("slo") or {}).items()
              for s, v in stats.items()]
    cost = (summary.config.get("search") or {}).get("gpu_hour_cost")
    rng = np.random.default_rng(seed)
    draws = []
    for trial in (best, other):
        try:
            records = [r for r in read_records(trial.dir / TrialFiles.RECORDS) if r.phase == "measured"]
        except (OSError, ValueError, TypeError) as exc:
            return Confidence(other.number, None,
                              f"not computed: records of trial {trial.number} cannot be read ({exc})")
        if not records:
            return Confidence(other.number, None, f"not computed: trial {trial.number} has no measured request records")
        indices = rng.integers(0, len(records), size=(resamples, len(records)))
        draws.append(resampled_objective(records, trial.result, primary, limits, cost, indices))
    diff = primary.sign * (draws[0] - draws[1])
    diff = diff[~np.isnan(diff)]
    if diff.size == 0:
        return Confidence(other.number, None, "not computed: the objective is undefined on every resample")
    if all(np.nanmin(d) == np.nanmax(d) for d in draws):  # e.g. goodput when every request met the SLOs
        return Confidence(other.number, None,
                          f"not resolvable: every resample of either run gives the same {primary.label} (it does "
                          "not vary from request to request here), so the bootstrap cannot tell the two apart; "
                          "measure both again (search.repeats) to compare them")
    probability = float(np.mean(diff > 0) + 0.5 * np.mean(diff == 0))
    return Confidence(other.number, probability,
                      f"bootstrap over requests: each run's {primary.label} recomputed on {resamples:,} resamples of "
                      "its measured requests (windows fixed); request-to-request noise only, not run-to-run")


#: Scalar metric -> (a measured request's share of it, divided by the window ("window") or the request count).
_PER_REQUEST = {
    "output_throughput_tok_s": (lambda r, limits: r.output_tokens if r.ok else 0, "window"),
    "total_token_throughput_tok_s": (lambda r, limits: r.output_tokens + r.input_tokens if r.ok else 0, "window"),
    "request_throughput_req_s": (lambda r, limits: r.ok, "window"),
    "goodput_req_s": (request_meets_slo, "window"),
    "slo_attainment": (request_meets_slo, "count"),
    "error_rate": (lambda r, limits: not r.ok, "count"),
}


def resampled_objective(records: list[RequestRecord], result: dict, objective: Objective, limits: list[SloLimit],
                        gpu_hour_cost: float | None, indices: np.ndarray) -> np.ndarray:
    """`objective` recomputed for each row of `indices` (positions into `records`, the run's measured requests,
    drawn with replacement), by the definitions of harness.metrics; the window is the run's. NaN where undefined.
    With every position once, it equals the objective of `result`."""
    metric = objective.metric
    if metric in METRICS and METRICS[metric].kind == "distribution":
        per_record = [request_values(metric, r) for r in records]
        flat = np.asarray([v for values in per_record for v in values], dtype=float)
        owner = np.repeat(np.arange(len(records)), [len(values) for values in per_record])
        out = np.full(len(indices), np.nan)
        for b, row in enumerate(indices):
            sample = np.repeat(flat, np.bincount(row, minlength=len(records))[owner])
            if sample.size:
                out[b] = _statistic(sample, objective.statistic)
        return out
    base = "output_throughput_tok_s" if metric in COST_METRICS else metric
    share, per = _PER_REQUEST[base]
    contributions = np.asarray([float(share(r, limits)) for r in records])
    denominator = result["window"]["duration_s"] if per == "window" else len(records)
    factor = cost_factor(metric, result["engine"]["config"], gpu_hour_cost) if metric in COST_METRICS else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return contributions[indices].sum(axis=1) / denominator * factor


def _statistic(values: np.ndarray, statistic: str) -> float:
    """A statistic of harness.metrics.STATISTICS (percentiles with linear interpolation, as `summarize`)."""
    if statistic in ("mean", "min", "max"):
        return float(getattr(np, statistic)(values))
    return float(np.percentile(values, float(statistic[1:]), method="linear"))


def _load(run_dir: RunDir, storage: str | None, study_name: str | None) -> optuna.Study:
    url = storage or run_dir.storage_url()
    names = optuna.get_all_study_names(storage=url)
    if study_name is None and len(names) == 1:
        study_name = names[0]
    if study_name not in names:
        where = sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)  # messages never hold a password
        wanted = f"no study {study_name!r}" if study_name else "more than one study: name one (--study)"
        raise ConfigError(f"{where}: {wanted}; it holds {len(names)}: {names}")
    return optuna.load_study(study_name=study_name, storage=url)

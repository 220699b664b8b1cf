"""What the study optimizes: objective values and SLO constraints read from a trial's result, how they are told
to Optuna, the sampler a search names, and the probe pruner."""
from __future__ import annotations

import math

import numpy as np
import optuna

from harness.config import SearchSpec, parse_objective
from harness.metrics import COST_METRICS, cost_factor, metric_value
from search_spaces import SearchSpace

def objective_value(result: dict, objective: str, gpu_hour_cost: float | None = None) -> float | None:
    """The objective's value in a result dict, or None when it is undefined (e.g. no completed request).

    Cost metrics (harness.metrics.COST_METRICS) are the output throughput times `cost_factor` of the result's
    engine config (its GPUs) and `gpu_hour_cost`."""
    _, metric, stat = parse_objective(objective)
    if metric in COST_METRICS:
        throughput = metric_value(result, "output_throughput_tok_s")
        value = None if throughput is None else \
            throughput * cost_factor(metric, result["engine"]["config"], gpu_hour_cost)
    else:
        value = metric_value(result, metric, stat)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def objective_values(result: dict, search: SearchSpec) -> list[float] | None:
    """Every objective of `search` in a result dict, primary first; None when any is undefined."""
    values = [objective_value(result, o.expression, search.gpu_hour_cost) for o in search.objectives]
    return None if None in values else values


def constraint_violations(result: dict) -> dict[str, float]:
    """One number per SLO (and the error-rate limit): <= 0 when met, else the relative excess."""
    out = {}
    for check in result["slo"]:
        measured = check["measured"]
        out[f"{check['metric']}.{check['statistic']}"] = (
            1.0 if measured is None else (measured - check["limit"]) / check["limit"])
    out["error_rate"] = (result["scalars"]["error_rate"] or 0.0) - result["max_error_rate"]
    return out


#: The step at which a trial's probe is reported to Optuna (`Trial.report`).
PROBE_STEP = 0


class ProbePruner(optuna.pruners.BasePruner):
    """Prunes a single-objective trial whose probe (its intermediate value at PROBE_STEP) is worse than the
    `keep_best_percent` best of the probes of completed trials that met every SLO, once `startup_trials` of those
    have one; an undefined probe (NaN: no request of it completed) is worse than any.

    Optuna's PercentilePruner compares with every completed trial, also those that missed an SLO, whose objective
    (throughput, say) may be the highest precisely because they were overloaded; this one leaves them out."""

    def __init__(self, keep_best_percent: float, startup_trials: int, direction: str):
        self.keep_best_percent, self.startup_trials = keep_best_percent, startup_trials
        self.sign = 1 if direction == "maximize" else -1

    def threshold(self, study: optuna.Study) -> tuple[float, int] | None:
        """(the probe value a trial must reach, how many probes it rests on), or None while fewer than
        `startup_trials` completed trials that met every SLO have a probe."""
        peers = [t.intermediate_values[PROBE_STEP]
                 for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                 if t.user_attrs.get("slo_pass") and PROBE_STEP in t.intermediate_values
                 and not math.isnan(t.intermediate_values[PROBE_STEP])]
        if len(peers) < self.startup_trials:
            return None
        worst_kept = 100 - self.keep_best_percent if self.sign > 0 else self.keep_best_percent
        return float(np.percentile(peers, worst_kept)), len(peers)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        value = trial.intermediate_values.get(PROBE_STEP)
        threshold = self.threshold(study)
        if value is None or threshold is None:
            return False
        return math.isnan(value) or self.sign * value < self.sign * threshold[0]


#: Random trials before TPE starts modelling.
TPE_STARTUP_TRIALS = 5


def make_sampler(search: SearchSpec, space: SearchSpace) -> optuna.samplers.BaseSampler:
    """The sampler `search.sampler` names, seeded with `search.seed`; raises ValueError when the space has no grid.

    TPE and NSGA-II read each trial's SLO constraints (`Trial.set_constraint`, see `tell_result`) and prefer
    configs that meet them; both handle one or several objectives. TPE samples at random for its first
    `TPE_STARTUP_TRIALS` trials (warm-start points included), whatever the budget: modelled from fewer
    points it keeps to the neighbourhood of the first one (benchmarks/search_efficiency.py). NSGA-II's
    population is a quarter of the budget (4 to 50), so a small budget still breeds a few generations.
    random and grid are baselines that ignore results."""
    if search.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=search.seed, n_startup_trials=TPE_STARTUP_TRIALS)
    if search.sampler == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=search.seed, population_size=min(max(search.trials // 4, 4), 50))
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=search.seed)
    return _AskTellGridSampler(space.grid(), seed=search.seed)


UNDEFINED_OBJECTIVE = "objective undefined: no measured request completed"


def tell_result(study: optuna.Study, trial: optuna.Trial, result: dict, search: SearchSpec) -> list[float] | None:
    """Tell `study` a measured trial: its SLO constraints, then its objective values (returned), or FAIL with a
    reason when an objective is undefined (None returned)."""
    for key, violation in constraint_violations(result).items():
        trial.set_constraint(key, violation)
    trial.set_user_attr("slo_pass", result["slo_pass"])
    values = objective_values(result, search)
    if values is None:
        trial.set_user_attr("reason", UNDEFINED_OBJECTIVE)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
    else:
        study.tell(trial, values)
    return values


def tell_unmeasured(study: optuna.Study, trial: optuna.Trial, state: str, reason: str | None) -> None:
    """Tell `study` a trial that has no measurement, with its reason: "failed" (FAIL), "pruned" (stopped after its
    probe: PRUNED, keeping the probe as its intermediate value) or "infeasible" (PRUNED with the user attr
    `infeasible`).

    Infeasible points are PRUNED, not FAIL, because TPE models PRUNED trials (after the completed ones) and so
    learns to stay out of a region that cannot run, while it ignores FAIL trials: in a simulation where the best
    configs lie at a memory limit, TPE told FAIL kept proposing points beyond it (a median of 500 rejections for
    15 trials, against 16 told PRUNED)."""
    trial.set_user_attr("reason", reason)
    if state in ("pruned", "infeasible"):
        trial.set_user_attr("pruned_by_probe" if state == "pruned" else "infeasible", True)
    study.tell(trial, state=optuna.trial.TrialState.FAIL if state == "failed" else optuna.trial.TrialState.PRUNED)


_STATES = {optuna.trial.TrialState.COMPLETE: "complete", optuna.trial.TrialState.FAIL: "failed",
           optuna.trial.TrialState.RUNNING: "running", optuna.trial.TrialState.WAITING: "queued"}


def trial_state(trial: optuna.trial.FrozenTrial) -> str:
    """What happened to a trial: complete | failed | infeasible | pruned (after its probe) | interrupted | running |
    queued (see `tell_unmeasured`; a PRUNED trial not stopped by its probe is infeasible)."""
    if trial.user_attrs.get("interrupted"):
        return "interrupted"
    if trial.state == optuna.trial.TrialState.PRUNED:
        return "pruned" if trial.user_attrs.get("pruned_by_probe") else "infeasible"
    return _STATES.get(trial.state, trial.state.name.lower())


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler under ask/tell: its after_trial only calls Study.stop() once the grid is exhausted, which
    works inside optimize() alone; the tuner stops by itself (`Tuner._grid_done`)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None

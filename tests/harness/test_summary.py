"""Choosing the recommended trial: SLO filter, noise-level ties broken by headroom, closest miss."""
from pathlib import Path

import optuna
import pytest

from harness.config import parse_objectives
from harness.summary import StudySummary, TrialRow, choose


def trial(number, value, margins, error_rate=0.0):
    slo = [{"metric": "ttft_ms", "statistic": "p95", "limit": 100.0, "measured": 100 * (1 - m), "count": 50,
            "margin": m, "pass": m >= 0} for m in margins]
    result = {"slo": slo, "slo_pass": all(m >= 0 for m in margins) and error_rate == 0,
              "scalars": {"error_rate": error_rate}, "max_error_rate": 0.0}
    values = list(value) if isinstance(value, tuple) else [value]
    return TrialRow(number, "complete", {"n": number}, values, None, 1.0, Path("."), result)


def summary(*trials, direction="maximize", objectives=None):
    s = StudySummary(name="s", objectives=parse_objectives(objectives or f"{direction} goodput_req_s"),
                     config={}, space="x", trials=list(trials))
    choose(s)
    return s


def test_best_objective_among_slo_passing_trials():
    s = summary(trial(0, 10.0, [0.1]), trial(1, 20.0, [-0.5]), trial(2, 12.0, [0.3]))
    assert s.best.number == 2 and "highest goodput_req_s of the 2 trials" in s.choice


def test_ties_within_noise_go_to_the_most_headroom():
    s = summary(trial(0, 31.50, [0.05]), trial(1, 31.52, [0.10]), trial(2, 31.40, [0.60]), trial(3, 25.0, [0.9]))
    assert s.best.number == 2  # within 1% of 31.52, and the most headroom
    assert "3 of the 4 trials" in s.choice and "60.0%" in s.choice


def test_minimize_direction():
    s = summary(trial(0, 5.0, [0.1]), trial(1, 3.0, [0.1]), direction="minimize")
    assert s.best.number == 1


def test_error_rate_limit_excludes_and_closest_miss_is_named():
    s = summary(trial(0, 50.0, [0.2], error_rate=0.5), trial(1, 40.0, [-0.3]), trial(2, 45.0, [-0.1]))
    assert s.best is None and s.closest_miss.number == 2
    assert "no trial met every SLO; trial 2" in s.choice


def test_the_runner_up_is_the_next_best_passing_trial_even_when_a_tie_went_to_headroom():
    s = summary(trial(0, 31.50, [0.05]), trial(1, 31.52, [0.10]), trial(2, 31.40, [0.60]), trial(3, 40.0, [-0.1]))
    assert s.best.number == 2 and s.runner_up.number == 1  # trial 3 misses the SLO
    assert summary(trial(0, 10.0, [0.1])).runner_up is None


TWO = ["maximize goodput_req_s", "minimize ttft_ms.p95"]


def test_multi_objective_front_and_choice_by_the_first_objective():
    """(goodput, ttft p95): 3 dominates 0; 4 misses an SLO; the front is 1, 2, 3; 2 has the best goodput."""
    s = summary(trial(0, (10.0, 300.0), [0.2]), trial(1, (8.0, 100.0), [0.2]), trial(2, (20.0, 400.0), [0.2]),
                trial(3, (12.0, 250.0), [0.2]), trial(4, (50.0, 50.0), [-0.2]), objectives=TWO)
    assert [t.number for t in s.front] == [1, 2, 3]
    assert s.best.number == 2 and s.runner_up.number == 3
    assert s.choice == ("it is on the Pareto front of the 4 trials that met every SLO (3 on it); "
                        "of those it has the highest goodput_req_s")


def test_multi_objective_tie_on_the_first_objective_goes_to_the_second():
    s = summary(trial(0, (20.0, 400.0), [0.2]), trial(1, (19.9, 200.0), [0.2]), trial(2, (15.0, 100.0), [0.2]),
                objectives=TWO)
    assert [t.number for t in s.front] == [0, 1, 2]
    assert s.best.number == 1
    assert "2 of those are within 1% of the best goodput_req_s" in s.choice
    assert s.choice.endswith("of those it has the lowest ttft_ms p95")


def test_a_storage_with_several_studies_needs_the_study_named(tmp_path):
    from harness.errors import ConfigError
    from harness.store import RunDir
    from harness.summary import _load

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    for name in ("a", "b"):
        optuna.create_study(study_name=name, storage=url)
    assert _load(RunDir(tmp_path), url, "b").study_name == "b"
    with pytest.raises(ConfigError, match="more than one study: name one"):
        _load(RunDir(tmp_path), url, None)
    with pytest.raises(ConfigError, match="no study 'c'"):
        _load(RunDir(tmp_path), url, "c")

"""Choosing the recommended trial: SLO filter, noise-level ties broken by headroom, closest miss."""
from pathlib import Path

from harness.summary import StudySummary, TrialRow, choose


def trial(number, value, margins, error_rate=0.0):
    slo = [{"metric": "ttft_ms", "statistic": "p95", "limit": 100.0, "measured": 100 * (1 - m), "count": 50,
            "margin": m, "pass": m >= 0} for m in margins]
    result = {"slo": slo, "slo_pass": all(m >= 0 for m in margins) and error_rate == 0,
              "scalars": {"error_rate": error_rate}, "max_error_rate": 0.0}
    return TrialRow(number, "complete", {"n": number}, value, None, 1.0, Path("."), result)


def summary(*trials, direction="maximize"):
    s = StudySummary(name="s", objective=f"{direction} goodput_req_s", direction=direction, metric="goodput_req_s",
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

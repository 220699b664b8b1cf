"""Several objectives (Pareto front, NSGA-II), cost objectives, and the confidence that the choice beats the
runner-up."""
import numpy as np
import optuna
import pytest

from harness.config import Objective
from harness.errors import ConfigError
from harness.metrics import STATISTICS, SloLimit, gpus_per_replica
from harness.store import RunDir
from harness.summary import load_study, pareto_front, resampled_objective
from harness.objectives import objective_value
from harness.tuner import Tuner
from reports import recommended_config, render_study_report
from tests.harness.test_tuner import experiment
from tests.reports.test_reports import SLO, make_records, make_summary, make_trial

TWO = ["maximize output_throughput_tok_s", "minimize tpot_ms.p95"]
SPACE = {"name": "mo", "engine": "mock",
         "params": {"max_batch_size": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
                    "quantization": {"type": "categorical", "choices": ["none", "fp8"]}}}


def dominates(a: list[float], b: list[float], signs: list[int]) -> bool:
    better_or_equal = all(s * x >= s * y for s, x, y in zip(signs, a, b))
    return better_or_equal and any(s * x > s * y for s, x, y in zip(signs, a, b))


@pytest.mark.parametrize("sampler", ["nsga2", "tpe"])
def test_a_two_objective_study_on_the_mock_engine_yields_its_pareto_front(tmp_path, sampler):
    """batch 16 unquantized breaks the 8 ms TPOT SLO (2 + 16 x 1 ms per step); the rest trade throughput for TPOT."""
    cfg = experiment(tmp_path, trials=6, space=SPACE, objective=TWO, sampler=sampler, seed=0, requests=40)
    run_dir = RunDir(tmp_path / "run")
    Tuner(cfg, run_dir, config_dir=tmp_path).run()
    study = optuna.load_study(study_name="t", storage=run_dir.storage_url())
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    summary = load_study(run_dir)
    passing = [t for t in summary.completed if t.slo_pass]
    assert len(summary.completed) == 6 and all(len(t.values) == 2 for t in summary.completed)
    signs = [1, -1]
    front = {t.number for t in summary.front}
    assert len(front) >= 2 and len(passing) > len(front), "precondition (seed 0): a front of 2+ and a dominated trial"
    for t in passing:  # the front is exactly the passing trials no passing trial dominates
        dominated = any(dominates(o.values, t.values, signs) for o in passing)
        assert (t.number in front) == (not dominated), t.number
    assert summary.best.number in front
    top = max(t.values[0] for t in summary.front)  # the rule: best first objective (ties within 1% go to the second)
    assert summary.best.values[0] >= 0.99 * top
    assert all(not t.slo_pass for t in summary.completed if t.params == {"max_batch_size": 16, "quantization": "none"})

    html = render_study_report(summary)
    section = html[html.index('<section id="pareto">'):html.index('<section id="trials">')]
    assert "Pareto front" in section and 'src="data:image/svg+xml;base64,' in section
    assert all(f'<td class="num">{n}' in section for n in front)
    doc = recommended_config(summary)
    assert [p["trial"] for p in doc["pareto_front"]] == [t.number for t in summary.front]
    assert [o["expression"] for o in doc["objectives"]] == TWO


def test_pareto_front_keeps_exactly_the_non_dominated_points():
    rng = np.random.default_rng(0)
    points = rng.integers(0, 6, size=(60, 3)).tolist()  # many ties and duplicates
    front = set(pareto_front(points))
    for i, p in enumerate(points):
        assert (i in front) == (not any(dominates(q, p, [1, 1, 1]) for q in points))


# config ------------------------------------------------------------------------------------------------

def config(tmp_path, **search):
    return experiment(tmp_path, **search)


def test_objective_lists_and_samplers_are_validated(tmp_path):
    assert [o.label for o in config(tmp_path, objective=TWO).search.objectives] == ["output_throughput_tok_s",
                                                                                    "tpot_ms p95"]
    with pytest.raises(ConfigError, match=r"search.objective: .*\[1\]: unknown metric 'speed'"):
        config(tmp_path, objective=["maximize goodput_req_s", "maximize speed"])
    with pytest.raises(ConfigError, match="an objective is listed twice"):
        config(tmp_path, objective=["maximize goodput_req_s", "minimize goodput_req_s"])
    with pytest.raises(ConfigError, match="name at least one objective"):
        config(tmp_path, objective=[])
    with pytest.raises(ConfigError, match="search.sampler: Input should be 'tpe', 'nsga2', 'random' or 'grid'"):
        config(tmp_path, sampler="cmaes")
    with pytest.raises(ConfigError, match="output_tok_per_dollar needs search.gpu_hour_cost"):
        config(tmp_path, objective="maximize output_tok_per_dollar")


def test_cost_objectives_divide_throughput_by_the_configs_gpus_and_price(tmp_path):
    trial = make_trial(tmp_path, 0, {})
    result = trial.result
    throughput = result["scalars"]["output_throughput_tok_s"]
    assert objective_value(result, "maximize output_tok_per_gpu_hour") == pytest.approx(throughput * 3600)
    assert objective_value(result, "maximize output_tok_per_dollar", 2.5) == pytest.approx(throughput * 3600 / 2.5)
    result["engine"]["config"].update(tensor_parallel_size=4, pipeline_parallel_size=2)
    assert objective_value(result, "maximize output_tok_per_gpu_hour") == pytest.approx(throughput * 3600 / 8)
    assert gpus_per_replica({"tp": 2}) == 2 and gpus_per_replica({"model": "x"}) == 1
    cfg = config(tmp_path, objective="maximize output_tok_per_dollar", gpu_hour_cost=2.5)
    assert cfg.search.gpu_hour_cost == 2.5


def test_the_report_says_how_cost_objectives_counted_gpus(tmp_path):
    trials = [make_trial(tmp_path, n, {}, make_records(rate=r)) for n, r in enumerate([10, 20])]
    for t in trials:
        t.values = [objective_value(t.result, "maximize output_tok_per_dollar", 2.0)]
    summary = make_summary(trials, "maximize output_tok_per_dollar", gpu_hour_cost=2.0)
    html = render_study_report(summary)
    assert "counts as 1 GPU" in html and "Counted: 1 GPU (2 trials)" in html and "tok/$" in html


# confidence that the choice beats the runner-up ---------------------------------------------------

def varied(records):
    """The last request 200 ms late to its first token (past the TTFT limit alone, the run's p95 still within):
    one request that misses, so that resampling requests changes the goodput."""
    last = records[-1]
    last.token_ns = [t + 200 * 1_000_000 for t in last.token_ns]
    last.end_ns = last.token_ns[-1]
    return records


def test_confidence_is_high_for_a_clearly_better_trial(tmp_path):
    summary = make_summary([make_trial(tmp_path, 0, {}, varied(make_records(rate=10))),
                            make_trial(tmp_path, 1, {}, varied(make_records(rate=20)))])
    assert summary.best.number == 1 and summary.runner_up.number == 0
    assert summary.confidence.runner_up == 0 and summary.confidence.probability > 0.99
    html = render_study_report(summary)
    assert "Confidence that it beats the runner-up (trial 0)" in html and "Not a clear win" not in html
    doc = recommended_config(summary)
    assert doc["confidence_vs_runner_up"]["runner_up_trial"] == 0
    assert doc["confidence_vs_runner_up"]["probability"] == summary.confidence.probability


def test_confidence_is_a_coin_flip_for_identical_trials(tmp_path):
    objective = "minimize ttft_ms.p95"
    trials = [make_trial(tmp_path, n, {}, make_records(n=60)) for n in range(2)]
    for t in trials:
        t.values = [objective_value(t.result, objective)]
    summary = make_summary(trials, objective)
    assert summary.best.number == 0  # a tie: the lower number
    assert 0.35 < summary.confidence.probability < 0.65
    assert "Not a clear win" in render_study_report(summary)


def test_confidence_for_a_latency_objective_and_a_tie_that_went_to_headroom(tmp_path):
    """Minimize TTFT p95: trial 1 is 1 ms faster at p95 (within 1%) but trial 0 has more TPOT headroom and is
    chosen; the runner-up (trial 1) is then the likelier winner, and the confidence says so."""
    objective = "minimize ttft_ms.p95"
    trials = [make_trial(tmp_path, 0, {}, make_records(ttft_ms=121.0, tpot_ms=10.0)),
              make_trial(tmp_path, 1, {}, make_records(ttft_ms=120.0, tpot_ms=25.0))]
    for t in trials:
        t.values = [objective_value(t.result, objective)]
    summary = make_summary(trials, objective)
    assert summary.best.number == 0 and summary.runner_up.number == 1
    assert summary.confidence.probability < 0.5


def test_an_objective_that_no_request_varies_leaves_the_confidence_unresolved(tmp_path):
    """Every request alike: each resample of a run gives its own value, so 2x apart or 0.1% apart alike, the
    bootstrap has nothing to say (it would print 100%)."""
    summary = make_summary([make_trial(tmp_path, 0, {}, make_records(rate=10)),
                            make_trial(tmp_path, 1, {}, make_records(rate=10.01))])
    assert summary.confidence.probability is None and "not resolvable" in summary.confidence.method


def test_missing_records_leave_the_confidence_uncomputed_with_the_reason(tmp_path):
    summary = make_summary([make_trial(tmp_path, 0, {}, make_records(rate=10)),
                            make_trial(tmp_path, 1, {}, make_records(rate=20), write_records_file=False)])
    assert summary.confidence.probability is None and "records of trial 1 cannot be read" in summary.confidence.method
    assert "not computed: records of trial 1" in render_study_report(summary)


@pytest.mark.parametrize("expression", [
    "maximize goodput_req_s", "maximize output_throughput_tok_s", "maximize total_token_throughput_tok_s",
    "maximize request_throughput_req_s", "maximize slo_attainment", "minimize error_rate",
    "maximize output_tok_per_gpu_hour", *[f"minimize {m}.{s}" for m in ("ttft_ms", "itl_ms") for s in STATISTICS]])
def test_resampling_every_request_once_gives_the_runs_own_value(tmp_path, expression):
    """The bootstrap recomputes objectives by harness.metrics' definitions: the identity resample must match."""
    records = make_records(n=50, fail_every=7, tpot_ms=12.0)
    trial = make_trial(tmp_path, 0, {}, records)
    measured = [r for r in records if r.phase == "measured"]
    limits = [SloLimit(m, s, v) for m, stats in SLO.items() for s, v in stats.items()]
    identity = np.arange(len(measured))[None, :]
    value = resampled_objective(measured, trial.result, Objective.parse(expression), limits, None, identity)[0]
    assert value == pytest.approx(objective_value(trial.result, expression), rel=1e-12)



"""The tuner on the mock engine: trial subprocesses, failures, infeasibility, resume, selection."""
import os
import signal
import time
from pathlib import Path

import optuna
import pytest
import yaml

from harness.config import parse_config
from harness.errors import ConfigError
from harness.store import RunDir, TrialFiles, read_json
from harness.summary import load_study
from harness.trial_process import ctrl_c_latch
from harness.tuner import Tuner


def experiment(tmp_path: Path, *, trials=4, params=None, space=None, slo=None, timeout=60, requests=60,
               output_tokens=8, **search):
    space_path = tmp_path / "space.yaml"
    space_path.write_text(yaml.safe_dump(space or {
        "name": "small", "engine": "mock",
        "params": {"max_batch_size": {"type": "categorical", "choices": [1, 4, 16]}}}))
    return parse_config({
        "name": "t",
        "engine": {"kind": "mock", "params": {"step_ms": 2, "decode_ms_per_seq": 1.0, "prefill_ms_per_token": 0,
                                              **(params or {})}},
        "workload": {"kind": "synthetic", "requests": requests, "warmup_requests": 4,
                     "input_tokens": {"dist": "fixed", "value": 16},
                     "output_tokens": {"dist": "fixed", "value": output_tokens},
                     "arrival": {"process": "closed", "concurrency": 16}},
        "slo": slo or {"tpot_ms": {"p95": 8}},
        "search": {"space": str(space_path), "trials": trials, "objective": "maximize output_throughput_tok_s",
                   "trial_timeout_s": timeout, "sampler": "random", **search},
    }, "test")


def test_small_tune_picks_the_best_config_that_meets_the_slo(tmp_path):
    """batch 16 is fastest but its TPOT (2 + 16*1 ms) breaks the 8 ms SLO; batch 4 (6 ms) is the answer."""
    cfg = experiment(tmp_path, trials=4, seed=1)
    run_dir = RunDir(tmp_path / "run")
    Tuner(cfg, run_dir, config_dir=tmp_path).run()
    summary = load_study(run_dir)
    assert len(summary.completed) == 4
    sampled = {t.params["max_batch_size"] for t in summary.completed}
    assert sampled == {1, 4, 16}, "precondition: seed 1 samples every choice"
    assert summary.best.params == {"max_batch_size": 4}
    by_batch = {t.params["max_batch_size"]: t for t in summary.completed}
    assert not by_batch[16].slo_pass and by_batch[16].value > summary.best.value
    for t in summary.completed:  # every completed trial left its files behind
        assert {TrialFiles.CONFIG, TrialFiles.RESULT, TrialFiles.RECORDS, TrialFiles.LOG} <= {
            p.name for p in t.dir.iterdir()}
        trial_cfg = yaml.safe_load((t.dir / TrialFiles.CONFIG).read_text())
        assert trial_cfg["engine"]["params"]["max_batch_size"] == t.params["max_batch_size"]


def test_resume_keeps_finished_trials_and_runs_only_the_rest(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=2), run_dir, config_dir=tmp_path).run()
    first = {t.number: (t.params, t.value) for t in load_study(run_dir).trials}
    mtimes = {n: (run_dir.trial_dir(n) / TrialFiles.RESULT).stat().st_mtime_ns for n in first}
    Tuner(experiment(tmp_path, trials=3), run_dir, config_dir=tmp_path).run()
    after = load_study(run_dir).trials
    assert len(after) == 3
    assert {t.number: (t.params, t.value) for t in after if t.number in first} == first
    assert mtimes == {n: (run_dir.trial_dir(n) / TrialFiles.RESULT).stat().st_mtime_ns for n in first}


def test_interrupted_trial_is_marked_and_rerun(tmp_path):
    cfg = experiment(tmp_path, trials=2)
    run_dir = RunDir(tmp_path / "run")
    # Simulate a harness killed mid-trial: a trial left RUNNING in the storage.
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    stale = tuner.study.ask()
    tuner.space.suggest(stale)
    Tuner(cfg, run_dir, config_dir=tmp_path).run()
    trials = load_study(run_dir).trials
    assert trials[0].state == "interrupted" and "stopped mid-trial" in trials[0].reason
    assert trials[1].params == trials[0].params  # queued again with the same params
    assert sum(t.state == "complete" for t in trials) == 2


def test_a_changed_config_refuses_to_resume(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=1), run_dir, config_dir=tmp_path).run()
    with pytest.raises(ConfigError, match="different config"):
        Tuner(experiment(tmp_path, trials=1, slo={"tpot_ms": {"p95": 9}}), run_dir, config_dir=tmp_path)


def test_engine_errors_and_timeouts_fail_the_trial_with_the_reason(tmp_path):
    run_dir = RunDir(tmp_path / "a")
    Tuner(experiment(tmp_path, trials=1, params={"start_error": "CUDA out of memory (scripted)"}),
          run_dir, config_dir=tmp_path).run()
    (trial,) = load_study(run_dir).trials
    assert trial.state == "failed" and "CUDA out of memory (scripted)" in trial.reason
    assert "CUDA out of memory" in (run_dir.trial_dir(0) / TrialFiles.LOG).read_text()

    run_dir = RunDir(tmp_path / "b")
    Tuner(experiment(tmp_path, trials=1, params={"start_delay_s": 60}, timeout=3), run_dir, config_dir=tmp_path).run()
    (trial,) = load_study(run_dir).trials
    assert trial.state == "failed" and trial.reason.startswith("timeout: trial ran longer than 3 s")
    assert not (run_dir.trial_dir(0) / TrialFiles.RESULT).exists()


def test_infeasible_points_are_pruned_before_launch(tmp_path):
    space = {"name": "s", "engine": "mock",  # a range: the rule cannot narrow it (SearchSpace.for_gpus)
             "params": {"max_batch_size": {"type": "int", "low": 8, "high": 64, "step": 56},
                        "max_num_tokens": {"type": "categorical", "choices": [16]}},
             "rules": ["max_num_tokens >= max_batch_size * 2"]}
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=4, space=space), run_dir, config_dir=tmp_path).run()
    trials = load_study(run_dir).trials
    pruned = [t for t in trials if t.state == "infeasible"]
    assert pruned and all(t.params["max_batch_size"] == 64 for t in pruned)
    assert all("breaks search-space rule" in t.reason or "max_num_tokens (16) < max_batch_size (64)" in t.reason
               for t in pruned)
    assert not any(run_dir.trial_dir(t.number).exists() for t in pruned)
    assert all(t.state == "complete" for t in trials if t.params["max_batch_size"] == 8)
    assert sum(t.state == "complete" for t in trials) == 4  # points rejected before launch spend no budget


def test_a_space_with_nothing_feasible_stops_with_a_clear_error(tmp_path):
    space = {"name": "s", "engine": "mock", "params": {"max_batch_size": {"type": "int", "low": 8, "high": 64}},
             "rules": ["max_batch_size > 100"]}
    with pytest.raises(ConfigError, match=r"the last 50 points sampled were all infeasible .*max_batch_size > 100"):
        Tuner(experiment(tmp_path, trials=2, space=space), RunDir(tmp_path / "run"), config_dir=tmp_path).run()
    space["params"]["max_batch_size"] = {"type": "categorical", "choices": [8, 64]}  # found before any trial
    with pytest.raises(ConfigError, match=r"no value of max_batch_size satisfies the rule 'max_batch_size > 100' "
                                          r"with gpus = 1"):
        Tuner(experiment(tmp_path, trials=2, space=space), RunDir(tmp_path / "run2"), config_dir=tmp_path)


def test_no_trial_meeting_the_slo_names_the_closest_miss(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=3, seed=1, slo={"tpot_ms": {"p95": 1}}), run_dir, config_dir=tmp_path).run()
    summary = load_study(run_dir)
    assert summary.best is None
    assert summary.closest_miss.params == {"max_batch_size": 1}  # lowest TPOT: smallest overshoot


def test_tpe_sampler_with_slo_constraints_runs(tmp_path):
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=3, sampler="tpe"), run_dir, config_dir=tmp_path).run()
    study = optuna.load_study(study_name="t", storage=run_dir.storage_url())
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert complete and all(set(t.constraints) == {"tpot_ms.p95", "error_rate"} for t in complete)
    assert read_json(run_dir.trial_dir(0) / TrialFiles.RESULT)["simulated"] is True


def test_warm_start_points_run_first_snapped_onto_the_space(tmp_path):
    """The mock's heuristic: KV pool 3,000 tokens / (16 + 8) per sequence = batch 125, token budget
    125 * 16 = 2,000: snapped to the space, batch 64 (the high end) and 2048 (the nearest choice). The knobs it
    does not set are the engine config's (kv_cache_fraction 1.0, quantization none), which it assumed."""
    space = {"name": "warm", "engine": "mock",
             "params": {"max_batch_size": {"type": "int", "low": 1, "high": 64},
                        "max_num_tokens": {"type": "categorical", "choices": [256, 2048]},
                        "kv_cache_fraction": {"type": "categorical", "choices": [0.5, 1.0]},
                        "quantization": {"type": "categorical", "choices": ["fp8", "int8", "none"]}},
             "warm_start": ["engine-heuristic", {"max_batch_size": 3}]}
    cfg = experiment(tmp_path, trials=3, space=space, params={"kv_pool_tokens": 3000, "kv_cache_fraction": 1.0})
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    tuner.run()
    trials = sorted(tuner.study.trials, key=lambda t: t.number)
    assert trials[0].params == {"max_batch_size": 64, "max_num_tokens": 2048, "kv_cache_fraction": 1.0,
                                "quantization": "none"}
    assert trials[0].user_attrs["warm_start"] == "mock engine heuristic"
    assert trials[1].params["max_batch_size"] == 3 and trials[1].user_attrs["warm_start"] == "warm_start point"
    assert "warm_start" not in trials[2].user_attrs
    Tuner(experiment(tmp_path, trials=4, space=space, params={"kv_pool_tokens": 3000, "kv_cache_fraction": 1.0}),
          run_dir, config_dir=tmp_path).run()  # resuming queues nothing again
    assert sum("warm_start" in t.user_attrs for t in load_study_trials(run_dir)) == 2


def load_study_trials(run_dir: RunDir) -> list:
    return optuna.load_study(study_name="t", storage=run_dir.storage_url()).trials


def test_warm_start_params_must_be_in_the_space(tmp_path):
    space = {"name": "bad", "engine": "mock", "params": {"max_batch_size": {"type": "int", "low": 1, "high": 8}},
             "warm_start": [{"max_batch_sz": 4}]}
    with pytest.raises(ConfigError, match="warm_start: unknown params max_batch_sz"):
        Tuner(experiment(tmp_path, space=space), RunDir(tmp_path / "run"), config_dir=tmp_path)


def test_grid_sampler_tries_every_point_once_then_stops(tmp_path):
    space = {"name": "g", "engine": "mock",
             "params": {"max_batch_size": {"type": "int", "low": 1, "high": 13, "step": 6},
                        "kv_cache_fraction": {"type": "float", "low": 0.5, "high": 0.9, "step": 0.4}},
             "rules": ["max_batch_size < 13"]}
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=50, space=space, sampler="grid", requests=12), run_dir, config_dir=tmp_path).run()
    trials = load_study(run_dir).trials
    assert sorted((t.params["max_batch_size"], t.params["kv_cache_fraction"]) for t in trials) == [
        (1, 0.5), (1, 0.9), (7, 0.5), (7, 0.9), (13, 0.5), (13, 0.9)]
    assert sum(t.state == "complete" for t in trials) == 4  # batch 13 breaks the rule: rejected, never launched


def test_grid_needs_a_step_for_float_params(tmp_path):
    space = {"name": "g", "engine": "mock", "params": {"kv_cache_fraction": {"type": "float", "low": 0.5, "high": 0.9}}}
    with pytest.raises(ConfigError, match="grid: float param 'kv_cache_fraction' needs a step"):
        Tuner(experiment(tmp_path, space=space, sampler="grid"), RunDir(tmp_path / "run"), config_dir=tmp_path)


def test_a_ctrl_c_swallowed_by_python_still_stops_the_study(tmp_path):
    """A SIGINT landing in an at-fork callback is dropped by Python ("Exception ignored"); the latch keeps it."""
    cfg = experiment(tmp_path, trials=3)
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    started = []

    def swallow_ctrl_c(number, params):
        started.append(number)
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs here and its KeyboardInterrupt is swallowed below
        except KeyboardInterrupt:
            pass

    with ctrl_c_latch(), pytest.raises(KeyboardInterrupt):
        tuner.run(on_start=swallow_ctrl_c)
    assert started == [0]
    trials = load_study(run_dir).trials
    assert trials[0].state == "interrupted" and not any(t.state == "complete" for t in trials)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler

"""The tuner's cost and robustness features on the mock engine: out-of-memory regions, probes, repeats."""
from pathlib import Path

import optuna
import pytest

from engine_adapters import Hardware
from engine_adapters.mock import MockConfig, simulate
from harness.config import Objective
from harness.errors import ConfigError
from harness.store import RunDir, TrialFiles
from harness.summary import StudySummary, TrialRow, choose, load_study
from harness.trial import PROBE_RECORDS
from harness.objectives import PROBE_STEP, ProbePruner
from harness.trial_process import out_of_memory
from harness.tuner import Tuner
from tests.harness.test_tuner import experiment

# out-of-memory regions ------------------------------------------------------------------------------

def test_out_of_memory_is_read_from_the_reason_or_the_end_of_the_log(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("loading\n")
    assert out_of_memory("OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", log)
    assert not out_of_memory("RuntimeError: connection refused", log)
    # a crash that left no reason: the TensorRT-LLM error sits above a native stack trace
    log.write_text("[TensorRT-LLM][ERROR] CUDA runtime error in cudaMalloc: out of memory (ipcUtils.cpp:48)\n"
                   + "".join(f"{i} 0x7f26b1247c5e libtensorrt_llm.so\n" for i in range(20)))
    assert out_of_memory("trial process killed by signal 6 without a result", log)
    log.write_text("CUDA out of memory earlier, recovered\n" + "step ok\n" * 100)  # beyond the lines searched
    assert not out_of_memory("trial process killed by signal 6 without a result", log)


def test_an_oom_marks_its_region_and_no_point_in_it_is_launched(tmp_path):
    """SIMULATED memory = max_batch_size x max_num_tokens (2048) x kv_cache_fraction; the budget of 4,000 holds
    (1, *) and (2, 0.5) only. The first point, (4, 0.5), runs out of memory, and with it every larger point."""
    space = {"name": "oom", "engine": "mock",
             "params": {"max_batch_size": {"type": "categorical", "choices": [1, 2, 4, 8, 16]},
                        "kv_cache_fraction": {"type": "categorical", "choices": [0.5, 1.0]}},
             "memory_knobs": ["max_batch_size", "kv_cache_fraction"],
             "warm_start": [{"max_batch_size": 4, "kv_cache_fraction": 0.5}]}
    cfg = experiment(tmp_path, trials=10, space=space, sampler="grid", requests=12, slo={"tpot_ms": {"p95": 100}},
                     params={"memory_budget": 4000})
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    tuner.run()
    trials = load_study(run_dir).trials
    assert len({tuple(t.params.values()) for t in trials}) == 10, "the grid was covered"
    first = trials[0]
    assert first.params == {"max_batch_size": 4, "kv_cache_fraction": 0.5}
    assert first.state == "failed" and first.out_of_memory and "SIMULATED out of memory" in first.reason
    launched = [t for t in trials if run_dir.trial_dir(t.number).exists()]
    ooms = [t for t in launched if t.out_of_memory]
    for oom in ooms:  # the invariant: nothing launched after an OOM lies in its region
        assert not any(tuner.space.in_oom_region(t.params, oom.params) for t in launched if t.number > oom.number)
    rejected = [t for t in trials if t.reason and t.reason.startswith("dominates OOM trial")]
    assert {(8, 0.5), (16, 0.5), (4, 1.0), (8, 1.0), (16, 1.0)} <= {
        (t.params["max_batch_size"], t.params["kv_cache_fraction"]) for t in rejected}
    assert all(t.state == "infeasible" and not run_dir.trial_dir(t.number).exists() for t in rejected)
    assert "dominates OOM trial 0 (max_batch_size 8 >= 4, kv_cache_fraction 0.5 >= 0.5; the other knobs equal)" in {
        t.reason.split(":")[0] for t in rejected}
    assert len(launched) + len(rejected) == len(trials)
    assert tuner.finished() == len(launched)  # rejections spent no budget
    assert all(t.state == "complete" for t in launched if not t.out_of_memory)


# probes ----------------------------------------------------------------------------------------------

def study_with_probes(direction: str, probes: list[tuple[float, bool]]) -> optuna.Study:
    """An in-memory study with one completed trial per (probe value, met every SLO)."""
    study = optuna.create_study(direction=direction)
    for value, slo_pass in probes:
        study.add_trial(optuna.trial.create_trial(value=value, intermediate_values={PROBE_STEP: value},
                                                  user_attrs={"slo_pass": slo_pass}))
    return study


def judge(pruner: ProbePruner, study: optuna.Study, probe: float) -> bool:
    return pruner.prune(study, optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING,
                                                         intermediate_values={PROBE_STEP: probe}))


def test_probe_pruner_keeps_the_best_percent_of_passing_probes():
    peers = [(10.0, True), (20.0, True), (30.0, True), (40.0, True), (1000.0, False)]  # 1000 missed an SLO
    study = study_with_probes("maximize", peers)
    median = ProbePruner(keep_best_percent=50, startup_trials=4, direction="maximize")
    assert median.threshold(study) == (25.0, 4)
    assert judge(median, study, 24.9) and not judge(median, study, 25.0) and judge(median, study, float("nan"))
    assert median.threshold(study_with_probes("maximize", peers[:3])) is None  # 3 < startup_trials: no pruning
    assert not judge(median, study_with_probes("maximize", peers[:3]), 0.0)
    lowest = ProbePruner(keep_best_percent=25, startup_trials=4, direction="minimize")
    study = study_with_probes("minimize", peers)
    assert lowest.threshold(study) == (17.5, 4)  # lower is better: the best quarter lies below 17.5
    assert judge(lowest, study, 18.0) and not judge(lowest, study, 17.0)


def test_clearly_worse_trials_are_stopped_after_their_probe(tmp_path):
    """Closed loop at 16 in flight: batch 16 makes 16 tokens per 18 ms step, batch 4 four per 6 ms, batch 1 one per
    3 ms (SIMULATED). The warm-start points (16, 4) are the peers; keeping the best 100% of their probes, a trial
    goes on when its probe beats batch 4's, so batch 1 trials stop after 80 of 400 requests and batch 16 ones go on."""
    space = {"name": "probe", "engine": "mock",
             "params": {"max_batch_size": {"type": "categorical", "choices": [1, 4, 16]}},
             "warm_start": [{"max_batch_size": 16}, {"max_batch_size": 4}]}
    cfg = experiment(tmp_path, trials=4, space=space, requests=400, output_tokens=16, slo={"tpot_ms": {"p95": 40}},
                     seed=6, probe={"requests": 80, "keep_best_percent": 100, "startup_trials": 2})
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    tuner.run()
    trials = load_study(run_dir).trials
    assert [t.state for t in trials[:2]] == ["complete", "complete"] and all(t.probe_value for t in trials[:2])
    later = trials[2:]
    pruned = [t for t in later if t.params["max_batch_size"] == 1]
    assert pruned and any(t.params["max_batch_size"] == 16 for t in later), "precondition: seed 6 samples both"
    assert all(t.state == "complete" for t in later if t.params["max_batch_size"] == 16)
    full_run_s = max(end for _, end in simulate(MockConfig(max_batch_size=1, step_ms=2, decode_ms_per_seq=1.0,
                                                           prefill_ms_per_token=0), [(0.0, 16, 16)] * 400))
    for t in pruned:
        assert t.state == "pruned" and t.probe_value < trials[1].probe_value
        assert t.reason.startswith("probe: output_throughput_tok_s ")
        assert "until its first 80 requests were done" in t.reason and "(threshold " in t.reason
        assert (t.dir / PROBE_RECORDS).exists() and not (t.dir / TrialFiles.RESULT).exists()
        assert "400/400 requests done" not in (t.dir / TrialFiles.LOG).read_text()
        assert t.duration_s < full_run_s, "stopped before the full run could have ended"
    assert tuner.finished() == 4  # a pruned trial was launched: it counts toward the budget


def test_probe_needs_one_objective_and_more_requests_than_the_warm_up(tmp_path):
    with pytest.raises(ConfigError, match="probe: pruning compares one objective"):
        experiment(tmp_path, probe={"requests": 10},
                   objective=["maximize output_throughput_tok_s", "minimize ttft_ms.p95"])
    with pytest.raises(ConfigError, match=r"search.probe.requests \(4\) must exceed workload.warmup_requests \(4\)"):
        experiment(tmp_path, probe={"requests": 4})
    with pytest.raises(ConfigError, match=r"must be fewer than workload.requests \(60\)"):
        experiment(tmp_path, probe={"requests": 60})


# repeats ---------------------------------------------------------------------------------------------

def test_the_best_configs_are_measured_again_after_the_budget(tmp_path):
    """TPOT p95 <= 8 ms: batch 1 (3 ms) and 4 (6 ms) pass, 16 (18 ms) misses. Batch 4 ran twice: the two best
    distinct configs, batch 4 (its better trial) and batch 1, are measured once more."""
    run_dir = RunDir(tmp_path / "run")
    cfg = experiment(tmp_path, trials=4, seed=2, requests=30, repeats={"top": 2, "runs": 1})
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    tuner.run()
    summary = load_study(run_dir)
    budget = [t for t in summary.trials if t.repeat_of is None]
    repeats = [t for t in summary.trials if t.repeat_of is not None]
    assert [t.params["max_batch_size"] for t in budget] == [16, 1, 4, 4], "precondition: seed 2 samples 4 twice"
    assert tuner.finished() == 4  # repeats are outside the budget
    assert sorted(t.params["max_batch_size"] for t in repeats) == [1, 4] and all(t.state == "complete" for t in repeats)
    for r in repeats:
        original = summary.trials[r.repeat_of]
        assert original.params == r.params and [x.number for x in original.repeats] == [r.number]
    fours = [t for t in budget if t.params["max_batch_size"] == 4]
    assert summary.best is max(fours, key=lambda t: t.value) and summary.best.repeats
    assert "mean of 2 measurements" in summary.choice and "configs measured again" in summary.choice
    Tuner(cfg, run_dir, config_dir=tmp_path).run()  # resuming: nothing left to run
    assert len(load_study(run_dir).trials) == 6


def test_a_repeat_cut_off_is_queued_again_as_a_repeat(tmp_path):
    cfg = experiment(tmp_path, trials=1, requests=20, repeats={"top": 1})
    run_dir = RunDir(tmp_path / "run")

    def stop_at_the_repeat(number, params):
        if number == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        Tuner(cfg, run_dir, config_dir=tmp_path).run(on_start=stop_at_the_repeat)
    Tuner(cfg, run_dir, config_dir=tmp_path).run()
    trials = load_study(run_dir).trials
    assert [(t.number, t.state, t.repeat_of) for t in trials] == [
        (0, "complete", None), (1, "interrupted", 0), (2, "complete", 0)]  # queued again once, as a repeat


def row(tmp_path: Path, number: int, value: float, slo_pass: bool = True, repeat_of: int | None = None) -> TrialRow:
    result = {"slo_pass": slo_pass, "slo": [{"margin": 0.1 if slo_pass else -0.1}]}
    return TrialRow(number, "complete", {"max_batch_size": number}, [value], None, 1.0, tmp_path, result,
                    repeat_of=repeat_of)


def test_choice_with_repeats_uses_means_and_needs_every_run_to_pass(tmp_path):
    def summary_of(*rows: TrialRow) -> StudySummary:
        by_number = {r.number: r for r in rows}
        for r in rows:
            if r.repeat_of is not None:
                by_number[r.repeat_of].repeats.append(r)
        summary = StudySummary("s", [Objective.parse("maximize output_throughput_tok_s")], {}, "space", list(rows))
        choose(summary)
        return summary

    # trial 0 measured highest once, but its mean over two runs (8) is below trial 1's (9.25)
    summary = summary_of(row(tmp_path, 0, 10), row(tmp_path, 1, 9), row(tmp_path, 2, 6, repeat_of=0),
                         row(tmp_path, 3, 9.5, repeat_of=1))
    assert summary.best.number == 1 and summary.runner_up.number == 0
    assert "ranged 9 to 9.5" in summary.choice
    # trial 1's repeat missed an SLO: it no longer counts as meeting them
    summary = summary_of(row(tmp_path, 0, 10), row(tmp_path, 1, 9), row(tmp_path, 2, 6, repeat_of=0),
                         row(tmp_path, 3, 9.5, slo_pass=False, repeat_of=1))
    assert summary.best.number == 0 and summary.runner_up is None
    # without repeats, nothing changes: the highest single measurement wins
    assert summary_of(row(tmp_path, 0, 10), row(tmp_path, 1, 9)).best.number == 0


# rebuild or restart ----------------------------------------------------------------------------------

def test_each_launch_notes_whether_its_engine_needs_a_build(tmp_path):
    """max_batch_size is declared baked into the engine: the first trial of each batch size builds, later ones
    with that size restart from the cache; kv_cache_fraction never needs a build."""
    space = {"name": "build", "engine": "mock",
             "params": {"max_batch_size": {"type": "categorical", "choices": [1, 4]},
                        "kv_cache_fraction": {"type": "categorical", "choices": [0.5, 0.9]}},
             "rebuild": {"knobs": ["max_batch_size"], "when": {"quantization": "none"}}}
    run_dir = RunDir(tmp_path / "run")
    Tuner(experiment(tmp_path, trials=4, space=space, sampler="grid", requests=12, slo={"tpot_ms": {"p95": 100}}),
          run_dir, config_dir=tmp_path).run()
    summary = load_study(run_dir)
    built = set()
    for t in summary.trials:
        assert t.state == "complete"
        assert t.engine_change == ("restart" if t.params["max_batch_size"] in built else "rebuild")
        built.add(t.params["max_batch_size"])
    starts = summary.engine_starts()
    assert starts == {change: [t.result["engine_start_s"] for t in summary.trials if t.engine_change == change]
                      for change in ("rebuild", "restart")}
    assert len(starts["rebuild"]) == len(starts["restart"]) == 2



# points that cannot run here --------------------------------------------------------------------------

def test_choices_no_point_of_which_can_run_here_are_never_sampled(tmp_path):
    """Like tensor_parallel_size [1, 2, 4, 8] x pipeline_parallel_size [1, 2] on one GPU, where one point in eight
    passes the rule: TPE samples each param on its own, so it cannot learn that joint limit from rejected points
    (with the trtllm-default space on one GPU it gave up after 50 rejections in a row, no trial run). The space is
    narrowed to this machine first; the study records how."""
    space = {"name": "mostly-infeasible", "engine": "mock",
             "params": {"max_batch_size": {"type": "categorical", "choices": [1, 2, 4, 8]},
                        "max_num_tokens": {"type": "categorical", "choices": [2048, 4096]},
                        "kv_cache_fraction": {"type": "float", "low": 0.5, "high": 0.9}},
             "rules": ["max_batch_size * max_num_tokens <= 2048 * gpus"]}
    cfg = experiment(tmp_path, trials=3, space=space, sampler="tpe", seed=3, requests=20)
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path, hardware=Hardware(gpu_count=0))
    assert tuner.space_notes == ["max_batch_size: 1 of 1, 2, 4, 8 (the others break a rule with 1 GPU)",
                                 "max_num_tokens: 2048 of 2048, 4096 (the others break a rule with 1 GPU)"]
    tuner.run()
    summary = load_study(run_dir)
    assert [t.state for t in summary.trials] == ["complete"] * 3
    assert {(t.params["max_batch_size"], t.params["max_num_tokens"]) for t in summary.trials} == {(1, 2048)}
    assert summary.space_narrowed == tuner.space_notes


def test_infeasible_points_are_pruned_so_tpe_learns_to_avoid_them(tmp_path):
    """A rule over a range cannot narrow the space; its rejected points are told PRUNED (user attr `infeasible`),
    which TPE models, rather than FAIL, which it ignores (harness.objectives.tell_unmeasured)."""
    space = {"name": "range-rule", "engine": "mock",
             "params": {"max_batch_size": {"type": "int", "low": 1, "high": 64, "log": True}},
             "rules": ["max_batch_size <= 8"]}
    cfg = experiment(tmp_path, trials=3, space=space, seed=0, requests=20)
    run_dir = RunDir(tmp_path / "run")
    tuner = Tuner(cfg, run_dir, config_dir=tmp_path)
    assert tuner.space_notes == []
    tuner.run()
    rejected = [t for t in tuner.study.get_trials() if t.user_attrs.get("rejected_before_launch")]
    assert rejected, "precondition: seed 0 samples a batch above 8"
    assert all(t.state == optuna.trial.TrialState.PRUNED and t.user_attrs["infeasible"] for t in rejected)
    assert {t.number for t in load_study(run_dir).trials if t.state == "infeasible"} == {t.number for t in rejected}

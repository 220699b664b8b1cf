"""The `harness` command end to end, as a user runs it (real subprocesses, SQLite, files)."""
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml

from harness.store import RunDir, TrialFiles

MOCK = {
    "name": "cli",
    "engine": {"kind": "mock", "params": {"step_ms": 2, "decode_ms_per_seq": 0.5}},
    "workload": {"kind": "synthetic", "requests": 60, "warmup_requests": 4,
                 "input_tokens": {"dist": "uniform", "low": 8, "high": 64},
                 "output_tokens": {"dist": "fixed", "value": 8},
                 "arrival": {"process": "poisson", "rate": 100}},
    "slo": {"ttft_ms": {"p95": 200}},
    "search": {"space": "mock-default", "trials": 3, "sampler": "random"},
}


def config(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(MOCK))
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def harness(*args, cwd, timeout=300):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout)


def test_tune_writes_report_and_recommendation(tmp_path):
    proc = harness("tune", str(config(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "cli")
    html = run.report.read_text()
    assert "SIMULATED ENGINE" in html and "Recommended config and why" in html
    rec = yaml.safe_load(run.recommended.read_text())
    assert rec["simulated"] is True and rec["engine"]["kind"] == "mock"
    assert "recommended: trial" in proc.stderr


def test_ctrl_c_keeps_finished_trials_and_rerun_resumes(tmp_path):
    cfg = config(tmp_path, search__trials=5, workload__requests=150)
    proc = subprocess.Popen([sys.executable, "-m", "harness", "tune", str(cfg)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    run = RunDir(tmp_path / "runs" / "cli")
    deadline = time.monotonic() + 120
    while not (run.trial_dir(1) / TrialFiles.RESULT).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    while not (run.trial_dir(2) / TrialFiles.LOG).exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C delivers to the harness
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    study = optuna.load_study(study_name="cli", storage=run.storage_url())
    finished = {t.number: t.value for t in study.trials if t.state.name == "COMPLETE"}
    assert {0, 1} <= set(finished)
    stamps = {n: (run.trial_dir(n) / TrialFiles.RESULT).stat().st_mtime_ns for n in finished}

    again = harness("tune", str(cfg), cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"resuming: {len(finished)} trial(s) already finished" in again.stderr
    study = optuna.load_study(study_name="cli", storage=run.storage_url())
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 5
    assert {n: t.value for t in complete for n in [t.number] if n in finished} == finished  # never re-run
    assert stamps == {n: (run.trial_dir(n) / TrialFiles.RESULT).stat().st_mtime_ns for n in finished}
    interrupted = [t for t in study.trials if t.user_attrs.get("interrupted")]
    if interrupted:  # the cut-off trial was queued again with its params
        assert any(t.params == interrupted[0].params for t in complete)


def test_bench_measures_one_config_and_can_gate_on_slo(tmp_path):
    proc = harness("bench", str(config(tmp_path)), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "runs" / "cli" / "bench"
    result = json.loads((out / TrialFiles.RESULT).read_text())
    assert result["counts"]["measured"] == 56 and result["counts"]["excluded_warmup"] == 4
    assert "SIMULATED ENGINE" in (out / "report.html").read_text()

    strict = harness("bench", str(config(tmp_path, slo={"ttft_ms": {"p50": 0.001}})), "--fail-on-slo", cwd=tmp_path)
    assert strict.returncode == 1 and "SLO MISS" in strict.stderr


def test_bench_engine_failure_exits_1_with_reason(tmp_path):
    cfg = config(tmp_path, engine={"kind": "mock", "params": {"start_error": "no such model weights"}})
    proc = harness("bench", str(cfg), cwd=tmp_path)
    assert proc.returncode == 1 and "no such model weights" in proc.stderr


def test_report_on_a_non_run_dir_exits_2(tmp_path):
    proc = harness("report", str(tmp_path), cwd=tmp_path)
    assert proc.returncode == 2 and "not a run directory" in proc.stderr


@pytest.mark.slow
def test_tune_on_the_real_transformers_engine(tmp_path):
    """Two trials of the embedded engine through the whole pipeline (real model, real timing)."""
    cfg = config(tmp_path, engine={"kind": "transformers", "model": "builtin:tiny-llama"},
                 workload={"kind": "synthetic", "requests": 16, "warmup_requests": 2,
                           "input_tokens": {"dist": "fixed", "value": 32},
                           "output_tokens": {"dist": "fixed", "value": 8},
                           "arrival": {"process": "closed", "concurrency": 4}},
                 slo={"ttft_ms": {"p95": 60000}},
                 search={"space": "transformers-default", "trials": 2, "sampler": "random", "seed": 3})
    proc = harness("tune", str(cfg), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "cli")
    results = [json.loads(p.read_text()) for p in run.path.glob("trials/*/result.json")]
    assert len(results) == 2
    for r in results:
        assert r["simulated"] is False and r["fingerprint"]["engine"]["engine"] == "transformers-cb"
        assert r["counts"]["completed"] == 14 and r["counts"]["output_length_mismatch"] == 0
        assert r["telemetry"]["available"] is False and "no GPU telemetry" in r["telemetry"]["reason"]
    assert "SIMULATED ENGINE" not in run.report.read_text()


def test_export_writes_vllm_and_trtllm_bench_field_names(tmp_path):
    assert harness("bench", str(config(tmp_path)), cwd=tmp_path).returncode == 0
    out = tmp_path / "runs" / "cli" / "bench"
    proc = harness("export", str(out), "--format", "vllm", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    result = json.loads((out / TrialFiles.RESULT).read_text())
    assert doc["completed"] == result["counts"]["completed"]
    assert doc["p99_ttft_ms"] == pytest.approx(result["distributions"]["ttft_ms"]["p99"])
    proc = harness("export", str(out), "--format", "trtllm-bench", "-o", str(tmp_path / "t.json"), cwd=tmp_path)
    assert proc.returncode == 0 and "performance" in json.loads((tmp_path / "t.json").read_text())
    assert harness("export", str(out), "--format", "csv", cwd=tmp_path).returncode == 2

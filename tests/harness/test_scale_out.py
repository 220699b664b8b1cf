"""Scaling the tuner out: workers sharing one study on a real PostgreSQL server, a worker killed mid-trial,
trials side by side on a host's GPUs, and telemetry following CUDA_VISIBLE_DEVICES.

The PostgreSQL tests start their own server (initdb + pg_ctl) on 127.0.0.1 in a temp dir and stop it; they
skip, naming what to install, where the server binaries or the psycopg driver are missing.
"""
import datetime as dt
import itertools
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
import yaml

from engine_adapters import Hardware, get_adapter
from harness import tuner as tuner_module
from harness.config import parse_config
from harness.errors import ConfigError
from harness.store import RunDir, TrialFiles, read_json
from harness.summary import load_study
from harness.telemetry import TelemetrySampler
from harness.tuner import Tuner, gpus_needed
from tests.harness.test_telemetry import FakeGPU, FakeNVML, FakeNVMLError

# -- a PostgreSQL server of the test's own -------------------------------------------------------------------------


def _server_binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"), key=lambda p: int(p.parts[-3]))
    return str(versions[-1]) if versions else None


def _unprivileged_account() -> str | None:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL server on 127.0.0.1 (free port, trust auth, temp data dir), stopped after the module.
    Yields a function that creates a fresh database and returns its `postgresql://` URL."""
    psycopg = pytest.importorskip("psycopg", reason="the PostgreSQL driver is missing: pip install 'harness[postgres]'")
    initdb, pg_ctl = _server_binary("initdb"), _server_binary("pg_ctl")
    if not (initdb and pg_ctl):
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: install PostgreSQL "
                    "(e.g. apt-get install postgresql) to run the multi-worker tests")
    user = None
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as an unprivileged account
        user = _unprivileged_account()
        if user is None:
            pytest.skip("running as root with no unprivileged account (postgres, nobody) to run PostgreSQL as")
    base = Path(tempfile.mkdtemp(prefix="harness-pg-"))  # not tmp_path: its parents are private to root
    if user:
        shutil.chown(base, user)
    data, port = base / "data", _free_port()

    def pg(*args, check=True):
        return subprocess.run([*args], user=user, cwd=base, check=check, capture_output=True, text=True, timeout=120)

    try:
        pg(initdb, "-D", str(data), "-U", "harness", "--auth=trust", "-E", "UTF8", "--no-sync")
        pg(pg_ctl, "-D", str(data), "-l", str(base / "server.log"), "-w", "-t", "60", "-o",
           f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories='' -c fsync=off", "start")
    except subprocess.CalledProcessError as exc:
        log = (base / "server.log").read_text() if (base / "server.log").exists() else ""
        shutil.rmtree(base, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}\n{log}")
    numbers = itertools.count()

    def new_database() -> str:
        name = f"study{next(numbers)}"
        with psycopg.connect(host="127.0.0.1", port=port, user="harness", dbname="postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql://harness@127.0.0.1:{port}/{name}"

    try:
        yield new_database
    finally:
        pg(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


# -- experiments and workers ---------------------------------------------------------------------------------------


def experiment_yaml(tmp_path: Path, *, trials: int, start_delay_s: float = 0.0, choices=(1, 4, 16)) -> Path:
    """A mock-engine experiment whose trials take at least `start_delay_s` (so they can overlap or be cut off)."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({
        "name": "small", "engine": "mock",
        "params": {"max_batch_size": {"type": "categorical", "choices": list(choices)}}}))
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump({
        "name": "scale",
        "engine": {"kind": "mock", "params": {"step_ms": 1, "decode_ms_per_seq": 0.2, "prefill_ms_per_token": 0,
                                              "start_delay_s": start_delay_s}},
        "workload": {"kind": "synthetic", "requests": 30, "warmup_requests": 2,
                     "input_tokens": {"dist": "fixed", "value": 16}, "output_tokens": {"dist": "fixed", "value": 8},
                     "arrival": {"process": "closed", "concurrency": 8}},
        "slo": {"tpot_ms": {"p95": 50}},
        "search": {"space": "space.yaml", "trials": trials, "objective": "maximize output_throughput_tok_s",
                   "sampler": "random", "trial_timeout_s": 120},
    }))
    return path


def start_worker(cfg: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "harness", "tune", str(cfg), *args], cwd=cfg.parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


@pytest.fixture
def workers():
    """Start `harness tune` workers; any still running at the end of the test are killed."""
    started = []

    def start(cfg: Path, *args: str) -> subprocess.Popen:
        started.append(start_worker(cfg, *args))
        return started[-1]

    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    """Wait for a worker; its stderr. Fails the test when it does not exit 0."""
    _, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return err


def engine_starts(run: RunDir, number: int) -> int:
    """How many times trial `number`'s process started its engine (its log is appended to, never replaced)."""
    return (run.trial_dir(number) / TrialFiles.LOG).read_text().count("starting mock engine")


def assert_consistent(study: optuna.Study, run: RunDir, budget: int) -> list:
    """The study holds exactly `budget` completed trials, nothing running or queued, and each completed trial
    ran its engine once and left its result."""
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == budget, states
    assert "RUNNING" not in states and "WAITING" not in states, states
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    for t in complete:
        assert (run.trial_dir(t.number) / TrialFiles.RESULT).exists()
        assert engine_starts(run, t.number) == 1, f"trial {t.number} ran more than once"
    return complete


# -- many workers, one study ---------------------------------------------------------------------------------------


def test_two_workers_share_one_study_with_no_trial_lost_or_duplicated(tmp_path, postgres, workers):
    url, run = postgres(), RunDir(tmp_path / "run")
    cfg = experiment_yaml(tmp_path, trials=6, start_delay_s=0.5)
    args = ("--storage", url, "--study", "shared", "--run-dir", str(run.path))
    a, b = workers(cfg, *args), workers(cfg, *args)
    errs = [finish(a), finish(b)]
    assert all("study 'shared' in postgresql+psycopg://harness@127.0.0.1" in err for err in errs)

    study = optuna.load_study(study_name="shared", storage=url)
    complete = assert_consistent(study, run, budget=6)  # the budget is the study's: met exactly, not per worker
    assert len(study.trials) == 6  # nothing failed, interrupted or asked beyond the budget
    assert {t.user_attrs["worker"] for t in complete} == {f"{platform.node()}:{p.pid}" for p in (a, b)}
    assert sorted(int(p.name) for p in (run.path / "trials").iterdir()) == sorted(t.number for t in complete)
    summary = load_study(run, url)
    assert len(summary.completed) == 6 and all(t.result for t in summary.completed)
    assert run.report.exists()


def test_a_worker_killed_mid_trial_loses_only_that_trial_and_the_study_resumes(tmp_path, postgres, workers):
    url, run = postgres(), RunDir(tmp_path / "run")
    cfg = experiment_yaml(tmp_path, trials=5, start_delay_s=3)
    args = ("--storage", url, "--run-dir", str(run.path), "--heartbeat-s", "1")  # lost after 3 s without heartbeat
    victim, survivor = workers(cfg, *args), workers(cfg, *args)
    victim_id = f"{platform.node()}:{victim.pid}"
    deadline = time.monotonic() + 120
    while "scale" not in optuna.get_all_study_names(url) and time.monotonic() < deadline:
        time.sleep(0.1)
    study = optuna.load_study(study_name="scale", storage=url)
    cut = None
    while cut is None and time.monotonic() < deadline:  # the victim's trial, once its engine is starting
        cut = next((t for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
                    if t.user_attrs.get("worker") == victim_id and (run.trial_dir(t.number) / TrialFiles.LOG).exists()
                    and engine_starts(run, t.number) == 1), None)
        time.sleep(0.1)
    assert cut is not None, "the victim never started a trial"
    done_before = {t.number: t.values for t in study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))}
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    restarted = workers(cfg, *args)  # the same command again
    finish(survivor), finish(restarted)

    study = optuna.load_study(study_name="scale", storage=url)
    complete = assert_consistent(study, run, budget=5)
    lost = study.trials[cut.number]
    assert lost.state.name == "FAIL" and lost.user_attrs["interrupted"] is True
    assert "no heartbeat for 3 s" in lost.user_attrs["reason"]
    assert [t.number for t in study.trials if t.state.name != "COMPLETE"] == [cut.number]  # only that trial lost
    assert any(t.params == lost.params and t.number > cut.number for t in complete)  # and run again
    assert not (run.trial_dir(cut.number) / TrialFiles.RESULT).exists()  # its process died with its worker
    assert {t.number: t.values for t in complete if t.number in done_before} == done_before  # kept, not re-run


def test_a_sqlite_study_refuses_a_second_worker(tmp_path, workers):
    cfg = experiment_yaml(tmp_path, trials=1, start_delay_s=3)
    run = RunDir(tmp_path / "run")
    first = workers(cfg, "--run-dir", str(run.path))
    deadline = time.monotonic() + 60
    while not (run.trial_dir(0) / TrialFiles.LOG).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    second = start_worker(cfg, "--run-dir", str(run.path))
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2
    assert "another `harness tune` is running this study" in err and "--storage postgresql://" in " ".join(err.split())
    finish(first)
    assert [t.state for t in load_study(run).trials] == ["complete"]


# -- many GPUs, one host -------------------------------------------------------------------------------------------


def _window(run: RunDir, number: int) -> tuple[dt.datetime, dt.datetime]:
    result = read_json(run.trial_dir(number) / TrialFiles.RESULT)
    return dt.datetime.fromisoformat(result["started_at"]), dt.datetime.fromisoformat(result["finished_at"])


def overlapping_pairs(run: RunDir, trials: list) -> list[tuple]:
    """Pairs of trials whose processes measured at the same time (by the times their results record)."""
    windows = {t.number: _window(run, t.number) for t in trials}
    return [(s, t) for s, t in itertools.combinations(trials, 2)
            if windows[s.number][0] < windows[t.number][1] and windows[t.number][0] < windows[s.number][1]]


def test_trials_run_side_by_side_on_disjoint_gpus(tmp_path, workers):
    """Fake GPU ids on a CPU machine: the mock engine ignores them; the trials' environment carries them."""
    cfg = experiment_yaml(tmp_path, trials=4, start_delay_s=2)
    run = RunDir(tmp_path / "run")
    assert "trials run side by side on GPUs 0,1" in finish(workers(cfg, "--run-dir", str(run.path), "--gpus", "0,1"))
    study = optuna.load_study(study_name="scale", storage=run.storage_url())
    complete = assert_consistent(study, run, budget=4)
    for t in complete:
        assert t.user_attrs["gpus"] in (["0"], ["1"])
        log = (run.trial_dir(t.number) / TrialFiles.LOG).read_text()
        assert f"CUDA_VISIBLE_DEVICES={t.user_attrs['gpus'][0]} CUDA_DEVICE_ORDER=PCI_BUS_ID" in log.splitlines()[0]
    together = overlapping_pairs(run, complete)
    assert together, "no two trials ran at the same time"
    assert all(s.user_attrs["gpus"] != t.user_attrs["gpus"] for s, t in together)


def mock_experiment(tmp_path: Path, trials: int, choices: list[int]):
    data = yaml.safe_load(experiment_yaml(tmp_path, trials=trials, start_delay_s=1, choices=choices).read_text())
    return parse_config(data, "test")


def test_each_trial_gets_as_many_free_gpus_as_it_needs(tmp_path, monkeypatch):
    """The mock engine has no tensor/pipeline parallelism, so its GPU need is scripted by batch size: 16 needs
    2 GPUs, 64 needs 4 (more than the 3 listed: rejected before launch)."""
    monkeypatch.setattr(tuner_module, "gpus_needed", lambda cfg: {16: 2, 64: 4}.get(cfg.max_batch_size, 1))
    run = RunDir(tmp_path / "run")
    tuner = Tuner(mock_experiment(tmp_path, trials=6, choices=[1, 16, 64]), run, config_dir=tmp_path,
                  gpus=["0", "1", "2"], hardware=Hardware())
    tuner.run()
    trials = tuner.study.get_trials()
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(complete) == 6
    assert {t.params["max_batch_size"] for t in complete} == {1, 16}, "precondition: both sizes were sampled"
    for t in complete:
        assert len(t.user_attrs["gpus"]) == (2 if t.params["max_batch_size"] == 16 else 1)
    too_big = [t for t in trials if t.params["max_batch_size"] == 64]
    assert too_big and all(t.state.name == "PRUNED" and t.user_attrs["infeasible"] and "needs 4 GPUs" in t.user_attrs["reason"]
                           and "--gpus lists 3" in t.user_attrs["reason"] for t in too_big)
    assert not any(run.trial_dir(t.number).exists() for t in too_big)
    together = overlapping_pairs(run, complete)
    assert together, "no two trials ran at the same time"
    assert all(not set(s.user_attrs["gpus"]) & set(t.user_attrs["gpus"]) for s, t in together)


def test_gpu_ids_must_be_distinct(tmp_path):
    with pytest.raises(ConfigError, match="--gpus: expected distinct device ids"):
        Tuner(mock_experiment(tmp_path, trials=1, choices=[1]), RunDir(tmp_path / "run"), config_dir=tmp_path,
              gpus=["0", "1", "0"], hardware=Hardware())


def test_gpus_needed_is_tensor_times_pipeline_parallel_size():
    trtllm = get_adapter("tensorrt_llm").Config
    assert gpus_needed(trtllm(model="m", tensor_parallel_size=2, pipeline_parallel_size=2)) == 4
    assert gpus_needed(trtllm(model="m")) == 1
    assert gpus_needed(get_adapter("mock").Config()) == 1  # no parallelism knobs: one GPU
    assert gpus_needed(get_adapter("server").Config(model="m", preset="vllm", tp=2, pp=2)) == 4  # the launcher's names


# -- telemetry watches the trial's GPUs ----------------------------------------------------------------------------


class UUIDFakeNVML(FakeNVML):
    """FakeNVML with UUID lookup: GPU i has UUID GPU-000i."""

    def nvmlDeviceGetHandleByUUID(self, uuid):
        for gpu, i in zip(self.gpus, itertools.count()):
            if uuid == f"GPU-000{i}":
                return gpu
        raise FakeNVMLError("Not Found")

    def nvmlDeviceGetIndex(self, handle):
        return self.gpus.index(handle)


def watched(monkeypatch, visible: str | None) -> dict:
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with TelemetrySampler(interval_s=3600, nvml=UUIDFakeNVML([FakeGPU(name=n) for n in "ABCD"])) as sampler:
        pass
    return sampler.summary()


@pytest.mark.parametrize("visible, names", [(None, "ABCD"), ("2,0", "CA"), ("GPU-0003", "D"), ("1,-1,2", "B")])
def test_telemetry_watches_the_gpus_cuda_visible_devices_names(monkeypatch, visible, names):
    assert "".join(g["name"] for g in watched(monkeypatch, visible)["gpus"]) == names


@pytest.mark.parametrize("visible, why", [
    ("", "CUDA_VISIBLE_DEVICES is empty"), ("7", "GPU index 7 not present"), ("GPU-0009", "NVML cannot find"),
    ("-1", "leaves no GPU"), ("MIG-1234", "MIG instances are not sampled"), ("gpu0", "neither a device index")])
def test_telemetry_says_why_when_cuda_visible_devices_leaves_nothing_to_watch(monkeypatch, visible, why):
    summary = watched(monkeypatch, visible)
    assert summary["available"] is False and why in summary["reason"]

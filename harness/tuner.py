"""The Optuna study: ask for a config, run it as a subprocess trial, tell the result.

Trial states: COMPLETE (measured; objective = the metric, SLO misses are constraint violations),
PRUNED (infeasible: broke a space rule or the adapter's check; never launched, or refused by the
engine's own check), FAIL (the engine raised, crashed, failed preflight or exceeded
`trial_timeout_s`; reason recorded). The study lives in SQLite in the run dir (or `--storage`);
running the same command again resumes it: finished trials are kept, a trial cut off by a kill
or Ctrl-C is marked failed ("interrupted") and its params are queued to run again.
"""
from __future__ import annotations

import ctypes
import math
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import optuna

from engine_adapters import Hardware, get_adapter
from harness.config import ExperimentConfig, parse_objective
from harness.errors import ConfigError
from harness.metrics import metric_value
from harness.store import RunDir, TrialFiles, read_json, write_yaml
from search_spaces import SearchSpace, SpaceError, load_space
from workloads import TokenSpace

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)

_KILL_GRACE_S = 5.0
_ctrl_c = threading.Event()


@contextmanager
def ctrl_c_latch():
    """While open, Ctrl-C (SIGINT) both raises KeyboardInterrupt and latches a flag that the trial loop checks.

    Python drops a KeyboardInterrupt raised inside an at-fork callback ("Exception ignored in
    _releaseLock"), so a Ctrl-C landing while a trial process is being spawned would otherwise be lost."""
    def on_sigint(signum, frame):
        _ctrl_c.set()
        raise KeyboardInterrupt

    _ctrl_c.clear()
    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _ctrl_c.clear()


def _raise_if_ctrl_c() -> None:
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete | failed | infeasible
    params: dict
    value: float | None = None
    reason: str | None = None
    duration_s: float = 0.0


def objective_value(result: dict, objective: str) -> float | None:
    """The objective's value in a result dict, or None when it is undefined (e.g. no completed request)."""
    _, metric, stat = parse_objective(objective)
    value = metric_value(result, metric, stat)
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else float(value)


def constraint_violations(result: dict) -> dict[str, float]:
    """One number per SLO (and the error-rate limit): <= 0 when met, else the relative excess."""
    out = {}
    for check in result["slo"]:
        measured = check["measured"]
        out[f"{check['metric']}.{check['statistic']}"] = (
            1.0 if measured is None else (measured - check["limit"]) / check["limit"])
    out["error_rate"] = (result["scalars"]["error_rate"] or 0.0) - result["max_error_rate"]
    return out


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it if the harness dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: a killed harness may leave the trial running until it ends


def run_trial_process(trial_dir: Path, timeout_s: float,
                      on_log: Callable[[str], None] | None = None) -> tuple[str, str | None]:
    """Run `python -m harness.trial trial_dir` with a timeout; return (state, reason).

    The child gets its own process group so a timeout or Ctrl-C kills the engine with it, and dies
    with the harness if the harness is killed, so no orphan holds the GPU. `on_log` gets the last
    line of the trial's log about twice a second (for progress display).
    """
    with (trial_dir / TrialFiles.LOG).open("ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "harness.trial", str(trial_dir)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        deadline = time.monotonic() + timeout_s
        try:
            while (code := proc.poll()) is None:
                _raise_if_ctrl_c()
                if time.monotonic() > deadline:
                    _kill_group(proc)
                    return "failed", f"timeout: trial ran longer than {timeout_s:g} s and was killed"
                if on_log:
                    on_log(_log_tail(trial_dir / TrialFiles.LOG, lines=1))
                time.sleep(0.5)
        except BaseException:
            _kill_group(proc)
            raise
    if (trial_dir / TrialFiles.RESULT).exists():
        return "complete", None
    failure = read_json(trial_dir / TrialFiles.FAILURE)
    if failure:
        return ("infeasible" if failure["kind"] == "infeasible" else "failed"), failure["reason"]
    tail = _log_tail(trial_dir / TrialFiles.LOG)
    how = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
    return "failed", f"trial process {how} without a result" + (f"; log ends: {tail}" if tail else "")


def _kill_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, _KILL_GRACE_S), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _log_tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])[-500:]


class _AskTellGridSampler(optuna.samplers.GridSampler):
    """GridSampler under ask/tell: its after_trial only calls Study.stop() once the grid is exhausted, which
    works inside optimize() alone; the tuner stops by itself (`Tuner._grid_done`)."""

    def after_trial(self, study, trial, state, values) -> None:
        return None


#: Consecutive sampled points rejected before launch after which the space is taken to hold nothing feasible.
MAX_REJECTED_IN_A_ROW = 50


class Tuner:
    """Drives one study for one experiment config in one run dir."""

    def __init__(self, cfg: ExperimentConfig, run_dir: RunDir, *, config_dir: Path, storage: str | None = None,
                 hardware: Hardware | None = None):
        if cfg.search is None:
            raise ConfigError("config has no `search:` section; `harness tune` needs one (or use `harness bench`)")
        try:
            self.space: SearchSpace = load_space(cfg.search.space, base_dir=config_dir)
        except SpaceError as exc:
            raise ConfigError(f"search.space: {exc}") from None
        if cfg.engine.kind not in self.space.engines:
            raise ConfigError(f"search.space: space {self.space.name!r} is for engine {' / '.join(self.space.engines)}, "
                              f"but engine.kind is {cfg.engine.kind!r}")
        self.cfg, self.run_dir = cfg, run_dir
        self.hardware = hardware or Hardware.detect()
        self.adapter = get_adapter(cfg.engine.kind)
        if (reason := self.adapter.unavailable()) is not None:
            raise ConfigError(f"engine.kind {cfg.engine.kind}: {reason}")
        direction, _, _ = parse_objective(cfg.search.objective)
        run_dir.path.mkdir(parents=True, exist_ok=True)
        self.grid_size = None
        if cfg.search.sampler == "tpe":  # TPE reads each trial's SLO constraints (set_constraint) to prefer configs that meet them
            sampler = optuna.samplers.TPESampler(seed=cfg.search.seed,
                                                 n_startup_trials=min(5, max(cfg.search.trials // 3, 1)))
        elif cfg.search.sampler == "random":
            sampler = optuna.samplers.RandomSampler(seed=cfg.search.seed)
        else:
            try:
                grid = self.space.grid()
            except ValueError as exc:
                raise ConfigError(f"search.sampler grid: {exc}") from None
            self.grid_size = math.prod(len(values) for values in grid.values())
            sampler = _AskTellGridSampler(grid, seed=cfg.search.seed)
        self.study = optuna.create_study(study_name=cfg.name, storage=storage or run_dir.storage_url(),
                                         sampler=sampler, direction=direction, load_if_exists=True)
        self._check_same_experiment()
        if not self.study.trials:
            self._enqueue_warm_start()

    def _enqueue_warm_start(self) -> None:
        """Queue the space's warm-start points, snapped onto the space, as a new study's first trials."""
        for entry in self.space.warm_start:
            if entry == "engine-heuristic":
                point, source = self._engine_heuristic(), f"{self.cfg.engine.kind} engine heuristic"
            else:
                point, source = entry, "warm_start point"
            if point:
                self.study.enqueue_trial(self.space.snap(point), user_attrs={"warm_start": source})

    def _engine_heuristic(self) -> dict | None:
        """The adapter's sizing rule for the configured engine, at the workload's mean request lengths
        (text prompts without a tokenizer: UTF-8 bytes / 4)."""
        specs = list(self.cfg.workload.generate(TokenSpace(vocab_size=32_000)))
        inputs = [s.input_tokens if s.input_tokens is not None else max(len(s.prompt_text.encode()) // 4, 1)
                  for s in specs]
        outputs = [s.max_output_tokens for s in specs]
        return self.adapter.heuristic_point(self.cfg.engine.resolve(), self.hardware,
                                            sum(inputs) / len(inputs), sum(outputs) / len(outputs))

    def _check_same_experiment(self) -> None:
        fp = self.cfg.fingerprint()
        stored = self.study.user_attrs.get("config_fingerprint")
        if stored is None:
            self.study.set_user_attr("config_fingerprint", fp)
            self.study.set_user_attr("config", self.cfg.model_dump(mode="json"))
        elif stored != fp:
            raise ConfigError(f"{self.run_dir.path}: holds a study of a different config (only search.trials may "
                              "change between runs); pass --run-dir for a new study or delete the directory")

    def _mark_interrupted(self, trial: optuna.Trial) -> None:
        """Fail a trial cut off by a stop of the harness (it does not count) and queue its params again;
        a trial whose result was already told (the stop came just after) is left as it is."""
        if self.study._storage.get_trial(trial._trial_id).state.is_finished():
            return
        trial.set_user_attr("reason", "harness was stopped mid-trial; its params were queued to run again")
        trial.set_user_attr("interrupted", True)
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        self.study.enqueue_trial(trial.params, skip_if_exists=False)

    def _recover_interrupted(self) -> None:
        """Trials a killed harness left RUNNING: mark them interrupted."""
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._mark_interrupted(optuna.Trial(self.study, t._trial_id))

    def finished(self) -> int:
        """Trials that count toward the budget: those launched that completed, or failed for a reason other than
        interruption. Points rejected before launch (rules, adapter checks) cost nothing and do not count."""
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=done)
                   if not t.user_attrs.get("interrupted") and not t.user_attrs.get("rejected_before_launch"))

    def _grid_done(self) -> bool:
        """A grid search has tried every point of the grid (launched or rejected before launch)."""
        if self.grid_size is None:
            return False
        tried = {tuple(sorted(t.params.items())) for t in self.study.get_trials(deepcopy=False)
                 if t.state.is_finished() and not t.user_attrs.get("interrupted")}
        return len(tried) >= self.grid_size

    def run(self, on_start: Callable[[int, dict], None] | None = None,
            on_end: Callable[[TrialOutcome], None] | None = None,
            on_log: Callable[[str], None] | None = None) -> None:
        """Run trials until `search.trials` have finished; safe to interrupt and call again.

        Callbacks: `on_start(number, params)`, `on_end(outcome)`, and `on_log(line)` with the running
        trial's latest log line."""
        self._recover_interrupted()
        rejected_in_a_row = 0
        while self.finished() < self.cfg.search.trials and not self._grid_done():
            _raise_if_ctrl_c()
            trial = self.study.ask()
            params = self.space.suggest(trial)
            if on_start:
                on_start(trial.number, params)
            t0 = time.monotonic()
            try:
                outcome = self._evaluate(trial, params, on_log)
            except BaseException:
                self._mark_interrupted(trial)
                raise
            outcome.duration_s = time.monotonic() - t0
            if on_end:
                on_end(outcome)
            rejected_in_a_row = rejected_in_a_row + 1 if outcome.state == "infeasible" and outcome.reason and \
                trial.user_attrs.get("rejected_before_launch") else 0
            if rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
                raise ConfigError(f"search.space: the last {rejected_in_a_row} points sampled were all infeasible on "
                                  f"this machine (latest: {outcome.reason}); narrow the space or fix the engine config")

    def _evaluate(self, trial: optuna.Trial, params: dict, on_log: Callable[[str], None] | None) -> TrialOutcome:
        number = trial.number
        reason = self.space.broken_rule(params, max(self.hardware.gpu_count, 1))
        if reason:
            reason = f"breaks search-space rule: {reason}"
        else:
            try:
                engine_cfg = self.cfg.engine.resolve(params)
            except ValueError as exc:
                engine_cfg, reason = None, f"invalid engine config: {exc}"
            reason = reason or self.adapter.check(engine_cfg, self.hardware, self.cfg.workload.max_sequence_tokens())
        if reason:
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("rejected_before_launch", True)
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            return TrialOutcome(number, "infeasible", params, reason=reason)

        trial_dir = self.run_dir.trial_dir(number)
        if trial_dir.exists():  # leftovers of an interrupted attempt with this number
            for name in (TrialFiles.RESULT, TrialFiles.FAILURE, TrialFiles.RECORDS, TrialFiles.TELEMETRY):
                (trial_dir / name).unlink(missing_ok=True)
        trial_cfg = self.cfg.model_dump(mode="json", exclude={"search"})
        trial_cfg["engine"]["params"] = {**trial_cfg["engine"]["params"], **params}
        write_yaml(trial_dir / TrialFiles.CONFIG, trial_cfg)
        state, reason = run_trial_process(trial_dir, self.cfg.search.trial_timeout_s, on_log)
        if state != "complete":
            trial.set_user_attr("reason", reason)
            tstate = optuna.trial.TrialState.PRUNED if state == "infeasible" else optuna.trial.TrialState.FAIL
            self.study.tell(trial, state=tstate)
            return TrialOutcome(number, state, params, reason=reason)
        result = read_json(trial_dir / TrialFiles.RESULT)
        value = objective_value(result, self.cfg.search.objective)
        for key, violation in constraint_violations(result).items():
            trial.set_constraint(key, violation)
        trial.set_user_attr("slo_pass", result["slo_pass"])
        if value is None:
            reason = "objective undefined: no measured request completed"
            trial.set_user_attr("reason", reason)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
            return TrialOutcome(number, "failed", params, reason=reason)
        self.study.tell(trial, value)
        return TrialOutcome(number, "complete", params, value=value)

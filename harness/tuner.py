"""The Optuna study: ask for a config, run it as a subprocess trial, tell the result.

Trial states: COMPLETE (measured; objective = the metric, SLO misses are constraint violations),
PRUNED (user attr `infeasible`: broke a space rule or the adapter's check, or lies in the out-of-memory
region of an earlier trial; never launched, or refused by the engine's own check; or `pruned_by_probe`:
with `search.probe`, stopped after its probe), FAIL (the engine raised, crashed, failed
preflight or exceeded `trial_timeout_s`; reason recorded; user attr `out_of_memory` when the reason
or the log's end reads as an out-of-memory error). The study lives in SQLite in the run dir (or
`--storage`); running the same command again resumes it: finished trials are kept, a trial cut off
by a kill or Ctrl-C is marked failed ("interrupted") and its params are queued to run again.

Cost and robustness (README "How tuning works"):
- Out-of-memory regions: a trial that ran out of memory marks every point at least as large in each
  of the space's `memory_knobs`, the other knobs equal, as infeasible (`SearchSpace.in_oom_region`):
  such points are rejected before launch and cost no budget.
- Probe (`search.probe`, one objective): each trial writes its run up to the moment its first N
  requests were done to `probe.jsonl` (harness.trial); the tuner reports the objective on it to
  Optuna at step PROBE_STEP and asks the pruner (`ProbePruner`); a pruned trial is killed at once.
- Repeats (`search.repeats`): once every budget trial has ended, the best configs that met every SLO
  are queued again (user attr `repeat_of`), outside the budget; the summary decides on their means.
- Rebuild or restart: for engines that build and cache an engine (the space's `rebuild` knobs), each
  launched trial notes whether it needs a new build (user attr `engine_change`).

Scaling out (README "Scaling out"): on a server database (`--storage postgresql://...`) any number of
workers on any machines share one study. Each worker keeps Optuna's heartbeat for the trials it runs;
a RUNNING trial whose heartbeat stopped for the grace period (its worker was killed or cut off) is
marked interrupted and queued again by whichever worker notices first, while live workers' trials are
left alone. A SQLite study has one worker at a time (an exclusive lock). Within one worker, `gpus`
runs trials side by side, each on its own free subset of those GPUs (CUDA_VISIBLE_DEVICES) of the
size its tensor x pipeline parallelism needs. The budget `search.trials` is the study's: a worker
starts a trial only while the finished trials plus those running on every worker are fewer (counted
and asked under a PostgreSQL advisory lock, so concurrent workers never overshoot it).
"""
from __future__ import annotations

import fcntl
import math
import os
import platform
import threading
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_for
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import optuna
import sqlalchemy
from optuna.storages._heartbeat import BaseHeartbeatThread, get_heartbeat_thread, is_heartbeat_enabled

from engine_adapters import Hardware, get_adapter
from harness.config import ExperimentConfig, SearchSpec
from harness.errors import ConfigError
from harness.metrics import compute, gpus_per_replica
from harness.objectives import (PROBE_STEP, UNDEFINED_OBJECTIVE, ProbePruner, make_sampler, objective_value,
                                tell_result, tell_unmeasured)
from harness.records import read_records
from harness.store import RunDir, TrialFiles, read_json, write_yaml
from harness.summary import SPACE_NARROWED_ATTR
from harness.trial import PROBE_RECORDS
from harness.trial_process import out_of_memory, raise_if_ctrl_c, run_trial_process
from search_spaces import SearchSpace, SpaceError, load_space
from workloads import TokenSpace

warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class TrialOutcome:
    number: int
    state: str  # complete | failed | infeasible | pruned (stopped after its probe)
    params: dict
    values: list[float] | None = None  # complete: every objective's value, primary first
    reason: str | None = None
    duration_s: float = 0.0
    repeat_of: int | None = None  # a repeat measurement of this trial's config (`search.repeats`)

    @property
    def value(self) -> float | None:
        """The primary (first) objective's value."""
        return self.values[0] if self.values else None


#: Consecutive sampled points rejected before launch after which the space is taken to hold nothing feasible.
MAX_REJECTED_IN_A_ROW = 50

#: Seconds between a worker's heartbeats for each trial it runs, on a server database (PostgreSQL).
HEARTBEAT_S = 10
#: Heartbeats a trial's worker may miss before the trial is taken as lost and queued again.
GRACE_HEARTBEATS = 3
_IDLE_POLL_S = 1.0
_ADVISORY_LOCK_CLASS = 0x6861  # first key of the PostgreSQL advisory locks; the second is a study's id (0: tables)
_STOPPED = "harness was stopped mid-trial; its params were queued to run again"


def gpus_needed(engine_cfg) -> int:
    """GPUs one engine of this config occupies: tp x pp under either naming (`metrics.gpus_per_replica`)."""
    return gpus_per_replica(engine_cfg.model_dump())


def _check_gpu_ids(ids: Sequence[str]) -> list[str]:
    """`--gpus` ids, stripped; a ConfigError for an empty or repeated id."""
    ids = [str(i).strip() for i in ids]
    if "" in ids or len(set(ids)) < len(ids):
        raise ConfigError("--gpus: expected distinct device ids separated by commas (e.g. 0,1,2,3), "
                          f"got {','.join(ids)!r}")
    return ids


@dataclass
class _Launch:
    """A trial this worker asked for, from ask to tell: its heartbeat, params, GPU need and the GPUs it holds."""

    trial: optuna.Trial
    heartbeat: BaseHeartbeatThread
    params: dict = field(default_factory=dict)
    gpus_needed: int = 0
    gpus: list[str] = field(default_factory=list)
    t0: float = field(default_factory=time.monotonic)
    repeat_of: int | None = None  # a repeat measurement of that trial's config (`search.repeats`)
    probe_reported: bool = False  # its probe value was reported to the study


class Tuner:
    """Drives one study for one experiment config: this process is one of the study's workers.

    `storage` is an Optuna RDB URL (default: SQLite in the run dir; `postgresql://...` for several workers),
    `study` the study's name in it (default: the config's name). `gpus` are device ids as CUDA_VISIBLE_DEVICES
    takes them: given, trials run side by side on them (see `run`); not given, one at a time on whatever the
    engine sees. The ids are the resource a trial needs (tensor x pipeline parallel size of them), so a count
    of workers would not do: the number of trials in flight follows from which GPUs are free, and disjoint
    id lists let several workers share one host. `heartbeat_s` paces the heartbeats on a server database.
    """

    def __init__(self, cfg: ExperimentConfig, run_dir: RunDir, *, config_dir: Path, storage: str | None = None,
                 study: str | None = None, gpus: Sequence[str] | None = None, heartbeat_s: int = HEARTBEAT_S,
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
        if (reason := self.adapter.unavailable(cfg.engine.resolve())) is not None:
            raise ConfigError(f"engine.kind {cfg.engine.kind}: {reason}")
        self.gpus = _check_gpu_ids(gpus or [])
        try:
            self.space, self.space_notes = self.space.for_gpus(self._gpu_count())
        except SpaceError as exc:
            raise ConfigError(f"search.space: {exc}") from None
        run_dir.path.mkdir(parents=True, exist_ok=True)
        try:
            sampler = make_sampler(cfg.search, self.space)
        except ValueError as exc:
            raise ConfigError(f"search.sampler {cfg.search.sampler}: {exc}") from None
        self.grid_size = math.prod(len(v) for v in self.space.grid().values()) if cfg.search.sampler == "grid" else None
        self._stop = threading.Event()
        self._rejected_in_a_row = 0
        self.warm_start_skipped: str | None = None  # why the engine heuristic gave no warm-start point
        self._worker = f"{platform.node()}:{os.getpid()}"
        self._lost_reason = (f"its worker sent no heartbeat for {GRACE_HEARTBEATS * heartbeat_s} s (killed, or cut off "
                             "from the database) mid-trial; its params were queued to run again")
        self.study = optuna.create_study(study_name=study or cfg.name,
                                         storage=self._open_storage(storage or run_dir.storage_url(), heartbeat_s),
                                         sampler=sampler, directions=[o.direction for o in cfg.search.objectives],
                                         pruner=self._make_pruner(cfg.search), load_if_exists=True)
        self._heartbeats = is_heartbeat_enabled(self.study._storage)
        with self._study_lock():  # two workers starting a new study at once set it up once
            self._check_same_experiment()
            self.study.set_user_attr(SPACE_NARROWED_ATTR, self.space_notes)
            if not self.study.trials:
                self._enqueue_warm_start()

    @staticmethod
    def _make_pruner(search: SearchSpec) -> optuna.pruners.BasePruner:
        if search.probe is None:
            return optuna.pruners.NopPruner()
        return ProbePruner(search.probe.keep_best_percent, search.probe.startup_trials, search.objectives[0].direction)

    def _open_storage(self, url: str, heartbeat_s: int) -> optuna.storages.RDBStorage:
        """The study's storage. A server database gets Optuna's heartbeats (to tell a dead worker's trials from
        live ones) and an advisory-lock engine; `postgresql://` means psycopg 3 (the `postgres` extra)."""
        parsed = sqlalchemy.engine.make_url(url)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        self.storage_url = parsed.render_as_string(hide_password=False)
        self.storage_label = parsed.render_as_string(hide_password=True)  # for messages: never a password
        server = parsed.get_backend_name() != "sqlite"
        self._sqlite_path = None if server or parsed.database in (None, "", ":memory:") else Path(parsed.database)
        try:
            self._lock_engine = sqlalchemy.create_engine(self.storage_url, pool_pre_ping=True) \
                if parsed.get_backend_name() == "postgresql" else None
            with self._advisory_lock(0):  # workers starting together on a new database create its tables once
                storage = optuna.storages.RDBStorage(
                    self.storage_url, heartbeat_interval=heartbeat_s if server else None,
                    grace_period=GRACE_HEARTBEATS * heartbeat_s if server else None)
        except ImportError as exc:
            raise ConfigError(f"--storage {self.storage_label}: its database driver is not installed ({exc}); for "
                              "PostgreSQL: pip install 'harness[postgres]'") from None
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise ConfigError(f"--storage {self.storage_label}: cannot open the database: "
                              f"{getattr(exc, 'orig', None) or exc}") from None
        return storage

    def _study_lock(self):
        """Held by one worker of the study at a time (a PostgreSQL advisory lock keyed by the study's id); a no-op
        on other databases (a SQLite study has one worker: `_sole_worker`)."""
        return self._advisory_lock(self.study._study_id)

    @contextmanager
    def _advisory_lock(self, key: int):
        """PostgreSQL's advisory lock (_ADVISORY_LOCK_CLASS, key) while open; a no-op on other databases."""
        if self._lock_engine is None:
            yield
            return
        keys = {"kind": _ADVISORY_LOCK_CLASS, "key": key}
        with self._lock_engine.connect() as conn:
            conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:kind, :key)"), keys)
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:kind, :key)"), keys)

    @contextmanager
    def _sole_worker(self):
        """On SQLite: the only worker of the study while open (an exclusive lock next to the database), so a
        trial found RUNNING at start is known to be cut off."""
        if self._sqlite_path is None:
            yield
            return
        with open(self._sqlite_path.with_name(self._sqlite_path.name + ".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ConfigError(f"{self._sqlite_path}: another `harness tune` is running this study; a SQLite study "
                                  "has one worker at a time: for several, use --storage postgresql://...") from None
            yield

    def _enqueue_warm_start(self) -> None:
        """Queue the space's warm-start points, snapped onto the space, as a new study's first trials. The engine
        heuristic sets only some knobs (trtllm-bench: max_batch_size, max_num_tokens); the others are the engine
        config's own values, as the heuristic assumed them (e.g. tp 1), not sampled. A point's other params are
        sampled."""
        for entry in self.space.warm_start:
            if entry == "engine-heuristic":
                point, source = self._engine_heuristic(), f"{self.cfg.engine.kind} engine heuristic"
                if point:
                    configured = self.cfg.engine.resolve().model_dump(mode="json")
                    point = {**{k: configured[k] for k in self.space.params if configured.get(k) is not None},
                             **point}
            else:
                point, source = entry, "warm_start point"
            if point:
                self.study.enqueue_trial(self.space.snap(point), user_attrs={"warm_start": source})

    def _engine_heuristic(self) -> dict | None:
        """The adapter's sizing rule for the configured engine, at the workload's mean request lengths
        (text prompts without a tokenizer: UTF-8 bytes / 4) and its longest prompt where every length is exact;
        None (and `warm_start_skipped` says why, where the adapter can tell) when it gives no point."""
        specs = list(self.cfg.workload.generate(TokenSpace(vocab_size=32_000)))
        exact = all(s.input_tokens is not None for s in specs)
        inputs = [s.input_tokens if s.input_tokens is not None else max(len(s.prompt_text.encode()) // 4, 1)
                  for s in specs]
        outputs = [s.max_output_tokens for s in specs]
        mean_in, mean_out = sum(inputs) / len(inputs), sum(outputs) / len(outputs)
        config = self.cfg.engine.resolve()
        point = self.adapter.heuristic_point(config, self.hardware, mean_in, mean_out,
                                             max_input_tokens=max(inputs) if exact else None)
        if point is None:
            self.warm_start_skipped = self.adapter.heuristic_unavailable(config, self.hardware, mean_in, mean_out)
        return point

    def _check_same_experiment(self) -> None:
        fp = self.cfg.fingerprint()
        stored = self.study.user_attrs.get("config_fingerprint")
        if stored is None:
            self.study.set_user_attr("config_fingerprint", fp)
            self.study.set_user_attr("config", self.cfg.model_dump(mode="json"))
        elif stored != fp:
            where = self.run_dir.path if self._sqlite_path == self.run_dir.study_db.resolve() else \
                f"study {self.study.study_name!r} in {self.storage_label}"
            raise ConfigError(f"{where}: holds a study of a different config (only search.trials may change between "
                              "runs or workers); pass --run-dir (or --study) for a new study or delete the old one")

    def _mark_interrupted(self, trial_id: int, reason: str = _STOPPED) -> None:
        """Fail a trial cut off before its result was told (it does not count) and queue its params again; a trial
        already finished (told just before the stop, or taken over by another worker) is left as it is."""
        trial = optuna.Trial(self.study, trial_id)
        try:
            if self.study._storage.get_trial(trial_id).state.is_finished():
                return
            trial.set_user_attr("reason", reason)
            trial.set_user_attr("interrupted", True)
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)
        except (optuna.exceptions.UpdateFinishedTrialError, ValueError):  # its worker told it meanwhile
            return
        repeat_of = trial.user_attrs.get("repeat_of")
        self.study.enqueue_trial(trial.params, skip_if_exists=False,
                                 user_attrs=None if repeat_of is None else {"repeat_of": repeat_of})

    def _recover_interrupted(self) -> None:
        """At start: trials a stopped worker left RUNNING are marked interrupted and queued again. A SQLite study
        has this one worker (`_sole_worker`), so that is every RUNNING trial; on a server database, only those
        whose worker's heartbeat stopped (`_recover_lost`)."""
        if self._heartbeats:
            self._recover_lost()
            return
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            self._mark_interrupted(t._trial_id)

    def _recover_lost(self) -> None:
        """On a server database: mark interrupted, and queue again, the RUNNING trials whose worker sent no
        heartbeat for the grace period (Optuna's heartbeat records). Optuna's `fail_stale_trials` would fail them
        with no reason, and a finished trial cannot be annotated; hence this variant of it."""
        if not self._heartbeats:
            return
        with self._study_lock():
            for trial_id in self.study._storage._get_stale_trial_ids(self.study._study_id):
                self._mark_interrupted(trial_id, self._lost_reason)

    def finished(self) -> int:
        """Trials that count toward the budget: those launched that completed, were stopped after their probe, or
        failed for a reason other than interruption. Points rejected before launch (rules, adapter checks,
        out-of-memory regions) cost nothing and do not count, nor do repeat measurements (`search.repeats`)."""
        done = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=done)
                   if not t.user_attrs.get("interrupted") and not t.user_attrs.get("rejected_before_launch")
                   and "repeat_of" not in t.user_attrs)

    def running(self, repeats: bool = True) -> int:
        """Trials running now on every worker of the study (this one's included); `repeats=False`: budget trials
        only, not repeat measurements."""
        return sum(1 for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if repeats or "repeat_of" not in t.user_attrs)

    def _budget_spent(self) -> bool:
        """The finished budget trials plus those running on every worker fill `search.trials` (or every grid point
        is tried or running)."""
        running = self.running(repeats=False)
        return self.finished() + running >= self.cfg.search.trials or self._grid_done(running)

    def _repeats_missing(self) -> list[optuna.trial.FrozenTrial]:
        """The trials whose config is still to be queued for a repeat measurement, once per missing repeat: of the
        completed budget trials that met every SLO, best first by the primary objective, the first of each of the
        `search.repeats.top` best distinct configs, each until it has `repeats.runs` repeats (queued, running or
        finished, whatever their outcome). Empty without `search.repeats`."""
        spec = self.cfg.search.repeats
        if spec is None:
            return []
        trials = self.study.get_trials(deepcopy=False)
        have = Counter(t.user_attrs["repeat_of"] for t in trials
                       if "repeat_of" in t.user_attrs and not t.user_attrs.get("interrupted"))
        sign = self.cfg.search.objectives[0].sign
        passing = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE and t.user_attrs.get("slo_pass")
                   and "repeat_of" not in t.user_attrs]
        best: dict[tuple, optuna.trial.FrozenTrial] = {}  # distinct config -> its best trial, best first
        for t in sorted(passing, key=lambda t: (-sign * t.values[0], t.number)):
            best.setdefault(tuple(sorted(t.params.items())), t)
        return [t for t in list(best.values())[:spec.top] for _ in range(spec.runs - have[t.number])]

    def _queue_repeats(self) -> bool:
        """Once no budget trial runs on any worker (the best configs are known): queue the missing repeat
        measurements (user attr `repeat_of`); whether a repeat waits to run. Call under the study lock."""
        if self.running(repeats=False):
            return False
        for t in self._repeats_missing():
            self.study.enqueue_trial(t.params, user_attrs={"repeat_of": t.number}, skip_if_exists=False)
        return any("repeat_of" in t.user_attrs
                   for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,)))

    def _done(self) -> bool:
        """Nothing is left to run on any worker: the budget is spent, no trial runs, no repeat waits or is missing."""
        with self._study_lock():
            return self._budget_spent() and not self.running() and not self._queue_repeats()

    def _grid_done(self, running: int = 0) -> bool:
        """A grid search has tried every point of the grid (launched or rejected before launch), counting
        `running` trials as tried."""
        if self.grid_size is None:
            return False
        tried = {tuple(sorted(t.params.items())) for t in self.study.get_trials(deepcopy=False)
                 if t.state.is_finished() and not t.user_attrs.get("interrupted")}
        return len(tried) + running >= self.grid_size

    def _ask(self) -> _Launch | None:
        """A new trial with its heartbeat going, or None while the budget is taken (`_budget_spent`) and no repeat
        measurement waits to run (`_queue_repeats`)."""
        self._recover_lost()
        with self._study_lock():  # so that no other worker counts and asks in between
            if self._budget_spent() and not self._queue_repeats():
                return None
            trial = self.study.ask()
        launch = _Launch(trial, get_heartbeat_thread(trial._trial_id, self.study._storage),
                         repeat_of=trial.user_attrs.get("repeat_of"))
        launch.heartbeat.start()
        return launch

    def _end(self, launch: _Launch, outcome: TrialOutcome, on_end: Callable[[TrialOutcome], None] | None) -> None:
        launch.heartbeat.join()
        outcome.duration_s = time.monotonic() - launch.t0
        if on_end:
            on_end(outcome)

    def _interrupt(self, launch: _Launch) -> None:
        self._mark_interrupted(launch.trial._trial_id)
        launch.heartbeat.join()

    def run(self, on_start: Callable[[int, dict], None] | None = None,
            on_end: Callable[[TrialOutcome], None] | None = None,
            on_log: Callable[[str], None] | None = None) -> None:
        """Run trials until the study holds `search.trials` finished ones, whichever worker ran them, then the
        repeat measurements of `search.repeats`; safe to interrupt and call again.

        Without `gpus` one trial runs at a time. With them, trials run side by side, each on the first free ids
        of `gpus` it needs (`gpus_needed`, in CUDA_VISIBLE_DEVICES, with CUDA_DEVICE_ORDER=PCI_BUS_ID unless set,
        so that ids are nvidia-smi's); the next trial waits, first in line, until enough are free. When the
        budget is taken by trials running elsewhere, the worker waits for them, taking over any whose worker dies.

        Callbacks: `on_start(number, params)`, `on_end(outcome)`, and `on_log(line)` with a running trial's latest
        log line (or what the worker waits for)."""
        self._stop.clear()
        free = list(self.gpus)
        in_flight: dict[Future, _Launch] = {}
        waiting: _Launch | None = None  # asked and checked; waits for GPUs
        with self._sole_worker(), ThreadPoolExecutor(max(len(self.gpus), 1), "trial") as pool:
            self._recover_interrupted()
            try:
                while True:
                    raise_if_ctrl_c()
                    for future in [f for f in in_flight if f.done()]:
                        launch = in_flight[future]
                        outcome = self._record(launch, *future.result())
                        del in_flight[future]
                        free = [g for g in self.gpus if g in free or g in launch.gpus]
                        self._end(launch, outcome, on_end)
                    if waiting is None and len(in_flight) < max(len(self.gpus), 1):
                        waiting = self._next_launch(on_start, on_end)
                        if waiting is None and not in_flight:
                            if self._done():
                                return
                            if on_log:
                                on_log(f"waiting for {self.running()} trial(s) on other workers")
                            self._sleep(_IDLE_POLL_S)
                            continue
                    if waiting is not None and len(free) >= waiting.gpus_needed:
                        waiting.gpus, free = free[:waiting.gpus_needed], free[waiting.gpus_needed:]
                        in_flight[self._launch(pool, waiting, on_log)] = waiting
                        waiting = None
                        continue
                    wait_for(in_flight, timeout=0.5, return_when=FIRST_COMPLETED)
            except BaseException:
                self._stop.set()  # the trial threads kill their processes
                wait_for(in_flight)
                for launch in [*in_flight.values(), *([waiting] if waiting else [])]:
                    self._interrupt(launch)
                raise

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            raise_if_ctrl_c()
            time.sleep(0.1)

    def _next_launch(self, on_start: Callable[[int, dict], None] | None,
                     on_end: Callable[[TrialOutcome], None] | None) -> _Launch | None:
        """The next trial to launch (asked, params sampled, checked), or None while the budget is taken. Points
        rejected before launch are told on the way; MAX_REJECTED_IN_A_ROW of them in a row stop the study."""
        while (launch := self._ask()) is not None:
            try:
                launch.trial.set_user_attr("worker", self._worker)
                launch.params = self.space.suggest(launch.trial)
                if on_start:
                    on_start(launch.trial.number, launch.params)
                reason, launch.gpus_needed = self._launch_check(launch.params, oom_region=launch.repeat_of is None)
                if not reason:
                    self._rejected_in_a_row = 0
                    return launch
                launch.trial.set_user_attr("rejected_before_launch", True)
                tell_unmeasured(self.study, launch.trial, "infeasible", reason)
            except BaseException:
                self._interrupt(launch)
                raise
            self._end(launch, TrialOutcome(launch.trial.number, "infeasible", launch.params, reason=reason,
                                           repeat_of=launch.repeat_of), on_end)
            self._rejected_in_a_row += 1
            if self._rejected_in_a_row >= MAX_REJECTED_IN_A_ROW:
                raise ConfigError(f"search.space: the last {self._rejected_in_a_row} points sampled were all "
                                  f"infeasible on this machine (latest: {reason}); narrow the space or fix the engine "
                                  "config")
        return None

    def _launch_check(self, params: dict, oom_region: bool = True) -> tuple[str | None, int]:
        """Why `params` cannot be launched here (None when they can), and how many of `gpus` they need (0 when
        the tuner assigns no GPUs). `oom_region`: also reject points in an earlier trial's out-of-memory region
        (not for repeats, whose config ran)."""
        if rule := self.space.broken_rule(params, self._gpu_count()):
            return f"breaks search-space rule: {rule}", 0
        if oom_region and (why := self._oom_region_reason(params)):
            return why, 0
        try:
            engine_cfg = self.cfg.engine.resolve(params)
        except ValueError as exc:
            return f"invalid engine config: {exc}", 0
        need = gpus_needed(engine_cfg)
        if self.gpus and need > len(self.gpus):
            return (f"needs {need} GPUs (tensor_parallel_size x pipeline_parallel_size) but --gpus lists "
                    f"{len(self.gpus)}"), need
        return (self.adapter.check(engine_cfg, self.hardware, self.cfg.workload.max_sequence_tokens(),
                                   max_input_tokens=self.cfg.workload.longest_prompt_tokens()),
                need if self.gpus else 0)

    def _gpu_count(self) -> int:
        """The `gpus` of the space's rules: those given to `--gpus`, else the machine's (at least 1)."""
        return len(self.gpus) or max(self.hardware.gpu_count, 1)

    def _oom_region_reason(self, params: dict) -> str | None:
        """Why `params` are not launched when they lie in the out-of-memory region of an earlier trial (one that
        failed with `out_of_memory`; see SearchSpace.in_oom_region), else None."""
        for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,)):
            if t.user_attrs.get("out_of_memory") and self.space.in_oom_region(params, t.params):
                larger = ", ".join(f"{k} {params[k]:g} >= {t.params[k]:g}" for k in self.space.memory_knobs
                                   if k in params)
                return (f"dominates OOM trial {t.number}" + (f" ({larger}; the other knobs equal)" if larger else
                                                             " (the same config)") +
                        ": it would need at least the memory that trial ran out of")
        return None

    def _build_key(self, params: dict) -> tuple | None:
        return self.space.build_key(params, self.cfg.engine.resolve(params).model_dump(mode="json"))

    def _engine_change(self, params: dict) -> str | None:
        """What starting the engine of `params` takes (SearchSpace.build_key): 'restart' when an earlier trial of the
        study with the same build knobs got its engine up (completed, or stopped after its probe), so the engine
        comes from the engine cache; 'rebuild' when none did; None when the engine builds nothing."""
        if (key := self._build_key(params)) is None:
            return None
        ran = self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                            optuna.trial.TrialState.PRUNED))
        return "restart" if any((t.state == optuna.trial.TrialState.COMPLETE or t.user_attrs.get("pruned_by_probe"))
                                and self._build_key(t.params) == key for t in ran) else "rebuild"

    def _report_probe(self, launch: _Launch) -> float | None:
        """The primary objective on the trial's probe records (None when undefined), reported to the study at
        PROBE_STEP (undefined as NaN)."""
        records = read_records(self.run_dir.trial_dir(launch.trial.number) / PROBE_RECORDS)
        probe = {**compute(records, self.cfg.slo_limits()),
                 "engine": {"config": self.cfg.engine.resolve(launch.params).model_dump(mode="json")}}
        value = objective_value(probe, self.cfg.search.objectives[0].expression, self.cfg.search.gpu_hour_cost)
        launch.trial.report(math.nan if value is None else value, PROBE_STEP)
        launch.probe_reported = True
        return value

    def _judge_probe(self, launch: _Launch) -> str | None:
        """Report the trial's probe and ask the study's pruner (ProbePruner): why to stop the trial, or None."""
        value = self._report_probe(launch)
        if not launch.trial.should_prune():
            return None
        probe, objective = self.cfg.search.probe, self.cfg.search.objectives[0]
        threshold, peers = self.study.pruner.threshold(self.study)
        shown = "undefined (no measured request of it completed)" if value is None else f"{value:.4g}"
        return (f"probe: {objective.label} {shown} until its first {probe.requests} requests were done is not within "
                f"the best {probe.keep_best_percent:g}% of the probes of the {peers} completed trials that met every "
                f"SLO (threshold {threshold:.4g}); stopped early")

    def _launch(self, pool: ThreadPoolExecutor, launch: _Launch, on_log: Callable[[str], None] | None) -> Future:
        """Write the trial's config and start its process on a pool thread, on `launch.gpus` when it has any."""
        trial_dir = self.run_dir.trial_dir(launch.trial.number)
        if trial_dir.exists():  # leftovers of an interrupted attempt with this number
            for name in (TrialFiles.RESULT, TrialFiles.FAILURE, TrialFiles.RECORDS, TrialFiles.TELEMETRY,
                         PROBE_RECORDS):
                (trial_dir / name).unlink(missing_ok=True)
        trial_cfg = self.cfg.model_dump(mode="json", exclude={"search"})
        trial_cfg["engine"]["params"] = {**trial_cfg["engine"]["params"], **launch.params}
        write_yaml(trial_dir / TrialFiles.CONFIG, trial_cfg)
        if change := self._engine_change(launch.params):
            launch.trial.set_user_attr("engine_change", change)
        env = None
        if self.gpus:
            launch.trial.set_user_attr("gpus", launch.gpus)
            env = {"CUDA_VISIBLE_DEVICES": ",".join(launch.gpus),
                   "CUDA_DEVICE_ORDER": os.environ.get("CUDA_DEVICE_ORDER", "PCI_BUS_ID")}
        probe = self.cfg.search.probe if launch.repeat_of is None else None  # a repeat is measured in full
        # The pool's threads live until run() ends, so the trial's parent-death signal fires only if the harness dies.
        return pool.submit(run_trial_process, trial_dir, self.cfg.search.trial_timeout_s, on_log, env=env,
                           stop=self._stop, probe_requests=probe.requests if probe else None,
                           on_probe=partial(self._judge_probe, launch) if probe else None)

    def _record(self, launch: _Launch, state: str, reason: str | None) -> TrialOutcome:
        """Tell the study how a launched trial ended."""
        trial, number, params = launch.trial, launch.trial.number, launch.params
        trial_dir = self.run_dir.trial_dir(number)
        outcome = partial(TrialOutcome, number, params=params, repeat_of=launch.repeat_of)
        try:
            if state != "complete":
                if state == "failed" and out_of_memory(reason, trial_dir / TrialFiles.LOG):
                    trial.set_user_attr("out_of_memory", True)
                tell_unmeasured(self.study, trial, state, reason)
                return outcome(state=state, reason=reason)
            if not launch.probe_reported and (trial_dir / PROBE_RECORDS).exists():  # it ended before it was judged
                self._report_probe(launch)  # as a peer for later trials' probes
            values = tell_result(self.study, trial, read_json(trial_dir / TrialFiles.RESULT), self.cfg.search)
        except optuna.exceptions.UpdateFinishedTrialError:  # no heartbeat got through for the grace period
            return outcome(state="failed", reason="another worker took this trial as lost and queued it again (this "
                           "worker's heartbeats did not reach the database); not counted")
        if values is None:
            return outcome(state="failed", reason=UNDEFINED_OBJECTIVE)
        return outcome(state="complete", values=values)

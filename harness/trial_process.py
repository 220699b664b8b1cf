"""One trial as a child process: `python -m harness.trial DIR` in its own process group, with a timeout,
Ctrl-C handling, an optional probe callback, and the classification of how it ended (incl. out of memory).

Used by the tuner (one per trial) and `harness plan` (one per rate)."""
from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from harness.store import TrialFiles, read_json
from harness.trial import PROBE_RECORDS

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


def raise_if_ctrl_c() -> None:
    if _ctrl_c.is_set():
        raise KeyboardInterrupt


def _find_prctl():
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None  # not Linux: a killed harness may leave the trial running until it ends


_prctl = _find_prctl()  # looked up here: the child of a threaded parent must not load libraries before exec


def _die_with_parent() -> None:
    """In the child, before exec: ask Linux to SIGKILL it if the thread that started it dies (the harness
    exits or is killed, even by SIGKILL)."""
    if _prctl is not None:
        _prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def run_trial_process(trial_dir: Path, timeout_s: float, on_log: Callable[[str], None] | None = None, *,
                      env: dict[str, str] | None = None, stop: threading.Event | None = None,
                      probe_requests: int | None = None,
                      on_probe: Callable[[], str | None] | None = None) -> tuple[str, str | None]:
    """Run `python -m harness.trial trial_dir` with a timeout; return (state, reason).

    The child gets its own process group so a timeout or Ctrl-C kills the engine with it, and dies
    with the harness if the harness is killed, so no orphan holds the GPU. `on_log` gets the last
    line of the trial's log about twice a second (for progress display). `env` is added to the
    child's environment (and noted at the top of its log); setting `stop` kills the child and raises
    KeyboardInterrupt, like Ctrl-C. With `probe_requests`, the trial writes its probe to PROBE_RECORDS
    (harness.trial); `on_probe()` is then called once, while the trial goes on, and a reason returned
    kills the trial: ("pruned", reason).
    """
    argv = [sys.executable, "-m", "harness.trial", str(trial_dir)]
    if probe_requests is not None:
        argv += ["--probe-requests", str(probe_requests)]
    with (trial_dir / TrialFiles.LOG).open("ab") as log:
        if env:
            log.write(f"[harness {time.strftime('%H:%M:%S')}] trial environment: "
                      f"{' '.join(f'{k}={v}' for k, v in env.items())}\n".encode())
            log.flush()
        proc = subprocess.Popen(argv, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=_die_with_parent,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        deadline = time.monotonic() + timeout_s
        probed = on_probe is None
        try:
            while (code := proc.poll()) is None:
                raise_if_ctrl_c()
                if stop is not None and stop.is_set():
                    raise KeyboardInterrupt
                if time.monotonic() > deadline:
                    _kill_group(proc)
                    return "failed", f"timeout: trial ran longer than {timeout_s:g} s and was killed"
                if not probed and (trial_dir / PROBE_RECORDS).exists():
                    probed = True
                    if (reason := on_probe()) is not None:
                        _kill_group(proc)
                        if not (trial_dir / TrialFiles.RESULT).exists():  # else it finished meanwhile: keep it
                            return "pruned", reason
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


def _log_tail(path: Path, lines: int = 3, max_chars: int = 500) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except FileNotFoundError:
        return ""
    return " | ".join(text[-lines:])[-max_chars:]


#: Out-of-memory errors as CUDA, PyTorch, TensorRT(-LLM) and the mock engine word them, e.g. "torch.OutOfMemoryError:
#: CUDA out of memory", "[TensorRT-LLM][ERROR] CUDA runtime error in ...: out of memory", "SIMULATED out of memory".
_OUT_OF_MEMORY = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|cudaErrorMemoryAllocation",
                            re.IGNORECASE)
#: Lines at the end of a failed trial's log searched for an out-of-memory error (a crash may print no reason).
OOM_LOG_LINES = 40


def out_of_memory(reason: str, log: Path) -> bool:
    """Whether a failed trial ran out of memory: its reason or the last OOM_LOG_LINES lines of its log name an
    out-of-memory error."""
    return bool(_OUT_OF_MEMORY.search(reason) or
                _OUT_OF_MEMORY.search(_log_tail(log, OOM_LOG_LINES, max_chars=100_000)))

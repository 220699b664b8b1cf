"""GPU telemetry during a run, read through NVML (`pynvml`, from the `nvidia-ml-py` package).

`TelemetrySampler` is a context manager: on entry it opens NVML and takes a first sample, a daemon
thread samples every `interval_s`, and on exit it takes a last sample and shuts NVML down, so even
a very short run has at least two samples. Per GPU and sample it reads memory used (bytes), GPU
utilization (%), power (W) and energy (J, cumulative since the first sample).

Energy comes from NVML's total-energy counter (`nvmlDeviceGetTotalEnergyConsumption`, mJ; Volta
and newer) when the first read of it succeeds; otherwise it is the trapezoid integral of the
power samples over time.

Contracts:
- By default it watches the GPUs this process may use: those CUDA_VISIBLE_DEVICES names (a trial
  placed on some GPUs by the tuner watches those), else all.
- Without telemetry (pynvml not installed, `nvmlInit` fails, zero GPUs, a requested index missing,
  a CUDA_VISIBLE_DEVICES that leaves no GPU NVML can find) the sampler does nothing and `summary()` returns
  `{"available": False, "reason": "no GPU telemetry: <why>"}`, never zeros. It never raises for
  a missing or broken NVML.
- Process memory is what NVML's compute-process list charges to this process's pid (the engine
  runs in the trial process); None where NVML cannot say (e.g. a container whose pids NVML does
  not see), never a guess.
- An NVML error reading one metric of one GPU (e.g. power not supported) makes that value None
  in that sample; other metrics and GPUs are unaffected. A metric with no value in any sample is
  None in the summary.
- All times come from `clock_ns` (default `time.perf_counter_ns`), the clock the runner uses.
- pynvml is imported lazily; `nvml=` takes any object with the same function names (tests pass
  a fake).
"""
from __future__ import annotations

import csv
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

from engine_adapters.base import nvml_text, visible_gpu_indices

_MIB = 1024 * 1024
_NS_PER_S = 1e9
_INSTALL_HINT = "pip install nvidia-ml-py"


class TelemetrySample(NamedTuple):
    """One GPU at one instant. None means NVML could not read that metric at that instant."""

    t_ns: int  # since the sampler's first sample
    gpu: int  # NVML device index
    memory_used_bytes: int | None
    util_pct: float | None
    power_w: float | None
    energy_j: float | None  # cumulative since the first sample
    process_memory_bytes: int | None = None  # held by this process on this GPU (NVML's compute-process list)


CSV_HEADER = list(TelemetrySample._fields)


def _load_nvml(nvml: Any) -> tuple[Any, str | None]:
    """Returns (module, None), or (None, why) when pynvml cannot be imported."""
    if nvml is not None:
        return nvml, None
    try:
        import pynvml  # noqa: PLC0415 (heavy optional dependency, imported lazily)
    except ImportError as e:
        return None, f"pynvml not importable ({e}); install it with `{_INSTALL_HINT}`"
    return pynvml, None


def _integrate(ts: Sequence[float], vs: Sequence[float | None]) -> tuple[float, float]:
    """Trapezoid integral of v over t and the time it covers; intervals with a None end are skipped."""
    area = covered = 0.0
    for t0, t1, v0, v1 in zip(ts, ts[1:], vs, vs[1:]):
        if v0 is not None and v1 is not None:
            area += (v0 + v1) / 2 * (t1 - t0)
            covered += t1 - t0
    return area, covered


def _mean(ts: Sequence[float], vs: Sequence[float | None]) -> float | None:
    """Time-weighted mean (trapezoid); the plain mean where no time elapsed; None with no values."""
    area, covered = _integrate(ts, vs)
    if covered > 0:
        return area / covered
    present = [v for v in vs if v is not None]
    return sum(present) / len(present) if present else None


class _GPU:
    """Per-GPU state: static facts and what energy accounting needs between samples."""

    def __init__(self, index: int, handle: Any, name: str):
        self.index = index
        self.handle = handle
        self.name = name
        self.memory_total_bytes: int | None = None  # from the first successful memory read
        self.use_counter: bool | None = None  # decided at the first sample
        self.counter0_mj: int = 0
        self.energy_j: float | None = None  # latest cumulative value
        self.last_t_s: float | None = None
        self.last_power_w: float | None = None


class TelemetrySampler:
    """Samples GPU memory, utilization, power and energy on a background thread.

    Use as `with TelemetrySampler() as t: ...run...` then `t.summary()`, `t.samples`,
    `t.write_csv(path)`; or call `start()` / `stop()`. One sampler is used for one run
    (start once, stop once); `stop()` is idempotent. `sample()` takes an extra sample now.

    gpu_indices: NVML device indices to watch; None watches the GPUs this process may use: those
        CUDA_VISIBLE_DEVICES names when it is set (`visible_gpu_indices`), else every GPU NVML sees. (NVML indices
        ignore CUDA_VISIBLE_DEVICES.)
    """

    def __init__(
        self,
        interval_s: float = 0.1,
        gpu_indices: Sequence[int] | None = None,
        nvml: Any = None,
        clock_ns: Callable[[], int] = time.perf_counter_ns,
    ):
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.interval_s = interval_s
        self._gpu_indices = list(gpu_indices) if gpu_indices is not None else None
        self._nvml_arg = nvml
        self._nvml: Any = None
        self._clock_ns = clock_ns
        self._gpus: list[_GPU] = []
        self._rows: list[TelemetrySample] = []
        self._t0_ns: int | None = None
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._stop_event = threading.Event()
        self._thread: threading.Thread | None = None
        self._reason: str | None = "no GPU telemetry: sampler not started"
        self._started = self._stopped = False
        self._sampling = False  # True from a successful start until the last sample

    # lifecycle -------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """True once started with NVML and at least one GPU."""
        return self._reason is None

    def start(self) -> "TelemetrySampler":
        """Opens NVML, takes the first sample and starts the sampler thread (or records why not)."""
        if self._started:
            raise RuntimeError("a TelemetrySampler is started once")
        self._started = True
        self._reason = self._open()
        if self._reason is not None:
            return self
        self._sampling = True
        self.sample()
        self._thread = threading.Thread(target=self._loop, name="telemetry-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the thread, takes the last sample and shuts NVML down. Safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        if self._thread is not None:
            self._stop_event.set()
            self._thread.join()
            self.sample()
        self._sampling = False
        if self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except self._nvml.NVMLError:
                pass

    def __enter__(self) -> "TelemetrySampler":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _open(self) -> str | None:
        """Initializes NVML and the GPU list; returns why telemetry is unavailable, or None."""
        nvml, why = _load_nvml(self._nvml_arg)
        if nvml is None:
            return f"no GPU telemetry: {why}"
        try:
            nvml.nvmlInit()
        except Exception as e:  # NVMLError, or OSError etc. from a broken install: never fatal
            return f"no GPU telemetry: nvmlInit failed ({nvml_text(e) or type(e).__name__})"
        self._nvml = nvml
        why = self._find_gpus()
        if why is not None:
            self._gpus = []
            try:
                nvml.nvmlShutdown()
            except nvml.NVMLError:
                pass
            self._nvml = None
        return why

    def _find_gpus(self) -> str | None:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
            if count == 0:
                return "no GPU telemetry: NVML reports 0 GPUs"
            indices = self._gpu_indices
            if indices is None:
                indices = visible_gpu_indices(nvml, os.environ.get("CUDA_VISIBLE_DEVICES"), count)
                if isinstance(indices, str):
                    return f"no GPU telemetry: {indices}"
            if not indices:
                return "no GPU telemetry: gpu_indices is empty"
            for i in indices:
                if not 0 <= i < count:
                    return f"no GPU telemetry: GPU index {i} not present (NVML sees {count})"
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                self._gpus.append(_GPU(i, handle, nvml_text(nvml.nvmlDeviceGetName(handle))))
        except nvml.NVMLError as e:
            return f"no GPU telemetry: NVML device query failed ({nvml_text(e) or type(e).__name__})"
        return None

    def _loop(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            self.sample()

    # sampling --------------------------------------------------------------------------------

    def _read(self, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self._nvml.NVMLError:
            return None

    def sample(self) -> None:
        """Takes one sample of every watched GPU now (no-op when unavailable, not started or stopped)."""
        if not self._sampling:
            return
        nvml = self._nvml
        with self._lock:
            now_ns = self._clock_ns()
            if self._t0_ns is None:
                self._t0_ns = now_ns
            t_ns = now_ns - self._t0_ns
            t_s = t_ns / _NS_PER_S
            for g in self._gpus:
                h = g.handle
                mem_info = self._read(lambda: nvml.nvmlDeviceGetMemoryInfo(h))
                mem = mem_info.used if mem_info is not None else None
                if mem_info is not None and g.memory_total_bytes is None:
                    g.memory_total_bytes = mem_info.total
                util = self._read(lambda: nvml.nvmlDeviceGetUtilizationRates(h).gpu)
                power_mw = self._read(lambda: nvml.nvmlDeviceGetPowerUsage(h))
                power_w = power_mw / 1000 if power_mw is not None else None
                self._rows.append(TelemetrySample(
                    t_ns, g.index, mem, float(util) if util is not None else None, power_w,
                    self._energy(g, t_s, power_w), self._process_memory(h)))

    def _process_memory(self, handle: Any) -> int | None:
        """Bytes this process holds on the GPU, or None when NVML does not list it (or cannot tell)."""
        listing = getattr(self._nvml, "nvmlDeviceGetComputeRunningProcesses", None)
        procs = self._read(lambda: listing(handle)) if listing else None
        mine = [p.usedGpuMemory for p in procs or [] if p.pid == self._pid and p.usedGpuMemory is not None]
        return sum(mine) if mine else None

    def _energy(self, g: _GPU, t_s: float, power_w: float | None) -> float | None:
        """Cumulative energy (J) for g at t_s: counter delta, or trapezoid of power (fallback)."""
        if g.use_counter is None:  # first sample decides the method for the whole run
            counter = self._read(lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle))
            g.use_counter = counter is not None
            g.counter0_mj = counter or 0
            g.energy_j = 0.0 if counter is not None or power_w is not None else None
        elif g.use_counter:
            counter = self._read(lambda: self._nvml.nvmlDeviceGetTotalEnergyConsumption(g.handle))
            if counter is None:
                return None  # this read failed; the summary keeps the last good value
            g.energy_j = (counter - g.counter0_mj) / 1000
        elif power_w is not None:
            if g.last_power_w is not None and g.last_t_s is not None:
                g.energy_j = (g.energy_j or 0.0) + (g.last_power_w + power_w) / 2 * (t_s - g.last_t_s)
            elif g.energy_j is None:
                g.energy_j = 0.0
        g.last_t_s, g.last_power_w = t_s, power_w
        return g.energy_j

    # results ---------------------------------------------------------------------------------

    @property
    def samples(self) -> list[TelemetrySample]:
        """A copy of the samples so far, in time order (one row per GPU per sample)."""
        with self._lock:
            return list(self._rows)

    def write_csv(self, path: str | os.PathLike) -> bool:
        """Writes the samples as CSV with a header (None -> empty cell); returns True.

        Writes nothing and returns False when telemetry is unavailable. The file appears
        complete or not at all (written to a temporary name, then renamed).
        """
        if not self.available:
            return False
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        with open(tmp, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(CSV_HEADER)
            for row in self.samples:
                w.writerow(["" if v is None else v for v in row])
        os.replace(tmp, path)
        return True

    def summary(self) -> dict[str, Any]:
        """Per-GPU and total figures for the run (so far, if still running).

        Unavailable: `{"available": False, "reason": "no GPU telemetry: ..."}`.
        Available:
            {"available": True, "samples": n (sample instants), "interval_s": float,
             "duration_s": float (first to last sample),
             "energy_j": sum over GPUs, None if any GPU has no energy figure,
             "gpus": [{"index", "name", "memory_total_mib", "memory_used_peak_mib",
                       "memory_used_mean_mib", "process_memory_peak_mib", "util_mean_pct", "power_mean_w",
                       "power_peak_w", "energy_j"}]}
        Means are time-weighted (trapezoid over sample times; intervals with a missing end are
        skipped), falling back to the plain mean when no time elapsed. Unsupported metrics are None.
        """
        if not self.available:
            return {"available": False, "reason": self._reason}
        rows = self.samples
        gpus = []
        for g in self._gpus:
            mine = [r for r in rows if r.gpu == g.index]
            ts = [r.t_ns / _NS_PER_S for r in mine]
            mem = [r.memory_used_bytes for r in mine]
            power = [r.power_w for r in mine]
            energies = [r.energy_j for r in mine if r.energy_j is not None]
            mem_present = [m for m in mem if m is not None]
            power_present = [p for p in power if p is not None]
            mem_mean = _mean(ts, mem)
            process_mem = [r.process_memory_bytes for r in mine if r.process_memory_bytes is not None]
            gpus.append({
                "index": g.index,
                "name": g.name,
                "memory_total_mib": g.memory_total_bytes / _MIB if g.memory_total_bytes is not None else None,
                "memory_used_peak_mib": max(mem_present) / _MIB if mem_present else None,
                "memory_used_mean_mib": mem_mean / _MIB if mem_mean is not None else None,
                "process_memory_peak_mib": max(process_mem) / _MIB if process_mem else None,
                "util_mean_pct": _mean(ts, [r.util_pct for r in mine]),
                "power_mean_w": _mean(ts, power),
                "power_peak_w": max(power_present) if power_present else None,
                "energy_j": energies[-1] if energies else None,
            })
        per_gpu_energy = [g["energy_j"] for g in gpus]
        times = sorted({r.t_ns for r in rows})
        return {
            "available": True,
            "gpus": gpus,
            "energy_j": None if None in per_gpu_energy else sum(per_gpu_energy),
            "samples": len(times),
            "interval_s": self.interval_s,
            "duration_s": (times[-1] - times[0]) / _NS_PER_S if times else 0.0,
        }


def energy_per_output_token_j(summary: dict[str, Any], output_tokens: int) -> float | None:
    """Joules per output token from a `summary()`; None without telemetry, energy or tokens."""
    if not summary.get("available") or not output_tokens or summary.get("energy_j") is None:
        return None
    return summary["energy_j"] / output_tokens


def driver_info(nvml: Any = None) -> dict[str, str] | None:
    """`{"driver_version": "550.54.15", "cuda_driver_version": "12.4"}` via NVML, or None without NVML.

    A value NVML cannot report is None.
    """
    nvml, _ = _load_nvml(nvml)
    if nvml is None:
        return None
    try:
        nvml.nvmlInit()
    except Exception:  # NVMLError, or OSError etc. from a broken install
        return None
    try:
        def read(fn: Callable[[], Any]) -> Any:
            try:
                return fn()
            except nvml.NVMLError:
                return None

        driver = read(nvml.nvmlSystemGetDriverVersion)
        cuda = read(nvml.nvmlSystemGetCudaDriverVersion)  # e.g. 12040
        return {
            "driver_version": nvml_text(driver) if driver is not None else None,
            "cuda_driver_version": f"{cuda // 1000}.{cuda % 1000 // 10}" if cuda is not None else None,
        }
    finally:
        try:
            nvml.nvmlShutdown()
        except nvml.NVMLError:
            pass

"""TelemetrySampler against a scripted fake NVML and a scripted clock (no GPU, no sleeps)."""
from __future__ import annotations

import csv
import os
import sys
from types import SimpleNamespace

import pytest

from harness.telemetry import (
    CSV_HEADER,
    TelemetrySampler,
    driver_info,
    energy_per_output_token_j,
)

MIB = 1024 * 1024


@pytest.fixture(autouse=True)
def _all_gpus_visible(monkeypatch):
    """The scripted GPUs are all this process's unless a test says otherwise, whatever the runner sets."""
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


class FakeNVMLError(Exception):
    pass


class FakeGPU:
    """Scripted readings: each list is consumed one value per call, then repeats its last value.
    None for a metric makes every read of it raise NVMLError (not supported)."""

    def __init__(self, name="Fake H100", total=80 * 1024 * MIB, used=(0,), util=(0,),
                 power_mw=(100_000,), energy_mj=None, processes=((),)):
        self.name, self.total = name, total
        self.script = {"used": used, "util": util, "power_mw": power_mw, "energy_mj": energy_mj,
                       "processes": processes}
        self.calls = {k: 0 for k in self.script}

    def next(self, key):
        values = self.script[key]
        if values is None:
            raise FakeNVMLError(f"{key}: Not Supported")
        i = self.calls[key]
        self.calls[key] += 1
        return values[min(i, len(values) - 1)]


class FakeNVML:
    """The slice of the pynvml API the sampler uses."""

    NVMLError = FakeNVMLError

    def __init__(self, gpus, init_error=None):
        self.gpus = list(gpus)
        self.init_error = init_error
        self.initialized = False
        self.shutdowns = 0

    def nvmlInit(self):
        if self.init_error:
            raise FakeNVMLError(self.init_error)
        self.initialized = True

    def nvmlShutdown(self):
        self.initialized = False
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, h):
        return h.name.encode()  # older pynvml returns bytes

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=h.total, used=h.next("used"), free=0)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=h.next("util"), memory=0)

    def nvmlDeviceGetPowerUsage(self, h):
        return h.next("power_mw")

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return h.next("energy_mj")

    def nvmlDeviceGetComputeRunningProcesses(self, h):
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in h.next("processes")]

    def nvmlSystemGetDriverVersion(self):
        return "550.54.15"

    def nvmlSystemGetCudaDriverVersion(self):
        return 12040


class StepClock:
    """Each call advances by step_ns."""

    def __init__(self, step_ns=1_000_000_000):
        self.now, self.step = 0, step_ns

    def __call__(self):
        t = self.now
        self.now += self.step
        return t


def run_scripted(nvml, n_samples, step_s=1.0, **kw):
    """n_samples samples 1 s apart: start + (n-2) manual + stop; the thread never fires (1 h interval)."""
    sampler = TelemetrySampler(interval_s=3600, nvml=nvml, clock_ns=StepClock(int(step_s * 1e9)), **kw)
    with sampler:
        for _ in range(n_samples - 2):
            sampler.sample()
    return sampler


def test_memory_peak_and_mean_match_script():
    used = [40 * MIB, 10 * MIB, 30 * MIB, 20 * MIB]
    s = run_scripted(FakeNVML([FakeGPU(used=used, util=[0, 50, 100, 50])]), 4).summary()
    g = s["gpus"][0]
    assert s["available"] and s["samples"] == 4 and s["duration_s"] == 3.0
    assert g["name"] == "Fake H100" and g["memory_total_mib"] == 80 * 1024
    assert g["memory_used_peak_mib"] == 40
    # time-weighted trapezoid over equal 1 s steps: (25 + 20 + 25) / 3
    assert g["memory_used_mean_mib"] == pytest.approx(70 / 3)
    assert [r.memory_used_bytes for r in run_scripted(FakeNVML([FakeGPU(used=used)]), 4).samples] == used
    assert g["util_mean_pct"] == pytest.approx((25 + 75 + 75) / 3)


def test_energy_from_counter_is_the_scripted_delta():
    gpu = FakeGPU(power_mw=[300_000], energy_mj=[5_000_000, 5_100_000, 5_250_000])
    sampler = run_scripted(FakeNVML([gpu]), 3)
    s = sampler.summary()
    assert s["gpus"][0]["energy_j"] == pytest.approx(250.0)
    assert s["energy_j"] == pytest.approx(250.0)
    assert [r.energy_j for r in sampler.samples] == pytest.approx([0.0, 100.0, 250.0])


def test_energy_falls_back_to_power_integration():
    # energy counter unsupported, constant 250 W for 4 s (5 samples 1 s apart) -> 1000 J
    sampler = run_scripted(FakeNVML([FakeGPU(power_mw=[250_000], energy_mj=None)]), 5)
    g = sampler.summary()["gpus"][0]
    assert g["energy_j"] == pytest.approx(1000.0)
    assert g["power_mean_w"] == pytest.approx(250.0) and g["power_peak_w"] == pytest.approx(250.0)
    assert [r.energy_j for r in sampler.samples] == pytest.approx([0, 250, 500, 750, 1000])


def test_power_integration_uses_trapezoid():
    sampler = run_scripted(FakeNVML([FakeGPU(power_mw=[100_000, 300_000], energy_mj=None)]), 2, step_s=2.0)
    assert sampler.summary()["energy_j"] == pytest.approx(400.0)  # (100 + 300) / 2 * 2 s


def test_unsupported_power_is_none_for_that_gpu_only():
    nvml = FakeNVML([
        FakeGPU(name="A", used=[MIB], power_mw=None, energy_mj=None),
        FakeGPU(name="B", used=[2 * MIB], power_mw=[200_000], energy_mj=[0, 1_000]),
    ])
    s = run_scripted(nvml, 2).summary()
    a, b = s["gpus"]
    assert a["power_mean_w"] is None and a["power_peak_w"] is None and a["energy_j"] is None
    assert a["memory_used_peak_mib"] == 1  # other metrics of the same GPU still reported
    assert b["power_mean_w"] == pytest.approx(200.0) and b["energy_j"] == pytest.approx(1.0)
    assert s["energy_j"] is None  # a total over some GPUs would understate
    assert energy_per_output_token_j(s, 100) is None


def test_gpu_indices_selects_devices():
    nvml = FakeNVML([FakeGPU(name="A"), FakeGPU(name="B")])
    s = run_scripted(nvml, 2, gpu_indices=[1]).summary()
    assert [g["index"] for g in s["gpus"]] == [1] and s["gpus"][0]["name"] == "B"
    bad = run_scripted(FakeNVML([FakeGPU()]), 2, gpu_indices=[3]).summary()
    assert not bad["available"] and "GPU index 3" in bad["reason"]


def test_nvml_shut_down_on_stop():
    nvml = FakeNVML([FakeGPU()])
    run_scripted(nvml, 2)
    assert nvml.shutdowns == 1 and not nvml.initialized


def test_background_thread_samples_and_stops():
    nvml = FakeNVML([FakeGPU(used=[5 * MIB])])
    with TelemetrySampler(interval_s=0.001, nvml=nvml) as sampler:
        pass
    assert sampler.summary()["samples"] >= 2  # start + stop, whatever the thread managed
    assert sampler._thread is not None and not sampler._thread.is_alive()
    ts = [r.t_ns for r in sampler.samples]
    assert ts[0] == 0 and ts == sorted(ts)
    sampler.stop()  # idempotent


@pytest.mark.parametrize("nvml, why", [
    (FakeNVML([FakeGPU()], init_error="Driver Not Loaded"), "Driver Not Loaded"),
    (FakeNVML([]), "0 GPUs"),
])
def test_unavailable_with_fake(nvml, why):
    sampler = run_scripted(nvml, 3)
    s = sampler.summary()
    assert s == {"available": False, "reason": s["reason"]}
    assert s["reason"].startswith("no GPU telemetry: ") and why in s["reason"]
    assert sampler.samples == []


def test_unavailable_when_pynvml_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # makes `import pynvml` raise ImportError
    with TelemetrySampler() as sampler:
        pass
    reason = sampler.summary()["reason"]
    assert "no GPU telemetry" in reason and "nvidia-ml-py" in reason
    assert driver_info() is None


def _real_nvml_works() -> bool:
    try:
        import pynvml
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_real_nvml_works(), reason="this machine has working NVML")
def test_real_environment_without_nvml_reports_no_telemetry(tmp_path):
    with TelemetrySampler(interval_s=0.01) as sampler:
        pass
    s = sampler.summary()
    assert s["available"] is False and "no GPU telemetry" in s["reason"]
    assert "gpus" not in s and "energy_j" not in s  # never zeros
    assert sampler.write_csv(tmp_path / "telemetry.csv") is False
    assert not (tmp_path / "telemetry.csv").exists()
    assert driver_info() is None


def test_write_csv(tmp_path):
    nvml = FakeNVML([FakeGPU(used=[MIB, 2 * MIB], util=[10, 20], power_mw=None, energy_mj=None),
                     FakeGPU(used=[3 * MIB], power_mw=[150_500], energy_mj=[0, 2_000])])
    sampler = run_scripted(nvml, 2)
    path = tmp_path / "telemetry.csv"
    assert sampler.write_csv(path) is True
    rows = list(csv.reader(path.open()))
    assert rows[0] == CSV_HEADER == ["t_ns", "gpu", "memory_used_bytes", "util_pct", "power_w", "energy_j",
                                    "process_memory_bytes"]
    assert len(rows) == 1 + 2 * 2
    assert rows[1] == ["0", "0", str(MIB), "10.0", "", "", ""]  # unsupported or not listed -> empty cell
    assert rows[4] == ["1000000000", "1", str(3 * MIB), "0.0", "150.5", "2.0", ""]
    assert not (tmp_path / "telemetry.csv.tmp").exists()

    unavailable = run_scripted(FakeNVML([]), 2)
    assert unavailable.write_csv(tmp_path / "none.csv") is False
    assert not (tmp_path / "none.csv").exists()


def test_energy_per_output_token():
    s = run_scripted(FakeNVML([FakeGPU(energy_mj=[0, 500_000])]), 2).summary()
    assert energy_per_output_token_j(s, 1000) == pytest.approx(0.5)
    assert energy_per_output_token_j(s, 0) is None
    assert energy_per_output_token_j({"available": False, "reason": "no GPU telemetry: x"}, 10) is None


def test_driver_info_from_fake():
    assert driver_info(FakeNVML([FakeGPU()])) == {"driver_version": "550.54.15", "cuda_driver_version": "12.4"}
    assert driver_info(FakeNVML([], init_error="no driver")) is None


def test_mean_falls_back_to_plain_mean_when_no_time_elapsed():
    sampler = TelemetrySampler(interval_s=3600, nvml=FakeNVML([FakeGPU(used=[MIB, 3 * MIB])]),
                               clock_ns=lambda: 42)
    with sampler:
        pass
    g = sampler.summary()["gpus"][0]
    assert g["memory_used_mean_mib"] == pytest.approx(2.0)
    sampler.sample()  # after stop: no-op
    assert len(sampler.samples) == 2


def test_summary_before_start_is_unavailable():
    s = TelemetrySampler(nvml=FakeNVML([FakeGPU()])).summary()
    assert s["available"] is False and "no GPU telemetry" in s["reason"]


def test_process_memory_counts_only_this_process():
    me, other = os.getpid(), os.getpid() + 1
    gpu = FakeGPU(used=(10 * 1024 * MIB,), processes=(
        [(me, 1024 * MIB), (other, 4096 * MIB)], [(me, 3072 * MIB), (other, 4096 * MIB)], [(other, 1 * MIB)]))
    summary = run_scripted(FakeNVML([gpu]), 3).summary()
    assert summary["gpus"][0]["process_memory_peak_mib"] == 3072


def test_process_memory_is_none_when_nvml_does_not_list_this_process():
    listed_elsewhere = FakeGPU(processes=([(os.getpid() + 1, 4096 * MIB)],))
    unsupported = FakeGPU(processes=None)
    summary = run_scripted(FakeNVML([listed_elsewhere, unsupported]), 3).summary()
    assert [g["process_memory_peak_mib"] for g in summary["gpus"]] == [None, None]

"""Hardware.detect sees the GPUs this process was given (CUDA_VISIBLE_DEVICES), through a fake NVML."""
import sys
from types import SimpleNamespace

from engine_adapters import Hardware


class FakeNVML(SimpleNamespace):
    class NVMLError(Exception):
        pass

    def __init__(self, names):
        super().__init__(names=names)

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return len(self.names)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return self.names[h]

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(total=(h + 1) * 2**30)

    def nvmlDeviceGetCudaComputeCapability(self, h):
        return (9, 0)


def test_detect_counts_only_the_visible_gpus(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", FakeNVML(["gpu-a", "gpu-b", "gpu-c"]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    hw = Hardware.detect()
    assert (hw.gpu_count, hw.gpu_names, hw.gpu_memory_bytes) == (2, ("gpu-c", "gpu-a"), (3 * 2**30, 2**30))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert Hardware.detect().gpu_count == 3
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "-1")
    assert Hardware.detect() == Hardware(cpu=Hardware().cpu)

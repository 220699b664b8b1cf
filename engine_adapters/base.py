"""The contract between the harness and an inference engine.

Lifecycle: the harness validates a config with `Adapter.Config`, asks `check(config, hardware)`
whether it can run at all (a reason string means infeasible: the trial is pruned, never launched),
then `async with adapter.start(config) as engine:` builds or launches the engine, streams requests
through `engine.stream(request)` (many concurrently), and leaves the block to free every resource
(GPU memory, subprocesses, ports). `fingerprint()` describes what was measured.

`Engine.stream` yields `StreamEvent`s in time order until the request ends. A request-level failure
(rejected prompt, server error, timeout) ends the stream with an event whose `error` is set; it is
never raised. Exceptions from `stream` are reserved for bugs and are still recorded per request by
the runner.
"""
from __future__ import annotations

import abc
import asyncio
import contextlib
import os
import platform
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, ClassVar

from pydantic import BaseModel, ConfigDict

from workloads import RequestSpec, TokenSpace


@dataclass(frozen=True)
class StreamEvent:
    """`n_tokens` new output tokens observed at `t_ns` (time.perf_counter_ns); `error` ends the stream.

    `server_t_ns` is the server's own send time of the chunk, where a server on this machine reports
    one on the same monotonic clock (the harness mock server does); calibration compares the two.
    `server_input_tokens` is the prompt's length as the server counted it (OpenAI `usage.prompt_tokens`:
    with the chat template and special tokens it adds), on an event of a server that reports it.
    `cached_prompt_tokens` is how many prompt tokens the engine says it took from its prefix cache instead of
    prefilling them, on an event of an engine that reports it (usually the last).
    """

    t_ns: int
    n_tokens: int = 0
    error: str | None = None
    server_t_ns: int | None = None
    server_input_tokens: int | None = None
    cached_prompt_tokens: int | None = None


@dataclass(frozen=True)
class Hardware:
    """What the trial will run on, as far as feasibility checks need to know."""

    gpu_count: int = 0
    gpu_names: tuple[str, ...] = ()
    gpu_memory_bytes: tuple[int, ...] = ()
    compute_capability: tuple[int, int] | None = None
    cpu: str = field(default_factory=platform.processor)

    @classmethod
    def detect(cls) -> "Hardware":
        """Probe the GPUs this process may use (CUDA_VISIBLE_DEVICES, as telemetry reads it) through NVML; a
        machine without NVML reports zero GPUs."""
        try:
            import pynvml
        except ImportError:
            return cls()
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError:
            return cls()
        try:
            visible = visible_gpu_indices(pynvml, os.environ.get("CUDA_VISIBLE_DEVICES"), pynvml.nvmlDeviceGetCount())
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in ([] if isinstance(visible, str) else visible)]
            names = tuple(nvml_text(pynvml.nvmlDeviceGetName(h)) for h in handles)
            mems = tuple(int(pynvml.nvmlDeviceGetMemoryInfo(h).total) for h in handles)
            cc = pynvml.nvmlDeviceGetCudaComputeCapability(handles[0]) if handles else None
            return cls(gpu_count=len(handles), gpu_names=names, gpu_memory_bytes=mems,
                       compute_capability=tuple(cc) if cc else None)
        finally:
            pynvml.nvmlShutdown()


def nvml_text(value) -> str:
    """An NVML string (bytes in older nvidia-ml-py releases, str in newer) as str."""
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def visible_gpu_indices(nvml: Any, visible: str | None, count: int) -> list[int] | str:
    """NVML indices of the GPUs that CUDA_VISIBLE_DEVICES = `visible` leaves to this process (all `count` when
    unset), or why none can be watched. Integer entries are NVML's (PCI bus) numbering, which is CUDA's under
    CUDA_DEVICE_ORDER=PCI_BUS_ID (the tuner sets it for the trials it places); GPU-... entries are UUIDs. As in
    CUDA, a negative entry hides itself and all after it."""
    if visible is None:
        return list(range(count))
    if not visible.strip():
        return "CUDA_VISIBLE_DEVICES is empty: no GPU is visible to this process"
    indices = []
    for entry in (e.strip() for e in visible.split(",")):
        if entry.lstrip("-").isdigit():
            if int(entry) < 0:
                break
            indices.append(int(entry))
        elif entry.startswith("GPU-"):
            try:
                indices.append(nvml.nvmlDeviceGetIndex(nvml.nvmlDeviceGetHandleByUUID(entry)))
            except nvml.NVMLError as e:
                return f"CUDA_VISIBLE_DEVICES names {entry}, which NVML cannot find ({nvml_text(e) or type(e).__name__})"
        elif entry.startswith("MIG-"):
            return f"CUDA_VISIBLE_DEVICES names MIG device {entry}; MIG instances are not sampled"
        else:
            return f"CUDA_VISIBLE_DEVICES entry {entry!r} is neither a device index nor a GPU UUID"
    return indices or f"CUDA_VISIBLE_DEVICES={visible!r} leaves no GPU to this process"


class EngineConfig(BaseModel):
    """Base of every adapter's config: the tuner's knobs plus engine-specific params; unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Engine(abc.ABC):
    """A running engine. Safe to call `stream` concurrently from one asyncio event loop."""

    #: What prompts are made of; workloads draw synthetic token ids from it.
    token_space: TokenSpace

    @abc.abstractmethod
    def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        """Send `request`; yield its output-token events until it ends (see module docstring)."""

    def log_lines(self) -> list[str]:
        """Engine-side log lines worth keeping in `engine.log` (default: none)."""
        return []


class EngineAdapter(abc.ABC):
    """Builds or launches one kind of engine. Stateless: one instance may start many engines in turn."""

    kind: ClassVar[str]
    Config: ClassVar[type[EngineConfig]]
    #: The engine runs outside the client process (a server): several client processes may drive it.
    remote: ClassVar[bool] = False

    def check(self, config: EngineConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        """Return why `config` cannot run on `hardware` (or cannot hold a sequence of `max_sequence_tokens`
        prompt + output tokens, or a prompt of `max_input_tokens`, when given), or None if it may be launched."""
        return None

    def unavailable(self, config: EngineConfig | None = None) -> str | None:
        """Why this engine cannot run on this machine (its library or executable is not installed, with how to
        install it), whatever its config or, given one, with `config`; or None."""
        return None

    def heuristic_point(self, config: EngineConfig, hardware: Hardware, input_tokens: float,
                        output_tokens: float, max_input_tokens: int | None = None) -> dict | None:
        """The engine's own sizing rule as tuner params (e.g. trtllm-bench's max_batch_size / max_num_tokens)
        for `config` on `hardware` under requests of these mean lengths (and this longest prompt, where known);
        None when it has none or cannot tell (`heuristic_unavailable` says why)."""
        return None

    def heuristic_unavailable(self, config: EngineConfig, hardware: Hardware, input_tokens: float,
                              output_tokens: float) -> str | None:
        """Why `heuristic_point` has no point for these arguments although the engine has a sizing rule, or None."""
        return None

    @abc.abstractmethod
    def start(self, config: EngineConfig) -> contextlib.AbstractAsyncContextManager[Engine]:
        """Async context manager yielding a ready Engine; leaving it frees all engine resources."""

    @abc.abstractmethod
    def fingerprint(self, config: EngineConfig) -> dict:
        """Engine name and version, model identity, device and driver: what the numbers were measured on."""


async def sleep_until(deadline_ns: int) -> None:
    """Return at or after `deadline_ns` (time.perf_counter_ns), never before: uvloop's timers can fire
    up to ~1 ms early (its millisecond clock is read once per loop iteration), so sleep again for
    whatever is left."""
    while (delay_ns := deadline_ns - time.perf_counter_ns()) > 0:
        await asyncio.sleep(delay_ns / 1e9)

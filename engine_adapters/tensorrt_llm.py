"""TensorRT-LLM through its LLM API, run inside the trial process.

The engine is `tensorrt_llm.LLM` (PyTorch backend) or, with `backend: tensorrt`,
`tensorrt_llm._tensorrt_engine.LLM` (a TensorRT engine built from the checkpoint). Knobs map to
`LLM(...)` arguments through `trtllm_args` (see there for the TensorRT-LLM sources followed). The
LLM is built off the event loop thread and always shut down when the engine context ends, also on
error or cancellation. tensorrt_llm is imported only in `start` and `fingerprint`; the harness runs
each trial in a spawned subprocess, so CUDA is initialised in a process that never forks.

Engine cache (`backend: tensorrt` only): an engine build takes minutes, so a built engine is saved
(`LLM.save`, into a temporary directory renamed into place) under
`$HARNESS_CACHE/trtllm-engines/<key>`, the key hashing what the build depends on: the TensorRT-LLM
version, the model's identity (a local checkpoint's path, config and file sizes and times; a hub id with
the commit of its snapshot in the local Hugging Face cache, where TensorRT-LLM downloads it) and the
build knobs (`BUILD_KNOBS` and `extra_llm_api_options`). A hub model not yet downloaded has no commit
before its first build: that engine is saved under the key computed after the build, with the commit.
Runtime-only knobs (KV cache fraction, block reuse, chunked prefill, CUDA graphs, scheduler policy)
do not enter it; the next start with the same key loads the engine directory instead of building.
The PyTorch backend builds nothing: it loads the Hugging Face checkpoint each start, nothing to cache.

Requests are sent with `generate_async(prompt, SamplingParams(max_tokens=n, ignore_eos=True,
return_perf_metrics=True), streaming=True)` (tensorrt_llm/llmapi/llm.py; SamplingParams from
tensorrt_llm/sampling_params.py; RequestOutput.outputs[0] is an executor/result.py CompletionOutput
with token_ids, token_ids_diff, finish_reason, request_perf_metrics). Each RequestOutput becomes one
event timed at its receipt. The engine's own times (request_perf_metrics.timing_metrics:
first_token_time, last_token_time, timedeltas on C++ steady_clock, which on Linux is
CLOCK_MONOTONIC like time.perf_counter_ns) become `server_t_ns` where they are the time of that
event's chunk: the first chunk when it holds one token, the final chunk always.

Prefix reuse as the engine reports it: request_perf_metrics.kv_cache_metrics.num_reused_blocks (blocks of the
prompt found in the block-reuse cache) x kv_cache_config.tokens_per_block, at most the prompt's length, becomes the
final event's `cached_prompt_tokens`. PyTorch backend only: a TensorRT engine's block size is fixed at its build
(plugin_config.tokens_per_block), which the LLM's args need not show, so there none is reported.
"""
from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from types import ModuleType
from typing import Any, AsyncIterator

from pydantic import Field

from engine_adapters.base import Engine, EngineAdapter, Hardware, StreamEvent
from engine_adapters.builtin_models import (
    BUILTIN_PREFIX,
    HFTokenizer,
    cache_dir,
    model_config,
    resolve_model,
)
from engine_adapters.trtllm_args import (
    TrtllmKnobs,
    checkpoint_dir,
    checkpoint_quantization,
    compute_capability_problem,
    hub_revision,
    llm_kwargs,
    llm_snippet,
    model_arch,
    prompt_problem,
    quantization_problem,
    weight_bytes,
)
from engine_adapters.trtllm_sizing import bench_point, bench_point_unavailable_reason
from workloads import RequestSpec, TokenSpace

#: TensorRT-LLM 1.x's install routes (docs/source/installation/linux.md, installation-guide.md, containers.md)
INSTALL_HINT = ("on Linux (x86_64 or aarch64) with an NVIDIA GPU and the CUDA toolkit: `sudo apt-get -y install "
                "libopenmpi-dev && pip3 install tensorrt_llm` (https://nvidia.github.io/TensorRT-LLM/installation/), "
                "or NVIDIA's container nvcr.io/nvidia/tensorrt-llm/release:<version>")
_NOT_INSTALLED = (f"install it {INSTALL_HINT} (with the container, use `engine.kind: trtllm_serve` with "
                  "`params.command` running trtllm-serve in it)")

#: the knobs a TensorRT engine is built for; the others are runtime settings of a built engine
BUILD_KNOBS = ("model", "tensor_parallel_size", "pipeline_parallel_size", "max_batch_size", "max_num_tokens",
               "max_seq_len", "quantization", "kv_cache_dtype", "extra_llm_api_options")

#: share of a GPU's memory the weights may take; the rest is CUDA context, activations and KV cache
WEIGHT_MEMORY_SHARE = 0.9


class TensorRTLLMNotInstalled(ImportError):
    """tensorrt_llm cannot be imported here (or lacks the requested backend); the message says what to do."""


class TensorRTLLMConfig(TrtllmKnobs):
    engine_cache: bool = Field(True, description="backend tensorrt: reuse an engine built earlier with the same "
                                                 "build knobs (see module docstring)")


def require_tensorrt_llm() -> ModuleType:
    """Import tensorrt_llm, or raise TensorRTLLMNotInstalled naming how to install it."""
    try:
        import tensorrt_llm
    except ImportError as e:
        raise TensorRTLLMNotInstalled(
            f"TensorRT-LLM is not installed or cannot be imported ({e}); {_NOT_INSTALLED}") from e
    return tensorrt_llm


def _llm_class(tllm: ModuleType, backend: str) -> type:
    if backend == "pytorch":
        return tllm.LLM
    try:
        return importlib.import_module("tensorrt_llm._tensorrt_engine").LLM
    except ImportError as e:
        raise TensorRTLLMNotInstalled(
            f"TensorRT-LLM {tllm.__version__} has no TensorRT-engine backend (tensorrt_llm._tensorrt_engine: {e}); "
            "use backend: pytorch") from e


class TensorRTLLMEngine(Engine):
    """A started `LLM`; `stream` may be called concurrently from the event loop it was started on."""

    def __init__(self, llm: Any, sampling_params: type, tokenizer_model: str, log_lines: list[str],
                 tokens_per_block: int | None = None):
        hf = getattr(llm.tokenizer, "tokenizer", llm.tokenizer)  # TRT-LLM wraps the HF tokenizer
        self.token_space = TokenSpace(vocab_size=len(hf), reserved_ids=frozenset(hf.all_special_ids),
                                      tokenizer=HFTokenizer(hf, tokenizer_model))
        self._llm = llm
        self._log_lines = log_lines
        self._tokens_per_block = tokens_per_block  # None: cached prompt tokens are not reported
        accepted = inspect.signature(sampling_params).parameters
        optional = {"return_perf_metrics": True,  # engine-side token times, where the version has them
                    "detokenize": False}  # only token counts are needed: spare the client process the work
        self._sampling = lambda n: sampling_params(max_tokens=n, ignore_eos=True,
                                                   **{k: v for k, v in optional.items() if k in accepted})

    async def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        prompt = list(request.prompt_token_ids) if request.prompt_token_ids is not None else request.prompt_text
        try:
            result = self._llm.generate_async(prompt, sampling_params=self._sampling(request.max_output_tokens),
                                              streaming=True)
        except Exception as e:  # rejected at submission (prompt too long, engine shut down, ...)
            yield StreamEvent(time.perf_counter_ns(), error=f"tensorrt_llm: {type(e).__name__}: {e}")
            return
        first, done = True, False
        try:
            async for output in result:
                t_ns = time.perf_counter_ns()
                completion = output.outputs[0]
                n = len(completion.token_ids_diff)
                done = output.finished
                cached = _cached_prompt_tokens(output, self._tokens_per_block) if done else None
                if n or cached is not None:
                    server_t_ns = _engine_time(completion, first and n == 1, done) if n else None
                    yield StreamEvent(t_ns, n, server_t_ns=server_t_ns, cached_prompt_tokens=cached)
                    first = first and not n
                if done and completion.finish_reason in ("cancelled", "timeout"):
                    yield StreamEvent(time.perf_counter_ns(), error=f"tensorrt_llm: request {completion.finish_reason}")
        except Exception as e:  # RequestError and friends: the request failed inside the engine
            done = True
            yield StreamEvent(time.perf_counter_ns(), error=f"tensorrt_llm: {type(e).__name__}: {e}")
        finally:
            if not done:  # the client gave up (timeout, cancel): free the engine's slot
                result.abort()

    def log_lines(self) -> list[str]:
        return list(self._log_lines)

    def close(self) -> None:
        """Blocking: shut the LLM down (its executor, workers and GPU memory)."""
        self._llm.shutdown()


def _cached_prompt_tokens(output: Any, tokens_per_block: int | None) -> int | None:
    """Prompt tokens the engine took from its block-reuse cache (see module docstring), or None where not known."""
    kv = getattr(getattr(output.outputs[0], "request_perf_metrics", None), "kv_cache_metrics", None)
    if kv is None or tokens_per_block is None:
        return None
    return min(kv.num_reused_blocks * tokens_per_block, len(output.prompt_token_ids))


def _engine_time(completion: Any, first_token: bool, final: bool) -> int | None:
    """perf_counter_ns of the chunk per the engine's timing metrics, where they give it exactly."""
    metrics = getattr(completion, "request_perf_metrics", None)
    if metrics is None:
        return None
    timing = metrics.timing_metrics
    value = timing.last_token_time if final else timing.first_token_time if first_token else None
    if not isinstance(value, dt.timedelta) or not value:  # zero: not set yet
        return None
    return (value // dt.timedelta(microseconds=1)) * 1000


def model_identity(model: str, revision: str | None = None) -> dict:
    """What identifies `model`'s weights without reading them: a builtin's recipe, a local directory's
    path, config.json hash and file sizes and mtimes, or a hub id with the commit of its snapshot in the
    local Hugging Face cache (at `revision`; None before it is downloaded)."""
    if model.startswith(BUILTIN_PREFIX):
        return {"builtin": model, "arch": model_config(model)}
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        snapshot = checkpoint_dir(model, revision)
        return {"hub_id": model, "commit": snapshot.name if snapshot else None}
    files = sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in path.iterdir() if f.is_file())
    return {"path": str(path.resolve()),
            "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:16],
            "files_sha256": hashlib.sha256(json.dumps(files).encode()).hexdigest()[:16]}


def engine_cache_key(config: TrtllmKnobs, version: str) -> str:
    """Content hash of everything a TensorRT engine build depends on (see module docstring)."""
    build = {knob: getattr(config, knob) for knob in BUILD_KNOBS}
    build["model"] = model_identity(config.model, hub_revision(config))
    blob = json.dumps({"tensorrt_llm": version, **build}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _launch(config: TensorRTLLMConfig, tllm: ModuleType) -> TensorRTLLMEngine:
    """Blocking: build or load the LLM and wrap it; the LLM is shut down if anything after it fails."""
    llm_cls = _llm_class(tllm, config.backend)
    model = str(resolve_model(config.model)) if config.model.startswith(BUILTIN_PREFIX) else config.model
    kwargs = llm_kwargs(config, tllm, model=model)
    log = [f"TensorRT-LLM {tllm.__version__}, backend {config.backend}; equivalent code:",
           *llm_snippet(config).splitlines()]
    save = False
    if config.backend == "tensorrt" and config.engine_cache:
        engine_dir = _engine_dir(config, tllm.__version__)
        if (engine_dir / "config.json").is_file():
            kwargs = {**kwargs, "model": str(engine_dir), "tokenizer": model}
            kwargs.pop("quant_config", None)  # applied when the engine was built
            log.append(f"engine cache hit: loading {engine_dir}")
        else:
            save = True
            log.append("engine cache miss: building, then saving it")
    elif config.backend == "pytorch":
        log.append("backend pytorch: no engine build, nothing to cache; the checkpoint is loaded each start")
    t0 = time.perf_counter()
    llm = llm_cls(**kwargs)
    try:
        log.append(f"LLM ready in {time.perf_counter() - t0:.1f} s")
        if save:  # the key again: a hub model's snapshot commit is known once the build downloaded it
            log.append(_save_engine(llm, _engine_dir(config, tllm.__version__)))
        tokens_per_block = (getattr(llm.args.kv_cache_config, "tokens_per_block", None)  # where the version has it
                            if config.backend == "pytorch" else None)
        log.append(f"engine-reported prefix reuse: reused KV blocks x {tokens_per_block} tokens per block"
                   if tokens_per_block else "engine-reported prefix reuse: not reported (TensorRT engine, or no "
                   "kv_cache_config.tokens_per_block in this version: the KV block size is not known here)")
        return TensorRTLLMEngine(llm, tllm.SamplingParams, model, log, tokens_per_block)
    except BaseException:
        llm.shutdown()
        raise


def _engine_dir(config: TrtllmKnobs, version: str) -> Path:
    return cache_dir() / "trtllm-engines" / engine_cache_key(config, version)


def _save_engine(llm: Any, engine_dir: Path) -> str:
    """`llm.save` into a temporary sibling renamed to `engine_dir` (a concurrent saver's copy wins);
    return the log line. A file system error only costs the cache, not the trial."""
    tmp = None
    try:
        engine_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{engine_dir.name}.", dir=engine_dir.parent)
        llm.save(tmp)
        os.rename(tmp, engine_dir)
        return f"engine saved to {engine_dir}"
    except OSError as e:
        if (engine_dir / "config.json").is_file():
            return f"engine cache: {engine_dir} was saved meanwhile by another run"
        return f"engine cache: could not save the engine ({e}); the next start builds it again"
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


class TensorRTLLMAdapter(EngineAdapter):
    kind = "tensorrt_llm"
    Config = TensorRTLLMConfig

    def unavailable(self, config: TensorRTLLMConfig | None = None) -> str | None:
        """Whatever the config: whether tensorrt_llm can be imported here."""
        if importlib.util.find_spec("tensorrt_llm") is None:
            return f"TensorRT-LLM is not installed; {_NOT_INSTALLED}"
        return None

    def check(self, config: TensorRTLLMConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        """As EngineAdapter.check; `max_input_tokens`, the workload's longest prompt where known, is checked against
        max_num_tokens when chunked prefill is off (trtllm_args.prompt_problem)."""
        if (reason := self.unavailable()) is not None:
            return reason
        gpus = config.tensor_parallel_size * config.pipeline_parallel_size
        if gpus > hardware.gpu_count:
            return (f"tensor_parallel_size {config.tensor_parallel_size} x pipeline_parallel_size "
                    f"{config.pipeline_parallel_size} needs {gpus} CUDA GPUs; this machine has {hardware.gpu_count}")
        problem = (compute_capability_problem(config, hardware.compute_capability) or quantization_problem(config)
                   or prompt_problem(config, max_input_tokens))
        if problem is not None:
            return problem
        quantization, revision = config.quantization, hub_revision(config)
        try:
            weights = weight_bytes(config.model, quantization, revision)
            arch = model_arch(config.model, revision) or {}
        except (ValueError, OSError) as e:
            return str(e)
        memory = hardware.gpu_memory_bytes[:gpus]
        if weights and len(memory) == gpus and weights / gpus > WEIGHT_MEMORY_SHARE * min(memory):
            return (f"{config.model} weights ({quantization}) need about {weights / gpus / 2**30:.1f} GiB per GPU "
                    f"over {gpus} GPU(s); more than {WEIGHT_MEMORY_SHARE:.0%} of {min(memory) / 2**30:.1f} GiB: "
                    f"raise tensor_parallel_size or quantize")
        limit = config.max_seq_len or (arch.get("text_config") or arch).get("max_position_embeddings")
        if max_sequence_tokens and limit and max_sequence_tokens > limit:
            source = "max_seq_len" if config.max_seq_len else "the model's max_position_embeddings"
            return f"the workload's longest sequence ({max_sequence_tokens} tokens) exceeds {source} ({limit})"
        return None

    def heuristic_point(self, config: TensorRTLLMConfig, hardware: Hardware, input_tokens: float,
                        output_tokens: float, max_input_tokens: int | None = None) -> dict | None:
        """trtllm-bench's sizing rule (engine_adapters/trtllm_sizing.py)."""
        return bench_point(config, hardware, input_tokens, output_tokens, max_input_tokens)

    def heuristic_unavailable(self, config: TensorRTLLMConfig, hardware: Hardware, input_tokens: float,
                              output_tokens: float) -> str | None:
        """Why `heuristic_point` returns None for these arguments, or None."""
        return bench_point_unavailable_reason(config, hardware, input_tokens, output_tokens)

    @contextlib.asynccontextmanager
    async def start(self, config: TensorRTLLMConfig):
        tllm = require_tensorrt_llm()
        launch = asyncio.ensure_future(asyncio.to_thread(_launch, config, tllm))
        try:
            engine = await asyncio.shield(launch)
        except asyncio.CancelledError:  # the build thread goes on: wait for it, then shut its LLM down
            with contextlib.suppress(Exception):
                engine = await launch
                await asyncio.to_thread(engine.close)
            raise
        try:
            yield engine
        finally:
            await asyncio.to_thread(engine.close)

    def fingerprint(self, config: TensorRTLLMConfig) -> dict:
        tllm = require_tensorrt_llm()
        hardware = Hardware.detect()
        return {
            "engine": "tensorrt-llm",
            "engine_version": tllm.__version__,
            "simulated": False,
            "backend": config.backend,
            "model": {"name": config.model, **model_identity(config.model, hub_revision(config)),
                      "checkpoint_quantization": checkpoint_quantization(config.model, hub_revision(config))},
            "knobs": config.model_dump(mode="json"),
            "gpus": list(hardware.gpu_names),
            "compute_capability": list(hardware.compute_capability) if hardware.compute_capability else None,
        }

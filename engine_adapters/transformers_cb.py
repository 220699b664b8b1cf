"""Hugging Face transformers continuous batching (paged KV cache), run in-process.

Knob mapping (DESIGN.md section 4): `max_batch_size` -> `max_requests_per_batch`, `max_num_tokens`
-> `max_batch_tokens`, `kv_cache_fraction` -> `max_memory_percent` on CUDA (a fraction of the free
GPU memory after loading) and, on CPU where free-memory fractions mean nothing, `num_blocks` sized
so the KV pool takes `kv_cache_fraction * cpu_kv_budget_mib`.

Generation is greedy with EOS disabled, so every request produces exactly `max_output_tokens`
tokens. Token times are the engine's own per-token timestamps (taken in its generation thread with
`time.perf_counter`, the clock of `time.perf_counter_ns`), not the time the event loop saw them; so
by default a request's tokens are handed over once, when it finishes (`stream_outputs` hands them
over as they are made, for callers that want to watch them arrive).

torch and transformers are imported only in `start` and `fingerprint`.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import hashlib
import itertools
import json
import math
import platform
import time
from pathlib import Path
from typing import Any, AsyncIterator, Literal

from pydantic import Field

from engine_adapters.base import Engine, EngineAdapter, EngineConfig, Hardware, StreamEvent
from engine_adapters.builtin_models import HFTokenizer, model_config, require_torch_transformers, resolve_model
from workloads import RequestSpec, TokenSpace

_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


class TransformersConfig(EngineConfig):
    model: str = Field("builtin:tiny-llama", description="builtin:NAME or a local Hugging Face model directory")
    # None (null in YAML) leaves a knob to transformers' own default: how to measure "the engine's defaults".
    max_batch_size: int | None = Field(8, ge=1, description="-> max_requests_per_batch")
    max_num_tokens: int | None = Field(512, ge=16, description="-> max_batch_tokens (query tokens per step)")
    kv_cache_fraction: float | None = Field(0.5, gt=0, le=1, description="CUDA: max_memory_percent; CPU: share of "
                                            "cpu_kv_budget_mib (None on CPU: all of it)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    page_size: int = Field(32, ge=4, description="tokens per KV page")
    cpu_kv_budget_mib: float = Field(64, gt=0, description="KV pool size on CPU at kv_cache_fraction 1.0")
    attn_implementation: str | None = Field(None, description="passed to from_pretrained; None: transformers' default")
    prefix_caching: bool = Field(True, description="-> allow_block_sharing: reuse the KV blocks of a prompt prefix "
                                 "already cached (only allowed: models that cannot share blocks ignore it)")
    cuda_graph: bool | None = Field(None, description="-> use_cuda_graph (None: transformers decides)")
    max_blocks_per_request: int | None = Field(None, ge=0, description="-> max_blocks_per_request: the decode fast "
                                               "path's block-table width (0 turns it off; None: transformers' default, "
                                               "which generate_batch instead sizes to its batch's longest sequence)")
    stream_outputs: bool = Field(False, description="hand each token over as it is made (streaming=True) instead of "
                                 "once per request; token times are the engine's stamps either way, but streaming "
                                 "costs the generation thread GIL time for every token (benchmarks/gpu/overhead.py)")
    seed: int = 0


def kv_block_bytes(config: TransformersConfig, arch: dict) -> int:
    """Bytes of one KV block (`page_size` tokens of K and V in every layer) of a full-attention model."""
    text = arch.get("text_config") or arch
    heads = text["num_attention_heads"]
    head_dim = text.get("head_dim") or text["hidden_size"] // heads
    kv_heads = text.get("num_key_value_heads") or heads
    return 2 * text["num_hidden_layers"] * config.page_size * kv_heads * head_dim * _DTYPE_BYTES[config.dtype]


def cpu_num_blocks(config: TransformersConfig, arch: dict) -> int:
    """KV blocks on CPU: as many as fit in `kv_cache_fraction * cpu_kv_budget_mib`."""
    return int(_cpu_kv_mib(config) * 2**20) // kv_block_bytes(config, arch)


def _cpu_kv_mib(config: TransformersConfig) -> float:
    return (1.0 if config.kv_cache_fraction is None else config.kv_cache_fraction) * config.cpu_kv_budget_mib


def _device(config: TransformersConfig, has_gpu: bool) -> Literal["cpu", "cuda"]:
    return "cuda" if config.device == "cuda" or (config.device == "auto" and has_gpu) else "cpu"


class TransformersEngine(Engine):
    """A started `ContinuousBatchingManager`; `stream` may be called concurrently from its event loop.

    `kv_capacity_tokens` is the resolved KV pool size: a request whose prompt plus output exceeds it
    is refused with an error event (submitted, it would stop the engine for every request).
    """

    def __init__(self, model: Any, manager: Any, tokenizer: Any, kv_capacity_tokens: int, log_lines: list[str],
                 model_name: str, streaming: bool, prefix_matches: dict[str, int] | None = None):
        text_config = model.config.get_text_config()
        self.token_space = TokenSpace(vocab_size=text_config.vocab_size,
                                      reserved_ids=frozenset(tokenizer.all_special_ids),
                                      tokenizer=HFTokenizer(tokenizer, model_name))
        self.kv_capacity_tokens = kv_capacity_tokens
        self._model, self._manager, self._tokenizer = model, manager, tokenizer
        self._log_lines = log_lines
        self._ids = itertools.count()
        self._streaming = streaming
        self._prefix_matches = prefix_matches  # request id -> prompt tokens shared from the cache (_count_prefix_matches)

    async def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        rid = f"{request.id}#{next(self._ids)}"
        if request.prompt_token_ids is not None:
            input_ids = list(request.prompt_token_ids)
        else:
            input_ids = self._tokenizer(request.prompt_text)["input_ids"]
        error = self._refusal(input_ids, request.max_output_tokens)
        if error:
            yield StreamEvent(time.perf_counter_ns(), error=error)
            return
        outputs: asyncio.Queue = asyncio.Queue()
        # Outputs arrive through loop.call_soon_threadsafe from the generation thread, so the handler
        # must be registered (on this loop) before the request can produce anything.
        self._manager.register_result_handler(rid, outputs.put_nowait)
        if self._manager.add_request(input_ids, request_id=rid, max_new_tokens=request.max_output_tokens,
                                     streaming=self._streaming, record_timestamps=True) is None:
            yield StreamEvent(time.perf_counter_ns(), error="transformers: the engine refused the request "
                                                            "(its generation loop is stopping or has failed)")
            return
        seen, last_ns, finished = 0, 0, False
        try:
            while not finished:
                out = await outputs.get()
                finished = out.is_finished()
                for t_ns in _token_times(out, seen):
                    last_ns = max(last_ns, t_ns)
                    yield StreamEvent(last_ns, 1)
                seen = max(seen, len(out.generated_tokens))
                if out.error:
                    finished = True
                    yield StreamEvent(time.perf_counter_ns(), error=f"transformers: {out.error}")
                elif finished and self._prefix_matches is not None:
                    yield StreamEvent(last_ns, cached_prompt_tokens=self._prefix_matches.pop(rid, 0))
        finally:
            if not finished:  # the client gave up (cancelled or closed the stream): free the engine's slot
                self._manager.cancel_request(rid)

    def _refusal(self, input_ids: list[int], max_output_tokens: int) -> str | None:
        if not input_ids:
            return "transformers: empty prompt"
        vocab = self.token_space.vocab_size
        if not all(0 <= t < vocab for t in input_ids):
            return f"transformers: prompt has token ids outside the vocabulary [0, {vocab})"
        if len(input_ids) + max_output_tokens > self.kv_capacity_tokens:
            return (f"transformers: sequence of {len(input_ids)} prompt + {max_output_tokens} output tokens "
                    f"exceeds the KV cache capacity of {self.kv_capacity_tokens} tokens")
        return None

    def log_lines(self) -> list[str]:
        return list(self._log_lines)

    def close(self) -> None:
        """Stop the generation thread (in-flight requests fail) and free model and cache memory."""
        device_type = self._model.device.type
        self._manager.stop(block=True, hard_stop=True)
        self._model = self._manager = None
        gc.collect()
        if device_type == "cuda":
            import torch

            # Each generation thread gets its own cuBLAS workspace (32 MiB on an H100), kept after the thread ends
            # unless cleared: without this every started engine leaks one. Private API, hence the guard.
            getattr(torch._C, "_cuda_clearCublasWorkspaces", lambda: None)()
            torch.cuda.empty_cache()


def _token_times(out: Any, seen: int) -> list[int]:
    """perf_counter_ns times of generated tokens `seen:` of a GenerationOutput.

    `timestamps` may hold more entries than tokens (trailing stamps of discarded tokens are dropped)
    or fewer (a request re-queued under KV pressure restarts its stamps: they belong to the last
    tokens); tokens without a stamp get the current time.
    """
    n = len(out.generated_tokens)
    stamps = out.timestamps or []
    offset = max(n - len(stamps), 0)
    now = time.perf_counter_ns()
    return [int(stamps[i - offset] * 1e9) if i >= offset else now for i in range(seen, n)]


def _launch(config: TransformersConfig) -> TransformersEngine:
    """Blocking: load the model, build and warm up the continuous batching manager, start it."""
    torch, transformers = require_torch_transformers()
    path = resolve_model(config.model)
    device = _device(config, torch.cuda.is_available())
    kwargs = {"attn_implementation": config.attn_implementation} if config.attn_implementation else {}
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, config.dtype), **kwargs)
    model = model.to(device).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    cb_fields = {f.name for f in dataclasses.fields(transformers.ContinuousBatchingConfig)}
    page_field = "page_size" if "page_size" in cb_fields else "block_size"  # transformers 5.17 calls it block_size
    cb_kwargs: dict[str, Any] = {page_field: config.page_size, "max_batch_tokens": config.max_num_tokens,
                                 "max_requests_per_batch": config.max_batch_size, "seed": config.seed,
                                 "allow_block_sharing": config.prefix_caching}
    if device == "cpu":
        cb_kwargs["num_blocks"] = cpu_num_blocks(config, model.config.get_text_config().to_dict())
    else:
        cb_kwargs["max_memory_percent"] = config.kv_cache_fraction
    if "use_cuda_graph" in cb_fields:
        cb_kwargs["use_cuda_graph"] = config.cuda_graph
    if "max_blocks_per_request" in cb_fields:
        cb_kwargs["max_blocks_per_request"] = config.max_blocks_per_request
    cb_kwargs = {k: v for k, v in cb_kwargs.items() if v is not None}
    manager = model.init_continuous_batching(
        generation_config=transformers.GenerationConfig(do_sample=False, eos_token_id=-1),
        continuous_batching_config=transformers.ContinuousBatchingConfig(**cb_kwargs),
    )
    manager.warmup()  # builds the paged cache (resolving num_blocks) and captures CUDA graphs if enabled
    cb = manager.continuous_batching_config
    capacity = cb.num_blocks * config.page_size
    n_params = sum(p.numel() for p in model.parameters())
    log_lines = [
        f"model {config.model} ({path}): {n_params / 1e6:.1f}M parameters, {config.dtype} on {device}, "
        f"attention {model.config._attn_implementation}",
        f"continuous batching: num_blocks={cb.num_blocks} x page_size={config.page_size} "
        f"(KV capacity {capacity} tokens), max_batch_tokens={cb.max_batch_tokens}, "
        f"max_requests_per_batch={cb.max_requests_per_batch}, max_memory_percent={cb.max_memory_percent}",
        f"continuous batching: cuda_graph={cb.use_cuda_graph}, async_batching={cb.use_async_batching}, "
        f"scheduler={cb.scheduler_type}, block_sharing={cb.allow_block_sharing}, "
        f"max_blocks_per_request={getattr(cb, 'max_blocks_per_request', None)}",
    ]
    prefix_matches, how = _count_prefix_matches(manager)
    log_lines.append(f"prefix cache hits per request: {how}")
    manager.start()
    return TransformersEngine(model, manager, tokenizer, capacity, log_lines, config.model, config.stream_outputs,
                              prefix_matches)


def _count_prefix_matches(manager: Any) -> tuple[dict[str, int] | None, str]:
    """A dict that fills with each request's prompt tokens shared from the prefix cache, and how they are counted.

    transformers keeps no hit counters; its scheduler asks the paged cache `search_prefix_match(request_id,
    prompt_ids)` once for a pending request, which shares the matched blocks and returns their tokens. The
    warmed-up manager's cache instance gets a wrapper that records that number (the last one per request).
    None when this transformers has no such method or does not share prefixes (`use_prefix_sharing` false: the
    allocators cannot share, or `allow_block_sharing` is off), with the reason."""
    cache = getattr(getattr(manager, "batch_processor", None), "cache", None)
    search = getattr(cache, "search_prefix_match", None)
    if search is None:
        return None, "not reported (this transformers has no PagedAttentionCache.search_prefix_match)"
    if not getattr(cache, "use_prefix_sharing", False):
        return None, "not reported: the cache does not share prefixes (use_prefix_sharing false)"
    matches: dict[str, int] = {}

    def counting_search(request_id: str, prompt_ids: list[int]) -> int:
        matches[request_id] = shared = search(request_id, prompt_ids)
        return shared

    cache.search_prefix_match = counting_search
    return matches, "counted from the cache's search_prefix_match (use_prefix_sharing true)"


class TransformersAdapter(EngineAdapter):
    kind = "transformers"
    Config = TransformersConfig

    def check(self, config: TransformersConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        if config.device == "cuda" and hardware.gpu_count == 0:
            return "device cuda requested but this machine has no GPU"
        device = _device(config, hardware.gpu_count > 0)
        if device == "cpu" and config.dtype == "float16":
            return "float16 matmuls are not supported or are emulated on CPU: use float32 or bfloat16"
        cc = hardware.compute_capability
        if device == "cuda" and config.dtype == "bfloat16" and cc is not None and cc < (8, 0):
            return f"bfloat16 needs compute capability >= 8.0; this GPU has {cc[0]}.{cc[1]}"
        try:
            arch = model_config(config.model)
        except (ValueError, OSError) as e:
            return str(e)
        if device == "cpu":  # on CUDA the capacity follows free memory after loading: known only once started
            capacity = cpu_num_blocks(config, arch) * config.page_size
            if capacity < (max_sequence_tokens or 1):
                return (f"KV cache of {_cpu_kv_mib(config):.2f} MiB holds "
                        f"{capacity} tokens, fewer than the longest sequence of the workload "
                        f"({max_sequence_tokens or 1} tokens)")
        return None

    @contextlib.asynccontextmanager
    async def start(self, config: TransformersConfig):
        engine = await asyncio.to_thread(_launch, config)
        try:
            yield engine
        finally:
            await asyncio.to_thread(engine.close)

    def fingerprint(self, config: TransformersConfig) -> dict:
        torch, transformers = require_torch_transformers()
        path = resolve_model(config.model)
        cuda = _device(config, torch.cuda.is_available()) == "cuda"
        return {
            "engine": "transformers-cb",
            "engine_version": transformers.__version__,
            "torch_version": torch.__version__,
            "simulated": False,
            "model": {
                "name": config.model,
                "path": str(path),
                "parameters": _safetensors_parameters(path),
                "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()[:16],
            },
            "dtype": config.dtype,
            "device": torch.cuda.get_device_name() if cuda else _cpu_model(),
            "cuda": torch.version.cuda,
            "driver": _nvidia_driver() if cuda else None,
        }


def _safetensors_parameters(path: Path) -> int | None:
    """Parameter count read from the safetensors headers (no weights loaded); None without safetensors files."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as f:
            header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
        total += sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    return total


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _nvidia_driver() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVML library or no driver: the fingerprint just lacks the version
        return None
    try:
        version = pynvml.nvmlSystemGetDriverVersion()
        return version.decode() if isinstance(version, bytes) else version
    finally:
        pynvml.nvmlShutdown()

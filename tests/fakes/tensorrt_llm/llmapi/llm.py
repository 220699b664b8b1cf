"""Mirrors tensorrt_llm/llmapi/llm.py: `LLM` (PyTorch backend), `_TrtLLM` (TensorRT engines), `RequestOutput`.

The "engine" is a step model on the caller's event loop: a request waits for one of
`max_batch_size` slots, its first token comes one step (`FAKE.step_ms`) after it is scheduled,
then one token per step, delivered `stream_interval` tokens per response.
KV block reuse (kv_cache_config.enable_block_reuse): a request reuses the leading full blocks of
`kv_cache_config.tokens_per_block` prompt tokens that an earlier request's prompt had (all but its last prompt
token at most; nothing is evicted), reported in request_perf_metrics.kv_cache_metrics.

Prompt limits as the real ones: PyTorch backend, chunked prefill off: `generate_async` raises when the
prompt exceeds max_num_tokens (BaseLLM._check_arguments); TensorRT backend: the request fails on its
stream when the prompt exceeds the runtime's max input length (`_TrtLLM._max_input_len`).
"""
import asyncio
import datetime as dt
import itertools
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Optional

from tensorrt_llm._fake import FAKE
from tensorrt_llm.bindings.executor import KvCacheMetrics, RequestPerfMetrics, TimingMetrics
from tensorrt_llm.executor import CompletionOutput, RequestError
from tensorrt_llm.llmapi.llm_args import BaseLlmArgs, TorchLlmArgs, TrtLlmArgs
from tensorrt_llm.llmapi.tokenizer import ByteTokenizer, TransformersTokenizer
from tensorrt_llm.sampling_params import SamplingParams

_ids = itertools.count()


def _steady(ns: int) -> dt.timedelta:
    return dt.timedelta(microseconds=ns // 1000)


class RequestOutput:
    """One request's output; in streaming mode an async iterator yielding itself after each response."""

    def __init__(self, llm: "BaseLLM", prompt_token_ids: list[int], params: SamplingParams, streaming: bool):
        self.request_id = next(_ids)
        self.prompt = None
        self.prompt_token_ids = prompt_token_ids
        self.outputs = [CompletionOutput(0)]
        self.finished = False
        self._llm, self._params, self._streaming = llm, params, streaming
        self._queue: asyncio.Queue = asyncio.Queue()
        self._timing = TimingMetrics(arrival_time=_steady(time.perf_counter_ns()))
        self._kv = KvCacheMetrics()
        self._task = asyncio.get_running_loop().create_task(self._run())

    def __aiter__(self):
        return self

    async def __anext__(self) -> "RequestOutput":
        if self.finished or not self._streaming:
            raise StopAsyncIteration
        await self._step()
        return self

    async def aresult(self) -> "RequestOutput":
        while not self.finished:
            await self._step()
        return self

    def abort(self) -> None:
        FAKE.aborted.append(self.request_id)
        self._task.cancel()

    async def _step(self) -> None:
        item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        tokens, final, reason = item
        out = self.outputs[0]
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.extend(tokens)
        self.finished = final
        if final:
            out.finish_reason = reason
        if self._params.return_perf_metrics:
            out.request_perf_metrics = RequestPerfMetrics(timing_metrics=TimingMetrics(**vars(self._timing)),
                                                          kv_cache_metrics=KvCacheMetrics(**vars(self._kv)))

    async def _run(self) -> None:
        try:
            await self._generate()
        except asyncio.CancelledError:  # aborted: a final "cancelled" response; shut down: an error
            aborted = self.request_id in FAKE.aborted
            self._queue.put_nowait(([], True, "cancelled") if aborted else RequestError("the executor was shut down"))
            raise

    async def _generate(self) -> None:
        limit = self._llm._max_input_len()
        if limit is not None and len(self.prompt_token_ids) > limit:  # llmRequest.h validate()
            self._queue.put_nowait(RequestError(
                f"Prompt length ({len(self.prompt_token_ids)}) exceeds maximum input length ({limit}). Set log "
                "level to info and check TRTGptModel logs for how maximum input length is set"))
            return
        step_s, interval = FAKE.step_ms / 1e3, self._llm._stream_interval
        async with self._llm._slots:
            self._timing.first_scheduled_time = _steady(time.perf_counter_ns())
            self._kv = self._llm._allocate_blocks(self.prompt_token_ids, self._params.max_tokens)
            if FAKE.hang:
                await asyncio.Event().wait()
            pending: list[int] = []
            for i in range(self._params.max_tokens):
                await asyncio.sleep(step_s)
                if FAKE.raise_after is not None and i >= FAKE.raise_after:
                    self._queue.put_nowait(RequestError(FAKE.raise_message))
                    return
                now = _steady(time.perf_counter_ns())
                if i == 0:
                    self._timing.first_token_time = now
                eos = FAKE.eos_after == i and not self._params.ignore_eos
                last = eos or i == self._params.max_tokens - 1
                if not eos:  # the end id is not part of the output
                    pending.append((len(self.prompt_token_ids) + i) % 256 + 4)
                if last:
                    self._timing.last_token_time = now
                if last or len(pending) == interval:
                    self._queue.put_nowait((pending, last, "stop" if eos else "length" if last else None))
                    pending = []
                if last:
                    return


class BaseLLM:
    _args_cls: type[BaseLlmArgs]
    backend: str

    def __init__(self, model, tokenizer=None, **kwargs: Any) -> None:
        self.kwargs = {"model": model, **({"tokenizer": tokenizer} if tokenizer is not None else {}), **kwargs}
        self.shutdown_calls = 0
        FAKE.llms.append(self)
        self.args = self._args_cls(model=model, tokenizer=tokenizer, **kwargs)  # pydantic: unknown kwargs rejected
        time.sleep(FAKE.init_s)
        if FAKE.fail_init:
            raise RuntimeError(FAKE.fail_init)
        self._workspace = tempfile.TemporaryDirectory(suffix="-llm-workspace")
        self._engine_dir: Optional[Path] = None
        self._prepare_model(Path(str(model)))
        self.tokenizer = TransformersTokenizer(ByteTokenizer())
        self._slots = None  # made on first use, on the caller's event loop
        self._stream_interval = getattr(self.args, "stream_interval", 1)
        self._lock = threading.Lock()
        self._outputs: list[RequestOutput] = []
        self._alive = True
        self._blocks: set[tuple[int, ...]] = set()  # prompt prefixes of whole blocks held for reuse

    def _prepare_model(self, path: Path) -> None:
        if path.is_dir() and not (path / "config.json").is_file():
            raise ValueError(f"Failed to infer model format from {path}: no config.json")

    def generate_async(self, inputs, sampling_params: Optional[SamplingParams] = None, lora_request=None,
                       prompt_adapter_request=None, streaming: bool = False, queries=None,
                       kv_cache_retention_config=None, disaggregated_params=None) -> RequestOutput:
        if not self._alive:
            raise RuntimeError("LLM has been shut down")
        params = sampling_params or SamplingParams(end_id=self.tokenizer.eos_token_id)
        if not isinstance(params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams or None, but got {type(params)}")
        if isinstance(inputs, str):
            ids = self.tokenizer.encode(inputs)
        elif isinstance(inputs, list) and all(isinstance(t, int) for t in inputs):
            ids = inputs
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        vocab = len(self.tokenizer.tokenizer)
        if not ids or not all(0 <= t < vocab for t in ids):
            raise ValueError(f"prompt token ids must be non-empty and in [0, {vocab})")
        max_seq_len = self.args.max_seq_len  # the TensorRT backend checks this only without chunked prefill
        checks_seq_len = self.backend == "pytorch" or not self.args.enable_chunked_prefill
        if max_seq_len is not None and checks_seq_len and len(ids) + params.max_tokens > max_seq_len:
            raise ValueError(f"The sum of prompt length ({len(ids)}) and max_tokens ({params.max_tokens}) should "
                             f"not exceed max_seq_len ({max_seq_len})")
        if self.backend == "pytorch" and not self.args.enable_chunked_prefill and len(ids) > self.args.max_num_tokens:
            raise ValueError(f"The sum of prompt length ({len(ids)}), query length (0) should not exceed "
                             f"max_num_tokens ({self.args.max_num_tokens})")
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.args.max_batch_size)
        out = RequestOutput(self, list(ids), params, streaming)
        with self._lock:
            self._outputs.append(out)
        return out

    def _allocate_blocks(self, prompt: list[int], max_tokens: int) -> KvCacheMetrics:
        """The request's KV blocks, reusing cached prompt blocks; its full prompt blocks are cached for later ones."""
        size, reuse = self.args.kv_cache_config.tokens_per_block, self.args.kv_cache_config.enable_block_reuse
        reused = 0
        while reuse and (reused + 1) * size < len(prompt) and tuple(prompt[:(reused + 1) * size]) in self._blocks:
            reused += 1
        if reuse:
            self._blocks.update(tuple(prompt[:end]) for end in range(size, len(prompt) + 1, size))
        context = -(-len(prompt) // size)
        total = -(-(len(prompt) + max_tokens) // size)
        return KvCacheMetrics(num_total_allocated_blocks=total, num_new_allocated_blocks=total - reused,
                              num_reused_blocks=reused, num_missed_blocks=context - reused,
                              kv_cache_hit_rate=reused / context)

    def _max_input_len(self) -> Optional[int]:
        """The runtime's prompt limit checked on the stream; None: none (the PyTorch backend checks at submission)."""
        return None

    def save(self, engine_dir: str) -> None:
        if self._engine_dir is None:
            raise RuntimeError("The engine is not built yet.")
        FAKE.saves.append(str(engine_dir))
        if self._engine_dir.absolute() != Path(engine_dir).absolute():
            shutil.copytree(self._engine_dir, engine_dir, dirs_exist_ok=True)

    def shutdown(self) -> None:
        """Thread-safe like the real one: stops every request (from any thread) and frees the workspace."""
        self.shutdown_calls += 1
        self._alive = False
        with self._lock:
            outputs, self._outputs = self._outputs, []
        for out in outputs:
            loop = out._task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(out._task.cancel)
        if hasattr(self, "_workspace"):
            self._workspace.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        self.shutdown()
        return False


class LLM(BaseLLM):
    """The PyTorch backend: loads the checkpoint, builds nothing (`save` has no engine to save)."""

    _args_cls = TorchLlmArgs
    backend = "pytorch"

    def _prepare_model(self, path: Path) -> None:
        super()._prepare_model(path)
        if (path / "rank0.engine").is_file():
            raise ValueError(f"{path} is a TensorRT engine: the PyTorch backend loads checkpoints only")


class _TrtLLM(BaseLLM):
    """The TensorRT backend: a checkpoint is built into an engine (recorded in FAKE.builds); an engine
    directory (config.json with a build_config, rank0.engine) is loaded as it is (FAKE.loads)."""

    _args_cls = TrtLlmArgs
    backend = "tensorrt"

    def _max_input_len(self) -> Optional[int]:
        """cpp/tensorrt_llm/batch_manager/trtGptModel.h: max_seq_len - 1 with chunked context, else (context FMHA and
        packed input, the default plugins) min(max_seq_len - 1, max_num_tokens); the engine's max_input_len is unused.
        A max_seq_len of None (the model's own in the real engine) is no limit here."""
        a = self.args
        limits = [a.max_seq_len - 1 if a.max_seq_len else None, None if a.enable_chunked_prefill else a.max_num_tokens]
        return min((x for x in limits if x), default=None)

    def _prepare_model(self, path: Path) -> None:
        super()._prepare_model(path)
        if (path / "rank0.engine").is_file():
            FAKE.loads.append(str(path))
            self._engine_dir = path
            return
        FAKE.builds.append(self.kwargs)
        self._engine_dir = Path(self._workspace.name) / "engine"
        self._engine_dir.mkdir()
        a = self.args
        build = {"max_batch_size": a.max_batch_size, "max_num_tokens": a.max_num_tokens, "max_seq_len": a.max_seq_len,
                 "quant_config": vars(a.quant_config) if a.quant_config else None}
        (self._engine_dir / "config.json").write_text(json.dumps({"build_config": build, "source": str(path)},
                                                                 default=str))
        (self._engine_dir / "rank0.engine").write_bytes(b"fake engine")

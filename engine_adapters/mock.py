"""A deterministic simulated engine (MOCK: its numbers describe a service model, not hardware).

The service model is iteration-level batching as in real LLM servers: each step serves at most
`max_batch_size` admitted requests; decoding requests get one token per step, the remaining
`max_num_tokens` budget prefills waiting prompts (chunked). A step takes
`step_ms + decode_ms_per_seq * decoding + prefill_ms_per_token * prefilled_tokens`.
A request is admitted only when its whole sequence (prompt + max output) fits in the KV cache,
whose size is `kv_cache_fraction * kv_pool_tokens`. With `memory_budget` set, a config whose
`simulated_memory()` exceeds it fails to start with a simulated out-of-memory error.

Prefix caching (`prefix_caching`, off by default so that configs written before it keep their numbers):
once a request's prompt is prefilled, its full blocks of `kv_block_tokens` tokens stay in the KV pool
for reuse. A later request whose prompt (as token ids) starts with cached blocks shares them (they
are not reserved again at admission) and prefills only the rest (at least one token: the one that yields the first output token), so its
prefill is `prefill_ms_per_token` x the cached tokens shorter. Blocks in use by a running request are
pinned; the others are evicted least recently used first when an admission needs room. Prompts given
as text (no token ids) never hit. The engine reports each request's cached prompt tokens (0 without a hit, or with
prefix caching off) on an event just before the end of its stream, as real engines report theirs: SIMULATED hits.

`ServiceModel` holds the pure scheduling logic; `MockEngine` runs it in real time on the event
loop, and `simulate` runs it in virtual time so tests can compute the true answer.
"""
from __future__ import annotations

import asyncio
import contextlib
import numbers
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import AsyncIterator, Literal, NamedTuple, Sequence

from pydantic import Field

from engine_adapters.base import Engine, EngineAdapter, EngineConfig, Hardware, StreamEvent
from workloads import RequestSpec, TokenSpace


class MockConfig(EngineConfig):
    model: str = "mock"
    max_batch_size: int = Field(8, ge=1)
    max_num_tokens: int = Field(2048, ge=1)
    kv_cache_fraction: float = Field(0.9, gt=0, le=1)
    quantization: Literal["none", "fp8", "int8"] = "none"
    kv_pool_tokens: int = Field(1_000_000, ge=1, description="KV capacity in tokens at fraction 1.0")
    step_ms: float = Field(2.0, ge=0)
    decode_ms_per_seq: float = Field(0.2, ge=0)
    prefill_ms_per_token: float = Field(0.01, ge=0)
    quantization_speedup: float = Field(1.5, gt=0, description="step-time divisor when quantized")
    vocab_size: int = Field(1000, ge=2)
    fail_every_n: int | None = Field(None, ge=1, description="every n-th request ends with an error")
    start_error: str | None = Field(None, description="raise this message when the engine starts")
    start_delay_s: float = Field(0.0, ge=0, description="sleep this long while starting")
    memory_budget: float | None = Field(
        None, gt=0, description="SIMULATED out of memory: starting fails when simulated_memory() exceeds this")
    prefix_caching: bool = Field(False, description="keep prompt KV blocks for reuse by later prompts with that prefix")
    kv_block_tokens: int = Field(32, ge=1, description="tokens per KV block: the granularity of prefix caching")

    def kv_capacity_tokens(self) -> int:
        return int(self.kv_cache_fraction * self.kv_pool_tokens)

    def simulated_memory(self) -> float:
        """A made-up memory use that grows with each memory knob: max_batch_size x max_num_tokens x
        kv_cache_fraction (no unit; compared with `memory_budget`)."""
        return self.max_batch_size * self.max_num_tokens * self.kv_cache_fraction


class SimulatedOutOfMemoryError(RuntimeError):
    """The mock engine's stand-in for a GPU out-of-memory error at engine start (`MockConfig.memory_budget`)."""


@dataclass
class _Seq:
    request_id: str
    prompt_tokens: int
    output_tokens: int
    prompt_ids: tuple[int, ...] | None = None  # only prompts with known token ids can share cached blocks
    prefilled: int = 0
    generated: int = 0
    reserved: int = 0  # KV tokens held by this sequence alone (its cached blocks are counted in the cache)
    blocks: list[int] = field(default_factory=list)  # ids of the cached blocks it uses, in prompt order

    @property
    def footprint(self) -> int:
        return self.prompt_tokens + self.output_tokens


class PrefixCache:
    """Prompt KV blocks kept for reuse. A block is `block_tokens` prompt tokens, keyed by those tokens and
    the block before it, so a prompt finds its longest cached block-aligned prefix. Blocks used by running
    requests are pinned (reference counted); idle ones are evicted least recently used first, a block
    becoming idle before the blocks in front of it so that prefixes are evicted from their tail."""

    def __init__(self, block_tokens: int):
        self.block_tokens = block_tokens
        self._ids: dict[tuple[int, tuple[int, ...]], int] = {}  # (previous block id or 0, tokens) -> id
        self._keys: dict[int, tuple[int, tuple[int, ...]]] = {}
        self._refs: dict[int, int] = {}
        self._idle: OrderedDict[int, None] = OrderedDict()  # unpinned ids, least recently used first
        self._next_id = 1

    @property
    def tokens(self) -> int:
        """KV tokens the cached blocks take up."""
        return len(self._keys) * self.block_tokens

    def idle_tokens(self, excluding: list[int] = ()) -> int:
        """KV tokens eviction could free, not counting blocks in `excluding`."""
        return (len(self._idle) - sum(b in self._idle for b in excluding)) * self.block_tokens

    def match(self, prompt: tuple[int, ...]) -> list[int]:
        """Ids of the cached blocks forming the longest block-aligned prefix of `prompt`, leaving at least one
        prompt token to compute."""
        size, ids, prev = self.block_tokens, [], 0
        for start in range(0, (len(prompt) - 1) // size * size, size):
            prev = self._ids.get((prev, prompt[start:start + size]))
            if prev is None:
                break
            ids.append(prev)
        return ids

    def pin(self, ids: list[int]) -> None:
        for b in ids:
            self._refs[b] += 1
            self._idle.pop(b, None)

    def unpin(self, ids: list[int]) -> None:
        for b in reversed(ids):
            self._refs[b] -= 1
            if self._refs[b] == 0:
                self._idle[b] = None

    def add(self, prev: int, tokens: tuple[int, ...]) -> int:
        """The id of the block `tokens` after block `prev` (0: at the start), added if not cached; pinned."""
        key = (prev, tokens)
        if key not in self._ids:
            self._ids[key], self._keys[self._next_id], self._refs[self._next_id] = self._next_id, key, 0
            self._next_id += 1
        self.pin([self._ids[key]])
        return self._ids[key]

    def evict(self, tokens: int) -> None:
        """Drop idle blocks, least recently used first, until at least `tokens` KV tokens are freed."""
        while tokens > 0:
            b, _ = self._idle.popitem(last=False)
            del self._ids[self._keys.pop(b)], self._refs[b]
            tokens -= self.block_tokens


@dataclass
class ServiceModel:
    """Pure iteration-level scheduler: `add` requests, then `step()` until `idle`."""

    config: MockConfig
    waiting: deque = field(default_factory=deque)
    running: list = field(default_factory=list)
    kv_used: int = 0  # KV tokens held by running sequences outside the prefix cache
    cache: PrefixCache | None = None
    reused_tokens: int = 0  # prompt tokens not prefilled because their blocks were cached
    # per admitted request id: its prompt tokens found cached; whoever runs the model pops it when the request ends
    cached_prompt_tokens: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.config.prefix_caching:
            self.cache = PrefixCache(self.config.kv_block_tokens)

    def add(self, request_id: str, prompt: int | Sequence[int], output_tokens: int) -> str | None:
        """Queue a request whose prompt is given by its length or its token ids (only those can hit the prefix
        cache); return an error instead if it can never fit in the KV cache."""
        seq = (_Seq(request_id, int(prompt), output_tokens) if isinstance(prompt, numbers.Integral)
               else _Seq(request_id, len(prompt), output_tokens, tuple(prompt)))
        if seq.footprint > self.config.kv_capacity_tokens():
            return (f"sequence of {seq.footprint} tokens exceeds KV cache capacity of "
                    f"{self.config.kv_capacity_tokens()} tokens")
        self.waiting.append(seq)
        return None

    @property
    def idle(self) -> bool:
        return not self.waiting and not self.running

    def _admit(self, seq: _Seq) -> bool:
        """Reserve the KV tokens `seq` needs beyond its cached prefix, evicting idle blocks if that makes room;
        False (nothing changed) when it does not fit yet."""
        hits = self.cache.match(seq.prompt_ids) if self.cache and seq.prompt_ids else []
        cached = len(hits) * self.config.kv_block_tokens
        need = seq.footprint - cached
        free = self.config.kv_capacity_tokens() - self.kv_used - (self.cache.tokens if self.cache else 0)
        if need > free + (self.cache.idle_tokens(excluding=hits) if self.cache else 0):
            return False
        if self.cache:
            self.cache.pin(hits)
            self.cache.evict(need - free)
        seq.blocks, seq.prefilled, seq.reserved = hits, cached, need
        self.kv_used += need
        self.reused_tokens += cached
        self.cached_prompt_tokens[seq.request_id] = cached
        return True

    def _cache_prompt(self, seq: _Seq) -> None:
        """Hand the full blocks of a prefilled prompt to the prefix cache (a block another request cached
        meanwhile is shared, and this one's copy freed)."""
        size = self.config.kv_block_tokens
        for start in range(len(seq.blocks) * size, seq.prompt_tokens // size * size, size):
            seq.blocks.append(self.cache.add(seq.blocks[-1] if seq.blocks else 0, seq.prompt_ids[start:start + size]))
            seq.reserved -= size
            self.kv_used -= size

    def step(self) -> tuple[float, dict[str, int], list[str]]:
        """Run one iteration: (duration_s, tokens emitted per request id, ids finished)."""
        cfg = self.config
        while self.waiting and len(self.running) < cfg.max_batch_size and self._admit(self.waiting[0]):
            self.running.append(self.waiting.popleft())
        decoding = [s for s in self.running if s.prefilled == s.prompt_tokens]
        budget = max(cfg.max_num_tokens - len(decoding), 0)
        prefill_tokens, emitted = 0, {}
        for s in self.running:
            if s.prefilled < s.prompt_tokens and budget > 0:
                chunk = min(budget, s.prompt_tokens - s.prefilled)
                s.prefilled += chunk
                budget -= chunk
                prefill_tokens += chunk
                if s.prefilled == s.prompt_tokens:
                    emitted[s.request_id] = 1  # the first token comes out of the last prefill chunk
                    if self.cache and s.prompt_ids:
                        self._cache_prompt(s)
        for s in decoding:
            emitted[s.request_id] = 1
        duration_ms = cfg.step_ms + cfg.decode_ms_per_seq * len(decoding) + cfg.prefill_ms_per_token * prefill_tokens
        if cfg.quantization != "none":
            duration_ms /= cfg.quantization_speedup
        finished = []
        for s in self.running:
            s.generated += emitted.get(s.request_id, 0)
            if s.generated >= s.output_tokens:
                finished.append(s.request_id)
                self.kv_used -= s.reserved
                if self.cache:
                    self.cache.unpin(s.blocks)
        self.running = [s for s in self.running if s.generated < s.output_tokens]
        return duration_ms / 1000.0, emitted, finished


class SimulatedRequest(NamedTuple):
    first_token_s: float
    end_s: float
    cached_prompt_tokens: int | None  # prompt tokens found in the prefix cache, as the engine reports; None: rejected


def simulate_run(config: MockConfig, requests: list[tuple[float, int | Sequence[int], int]]) -> list[SimulatedRequest]:
    """Virtual-time run of `(arrival_s, prompt, output_tokens)` requests, the prompt given by its length or its
    token ids (as the engine gets them from a RequestSpec; only token ids can hit the prefix cache).

    Returns each request's outcome, in input order: the exact answer the real-time engine approximates when the
    client sends at the arrival times.
    """
    model = ServiceModel(config)
    order = sorted(range(len(requests)), key=lambda i: requests[i][0])
    first, end = [None] * len(requests), [None] * len(requests)
    now, k = 0.0, 0
    while k < len(order) or not model.idle:
        if model.idle and k < len(order):
            now = max(now, requests[order[k]][0])
        while k < len(order) and requests[order[k]][0] <= now:
            i = order[k]
            model.add(str(i), requests[i][1], requests[i][2])
            k += 1
        duration, emitted, finished = model.step()
        now += duration
        for rid in emitted:
            if first[int(rid)] is None:
                first[int(rid)] = now
        for rid in finished:
            end[int(rid)] = now
    return [SimulatedRequest(f, e, model.cached_prompt_tokens.pop(str(i), None))
            for i, (f, e) in enumerate(zip(first, end))]


def simulate(config: MockConfig, requests: list[tuple[float, int | Sequence[int], int]]) -> list[tuple[float, float]]:
    """`(first_token_s, end_s)` per request of `simulate_run`."""
    return [(r.first_token_s, r.end_s) for r in simulate_run(config, requests)]


class MockEngine(Engine):
    """Runs the service model in real time on the running event loop."""

    def __init__(self, config: MockConfig):
        self.config = config
        self.token_space = TokenSpace(vocab_size=config.vocab_size)
        self._model = ServiceModel(config)
        self._queues: dict[str, asyncio.Queue] = {}
        self._wake = asyncio.Event()
        self._count = 0
        self._loop_task: asyncio.Task | None = None

    async def _run(self) -> None:
        """Step back to back on a virtual timeline anchored when work arrives; a late wake-up does not
        shift later steps, and tokens are stamped with their step's scheduled end (the model's time)."""
        step_end = time.perf_counter()
        while True:
            if self._model.idle:
                self._wake.clear()
                await self._wake.wait()
                step_end = time.perf_counter()
            duration, emitted, finished = self._model.step()
            step_end += duration
            await asyncio.sleep(max(step_end - time.perf_counter(), 0))
            t_ns = int(step_end * 1e9)
            for rid, n in emitted.items():
                if rid in self._queues:  # a client that gave up has no queue left
                    self._queues[rid].put_nowait(StreamEvent(t_ns, n))
            for rid in finished:
                cached = self._model.cached_prompt_tokens.pop(rid)
                if rid in self._queues:
                    self._queues[rid].put_nowait(StreamEvent(t_ns, cached_prompt_tokens=cached))
                    self._queues[rid].put_nowait(None)

    async def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        self._count += 1
        if self.config.fail_every_n and self._count % self.config.fail_every_n == 0:
            yield StreamEvent(time.perf_counter_ns(), error="mock: injected failure")
            return
        prompt = request.prompt_token_ids if request.prompt_token_ids is not None else len(request.prompt_text.split())
        rid = f"{request.id}#{self._count}"
        queue: asyncio.Queue = asyncio.Queue()
        self._queues[rid] = queue
        try:
            error = self._model.add(rid, prompt, request.max_output_tokens)
            if error:
                yield StreamEvent(time.perf_counter_ns(), error=error)
                return
            self._wake.set()
            while (event := await queue.get()) is not None:
                yield event
        finally:
            del self._queues[rid]


class MockAdapter(EngineAdapter):
    kind = "mock"
    Config = MockConfig

    def check(self, config: MockConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        if config.max_num_tokens < config.max_batch_size:
            return (f"max_num_tokens ({config.max_num_tokens}) < max_batch_size ({config.max_batch_size}): "
                    "a full batch of decodes would not fit in one step")
        if max_sequence_tokens and max_sequence_tokens > config.kv_capacity_tokens():
            return (f"KV cache holds {config.kv_capacity_tokens()} tokens, fewer than the longest sequence of "
                    f"the workload ({max_sequence_tokens} tokens)")
        return None

    @contextlib.asynccontextmanager
    async def start(self, config: MockConfig):
        if config.start_delay_s:
            await asyncio.sleep(config.start_delay_s)
        if config.start_error:
            raise RuntimeError(config.start_error)
        if config.memory_budget is not None and config.simulated_memory() > config.memory_budget:
            raise SimulatedOutOfMemoryError(
                f"SIMULATED out of memory: max_batch_size x max_num_tokens x kv_cache_fraction = "
                f"{config.simulated_memory():g} exceeds the mock's memory_budget {config.memory_budget:g}")
        engine = MockEngine(config)
        engine._loop_task = asyncio.create_task(engine._run())
        try:
            yield engine
        finally:
            engine._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await engine._loop_task

    def heuristic_point(self, config: MockConfig, hardware: Hardware, input_tokens: float,
                        output_tokens: float, max_input_tokens: int | None = None) -> dict:
        """As many sequences as the KV pool holds at the mean length, and a token budget that prefills a
        full batch's prompts in one step: a simple rule with a known answer, for testing warm starts."""
        batch = max(int(config.kv_capacity_tokens() // max(input_tokens + output_tokens, 1)), 1)
        return {"max_batch_size": batch, "max_num_tokens": int(batch * input_tokens)}

    def fingerprint(self, config: MockConfig) -> dict:
        return {"engine": "mock", "engine_version": "service-model-1", "simulated": True,
                "model": config.model, "device": "simulated (no hardware measured)"}

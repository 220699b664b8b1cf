"""The transformers continuous-batching adapter, against the real engine on CPU with builtin:tiny-llama."""
from __future__ import annotations

import asyncio
import hashlib
import time

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from engine_adapters.base import Hardware, StreamEvent  # noqa: E402
from engine_adapters.builtin_models import resolve_model  # noqa: E402
from engine_adapters.transformers_cb import TransformersAdapter, TransformersConfig  # noqa: E402
from workloads import RequestSpec  # noqa: E402

CPU = Hardware(gpu_count=0, cpu="test")


@pytest.fixture(scope="module")
def harness_cache(tmp_path_factory):
    """One HARNESS_CACHE for the module, so the builtin model is built once."""
    path = tmp_path_factory.mktemp("harness_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(path))
        yield path


def _weights_sha(model_dir) -> str:
    return hashlib.sha256((model_dir / "model.safetensors").read_bytes()).hexdigest()


@pytest.mark.slow
def test_builtin_model_is_cached_and_deterministic(harness_cache, tmp_path, monkeypatch):
    first = resolve_model("builtin:tiny-llama")
    assert first == harness_cache / "models" / "tiny-llama-v1"
    mtime = (first / "model.safetensors").stat().st_mtime_ns
    assert resolve_model("builtin:tiny-llama") == first
    assert (first / "model.safetensors").stat().st_mtime_ns == mtime  # reused, not rebuilt
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    second = resolve_model("builtin:tiny-llama")
    assert second == tmp_path / "models" / "tiny-llama-v1"
    assert _weights_sha(second) == _weights_sha(first)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name != "tiny-llama-v1"]  # no temp dir left


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(ValueError, match="builtin:tiny-llama"):
        resolve_model("builtin:nope")


def test_missing_local_dir_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(FileNotFoundError, match="no-such-model"):
        resolve_model(str(missing))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        resolve_model(str(tmp_path))
    reason = TransformersAdapter().check(TransformersConfig(model=str(missing)), CPU)
    assert reason and "no-such-model" in reason


def test_check_rejects_infeasible_configs():
    adapter = TransformersAdapter()
    assert "no GPU" in adapter.check(TransformersConfig(device="cuda"), CPU)
    assert "float16" in adapter.check(TransformersConfig(dtype="float16"), CPU)
    old_gpu = Hardware(gpu_count=1, compute_capability=(7, 5))
    assert "bfloat16" in adapter.check(TransformersConfig(dtype="bfloat16"), old_gpu)
    assert adapter.check(TransformersConfig(dtype="float16"), old_gpu) is None
    assert "holds 0 tokens" in adapter.check(TransformersConfig(cpu_kv_budget_mib=0.01), CPU)
    assert adapter.check(TransformersConfig(), CPU) is None


def test_kv_capacity_on_cpu_follows_the_budget():
    adapter = TransformersAdapter()
    # tiny-llama: 4 layers x 2 KV heads x 64 dims x 4 bytes x 2 (K, V) = 4 KiB per token: 4 MiB hold 1024
    config = TransformersConfig(cpu_kv_budget_mib=8, kv_cache_fraction=0.5)
    assert adapter.check(config, CPU, max_sequence_tokens=1024) is None
    assert "holds 1024 tokens, fewer than the longest sequence of the workload (1025 tokens)" in adapter.check(
        config, CPU, max_sequence_tokens=1025)
    assert adapter.check(config, Hardware(gpu_count=1), max_sequence_tokens=10**9) is None  # known only on start


async def _collect(engine, request: RequestSpec) -> list[StreamEvent]:
    return [event async for event in engine.stream(request)]


async def _consume(engine, request: RequestSpec, into: list[StreamEvent]) -> None:
    async for event in engine.stream(request):
        into.append(event)


@pytest.mark.slow
def test_engine_streams_every_token_with_engine_timestamps(harness_cache):
    adapter = TransformersAdapter()
    config = TransformersConfig(device="cpu", max_batch_size=4, max_num_tokens=64, cpu_kv_budget_mib=8)

    async def run():
        async with adapter.start(config) as engine:
            assert engine.token_space.vocab_size == 260
            assert engine.token_space.reserved_ids == frozenset({0, 1, 2, 3})
            assert engine.kv_capacity_tokens == 1024
            assert any("num_blocks=32" in line for line in engine.log_lines())
            requests = [RequestSpec(id=f"r{i}", max_output_tokens=5 + i,
                                    prompt_token_ids=tuple(range(10, 10 + 8 * (i + 1)))) for i in range(5)]
            requests.append(RequestSpec(id="text", max_output_tokens=4, prompt_text="hello, world"))
            sent = time.perf_counter_ns()
            streams = await asyncio.gather(*(_collect(engine, r) for r in requests))
            too_long = await _collect(engine, RequestSpec(id="long", max_output_tokens=1000,
                                                          prompt_token_ids=(10,) * 100))
            return sent, requests, streams, too_long

    sent, requests, streams, too_long = asyncio.run(run())
    for request, events in zip(requests, streams):
        *events, report = events  # the last event reports the prompt tokens shared from the prefix cache
        assert report.n_tokens == 0 and report.cached_prompt_tokens is not None and report.error is None, report
        assert all(e.error is None and e.n_tokens == 1 for e in events), events
        assert len(events) == request.max_output_tokens
        times = [e.t_ns for e in events]
        assert times == sorted(times) and times[0] >= sent
    assert len(too_long) == 1 and "exceeds the KV cache capacity" in too_long[0].error


@pytest.mark.slow
def test_cancelled_stream_frees_the_engine_and_exit_fails_inflight(harness_cache):
    adapter = TransformersAdapter()
    config = TransformersConfig(device="cpu", max_batch_size=1, stream_outputs=True)  # "b" runs once "a" has left the batch

    def long_request(rid: str) -> RequestSpec:
        return RequestSpec(id=rid, max_output_tokens=3000, prompt_token_ids=(5,) * 4)

    async def run():
        async with adapter.start(config) as engine:
            stream = engine.stream(long_request("a"))
            first = await anext(stream)
            await stream.aclose()  # the client gives up after one token
            short = RequestSpec(id="b", max_output_tokens=3, prompt_token_ids=(5,) * 4)
            after = await asyncio.wait_for(_collect(engine, short), timeout=20)
            inflight: list[StreamEvent] = []
            task = asyncio.create_task(_consume(engine, long_request("c"), inflight))
            while not inflight:
                await asyncio.sleep(0.01)
        await asyncio.wait_for(task, timeout=20)  # leaving the block ended the stream
        return first, after, inflight

    first, after, inflight = asyncio.run(run())
    assert first.n_tokens == 1
    assert [e.n_tokens for e in after] == [1, 1, 1, 0] and after[-1].cached_prompt_tokens == 0
    assert inflight[-1].error and len(inflight) < 3000  # leaving the engine fails what is still running


def test_fingerprint_describes_the_run(harness_cache):
    fp = TransformersAdapter().fingerprint(TransformersConfig(device="cpu"))
    assert fp["engine"] == "transformers-cb" and fp["simulated"] is False
    assert fp["model"]["name"] == "builtin:tiny-llama" and fp["model"]["parameters"] > 1_000_000
    assert fp["engine_version"] and fp["torch_version"] and fp["device"]


@pytest.mark.slow
def test_prefix_caching_reuses_shared_prefixes(harness_cache):
    """A shared-prefix workload, prefix caching on vs off: with it, a request whose 1,024-token prefix is
    cached prefills only its 32-token suffix (measured by hand: TTFT p95 39 ms vs 379 ms). The engine reports
    the prompt tokens it shared from the cache: the whole prefix (32 pages of 32) for every request after the
    first, none for the first; with caching off it reports nothing."""
    from harness.metrics import compute
    from harness.runner import run
    from workloads.shared_prefix import SharedPrefixWorkload

    workload = SharedPrefixWorkload(
        kind="shared_prefix", requests=12, groups=1, prefix_tokens={"dist": "fixed", "value": 1024},
        suffix_tokens={"dist": "fixed", "value": 32}, output_tokens={"dist": "fixed", "value": 4},
        arrival={"process": "closed", "concurrency": 1})

    async def ttft_p50(prefix_caching: bool) -> tuple[float, list]:
        config = TransformersConfig(device="cpu", max_batch_size=2, max_num_tokens=512, kv_cache_fraction=1.0,
                                    prefix_caching=prefix_caching)
        async with TransformersAdapter().start(config) as engine:
            tokenizer = engine.token_space.tokenizer  # the engine's own, for dataset workloads
            ids = tokenizer.encode_batch(["héllo", "x"])
            assert [len(i) for i in ids] == [6, 1] and tokenizer.decode(ids[0]) == "héllo"
            specs = list(workload.generate(engine.token_space))
            records, _ = await run(engine, specs, concurrency=1, warmup=2)
        assert all(r.ok for r in records)
        return compute(records)["distributions"]["ttft_ms"]["p50"], [r.cached_prompt_tokens for r in records]

    (cached, hits), (uncached, no_hits) = asyncio.run(ttft_p50(True)), asyncio.run(ttft_p50(False))
    assert cached < 0.5 * uncached, (cached, uncached)
    assert hits == [0] + [1024] * 11
    assert no_hits == [None] * 12

"""The contract every engine adapter must meet (engine_adapters/base.py), run against each one."""
import asyncio
import sys
import time

import pytest
from pydantic import ValidationError

from engine_adapters import Hardware, adapter_kinds, get_adapter
from engine_adapters.mock_server import MockServerConfig, run_mock_server
from workloads import RequestSpec

MOCK_SERVER_COMMAND = [sys.executable, "-m", "engine_adapters.mock_server", "--port", "{port}", "--model",
                       "{served_model}", "--ttft-ms", "1", "--itl-ms", "1"]
# Small, fast configs of each adapter on this CPU-only machine; `openai` drives the mock server.
CONFIGS = {
    "mock": {"step_ms": 1},
    "openai": {"model": "mock"},
    "transformers": {"model": "builtin:tiny-llama", "max_batch_size": 4, "max_num_tokens": 128},
    "tensorrt_llm": {"model": "org/tiny-llama", "max_batch_size": 4, "max_num_tokens": 128},  # on the fake
    # launchers, each starting its own mock server; not started, their fingerprint cannot tell it is simulated
    "server": {"model": "mock", "command": MOCK_SERVER_COMMAND, "api_key_env": None},
    "trtllm_serve": {"model": "mock", "command": MOCK_SERVER_COMMAND, "api_key_env": None},
}
# What each adapter is checked against (default: this CPU-only machine).
HARDWARE = {"tensorrt_llm": Hardware(gpu_count=1, gpu_names=("fake GPU",), gpu_memory_bytes=(80 * 2**30,),
                                     compute_capability=(9, 0))}
SIMULATED = {"mock", "openai"}
ADAPTERS = [pytest.param(k, marks=pytest.mark.slow) if k == "transformers" else k for k in CONFIGS]


@pytest.fixture(scope="module")
def mock_server_url():
    with run_mock_server(MockServerConfig(ttft_ms=1, itl_ms=1)) as url:
        yield url


def make_config(kind, request):
    """CONFIGS[kind] as the adapter's Config; for `openai`, pointed at the module's mock server; for
    `tensorrt_llm`, with the fake TensorRT-LLM importable; for launchers, logging into the test's tmp_path."""
    params = dict(CONFIGS[kind])
    if kind == "tensorrt_llm":
        request.getfixturevalue("fake_trtllm")
    if kind == "openai":
        params["base_url"] = request.getfixturevalue("mock_server_url")
    if kind in ("server", "trtllm_serve"):
        params["log_dir"] = str(request.getfixturevalue("tmp_path"))
    return get_adapter(kind).Config(**params)


def test_every_registered_adapter_is_covered():
    assert set(adapter_kinds()) == set(CONFIGS)


def requests(engine, n, prompt_len=12, out=(5, 3, 7, 1)):
    ids = sorted(set(range(engine.token_space.vocab_size)) - engine.token_space.reserved_ids)[:prompt_len]
    return [RequestSpec(id=f"c{i}", max_output_tokens=out[i % len(out)], prompt_token_ids=tuple(ids))
            for i in range(n)]


async def collect(engine, spec):
    events = [e async for e in engine.stream(spec)]
    return events


@pytest.mark.parametrize("kind", ADAPTERS)
def test_concurrent_streams_deliver_exactly_the_requested_tokens_in_time_order(kind, request):
    adapter = get_adapter(kind)
    config = make_config(kind, request)
    assert adapter.check(config, HARDWARE.get(kind, Hardware())) is None

    async def go():
        async with adapter.start(config) as engine:
            assert engine.token_space.vocab_size > 1
            specs = requests(engine, 6)
            t_before = time.perf_counter_ns()
            results = await asyncio.gather(*(collect(engine, s) for s in specs))
            return specs, results, t_before, time.perf_counter_ns()

    specs, results, t_before, t_after = asyncio.run(go())
    for spec, events in zip(specs, results):
        assert all(e.error is None for e in events), [e.error for e in events]
        assert sum(e.n_tokens for e in events) == spec.max_output_tokens
        times = [e.t_ns for e in events]
        assert times == sorted(times) and t_before <= times[0] and times[-1] <= t_after


@pytest.mark.parametrize("kind", ADAPTERS)
def test_engine_can_be_started_twice_in_one_process(kind, request):
    """Trials rebuild engines; leaving the context must free everything for the next start."""
    adapter = get_adapter(kind)
    config = make_config(kind, request)

    async def once():
        async with adapter.start(config) as engine:
            return await collect(engine, requests(engine, 1, out=(2,))[0])
    for _ in range(2):
        assert sum(e.n_tokens for e in asyncio.run(once())) == 2


@pytest.mark.parametrize("kind", list(CONFIGS))
def test_fingerprint_and_config_validation(kind, request):
    adapter = get_adapter(kind)
    config = make_config(kind, request)
    fp = adapter.fingerprint(config)
    assert {"engine", "engine_version", "model", "simulated"} <= set(fp)
    assert fp["simulated"] is (kind in SIMULATED)
    with pytest.raises(ValidationError):
        adapter.Config(**CONFIGS[kind], no_such_knob=1)
    for knob in ("max_batch_size", "max_num_tokens", "kv_cache_fraction"):
        assert knob in adapter.Config.model_fields

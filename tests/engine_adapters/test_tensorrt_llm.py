"""The tensorrt_llm adapter and trtllm_args against the fake TensorRT-LLM (tests/fakes/tensorrt_llm)."""
import ast
import asyncio
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine_adapters import Hardware, get_adapter
from engine_adapters.tensorrt_llm import (
    TensorRTLLMNotInstalled,
    engine_cache_key,
    model_identity,
)
from engine_adapters.trtllm_args import (
    QUANT_ALGOS,
    TrtllmKnobs,
    checkpoint_dir,
    checkpoint_quantization,
    llm_api_options,
    llm_kwargs,
    llm_snippet,
    parameter_count,
    required_sm,
    weight_bytes,
)
from harness import trial
from harness.runner import run
from harness.store import TrialFiles
from workloads import RequestSpec

ADAPTER = get_adapter("tensorrt_llm")
H100 = Hardware(gpu_count=2, gpu_names=("NVIDIA H100 80GB HBM3",) * 2, gpu_memory_bytes=(80 * 2**30,) * 2,
                compute_capability=(9, 0))
LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 8192, "tie_word_embeddings": False}
LLAMA_70B = dict(LLAMA_8B, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64)
TUNED = dict(tensor_parallel_size=2, pipeline_parallel_size=1, max_batch_size=64, max_num_tokens=4096,
             max_seq_len=4096, kv_cache_fraction=0.75, enable_block_reuse=False, enable_chunked_prefill=True,
             cuda_graphs=True, cuda_graph_max_batch_size=32, capacity_policy="MAX_UTILIZATION")


def checkpoint(tmp_path, arch=LLAMA_8B, name="ckpt", **files):
    path = tmp_path / name
    path.mkdir()
    (path / "config.json").write_text(json.dumps(arch))
    for file, data in files.items():
        (path / file).write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty local Hugging Face cache for this test; `add(repo, commit, **files)` puts a snapshot in it as
    huggingface_hub lays one out (refs/main -> snapshots/<commit>/)."""
    import huggingface_hub.constants

    root = tmp_path / "hf-hub"
    root.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(root))

    def add(repo, commit, arch=LLAMA_8B, **files):
        repo_dir = root / f"models--{repo.replace('/', '--')}"
        (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
        (repo_dir / "refs" / "main").write_text(commit)
        snapshot = repo_dir / "snapshots" / commit
        snapshot.mkdir(parents=True)
        (snapshot / "config.json").write_text(json.dumps(arch))
        for file, data in files.items():
            (snapshot / file).write_text(json.dumps(data))
        return snapshot

    return add


def spec(i=0, out=5, prompt=(10, 11, 12, 13)):
    return RequestSpec(id=f"r{i}", max_output_tokens=out, prompt_token_ids=tuple(prompt))


async def collect(engine, request):
    return [e async for e in engine.stream(request)]


async def stream_all(config, specs):
    async with ADAPTER.start(config) as engine:
        return await asyncio.gather(*(collect(engine, s) for s in specs))


def start_and_stream(config, specs):
    return asyncio.run(stream_all(config, specs))


# --- knobs -> LLM(...) kwargs, --extra_llm_api_options, code ---------------------------------------

def test_pytorch_knobs_map_to_exact_llm_kwargs(fake_trtllm):
    import tensorrt_llm
    from tensorrt_llm.llmapi import (
        CapacitySchedulerPolicy,
        CudaGraphConfig,
        KvCacheConfig,
        SchedulerConfig,
    )

    knobs = TrtllmKnobs(model="org/m", kv_cache_dtype="fp8", **TUNED)
    assert llm_kwargs(knobs, tensorrt_llm) == {
        "model": "org/m", "tensor_parallel_size": 2, "pipeline_parallel_size": 1, "max_batch_size": 64,
        "max_num_tokens": 4096, "max_seq_len": 4096,
        "kv_cache_config": KvCacheConfig(free_gpu_memory_fraction=0.75, enable_block_reuse=False, dtype="fp8"),
        "enable_chunked_prefill": True,
        "scheduler_config": SchedulerConfig(capacity_scheduler_policy=CapacitySchedulerPolicy.MAX_UTILIZATION),
        "cuda_graph_config": CudaGraphConfig(max_batch_size=32, enable_padding=True),
    }
    no_graphs = llm_kwargs(knobs.model_copy(update={"cuda_graphs": False, "max_seq_len": None}), tensorrt_llm)
    assert no_graphs["cuda_graph_config"] is None and "max_seq_len" not in no_graphs


def test_the_started_llm_gets_exactly_those_kwargs(fake_trtllm):
    import tensorrt_llm

    config = ADAPTER.Config(model="org/m", **dict(TUNED, tensor_parallel_size=1))
    start_and_stream(config, [spec()])
    (llm,) = fake_trtllm.llms
    assert llm.kwargs == llm_kwargs(config, tensorrt_llm) and llm.backend == "pytorch"


@pytest.mark.parametrize("quantization", sorted(QUANT_ALGOS))
def test_tensorrt_backend_quantization_becomes_quant_config(fake_trtllm, quantization):
    import tensorrt_llm
    from tensorrt_llm.llmapi import (
        ExtendedRuntimePerfKnobConfig,
        KvCacheConfig,
        QuantAlgo,
        QuantConfig,
    )

    knobs = TrtllmKnobs(model="org/m", backend="tensorrt", quantization=quantization, kv_cache_dtype="fp8", **TUNED)
    kwargs = llm_kwargs(knobs, tensorrt_llm)
    assert kwargs["quant_config"] == QuantConfig(quant_algo=QuantAlgo[QUANT_ALGOS[quantization]],
                                                 kv_cache_quant_algo=QuantAlgo.FP8)
    # the TensorRT backend takes no kv_cache_config.dtype and no cuda_graph_config
    assert kwargs["kv_cache_config"] == KvCacheConfig(free_gpu_memory_fraction=0.75, enable_block_reuse=False)
    assert kwargs["extended_runtime_perf_knob_config"] == ExtendedRuntimePerfKnobConfig(cuda_graph_mode=True,
                                                                                         cuda_graph_cache_size=1000)
    assert "cuda_graph_config" not in kwargs
    tensorrt_llm.llmapi.TrtLlmArgs(**kwargs)  # the real argument model accepts them


def test_tensorrt_backend_cuda_graphs_keep_trtllm_benchs_graph_cache(fake_trtllm):
    """cuda_graph_mode alone keeps no graph: ExtendedRuntimePerfKnobConfig.cuda_graph_cache_size defaults to 0;
    trtllm-bench pairs the mode with a cache of 1000 (PerformanceOptions), and so do we."""
    from tensorrt_llm.llmapi import ExtendedRuntimePerfKnobConfig

    assert ExtendedRuntimePerfKnobConfig(cuda_graph_mode=True).cuda_graph_cache_size == 0
    start_and_stream(ADAPTER.Config(model="org/m", backend="tensorrt", engine_cache=False), [spec()])
    perf = fake_trtllm.llms[0].args.extended_runtime_perf_knob_config
    assert (perf.cuda_graph_mode, perf.cuda_graph_cache_size) == (True, 1000)


def test_tensorrt_backend_keeps_trtllm_serves_dynamic_batch_tuning(fake_trtllm):
    """trtllm-serve builds SchedulerConfig(dynamic_batch_config=DynamicBatchConfig(True, False, 128)) and our
    scheduler_config replaces it whole: backend tensorrt carries the same, so measured == deployed. PyTorch: left
    out (it applies to the TensorRT backend only)."""
    import tensorrt_llm
    from tensorrt_llm.llmapi import DynamicBatchConfig

    trt = llm_kwargs(TrtllmKnobs(model="org/m", backend="tensorrt"), tensorrt_llm)["scheduler_config"]
    assert trt.dynamic_batch_config == DynamicBatchConfig(enable_batch_size_tuning=True,
                                                          enable_max_num_tokens_tuning=False,
                                                          dynamic_batch_moving_average_window=128)
    assert llm_kwargs(TrtllmKnobs(model="org/m"), tensorrt_llm)["scheduler_config"].dynamic_batch_config is None


def test_tensorrt_backend_without_quantization_has_no_quant_config(fake_trtllm):
    import tensorrt_llm

    kwargs = llm_kwargs(TrtllmKnobs(model="org/m", backend="tensorrt", cuda_graphs=False), tensorrt_llm)
    assert "quant_config" not in kwargs and "extended_runtime_perf_knob_config" not in kwargs


def test_pytorch_backend_passes_no_quant_config_and_checks_the_checkpoint(fake_trtllm, tmp_path):
    """PyTorch backend: quantization comes from a pre-quantized checkpoint, never from an argument
    (TorchLlmArgs.quant_config is a read-only property): `quantization` must match the checkpoint."""
    import tensorrt_llm

    plain = checkpoint(tmp_path)
    fp8 = checkpoint(tmp_path, name="fp8", **{"hf_quant_config.json": {"quantization": {"quant_algo": "FP8"}}})
    assert "quant_config" not in llm_kwargs(TrtllmKnobs(model=fp8, quantization="fp8"), tensorrt_llm)
    with pytest.raises(Exception, match="quant_config"):
        tensorrt_llm.LLM(model=fp8, quant_config=tensorrt_llm.llmapi.QuantConfig())
    assert checkpoint_quantization(plain) == "none" and checkpoint_quantization(fp8) == "fp8"
    assert ADAPTER.check(ADAPTER.Config(model=fp8, quantization="fp8"), H100) is None
    reason = ADAPTER.check(ADAPTER.Config(model=plain, quantization="fp8"), H100)
    assert "is none, not fp8" in reason and "pre-quantized" in reason
    assert "is fp8, not none" in ADAPTER.check(ADAPTER.Config(model=fp8), H100)  # no unlabelled fp8 either
    assert ADAPTER.check(ADAPTER.Config(model=plain, quantization="fp8", backend="tensorrt"), H100) is None


def test_pytorch_backend_rejects_a_quantization_it_cannot_verify(fake_trtllm, hub_cache, tmp_path):
    """A hub id not downloaded (or an unreadable config) cannot tell its quantization: anything but the default
    `none` would be a label nobody checked, so it is infeasible, saying how to make it checkable."""
    reason = ADAPTER.check(ADAPTER.Config(model="org/hub-model", quantization="fp8"), H100)
    assert "quantization fp8 cannot be verified" in reason
    assert "hf_quant_config.json" in reason and "quantization_config" in reason and "backend tensorrt" in reason
    assert ADAPTER.check(ADAPTER.Config(model="org/hub-model"), H100) is None
    broken = checkpoint(tmp_path, name="broken")
    (Path(broken) / "hf_quant_config.json").write_text("{not json")
    assert checkpoint_quantization(broken) is None
    assert "cannot be verified" in ADAPTER.check(ADAPTER.Config(model=broken, quantization="fp8"), H100)
    assert ADAPTER.check(ADAPTER.Config(model="org/hub-model", quantization="fp8", backend="tensorrt"), H100) is None


def test_a_downloaded_hub_model_is_read_from_the_local_hugging_face_cache(fake_trtllm, hub_cache):
    """Where TensorRT-LLM downloads a hub id (huggingface_hub's cache): its snapshot's quantization, size and
    commit are read there, so checks and the engine cache key know them."""
    assert checkpoint_dir("nvidia/m-fp8") is None
    snapshot = hub_cache("nvidia/m-fp8", "a" * 40, **{"hf_quant_config.json": {"quantization": {"quant_algo": "FP8"}}})
    assert checkpoint_dir("nvidia/m-fp8") == snapshot
    assert checkpoint_quantization("nvidia/m-fp8") == "fp8"
    assert ADAPTER.check(ADAPTER.Config(model="nvidia/m-fp8", quantization="fp8"), H100) is None
    assert "is fp8, not none" in ADAPTER.check(ADAPTER.Config(model="nvidia/m-fp8"), H100)
    assert weight_bytes("nvidia/m-fp8", "fp8") == parameter_count(LLAMA_8B)
    assert model_identity("nvidia/m-fp8") == {"hub_id": "nvidia/m-fp8", "commit": "a" * 40}
    assert model_identity("org/not-downloaded") == {"hub_id": "org/not-downloaded", "commit": None}
    config = ADAPTER.Config(model="nvidia/m-fp8", backend="tensorrt", quantization="fp8")
    before = engine_cache_key(config, "1.0.0")
    hub_cache("nvidia/m-fp8", "b" * 40)  # main moved to a new commit: a new engine
    assert engine_cache_key(config, "1.0.0") != before


@pytest.mark.parametrize("quant, expected", [
    ({"quant_method": "fp8", "weight_block_size": [128, 128]}, "fp8_block_scales"),
    ({"quant_method": "fp8"}, "fp8"),
    ({"quant_method": "awq", "bits": 4}, "int4_awq"),
    ({"quant_method": "modelopt", "quant_algo": "NVFP4"}, "nvfp4"),
    ({"quant_method": "bitsandbytes"}, None),
])
def test_checkpoint_quantization_reads_config_json(tmp_path, quant, expected):
    assert checkpoint_quantization(checkpoint(tmp_path, dict(LLAMA_8B, quantization_config=quant))) == expected
    assert checkpoint_quantization("org/hub-model") is None


@pytest.mark.parametrize("backend", ["pytorch", "tensorrt"])
def test_llm_api_options_are_the_yaml_trtllm_serve_takes(fake_trtllm, backend):
    from tensorrt_llm.llmapi import TorchLlmArgs, TrtLlmArgs

    knobs = TrtllmKnobs(model="org/m", backend=backend, quantization="fp8" if backend == "tensorrt" else "none",
                        **TUNED)
    options = llm_api_options(knobs)
    assert yaml.safe_load(yaml.safe_dump(options)) == options  # plain YAML: enums by name
    common = {"tensor_parallel_size": 2, "pipeline_parallel_size": 1, "max_batch_size": 64, "max_num_tokens": 4096,
              "max_seq_len": 4096, "enable_chunked_prefill": True,
              "scheduler_config": {"capacity_scheduler_policy": "MAX_UTILIZATION"}}
    kv = {"free_gpu_memory_fraction": 0.75, "enable_block_reuse": False}
    if backend == "pytorch":
        assert options == {**common, "kv_cache_config": {**kv, "dtype": "auto"},
                           "cuda_graph_config": {"enable_padding": True, "max_batch_size": 32}}
    else:
        scheduler = {"capacity_scheduler_policy": "MAX_UTILIZATION", "dynamic_batch_config": {
            "enable_batch_size_tuning": True, "enable_max_num_tokens_tuning": False,
            "dynamic_batch_moving_average_window": 128}}
        assert options == {**common, "scheduler_config": scheduler, "kv_cache_config": kv,
                           "quant_config": {"quant_algo": "FP8"},
                           "extended_runtime_perf_knob_config": {"cuda_graph_mode": True,
                                                                 "cuda_graph_cache_size": 1000}}
    (TorchLlmArgs if backend == "pytorch" else TrtLlmArgs)(model="org/m", **options)  # as trtllm-serve parses it


def test_extra_options_merge_last_key_by_key_and_are_validated(fake_trtllm):
    import tensorrt_llm

    knobs = TrtllmKnobs(model="org/m", extra_llm_api_options={
        "kv_cache_config": {"tokens_per_block": 64}, "max_batch_size": 7, "print_iter_log": True})
    kwargs = llm_kwargs(knobs, tensorrt_llm)
    assert kwargs["max_batch_size"] == 7 and kwargs["print_iter_log"] is True
    kv_cache = kwargs["kv_cache_config"]
    assert kv_cache.tokens_per_block == 64 and kv_cache.free_gpu_memory_fraction == 0.9
    bad = ADAPTER.Config(model="org/m", extra_llm_api_options={"no_such_option": 1})
    with pytest.raises(Exception, match="no_such_option"):
        start_and_stream(bad, [])


@pytest.mark.parametrize("backend", ["pytorch", "tensorrt"])
def test_snippet_is_python_that_builds_the_same_llm(fake_trtllm, backend):
    import tensorrt_llm

    knobs = TrtllmKnobs(model="org/m", backend=backend, kv_cache_dtype="fp8",
                        quantization="int4_awq" if backend == "tensorrt" else "none",
                        extra_llm_api_options={"kv_cache_config": {"tokens_per_block": 64}}, **TUNED)
    code = llm_snippet(knobs)
    tree = ast.parse(code)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "LLM")
    assert [k.arg for k in call.keywords] == list(llm_kwargs(knobs, tensorrt_llm))
    namespace = {}
    exec(compile(tree, "snippet", "exec"), namespace)
    llm = namespace["llm"]
    llm.shutdown()
    assert llm.kwargs == llm_kwargs(knobs, tensorrt_llm) and llm.backend == backend


def test_required_sm():
    assert required_sm("none", "auto") is None and required_sm("int4_awq", "auto") is None
    assert required_sm("fp8", "auto") == (8, 9) and required_sm("none", "fp8") == (8, 9)
    assert required_sm("nvfp4", "fp8") == (10, 0) and required_sm("fp8_block_scales", "auto") == (9, 0)


def test_weight_bytes_follow_parameters_and_quantization(tmp_path):
    path = checkpoint(tmp_path)
    params = parameter_count(LLAMA_8B)
    assert 7.9e9 < params < 8.1e9  # Llama 3.1 8B has 8.03 B parameters
    assert weight_bytes(path, "none") == 2 * params and weight_bytes(path, "fp8") == params
    assert weight_bytes(path, "nvfp4") == params // 2
    assert weight_bytes("org/hub-model", "none") is None
    mixtral_8x7b = dict(LLAMA_8B, num_local_experts=8, vocab_size=32000)
    assert 46.5e9 < parameter_count(mixtral_8x7b) < 46.9e9  # Mixtral 8x7B has 46.7 B


# --- check() ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("knobs, hardware, longest, reason", [
    (dict(tensor_parallel_size=2, pipeline_parallel_size=2), H100, None, "needs 4 CUDA GPUs; this machine has 2"),
    ({}, Hardware(), None, "needs 1 CUDA GPUs; this machine has 0"),
    (dict(quantization="fp8", backend="tensorrt"), Hardware(1, ("A100",), (80 * 2**30,), (8, 0)), None,
     "fp8 needs compute capability >= 8.9; this GPU has 8.0"),
    (dict(kv_cache_dtype="fp8"), Hardware(1, ("A100",), (80 * 2**30,), (8, 0)), None,
     "fp8 KV cache needs compute capability >= 8.9"),
    (dict(quantization="nvfp4", backend="tensorrt"), H100, None,
     "nvfp4 needs compute capability >= 10.0; this GPU has 9.0"),
    (dict(model="70b"), H100, None, "need about 131.4 GiB per GPU over 1 GPU(s); more than 90% of 80.0 GiB"),
    (dict(max_seq_len=2048), H100, 3000, "longest sequence (3000 tokens) exceeds max_seq_len (2048)"),
    ({}, H100, 9000, "exceeds the model's max_position_embeddings (8192)"),
])
def test_check_rejects_with_a_clear_reason(fake_trtllm, tmp_path, knobs, hardware, longest, reason):
    model = checkpoint(tmp_path, LLAMA_70B) if knobs.get("model") == "70b" else checkpoint(tmp_path)
    config = ADAPTER.Config(**{**knobs, "model": model})
    assert reason in ADAPTER.check(config, hardware, longest)


def test_check_passes_feasible_configs(fake_trtllm, tmp_path):
    big = ADAPTER.Config(model=checkpoint(tmp_path, LLAMA_70B), tensor_parallel_size=2)
    assert ADAPTER.check(big, H100, 8192) is None
    assert ADAPTER.check(ADAPTER.Config(model=checkpoint(tmp_path, name="8b"), quantization="fp8", backend="tensorrt",
                                        kv_cache_dtype="fp8"), H100, 4096) is None
    assert ADAPTER.check(ADAPTER.Config(model="org/hub-model"), H100, 100_000) is None  # nothing known to check


# --- prompt limits ---------------------------------------------------------------------------------

def test_check_rejects_a_prompt_longer_than_max_num_tokens_without_chunked_prefill(fake_trtllm):
    config = ADAPTER.Config(model="org/m", max_num_tokens=2048)
    reason = ADAPTER.check(config, H100, max_input_tokens=3000)
    assert "longest prompt (3000 tokens) exceeds max_num_tokens (2048) with chunked prefill off" in reason
    assert ADAPTER.check(config.model_copy(update={"backend": "tensorrt"}), H100, max_input_tokens=3000) == reason
    assert ADAPTER.check(config, H100, max_input_tokens=2048) is None
    chunked = config.model_copy(update={"enable_chunked_prefill": True})
    assert ADAPTER.check(chunked, H100, max_input_tokens=3000) is None
    overridden = config.model_copy(update={"extra_llm_api_options": {"max_num_tokens": 4096}})
    assert ADAPTER.check(overridden, H100, max_input_tokens=3000) is None
    assert ADAPTER.check(config, H100) is None  # the longest prompt unknown: nothing to check


@pytest.mark.parametrize("backend, error", [("pytorch", "should not exceed max_num_tokens (16)"),
                                            ("tensorrt", "exceeds maximum input length (16)")])
def test_the_fake_enforces_the_prompt_limit_as_tensorrt_llm_does(fake_trtllm, backend, error):
    """Without chunked prefill a 20-token prompt does not fit max_num_tokens 16: PyTorch rejects it at submission
    (BaseLLM._check_arguments), the TensorRT runtime fails it on its stream (max input length = min(max_seq_len - 1,
    max_num_tokens)); with chunked prefill it runs, up to max_seq_len - 1 on the TensorRT backend."""
    long = spec(out=3, prompt=range(10, 30))
    config = ADAPTER.Config(model="org/m", backend=backend, max_num_tokens=16, max_batch_size=4, engine_cache=False)
    (events,) = start_and_stream(config, [long])
    assert error in events[-1].error and sum(e.n_tokens for e in events) == 0
    chunked = config.model_copy(update={"enable_chunked_prefill": True})
    (events,) = start_and_stream(chunked, [long])
    assert [e.error for e in events if e.error] == [] and sum(e.n_tokens for e in events) == 3
    if backend == "tensorrt":
        (events,) = start_and_stream(chunked.model_copy(update={"max_seq_len": 20}), [long])
        assert "exceeds maximum input length (19)" in events[-1].error


# --- streaming -------------------------------------------------------------------------------------

def test_concurrent_streams_count_tokens_exactly_in_increasing_time(fake_trtllm):
    fake_trtllm.eos_after = 1  # the model would stop after one token: ignore_eos must keep it going
    specs = [spec(i, out) for i, out in enumerate((1, 3, 8, 5))] + [
        RequestSpec(id="text", max_output_tokens=4, prompt_text="hello")]
    results = start_and_stream(ADAPTER.Config(model="org/m", max_batch_size=2), specs)
    for s, events in zip(specs, results):
        assert [e.error for e in events if e.error] == []
        assert sum(e.n_tokens for e in events) == s.max_output_tokens
        times = [e.t_ns for e in events]
        assert times == sorted(times)


def test_engine_token_times_become_server_times(fake_trtllm):
    (events,) = start_and_stream(ADAPTER.Config(model="org/m"), [spec(out=4)])
    assert [e.server_t_ns is not None for e in events] == [True, False, False, True]
    assert all(e.server_t_ns <= e.t_ns for e in events if e.server_t_ns)
    assert events[0].server_t_ns < events[-1].server_t_ns
    # chunks of 3 tokens: the first chunk's time is not the first token's, the final chunk's is the last token's
    config = ADAPTER.Config(model="org/m", extra_llm_api_options={"stream_interval": 3})
    (events,) = start_and_stream(config, [spec(out=7)])
    assert [e.n_tokens for e in events] == [3, 3, 1]
    assert [e.server_t_ns is not None for e in events] == [False, False, True]


def test_init_error_is_raised_with_its_message(fake_trtllm):
    fake_trtllm.fail_init = "CUDA out of memory. Tried to allocate 2.00 GiB"
    with pytest.raises(RuntimeError, match="CUDA out of memory"):
        start_and_stream(ADAPTER.Config(model="org/m"), [spec()])


def test_hung_request_times_out_is_aborted_and_the_llm_shut_down(fake_trtllm):
    fake_trtllm.hang = True

    async def go():
        async with ADAPTER.start(ADAPTER.Config(model="org/m")) as engine:
            records, _ = await run(engine, [spec()], concurrency=1, request_timeout_s=0.2)
        return records

    (record,) = asyncio.run(go())
    assert record.error.startswith("timeout") and fake_trtllm.aborted
    assert fake_trtllm.llms[0].shutdown_calls == 1


def test_mid_stream_exception_becomes_an_error_event(fake_trtllm):
    fake_trtllm.raise_after = 2
    (events,) = start_and_stream(ADAPTER.Config(model="org/m"), [spec(out=5)])
    assert [e.n_tokens for e in events] == [1, 1, 0]
    assert "RequestError" in events[-1].error and "illegal memory access" in events[-1].error


def test_rejected_request_becomes_an_error_event(fake_trtllm):
    (events,) = start_and_stream(ADAPTER.Config(model="org/m", max_seq_len=8), [spec(out=5)])
    assert len(events) == 1 and "max_seq_len (8)" in events[0].error


def test_shutdown_on_error_in_the_body_and_on_cancel_during_build(fake_trtllm):
    async def body_fails():
        async with ADAPTER.start(ADAPTER.Config(model="org/m")):
            raise KeyError("boom")

    with pytest.raises(KeyError):
        asyncio.run(body_fails())
    assert fake_trtllm.llms[-1].shutdown_calls == 1

    fake_trtllm.init_s = 0.3

    async def cancelled_while_building():
        async def enter():
            async with ADAPTER.start(ADAPTER.Config(model="org/m")):
                pass
        task = asyncio.create_task(enter())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_while_building())
    assert len(fake_trtllm.llms) == 2 and fake_trtllm.llms[-1].shutdown_calls == 1


# --- engine cache ----------------------------------------------------------------------------------

def test_engine_cache_builds_once_per_build_config(fake_trtllm, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    model = checkpoint(tmp_path)
    base = ADAPTER.Config(model=model, backend="tensorrt", quantization="fp8", max_batch_size=8)
    start_and_stream(base, [spec()])
    assert len(fake_trtllm.builds) == 1 and len(fake_trtllm.saves) == 1
    engine_dir = tmp_path / "cache" / "trtllm-engines" / engine_cache_key(base, "1.0.0")
    assert (engine_dir / "rank0.engine").is_file() and not list(engine_dir.parent.glob(".*"))

    runtime_only = base.model_copy(update={"kv_cache_fraction": 0.5, "capacity_policy": "MAX_UTILIZATION",
                                           "enable_block_reuse": False, "cuda_graphs": False})
    start_and_stream(base, [spec()])
    start_and_stream(runtime_only, [spec()])
    assert len(fake_trtllm.builds) == 1 and fake_trtllm.loads == [str(engine_dir)] * 2
    loaded = fake_trtllm.llms[-1].kwargs
    assert loaded["model"] == str(engine_dir) and loaded["tokenizer"] == model and "quant_config" not in loaded
    assert loaded["kv_cache_config"].free_gpu_memory_fraction == 0.5

    start_and_stream(base.model_copy(update={"max_batch_size": 16}), [spec()])
    assert len(fake_trtllm.builds) == 2
    start_and_stream(base.model_copy(update={"engine_cache": False}), [spec()])
    assert len(fake_trtllm.builds) == 3 and len(fake_trtllm.saves) == 2
    assert all(llm.shutdown_calls == 1 for llm in fake_trtllm.llms)


def test_pytorch_backend_builds_and_caches_nothing(fake_trtllm, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    start_and_stream(ADAPTER.Config(model="org/m"), [spec()])
    assert fake_trtllm.builds == [] and fake_trtllm.saves == [] and not (tmp_path / "cache").exists()


# --- not installed, and through a trial ------------------------------------------------------------

needs_no_tensorrt_llm = pytest.mark.skipif(importlib.util.find_spec("tensorrt_llm") is not None,
                                           reason="a real tensorrt_llm is installed")


@needs_no_tensorrt_llm
def test_not_installed_start_raises_the_install_error_and_check_says_so():
    config = ADAPTER.Config(model="org/m")
    with pytest.raises(TensorRTLLMNotInstalled, match="TensorRT-LLM is not installed") as err:
        start_and_stream(config, [])
    message = str(err.value)  # TensorRT-LLM 1.x's own install routes: pip on Linux with CUDA, or NGC's container
    assert isinstance(err.value, ImportError)
    assert "apt-get -y install libopenmpi-dev && pip3 install tensorrt_llm" in message
    assert "nvcr.io/nvidia/tensorrt-llm/release:" in message and "trtllm_serve" in message
    assert "TensorRT-LLM is not installed" in ADAPTER.check(config, H100)


def experiment(tmp_path, dir_name="trial", **engine_params):
    """A trial directory holding a tiny tensorrt_llm experiment's config.yaml."""
    cfg = {"name": "trt", "engine": {"kind": "tensorrt_llm", "model": "org/m", "params": engine_params},
           "workload": {"kind": "synthetic", "requests": 6, "input_tokens": {"dist": "fixed", "value": 8},
                        "output_tokens": {"dist": "fixed", "value": 4},
                        "arrival": {"process": "closed", "concurrency": 2}}}
    path = tmp_path / dir_name
    path.mkdir()
    (path / TrialFiles.CONFIG).write_text(yaml.safe_dump(cfg))
    return path


@needs_no_tensorrt_llm
def test_cli_bench_without_tensorrt_llm_fails_with_the_install_message(tmp_path):
    path = experiment(tmp_path)
    proc = subprocess.run([sys.executable, "-m", "harness", "bench", str(path / TrialFiles.CONFIG)], cwd=tmp_path,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "TensorRT-LLM is not installed" in " ".join((proc.stdout + proc.stderr).split())


@needs_no_tensorrt_llm
def test_cli_tune_without_tensorrt_llm_stops_before_any_trial(tmp_path):
    path = experiment(tmp_path)
    cfg = yaml.safe_load((path / TrialFiles.CONFIG).read_text())
    cfg["search"] = {"space": "trtllm-default", "trials": 2, "objective": "maximize goodput_req_s"}
    (path / TrialFiles.CONFIG).write_text(yaml.safe_dump(cfg))
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", str(path / TrialFiles.CONFIG), "--run-dir",
                           str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "engine.kind tensorrt_llm: TensorRT-LLM is not installed" in " ".join((proc.stdout + proc.stderr).split())
    assert not (tmp_path / "run" / "trials").exists()


@pytest.fixture
def one_gpu(monkeypatch):
    monkeypatch.setattr(Hardware, "detect", classmethod(lambda cls: Hardware(1, ("Fake GPU",), (80 * 2**30,), (9, 0))))


def test_trial_runs_on_the_fake_and_records_an_init_failure(fake_trtllm, tmp_path, one_gpu):
    ok = experiment(tmp_path, "ok", max_batch_size=4)
    assert trial.main(str(ok)) == 0
    result = json.loads((ok / TrialFiles.RESULT).read_text())
    assert result["counts"]["completed"] == 6 and result["fingerprint"]["engine"]["engine"] == "tensorrt-llm"

    fake_trtllm.fail_init = "[TensorRT-LLM][ERROR] CUDA runtime error in cudaMalloc: out of memory"
    failed = experiment(tmp_path, "oom")
    assert trial.main(str(failed)) != 0
    failure = json.loads((failed / TrialFiles.FAILURE).read_text())
    assert failure["kind"] == "error" and "out of memory" in failure["reason"]


def test_reused_kv_blocks_become_cached_prompt_tokens(fake_trtllm):
    """kv_cache_metrics.num_reused_blocks x kv_cache_config.tokens_per_block (8 here), on the final event only; a
    prompt sharing 2 whole blocks with an earlier one reports 16; block reuse off, 0; TensorRT backend: no report."""
    first, shares_two_blocks = spec(0, 3, range(10, 30)), spec(1, 3, [*range(10, 26), 99, 98, 97])
    config = ADAPTER.Config(model="org/m", extra_llm_api_options={"kv_cache_config": {"tokens_per_block": 8}})

    async def in_turn(config):
        async with ADAPTER.start(config) as engine:
            return [await collect(engine, s) for s in (first, shares_two_blocks, first)]

    runs = asyncio.run(in_turn(config))
    assert [[e.cached_prompt_tokens for e in events] for events in runs] == [[None, None, 0], [None, None, 16],
                                                                            [None, None, 16]]
    assert fake_trtllm.llms[-1].kwargs["kv_cache_config"].tokens_per_block == 8
    off = config.model_copy(update={"enable_block_reuse": False})
    assert [events[-1].cached_prompt_tokens for events in asyncio.run(in_turn(off))] == [0, 0, 0]
    trt = config.model_copy(update={"backend": "tensorrt", "engine_cache": False})
    assert {e.cached_prompt_tokens for events in asyncio.run(in_turn(trt)) for e in events} == {None}

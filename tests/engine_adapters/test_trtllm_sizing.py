import json

import pytest

from engine_adapters.base import Hardware
from engine_adapters.trtllm_args import TrtllmKnobs, llm_api_options
from engine_adapters.trtllm_sizing import (
    GIB,
    bench_point,
    bench_point_unavailable_reason,
    kv_bytes_per_token,
    trtllm_bench_sizing,
)


def test_llama_8b_on_one_80gb_gpu_by_hand():
    """Llama-3-8B bf16 (8.03e9 params = 14.96 GiB of weights; 32 layers, 8 KV heads of 128), by hand:
    KV per token = 2 * 32 * 8 * 128 * 2 B = 131,072 B; free = 80 - 14.96 GiB = 65.04 GiB; cache * 0.95 =
    61.79 GiB -> 506,168 tokens -> / (1024 + 1024) = 247.2 sequences -> batch ceil(247.2/32)*32 = 256;
    tokens 247.2 * 2 = 494 -> max(2048, ...) = 2048."""
    kv = kv_bytes_per_token(layers=32, kv_heads=8, head_dim=128, tp=1, bytes_per_elem=2)
    assert kv == 131_072
    got = trtllm_bench_sizing(weight_bytes=8.03e9 * 2, kv_bytes_per_token=kv, gpu_memory_bytes=80 * GIB, pp=1,
                              input_tokens=1024, output_tokens=1024)
    assert got == {"max_batch_size": 256, "max_num_tokens": 2048}


@pytest.mark.parametrize("sequences, batch", [(10, 64), (250, 256), (300, 384), (1500, 1536), (9000, 4096)])
def test_batch_rounding_bands(sequences, batch):
    kv = 1000.0
    got = trtllm_bench_sizing(weight_bytes=0, kv_bytes_per_token=kv, gpu_memory_bytes=sequences * kv * 2 / 0.95,
                              pp=1, input_tokens=1, output_tokens=1)
    assert got["max_batch_size"] == batch


def test_token_budget_follows_prefill_share_and_caps():
    kv = 1000.0
    mem = 100 * kv * 1100 / 0.95  # 100 sequences of 1,000 + 100 tokens
    got = trtllm_bench_sizing(weight_bytes=0, kv_bytes_per_token=kv, gpu_memory_bytes=mem, pp=1,
                              input_tokens=1000, output_tokens=100)
    assert got == {"max_batch_size": 128, "max_num_tokens": 2048}  # 100 -> 128; 100 * 11 = 1,100 -> min 2,048
    big = trtllm_bench_sizing(weight_bytes=0, kv_bytes_per_token=1.0, gpu_memory_bytes=1e9, pp=1,
                              input_tokens=1000, output_tokens=10)
    assert big["max_num_tokens"] == 32768 and big["max_batch_size"] == 4096


def test_pipeline_stages_split_the_batch_and_no_room_is_none():
    kv = 1000.0
    one = trtllm_bench_sizing(weight_bytes=0, kv_bytes_per_token=kv, gpu_memory_bytes=2000 * kv * 2 / 0.95, pp=1,
                              input_tokens=1, output_tokens=1)
    two = trtllm_bench_sizing(weight_bytes=0, kv_bytes_per_token=kv, gpu_memory_bytes=2000 * kv * 2 / 0.95, pp=2,
                              input_tokens=1, output_tokens=1)
    assert (one["max_batch_size"], two["max_batch_size"]) == (2048, 1024)
    assert trtllm_bench_sizing(weight_bytes=80 * GIB, kv_bytes_per_token=kv, gpu_memory_bytes=80 * GIB, pp=1,
                               input_tokens=10, output_tokens=10) is None


def test_bench_point_for_the_builtin_model_on_one_gpu(tmp_path, monkeypatch):
    """builtin:tiny-llama: 4 layers, 2 KV heads of 64 -> 2,048 B of bf16 KV per token; on an 80 GiB GPU the
    cache holds millions of sequences: batch capped at 4,096, tokens 4,096 x (1 + 512 / 128) = 20,480."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    one_gpu = Hardware(gpu_count=1, gpu_memory_bytes=(80 * GIB,), compute_capability=(9, 0))
    knobs = TrtllmKnobs(model="builtin:tiny-llama")
    assert bench_point(knobs, one_gpu, 512, 128) == {"max_batch_size": 4096, "max_num_tokens": 20480}
    assert bench_point(knobs.model_copy(update={"tensor_parallel_size": 2}), one_gpu, 512, 128) is None


# --- fed as trtllm-bench feeds it (bench/benchmark/utils/general.py, bench/build/build.py) -----------------------

LLAMA_8B = {"architectures": ["LlamaForCausalLM"], "hidden_size": 4096, "intermediate_size": 14336,
            "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 128256,
            "max_position_embeddings": 8192, "tie_word_embeddings": False}
ONE_H100 = Hardware(gpu_count=1, gpu_memory_bytes=(80 * GIB,), compute_capability=(9, 0))


@pytest.fixture
def llama_8b(tmp_path):
    path = tmp_path / "llama-8b"
    path.mkdir()
    (path / "config.json").write_text(json.dumps(LLAMA_8B))
    return str(path)


def test_kv_fraction_is_the_runs_own_on_pytorch_and_builds_095_on_tensorrt(llama_8b):
    """Llama-3-8B bf16 on 80 GiB, 1,024 + 1,024 tokens (by hand as above: 65.04 GiB free, 131,072 B per token):
    kv_cache_fraction 0.5 -> 32.52 GiB -> 266,414 tokens -> 130.1 sequences -> batch 160. PyTorch sizes with the
    run's fraction (trtllm-bench throughput passes its --kv_cache_free_gpu_mem_fraction, default .90 -> 234.2 -> 256);
    `trtllm-bench build` (TensorRT engines) has no fraction option and sizes at 0.95 (247.2 -> 256)."""
    half = TrtllmKnobs(model=llama_8b, kv_cache_fraction=0.5, enable_chunked_prefill=True)
    assert bench_point(half, ONE_H100, 1024, 1024)["max_batch_size"] == 160
    default = half.model_copy(update={"kv_cache_fraction": 0.9})
    assert bench_point(default, ONE_H100, 1024, 1024)["max_batch_size"] == 256
    tensorrt = half.model_copy(update={"backend": "tensorrt"})
    assert bench_point(tensorrt, ONE_H100, 1024, 1024) == {"max_batch_size": 256, "max_num_tokens": 2048}


def test_cuda_graph_batch_follows_max_batch_size_on_pytorch(llama_8b):
    """trtllm-bench captures CUDA graphs up to the batch it sized; the knobs' default does the same for every
    trial, so the heuristic point needs no separate cuda_graph_max_batch_size."""
    knobs = TrtllmKnobs(model=llama_8b, enable_chunked_prefill=True)
    point = bench_point(knobs, ONE_H100, 1024, 1024)
    assert point == {"max_batch_size": 256, "max_num_tokens": 2048}
    options = llm_api_options(knobs.model_copy(update=point))
    assert options["cuda_graph_config"] == {"enable_padding": True, "max_batch_size": 256}
    assert llm_api_options(knobs.model_copy(update={**point, "cuda_graph_max_batch_size": 64}))[
        "cuda_graph_config"]["max_batch_size"] == 64


def test_without_chunked_prefill_the_longest_prompt_plus_the_batch_fits_the_token_budget(llama_8b):
    """general.py: `max_num_tokens = max(max_num_tokens, max_isl + max_batch_size)` when chunked prefill is off."""
    knobs = TrtllmKnobs(model=llama_8b, cuda_graphs=False)
    assert bench_point(knobs, ONE_H100, 1024, 1024, max_input_tokens=3000) == {"max_batch_size": 256,
                                                                               "max_num_tokens": 3256}
    assert bench_point(knobs, ONE_H100, 1024, 1024, max_input_tokens=1500)["max_num_tokens"] == 2048
    chunked = knobs.model_copy(update={"enable_chunked_prefill": True})
    assert bench_point(chunked, ONE_H100, 1024, 1024, max_input_tokens=3000)["max_num_tokens"] == 2048


def test_quantizations_trtllm_bench_does_not_size_get_buildconfigs_defaults(llama_8b):
    """build.py: quant_algo outside TUNED_QUANTS (NVFP4, FP8, FP8_BLOCK_SCALES, none) -> BuildConfig's 2048 / 8192,
    without looking at memory."""
    knobs = TrtllmKnobs(model=llama_8b, backend="tensorrt", quantization="int4_awq", enable_chunked_prefill=True)
    assert bench_point(knobs, Hardware(), 1024, 1024) == {"max_batch_size": 2048, "max_num_tokens": 8192}
    fp8 = knobs.model_copy(update={"quantization": "fp8"})
    # sized: 7.48 GiB of fp8 weights, (80 - 7.48) * 0.95 GiB / 131,072 B / 2,048 = 275.6 sequences -> 384
    assert bench_point(fp8, ONE_H100, 1024, 1024)["max_batch_size"] == 384


def test_why_there_is_no_point(llama_8b, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    hub = TrtllmKnobs(model="meta-llama/Llama-3.1-8B")
    assert bench_point(hub, ONE_H100, 512, 128) is None
    assert "the model's size is unknown" in bench_point_unavailable_reason(hub, ONE_H100, 512, 128)
    assert "hub id not in the local Hugging Face cache" in bench_point_unavailable_reason(hub, ONE_H100, 512, 128)
    knobs = TrtllmKnobs(model=llama_8b)
    assert "= 2 GPU(s), but the memory of 1 is known here" in bench_point_unavailable_reason(
        knobs.model_copy(update={"tensor_parallel_size": 2}), ONE_H100, 512, 128)
    assert "memory of 0 is known" in bench_point_unavailable_reason(knobs, Hardware(), 512, 128)
    small = Hardware(gpu_count=1, gpu_memory_bytes=(15 * GIB,))
    assert "leave no KV cache room for one sequence of 2048 tokens" in bench_point_unavailable_reason(
        knobs, small, 1024, 1024)
    assert bench_point_unavailable_reason(knobs, ONE_H100, 512, 128) is None

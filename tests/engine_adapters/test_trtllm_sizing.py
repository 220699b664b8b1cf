import pytest

from engine_adapters.trtllm_sizing import GIB, kv_bytes_per_token, trtllm_bench_sizing


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
    from engine_adapters.base import Hardware
    from engine_adapters.trtllm_args import TrtllmKnobs
    from engine_adapters.trtllm_sizing import bench_point

    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    one_gpu = Hardware(gpu_count=1, gpu_memory_bytes=(80 * GIB,), compute_capability=(9, 0))
    knobs = TrtllmKnobs(model="builtin:tiny-llama")
    assert bench_point(knobs, one_gpu, 512, 128) == {"max_batch_size": 4096, "max_num_tokens": 20480}
    assert bench_point(knobs.model_copy(update={"tensor_parallel_size": 2}), one_gpu, 512, 128) is None
    assert bench_point(TrtllmKnobs(model="meta-llama/Llama-3.1-8B"), one_gpu, 512, 128) is None  # hub id: size unknown

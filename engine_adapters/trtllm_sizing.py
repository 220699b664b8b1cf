"""trtllm-bench's sizing rule for max_batch_size and max_num_tokens, as the tuner's first trial.

trtllm-bench (`tensorrt_llm/bench/build/tuning.py`, `calc_engine_setting` and `finetune_setting`)
sizes an engine from the GPU memory left after the weights: the KV cache gets a fraction of it, the
batch is as many sequences of mean length (input + output) as that cache holds, and the token budget
is that batch's share of prefill work (batch x (1 + input / output)); both are capped (4,096
sequences split over pipeline stages, 32,768 tokens) and rounded up "optimistically" (batch at least
64, tokens at least 2,048, both to coarse multiples), relying on TensorRT-LLM's runtime to admit
fewer when memory runs short. This module reproduces that rule as a pure function.
"""
from __future__ import annotations

import math

GIB = 1024**3


def _round_batch(raw: float) -> int:
    if raw < 256:
        return max(64, 32 * math.ceil(raw / 32))
    return (128 if raw < 1024 else 256) * math.ceil(raw / (128 if raw < 1024 else 256))


def _round_tokens(raw: float) -> int:
    if raw < 4096:
        return max(2048, 256 * math.ceil(raw / 256))
    return (512 if raw < 8192 else 1024) * math.ceil(raw / (512 if raw < 8192 else 1024))


def kv_bytes_per_token(layers: int, kv_heads: int, head_dim: int, tp: int, bytes_per_elem: float) -> float:
    """K and V of one token over all layers; every tensor-parallel rank holds at least one KV head."""
    return 2 * layers * max(tp, kv_heads) * head_dim * bytes_per_elem


def trtllm_bench_sizing(*, weight_bytes: float, kv_bytes_per_token: float, gpu_memory_bytes: float, pp: int,
                        input_tokens: float, output_tokens: float, kv_fraction: float = 0.95) -> dict | None:
    """{"max_batch_size", "max_num_tokens"} by trtllm-bench's rule, or None when the weights leave no
    room for even one sequence. `gpu_memory_bytes` is the total over the tp * pp GPUs used."""
    cache = (gpu_memory_bytes - weight_bytes) * kv_fraction
    sequences = cache / (kv_bytes_per_token * (input_tokens + output_tokens))
    if sequences < 1:
        return None
    batch = min(sequences, 4096) / pp
    tokens = min(batch * (1 + input_tokens / output_tokens), 32768)
    return {"max_batch_size": _round_batch(batch), "max_num_tokens": _round_tokens(tokens)}

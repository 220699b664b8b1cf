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

from engine_adapters.base import Hardware
from engine_adapters.builtin_models import model_config
from engine_adapters.trtllm_args import TrtllmKnobs, weight_bytes

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


def bench_point(knobs: TrtllmKnobs, hardware: Hardware, input_tokens: float, output_tokens: float) -> dict | None:
    """trtllm-bench's max_batch_size / max_num_tokens for `knobs`' model, quantization and tp x pp on
    `hardware`; None when the model's size is unknown (a hub id) or the GPUs are not there."""
    gpus = knobs.tensor_parallel_size * knobs.pipeline_parallel_size
    weights = weight_bytes(knobs.model, knobs.quantization)
    if weights is None or len(hardware.gpu_memory_bytes) < gpus:
        return None
    arch = model_config(knobs.model)
    text = arch.get("text_config") or arch
    heads = text["num_attention_heads"]
    kv = kv_bytes_per_token(layers=text["num_hidden_layers"], kv_heads=text.get("num_key_value_heads") or heads,
                            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
                            tp=knobs.tensor_parallel_size, bytes_per_elem=1 if knobs.kv_cache_dtype == "fp8" else 2)
    return trtllm_bench_sizing(weight_bytes=weights, kv_bytes_per_token=kv,
                               gpu_memory_bytes=sum(hardware.gpu_memory_bytes[:gpus]), pp=knobs.pipeline_parallel_size,
                               input_tokens=input_tokens, output_tokens=output_tokens)

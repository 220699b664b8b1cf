"""trtllm-bench's sizing rule for max_batch_size and max_num_tokens, as the tuner's first trial.

trtllm-bench (`tensorrt_llm/bench/build/tuning.py`, `calc_engine_setting` and `finetune_setting`)
sizes an engine from the GPU memory left after the weights: the KV cache gets a fraction of it, the
batch is as many sequences of mean length (input + output) as that cache holds, and the token budget
is that batch's share of prefill work (batch x (1 + input / output)); both are capped (4,096
sequences split over pipeline stages, 32,768 tokens) and rounded up "optimistically" (batch at least
64, tokens at least 2,048, both to coarse multiples), relying on TensorRT-LLM's runtime to admit
fewer when memory runs short. This module reproduces that rule as a pure function, fed as
trtllm-bench feeds it (`bench/benchmark/utils/general.py` get_settings for the PyTorch backend,
`bench/build/build.py` for TensorRT engines):
- KV cache fraction: PyTorch: the run's own, here `kv_cache_fraction` (get_settings passes
  `params.get("kv_cache_free_gpu_mem_fraction")`, trtllm-bench throughput's option, default .90);
  TensorRT: `trtllm-bench build` has no such option and sizes at calc_engine_setting's default 0.95.
- a quantization outside build.py's TUNED_QUANTS (none, fp8, fp8_block_scales, nvfp4) gets
  BuildConfig's defaults instead, 2,048 sequences and 8,192 tokens (get_benchmark_engine_settings).
- chunked prefill off: `max_num_tokens = max(max_num_tokens, max_isl + max_batch_size)`, so that the
  longest prompt fits one iteration (get_settings; applied on both backends here, since the TensorRT
  runtime rejects such prompts too, see trtllm_args.prompt_problem).
- PyTorch with CUDA graphs: `cuda_graph_config.max_batch_size = max_batch_size` (get_settings): the
  knobs' default (trtllm_args), so not part of the point.
"""
from __future__ import annotations

import math

from engine_adapters.base import Hardware
from engine_adapters.trtllm_args import (
    WEIGHT_BYTES,
    TrtllmKnobs,
    hub_revision,
    llm_api_options,
    model_arch,
    parameter_count,
)

GIB = 1024**3
#: trtllm-bench build's KV cache fraction for TensorRT engines (calc_engine_setting's default)
BUILD_KV_FRACTION = 0.95
#: the quantizations trtllm-bench sizes (build.py TUNED_QUANTS); others get UNTUNED_POINT
TUNED_QUANTS = ("none", "fp8", "fp8_block_scales", "nvfp4")
#: BuildConfig.max_batch_size / max_num_tokens: build.py's DEFAULT_MAX_BATCH_SIZE / DEFAULT_MAX_NUM_TOKENS
UNTUNED_POINT = {"max_batch_size": 2048, "max_num_tokens": 8192}


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
                        input_tokens: float, output_tokens: float,
                        kv_fraction: float = BUILD_KV_FRACTION) -> dict | None:
    """{"max_batch_size", "max_num_tokens"} by trtllm-bench's rule, or None when the weights leave no
    room for even one sequence. `gpu_memory_bytes` is the total over the tp * pp GPUs used."""
    cache = (gpu_memory_bytes - weight_bytes) * kv_fraction
    sequences = cache / (kv_bytes_per_token * (input_tokens + output_tokens))
    if sequences < 1:
        return None
    batch = min(sequences, 4096) / pp
    tokens = min(batch * (1 + input_tokens / output_tokens), 32768)
    return {"max_batch_size": _round_batch(batch), "max_num_tokens": _round_tokens(tokens)}


def _sizing(knobs: TrtllmKnobs, hardware: Hardware, input_tokens: float, output_tokens: float,
            max_input_tokens: int | None) -> dict | str:
    """trtllm-bench's point for `knobs` on `hardware` (see module docstring), or why it cannot be computed here."""
    if knobs.quantization in TUNED_QUANTS:
        point = _tuned(knobs, hardware, input_tokens, output_tokens)
        if isinstance(point, str):
            return point
    else:
        point = dict(UNTUNED_POINT)
    if not llm_api_options(knobs)["enable_chunked_prefill"] and max_input_tokens:
        point["max_num_tokens"] = max(point["max_num_tokens"], max_input_tokens + point["max_batch_size"])
    return point


def _tuned(knobs: TrtllmKnobs, hardware: Hardware, input_tokens: float, output_tokens: float) -> dict | str:
    gpus = knobs.tensor_parallel_size * knobs.pipeline_parallel_size
    if len(hardware.gpu_memory_bytes) < gpus:
        return (f"tensor_parallel_size x pipeline_parallel_size = {gpus} GPU(s), but the memory of "
                f"{len(hardware.gpu_memory_bytes)} is known here (NVML)")
    try:
        arch = model_arch(knobs.model, hub_revision(knobs))
    except (ValueError, OSError) as e:
        return f"{knobs.model}: cannot read its config.json ({e})"
    if arch is None:
        return (f"{knobs.model}: the model's size is unknown (no checkpoint on this machine: a hub id not in the local "
                "Hugging Face cache); point model at a local checkpoint directory, or download it first")
    params = parameter_count(arch)
    if params is None:
        return f"{knobs.model}: its config.json lacks the keys to count its parameters"
    text = arch.get("text_config") or arch
    heads = text["num_attention_heads"]
    kv = kv_bytes_per_token(layers=text["num_hidden_layers"], kv_heads=text.get("num_key_value_heads") or heads,
                            head_dim=text.get("head_dim") or text["hidden_size"] // heads,
                            tp=knobs.tensor_parallel_size, bytes_per_elem=1 if knobs.kv_cache_dtype == "fp8" else 2)
    fraction = knobs.kv_cache_fraction if knobs.backend == "pytorch" else BUILD_KV_FRACTION
    point = trtllm_bench_sizing(weight_bytes=params * WEIGHT_BYTES[knobs.quantization], kv_bytes_per_token=kv,
                                gpu_memory_bytes=sum(hardware.gpu_memory_bytes[:gpus]), pp=knobs.pipeline_parallel_size,
                                input_tokens=input_tokens, output_tokens=output_tokens, kv_fraction=fraction)
    return point or (f"{knobs.model}'s weights leave no KV cache room for one sequence of "
                     f"{input_tokens + output_tokens:g} tokens on {gpus} GPU(s)")


def bench_point(knobs: TrtllmKnobs, hardware: Hardware, input_tokens: float, output_tokens: float,
                max_input_tokens: int | None = None) -> dict | None:
    """trtllm-bench's max_batch_size / max_num_tokens for
    `knobs`' model, quantization and tp x pp on `hardware`, under requests of these mean lengths and at most
    `max_input_tokens` prompt tokens; None when it cannot be computed here (`bench_point_unavailable_reason`)."""
    point = _sizing(knobs, hardware, input_tokens, output_tokens, max_input_tokens)
    return point if isinstance(point, dict) else None


def bench_point_unavailable_reason(knobs: TrtllmKnobs, hardware: Hardware, input_tokens: float,
                                   output_tokens: float) -> str | None:
    """Why `bench_point` returns None for these arguments (e.g. a hub id not downloaded, no GPU memory known)."""
    point = _sizing(knobs, hardware, input_tokens, output_tokens, None)
    return point if isinstance(point, str) else None

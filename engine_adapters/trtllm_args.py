"""TensorRT-LLM knobs and the three forms they take: `LLM(...)` kwargs, `--extra_llm_api_options` YAML, code.

`TrtllmKnobs` is what the tuner varies and users set; `llm_api_options` turns it into the LlmArgs
dict that `trtllm-serve --extra_llm_api_options FILE.yaml` accepts (nested dicts, enums as their
names), `llm_kwargs` into the real config objects for `LLM(...)`, `llm_snippet` into the equivalent
Python code. All three come from one dict, so they cannot disagree. Nothing here imports
tensorrt_llm: `llm_kwargs` takes the imported module.

Built against the TensorRT-LLM 1.x LLM API (NVIDIA/TensorRT-LLM, read at main fcd3f316 / 00043967
and a 1.1-era llm_args.py; the names below are the same in 1.0 through main):
- tensorrt_llm/llmapi/llm_args.py: BaseLlmArgs (tensor_parallel_size, pipeline_parallel_size,
  max_batch_size=2048, max_num_tokens=8192, max_seq_len=None, kv_cache_config, enable_chunked_prefill,
  scheduler_config), KvCacheConfig (free_gpu_memory_fraction=0.9, enable_block_reuse=True,
  dtype="auto" -- PyTorch backend only), CudaGraphConfig (batch_sizes, max_batch_size: 0 means 128,
  enable_padding), SchedulerConfig(capacity_scheduler_policy=CapacitySchedulerPolicy.X),
  TorchLlmArgs.cuda_graph_config (default on; None turns CUDA graphs off), TorchLlmArgs.quant_config
  (a read-only property, not an argument), TrtLlmArgs.quant_config, TrtLlmArgs.
  extended_runtime_perf_knob_config (ExtendedRuntimePerfKnobConfig.cuda_graph_mode), and TrtLlmArgs'
  validator that kv_cache_config.dtype is "auto" (the TensorRT backend quantizes the KV cache through
  QuantConfig.kv_cache_quant_algo instead).
- tensorrt_llm/quantization/mode.py: QuantAlgo (FP8, FP8_BLOCK_SCALES, NVFP4, W4A16_AWQ, W4A8_AWQ,
  W8A8_SQ_PER_CHANNEL, W8A16, W4A16, ...); tensorrt_llm/models/modeling_utils.py: QuantConfig
  (quant_algo, kv_cache_quant_algo); both re-exported by tensorrt_llm/llmapi/__init__.py.
- tensorrt_llm/_tensorrt_engine/__init__.py: `LLM` = llmapi.llm._TrtLLM, the TensorRT-engine backend;
  `tensorrt_llm.LLM` is the PyTorch backend.

Quantization by backend:
- pytorch: there is no quantization argument. The checkpoint decides: a pre-quantized checkpoint
  (NVIDIA ModelOpt `hf_quant_config.json`, or a `quantization_config` in config.json) runs quantized,
  any other runs in its own dtype. `quantization` therefore declares what the checkpoint must be;
  `checkpoint_quantization` reads it so a feasibility check can compare. `kv_cache_dtype: fp8` ->
  `kv_cache_config.dtype: fp8` works on any checkpoint.
- tensorrt: `quantization` -> `QuantConfig(quant_algo=...)`, applied while building the engine
  (ModelOpt calibration for fp8 / int4_awq / w4a8_awq / w8a8_sq / nvfp4, which by default downloads a
  calibration dataset); `kv_cache_dtype: fp8` -> `QuantConfig(kv_cache_quant_algo=FP8)`.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType
from typing import Any, Literal

from pydantic import Field

from engine_adapters.base import EngineConfig
from engine_adapters.builtin_models import BUILTIN_PREFIX, model_config

Quantization = Literal["none", "fp8", "fp8_block_scales", "nvfp4", "int4_awq", "w4a8_awq", "w8a8_sq",
                       "int8_wo", "int4_wo"]

#: quantization -> QuantAlgo member name
QUANT_ALGOS: dict[str, str] = {
    "fp8": "FP8",                         # FP8 weights and activations, per-tensor scales
    "fp8_block_scales": "FP8_BLOCK_SCALES",  # FP8 with 128x128 block scales (DeepSeek-style checkpoints)
    "nvfp4": "NVFP4",                     # 4-bit float weights and activations (Blackwell)
    "int4_awq": "W4A16_AWQ",              # INT4 weights (AWQ), 16-bit activations
    "w4a8_awq": "W4A8_AWQ",               # INT4 weights (AWQ), FP8 activations
    "w8a8_sq": "W8A8_SQ_PER_CHANNEL",     # INT8 SmoothQuant weights and activations
    "int8_wo": "W8A16",                   # INT8 weight-only
    "int4_wo": "W4A16",                   # INT4 weight-only
}

#: bytes per parameter of the weights; "none" assumes a 16-bit checkpoint
WEIGHT_BYTES: dict[str, float] = {"none": 2, "fp8": 1, "fp8_block_scales": 1, "nvfp4": 0.5, "int4_awq": 0.5,
                                  "w4a8_awq": 0.5, "w8a8_sq": 1, "int8_wo": 1, "int4_wo": 0.5}

#: minimum compute capability: FP8 tensor cores arrive with Ada (8.9), FP8 block-scale GEMMs with Hopper
#: (9.0), FP4 with Blackwell (10.0); the integer formats run on every GPU TensorRT-LLM supports.
_MIN_SM: dict[str, tuple[int, int]] = {"fp8": (8, 9), "fp8_block_scales": (9, 0), "nvfp4": (10, 0),
                                       "w4a8_awq": (8, 9)}

#: keys whose nested dict is a config object in `LLM(...)`: key -> llmapi class name
_CONFIG_CLASSES = {"kv_cache_config": "KvCacheConfig", "cuda_graph_config": "CudaGraphConfig",
                   "scheduler_config": "SchedulerConfig", "quant_config": "QuantConfig",
                   "extended_runtime_perf_knob_config": "ExtendedRuntimePerfKnobConfig"}
#: (config key, field) -> llmapi enum class name: YAML spells these as the member's name
_ENUM_FIELDS = {("scheduler_config", "capacity_scheduler_policy"): "CapacitySchedulerPolicy",
                ("quant_config", "quant_algo"): "QuantAlgo",
                ("quant_config", "kv_cache_quant_algo"): "QuantAlgo"}


class TrtllmKnobs(EngineConfig):
    """TensorRT-LLM engine settings; defaults are TensorRT-LLM's own, so an unset knob changes nothing."""

    model: str = Field(description="Hugging Face model id, local Hugging Face checkpoint directory, or builtin:NAME")
    backend: Literal["pytorch", "tensorrt"] = Field(
        "pytorch", description="pytorch: tensorrt_llm.LLM; tensorrt: a built TensorRT engine "
                               "(tensorrt_llm._tensorrt_engine.LLM, where the installed version has it)")
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    max_batch_size: int = Field(2048, ge=1, description="most requests scheduled in one iteration")
    max_num_tokens: int = Field(8192, ge=1, description="most tokens (prefill + decode) in one iteration")
    max_seq_len: int | None = Field(None, ge=1, description="prompt + output limit; None: the model's own")
    kv_cache_fraction: float = Field(0.9, gt=0, le=1, description="-> kv_cache_config.free_gpu_memory_fraction")
    enable_block_reuse: bool = Field(True, description="-> kv_cache_config.enable_block_reuse (prefix caching)")
    kv_cache_dtype: Literal["auto", "fp8"] = Field(
        "auto", description="pytorch: kv_cache_config.dtype; tensorrt: quant_config.kv_cache_quant_algo")
    enable_chunked_prefill: bool = False
    cuda_graphs: bool = Field(True, description="pytorch: cuda_graph_config with enable_padding (None when off); "
                                                "tensorrt: extended_runtime_perf_knob_config.cuda_graph_mode")
    cuda_graph_max_batch_size: int | None = Field(
        None, ge=1, description="pytorch: largest batch captured in a CUDA graph; None: TensorRT-LLM's default (128)")
    capacity_policy: Literal["GUARANTEED_NO_EVICT", "MAX_UTILIZATION", "STATIC_BATCH"] = Field(
        "GUARANTEED_NO_EVICT", description="-> scheduler_config.capacity_scheduler_policy")
    quantization: Quantization = Field(
        "none", description="tensorrt: QuantConfig.quant_algo; pytorch: what the (pre-quantized) checkpoint must be")
    extra_llm_api_options: dict[str, Any] = Field(
        default_factory=dict, description="any other LlmArgs, merged last (nested dicts merge key by key)")


def llm_api_options(knobs: TrtllmKnobs) -> dict[str, Any]:
    """The LlmArgs dict for `trtllm-serve --extra_llm_api_options` (YAML-able: plain values, enums by name).

    `model` and `backend` are not in it: trtllm-serve takes them as its positional argument and `--backend`.
    """
    kv_cache: dict[str, Any] = {"free_gpu_memory_fraction": knobs.kv_cache_fraction,
                                "enable_block_reuse": knobs.enable_block_reuse}
    options: dict[str, Any] = {
        "tensor_parallel_size": knobs.tensor_parallel_size,
        "pipeline_parallel_size": knobs.pipeline_parallel_size,
        "max_batch_size": knobs.max_batch_size,
        "max_num_tokens": knobs.max_num_tokens,
        **({"max_seq_len": knobs.max_seq_len} if knobs.max_seq_len is not None else {}),
        "kv_cache_config": kv_cache,
        "enable_chunked_prefill": knobs.enable_chunked_prefill,
        "scheduler_config": {"capacity_scheduler_policy": knobs.capacity_policy},
    }
    if knobs.backend == "pytorch":
        kv_cache["dtype"] = knobs.kv_cache_dtype
        graphs = {"enable_padding": True}
        if knobs.cuda_graph_max_batch_size is not None:
            graphs["max_batch_size"] = knobs.cuda_graph_max_batch_size
        options["cuda_graph_config"] = graphs if knobs.cuda_graphs else None
    else:
        quant = {}
        if knobs.quantization != "none":
            quant["quant_algo"] = QUANT_ALGOS[knobs.quantization]
        if knobs.kv_cache_dtype == "fp8":
            quant["kv_cache_quant_algo"] = "FP8"
        if quant:
            options["quant_config"] = quant
        if knobs.cuda_graphs:
            options["extended_runtime_perf_knob_config"] = {"cuda_graph_mode": True}
    return _merge(options, knobs.extra_llm_api_options)


def llm_kwargs(knobs: TrtllmKnobs, tllm: ModuleType, model: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `LLM(...)`: `llm_api_options` with nested dicts built into `tllm.llmapi`'s
    config objects and enum names into members. `model` replaces `knobs.model` (a resolved path)."""
    return {"model": model or knobs.model,
            **{key: _build(key, value, lambda name: getattr(tllm.llmapi, name))
               for key, value in llm_api_options(knobs).items()}}


def llm_snippet(knobs: TrtllmKnobs) -> str:
    """Python code building the same `LLM` (for reports): imports, then `llm = LLM(...)`."""
    used: set[str] = set()

    def ref(name: str) -> str:
        used.add(name)
        return _Code(name)

    args = {"model": knobs.model, **{k: _build(k, v, ref) for k, v in llm_api_options(knobs).items()}}
    body = "".join(f"    {key}={_code(value)},\n" for key, value in args.items())
    llm_module = "tensorrt_llm" if knobs.backend == "pytorch" else "tensorrt_llm._tensorrt_engine"
    imports = f"from {llm_module} import LLM\n"
    if used:
        imports += f"from tensorrt_llm.llmapi import {', '.join(sorted(used))}\n"
    return f"{imports}\nllm = LLM(\n{body})\n"


def required_sm(quantization: str, kv_cache_dtype: str) -> tuple[int, int] | None:
    """Least compute capability that runs `quantization` with a `kv_cache_dtype` KV cache; None: any."""
    needs = [sm for sm in (_MIN_SM.get(quantization), _MIN_SM["fp8"] if kv_cache_dtype == "fp8" else None) if sm]
    return max(needs, default=None)


def compute_capability_problem(knobs: TrtllmKnobs, capability: tuple[int, int] | None) -> str | None:
    """Why a GPU of `capability` cannot run `knobs`' quantization / KV-cache dtype, or None (also when unknown)."""
    sm = required_sm(knobs.quantization, knobs.kv_cache_dtype)
    if not sm or not capability or capability >= sm:
        return None
    what = [] if knobs.quantization == "none" else [knobs.quantization]
    if knobs.kv_cache_dtype == "fp8":
        what.append("fp8 KV cache")
    return (f"{' + '.join(what)} needs compute capability >= {sm[0]}.{sm[1]}; "
            f"this GPU has {capability[0]}.{capability[1]}")


def checkpoint_quantization(model: str) -> str | None:
    """How the local checkpoint `model` is quantized, as a `Quantization` value ("none" when it is not);
    None when that cannot be told (a hub id, an unknown scheme, a builtin model is "none")."""
    if model.startswith(BUILTIN_PREFIX):
        return "none"
    path = Path(model).expanduser()
    if not (path / "config.json").is_file():
        return None
    names = {algo: name for name, algo in QUANT_ALGOS.items()}
    modelopt = path / "hf_quant_config.json"
    if modelopt.is_file():
        algo = json.loads(modelopt.read_text()).get("quantization", {}).get("quant_algo")
        return names.get(algo) if algo else "none"  # none: only the KV cache is quantized
    quant = json.loads((path / "config.json").read_text()).get("quantization_config")
    if not quant:
        return "none"
    if quant.get("quant_algo"):
        return names.get(quant["quant_algo"])
    method = quant.get("quant_method")
    if method == "fp8":
        return "fp8_block_scales" if quant.get("weight_block_size") else "fp8"
    if method == "awq" and quant.get("bits") == 4:
        return "int4_awq"
    return None


def weight_bytes(model: str, quantization: str) -> int | None:
    """Estimated bytes of `model`'s weights stored as `quantization` (see WEIGHT_BYTES), from the
    architecture in its config.json; None for a hub id or an architecture this cannot count."""
    if not model.startswith(BUILTIN_PREFIX) and not (Path(model).expanduser() / "config.json").is_file():
        return None
    params = parameter_count(model_config(model))
    return None if params is None else int(params * WEIGHT_BYTES[quantization])


def parameter_count(arch: dict) -> int | None:
    """Parameters of a decoder-only transformer described by a Hugging Face config (dense or MoE
    with `num_local_experts` / `num_experts` / `n_routed_experts`); None when keys are missing."""
    text = arch.get("text_config") or arch
    try:
        hidden, layers, vocab = text["hidden_size"], text["num_hidden_layers"], text["vocab_size"]
        heads = text["num_attention_heads"]
    except KeyError:
        return None
    head_dim = text.get("head_dim") or hidden // heads
    kv_heads = text.get("num_key_value_heads") or heads
    attention = hidden * head_dim * (2 * heads + 2 * kv_heads)
    experts = text.get("num_local_experts") or text.get("num_experts") or text.get("n_routed_experts") or 0
    ffn = text.get("moe_intermediate_size") if experts else None
    ffn = ffn or text.get("intermediate_size") or 4 * hidden
    mlp = 3 * hidden * ffn * max(experts, 1) + (hidden * experts if experts else 0)
    embeddings = vocab * hidden * (1 if text.get("tie_word_embeddings") else 2)
    return embeddings + layers * (attention + mlp + 2 * hidden)


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _build(key: str, value: Any, lookup) -> Any:
    """A nested option dict as the object `lookup(class name)(**fields)`, enum names as members."""
    if key not in _CONFIG_CLASSES or not isinstance(value, dict):
        return value
    fields = {f: getattr(lookup(_ENUM_FIELDS[key, f]), v) if (key, f) in _ENUM_FIELDS and isinstance(v, str) else v
              for f, v in value.items()}
    return lookup(_CONFIG_CLASSES[key])(**fields)


class _Code(str):
    """Source text standing for itself in `_code` (a class or enum reference)."""

    def __call__(self, **fields):
        return _Code(f"{self}({', '.join(f'{k}={_code(v)}' for k, v in fields.items())})")

    def __getattr__(self, name: str) -> _Code:
        if name.startswith("__"):
            raise AttributeError(name)
        return _Code(f"{self}.{name}")


def _code(value: Any) -> str:
    return str(value) if isinstance(value, _Code) else repr(value)

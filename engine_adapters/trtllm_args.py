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

Where the defaults are not TensorRT-LLM's own (the LLM API's), they are what trtllm-bench and
trtllm-serve set, so what is measured is what `trtllm-serve` deploys:
- pytorch, `cuda_graphs`: `cuda_graph_config: {enable_padding: true, max_batch_size: <max_batch_size>}`
  (CudaGraphConfig.enable_padding defaults to False, its max_batch_size to 128); trtllm-bench sets both
  (bench/benchmark/utils/general.py get_settings: `cuda_graph_config = {"enable_padding": True,
  "max_batch_size": max_batch_size}`); `cuda_graph_max_batch_size` overrides the second.
- tensorrt, `cuda_graphs`: `extended_runtime_perf_knob_config: {cuda_graph_mode: true,
  cuda_graph_cache_size: 1000}`; TrtLlmArgs has no such config by default (CUDA graphs off) and
  ExtendedRuntimePerfKnobConfig.cuda_graph_cache_size defaults to 0; the pair is trtllm-bench's
  (bench/dataclasses/configuration.py PerformanceOptions: `cuda_graph_cache_size: int = 1000`).
- tensorrt: `scheduler_config.dynamic_batch_config` with batch-size tuning on, as trtllm-serve builds
  its SchedulerConfig (commands/serve.py get_llm_args: `DynamicBatchConfig(enable_batch_size_tuning=True,
  enable_max_num_tokens_tuning=False, dynamic_batch_moving_average_window=128)`) and trtllm-bench does;
  the LLM API alone leaves it None. Our `scheduler_config` replaces trtllm-serve's whole (llm_utils
  update_llm_args_with_extra_dict: `llm_args = llm_args | llm_args_dict`), so it must carry this.
  PyTorch backend: left out; SchedulerConfig.dynamic_batch_config "only applies for the TensorRT
  backend and cannot currently be used with the PyTorch backend" (llm_args.py), so dropping
  trtllm-serve's changes nothing there.

Prompt limits with chunked prefill off (`prompt_problem`): a prompt's whole prefill is one iteration.
PyTorch backend: BaseLLM._check_arguments (llmapi/llm.py) raises when `prompt_len / cp_size +
query_len > max_num_tokens` and `not enable_chunked_prefill`. TensorRT backend: the runtime's input
limit is `min(maxSequenceLen - 1, maxNumTokens)` with context FMHA and packed input, both on by
default (cpp/tensorrt_llm/batch_manager/trtGptModel.h; PluginConfig context_fmha and
remove_input_padding default True), `maxSequenceLen - 1` with chunked context; the engine's
`max_input_len` (1024 by default) is then ignored (builder.py: "padding removal and fMHA are both
enabled, max_input_len is not required and will be ignored"), so it is not set here.

Quantization by backend:
- pytorch: there is no quantization argument. The checkpoint decides: a pre-quantized checkpoint
  (NVIDIA ModelOpt `hf_quant_config.json`, or a `quantization_config` in config.json) runs quantized,
  any other runs in its own dtype. `quantization` therefore declares what the checkpoint must be;
  `checkpoint_quantization` reads it (a local directory, or a hub id's snapshot in the local Hugging
  Face cache) and `quantization_problem` makes a mismatch, or a quantization other than `none` that
  cannot be read, infeasible, so no result is labelled with a quantization that did not run.
  `kv_cache_dtype: fp8` -> `kv_cache_config.dtype: fp8` works on any checkpoint.
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

#: backend tensorrt with `cuda_graphs`: CUDA graphs kept by the runtime, trtllm-bench's number (module docstring)
CUDA_GRAPH_CACHE_SIZE = 1000
#: backend tensorrt: trtllm-serve's own dynamic batch tuning (module docstring), kept in the `scheduler_config` we pass
DYNAMIC_BATCH = {"enable_batch_size_tuning": True, "enable_max_num_tokens_tuning": False,
                 "dynamic_batch_moving_average_window": 128}

#: keys whose nested dict is a config object in `LLM(...)`: key -> llmapi class name
_CONFIG_CLASSES = {"kv_cache_config": "KvCacheConfig", "cuda_graph_config": "CudaGraphConfig",
                   "scheduler_config": "SchedulerConfig", "quant_config": "QuantConfig",
                   "extended_runtime_perf_knob_config": "ExtendedRuntimePerfKnobConfig"}
#: (config key, field) -> llmapi enum class name: YAML spells these as the member's name
_ENUM_FIELDS = {("scheduler_config", "capacity_scheduler_policy"): "CapacitySchedulerPolicy",
                ("quant_config", "quant_algo"): "QuantAlgo",
                ("quant_config", "kv_cache_quant_algo"): "QuantAlgo"}


class TrtllmKnobs(EngineConfig):
    """TensorRT-LLM engine settings. Defaults are TensorRT-LLM's own except where trtllm-bench / trtllm-serve set
    otherwise (module docstring): CUDA graphs with padding (PyTorch), CUDA graphs on with a graph cache and dynamic
    batch tuning (TensorRT backend), so that a run measures what trtllm-serve deploys."""

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
                                                "tensorrt: extended_runtime_perf_knob_config.cuda_graph_mode with "
                                                f"cuda_graph_cache_size {CUDA_GRAPH_CACHE_SIZE}")
    cuda_graph_max_batch_size: int | None = Field(
        None, ge=1, description="pytorch: largest batch captured in a CUDA graph; None: max_batch_size, as trtllm-bench "
                                "sets it (TensorRT-LLM's own default is 128)")
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
        graphs = {"enable_padding": True, "max_batch_size": knobs.cuda_graph_max_batch_size or knobs.max_batch_size}
        options["cuda_graph_config"] = graphs if knobs.cuda_graphs else None
    else:
        quant = {}
        if knobs.quantization != "none":
            quant["quant_algo"] = QUANT_ALGOS[knobs.quantization]
        if knobs.kv_cache_dtype == "fp8":
            quant["kv_cache_quant_algo"] = "FP8"
        if quant:
            options["quant_config"] = quant
        options["scheduler_config"]["dynamic_batch_config"] = dict(DYNAMIC_BATCH)
        if knobs.cuda_graphs:
            options["extended_runtime_perf_knob_config"] = {"cuda_graph_mode": True,
                                                            "cuda_graph_cache_size": CUDA_GRAPH_CACHE_SIZE}
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


def checkpoint_dir(model: str, revision: str | None = None) -> Path | None:
    """The Hugging Face checkpoint directory of `model` on this machine, read without network: a local directory
    holding a config.json, or a hub id's snapshot (at `revision`, default main) in the local Hugging Face cache,
    where TensorRT-LLM downloads hub models (llmapi/utils.py download_hf_model: `snapshot_download(model,
    revision=revision, ...)`). None otherwise; builtin models are builtin_models' business."""
    path = Path(model).expanduser()
    if (path / "config.json").is_file():
        return path
    try:
        from huggingface_hub import try_to_load_from_cache
        cached = try_to_load_from_cache(model, "config.json", revision=revision)
    except (ImportError, ValueError):  # no huggingface_hub, or not a repo id (a missing path, builtin:...)
        return None
    return Path(cached).parent if isinstance(cached, str) else None


def hub_revision(knobs: TrtllmKnobs) -> str | None:
    """The hub revision `knobs` load (LlmArgs.revision, through extra_llm_api_options), or None for main."""
    return knobs.extra_llm_api_options.get("revision")


def model_arch(model: str, revision: str | None = None) -> dict | None:
    """`model`'s config.json as a dict (a builtin's recipe), or None when no checkpoint is on this machine."""
    if model.startswith(BUILTIN_PREFIX):
        return model_config(model)
    path = checkpoint_dir(model, revision)
    return None if path is None else json.loads((path / "config.json").read_text())


def checkpoint_quantization(model: str, revision: str | None = None) -> str | None:
    """How the checkpoint `model` is quantized, as a `Quantization` value ("none" when it is not); None when that
    cannot be told here (no checkpoint on this machine, an unreadable file, a scheme not in QUANT_ALGOS)."""
    if model.startswith(BUILTIN_PREFIX):
        return "none"
    path = checkpoint_dir(model, revision)
    if path is None:
        return None
    names = {algo: name for name, algo in QUANT_ALGOS.items()}
    try:
        modelopt = path / "hf_quant_config.json"
        if modelopt.is_file():
            algo = json.loads(modelopt.read_text()).get("quantization", {}).get("quant_algo")
            return names.get(algo) if algo else "none"  # none: only the KV cache is quantized
        quant = json.loads((path / "config.json").read_text()).get("quantization_config")
    except (OSError, ValueError, AttributeError):  # unreadable, not JSON, not an object
        return None
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


def quantization_problem(knobs: TrtllmKnobs) -> str | None:
    """Backend pytorch: why `knobs.quantization` may not be what actually runs, or None. That backend takes no
    quantization argument (TorchLlmArgs.quant_config is read from the checkpoint), so the label a result carries
    must be the checkpoint's own: checked against it, and only the default `none` where it cannot be read."""
    if knobs.backend != "pytorch":
        return None
    wanted = knobs.quantization
    stored = checkpoint_quantization(knobs.model, hub_revision(knobs))
    if stored == wanted or (stored is None and wanted == "none"):
        return None
    if stored is None:
        return (f"backend pytorch runs {knobs.model} as its checkpoint is stored, and that cannot be read here (a hub "
                f"id not in the local Hugging Face cache, or an unknown quantization scheme), so quantization {wanted} "
                f"cannot be verified; point model at a local checkpoint directory whose hf_quant_config.json (NVIDIA "
                f"ModelOpt) or config.json quantization_config says {wanted}, or use backend tensorrt, which "
                "quantizes while building")
    return (f"backend pytorch runs a checkpoint as it is quantized: {knobs.model} is {stored}, not {wanted}; use a "
            f"checkpoint pre-quantized as {wanted} (NVIDIA ModelOpt) or backend tensorrt")


def prompt_problem(knobs: TrtllmKnobs, max_input_tokens: int | None) -> str | None:
    """Why the workload's longest prompt (`max_input_tokens`; None: unknown) cannot run with `knobs`, or None:
    with chunked prefill off TensorRT-LLM rejects a prompt longer than max_num_tokens (module docstring)."""
    options = llm_api_options(knobs)  # extra_llm_api_options may override either
    budget = options["max_num_tokens"]
    if options["enable_chunked_prefill"] or not max_input_tokens or max_input_tokens <= budget:
        return None
    return (f"the workload's longest prompt ({max_input_tokens} tokens) exceeds max_num_tokens ({budget}) with "
            "chunked prefill off: TensorRT-LLM rejects such requests; raise max_num_tokens or enable chunked prefill")


def weight_bytes(model: str, quantization: str, revision: str | None = None) -> int | None:
    """Estimated bytes of `model`'s weights stored as `quantization` (see WEIGHT_BYTES), from the architecture
    in its config.json; None without a checkpoint on this machine or for an architecture this cannot count."""
    arch = model_arch(model, revision)
    params = None if arch is None else parameter_count(arch)
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

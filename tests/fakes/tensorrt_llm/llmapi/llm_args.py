"""Mirrors tensorrt_llm/llmapi/llm_args.py (1.x): the config models and LlmArgs the LLM validates.

Like the real StrictBaseModel, every model forbids unknown fields; values are validated (and
coerced) by pydantic in its default mode, as the real ones are.
"""
from enum import Enum
from pathlib import Path
from typing import Any, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, field_validator, model_validator

from tensorrt_llm.models.modeling_utils import QuantConfig


class StrictBaseModel(BaseModel):
    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


class CapacitySchedulerPolicy(str, Enum):
    MAX_UTILIZATION = "MAX_UTILIZATION"
    GUARANTEED_NO_EVICT = "GUARANTEED_NO_EVICT"
    STATIC_BATCH = "STATIC_BATCH"


class ContextChunkingPolicy(str, Enum):
    FIRST_COME_FIRST_SERVED = "FIRST_COME_FIRST_SERVED"
    EQUAL_PROGRESS = "EQUAL_PROGRESS"


class DynamicBatchConfig(StrictBaseModel):
    """Every field required, as in the 1.0-era class (later releases give them defaults)."""

    enable_batch_size_tuning: bool
    enable_max_num_tokens_tuning: bool
    dynamic_batch_moving_average_window: int


class SchedulerConfig(StrictBaseModel):
    capacity_scheduler_policy: CapacitySchedulerPolicy = CapacitySchedulerPolicy.GUARANTEED_NO_EVICT
    context_chunking_policy: Optional[ContextChunkingPolicy] = None
    dynamic_batch_config: Optional[DynamicBatchConfig] = None  # "only applies for the TensorRT backend"


class KvCacheConfig(StrictBaseModel):
    enable_block_reuse: bool = True
    max_tokens: Optional[int] = None
    max_attention_window: Optional[List[int]] = None
    free_gpu_memory_fraction: Optional[float] = Field(default=0.9, ge=0, le=1)
    host_cache_size: Optional[int] = None
    cross_kv_cache_fraction: Optional[float] = None
    secondary_offload_min_priority: Optional[int] = None
    event_buffer_max_size: int = 0
    enable_partial_reuse: bool = True
    copy_on_partial_reuse: bool = True
    use_uvm: bool = False
    max_gpu_total_bytes: NonNegativeInt = 0
    dtype: str = "auto"
    mamba_ssm_cache_dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    tokens_per_block: int = 32

    @field_validator("dtype")
    @classmethod
    def validate_dtype(cls, v: str) -> str:
        v = v.lower()
        if v in ("auto", "fp8", "nvfp4", "float16", "bfloat16", "float32"):
            return v
        raise ValueError('kv_cache_config.dtype must be one of "auto", "fp8", "nvfp4", or valid torch.dtype string')


class CudaGraphConfig(StrictBaseModel):
    batch_sizes: Optional[List[int]] = None
    max_batch_size: NonNegativeInt = 0
    enable_padding: bool = False

    @model_validator(mode="after")
    def validate_cuda_graph_config(self) -> "CudaGraphConfig":
        if self.batch_sizes:
            self.batch_sizes = sorted(self.batch_sizes)
            if self.max_batch_size not in (0, max(self.batch_sizes)):
                raise ValueError("CudaGraphConfig.max_batch_size must equal max(batch_sizes)")
            self.max_batch_size = max(self.batch_sizes)
        else:
            self.max_batch_size = self.max_batch_size or 128
            if self.enable_padding:
                sizes = [1, 2, 4] + [8 * i for i in range(1, 17)]
            else:
                sizes = list(range(1, 32)) + [32, 64, 128]
            self.batch_sizes = sorted(s for s in sizes if s < self.max_batch_size) + [self.max_batch_size]
        return self


class ExtendedRuntimePerfKnobConfig(StrictBaseModel):
    multi_block_mode: bool = True
    enable_context_fmha_fp32_acc: bool = False
    cuda_graph_mode: bool = False
    cuda_graph_cache_size: int = 0  # the real default: no CUDA graph is kept even with cuda_graph_mode on


class BaseLlmArgs(StrictBaseModel):
    model: Union[str, Path]
    tokenizer: Optional[Any] = None
    tokenizer_mode: Literal["auto", "slow"] = "auto"
    skip_tokenizer_init: bool = False
    trust_remote_code: bool = False
    tensor_parallel_size: int = 1
    dtype: str = "auto"
    revision: Optional[str] = None
    tokenizer_revision: Optional[str] = None
    pipeline_parallel_size: int = 1
    context_parallel_size: int = 1
    gpus_per_node: Optional[int] = None
    moe_tensor_parallel_size: Optional[int] = None
    moe_expert_parallel_size: Optional[int] = None
    enable_attention_dp: bool = False
    kv_cache_config: KvCacheConfig = Field(default_factory=KvCacheConfig)
    enable_chunked_prefill: bool = False
    guided_decoding_backend: Optional[str] = None
    iter_stats_max_iterations: Optional[int] = None
    request_stats_max_iterations: Optional[int] = None
    scheduler_config: SchedulerConfig = Field(default_factory=SchedulerConfig)
    max_batch_size: Optional[int] = 2048
    max_input_len: Optional[int] = 1024
    max_seq_len: Optional[int] = None
    max_beam_width: Optional[int] = 1
    max_num_tokens: Optional[int] = 8192
    gather_generation_logits: bool = False
    num_postprocess_workers: int = 0
    backend: Optional[str] = None


class TorchLlmArgs(BaseLlmArgs):
    cuda_graph_config: Optional[CudaGraphConfig] = Field(default_factory=CudaGraphConfig)
    disable_overlap_scheduler: bool = False
    attn_backend: str = "TRTLLM"
    sampler_type: str = "auto"
    enable_iter_perf_stats: bool = False
    print_iter_log: bool = False
    enable_autotuner: bool = True
    stream_interval: int = Field(default=1, ge=1)
    garbage_collection_gen0_threshold: int = 20000

    @property
    def quant_config(self) -> QuantConfig:  # read from the checkpoint, never an argument
        return QuantConfig()


class TrtLlmArgs(BaseLlmArgs):
    enable_tqdm: bool = False
    workspace: Optional[str] = None
    enable_build_cache: Any = False
    extended_runtime_perf_knob_config: Optional[ExtendedRuntimePerfKnobConfig] = None
    calib_config: Optional[Any] = None
    quant_config: Optional[QuantConfig] = None
    embedding_parallel_mode: str = "SHARDING_ALONG_VOCAB"
    fast_build: bool = False
    build_config: Optional[Any] = None
    normalize_log_probs: bool = False

    @model_validator(mode="after")
    def validate_kv_cache_dtype(self):
        if self.kv_cache_config.dtype != "auto":
            raise ValueError("KvCacheConfig.dtype is not supported by the TensorRT backend.")
        return self

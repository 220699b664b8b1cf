from tensorrt_llm.executor import CompletionOutput, RequestError
from tensorrt_llm.llmapi.llm import LLM, RequestOutput
from tensorrt_llm.llmapi.llm_args import (
                                          CapacitySchedulerPolicy,
                                          ContextChunkingPolicy,
                                          CudaGraphConfig,
                                          DynamicBatchConfig,
                                          ExtendedRuntimePerfKnobConfig,
                                          KvCacheConfig,
                                          SchedulerConfig,
                                          TorchLlmArgs,
                                          TrtLlmArgs,
)
from tensorrt_llm.models.modeling_utils import QuantConfig
from tensorrt_llm.quantization.mode import QuantAlgo
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["LLM", "RequestOutput", "CompletionOutput", "RequestError", "SamplingParams", "KvCacheConfig",
           "CudaGraphConfig", "DynamicBatchConfig",
           "SchedulerConfig", "CapacitySchedulerPolicy", "ContextChunkingPolicy",
           "ExtendedRuntimePerfKnobConfig", "QuantConfig", "QuantAlgo", "TorchLlmArgs", "TrtLlmArgs"]

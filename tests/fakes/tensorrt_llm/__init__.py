"""A FAKE `tensorrt_llm` for tests: the 1.x LLM API surface the harness adapter uses, with no GPU.

Never installed; tests put `tests/fakes` on sys.path (tests/engine_adapters/conftest.py). Module
paths and names mirror the real package (tensorrt_llm/__init__.py, llmapi/, executor/result.py,
sampling_params.py, quantization/mode.py, models/modeling_utils.py, _tensorrt_engine/). Argument
names and types are validated as the real pydantic LlmArgs do (unknown kwargs rejected). Behaviour
is a step model driven by `tensorrt_llm._fake.FAKE` (see there): what each LLM was built with,
builds / saves / loads of TensorRT engines, shutdowns and aborts are recorded on it, and it can be
told to fail at init, hang, or raise mid-stream.
"""
from tensorrt_llm import llmapi
from tensorrt_llm.llmapi import LLM
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "1.0.0"

__all__ = ["LLM", "SamplingParams", "llmapi", "__version__"]

"""Engines behind one contract (see `base`). Nothing else in the project imports an engine library."""
from __future__ import annotations

import importlib

from engine_adapters.base import Engine, EngineAdapter, EngineConfig, Hardware, StreamEvent

# kind -> "module:class"; modules are imported only when their kind is used.
_ADAPTERS = {
    "mock": "engine_adapters.mock:MockAdapter",
    "openai": "engine_adapters.openai_http:OpenAIAdapter",
    "server": "engine_adapters.server_launcher:ServerAdapter",
    "tensorrt_llm": "engine_adapters.tensorrt_llm:TensorRTLLMAdapter",
    "transformers": "engine_adapters.transformers_cb:TransformersAdapter",
    "trtllm_serve": "engine_adapters.trtllm_serve:TrtllmServeAdapter",
}


def adapter_kinds() -> list[str]:
    return sorted(_ADAPTERS)


def get_adapter(kind: str) -> EngineAdapter:
    """Return the adapter for `kind`; KeyError names the known kinds."""
    if kind not in _ADAPTERS:
        raise KeyError(f"unknown engine kind {kind!r}; known: {', '.join(adapter_kinds())}")
    module, cls = _ADAPTERS[kind].split(":")
    return getattr(importlib.import_module(module), cls)()


__all__ = ["Engine", "EngineAdapter", "EngineConfig", "Hardware", "StreamEvent", "adapter_kinds", "get_adapter"]

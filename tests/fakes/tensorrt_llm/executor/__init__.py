from tensorrt_llm.executor.result import CompletionOutput
from tensorrt_llm.executor.utils import RequestError

__all__ = ["CompletionOutput", "RequestError"]

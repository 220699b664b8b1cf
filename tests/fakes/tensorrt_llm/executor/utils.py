class RequestError(RuntimeError):
    """Mirrors tensorrt_llm/executor/utils.py: a request failed inside the executor."""

"""harness: benchmark and autotune LLM inference engines."""
__version__ = "0.1.0"

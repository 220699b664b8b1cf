"""Fixtures shared by the engine adapter tests."""
import sys
from pathlib import Path

import pytest

FAKES = Path(__file__).parents[1] / "fakes"


def _forget_tensorrt_llm() -> None:
    for name in [m for m in sys.modules if m == "tensorrt_llm" or m.startswith("tensorrt_llm.")]:
        del sys.modules[name]


@pytest.fixture
def fake_trtllm(monkeypatch):
    """The fake `tensorrt_llm` (tests/fakes/tensorrt_llm) importable for this test; yields its FAKE
    control-and-record object, reset. Afterwards the fake is gone from sys.path and sys.modules."""
    _forget_tensorrt_llm()
    monkeypatch.syspath_prepend(str(FAKES))
    from tensorrt_llm._fake import reset

    yield reset()
    _forget_tensorrt_llm()

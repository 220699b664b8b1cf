"""Control and record of the fake: `FAKE` (module-level; tests reset it through `reset()`).

Switches, also settable through environment variables for subprocesses (read by `reset()`):
- step_ms (TRTLLM_FAKE_STEP_MS): time per engine step; the first token comes one step after scheduling
- fail_init (TRTLLM_FAKE_FAIL_INIT): LLM(...) raises RuntimeError with this message after validating its args
- init_s (TRTLLM_FAKE_INIT_S): LLM(...) blocks this long first (a slow build)
- hang (TRTLLM_FAKE_HANG=1): requests are accepted and never produce anything
- raise_after (TRTLLM_FAKE_RAISE_AFTER): a request raises RequestError after this many tokens
- eos_after: the "model" samples EOS as output token number `eos_after` (honoured unless ignore_eos)
Records: `llms` (every LLM constructed, with `.kwargs`, `.backend`, `.shutdown_calls`), `builds`
(kwargs of each TensorRT engine build), `loads` (engine dirs loaded), `saves` (dirs saved to), `aborted`.
"""
import os
from dataclasses import dataclass, field


@dataclass
class Fake:
    step_ms: float = 1.0
    fail_init: str | None = None
    init_s: float = 0.0
    hang: bool = False
    raise_after: int | None = None
    raise_message: str = "Request failed: CUDA error: an illegal memory access was encountered"
    eos_after: int | None = None
    llms: list = field(default_factory=list)
    builds: list = field(default_factory=list)
    loads: list = field(default_factory=list)
    saves: list = field(default_factory=list)
    aborted: list = field(default_factory=list)


FAKE = Fake()


def reset() -> Fake:
    """Back to defaults (then the TRTLLM_FAKE_* environment variables), records emptied."""
    FAKE.__dict__.update(Fake().__dict__)
    env = os.environ
    FAKE.step_ms = float(env.get("TRTLLM_FAKE_STEP_MS", FAKE.step_ms))
    FAKE.fail_init = env.get("TRTLLM_FAKE_FAIL_INIT") or None
    FAKE.init_s = float(env.get("TRTLLM_FAKE_INIT_S", 0))
    FAKE.hang = env.get("TRTLLM_FAKE_HANG") == "1"
    FAKE.raise_after = int(env["TRTLLM_FAKE_RAISE_AFTER"]) if env.get("TRTLLM_FAKE_RAISE_AFTER") else None
    return FAKE


reset()

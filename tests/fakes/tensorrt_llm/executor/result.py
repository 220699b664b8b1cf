"""Mirrors tensorrt_llm/executor/result.py CompletionOutput (token_ids grow; token_ids_diff is the last step's)."""
from dataclasses import dataclass, field
from typing import List, Literal, Optional

from tensorrt_llm.bindings.executor import RequestPerfMetrics


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: Optional[List[int]] = field(default_factory=list)
    finish_reason: Optional[Literal["stop", "length", "timeout", "cancelled"]] = None
    stop_reason: Optional[int | str] = None
    request_perf_metrics: Optional[RequestPerfMetrics] = None
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def token_ids_diff(self) -> List[int]:
        return self.token_ids[self._last_token_ids_len:]

"""The unit of traffic: one request as the workload generator produced it."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RequestSpec:
    """One request to send.

    `scheduled_offset_s` is the open-loop send time relative to the start of the run; it is None
    for closed-loop traffic (sent as soon as a concurrency slot frees). The prompt is given as token
    ids, as text, or both; `input_tokens` is the prompt length the workload intended.
    """

    id: str
    max_output_tokens: int
    prompt_token_ids: tuple[int, ...] | None = None
    prompt_text: str | None = None
    scheduled_offset_s: float | None = None
    shared_prefix_id: str | None = None
    source: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.prompt_token_ids is None and self.prompt_text is None:
            raise ValueError(f"request {self.id}: needs prompt_token_ids or prompt_text")
        if self.max_output_tokens < 1:
            raise ValueError(f"request {self.id}: max_output_tokens must be >= 1")

    @property
    def input_tokens(self) -> int | None:
        """Prompt length in tokens when known from the spec (token-id prompts), else None."""
        return None if self.prompt_token_ids is None else len(self.prompt_token_ids)


@dataclass(frozen=True)
class TokenSpace:
    """What a workload needs to know about the engine's vocabulary to make token-id prompts."""

    vocab_size: int
    reserved_ids: frozenset[int] = frozenset()

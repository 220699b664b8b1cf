"""The unit of traffic: one request as the workload generator produced it."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


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


class Tokenizer(Protocol):
    """The engine's tokenizer, as far as workloads use it (datasets with text prompts, exact-length text)."""

    #: Identity for caches: two tokenizers with the same name give the same ids for the same text.
    name: str

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, without special tokens (no BOS): what the prompt adds to the sequence."""

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`."""


@dataclass(frozen=True)
class TokenSpace:
    """What a workload needs to know about the engine's vocabulary to make prompts.

    `reserved_ids` are ids random prompts must not use: the special tokens and, for an engine that sends
    prompts as text (an OpenAI chat endpoint), every id outside the tokenizer's text-safe set, so that each
    random prompt's text encodes to exactly its length (workloads.text_prompts).
    `tokenizer` is None when the engine has none to offer (the simulated mock engine; an OpenAI server
    without a configured tokenizer): text prompts are then sent as text and their lengths are unknown.
    """

    vocab_size: int
    reserved_ids: frozenset[int] = frozenset()
    tokenizer: Tokenizer | None = None

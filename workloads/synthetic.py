"""Synthetic traffic: random token prompts with configured length and arrival distributions."""
from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from workloads.arrival import ArrivalProcess
from workloads.distributions import LengthDist
from workloads.profile import SourceProfile
from workloads.request import RequestSpec, TokenSpace


def allowed_ids(token_space: TokenSpace) -> np.ndarray:
    """The token ids random prompts may use: the vocabulary less its reserved (special) ids."""
    return np.setdiff1d(np.arange(token_space.vocab_size), np.fromiter(token_space.reserved_ids, int))


class Seeds(BaseModel):
    """Independent seeds, so changing one aspect of the traffic leaves the others as they were."""

    model_config = ConfigDict(extra="forbid")
    lengths: int = 0
    content: int = 1
    arrival: int = 2

    @classmethod
    def from_base(cls, base: int) -> "Seeds":
        lengths, content, arrival = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(base).spawn(3))
        return cls(lengths=lengths, content=content, arrival=arrival)


class SyntheticWorkload(BaseModel):
    """`requests` prompts of random token ids; lengths and send times drawn from the given distributions."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["synthetic"]
    requests: int = Field(ge=1, description="number of requests, warm-up included")
    input_tokens: LengthDist
    output_tokens: LengthDist
    arrival: ArrivalProcess
    warmup_requests: int = Field(0, ge=0, description="first requests sent but excluded from metrics")
    cooldown_requests: int = Field(0, ge=0, description="last requests sent but excluded from metrics")
    seed: int | Seeds = 0

    def seeds(self) -> Seeds:
        return self.seed if isinstance(self.seed, Seeds) else Seeds.from_base(self.seed)

    def max_sequence_tokens(self) -> int | None:
        """Longest prompt + output this workload can produce, or None when unbounded."""
        i, o = self.input_tokens.upper_bound(), self.output_tokens.upper_bound()
        return None if i is None or o is None else i + o

    def longest_prompt_tokens(self) -> int | None:
        """Longest prompt this workload can produce, or None when unbounded."""
        return self.input_tokens.upper_bound()

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the requests in send order; the same config and token space give the same requests."""
        seeds = self.seeds()
        n = self.requests
        len_rng = np.random.default_rng(seeds.lengths)
        in_lens = self.input_tokens.sample(len_rng, n)
        out_lens = self.output_tokens.sample(len_rng, n)
        offsets = self.arrival.offsets(np.random.default_rng(seeds.arrival), n)
        content_rng = np.random.default_rng(seeds.content)
        allowed = allowed_ids(token_space)
        for i in range(n):
            ids = content_rng.choice(allowed, size=int(in_lens[i]))
            yield RequestSpec(
                id=f"req-{i:06d}",
                max_output_tokens=int(out_lens[i]),
                prompt_token_ids=tuple(int(t) for t in ids),
                scheduled_offset_s=None if offsets is None else float(offsets[i]),
                source={"kind": "synthetic", "index": i},
            )

    def source_profile(self) -> SourceProfile:
        """Synthetic traffic has no source beyond its distributions: only its description and count."""
        def show(dist) -> str:
            return ", ".join(f"{k}={v}" for k, v in dist.model_dump(exclude_none=True).items())
        return SourceProfile(kind="synthetic", rows_read=self.requests, rows_used=self.requests,
                             description=f"input tokens {show(self.input_tokens)}; output tokens "
                                         f"{show(self.output_tokens)}; arrival {show(self.arrival)}")

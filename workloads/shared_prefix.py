"""Shared-prefix traffic: prompts that start with one of a few long common prefixes (a system prompt,
a retrieved document) followed by a unique suffix, so that KV-cache block reuse (prefix caching) can
be measured and tuned.

`groups` prefixes are drawn once each (lengths from `prefix_tokens`, random token ids); every request
picks a group (`group_selection`: round_robin, uniform random, or zipf with exponent `zipf_s`, where
group k is chosen with weight 1/(k+1)^s: a few hot system prompts and a long tail) and appends its own
suffix. Requests carry `shared_prefix_id = "prefix-<group>"`.

The profile notes the ideal prefix reuse: the fraction of all prompt tokens that repeat an earlier
request's prefix. A cache that never evicted would skip computing those tokens; measured savings
are lower (eviction, block granularity, requests that arrive before their prefix is cached).
"""
from __future__ import annotations

from typing import Iterator, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

from workloads.arrival import ArrivalProcess
from workloads.distributions import LengthDist
from workloads.profile import SourceProfile
from workloads.request import RequestSpec, TokenSpace
from workloads.synthetic import Seeds, allowed_ids


class SharedPrefixWorkload(BaseModel):
    """`requests` prompts = one of `groups` shared prefixes + a unique suffix (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["shared_prefix"]
    requests: int = Field(ge=1, description="number of requests, warm-up included")
    groups: int = Field(ge=1, description="number of distinct shared prefixes")
    prefix_tokens: LengthDist = Field(description="length of each group's prefix (drawn once per group)")
    suffix_tokens: LengthDist = Field(description="length of each request's unique suffix")
    output_tokens: LengthDist
    group_selection: Literal["round_robin", "random", "zipf"] = "random"
    zipf_s: float = Field(1.1, gt=0, description="zipf exponent (group_selection: zipf)")
    arrival: ArrivalProcess
    warmup_requests: int = Field(0, ge=0, description="first requests sent but excluded from metrics")
    cooldown_requests: int = Field(0, ge=0, description="last requests sent but excluded from metrics")
    seed: int | Seeds = 0

    _reuse: tuple[int, int] | None = PrivateAttr(default=None)  # (prompt tokens repeating a prefix, all)

    def seeds(self) -> Seeds:
        return self.seed if isinstance(self.seed, Seeds) else Seeds.from_base(self.seed)

    def max_sequence_tokens(self) -> int | None:
        bounds = (self.prefix_tokens.upper_bound(), self.suffix_tokens.upper_bound(), self.output_tokens.upper_bound())
        return None if None in bounds else sum(bounds)

    def longest_prompt_tokens(self) -> int | None:
        bounds = (self.prefix_tokens.upper_bound(), self.suffix_tokens.upper_bound())
        return None if None in bounds else sum(bounds)

    def _groups_of_requests(self, rng: np.random.Generator) -> np.ndarray:
        n, g = self.requests, self.groups
        if self.group_selection == "round_robin":
            return np.arange(n) % g
        if self.group_selection == "random":
            return rng.integers(0, g, size=n)
        weights = 1.0 / np.arange(1, g + 1) ** self.zipf_s
        return rng.choice(g, size=n, p=weights / weights.sum())

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the requests in send order; the same config and token space give the same requests."""
        seeds = self.seeds()
        n = self.requests
        len_rng = np.random.default_rng(seeds.lengths)
        prefix_lens = self.prefix_tokens.sample(len_rng, self.groups)
        suffix_lens = self.suffix_tokens.sample(len_rng, n)
        out_lens = self.output_tokens.sample(len_rng, n)
        group_of = self._groups_of_requests(len_rng)
        offsets = self.arrival.offsets(np.random.default_rng(seeds.arrival), n)
        content_rng = np.random.default_rng(seeds.content)
        allowed = allowed_ids(token_space)
        prefixes = [tuple(int(t) for t in content_rng.choice(allowed, size=int(k))) for k in prefix_lens]
        seen: set[int] = set()
        reused = 0
        for i in range(n):
            g = int(group_of[i])
            reused += len(prefixes[g]) if g in seen else 0
            seen.add(g)
            suffix = tuple(int(t) for t in content_rng.choice(allowed, size=int(suffix_lens[i])))
            yield RequestSpec(
                id=f"req-{i:06d}",
                max_output_tokens=int(out_lens[i]),
                prompt_token_ids=prefixes[g] + suffix,
                scheduled_offset_s=None if offsets is None else float(offsets[i]),
                shared_prefix_id=f"prefix-{g}",
                source={"kind": "shared_prefix", "group": g, "prefix_tokens": len(prefixes[g])},
            )
        self._reuse = (reused, int(sum(prefix_lens[group_of]) + suffix_lens.sum()))

    def source_profile(self) -> SourceProfile:
        """Description and the ideal prefix reuse of the generated requests (after `generate`)."""
        notes = []
        if self._reuse is not None:
            reused, total = self._reuse
            notes.append(f"ideal prefix reuse: {reused} of {total} prompt tokens ({reused / total:.1%}) repeat "
                         "an earlier request's prefix")
        return SourceProfile(kind="shared_prefix", rows_read=self.requests, rows_used=self.requests, notes=notes,
                             description=f"{self.groups} shared prefixes ({self.group_selection} selection), "
                                         f"{self.requests} requests")

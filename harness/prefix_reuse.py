"""Prefix reuse seen from the client: does a repeated prompt prefix come back faster?

Engine-neutral: it needs only the requests' `shared_prefix_id` (shared-prefix workloads, multi-turn
conversations, traces with shared hash ids) and their measured TTFT. Requests are taken in send order
(warm-up included, and the preflight request first when one was sent, since they fill the cache too):

- cold: the first request of each prefix group; its prefix cannot be in any cache;
- warm: every later request of the group; its prefix may be cached (prefix caching / KV block reuse).

Only successful measured requests enter the TTFT distributions (as for `ttft_ms`), with TTFT per input
token alongside (TTFT / prompt tokens) since cold and warm prompts differ in length. With reuse off,
warm ≈ cold; with reuse on, warm is lower by the prefill time of the cached prefix. Warm TTFT also
depends on the load at the time (queueing), and a warm request sent before any earlier request of its
group had its first token could not find its prefix computed yet; those are counted.

The ideal reuse is the share of prompt tokens (token-id prompts only) that repeat a prefix of an
earlier prompt: what a cache that never evicted, at token granularity, would skip. Engines reuse whole
KV blocks only, and evict, so their savings are lower.

What the engine itself says it reused, where it says so (`RequestRecord.cached_prompt_tokens`: TensorRT-LLM's
reused KV blocks, an OpenAI server's `usage.prompt_tokens_details.cached_tokens`, what transformers' paged cache
matched, the mock's SIMULATED hits), is
the `engine_reported` part: the share of prompt tokens (as the server counted them where it did) the engine took
from its cache, over every request of the run with a report and over the cold and warm ones.
"""
from __future__ import annotations

import bisect
from typing import Sequence

import numpy as np

from harness.metrics import request_values, summarize
from harness.records import RequestRecord
from workloads import RequestSpec


def _common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    n = min(len(a), len(b))
    diff = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(diff[0]) if diff.size else n


def ideal_reuse(prompts: Sequence[tuple[int, ...]]) -> dict:
    """{reused_tokens, prompt_tokens, share}: each prompt's longest common prefix with any earlier prompt (the
    longest is with a lexicographic neighbour among the earlier ones), summed, over all prompt tokens."""
    seen: list[tuple[int, ...]] = []
    reused = 0
    for prompt in prompts:
        at = bisect.bisect_left(seen, prompt)
        reused += max((_common_prefix(prompt, seen[j]) for j in (at - 1, at) if 0 <= j < len(seen)), default=0)
        seen.insert(at, prompt)
    total = sum(len(p) for p in prompts)
    return {"reused_tokens": reused, "prompt_tokens": total, "share": reused / total if total else None}


def _ttft_per_token(record: RequestRecord) -> list[float]:
    if not record.input_tokens:
        return []
    return [v / record.input_tokens for v in request_values("ttft_ms", record)]


def _side(records: list[RequestRecord]) -> dict:
    return {"ttft_ms": summarize([v for r in records for v in request_values("ttft_ms", r)]),
            "ttft_per_input_token_ms": summarize([v for r in records for v in _ttft_per_token(r)])}


def _ratio(warm: dict, cold: dict) -> float | None:
    return warm["p50"] / cold["p50"] if warm["p50"] is not None and cold["p50"] else None


def _cached_share(records: list[RequestRecord]) -> dict:
    """{requests, cached_prompt_tokens, prompt_tokens, share} over the records with an engine report and a known
    prompt length."""
    reported = [r for r in records if r.cached_prompt_tokens is not None
                and (r.server_input_tokens or r.input_tokens) is not None]
    cached = sum(r.cached_prompt_tokens for r in reported)
    total = sum(r.server_input_tokens or r.input_tokens for r in reported)
    return {"requests": len(reported), "cached_prompt_tokens": cached, "prompt_tokens": total,
            "share": cached / total if total else None}


def prefix_reuse(specs: Sequence[RequestSpec], records: Sequence[RequestRecord],
                 sent_before: Sequence[RequestSpec] = ()) -> dict | None:
    """The `prefix_reuse` block of a run result (see the module docstring); None when no request carries a
    `shared_prefix_id`. `records[i]` is `specs[i]`'s record; `sent_before` are requests sent to the same engine
    before the run (the preflight), in order."""
    if len(specs) != len(records) or any(s.id != r.id for s, r in zip(specs, records)):
        raise ValueError("prefix_reuse: records must be the specs' records, in the same order")
    if not any(s.shared_prefix_id is not None for s in specs):
        return None
    seen = {s.shared_prefix_id for s in sent_before if s.shared_prefix_id is not None}
    # the earliest first token (ns after t0) among the group's requests so far; a request sent before the run had its
    # first token before t0
    first_token_of_group: dict[str, float] = dict.fromkeys(seen, float("-inf"))
    cold: list[RequestRecord] = []
    warm: list[RequestRecord] = []
    warm_early = 0
    for spec, record in zip(specs, records):
        group = spec.shared_prefix_id
        if group is None:
            continue
        if record.phase == "measured" and record.ok:
            if group in seen:
                warm.append(record)
                ready = first_token_of_group.get(group)
                warm_early += ready is None or record.sent_ns is None or record.sent_ns < ready
            else:
                cold.append(record)
        seen.add(group)
        if record.first_token_ns is not None:
            first_token_of_group[group] = min(first_token_of_group.get(group, record.first_token_ns),
                                              record.first_token_ns)
    cold_side, warm_side = _side(cold), _side(warm)
    prompts = [s.prompt_token_ids for s in [*sent_before, *specs]]
    block = {
        "groups": len({s.shared_prefix_id for s in specs if s.shared_prefix_id is not None}),
        "requests": sum(s.shared_prefix_id is not None for s in specs),
        "cold": cold_side,
        "warm": warm_side,
        "warm_to_cold_p50": {m: _ratio(warm_side[m], cold_side[m]) for m in cold_side},
        "warm_sent_before_prefix_computed": warm_early,
        "ideal_reuse": None if any(p is None for p in prompts) else ideal_reuse(prompts),
    }
    if any(r.cached_prompt_tokens is not None for r in records):  # an engine that reports its cache hits
        block["engine_reported"] = {"all": _cached_share(list(records)), "cold": _cached_share(cold),
                                    "warm": _cached_share(warm)}
    return block

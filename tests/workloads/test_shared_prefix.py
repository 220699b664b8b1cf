from collections import Counter

import pytest
from pydantic import ValidationError

from workloads import TokenSpace
from workloads.shared_prefix import SharedPrefixWorkload

SPACE = TokenSpace(vocab_size=300, reserved_ids=frozenset(range(4)))


def workload(**overrides) -> SharedPrefixWorkload:
    fields = dict(kind="shared_prefix", requests=40, groups=4, prefix_tokens={"dist": "uniform", "low": 20, "high": 30},
                  suffix_tokens={"dist": "fixed", "value": 5}, output_tokens={"dist": "fixed", "value": 3},
                  arrival={"process": "poisson", "rate": 10}, seed=7)
    return SharedPrefixWorkload(**{**fields, **overrides})


def test_requests_of_a_group_share_exactly_its_prefix_and_differ_after_it():
    specs = list(workload().generate(SPACE))
    by_group: dict[str, list] = {}
    for s in specs:
        by_group.setdefault(s.shared_prefix_id, []).append(s)
    assert len(by_group) == 4
    for group in by_group.values():
        n = group[0].source["prefix_tokens"]
        assert 20 <= n <= 30
        assert all(s.prompt_token_ids[:n] == group[0].prompt_token_ids[:n] for s in group)
        assert all(s.input_tokens == n + 5 for s in group)
        suffixes = {s.prompt_token_ids[n:] for s in group}
        assert len(suffixes) == len(group)  # unique suffixes
    prefixes = {g[0].prompt_token_ids[:g[0].source["prefix_tokens"]] for g in by_group.values()}
    assert len(prefixes) == 4
    assert all(t >= 4 for s in specs for t in s.prompt_token_ids)  # reserved ids never used


def test_round_robin_and_zipf_selection():
    rr = [s.source["group"] for s in workload(group_selection="round_robin").generate(SPACE)]
    assert rr == [i % 4 for i in range(40)]
    counts = Counter(s.source["group"] for s in workload(requests=2000, group_selection="zipf", zipf_s=1.5)
                     .generate(SPACE))
    assert counts[0] > counts[1] > counts[3]  # hot prefixes first


def test_ideal_reuse_note_counts_repeated_prefix_tokens():
    w = workload(groups=1, requests=3, prefix_tokens={"dist": "fixed", "value": 10})
    list(w.generate(SPACE))
    # 3 prompts of 15 tokens; the 2nd and 3rd repeat a 10-token prefix: 20 of 45
    assert w.source_profile().notes == ["ideal prefix reuse: 20 of 45 prompt tokens (44.4%) repeat an earlier "
                                        "request's prefix"]


def test_same_seed_same_requests_and_bounds():
    assert list(workload().generate(SPACE)) == list(workload().generate(SPACE))
    assert list(workload(seed=8).generate(SPACE)) != list(workload().generate(SPACE))
    assert workload().max_sequence_tokens() == 30 + 5 + 3
    with pytest.raises(ValidationError):
        workload(groups=0)

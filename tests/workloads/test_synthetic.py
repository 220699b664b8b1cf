import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from workloads import Seeds, SyntheticWorkload, TokenSpace
from workloads.arrival import ArrivalProcess
from workloads.distributions import LengthDist

SPACE = TokenSpace(vocab_size=50, reserved_ids=frozenset({0, 1}))


def make(**overrides) -> SyntheticWorkload:
    data = {"kind": "synthetic", "requests": 400,
            "input_tokens": {"dist": "normal", "mean": 100, "std": 60, "min": 10, "max": 150},
            "output_tokens": {"dist": "uniform", "low": 5, "high": 9},
            "arrival": {"process": "poisson", "rate": 20}, "seed": 7}
    data.update(overrides)
    return SyntheticWorkload.model_validate(data)


def test_lengths_are_clipped_and_prompts_avoid_reserved_ids():
    reqs = list(make().generate(SPACE))
    lens = [r.input_tokens for r in reqs]
    assert min(lens) == 10 and max(lens) == 150  # std 60 guarantees both clips are hit with 400 draws
    assert {r.max_output_tokens for r in reqs} == {5, 6, 7, 8, 9}
    ids = {t for r in reqs for t in r.prompt_token_ids}
    assert ids.isdisjoint({0, 1}) and max(ids) < 50


def test_same_seed_same_requests_and_seeds_are_independent():
    a = list(make().generate(SPACE))
    assert a == list(make().generate(SPACE))
    base = make().seeds()
    moved = make(seed={**base.model_dump(), "arrival": base.arrival + 1})
    b = list(moved.generate(SPACE))
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]
    assert [r.max_output_tokens for r in a] == [r.max_output_tokens for r in b]
    assert [r.scheduled_offset_s for r in a] != [r.scheduled_offset_s for r in b]


@pytest.mark.parametrize("arrival,cv", [({"process": "poisson", "rate": 50}, 1.0),
                                        ({"process": "gamma", "rate": 50, "cv": 3}, 3.0),
                                        ({"process": "constant", "rate": 50}, 0.0)])
def test_open_loop_rates_and_burstiness(arrival, cv):
    proc = TypeAdapter(ArrivalProcess).validate_python(arrival)
    offsets = proc.offsets(np.random.default_rng(0), 20000)
    gaps = np.diff(offsets)
    assert offsets[0] == 0 and np.all(gaps >= 0)
    assert gaps.mean() == pytest.approx(1 / 50, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.1 * max(cv, 1))


def test_closed_loop_has_no_schedule():
    reqs = list(make(arrival={"process": "closed", "concurrency": 4}).generate(SPACE))
    assert all(r.scheduled_offset_s is None for r in reqs)


def test_lognormal_matches_its_stated_mean_and_std():
    dist = TypeAdapter(LengthDist).validate_python({"dist": "lognormal", "mean": 300, "std": 150, "max": 100000})
    x = dist.sample(np.random.default_rng(1), 50000)
    assert x.mean() == pytest.approx(300, rel=0.03) and x.std() == pytest.approx(150, rel=0.05)


@pytest.mark.parametrize("bad", [{"dist": "uniform", "low": 9, "high": 3},
                                 {"dist": "fixed", "value": 4, "min": 5, "max": 2},
                                 {"dist": "normal", "mean": 4, "std": 1, "shape": 2}])
def test_invalid_distributions_are_rejected(bad):
    with pytest.raises(ValidationError):
        TypeAdapter(LengthDist).validate_python(bad)


def test_seeds_from_base_are_deterministic_and_distinct():
    s = Seeds.from_base(3)
    assert s == Seeds.from_base(3) and len({s.lengths, s.content, s.arrival}) == 3


def test_bundled_workloads_validate_and_are_usable_by_name(tmp_path):
    from harness.config import parse_config
    from workloads import catalog_names

    assert {"chat", "summarization", "bursty", "offline-batch"} <= set(catalog_names())
    for name in catalog_names():
        cfg = parse_config({"name": "x", "engine": {"kind": "mock"}, "workload": name}, "test")
        assert len(list(cfg.workload.generate(SPACE))) == cfg.workload.requests

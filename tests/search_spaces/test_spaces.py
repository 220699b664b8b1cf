import dataclasses

import optuna
import pytest
import yaml

from search_spaces import Rule, SpaceError, bundled_spaces, load_space


def test_bundled_spaces_load_and_sample_within_bounds():
    assert {"transformers-default", "mock-default"} <= set(bundled_spaces())
    space = load_space("transformers-default")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        values = space.suggest(study.ask())
        assert 1 <= values["max_batch_size"] <= 32 and 0.1 <= values["kv_cache_fraction"] <= 0.9
        assert values["dtype"] in ("float32", "bfloat16")


@pytest.mark.parametrize("text,values,holds", [
    ("tp * pp <= gpus", {"tp": 2, "pp": 2, "gpus": 4}, True),
    ("tp * pp <= gpus", {"tp": 4, "pp": 2, "gpus": 4}, False),
    ("1 <= a < b", {"a": 1, "b": 2}, True),
    ("a / 2 + 1 == b - 1", {"a": 4, "b": 4}, True),
])
def test_rules_evaluate(text, values, holds):
    assert Rule.parse(text, set(values)).holds(values) is holds


@pytest.mark.parametrize("text,message", [
    ("__import__('os')", "must be a comparison"),
    ("a.__class__ == 1", "only \\+ - \\* / and comparisons"),
    ("a <= nope", "unknown name 'nope'"),
    ("a <=", "rule 'a <='"),
])
def test_unsafe_or_malformed_rules_are_rejected(text, message):
    with pytest.raises(ValueError, match=message):
        Rule.parse(text, {"a"})


def test_space_file_errors_name_the_file_and_field(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "engine": "mock",
                                    "params": {"max_batch_size": {"type": "int", "low": 8, "high": 2}}}))
    with pytest.raises(SpaceError, match=r"s\.yaml: invalid search space\n  params\.max_batch_size\.int"):
        load_space(str(path))
    path.write_text(yaml.safe_dump({"name": "s", "engine": "mock", "params": {"a": {"type": "int", "low": 1,
                                    "high": 2}}, "rules": ["a <= b"]}))
    with pytest.raises(SpaceError, match="rules: rule 'a <= b': unknown name 'b'"):
        load_space(str(path))
    with pytest.raises(SpaceError, match="unknown search space 'nope'; bundled:"):
        load_space("nope")


def test_broken_rule_reports_the_rule_text():
    space = load_space("mock-default")
    assert space.broken_rule({"max_batch_size": 64, "max_num_tokens": 32}, gpus=0) == "max_num_tokens >= max_batch_size"
    assert space.broken_rule({"max_batch_size": 8, "max_num_tokens": 32}, gpus=0) is None


def test_oom_region_grows_in_memory_knobs_only():
    space = load_space("mock-default")
    oom = {"max_batch_size": 8, "max_num_tokens": 512, "kv_cache_fraction": 0.5, "quantization": "none"}
    assert space.in_oom_region(oom, oom)
    assert space.in_oom_region({**oom, "max_batch_size": 16, "kv_cache_fraction": 0.9}, oom)
    assert not space.in_oom_region({**oom, "max_batch_size": 16, "max_num_tokens": 256}, oom)  # one knob smaller
    assert not space.in_oom_region({**oom, "max_batch_size": 16, "quantization": "fp8"}, oom)  # another knob differs
    bare = dataclasses.replace(space, memory_knobs=())  # none declared: only the point itself
    assert bare.in_oom_region(oom, oom) and not bare.in_oom_region({**oom, "max_batch_size": 16}, oom)


def test_memory_and_rebuild_knobs_must_be_params_of_the_space(tmp_path):
    path = tmp_path / "s.yaml"
    base = {"name": "s", "engine": "mock", "params": {"a": {"type": "int", "low": 1, "high": 2},
                                                      "q": {"type": "categorical", "choices": ["none", "fp8"]}}}
    for extra, message in [({"memory_knobs": ["b"]}, "memory_knobs: 'b' is not a param; known: a, q"),
                           ({"memory_knobs": ["q"]}, "memory_knobs: 'q' has non-numeric choices"),
                           ({"rebuild": {"knobs": ["b"]}}, "rebuild.knobs: unknown params b")]:
        path.write_text(yaml.safe_dump({**base, **extra}))
        with pytest.raises(SpaceError, match=message):
            load_space(str(path))


def test_build_key_only_where_the_engine_is_built_and_cached():
    space = load_space("trtllm-default")
    point = {"max_batch_size": 64, "max_num_tokens": 2048, "kv_cache_fraction": 0.9, "quantization": "none",
             "tensor_parallel_size": 1, "pipeline_parallel_size": 1}
    built = {"backend": "tensorrt", "engine_cache": True}
    assert space.build_key(point, built) == space.build_key({**point, "kv_cache_fraction": 0.5}, built)
    assert space.build_key(point, built) != space.build_key({**point, "max_batch_size": 128}, built)
    assert space.build_key(point, {"backend": "pytorch", "engine_cache": True}) is None
    assert space.build_key(point, {"backend": "tensorrt"}) is None  # trtllm-serve: no engine cache


def test_for_gpus_drops_choices_that_break_a_rule_on_this_machine():
    space = load_space("trtllm-default")
    narrowed, notes = space.for_gpus(1)
    assert narrowed.params["tensor_parallel_size"].choices == [1]
    assert narrowed.params["pipeline_parallel_size"].choices == [1]
    assert narrowed.params["max_batch_size"] is space.params["max_batch_size"]  # a range: left to the launch check
    assert notes == ["tensor_parallel_size: 1 of 1, 2, 4, 8 (the others break a rule with 1 GPU)",
                     "pipeline_parallel_size: 1 of 1, 2 (the others break a rule with 1 GPU)"]
    narrowed, notes = space.for_gpus(2)
    assert narrowed.params["tensor_parallel_size"].choices == [1, 2]
    assert narrowed.params["pipeline_parallel_size"].choices == [1, 2]  # pp 2 runs with tp 1
    assert narrowed.broken_rule({"tensor_parallel_size": 2, "pipeline_parallel_size": 2,
                                 "max_num_tokens": 2048, "max_batch_size": 8}, 2)  # the rule still applies
    assert space.for_gpus(8) == (space, [])


def test_for_gpus_narrows_through_chained_rules_and_names_an_empty_param(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({
        "name": "s", "engine": "mock",
        "params": {"a": {"type": "categorical", "choices": [1, 2, 4]}, "b": {"type": "categorical", "choices": [1, 2]},
                   "c": {"type": "categorical", "choices": [1, 2, 3]}},
        "rules": ["a <= gpus", "b >= a", "c > b"]}))
    narrowed, _ = load_space(str(path)).for_gpus(2)
    assert [narrowed.params[n].choices for n in "abc"] == [[1, 2], [1, 2], [2, 3]]
    narrowed, _ = load_space(str(path)).for_gpus(1)
    assert [narrowed.params[n].choices for n in "abc"] == [[1], [1, 2], [2, 3]]
    path.write_text(path.read_text().replace("a <= gpus", "a > 4 * gpus"))
    with pytest.raises(SpaceError, match="no value of a satisfies the rule 'a > 4 \\* gpus' with gpus = 1"):
        load_space(str(path)).for_gpus(1)


def test_stepped_floats_come_out_as_written_not_as_binary_sums():
    """Optuna's suggest_float(0.1, 0.95, step=0.05) gives 0.30000000000000004 for 0.3; the space rounds it, so the
    engine config and recommended.yaml read 0.3, equal to the grid's value."""
    space = load_space("transformers-default")
    param = space.params["kv_cache_fraction"]
    assert param.step is not None
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = {param.suggest(study.ask(), "kv_cache_fraction") for _ in range(200)}
    assert values <= set(param.grid("kv_cache_fraction")) and len(values) > 5
    assert all(repr(v) == repr(round(v, 2)) for v in values)

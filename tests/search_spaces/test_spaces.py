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

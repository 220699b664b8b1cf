"""Config validation: every bad field is named with its path; the CLI exits 2."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.config import load_config
from harness.errors import ConfigError

GOOD = {
    "name": "x",
    "engine": {"kind": "mock", "params": {"max_batch_size": 4}},
    "workload": {"kind": "synthetic", "requests": 10, "input_tokens": {"dist": "fixed", "value": 8},
                 "output_tokens": {"dist": "fixed", "value": 4}, "arrival": {"process": "poisson", "rate": 5}},
    "slo": {"ttft_ms": {"p95": 100}},
    "search": {"space": "mock-default", "trials": 2},
}


def write(tmp_path: Path, data) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def with_change(path: str, value):
    data = yaml.safe_load(yaml.safe_dump(GOOD))
    *parents, last = path.split(".")
    node = data
    for p in parents:
        node = node[p]
    node[last] = value
    return data


def test_the_good_config_and_the_examples_load(tmp_path):
    assert load_config(write(tmp_path, GOOD)).engine.resolve().max_batch_size == 4
    for example in Path(__file__).parents[2].joinpath("examples").glob("*.yaml"):
        load_config(example)


@pytest.mark.parametrize("path,value,expected", [
    ("workload.requests", 0, "workload.synthetic.requests: Input should be greater than or equal to 1"),
    ("workload.input_tokens.dist", "zipf", "workload.synthetic.input_tokens"),
    ("workload.arrival.rate", -1, "workload.synthetic.arrival.poisson.rate"),
    ("engine.kind", "nope", "engine.kind: unknown engine kind 'nope'; known: mock, openai, server, tensorrt_llm, "
                            "transformers, trtllm_serve"),
    ("engine.params", {"max_batch_size": 0}, "params.max_batch_size: Input should be greater than or equal to 1"),
    ("engine.params", {"batch": 4}, "params.batch: unknown key"),
    ("slo", {"ttft": {"p95": 1}}, "slo: unknown SLO metric 'ttft'"),
    ("slo", {"ttft_ms": {"p97": 1}}, "unknown statistic 'p97'"),
    ("search.objective", "maximize speed", "search.objective: unknown metric 'speed'"),
    ("search.objective", "minimize ttft_ms", "name a statistic, e.g. ttft_ms.p95"),
    ("search.colour", "red", "search.colour: unknown key"),
    ("name", "has space", "name: String should match pattern"),
])
def test_bad_fields_are_named(tmp_path, path, value, expected):
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, with_change(path, value)))
    assert str(tmp_path / "c.yaml") in str(err.value) and expected in str(err.value)


def test_yaml_syntax_errors_give_the_line(tmp_path):
    with pytest.raises(ConfigError, match=r"c\.yaml:3:\d+: invalid YAML"):
        load_config(write(tmp_path, "name: x\nengine:\n\tkind: mock\n"))


def test_top_level_must_be_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"))


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120)


def test_cli_exits_2_naming_the_bad_field(tmp_path):
    proc = run_cli("tune", str(write(tmp_path, with_change("workload.output_tokens", {"dist": "fixed"}))),
                   cwd=tmp_path)
    assert proc.returncode == 2
    assert "workload.synthetic.output_tokens.fixed.value: Field required" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_usage_errors_exit_2(tmp_path):
    assert run_cli("tune", cwd=tmp_path).returncode == 2
    assert run_cli("tune", str(tmp_path / "missing.yaml"), cwd=tmp_path).returncode == 2
    bad_space = with_change("search.space", "no-such-space")
    proc = run_cli("tune", str(write(tmp_path, bad_space)), cwd=tmp_path)
    assert proc.returncode == 2 and "unknown search space 'no-such-space'" in proc.stderr

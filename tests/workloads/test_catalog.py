"""Named workloads: `workload: NAME | path.yaml` and `workload: {use: NAME | path.yaml, FIELD: VALUE, ...}`."""
import subprocess
import sys

import pytest
import yaml

from harness.config import load_config, parse_config
from harness.errors import ConfigError
from workloads import SyntheticWorkload
from workloads.trace import TraceWorkload


def experiment(workload) -> dict:
    return {"name": "x", "engine": {"kind": "mock"}, "workload": workload}


def test_use_a_bundled_workload_replacing_top_level_fields_whole():
    plain = parse_config(experiment("code-completion"), "c.yaml").workload
    faster = parse_config(experiment({"use": "code-completion", "speedup": 10}), "c.yaml").workload
    assert isinstance(faster, TraceWorkload) and (plain.speedup, faster.speedup) == (1, 10)
    assert faster.path == plain.path and faster.window == plain.window and faster.requests == plain.requests
    later = parse_config(experiment({"use": "code-completion", "window": {"duration_s": 60}}), "c.yaml").workload
    assert (later.window.start_s, later.window.duration_s) == (0, 60) and later.requests < plain.requests
    assert parse_config(experiment({"use": "chat"}), "c.yaml").workload == parse_config(experiment("chat"),
                                                                                        "c.yaml").workload


def test_a_workload_file_is_found_from_the_config_folder(tmp_path, monkeypatch):
    folder = tmp_path / "configs"
    (folder / "traffic").mkdir(parents=True)
    (folder / "traffic" / "mine.yaml").write_text(yaml.safe_dump({
        "kind": "synthetic", "requests": 40, "input_tokens": {"dist": "fixed", "value": 8},
        "output_tokens": {"dist": "fixed", "value": 4}, "arrival": {"process": "poisson", "rate": 3}}))
    for i, workload in enumerate(["traffic/mine.yaml", {"use": "traffic/mine.yaml", "requests": 12}]):
        config = folder / f"exp{i}.yaml"
        config.write_text(yaml.safe_dump(experiment(workload)))
        monkeypatch.chdir(tmp_path)   # not the config's folder
        w = load_config(config).workload
        assert isinstance(w, SyntheticWorkload) and w.requests == (40, 12)[i] and w.arrival.rate == 3
    absolute = parse_config(experiment({"use": str(folder / "traffic" / "mine.yaml")}), "c.yaml").workload
    assert absolute.requests == 40


@pytest.mark.parametrize("workload,expected", [
    ({"use": "chaat"}, "workload: use: unknown bundled workload 'chaat'; known: bursty, chat,"),
    ("chaat", "workload: unknown bundled workload 'chaat'"),
    ({"use": "missing.yaml"}, "workload: use: {tmp}/missing.yaml: cannot read"),
    ({"use": "broken.yaml"}, "workload: use: {tmp}/broken.yaml:2:12: invalid YAML"),
    ({"use": "list.yaml"}, "workload: use: {tmp}/list.yaml: expected a workload (a mapping with `kind` and its "
                           "fields), got list"),
    ({"use": 7}, "workload: use: expected a bundled workload name or a workload YAML path, got 7"),
    ({"use": "chat", "kind": "synthetic"}, "workload: use: the named workload gives `kind`; give `use` or `kind`"),
    ({"use": "chat", "colour": "red"}, "workload.synthetic.colour: unknown key"),
    ({"use": "chat", "requests": 0}, "workload.synthetic.requests: Input should be greater than or equal to 1"),
])
def test_bad_names_paths_and_fields_are_config_errors_naming_them(tmp_path, workload, expected):
    (tmp_path / "broken.yaml").write_text("kind: synthetic\nrequests: 3: 4\n")
    (tmp_path / "list.yaml").write_text("- kind: synthetic\n")
    with pytest.raises(ConfigError) as err:
        parse_config(experiment(workload), "c.yaml", config_dir=tmp_path)
    assert expected.replace("{tmp}", str(tmp_path)) in str(err.value)


def test_harness_exits_2_on_an_unknown_workload_file(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**experiment({"use": "nope.yaml", "requests": 5}),
                                      "search": {"space": "mock-default", "trials": 1}}))
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and f"workload: use: {tmp_path}/nope.yaml: cannot read" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()

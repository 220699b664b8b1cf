"""`trtllm_serve`: the trtllm-serve command and `--extra_llm_api_options` YAML rendered from the knobs (checked
through a fake `trtllm-serve` on PATH that records its argv and serves as the mock server), the deployment files,
and `harness tune` end to end with `command` pointed at other OpenAI-compatible servers."""
from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from engine_adapters import Hardware, get_adapter
from engine_adapters.server_launcher import CONFIG_FILE, SERVER_LOG
from engine_adapters.trtllm_args import TrtllmKnobs, llm_api_options
from engine_adapters.trtllm_serve import (
    SERVE_SCRIPT,
    SERVE_YAML,
    TrtllmServeAdapter,
    TrtllmServeConfig,
    deployment_files,
)
from harness.store import RunDir, TrialFiles
from workloads import RequestSpec

REPO = Path(__file__).resolve().parents[2]

#: A stand-in for trtllm-serve: prints its argv and the --extra_llm_api_options file, then (unless
#: $FAKE_TRTLLM_EXIT is set) becomes the mock server on the given host and port, serving the model under the
#: name trtllm-serve would give it.
FAKE_TRTLLM_SERVE = """#!{python}
import json, os, sys
args = sys.argv[1:]
print("argv " + json.dumps(args), flush=True)
print("options " + json.dumps(open(args[args.index("--extra_llm_api_options") + 1]).read()), flush=True)
if os.environ.get("FAKE_TRTLLM_EXIT"):
    sys.exit(0)
served = os.path.basename(args[0].rstrip("/")) if os.path.isdir(args[0]) else args[0]
os.execv(sys.executable, [sys.executable, "-m", "engine_adapters.mock_server", "--model", served, "--ttft-ms", "1",
                          "--host", args[args.index("--host") + 1], "--port", args[args.index("--port") + 1]])
"""
KNOBS = {"model": "tiny-model", "max_batch_size": 64, "max_num_tokens": 4096, "kv_cache_fraction": 0.85,
         "max_seq_len": 2048, "enable_block_reuse": False}


@pytest.fixture
def fake_trtllm_serve(tmp_path, monkeypatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "trtllm-serve"
    exe.write_text(FAKE_TRTLLM_SERVE.format(python=sys.executable))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return exe


def recorded(log: str) -> tuple[list[str], dict]:
    """The argv and the parsed --extra_llm_api_options YAML that the fake trtllm-serve printed."""
    argv = json.loads(re.search(r"^argv (.*)$", log, re.M).group(1))
    return argv, yaml.safe_load(json.loads(re.search(r"^options (.*)$", log, re.M).group(1)))


def test_trtllm_serve_gets_the_exact_command_and_yaml(fake_trtllm_serve, tmp_path):
    adapter = TrtllmServeAdapter()
    config = TrtllmServeConfig(**KNOBS, log_dir=str(tmp_path), api_key_env=None)

    async def go():
        async with adapter.start(config) as engine:
            return [e async for e in engine.stream(RequestSpec(id="a", max_output_tokens=4, prompt_token_ids=(5, 6)))]
    events = asyncio.run(go())
    assert sum(e.n_tokens for e in events) == 4 and all(e.error is None for e in events)

    argv, options = recorded((tmp_path / SERVER_LOG).read_text())
    port = argv[4]
    assert argv == ["tiny-model", "--host", "127.0.0.1", "--port", port, "--backend", "pytorch", "--tp_size", "1",
                    "--pp_size", "1", "--max_batch_size", "64", "--max_num_tokens", "4096", "--max_seq_len", "2048",
                    "--kv_cache_free_gpu_memory_fraction", "0.85", "--extra_llm_api_options",
                    str(tmp_path / CONFIG_FILE)]
    assert options == llm_api_options(TrtllmKnobs(**KNOBS))
    assert (options["max_batch_size"], options["max_num_tokens"], options["max_seq_len"]) == (64, 4096, 2048)
    assert options["kv_cache_config"]["free_gpu_memory_fraction"] == 0.85
    assert options["kv_cache_config"]["enable_block_reuse"] is False
    fp = adapter.fingerprint(config)
    assert fp["engine"] == "trtllm-serve" and fp["served_model"] == "tiny-model" and fp["command"][0] == "trtllm-serve"


def test_command_template_and_served_model(tmp_path):
    adapter = TrtllmServeAdapter()
    template = adapter.command_template(TrtllmServeConfig(model="m", tensor_parallel_size=2))
    assert "--max_seq_len" not in template and template[template.index("--tp_size") + 1] == "{tensor_parallel_size}"
    custom = TrtllmServeConfig(model="m", command=["wrap.sh", "{model}", "{config_file}"], extra_args=["-v"])
    assert adapter.command_template(custom) == ["wrap.sh", "{model}", "{config_file}", "-v"]
    assert adapter.engine_name(custom) == "wrap.sh"
    checkpoint = tmp_path / "Llama-3-8B"
    checkpoint.mkdir()
    assert adapter.default_served_model(TrtllmServeConfig(model=str(checkpoint)), str(checkpoint)) == "Llama-3-8B"
    assert adapter.default_health_path(custom) == "/health"


def test_check(fake_trtllm_serve, tmp_path):
    adapter = get_adapter("trtllm_serve")
    fp8 = TrtllmServeConfig(model="m", quantization="fp8", backend="tensorrt")
    assert "compute capability >= 8.9" in adapter.check(fp8, Hardware(gpu_count=1, compute_capability=(8, 0)))
    assert adapter.check(fp8, Hardware(gpu_count=1, compute_capability=(9, 0))) is None
    tp = TrtllmServeConfig(model="m", tensor_parallel_size=2)
    assert "2 GPUs, but this machine has 1" in adapter.check(tp, Hardware(gpu_count=1))
    # the PyTorch backend serves the checkpoint as stored: a quantization must be the checkpoint's own
    checkpoint = tmp_path / "plain"
    checkpoint.mkdir()
    (checkpoint / "config.json").write_text("{}")
    plain_fp8 = TrtllmServeConfig(model=str(checkpoint), quantization="fp8")
    assert "is none, not fp8" in adapter.check(plain_fp8, Hardware(gpu_count=1, compute_capability=(9, 0)))
    assert "cannot be verified" in adapter.check(TrtllmServeConfig(model="m", quantization="fp8"), Hardware(1))
    # and without chunked prefill the longest prompt must fit max_num_tokens
    budget = TrtllmServeConfig(model="m", max_num_tokens=1024)
    assert "longest prompt (2000 tokens) exceeds max_num_tokens (1024)" in adapter.check(budget, Hardware(1),
                                                                                        max_input_tokens=2000)
    assert adapter.check(budget, Hardware(1), max_input_tokens=1024) is None


def test_unavailable_names_the_missing_executable(tmp_path, monkeypatch):
    """The executable the launch would run (trtllm-serve, or `command[0]`), looked up as the launch looks it up."""
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    adapter = TrtllmServeAdapter()
    config = TrtllmServeConfig(model="m")
    reason = adapter.unavailable(config)
    assert reason.startswith("trtllm-serve is not on PATH; install TensorRT-LLM")
    assert "pip3 install tensorrt_llm" in reason and "engine.params.command" in reason
    assert adapter.check(config, Hardware(gpu_count=1)) == reason
    assert adapter.unavailable() is None  # no config, no command to look for
    assert adapter.unavailable(TrtllmServeConfig(model="m", command=[sys.executable, "{model}"])) is None
    missing = TrtllmServeConfig(model="m", command=["/no/such/wrapper.sh", "{model}"])
    assert adapter.unavailable(missing) == ("engine.params.command[0] '/no/such/wrapper.sh' is not an executable "
                                            "file, nor found on PATH")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "trtllm-serve").write_text("#!/bin/sh\n")
    (bin_dir / "trtllm-serve").chmod(0o755)
    monkeypatch.setenv("HARNESS_TEST_BIN", str(bin_dir))
    assert adapter.unavailable(TrtllmServeConfig(model="m", env={"PATH": "${HARNESS_TEST_BIN}"})) is None
    unset = TrtllmServeConfig(model="m", env={"PATH": "${HARNESS_TEST_UNSET}"})
    assert "HARNESS_TEST_UNSET" in adapter.unavailable(unset)


def test_cli_tune_without_trtllm_serve_stops_before_any_trial(tmp_path):
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump({
        "name": "serve", "engine": {"kind": "trtllm_serve", "model": "tiny-model"},
        "workload": {"kind": "synthetic", "requests": 4, "input_tokens": {"dist": "fixed", "value": 8},
                     "output_tokens": {"dist": "fixed", "value": 4},
                     "arrival": {"process": "closed", "concurrency": 2}},
        "search": {"space": "trtllm-default", "trials": 2, "objective": "maximize output_throughput_tok_s"}}))
    path = os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"])  # no trtllm-serve on it
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", "exp.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=240, env={**os.environ, "PATH": path})
    assert proc.returncode == 2
    assert "engine.kind trtllm_serve: trtllm-serve is not on PATH" in " ".join((proc.stdout + proc.stderr).split())
    assert not (tmp_path / "runs").exists()  # stopped before the study was created, not after rejected points



def test_tune_says_why_the_trtllm_bench_warm_start_was_skipped(tmp_path):
    """trtllm-bench's sizing needs the GPU's memory; with none known the warm start is skipped, saying so."""
    from harness.config import parse_config
    from harness.tuner import Tuner

    cfg = parse_config({
        "name": "serve", "engine": {"kind": "trtllm_serve", "model": "org/model", "params": {"command": ["/bin/true"]}},
        "workload": {"kind": "synthetic", "requests": 4, "input_tokens": {"dist": "fixed", "value": 8},
                     "output_tokens": {"dist": "fixed", "value": 4}, "arrival": {"process": "closed", "concurrency": 2}},
        "search": {"space": "trtllm-default", "trials": 1, "objective": "maximize output_throughput_tok_s"}}, "test")
    tuner = Tuner(cfg, RunDir(tmp_path / "run"), config_dir=tmp_path, hardware=Hardware(gpu_count=0))
    assert "memory" in tuner.warm_start_skipped
    assert not tuner.study.trials  # nothing queued
    with_gpu = Hardware(gpu_count=1, gpu_memory_bytes=(80 * 2**30,), compute_capability=(9, 0))
    assert Tuner(cfg, RunDir(tmp_path / "run2"), config_dir=tmp_path, hardware=with_gpu).warm_start_skipped is not None, \
        "a hub id not in the local cache: the model's size is unknown, so there is still no point"

# ---- deployment files ------------------------------------------------------------------------------------

def test_deployment_files_run_trtllm_serve_with_the_config(fake_trtllm_serve, tmp_path):
    config = TrtllmServeConfig(**{**KNOBS, "model": "/models/My Model"}, tensor_parallel_size=2)
    files = deployment_files("trtllm_serve", config.model_dump(mode="json"), header="study 'x', trial 3")
    assert set(files) == {SERVE_YAML, SERVE_SCRIPT}
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    for name, text in files.items():
        (deploy / name).write_text(text)
    script = deploy / SERVE_SCRIPT
    assert yaml.safe_load(files[SERVE_YAML]) == llm_api_options(TrtllmKnobs(**{**KNOBS, "model": "/models/My Model",
                                                                              "tensor_parallel_size": 2}))
    assert files[SERVE_SCRIPT].startswith("#!/usr/bin/env bash\n# study 'x', trial 3\n")
    assert "set -euo pipefail" in files[SERVE_SCRIPT] and '"${MODEL:-/models/My Model}"' in files[SERVE_SCRIPT]

    def run(**env):
        proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "FAKE_TRTLLM_EXIT": "1", **env}, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return recorded(proc.stdout)

    argv, options = run()
    assert argv == ["/models/My Model", "--host", "0.0.0.0", "--port", "8000", "--backend", "pytorch", "--tp_size", "2",
                    "--pp_size", "1", "--max_batch_size", "64", "--max_num_tokens", "4096", "--max_seq_len", "2048",
                    "--kv_cache_free_gpu_memory_fraction", "0.85", "--extra_llm_api_options", f"{deploy}/{SERVE_YAML}"]
    assert options == yaml.safe_load(files[SERVE_YAML])
    argv, _ = run(MODEL="/elsewhere", PORT="9001")
    assert argv[0] == "/elsewhere" and argv[argv.index("--port") + 1] == "9001"


@pytest.mark.parametrize("model", ["/a}b", 'x"$(touch pwned)`id`\\z', "<script>alert(1)</script>"])
def test_script_passes_any_model_path_verbatim(fake_trtllm_serve, tmp_path, model):
    script = tmp_path / SERVE_SCRIPT
    script.write_text(deployment_files("tensorrt_llm", {"model": model})[SERVE_SCRIPT])
    (tmp_path / SERVE_YAML).write_text("{}")
    proc = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                          env={**os.environ, "FAKE_TRTLLM_EXIT": "1"})
    assert recorded(proc.stdout)[0][0] == model, proc.stderr
    assert not (tmp_path / "pwned").exists()


def test_no_deployment_files_for_other_engines():
    assert deployment_files("mock", {"model": "m"}) == {}


# ---- harness tune end to end ----------------------------------------------------------------------------

SPACE = {"name": "trtllm-serve-test", "engine": "trtllm_serve",
         "params": {"max_batch_size": {"type": "categorical", "choices": [1, 4]},
                    "max_num_tokens": {"type": "categorical", "choices": [128, 256]}}}


def tune(tmp_path: Path, engine: dict, workload: dict, timeout_s: float) -> RunDir:
    """`harness tune` (the real CLI, 2 trials of SPACE) in tmp_path; the run dir, after checking it succeeded."""
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(SPACE))
    config = {"name": "serve", "engine": engine, "workload": workload,
              "search": {"space": "space.yaml", "trials": 2, "sampler": "random",
                         "objective": "maximize output_throughput_tok_s", "trial_timeout_s": timeout_s}}
    (tmp_path / "exp.yaml").write_text(yaml.safe_dump(config))
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", "exp.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=3 * timeout_s, env={**os.environ, "PYTHONPATH": pythonpath})
    run = RunDir(tmp_path / "runs" / "serve")
    logs = "".join(f"\n--- trial {n}:\n{_tail(run.trial_dir(n) / TrialFiles.LOG)}\n--- its server:\n"
                   f"{_tail(run.trial_dir(n) / SERVER_LOG)}" for n in range(2))
    assert proc.returncode == 0, proc.stderr[-3000:] + logs
    assert set(re.findall(r"trial (\d+) complete", proc.stderr)) == {"0", "1"}, proc.stderr[-3000:] + logs
    return run


def _tail(path: Path) -> str:
    return path.read_text(errors="replace")[-2000:] if path.exists() else "(none)"


def check_trials_and_deployment(run: RunDir, served_by: str) -> None:
    """Each trial ran its own server, logged in its dir, with that trial's knobs in its YAML; the deployment
    files carry the recommended knobs."""
    for n in range(2):
        trial = run.trial_dir(n)
        params = yaml.safe_load((trial / TrialFiles.CONFIG).read_text())["engine"]["params"]
        assert served_by in (trial / SERVER_LOG).read_text()
        assert yaml.safe_load((trial / CONFIG_FILE).read_text())["max_num_tokens"] == params["max_num_tokens"]
        assert json.loads((trial / TrialFiles.RESULT).read_text())["counts"]["failed"] == 0
    recommended = yaml.safe_load(run.recommended.read_text())["engine"]
    assert recommended["kind"] == "trtllm_serve"
    options = yaml.safe_load((run.path / SERVE_YAML).read_text())
    assert options == llm_api_options(TrtllmKnobs(model=recommended["model"], **{
        k: v for k, v in recommended["params"].items() if k in TrtllmKnobs.model_fields}))
    script = run.path / SERVE_SCRIPT
    assert os.access(script, os.X_OK)
    text = script.read_text()
    for knob in ("max_batch_size", "max_num_tokens"):
        assert f"--{knob} {recommended['params'][knob]} " in text
    assert "LLM(" in run.report.read_text()


def test_tune_with_trtllm_serve_pointed_at_the_mock_server(tmp_path):
    command = [sys.executable, "-m", "engine_adapters.mock_server", "--port", "{port}", "--model", "{served_model}",
               "--ttft-ms", "2", "--itl-ms", "1", "--max-concurrency", "{max_batch_size}"]
    run = tune(tmp_path, {"kind": "trtllm_serve", "model": "tiny-model",
                          "params": {"command": command, "api_key_env": None, "startup_timeout_s": 60}},
               {"kind": "synthetic", "requests": 20, "input_tokens": {"dist": "fixed", "value": 16},
                "output_tokens": {"dist": "fixed", "value": 4}, "arrival": {"process": "closed", "concurrency": 4}},
               timeout_s=120)
    check_trials_and_deployment(run, served_by="listening on http://127.0.0.1:")


@pytest.mark.slow
def test_tune_with_trtllm_serve_pointed_at_a_real_transformers_serve(tmp_path):
    """Each trial launches a real `transformers serve` (about 15 s to start on a 2-core CPU) with the trial's
    max_num_tokens as its batch-token budget; served from a private hub cache, as in test_transformers_serve."""
    for module in ("fastapi", "uvicorn", "torch", "transformers"):
        pytest.importorskip(module)
    from tests.engine_adapters.test_transformers_serve import MODEL_ID, _hub_cache

    hub = _hub_cache(tmp_path / "hub")
    command = [sys.executable, "-m", "transformers.cli.transformers", "serve", "{model}", "--host", "{host}",
               "--port", "{port}", "--continuous-batching", "--device", "cpu", "--dtype", "float32",
               "--cb-num-blocks", "64", "--cb-block-size", "32", "--cb-max-batch-tokens", "{max_num_tokens}"]
    engine = {"kind": "trtllm_serve", "model": MODEL_ID, "params": {
        "command": command, "health_path": "/health", "startup_timeout_s": 120, "api_key_env": None,
        "env": {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "OMP_NUM_THREADS": "1"},
        "tokenizer": "builtin:tiny-llama", "ignore_eos": False,
        "extra_body": {"generation_config": json.dumps({"do_sample": False, "eos_token_id": -1})}}}
    dataset = tmp_path / "prompts.jsonl"
    dataset.write_text("".join(json.dumps({"task_id": i, "prompt": f"Request {i}: the quick brown fox.",
                                           "output_tokens": 8}) + "\n" for i in range(4)))
    run = tune(tmp_path, engine, {"kind": "trtllm_dataset", "path": str(dataset),
                                  "arrival": {"process": "closed", "concurrency": 2}}, timeout_s=240)
    check_trials_and_deployment(run, served_by="Uvicorn running on http://127.0.0.1:")

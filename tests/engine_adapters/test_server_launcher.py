"""The generic server launcher (`server` kind) against fake servers: small scripts started with this Python
that serve, crash, hang or ignore SIGTERM, and the real mock server."""
from __future__ import annotations

import asyncio
import json
import re
import sys
import time
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from engine_adapters import Hardware, get_adapter
from engine_adapters.openai_http import ServerUnavailable
from engine_adapters.server_launcher import (CONFIG_FILE, SERVER_LOG, TRIAL_DIR_ENV, ServerAdapter, ServerConfig,
                                             ServerStartError, group_alive, render_command)
from harness.config import EngineSpec
from workloads import RequestSpec

#: argv: MODE PORT. Prints its argv and $SECRET_TOKEN, then by MODE: crash (an error, exit 3), hang (never
#: listens), serve, or stubborn (serve, ignoring SIGTERM, with a child that ignores it too). Serving is a
#: minimal OpenAI-compatible server: GET /v1/models lists "fake"; POST /v1/completions streams max_tokens
#: one-letter chunks and [DONE].
FAKE_SERVER = r'''
import http.server, json, os, signal, subprocess, sys, time
mode, port = sys.argv[1], int(sys.argv[2])
print("argv " + json.dumps(sys.argv[1:]), flush=True)
print("SECRET_TOKEN is " + os.environ.get("SECRET_TOKEN", "unset"), flush=True)
if mode == "crash":
    print("error: CUDA out of memory (fake)", file=sys.stderr, flush=True)
    sys.exit(3)
if mode == "hang":
    time.sleep(3600)
if mode == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, "
                              "signal.SIG_IGN); time.sleep(3600)"])
    print(f"child pid {child.pid}", flush=True)

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def send(self, body, content_type="application/json"):
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.send(json.dumps({"object": "list", "data": [{"id": "fake", "owned_by": "test"}]}).encode())

    def do_POST(self):
        n = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["max_tokens"]
        events = [{"choices": [{"index": 0, "text": "a", "finish_reason": "length" if i == n - 1 else None}]}
                  for i in range(n)]
        self.send(b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n",
                  "text/event-stream")

    def log_message(self, *args):
        pass

http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
'''
MOCK_SERVER = [sys.executable, "-m", "engine_adapters.mock_server", "--port", "{port}", "--model", "{served_model}",
               "--ttft-ms", "1", "--itl-ms", "1"]


@pytest.fixture
def fake(tmp_path) -> Path:
    path = tmp_path / "fake_server.py"
    path.write_text(FAKE_SERVER)
    return path


def fake_config(fake: Path, mode: str, **overrides) -> ServerConfig:
    return ServerConfig(**{"model": "fake", "command": [sys.executable, str(fake), mode, "{port}"],
                           "log_dir": str(fake.parent), "startup_timeout_s": 30, "api_key_env": None, **overrides})


def run(config: ServerConfig, requests: int = 1, output_tokens: int = 3) -> tuple[list, list[str], float]:
    """Start, stream `requests` requests, stop; (their events, the engine's log lines, seconds to stop)."""
    adapter = ServerAdapter()

    async def go():
        async with adapter.start(config) as engine:
            lines = engine.log_lines()
            events = []
            for i in range(requests):
                spec = RequestSpec(id=f"r{i}", max_output_tokens=output_tokens, prompt_token_ids=(5, 6, 7))
                events.append([e async for e in engine.stream(spec)])
            stopping = time.monotonic()
        return events, lines, stopping

    events, lines, stopping = asyncio.run(go())
    return events, lines, time.monotonic() - stopping


def pid_of(text: str) -> int:
    return int(re.search(r"pid (\d+)", text).group(1))


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


# ---- lifecycle --------------------------------------------------------------------------------------------

def test_mock_server_command_becomes_ready_streams_and_stops(tmp_path):
    config = ServerConfig(model="mock", command=MOCK_SERVER, log_dir=str(tmp_path), api_key_env=None)
    events, lines, stop_s = run(config, requests=2)
    assert [sum(e.n_tokens for e in ev) for ev in events] == [3, 3]
    assert all(e.error is None for ev in events for e in ev)
    pid = pid_of(lines[0])
    assert not group_alive(pid) and stop_s < 5  # the mock server exits on SIGTERM at once
    log = (tmp_path / SERVER_LOG).read_text()
    assert "engine_adapters.mock_server --port" in log.splitlines()[0]  # the launch line, rendered
    assert "listening on http://127.0.0.1:" in log
    fp = ServerAdapter().fingerprint(config)
    assert fp["engine"] == Path(sys.executable).name and fp["engine_version"] == "unknown"  # not started here


def test_server_log_goes_to_the_trial_dir_by_default(fake, tmp_path, monkeypatch):
    trial = tmp_path / "trials" / "7"
    monkeypatch.setenv(TRIAL_DIR_ENV, str(trial))
    run(fake_config(fake, "serve", log_dir=None))
    assert "argv " in (trial / SERVER_LOG).read_text()


def test_fingerprint_describes_the_started_server(tmp_path):
    adapter = ServerAdapter()
    config = ServerConfig(model="mock", command=MOCK_SERVER, log_dir=str(tmp_path), api_key_env=None)

    async def go():
        async with adapter.start(config):
            pass
    asyncio.run(go())
    fp = adapter.fingerprint(config)
    assert fp["simulated"] is True and fp["engine_version"] == "harness-mock/1" and fp["served_model"] == "mock"
    assert fp["command"][:3] == [sys.executable, "-m", "engine_adapters.mock_server"]


def test_early_crash_fails_at_once_with_exit_code_and_log_tail(fake):
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        run(fake_config(fake, "crash", startup_timeout_s=120))
    assert time.monotonic() - t0 < 10
    message = str(err.value)
    assert "exited with code 3 before it was ready" in message
    assert "error: CUDA out of memory (fake)" in message and str(fake.parent / SERVER_LOG) in message


def test_startup_timeout_kills_the_server(fake):
    t0 = time.monotonic()
    with pytest.raises(ServerStartError) as err:
        run(fake_config(fake, "hang", startup_timeout_s=1, shutdown_timeout_s=1))
    assert 1 <= time.monotonic() - t0 < 10
    assert "did not answer GET http://127.0.0.1:" in str(err.value) and "within 1 s" in str(err.value)
    assert "argv " in str(err.value)  # the log tail
    assert not group_alive(pid_of(str(err.value)))


def test_sigterm_ignored_escalates_to_sigkill_of_the_whole_group(fake):
    _, lines, stop_s = run(fake_config(fake, "stubborn", shutdown_timeout_s=1))
    leader = pid_of(lines[0])
    child = int(re.search(r"child pid (\d+)", (fake.parent / SERVER_LOG).read_text()).group(1))
    assert 1 <= stop_s < 10
    assert not group_alive(leader) and not running(leader) and not running(child)


def test_an_executable_that_does_not_exist_is_a_clear_error(tmp_path):
    with pytest.raises(ServerStartError, match="cannot run '/no/such/server'"):
        run(ServerConfig(model="m", command=["/no/such/server", "--port", "{port}"], log_dir=str(tmp_path)))


# ---- rendering --------------------------------------------------------------------------------------------

def test_command_is_an_argument_list_rendered_per_start_without_a_shell(fake):
    tricky = "a b; touch pwned $(id)"
    command = [sys.executable, str(fake), "serve", "{port}", "--batch={max_batch_size}", "{served_model}",
               '{"json": {max_num_tokens}}', "{optional}"]
    config = fake_config(fake, "serve", command=command,
                         served_model=tricky, max_batch_size=8, max_num_tokens=256, knobs={"optional": ""})
    with pytest.raises(ServerUnavailable):  # the fake serves "fake", not the tricky name: the probe refuses it
        run(config)
    argv = json.loads(re.search(r"^argv (.*)$", (fake.parent / SERVER_LOG).read_text(), re.M).group(1))
    assert argv[0] == "serve" and int(argv[1]) > 0
    assert argv[2:] == ["--batch=8", tricky, '{"json": 256}']  # one argument each; the empty one dropped
    assert not (fake.parent / "pwned").exists()


def test_server_config_becomes_the_config_file(fake):
    run(fake_config(fake, "serve", extra_args=["--config", "{config_file}", "--logs={log_dir}"],
                    server_config={"max-num-seqs": 8, "nested": {"a": [1, 2]}}))
    argv = json.loads(re.search(r"^argv (.*)$", (fake.parent / SERVER_LOG).read_text(), re.M).group(1))
    assert argv[2:] == ["--config", str(fake.parent / CONFIG_FILE), f"--logs={fake.parent}"]
    assert yaml.safe_load((fake.parent / CONFIG_FILE).read_text()) == {"max-num-seqs": 8, "nested": {"a": [1, 2]}}
    with pytest.raises(ValidationError, match="the command uses {config_file}: set server_config"):
        fake_config(fake, "serve", extra_args=["{config_file}"])


def test_render_command():
    assert render_command(["x", "--p={port}", "{flag}", "{on}"], {"port": 80, "flag": "", "on": True}) == \
        ["x", "--p=80", "true"]
    with pytest.raises(ServerStartError, match=r"needs \{max_batch_size\}, which has no value"):
        render_command(["--n", "{max_batch_size}"], {"max_batch_size": None})


def test_unknown_placeholder_is_a_config_error():
    with pytest.raises(ValidationError, match=r"command\[2\] '--x=\{max_batch\}': unknown placeholder \{max_batch\}"):
        ServerConfig(model="m", command=["srv", "{port}", "--x={max_batch}"])
    with pytest.raises(ValueError, match=r"params.*extra_args\[0\].*unknown placeholder \{nope\}"):
        EngineSpec(kind="server", model="m", params={"command": ["srv"], "extra_args": ["{nope}"]})


@pytest.mark.parametrize("preset, command", [
    ("vllm", ["vllm", "serve", "org/model", "--host", "127.0.0.1", "--port", "8123", "--max-num-seqs", "16",
              "--max-num-batched-tokens", "2048", "--gpu-memory-utilization", "0.85", "--tensor-parallel-size", "2",
              "--quantization", "fp8"]),
    ("sglang", [sys.executable, "-m", "sglang.launch_server", "--model-path", "org/model", "--host", "127.0.0.1",
                "--port", "8123", "--max-running-requests", "16", "--chunked-prefill-size", "2048",
                "--mem-fraction-static", "0.85", "--tp-size", "2", "--quantization", "fp8"]),
])
def test_presets_render_the_tuner_knobs_as_their_flags(preset, command):
    config = ServerConfig(model="org/model", preset=preset, max_batch_size=16, max_num_tokens=2048,
                          kv_cache_fraction=0.85, tp=2, quantization="fp8", extra_args=["--seed", "{seed}"],
                          knobs={"seed": 3})
    values = {**config.knob_values(), "host": "127.0.0.1", "port": 8123, "model": "org/model"}
    assert render_command(ServerAdapter().command_template(config), values) == command + ["--seed", "3"]
    assert ServerAdapter().default_health_path(config) == "/health"


def test_transformers_preset_and_its_limits():
    config = ServerConfig(model="m", preset="transformers", max_num_tokens=256, quantization="none")
    assert render_command(ServerAdapter().command_template(config), {**config.knob_values(), "host": "h", "port": 1,
                                                                      "model": "m"}) == \
        ["transformers", "serve", "m", "--host", "h", "--port", "1", "--continuous-batching",
         "--cb-max-batch-tokens", "256"]
    with pytest.raises(ValidationError, match="preset transformers has no flag for max_batch_size, tp"):
        ServerConfig(model="m", preset="transformers", max_batch_size=4, tp=2)
    with pytest.raises(ValidationError, match="command is required with preset custom"):
        ServerConfig(model="m")


def test_custom_knobs_are_declared_then_tuned_by_name():
    spec = EngineSpec(kind="server", model="m", params={"command": ["srv", "{chunk}"], "knobs": {"chunk": 512}})
    assert spec.resolve({"chunk": 1024, "max_batch_size": 4}).knob_values()["chunk"] == 1024
    assert spec.resolve().knob_values()["chunk"] == 512
    with pytest.raises(ValidationError, match="chunkk"):
        spec.resolve({"chunkk": 1})  # undeclared: unknown key
    with pytest.raises(ValidationError, match="port already named"):
        ServerConfig(model="m", command=["srv"], knobs={"port": 1})


def test_check():
    adapter = get_adapter("server")
    config = ServerConfig(model="m", command=["srv"], tp=2, pp=2, max_seq_len=1024)
    assert "4 GPUs, but this machine has 2" in adapter.check(config, Hardware(gpu_count=2))
    assert adapter.check(config, Hardware(gpu_count=4), max_sequence_tokens=1000) is None
    assert "shorter than the workload's longest sequence" in adapter.check(config, Hardware(gpu_count=4), 2000)
    assert adapter.check(ServerConfig(model="m", command=["srv"]), Hardware()) is None  # one GPU or none


# ---- secrets ----------------------------------------------------------------------------------------------

SECRET = "s3cr3t-token-value"


def test_env_secrets_reach_the_server_but_never_logs_or_errors(fake, monkeypatch):
    monkeypatch.setenv("HARNESS_TEST_SECRET", SECRET)
    env = {"SECRET_TOKEN": "${HARNESS_TEST_SECRET}", "PLAIN": "1"}
    _, lines, _ = run(fake_config(fake, "serve", env=env))
    assert all(SECRET not in line for line in lines)
    assert "SECRET_TOKEN='${HARNESS_TEST_SECRET}'" in lines[0]
    log = (fake.parent / SERVER_LOG).read_text()
    assert f"SECRET_TOKEN is {SECRET}" in log  # what the server printed itself: it got the value
    assert SECRET not in log.splitlines()[0]  # harness's launch line shows the reference only
    with pytest.raises(ServerStartError) as err:
        run(fake_config(fake, "crash", env=env))
    assert SECRET not in str(err.value) and "SECRET_TOKEN is ***" in str(err.value)


def test_env_reference_to_an_unset_variable_is_a_clear_error(fake, monkeypatch):
    monkeypatch.delenv("HARNESS_TEST_UNSET", raising=False)
    with pytest.raises(ServerStartError, match=r"\$\{HARNESS_TEST_UNSET\}, which is not set"):
        run(fake_config(fake, "serve", env={"X": "${HARNESS_TEST_UNSET}"}))

"""Launch an OpenAI-compatible server for each trial, then drive it as the `openai` adapter does.

Lifecycle of `ServerAdapter.start(config)`:
1. Render the command: an argument-list template (never a shell string), see below. A YAML config
   file, when the config has one, is written first to `<log_dir>/server-config.yaml`.
2. `Popen(argv, start_new_session=True)`: the server leads its own process group; stdout and stderr go
   to `<log_dir>/server.log`, which opens with the rendered command. `log_dir` defaults to the trial's
   directory (`$HARNESS_TRIAL_DIR`, set by harness in every trial), else a new temporary directory.
   On Linux the server gets SIGTERM if the process that launched it dies.
3. Poll `GET http://host:port<health_path>` every 0.2 s until it answers with a status below 500 (a
   5xx means still loading; 4xx means up: the next step gives the verdict). If the process exits
   first, fail at once with its exit code and the tail of its log; fail after `startup_timeout_s`.
4. Start the `openai` adapter against it (which checks that GET /v1/models lists `served_model`) and
   yield its engine.
5. Leaving, always: SIGTERM to the process group, up to `shutdown_timeout_s` for every process of the
   group to be gone, then SIGKILL to the group.

Command templates. `command` is a list of arguments; each may hold placeholders `{name}` (a Python
identifier in braces; any other brace is literal, so JSON arguments need no escaping), rendered per
start: `{host}`, `{port}`, `{model}`, `{served_model}`, `{log_dir}`, `{config_file}` (the written YAML)
and every knob (`knob_values`). An unknown name is a config error; a knob without a value at start is
a start error. Booleans render as `true`/`false`. An argument that renders to the empty string is
dropped, so a string knob can switch a flag on and off (choices `["", "--enable-x"]`). `extra_args`
(also templates) are appended. Without `command`, the preset's command is used.

Presets of the generic `server` kind: a command, and a flag per tuner knob, passed only when the knob
is set (quantization `none`: no flag); setting a knob that the preset has no flag for is a config error.
- vllm: `vllm serve {model} --host {host} --port {port}`; max_batch_size --max-num-seqs, max_num_tokens
  --max-num-batched-tokens, kv_cache_fraction --gpu-memory-utilization, tp --tensor-parallel-size,
  pp --pipeline-parallel-size, max_seq_len --max-model-len, quantization --quantization. Ready: /health.
- sglang: `<harness's python> -m sglang.launch_server --model-path {model} --host {host} --port {port}`;
  max_batch_size --max-running-requests, max_num_tokens --chunked-prefill-size, kv_cache_fraction
  --mem-fraction-static, tp --tp-size, pp --pp-size, max_seq_len --context-length, quantization
  --quantization. Ready: /health.
- transformers: `transformers serve {model} --host {host} --port {port} --continuous-batching`;
  max_num_tokens --cb-max-batch-tokens, kv_cache_fraction --cb-max-memory-percent, quantization
  --quantization (no flags for max_batch_size, tp, pp, max_seq_len). Ready: /health.
- custom: `command` (required), which places `{max_batch_size}` etc. itself. Ready: /v1/models.
vLLM's and SGLang's fractions are of the whole GPU memory (weights included), not of what is free after
the weights as in TensorRT-LLM. Custom knobs beyond these are declared in `knobs` with their defaults;
a search space may then tune them by name, and the template places them. `server_config`, when set, is
written as the YAML of `{config_file}` (vLLM's and SGLang's `--config`).

Secrets. `env` values may reference `${VAR}` of harness's own environment; only the unexpanded
templates are logged or stored, and the expanded values are scrubbed from error texts. Put secrets in
`env`, never in `command` (arguments are logged, and visible to every user of the machine).

`remote` is False: each start launches a server, so client processes (`runner.client_processes`),
which start the adapter each, would launch one server each.
"""
from __future__ import annotations

import asyncio
import contextlib
import ctypes
import datetime as dt
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, ClassVar, Literal

import aiohttp
import yaml
from pydantic import Field, create_model, model_validator

from engine_adapters.base import Engine, EngineAdapter, EngineConfig, Hardware, StreamEvent
from engine_adapters.builtin_models import BUILTIN_PREFIX, resolve_model
from engine_adapters.openai_http import OpenAIAdapter, OpenAIConfig
from workloads import RequestSpec

#: Set by harness in each trial process to the trial's directory: the default home of the server log.
TRIAL_DIR_ENV = "HARNESS_TRIAL_DIR"
SERVER_LOG = "server.log"
CONFIG_FILE = "server-config.yaml"

_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_LAUNCH_VALUES = ("host", "port", "model", "served_model", "log_dir", "config_file")
_TAIL_LINES = 20
_POLL_S = 0.2
_KILL_WAIT_S = 5.0

# The `openai` adapter's client options, passed through unchanged (its model and base_url come from the launch).
_CLIENT_OPTIONS = ("endpoint", "api_key_env", "tokenizer", "ignore_eos", "extra_body", "max_connections",
                   "connect_timeout_s")
_ClientOptions = create_model("_ClientOptions", __base__=EngineConfig, **{
    name: (OpenAIConfig.model_fields[name].annotation, OpenAIConfig.model_fields[name]) for name in _CLIENT_OPTIONS})


class ServerStartError(RuntimeError):
    """The server could not be launched or did not become ready; says why, with the tail of its log."""


class LaunchOptions(_ClientOptions):
    """How to run and reach the server process; shared by every launching adapter (see the module docstring)."""

    model: str = Field(description="model path or name, as the server's command takes it ({model})")
    command: list[str] | None = Field(None, min_length=1,
                                      description="argument-list template; None: the adapter's default")
    extra_args: list[str] = Field(default_factory=list, description="argument templates appended to the command")
    host: str = Field("127.0.0.1", description="the address the server listens on")
    port: int = Field(0, ge=0, le=65535, description="0: a free port, picked per start")
    env: dict[str, str] = Field(default_factory=dict, description="extra environment variables; ${VAR} expands")
    health_path: str | None = Field(None, description="polled until ready; None: the adapter's default")
    startup_timeout_s: float = Field(600.0, gt=0)
    shutdown_timeout_s: float = Field(30.0, gt=0, description="SIGTERM grace before SIGKILL")
    served_model: str | None = Field(None, description="model name sent in requests; None: the adapter's default")
    log_dir: str | None = Field(None, description=f"where server.log goes; None: ${TRIAL_DIR_ENV}, else a temp dir")

    def knob_values(self) -> dict[str, Any]:
        """The knobs that templates may place, by name (None: not set)."""
        return {}

    @model_validator(mode="after")
    def _placeholders_known(self):
        known = set(_LAUNCH_VALUES) | set(self.knob_values())
        for where, template in (("command", self.command or []), ("extra_args", self.extra_args)):
            for i, arg in enumerate(template):
                for name in _PLACEHOLDER.findall(arg):
                    if name not in known:
                        raise ValueError(f"{where}[{i}] {arg!r}: unknown placeholder {{{name}}}; known: "
                                         f"{', '.join(sorted(known))}")
        return self


@dataclass(frozen=True)
class _Preset:
    command: list[str]
    flags: dict[str, str]  # tuner knob -> flag
    health_path: str = "/health"


_PRESETS = {
    "vllm": _Preset(["vllm", "serve", "{model}", "--host", "{host}", "--port", "{port}"], {
        "max_batch_size": "--max-num-seqs", "max_num_tokens": "--max-num-batched-tokens",
        "kv_cache_fraction": "--gpu-memory-utilization", "tp": "--tensor-parallel-size",
        "pp": "--pipeline-parallel-size", "max_seq_len": "--max-model-len", "quantization": "--quantization"}),
    "sglang": _Preset([sys.executable, "-m", "sglang.launch_server", "--model-path", "{model}", "--host", "{host}",
                       "--port", "{port}"], {
        "max_batch_size": "--max-running-requests", "max_num_tokens": "--chunked-prefill-size",
        "kv_cache_fraction": "--mem-fraction-static", "tp": "--tp-size", "pp": "--pp-size",
        "max_seq_len": "--context-length", "quantization": "--quantization"}),
    "transformers": _Preset(["transformers", "serve", "{model}", "--host", "{host}", "--port", "{port}",
                             "--continuous-batching"], {
        "max_num_tokens": "--cb-max-batch-tokens", "kv_cache_fraction": "--cb-max-memory-percent",
        "quantization": "--quantization"}),
    "custom": _Preset([], {}, health_path="/v1/models"),
}
_TUNER_KNOBS = ("max_batch_size", "max_num_tokens", "kv_cache_fraction", "tp", "pp", "max_seq_len", "quantization")


class ServerConfig(LaunchOptions):
    """A server started from a preset or the user's command template (kind `server`)."""

    preset: Literal["custom", "vllm", "sglang", "transformers"] = "custom"
    max_batch_size: int | None = Field(None, ge=1)
    max_num_tokens: int | None = Field(None, ge=1)
    kv_cache_fraction: float | None = Field(None, gt=0, le=1)
    tp: int | None = Field(None, ge=1)
    pp: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=1)
    quantization: str | None = Field(None, description="the preset's quantization flag's value; none: no flag")
    knobs: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="custom knobs and their defaults; tuned by name, placed by the template")
    server_config: dict[str, Any] | None = Field(
        None, description=f"written as YAML to <log_dir>/{CONFIG_FILE}, whose path is {{config_file}}")

    @model_validator(mode="before")
    @classmethod
    def _fold_custom_knobs(cls, data: Any) -> Any:
        """A top-level key declared in `knobs` (the tuner sets knobs by name) overrides its default there."""
        if isinstance(data, dict) and isinstance(data.get("knobs"), dict):
            declared = data["knobs"]
            data = dict(data)
            data["knobs"] = {**declared, **{k: data.pop(k) for k in list(data) if k in declared}}
        return data

    @model_validator(mode="after")
    def _consistent(self):
        preset = _PRESETS[self.preset]
        if self.preset == "custom" and self.command is None:
            raise ValueError("command is required with preset custom (or pick a preset: vllm, sglang, transformers)")
        if self.command is None:
            unsupported = [k for k in _TUNER_KNOBS if getattr(self, k) not in (None, "none") and k not in preset.flags]
            if unsupported:
                raise ValueError(f"preset {self.preset} has no flag for {', '.join(unsupported)}: leave them unset "
                                 "or write the command yourself")
        clash = set(self.knobs) & (set(type(self).model_fields) | set(_LAUNCH_VALUES))
        if clash:
            raise ValueError(f"knobs: {', '.join(sorted(clash))} already named; pick other knob names")
        if self.server_config is None and any("{config_file}" in arg for arg in (self.command or []) + self.extra_args):
            raise ValueError("the command uses {config_file}: set server_config, the content of that file")
        return self

    def knob_values(self) -> dict[str, Any]:
        return {**{k: getattr(self, k) for k in _TUNER_KNOBS}, **self.knobs}


# ---- rendering: pure -------------------------------------------------------------------------------------

def _text(value: Any) -> str:
    return ("true" if value else "false") if isinstance(value, bool) else str(value)


def render_command(template: list[str], values: dict[str, Any]) -> list[str]:
    """`template` with each `{name}` replaced by `values[name]`; arguments rendering to "" are dropped.
    Raises ServerStartError for a placeholder without a value."""
    def value(match: re.Match) -> str:
        name = match.group(1)
        if values.get(name) is None:
            raise ServerStartError(f"the command needs {{{name}}}, which has no value: set {name} in the engine's "
                                   "params or the search space, or take it out of the command")
        return _text(values[name])

    return [arg for arg in (_PLACEHOLDER.sub(value, a) for a in template) if arg]


def flag_args(flags: dict[str, str], values: dict[str, Any]) -> list[str]:
    """`[flag, "{knob}"]` templates for each knob in `flags` that has a value (quantization `none`: no flag)."""
    return [arg for knob, flag in flags.items() if values.get(knob) not in (None, "none")
            for arg in (flag, f"{{{knob}}}")]


def expand_env(env: dict[str, str], parent: dict[str, str]) -> tuple[dict[str, str], list[str]]:
    """`env` with `${VAR}` taken from `parent`, and the expanded values (the secrets to scrub)."""
    secrets: list[str] = []

    def value(match: re.Match) -> str:
        if match.group(1) not in parent:
            raise ServerStartError(f"env refers to ${{{match.group(1)}}}, which is not set in harness's environment")
        secrets.append(parent[match.group(1)])
        return parent[match.group(1)]

    expanded = {name: _ENV_REFERENCE.sub(value, template) for name, template in env.items()}
    return expanded, [s for s in secrets if s]


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


# ---- the process ------------------------------------------------------------------------------------------

def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server listening on `host` (a wildcard: loopback)."""
    host = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]" if ":" in host else host


def _pdeathsig_setter():
    """A function to run in the server before exec, making Linux send it SIGTERM when the process that launched
    it dies; None where there is no prctl. Looked up here, in the parent: the forked child only calls it."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn(argv: list[str], env: dict[str, str], log_path: Path, launch: str) -> subprocess.Popen:
    """Start `argv` as the leader of a new process group, appending its output to `log_path` after a line
    saying `launch`; raise ServerStartError when it cannot be run at all."""
    with log_path.open("a") as log:
        log.write(f"[harness {dt.datetime.now().isoformat(timespec='seconds')}] {launch}\n")
        log.flush()
        try:
            return subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env={**os.environ, **env}, start_new_session=True,
                                    preexec_fn=_pdeathsig_setter())
        except OSError as exc:
            raise ServerStartError(f"cannot run {argv[0]!r}: {exc.strerror or exc}") from None


def _log_tail(path: Path, lines: int = _TAIL_LINES) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def group_alive(pgid: int) -> bool:
    """Whether any process of group `pgid` is still running (zombies do not count: on Linux, /proc is read,
    since orphans may never be reaped where PID 1 does not reap)."""
    proc = Path("/proc")
    if not proc.is_dir():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:  # exited while we looked
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


def _wait_group_gone(proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while True:
        proc.poll()  # reap the leader
        if not group_alive(proc.pid):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)


def stop_server(proc: subprocess.Popen, shutdown_timeout_s: float) -> None:
    """SIGTERM the server's process group, wait up to `shutdown_timeout_s` for all of it to exit, then SIGKILL
    it. Blocking on purpose: it must finish even while the caller is being cancelled."""
    for sig, wait_s in ((signal.SIGTERM, shutdown_timeout_s), (signal.SIGKILL, _KILL_WAIT_S)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        if _wait_group_gone(proc, wait_s):
            break
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=_KILL_WAIT_S)


async def wait_until_ready(proc: subprocess.Popen, url: str, timeout_s: float, log_path: Path,
                           headers: dict[str, str], describe: str, secrets: list[str]) -> None:
    """Poll GET `url` until it answers below 500; raise ServerStartError when the process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession(headers=headers) as session:
        while True:
            if (code := proc.poll()) is not None:
                how = f"was killed by signal {-code}" if code < 0 else f"exited with code {code}"
                raise ServerStartError(_scrub(f"the server {how} before it was ready ({describe}); last lines of "
                                              f"{log_path}:\n{_log_tail(log_path)}", secrets))
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError):
                async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status < 500:
                        return
            if time.monotonic() > deadline:
                raise ServerStartError(_scrub(f"the server did not answer GET {url} within {timeout_s:g} s "
                                              f"({describe}); last lines of {log_path}:\n{_log_tail(log_path)}",
                                              secrets))
            await asyncio.sleep(_POLL_S)


def check_size(gpus: int, max_seq_len: int | None, hardware: Hardware, max_sequence_tokens: int | None) -> str | None:
    """Why a server needing `gpus` GPUs (tp x pp) with sequences up to `max_seq_len` cannot run here, or None.
    A machine without GPUs runs one-GPU configs: the command may run the server elsewhere (a container)."""
    if gpus > max(hardware.gpu_count, 1):
        return f"tp x pp = {gpus} GPUs, but this machine has {hardware.gpu_count}"
    if max_sequence_tokens and max_seq_len and max_seq_len < max_sequence_tokens:
        return (f"max_seq_len {max_seq_len} is shorter than the workload's longest sequence "
                f"({max_sequence_tokens} tokens)")
    return None


def model_path(model: str) -> str:
    """`model` as a server's command takes it: a `builtin:` model as its local directory."""
    return str(resolve_model(model)) if model.startswith(BUILTIN_PREFIX) else model


async def _server_version(url: str) -> str | None:
    """The `version` of the JSON object at `url`, or None."""
    with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, LookupError, TypeError):
        async with aiohttp.ClientSession() as session:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return str((await resp.json(content_type=None))["version"]) if resp.status == 200 else None
    return None


class ServerEngine(Engine):
    """The `openai` engine of a launched server, with the launch in its log lines."""

    def __init__(self, inner: Engine, launch_log: list[str]):
        self._inner, self._launch_log = inner, launch_log
        self.token_space = inner.token_space

    def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        return self._inner.stream(request)

    def log_lines(self) -> list[str]:
        return self._launch_log + self._inner.log_lines()


class ServerAdapter(EngineAdapter):
    """Launches a server per `start` (see the module docstring); subclasses supply the default command,
    config file and served model name."""

    kind: ClassVar[str] = "server"
    Config: ClassVar[type[LaunchOptions]] = ServerConfig
    #: GET path answering {"version": ...} once ready (the fingerprint's engine_version), if the server has one
    version_path: ClassVar[str | None] = None

    def __init__(self) -> None:
        self._openai = OpenAIAdapter()
        self._started: dict[str, dict] = {}  # config JSON -> fingerprint of its last start

    # -- what subclasses vary ------------------------------------------------------------------------------
    def default_command(self, config: ServerConfig) -> list[str]:
        preset = _PRESETS[config.preset]
        return preset.command + flag_args(preset.flags, config.knob_values())

    def default_health_path(self, config: ServerConfig) -> str:
        return _PRESETS[config.preset].health_path

    def default_served_model(self, config: LaunchOptions, model_arg: str) -> str:
        """The served model name when `served_model` is unset; `model_arg` is what `{model}` renders to."""
        return model_arg

    def config_file(self, config: ServerConfig) -> dict | None:
        """The content of `{config_file}`, or None when there is none."""
        return config.server_config

    def engine_name(self, config: ServerConfig) -> str:
        return config.preset if config.command is None else Path(config.command[0]).name

    # -- the contract --------------------------------------------------------------------------------------
    def check(self, config: ServerConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        return check_size((config.tp or 1) * (config.pp or 1), config.max_seq_len, hardware, max_sequence_tokens)

    def command_template(self, config: LaunchOptions) -> list[str]:
        return (config.command or self.default_command(config)) + config.extra_args

    @contextlib.asynccontextmanager
    async def start(self, config: LaunchOptions):
        port = config.port or _free_port(config.host)
        log_dir = Path(config.log_dir or os.environ.get(TRIAL_DIR_ENV) or tempfile.mkdtemp(prefix="harness-server-"))
        log_dir.mkdir(parents=True, exist_ok=True)
        model_arg = await asyncio.to_thread(model_path, config.model)  # may build a builtin model
        served = config.served_model or self.default_served_model(config, model_arg)
        content = self.config_file(config)
        config_path = log_dir / CONFIG_FILE if content is not None else None
        if config_path is not None:
            config_path.write_text(yaml.safe_dump(content, sort_keys=False))
        values = {**config.knob_values(), "host": config.host, "port": port, "model": model_arg,
                  "served_model": served, "log_dir": str(log_dir), "config_file": config_path}
        argv = render_command(self.command_template(config), values)
        env, secrets = expand_env(config.env, dict(os.environ))
        log_path = log_dir / SERVER_LOG
        shown_env = " ".join(f"{k}={shlex.quote(v)}" for k, v in config.env.items())
        launch = f"$ {shown_env + ' ' if shown_env else ''}{shlex.join(argv)}"
        proc = spawn(argv, env, log_path, launch)
        try:
            base_url = f"http://{_client_host(config.host)}:{port}"
            client = OpenAIConfig(model=served, base_url=base_url,
                                  **{name: getattr(config, name) for name in _CLIENT_OPTIONS})
            key = os.environ.get(config.api_key_env) if config.api_key_env else None
            await wait_until_ready(proc, base_url + (config.health_path or self.default_health_path(config)),
                                   config.startup_timeout_s, log_path,
                                   {"Authorization": f"Bearer {key}"} if key else {}, f"pid {proc.pid}, {launch}",
                                   secrets + ([key] if key else []))
            version = await _server_version(base_url + self.version_path) if self.version_path else None
            async with self._openai.start(client) as engine:
                fingerprint = {**self._openai.fingerprint(client), "engine": self.engine_name(config),
                               "command": argv, "served_model": served}
                if version:
                    fingerprint["engine_version"] = version
                self._started[config.model_dump_json()] = fingerprint
                yield ServerEngine(engine, [f"launched server pid {proc.pid}, log {log_path}: {launch}"])
        finally:
            stop_server(proc, config.shutdown_timeout_s)

    def fingerprint(self, config: LaunchOptions) -> dict:
        """What the last start of `config` learnt from the server (its Server header as the version), or the
        config alone when it has not been started in this process."""
        return self._started.get(config.model_dump_json()) or {
            "engine": self.engine_name(config), "engine_version": "unknown", "simulated": False,
            "model": config.model, "served_model": config.served_model}

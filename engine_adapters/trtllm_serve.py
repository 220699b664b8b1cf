"""TensorRT-LLM's OpenAI-compatible server, `trtllm-serve`, launched per trial (kind `trtllm_serve`).

The trial's knobs (`TrtllmKnobs`, see `trtllm_args`) become (a) the YAML file for
`--extra_llm_api_options` (`llm_api_options`: every LlmArgs the knobs set; trtllm-serve lets it
override its flags) and (b) the command, whose flags follow `trtllm-serve`'s CLI
(`tensorrt_llm/commands/serve.py`, NVIDIA/TensorRT-LLM main at 00209af1, where `--tp_size`, `--pp_size`,
`--kv_cache_free_gpu_memory_fraction` and `--extra_llm_api_options` are aliases of longer names, kept
because older releases know only them):

    trtllm-serve {model} --host {host} --port {port} --backend {backend}
        --tp_size {tensor_parallel_size} --pp_size {pipeline_parallel_size}
        --max_batch_size {max_batch_size} --max_num_tokens {max_num_tokens} [--max_seq_len {max_seq_len}]
        --kv_cache_free_gpu_memory_fraction {kv_cache_fraction} --extra_llm_api_options {config_file}

Readiness is `GET /health`; the served model name is the model directory's name for a local
checkpoint (as trtllm-serve's OpenAIServer names it), else the model as given. `builtin:` models are
passed as their local directory. Everything else (the process group, logs, shutdown, `command`
override, `env`, the client options) is `server_launcher`'s: `command` may point at any executable
(a container wrapper, or another OpenAI-compatible server for tests), with the same placeholders.

Before launch: `unavailable(config)` finds the command's executable (trtllm-serve, or `command[0]`) as
the launch would; `check` adds it to the checks the `tensorrt_llm` kind makes that need no local
TensorRT-LLM (compute capability, the checkpoint's quantization on the PyTorch backend, the longest
prompt against max_num_tokens without chunked prefill; see trtllm_args).

`deployment_files` renders the same command and YAML for production: `trtllm-serve.yaml` and an
executable `trtllm-serve.sh`, written next to recommended.yaml for TensorRT-LLM studies.
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path
from typing import Any, ClassVar

import yaml

from engine_adapters.base import Hardware
from engine_adapters.server_launcher import (
    LaunchOptions,
    ServerAdapter,
    ServerStartError,
    check_size,
    expand_env,
    model_path,
    render_command,
)
from engine_adapters.tensorrt_llm import INSTALL_HINT
from engine_adapters.trtllm_args import (
    TrtllmKnobs,
    compute_capability_problem,
    llm_api_options,
    llm_snippet,
    prompt_problem,
    quantization_problem,
)
from engine_adapters.trtllm_sizing import bench_point, bench_point_unavailable_reason

#: The engine kinds whose recommended config deploys as trtllm-serve.
TRTLLM_KINDS = ("tensorrt_llm", "trtllm_serve")
SERVE_YAML, SERVE_SCRIPT = "trtllm-serve.yaml", "trtllm-serve.sh"
_NOT_PLACEABLE = ("model", "extra_llm_api_options")


class TrtllmServeConfig(TrtllmKnobs, LaunchOptions):
    """TensorRT-LLM's knobs plus how to launch and reach trtllm-serve (`command`: None for trtllm-serve itself)."""

    def knob_values(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in TrtllmKnobs.model_fields if name not in _NOT_PLACEABLE}


def serve_command(knobs: TrtllmKnobs) -> list[str]:
    """The trtllm-serve argument template for `knobs` (placeholders as in `server_launcher`)."""
    return ["trtllm-serve", "{model}", "--host", "{host}", "--port", "{port}", "--backend", "{backend}",
            "--tp_size", "{tensor_parallel_size}", "--pp_size", "{pipeline_parallel_size}",
            "--max_batch_size", "{max_batch_size}", "--max_num_tokens", "{max_num_tokens}",
            *(["--max_seq_len", "{max_seq_len}"] if knobs.max_seq_len is not None else []),
            "--kv_cache_free_gpu_memory_fraction", "{kv_cache_fraction}", "--extra_llm_api_options", "{config_file}"]


class TrtllmServeAdapter(ServerAdapter):
    kind: ClassVar[str] = "trtllm_serve"
    Config: ClassVar[type[LaunchOptions]] = TrtllmServeConfig
    version_path: ClassVar[str | None] = "/version"

    def default_command(self, config: TrtllmServeConfig) -> list[str]:
        return serve_command(config)

    def default_health_path(self, config: TrtllmServeConfig) -> str:
        return "/health"

    def default_served_model(self, config: TrtllmServeConfig, model_arg: str) -> str:
        return Path(model_arg).name if Path(model_arg).is_dir() else config.model

    def config_file(self, config: TrtllmServeConfig) -> dict:
        return llm_api_options(config)

    def engine_name(self, config: TrtllmServeConfig) -> str:
        return "trtllm-serve" if config.command is None else Path(config.command[0]).name

    def heuristic_point(self, config: TrtllmServeConfig, hardware: Hardware, input_tokens: float,
                        output_tokens: float, max_input_tokens: int | None = None) -> dict | None:
        """trtllm-bench's sizing rule (engine_adapters/trtllm_sizing.py), as for the `tensorrt_llm` kind."""
        return bench_point(config, hardware, input_tokens, output_tokens, max_input_tokens)

    def heuristic_unavailable(self, config: TrtllmServeConfig, hardware: Hardware, input_tokens: float,
                              output_tokens: float) -> str | None:
        """Why `heuristic_point` returns None for these arguments, or None."""
        return bench_point_unavailable_reason(config, hardware, input_tokens, output_tokens)

    def unavailable(self, config: TrtllmServeConfig | None = None) -> str | None:
        """Why `config`'s command cannot start here: its executable (trtllm-serve, or `params.command[0]`) is not
        found as the launch would look for it (PATH, including one set in `params.env`). None without a config: a
        `command` may run anything, so only a config tells."""
        if config is None:
            return None
        exe = self.command_template(config)[0]
        try:
            path = expand_env(config.env, dict(os.environ))[0].get("PATH")
        except ServerStartError as e:
            return str(e)
        if "{" in exe or shutil.which(exe, path=path):  # a placeholder is known only at launch
            return None
        if config.command is None:
            return (f"trtllm-serve is not on PATH; install TensorRT-LLM {INSTALL_HINT}, or set engine.params.command "
                    "to an argument list that runs it (a container wrapper, for instance)")
        return f"engine.params.command[0] {exe!r} is not an executable file, nor found on PATH"

    def check(self, config: TrtllmServeConfig, hardware: Hardware, max_sequence_tokens: int | None = None,
              max_input_tokens: int | None = None) -> str | None:
        """As EngineAdapter.check, plus `unavailable(config)`, the checkpoint's quantization (backend pytorch) and the
        workload's longest prompt (`max_input_tokens`, where known) against max_num_tokens without chunked prefill."""
        problem = (self.unavailable(config) or compute_capability_problem(config, hardware.compute_capability)
                   or quantization_problem(config) or prompt_problem(config, max_input_tokens))
        if problem is not None:
            return problem
        return check_size(config.tensor_parallel_size * config.pipeline_parallel_size, config.max_seq_len,
                          hardware, max_sequence_tokens)


# ---- deployment files -------------------------------------------------------------------------------------

def _knobs(engine_config: dict) -> TrtllmKnobs:
    return TrtllmKnobs(**{k: v for k, v in engine_config.items() if k in TrtllmKnobs.model_fields})


def _default_word(text: str) -> str:
    """`text` as the default word of a double-quoted `${VAR:-word}`: backslash before \\ " $ ` and }."""
    return re.sub(r'([\\"$`}])', r"\\\1", text)


def serve_script(knobs: TrtllmKnobs, header: str = "") -> str:
    """A bash script running trtllm-serve with `knobs` on port 8000 (or $PORT), the model from $MODEL (default:
    `knobs.model`), and the YAML `SERVE_YAML` next to the script."""
    shell = {"{model}": f'"${{MODEL:-{_default_word(model_path(knobs.model))}}}"', "{port}": '"${PORT:-8000}"',
             "{config_file}": f'"$(dirname "${{BASH_SOURCE[0]}}")/{SERVE_YAML}"'}
    values = {**{k: getattr(knobs, k) for k in TrtllmKnobs.model_fields}, "host": "0.0.0.0"}
    args = [shell.get(arg) or shlex.quote(render_command([arg], values)[0]) for arg in serve_command(knobs)]
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return (f"#!/usr/bin/env bash\n{comment}# MODEL: the model path or name; PORT: the port (default 8000).\n"
            f"set -euo pipefail\n" + "exec " + " \\\n    ".join(_pairs(args)) + "\n")


def _pairs(args: list[str]) -> list[str]:
    """Each `--flag value` on one line."""
    lines: list[str] = []
    for arg in args:
        if lines and lines[-1].startswith("--") and " " not in lines[-1] and not arg.startswith("--"):
            lines[-1] += " " + arg
        else:
            lines.append(arg)
    return lines


def deployment_files(kind: str, engine_config: dict, header: str = "") -> dict[str, str]:
    """{file name: content} of the trtllm-serve deployment of a resolved engine config dict (empty for kinds
    other than TRTLLM_KINDS): the `--extra_llm_api_options` YAML and the script running it."""
    if kind not in TRTLLM_KINDS:
        return {}
    knobs = _knobs(engine_config)
    comment = "".join(f"# {line}\n" for line in header.splitlines())
    return {SERVE_YAML: comment + yaml.safe_dump(llm_api_options(knobs), sort_keys=False),
            SERVE_SCRIPT: serve_script(knobs, header)}


def deployment_snippet(kind: str, engine_config: dict) -> str | None:
    """The equivalent `LLM(...)` Python code of a resolved engine config dict (None for other kinds)."""
    return llm_snippet(_knobs(engine_config)) if kind in TRTLLM_KINDS else None

"""A mock OpenAI-compatible streaming server (SIMULATED: part of the mock engine; its timings follow a
script, they measure no hardware). It is the test fixture of the `openai` adapter and the reference of
client calibration: the true times are known, so the client's error can be measured.

Service script. A request arrives, waits FIFO for one of `max_concurrency` slots (0: unlimited), then
"generates" output token i at the absolute deadline `start + ttft_ms + i * itl_ms`, where `start` is
when it left the queue. Tokens go out `tokens_per_chunk` to an SSE event; an event leaves when its last
token is due (so with k tokens per chunk the first event leaves at `ttft_ms + (k - 1) * itl_ms`, as
from a real server that streams every k tokens). Deadlines are absolute, so a late wake-up never
shifts later tokens, and no event leaves before its deadline. A chat stream opens, when the request
leaves the queue, with an event holding the assistant role and no content, as OpenAI's does.

Output is `max_tokens` tokens exactly (EOS is never sampled); token i is the single letter
`"abc...z"[i % 26]`, one token of any byte-level tokenizer. `prompt_tokens` is the number of UTF-8
bytes of the prompt (of the concatenated message contents for chat), or the length of a token-id prompt.

Every streamed event carries the server's send time `"mock_t_ns"` (time.perf_counter_ns, i.e.
CLOCK_MONOTONIC, comparable across processes of this machine); the first event with tokens also
carries `"mock_queue_ns"`, the time spent waiting for a slot. `GET /mock/log` returns one entry per
request (matched to clients by the `X-Request-Id` header): prompt tokens, arrival, start (left the
queue) and queue time, each token event's send time and token count, and the outcome. The log lives
as long as the server.

Fault injection: request number n (0-based, in arrival order) fails with probability `error_rate`,
drawn by a RNG seeded with (`seed`, n), see `planned_fault`; the kind is picked uniformly from
`error_kinds`: `http_500` (JSON error at once), `drop` (the connection is cut after the first half
of the token events), `malformed` (half the events, then one that is not JSON) or `error_event` (half
the events, then an OpenAI `error` object and `[DONE]`). Non-streaming requests get every fault as HTTP 500.

Run it with `python -m engine_adapters.mock_server --port 0 [--ttft-ms 20 ...]` (one flag per
`MockServerConfig` field; prints `listening on http://127.0.0.1:PORT`, serves until SIGTERM, on uvloop
when installed), or from Python with `run_mock_server(config)`, which starts it as a subprocess.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Iterator, Literal, get_args, get_origin

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from engine_adapters.base import sleep_until

#: `owned_by` of the mock's models in `GET /v1/models`: how a client tells the server is simulated.
MOCK_OWNED_BY = "harness-mock"
SERVER_HEADER = "harness-mock/1"
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_DEFAULT_MAX_TOKENS = 16  # the OpenAI default when a request sets none

Fault = Literal["http_500", "drop", "malformed", "error_event"]


class MockServerConfig(BaseModel):
    """The service script of the mock server (see the module docstring)."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model: str = Field("mock", description="the one served model name; other names get HTTP 404")
    ttft_ms: float = Field(20.0, ge=0, description="from arrival, or from leaving the queue, to the first token")
    itl_ms: float = Field(10.0, ge=0, description="between consecutive output tokens")
    tokens_per_chunk: int = Field(1, ge=1, description="output tokens per SSE event")
    max_concurrency: int = Field(0, ge=0, description="requests served at once; more wait FIFO (0: unlimited)")
    error_rate: float = Field(0.0, ge=0, le=1, description="fraction of requests that fail")
    error_kinds: list[Fault] = Field(["http_500", "drop"], min_length=1, description="how failing requests fail")
    seed: int = 0
    usage: bool = Field(True, description="honour stream_options usage requests; false: never report usage")
    send_done: bool = Field(True, description="end streams with `data: [DONE]` (false: like transformers serve)")
    api_key_env: str | None = Field(None, description="require `Authorization: Bearer $VAR` when VAR is set")


def planned_fault(config: MockServerConfig, index: int) -> Fault | None:
    """The fault injected into the `index`-th request to arrive (0-based), or None: a pure function."""
    u = random.Random(f"{config.seed}:{index}").random()
    if u >= config.error_rate:
        return None
    return config.error_kinds[int(u / config.error_rate * len(config.error_kinds))]


class _BadRequest(Exception):
    """An invalid request body; the message goes back to the client as HTTP 400."""


@dataclass
class _Request:
    """One parsed request and its log entry."""

    chat: bool
    stream: bool
    max_tokens: int
    prompt_tokens: int
    include_usage: bool
    continuous_usage: bool
    entry: dict = field(default_factory=dict)
    created: int = field(default_factory=lambda: int(time.time()))

    @classmethod
    def parse(cls, body, chat: bool, config: MockServerConfig) -> "_Request":
        """Validate a request body; raise _BadRequest saying what is wrong."""
        if not isinstance(body, dict):
            raise _BadRequest("the body must be a JSON object")
        options = body.get("stream_options") or {}
        return cls(chat=chat, stream=bool(body.get("stream")), max_tokens=_max_tokens(body, chat),
                   prompt_tokens=_prompt_tokens(body, chat),
                   include_usage=config.usage and bool(options.get("include_usage")),
                   continuous_usage=config.usage and bool(options.get("continuous_usage_stats")))

    @property
    def chunk_id(self) -> str:
        return f"{'chatcmpl' if self.chat else 'cmpl'}-mock-{self.entry['index']}"

    def usage(self, completion_tokens: int) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": self.prompt_tokens + completion_tokens}

    def choice(self, text: str, finish_reason: str | None, role: bool = False) -> dict:
        """The one choice of a response or chunk: completions text, a chat message, or a chat delta
        (with the assistant role when `role`)."""
        if not self.chat:
            return {"index": 0, "text": text, "logprobs": None, "finish_reason": finish_reason}
        if not self.stream:
            return {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish_reason}
        delta = {"role": "assistant", "content": text} if role else {"content": text}
        return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}


def _output_text(first: int, stop: int) -> str:
    """Output tokens first..stop-1: one letter each."""
    return "".join(_ALPHABET[i % 26] for i in range(first, stop))


def _prompt_tokens(body: dict, chat: bool) -> int:
    if chat:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("`messages` must be a non-empty list")
        return sum(len(_content_text(m).encode()) for m in messages)
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return len(prompt.encode())
    if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
        return len(prompt)
    raise _BadRequest("`prompt` must be a string or a non-empty list of token ids (one prompt per request)")


def _content_text(message) -> str:
    content = message.get("content") if isinstance(message, dict) else None
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    raise _BadRequest("each message needs a `content` string or a list of text parts")


def _max_tokens(body: dict, chat: bool) -> int:
    value = body.get("max_completion_tokens") if chat else None
    value = body.get("max_tokens", _DEFAULT_MAX_TOKENS) if value is None else value
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise _BadRequest(f"max_tokens must be a positive integer, got {value!r}")
    return value


def _error_body(message: str, kind: str, code: int) -> dict:
    return {"error": {"message": message, "type": kind, "code": code}}


def _sse(payload: dict | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class _MockServer:
    """Request handling and state of one server: the capacity slots and the request log."""

    def __init__(self, config: MockServerConfig):
        self.config = config
        self.slots = asyncio.Semaphore(config.max_concurrency) if config.max_concurrency else None
        self.log: list[dict] = []
        self.api_key = os.environ.get(config.api_key_env) if config.api_key_env else None

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if self.api_key is None or request.headers.get("Authorization") == f"Bearer {self.api_key}":
            return None
        got = request.headers.get("Authorization", "").removeprefix("Bearer ")
        # Echoes the key it got, as some servers do, so tests can prove that clients redact it.
        return web.json_response(_error_body(f"invalid API key {got!r}", "AuthenticationError", 401), status=401)

    async def models(self, request: web.Request) -> web.Response:
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        return web.json_response({"object": "list", "data": [
            {"id": self.config.model, "object": "model", "created": 0, "owned_by": MOCK_OWNED_BY}]})

    async def request_log(self, request: web.Request) -> web.Response:
        return web.json_response({"requests": self.log})

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, chat=True)

    async def _serve(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival_ns = time.perf_counter_ns()
        if (refusal := self._unauthorized(request)) is not None:
            return refusal
        try:
            body = await request.json()
            req = _Request.parse(body, chat, self.config)
        except (ValueError, _BadRequest) as exc:  # json.JSONDecodeError is a ValueError
            return web.json_response(_error_body(f"bad request: {exc}", "BadRequestError", 400), status=400)
        if body.get("model") != self.config.model:
            return web.json_response(_error_body(f"The model `{body.get('model')}` does not exist.",
                                                 "NotFoundError", 404), status=404)
        index = len(self.log)
        fault = planned_fault(self.config, index)
        if fault and not req.stream:
            fault = "http_500"
        req.entry = {"id": request.headers.get("X-Request-Id", f"mock-{index}"), "index": index,
                     "endpoint": "chat" if chat else "completions", "prompt_tokens": req.prompt_tokens,
                     "arrival_ns": arrival_ns, "start_ns": None, "queue_ns": None,
                     "chunk_ns": [], "chunk_tokens": [], "outcome": fault or "ok"}
        self.log.append(req.entry)
        if fault == "http_500":
            return web.json_response(_error_body("mock: injected server error", "InternalServerError", 500),
                                     status=500)
        queued_ns = time.perf_counter_ns()
        async with self.slots or contextlib.nullcontext():
            start_ns = time.perf_counter_ns()
            req.entry.update(start_ns=start_ns, queue_ns=start_ns - queued_ns)
            if req.stream:
                return await self._stream(request, req, start_ns, fault)
            await sleep_until(self._deadline(start_ns, req.max_tokens - 1))
            return web.json_response(self._whole(req))

    def _deadline(self, start_ns: int, token: int) -> int:
        return start_ns + int((self.config.ttft_ms + token * self.config.itl_ms) * 1e6)

    def _whole(self, req: _Request) -> dict:
        body = {"id": req.chunk_id, "object": "chat.completion" if req.chat else "text_completion",
                "created": req.created, "model": self.config.model,
                "choices": [req.choice(_output_text(0, req.max_tokens), "length")]}
        if self.config.usage:
            body["usage"] = req.usage(req.max_tokens)
        return body

    def _chunk(self, req: _Request, choices: list, completion_tokens: int) -> dict:
        chunk = {"id": req.chunk_id, "object": "chat.completion.chunk" if req.chat else "text_completion",
                 "created": req.created, "model": self.config.model, "choices": choices}
        if req.continuous_usage:
            chunk["usage"] = req.usage(completion_tokens)
        return chunk

    async def _stream(self, request: web.Request, req: _Request, start_ns: int, fault: Fault | None
                      ) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def send(payload: dict | str) -> int:
            if isinstance(payload, str):
                t_ns = time.perf_counter_ns()
                await resp.write(_sse(payload))
                return t_ns
            # serialized before the clock is read, so that the stamp is as close to the write as can be
            head = json.dumps(payload, separators=(",", ":"))[:-1]
            t_ns = time.perf_counter_ns()
            await resp.write(f'data: {head},"mock_t_ns":{t_ns}}}\n\n'.encode())
            return t_ns

        k, n = self.config.tokens_per_chunk, req.max_tokens
        chunk_starts = range(0, n, k)
        fault_at = len(chunk_starts) // 2 * k if fault else None
        try:
            if req.chat:  # OpenAI servers open a chat stream with the role and no content
                await send(self._chunk(req, [req.choice("", None, role=True)], 0))
            for first in chunk_starts:
                if first == fault_at:
                    return await self._fail_stream(request, resp, fault, send)
                last = min(first + k, n) - 1
                await sleep_until(self._deadline(start_ns, last))
                finish = "length" if last == n - 1 else None
                chunk = self._chunk(req, [req.choice(_output_text(first, last + 1), finish)], last + 1)
                if first == 0:
                    chunk["mock_queue_ns"] = req.entry["queue_ns"]
                req.entry["chunk_ns"].append(await send(chunk))
                req.entry["chunk_tokens"].append(last - first + 1)
            if req.include_usage:
                await send({**self._chunk(req, [], n), "usage": req.usage(n)})
            if self.config.send_done:
                await send("[DONE]")
            await resp.write_eof()
        except ConnectionResetError:  # the client went away; its slot is freed on the way out
            req.entry["outcome"] = "client_gone"
        return resp

    @staticmethod
    async def _fail_stream(request: web.Request, resp: web.StreamResponse, fault: Fault, send
                           ) -> web.StreamResponse:
        if fault == "drop":
            request.transport.abort()
            return resp
        if fault == "malformed":
            await send('{"choices": [{"index": 0, "text": "trunc')
        else:
            await send(_error_body("mock: injected error event", "InternalServerError", 500))
        await send("[DONE]")
        await resp.write_eof()
        return resp


def build_app(config: MockServerConfig) -> web.Application:
    """The aiohttp application of a mock server with `config` (create it inside a running event loop)."""
    server = _MockServer(config)
    app = web.Application()
    app.router.add_get("/v1/models", server.models)
    app.router.add_post("/v1/completions", server.completions)
    app.router.add_post("/v1/chat/completions", server.chat_completions)
    app.router.add_get("/mock/log", server.request_log)

    async def label(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["Server"] = SERVER_HEADER

    app.on_response_prepare.append(label)
    return app


# ---- command line: one flag per MockServerConfig field, so the two cannot drift apart -------------------

def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def cli_args(config: MockServerConfig) -> list[str]:
    """The command-line flags that make `python -m engine_adapters.mock_server` serve `config`."""
    args: list[str] = []
    for name in MockServerConfig.model_fields:
        value = getattr(config, name)
        if isinstance(value, bool):
            args.append(_flag(name) if value else "--no-" + _flag(name)[2:])
        elif isinstance(value, list):
            args += [_flag(name), *map(str, value)]
        elif value is not None:
            args += [_flag(name), str(value)]
    return args


def _parse_args(argv: list[str] | None) -> tuple[str, int, MockServerConfig]:
    parser = argparse.ArgumentParser(prog="python -m engine_adapters.mock_server",
                                     description="Mock OpenAI-compatible streaming server (simulated).")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    for name, info in MockServerConfig.model_fields.items():
        kwargs: dict = {"dest": name, "help": info.description}
        if info.annotation is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif get_origin(info.annotation) is list:
            kwargs["nargs"] = "+"
            kwargs["choices"] = get_args(get_args(info.annotation)[0])
        parser.add_argument(_flag(name), **kwargs)
    ns = vars(parser.parse_args(argv))
    host, port = ns.pop("host"), ns.pop("port")
    return host, port, MockServerConfig(**{k: v for k, v in ns.items() if v is not None})


async def _serve_forever(config: MockServerConfig, host: str, port: int) -> None:
    runner = web.AppRunner(build_app(config), access_log=None)
    await runner.setup()
    sock = socket.create_server((host, port), backlog=1024)
    await web.SockSite(runner, sock).start()
    gc.collect()
    gc.freeze()  # the imported libraries' objects stay out of the full collections that would stall streams
    print(f"listening on http://{host}:{sock.getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> None:
    host, port, config = _parse_args(argv)
    try:
        import uvloop
    except ImportError:
        asyncio.run(_serve_forever(config, host, port))
    else:
        uvloop.run(_serve_forever(config, host, port))


@contextlib.contextmanager
def run_mock_server(config: MockServerConfig | None = None, startup_timeout_s: float = 20.0) -> Iterator[str]:
    """Start a mock server subprocess on a free loopback port; yield its base URL once it accepts
    connections; terminate it on exit. Raises RuntimeError if it does not come up in time."""
    cmd = [sys.executable, "-m", "engine_adapters.mock_server", "--port", "0", *cli_args(config or MockServerConfig())]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        ready, _, _ = select.select([proc.stdout], [], [], startup_timeout_s)
        line = proc.stdout.readline() if ready else ""
        match = re.fullmatch(r"listening on (http://\S+)", line.strip())
        if not match:
            raise RuntimeError(f"mock server did not start within {startup_timeout_s:g} s "
                               f"(exit code {proc.poll()}, said {line.strip()!r}): {' '.join(cmd)}")
        yield match.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()


if __name__ == "__main__":
    main()

"""Any OpenAI-compatible streaming server: `/v1/completions` or `/v1/chat/completions` over SSE (vLLM,
SGLang, TGI, `transformers serve`, trtllm-serve, and the simulated `mock_server`).

Requests. One streaming POST per request, with `max_tokens = max_output_tokens`, `ignore_eos` (so that
vLLM and TRT-LLM servers produce exactly that many tokens; OpenAI's own API rejects the field: turn it
off there), `stream_options: {include_usage, continuous_usage_stats}` (servers ignore options they do
not know), `extra_body` merged last, and the header `X-Request-Id: <request id>` so that server logs
can be matched to records. Completions send a prompt the workload gives as text (datasets) as that text,
for the server to tokenize as it would in production (as `vllm bench serve` does; `transformers serve`
takes nothing else), and a token-id-only prompt as the `prompt` list of ints (vLLM and TRT-LLM accept it).
Chat sends text: a token-id prompt becomes text that `tokenizer` encodes to exactly its length
(workloads.text_prompts: words of the tokenizer's text-safe vocabulary, which is then also the only
vocabulary random prompts draw from, so that shared token prefixes stay shared text prefixes); without a
tokenizer a token-id prompt cannot be sent to chat and fails, saying so.

Prompt lengths. The server's `usage.prompt_tokens` (its own count, with the chat template and any special
tokens it adds) comes back on a last event as `server_input_tokens`, for the runner to record, and with it
`usage.prompt_tokens_details.cached_tokens` (prompt tokens the server took from its prefix cache; vLLM sends it
with --enable-prompt-tokens-details) as `cached_prompt_tokens`, where the server sends it.

Timing. Each SSE event is stamped with time.perf_counter_ns() as soon as the bytes holding its first
data line are read off the connection, and becomes one StreamEvent(t_ns, n_tokens); the runner spreads
a chunk's tokens over the gap since the previous chunk. See `OutputCounter` for where n_tokens comes from.
A chunk's `mock_t_ns` field (the harness mock server's send time, same clock) becomes `server_t_ns`.

Failures are data, never raised: an HTTP status other than 200, a connection error or timeout, a
stream that ends before `data: [DONE]` (or, for servers that never send it such as `transformers serve`, before
a chunk with a `finish_reason`), an event that is not JSON, or an `error` object in the stream
ends the request with an error event. Only `start` raises (`ServerUnavailable`), before measuring.

Secrets: the API key is read from `$api_key_env` when the engine starts and sent as `Authorization:
Bearer`; it is never logged, stored, fingerprinted or shown in an error (error texts are scrubbed of it).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, AsyncIterable, AsyncIterator, Callable, Literal, NamedTuple

import aiohttp
from pydantic import Field
from yarl import URL

from engine_adapters.base import Engine, EngineAdapter, EngineConfig, StreamEvent
from engine_adapters.builtin_models import HFTokenizer, require_torch_transformers, resolve_model
from engine_adapters.mock_server import MOCK_OWNED_BY
from workloads import RequestSpec, TokenSpace
from workloads.text_prompts import TextVocabulary, text_vocabulary

log = logging.getLogger(__name__)

_INFORMATIONAL = "not settable on an already-running server; informational"

#: Without a tokenizer the vocabulary is unknown: token-id prompts then draw from ids 4..999, which every
#: real vocabulary has; 0..3 are left out because most vocabularies keep their special tokens there.
FALLBACK_TOKEN_SPACE = TokenSpace(vocab_size=1000, reserved_ids=frozenset(range(4)))

_EXCERPT_CHARS = 200


class OpenAIConfig(EngineConfig):
    model: str = Field(description="the served model name, as listed by GET /v1/models")
    base_url: str = Field("http://127.0.0.1:8000", description="the server's root URL (a trailing /v1 is accepted)")
    endpoint: Literal["completions", "chat"] = "completions"
    api_key_env: str | None = Field("OPENAI_API_KEY", description="environment variable holding the API key")
    tokenizer: str | None = Field(None, description="builtin:NAME or a local HF model directory: counts output "
                                  "tokens when the server reports no usage; writes token-id prompts as text of "
                                  "their exact length for chat")
    ignore_eos: bool = Field(True, description="send ignore_eos, so output length = max_tokens (vLLM, TRT-LLM)")
    extra_body: dict[str, Any] = Field(default_factory=dict, description="merged into every request body, last")
    max_connections: int = Field(0, ge=0, description="client connection pool size (0: unlimited)")
    connect_timeout_s: float = Field(10.0, gt=0)
    max_batch_size: int | None = Field(None, ge=1, description=_INFORMATIONAL)
    max_num_tokens: int | None = Field(None, ge=1, description=_INFORMATIONAL)
    kv_cache_fraction: float | None = Field(None, gt=0, le=1, description=_INFORMATIONAL)


class ServerUnavailable(ConnectionError):
    """The server cannot serve this config (unreachable, refuses the key, lacks the model); says what to check."""


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """What GET /v1/models told about the server: its `Server` header and the model's `owned_by`."""

    server: str | None = None
    owned_by: str | None = None


# ---- SSE and token accounting: pure, no network -------------------------------------------------------

async def iter_sse(blocks: AsyncIterable[bytes]) -> AsyncIterator[tuple[int, bytes]]:
    """Server-sent events of a byte stream split anywhere: yield `(t_ns, data)` per event, `t_ns` being
    time.perf_counter_ns() when the bytes holding the event's first `data:` line were read. Lines end
    with LF or CRLF; multi-line data is joined with LF; comments (`:...`) and fields other than `data`
    are skipped; an event ends at a blank line or at the end of the stream."""
    data: list[bytes] = []
    t_ns, pending, blocks = 0, b"", aiter(blocks)
    while True:
        block = await anext(blocks, None)
        now = time.perf_counter_ns()
        *lines, pending = (pending + (b"\n\n" if block is None else block)).split(b"\n")
        for line in lines:
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                if not data:
                    t_ns = now
                data.append(line[6:] if line[5:6] == b" " else line[5:])
            elif not line and data:
                yield t_ns, b"\n".join(data)
                data = []
        if block is None:
            return


class OutputCounter:
    """Output tokens per SSE event of one stream.

    A cumulative `usage.completion_tokens` in an event is authoritative: it settles every token up to
    that event (the event gets the growth since the last report). Events with text but no report get
    estimates: the growth of the token count of the text since the last report (by `count_tokens`), or
    one per event without it. Estimates are held back until the next report rescales them to its count,
    so a final usage chunk corrects them; `finish()` releases any still held as they are.
    """

    def __init__(self, count_tokens: Callable[[str], int] | None):
        self._count_tokens = count_tokens
        self.settled = 0
        self.estimated = False  # some counts were released without a server report
        self._held: list[StreamEvent] = []  # events since the last report, n_tokens = estimate
        self._text, self._text_tokens = "", 0

    @property
    def total(self) -> int:
        """Tokens counted so far, settled or estimated."""
        return self.settled + sum(e.n_tokens for e in self._held)

    def add(self, t_ns: int, text: str, completion_tokens: int | None,
            server_t_ns: int | None = None) -> list[StreamEvent]:
        """Account for one event; return the events whose counts are now final."""
        if text and (completion_tokens is None or self._held):
            self._held.append(StreamEvent(t_ns, self._estimate(text), server_t_ns=server_t_ns))
        if completion_tokens is None:
            return []
        new = max(completion_tokens - self.settled, 0)
        if self._held:
            events = _rescale(self._held, new)
        else:
            events = [StreamEvent(t_ns, new, server_t_ns=server_t_ns)] if new else []
        self.settled += new
        self._held, self._text, self._text_tokens = [], "", 0
        return events

    def finish(self) -> list[StreamEvent]:
        """The stream ended: release the held estimates unchanged."""
        events = [e for e in self._held if e.n_tokens]
        self.estimated |= bool(events)
        self.settled += sum(e.n_tokens for e in events)
        self._held = []
        return events

    def _estimate(self, text: str) -> int:
        if self._count_tokens is None:
            return 1
        self._text += text
        count = self._count_tokens(self._text)
        grown = max(count - self._text_tokens, 0)
        self._text_tokens += grown
        return grown


def _rescale(held: list[StreamEvent], target: int) -> list[StreamEvent]:
    """Spread `target` tokens over the held events in proportion to their estimates (equally if all are
    0), rounding cumulatively so that the counts add up to `target` exactly."""
    weights = [e.n_tokens for e in held] if any(e.n_tokens for e in held) else [1] * len(held)
    total, cumulative, given, events = sum(weights), 0, 0, []
    for event, weight in zip(held, weights):
        cumulative += weight
        n = target * cumulative // total - given
        given += n
        if n:
            events.append(dataclasses.replace(event, n_tokens=n))
    return events


class _BadEvent(Exception):
    """A streamed event that ends the request: not JSON, or an error object."""


class _Chunk(NamedTuple):
    """What one streamed chunk of either endpoint says; None where it says nothing."""

    text: str
    completion_tokens: int | None  # cumulative usage.completion_tokens
    prompt_tokens: int | None      # usage.prompt_tokens
    cached_tokens: int | None      # usage.prompt_tokens_details.cached_tokens: prompt tokens from the prefix cache
    server_t_ns: int | None        # the mock server's send time `mock_t_ns`
    finished: bool                 # a choice has a finish_reason


def _parse_event(data: bytes) -> _Chunk:
    """The `_Chunk` of one streamed event; raise _BadEvent for a malformed event or an error object."""
    try:
        chunk = json.loads(data)
    except ValueError:
        chunk = None
    malformed = _BadEvent(f"malformed SSE event: {data[:_EXCERPT_CHARS].decode(errors='replace')}")
    if not isinstance(chunk, dict):
        raise malformed
    if chunk.get("error") or chunk.get("object") == "error":  # OpenAI style, vLLM style
        error = chunk.get("error") or chunk
        message = error.get("message", error) if isinstance(error, dict) else error
        raise _BadEvent(f"error event in stream: {str(message)[:_EXCERPT_CHARS]}")
    try:
        text, finished = "", False
        for choice in chunk.get("choices") or ():
            finished = finished or bool(choice.get("finish_reason"))
            delta = choice.get("delta") or {}
            text += (choice.get("text") or "") + (delta.get("content") or "")
            text += delta.get("reasoning") or delta.get("reasoning_content") or ""  # reasoning parsers' output
        usage = chunk.get("usage") or {}
        completion_tokens, prompt_tokens = usage.get("completion_tokens"), usage.get("prompt_tokens")
        cached_tokens = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
    except (AttributeError, TypeError):  # a field of the wrong type
        raise malformed from None
    return _Chunk(text, _int_or_none(completion_tokens), _int_or_none(prompt_tokens), _int_or_none(cached_tokens),
                  _int_or_none(chunk.get("mock_t_ns")), finished)


def _int_or_none(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


# ---- HTTP ---------------------------------------------------------------------------------------------

def _api_root(base_url: str) -> str:
    root = base_url.rstrip("/")
    return root if root.endswith("/v1") else root + "/v1"


def public_url(url: str) -> str:
    """`url` without user or password: what may be shown and stored."""
    return str(URL(url).with_user(None))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


class _Secret:
    """The API key of one engine: builds the auth header and scrubs the key from any text shown."""

    def __init__(self, env_var: str | None):
        self.env_var = env_var
        self._key = (os.environ.get(env_var) or None) if env_var else None

    @property
    def present(self) -> bool:
        return self._key is not None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self._key}"} if self._key else {}

    def scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def __repr__(self) -> str:
        return f"_Secret(env_var={self.env_var!r})"


def _session(config: OpenAIConfig, secret: _Secret) -> aiohttp.ClientSession:
    """One keep-alive connection pool per engine; no total timeout (the runner bounds each request)."""
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=config.max_connections),
                                 headers=secret.headers(),
                                 timeout=aiohttp.ClientTimeout(total=None, sock_connect=config.connect_timeout_s))


async def _probe(session: aiohttp.ClientSession, config: OpenAIConfig, secret: _Secret) -> ServerInfo:
    """GET /v1/models; raise ServerUnavailable saying what to check unless it serves `config.model`."""
    url = _api_root(config.base_url) + "/models"
    shown = public_url(url)
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=config.connect_timeout_s)) as resp:
            status, server, text = resp.status, resp.headers.get("Server"), await resp.text(errors="replace")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        raise ServerUnavailable(secret.scrub(
            f"cannot reach the OpenAI-compatible server at {shown} ({_describe(exc)}) within "
            f"{config.connect_timeout_s:g} s: check that the server is running and listening on that host and "
            "port, and the engine's base_url")) from None
    excerpt = secret.scrub(text[:_EXCERPT_CHARS])
    if status in (401, 403):
        hint = (f"the API key in ${secret.env_var} was refused" if secret.present
                else f"set the API key in ${secret.env_var}" if secret.env_var
                else "set api_key_env to the environment variable holding the API key")
        raise ServerUnavailable(f"{shown} refused the request (HTTP {status}: {excerpt}): {hint}")
    if status != 200:
        raise ServerUnavailable(f"{shown} answered HTTP {status}: {excerpt}: is base_url the root of an "
                                "OpenAI-compatible server?")
    try:
        owners = {m["id"]: m.get("owned_by") for m in json.loads(text)["data"]}
    except (ValueError, KeyError, TypeError):
        raise ServerUnavailable(f"{shown} did not answer with an OpenAI model list: {excerpt}") from None
    if config.model not in owners:
        raise ServerUnavailable(f"model {config.model!r} is not served at {public_url(config.base_url)}; it "
                                f"serves: {', '.join(map(str, owners)) or 'nothing'}. Set the engine's model to one "
                                "of them.")
    return ServerInfo(server=server, owned_by=owners[config.model])


def _load_tokenizer(name: str) -> Any:
    _, transformers = require_torch_transformers()
    return transformers.AutoTokenizer.from_pretrained(resolve_model(name))


class _Unsendable(Exception):
    """A request this engine cannot express (chat with token ids and no tokenizer)."""


class OpenAIEngine(Engine):
    """A connection pool to one server; `stream` may be called concurrently from the loop that started it.

    `text` (chat with a tokenizer) writes token-id prompts as text and gives the token space."""

    def __init__(self, config: OpenAIConfig, session: aiohttp.ClientSession, secret: _Secret,
                 tokenizer: Any, info: ServerInfo, text: TextVocabulary | None = None):
        self._config, self._session, self._secret, self._tokenizer = config, session, secret, tokenizer
        self._text = text
        self._url = _api_root(config.base_url) + ("/chat/completions" if config.endpoint == "chat" else "/completions")
        if text is not None:
            self.token_space = text.token_space()
        elif tokenizer is not None:
            self.token_space = TokenSpace(vocab_size=len(tokenizer), reserved_ids=frozenset(tokenizer.all_special_ids),
                                          tokenizer=HFTokenizer(tokenizer, config.tokenizer))
        else:
            self.token_space = FALLBACK_TOKEN_SPACE
        simulated = " (SIMULATED: the harness mock server)" if info.owned_by == MOCK_OWNED_BY else ""
        self._log = [(f"OpenAI-compatible server at {public_url(self._url)}{simulated}: Server header "
                      f"{info.server or 'none'}, model {config.model!r} owned by {info.owned_by or 'unknown'}")]
        if tokenizer is not None:
            self._log.append(f"tokenizer {config.tokenizer}: vocabulary of {len(tokenizer)} tokens")
        if text is not None:
            self._log.append(f"chat: token-id prompts are sent as text of exactly their length, written with the "
                             f"{text.describe()}; random prompts draw only from these, and other ids (a token-id "
                             "dataset's) are replaced by them")
        self._estimate_noted = False

    def log_lines(self) -> list[str]:
        return list(self._log)

    def _count_tokens(self, text: str) -> int:
        return len(self._tokenizer.encode(text, add_special_tokens=False))

    def _body(self, request: RequestSpec) -> dict:
        cfg = self._config
        body: dict[str, Any] = {"model": cfg.model, "stream": True, "max_tokens": request.max_output_tokens,
                                "stream_options": {"include_usage": True, "continuous_usage_stats": True}}
        if cfg.ignore_eos:
            body["ignore_eos"] = True
        if cfg.endpoint == "completions":
            text = request.prompt_text
            body["prompt"] = text if text is not None else list(request.prompt_token_ids)
        elif request.prompt_text is not None:
            body["messages"] = [{"role": "user", "content": request.prompt_text}]
        elif self._text is not None:
            body["messages"] = [{"role": "user", "content": self._text.text(request.prompt_token_ids)}]
        else:
            raise _Unsendable(f"request {request.id} has a token-id prompt, which the chat endpoint cannot take: "
                              "set the engine's tokenizer (to write it as text of its length) or use endpoint: "
                              "completions")
        return {**body, **cfg.extra_body}

    async def stream(self, request: RequestSpec) -> AsyncIterator[StreamEvent]:
        try:
            body = self._body(request)
        except _Unsendable as exc:
            yield StreamEvent(time.perf_counter_ns(), error=str(exc))
            return
        counter = OutputCounter(self._count_tokens if self._tokenizer is not None else None)
        failure, streaming, finished, prompt_tokens, cached_tokens = None, False, False, None, None
        try:
            async with self._session.post(self._url, json=body, headers={"X-Request-Id": request.id}) as resp:
                if resp.status != 200:
                    failure = f"HTTP {resp.status}: {(await resp.text(errors='replace'))[:_EXCERPT_CHARS]}"
                else:
                    streaming = True
                    async for t_ns, data in iter_sse(resp.content.iter_any()):
                        if data == b"[DONE]":
                            break
                        chunk = _parse_event(data)
                        finished = finished or chunk.finished
                        prompt_tokens = chunk.prompt_tokens if chunk.prompt_tokens is not None else prompt_tokens
                        cached_tokens = chunk.cached_tokens if chunk.cached_tokens is not None else cached_tokens
                        for event in counter.add(t_ns, chunk.text, chunk.completion_tokens, chunk.server_t_ns):
                            yield event
                    else:  # transformers serve never sends [DONE]: a clean end after a finish_reason is a success
                        if not finished:
                            failure = f"stream ended before [DONE] after {counter.total} tokens"
        except _BadEvent as exc:
            failure = str(exc)
        except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:  # ValueError: line too long
            where = f"stream ended before [DONE] after {counter.total} tokens: " if streaming else ""
            failure = where + _describe(exc)
        for event in counter.finish():
            yield event
        if prompt_tokens is not None or cached_tokens is not None:
            yield StreamEvent(time.perf_counter_ns(), server_input_tokens=prompt_tokens,
                              cached_prompt_tokens=cached_tokens)
        if counter.estimated and not self._estimate_noted:
            self._note_estimate()
        if failure is not None:
            yield StreamEvent(time.perf_counter_ns(), error=self._secret.scrub(failure))

    def _note_estimate(self) -> None:
        self._estimate_noted = True
        how = (f"with tokenizer {self._config.tokenizer}" if self._tokenizer is not None
               else "as one token per streamed event (set the engine's tokenizer to count exactly)")
        line = f"{public_url(self._url)} reports no usage.completion_tokens: output tokens are counted {how}"
        self._log.append(line)
        log.warning(line)


class OpenAIAdapter(EngineAdapter):
    """Drives an already-running server; `start` checks it serves the model, leaving closes the pool.

    Remembers what each base URL's GET /v1/models said, for `fingerprint`.
    """

    kind = "openai"
    Config = OpenAIConfig
    remote = True

    def __init__(self) -> None:
        self._servers: dict[str, ServerInfo] = {}

    @contextlib.asynccontextmanager
    async def start(self, config: OpenAIConfig):
        secret = _Secret(config.api_key_env)
        async with _session(config, secret) as session:
            info = await _probe(session, config, secret)
            self._servers[config.base_url] = info
            tokenizer = await asyncio.to_thread(_load_tokenizer, config.tokenizer) if config.tokenizer else None
            text = None
            if tokenizer is not None and config.endpoint == "chat":
                specials = {*tokenizer.all_special_ids, *tokenizer.added_tokens_decoder}
                text = await asyncio.to_thread(text_vocabulary, HFTokenizer(tokenizer, config.tokenizer),
                                               len(tokenizer), specials)
            yield OpenAIEngine(config, session, secret, tokenizer, info, text)

    def fingerprint(self, config: OpenAIConfig) -> dict:
        """Server header and model owner from the last start, or probed now (blocking, connect timeout)."""
        info = self._servers.get(config.base_url)
        if info is None:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works inside a running event loop too
                info = pool.submit(asyncio.run, _probe_quietly(config)).result()
        return {"engine": "openai-compatible", "engine_version": info.server or "unknown",
                "simulated": info.owned_by == MOCK_OWNED_BY, "model": config.model, "endpoint": config.endpoint,
                "base_url": public_url(config.base_url), "server": info.server, "owned_by": info.owned_by}


async def _probe_quietly(config: OpenAIConfig) -> ServerInfo:
    """`_probe`, with an unavailable server described by an empty ServerInfo."""
    secret = _Secret(config.api_key_env)
    async with _session(config, secret) as session:
        with contextlib.suppress(ServerUnavailable):
            return await _probe(session, config, secret)
    return ServerInfo()

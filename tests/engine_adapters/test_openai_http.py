"""The `openai` adapter against REAL mock server subprocesses on loopback, whose log holds the truth:
when each request left the queue and when each token event was sent (same clock as the client).

Timing bounds here are invariants with room for a busy 2-core CI box (the effects they guard are
tens to hundreds of ms); the precise client error figures come from `harness calibrate`."""
from __future__ import annotations

import asyncio
import json
import re
import socket
import urllib.error
import urllib.request

import pytest

from engine_adapters.base import Engine, StreamEvent
from engine_adapters.mock_server import MockServerConfig, _parse_args, cli_args, planned_fault, run_mock_server
from engine_adapters.openai_http import (OpenAIAdapter, OpenAIConfig, OutputCounter, ServerUnavailable, _parse_event,
                                         iter_sse, public_url)
from harness.config import parse_config
from harness.records import RequestRecord, read_records
from harness.runner import run, run_event_loop
from harness.store import TrialFiles
from harness.trial import measure
from reports import render_run_report
from workloads import RequestSpec

MS = 1_000_000


def server_log(url: str) -> dict[str, dict]:
    with urllib.request.urlopen(url + "/mock/log", timeout=5) as resp:
        return {e["id"]: e for e in json.load(resp)["requests"]}


def specs(n: int, out: int = 8, every_s: float | None = None, prefix: str = "r") -> list[RequestSpec]:
    return [RequestSpec(id=f"{prefix}{i}", max_output_tokens=out, prompt_text="hello",
                        scheduled_offset_s=None if every_s is None else i * every_s) for i in range(n)]


class _Tap(Engine):
    """Passes an engine's events through, keeping each request's `server_t_ns`."""

    def __init__(self, engine: Engine, server_times: dict[str, list[int]]):
        self.engine, self.token_space, self.server_times = engine, engine.token_space, server_times

    async def stream(self, request: RequestSpec):
        async for event in self.engine.stream(request):
            if event.server_t_ns is not None:
                self.server_times.setdefault(request.id, []).append(event.server_t_ns)
            yield event


def bench(config: OpenAIConfig, requests: list[RequestSpec], server_times: dict | None = None,
          **kwargs) -> tuple[list[RequestRecord], int, list[str]]:
    """Start the engine, run `requests` through harness.runner.run; (records, t0 in ns, engine log lines).
    `server_times`, when given, collects each request's server send times."""
    adapter = OpenAIAdapter()

    async def go():
        async with adapter.start(config) as engine:
            driven = engine if server_times is None else _Tap(engine, server_times)
            records, t0 = await run(driven, requests, request_timeout_s=10, **kwargs)
            return records, t0, engine.log_lines()
    return asyncio.run(go())


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(int(q * len(values)), len(values) - 1)]


@pytest.fixture(scope="module")
def timed_server():
    with run_mock_server(MockServerConfig(ttft_ms=20, itl_ms=5)) as url:
        yield url


# ---- timing at low load -------------------------------------------------------------------------------

@pytest.mark.parametrize("endpoint", ["completions", "chat"])
def test_token_times_match_the_server_send_times_at_low_load(timed_server, endpoint):
    requests = specs(20, out=16, every_s=0.015, prefix=endpoint)
    server_times: dict[str, list[int]] = {}
    records, t0, _ = bench(OpenAIConfig(model="mock", base_url=timed_server, endpoint=endpoint), requests,
                           server_times=server_times)
    log = server_log(timed_server)
    delivery, ttft_lateness, itl_error = [], [], []
    for r in records:
        truth = log[r.id]
        assert r.ok and r.output_tokens == 16 and truth["chunk_tokens"] == [1] * 16
        # One token per event: token i arrived with the event the server sent at chunk_ns[i].
        delivery += [t0 + t - sent for t, sent in zip(r.token_ns, truth["chunk_ns"])]
        assert server_times[r.id] == truth["chunk_ns"]  # the adapter reports the mock's send times
        ttft_lateness.append(t0 + r.token_ns[0] - truth["start_ns"] - 20 * MS)
        itl_error += [b - a - 5 * MS for a, b in zip(r.token_ns, r.token_ns[1:])]
        assert r.end_ns - r.token_ns[0] >= r.token_ns[-1] - r.token_ns[0]  # e2e - ttft covers every ITL gap
    assert min(delivery) > 0, "a client time before the server's send time: the clocks disagree"
    assert pct(delivery, 0.99) < 15 * MS, f"client minus server send time p99 {pct(delivery, 0.99) / MS:.2f} ms"
    assert min(ttft_lateness) > 0 and pct(ttft_lateness, 0.5) < 8 * MS  # the mock is never early
    assert abs(pct(itl_error, 0.5)) < 2 * MS and pct(itl_error, 0.99) < 15 * MS


def test_k_token_chunks_deliver_exactly_max_tokens_and_the_runner_spreads_them():
    with run_mock_server(MockServerConfig(ttft_ms=10, itl_ms=4, tokens_per_chunk=4)) as url:
        records, t0, _ = bench(OpenAIConfig(model="mock", base_url=url), specs(5, out=10, every_s=0.02))
        log = server_log(url)
    for r in records:
        truth = log[r.id]
        assert r.ok and r.output_tokens == 10 and truth["chunk_tokens"] == [4, 4, 2]
        first, second, third = r.token_ns[:4], r.token_ns[4:8], r.token_ns[8:]
        assert len(set(first)) == 1  # the first event's tokens all arrive with it
        # Later events' tokens are spread evenly over the gap since the previous event, which is k * itl.
        gaps = [b - a for a, b in zip(r.token_ns[3:], r.token_ns[4:])]
        assert all(abs(g - 4 * MS) < 3 * MS for g in gaps), gaps
        for tokens, sent in zip((first, second, third), truth["chunk_ns"]):
            assert 0 < t0 + tokens[-1] - sent < 15 * MS
        # The first event leaves when its 4th token is due: TTFT = ttft + 3 * itl.
        assert 22 * MS <= t0 + r.token_ns[0] - truth["start_ns"] < 40 * MS


# ---- token accounting ---------------------------------------------------------------------------------

def test_usage_counts_and_prompt_forms(timed_server):
    ids = RequestSpec(id="ids", max_output_tokens=5, prompt_token_ids=(7, 8, 9))
    text = RequestSpec(id="text", max_output_tokens=3, prompt_text="héllo")
    both = RequestSpec(id="both", max_output_tokens=1, prompt_token_ids=(7, 8), prompt_text="dataset text")
    records, _, lines = bench(OpenAIConfig(model="mock", base_url=timed_server), [ids, text, both], concurrency=3)
    log = server_log(timed_server)
    assert [(r.ok, r.output_tokens) for r in records] == [(True, 5), (True, 3), (True, 1)]
    # a workload's text is sent as written, for the server to tokenize; the server's count is recorded
    assert [log[r.id]["prompt_tokens"] for r in records] == [3, len("héllo".encode()), len("dataset text")]
    assert [r.server_input_tokens for r in records] == [3, len("héllo".encode()), len("dataset text")]
    assert not any("no usage" in line for line in lines)
    chat_ids, _, _ = bench(OpenAIConfig(model="mock", base_url=timed_server, endpoint="chat"), [ids], concurrency=1)
    assert "token-id prompt" in chat_ids[0].error and "tokenizer" in chat_ids[0].error


def test_without_server_usage_counts_come_from_the_tokenizer_or_from_events(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    with run_mock_server(MockServerConfig(ttft_ms=2, itl_ms=1, tokens_per_chunk=3, usage=False)) as url:
        with_tok, _, _ = bench(OpenAIConfig(model="mock", base_url=url, tokenizer="builtin:tiny-llama"),
                               specs(3, out=10), concurrency=3)
        chat_ids, _, _ = bench(OpenAIConfig(model="mock", base_url=url, endpoint="chat",
                                            tokenizer="builtin:tiny-llama"),
                               [RequestSpec(id="ids", max_output_tokens=4, prompt_token_ids=(80, 81))], concurrency=1)
        by_event, _, lines = bench(OpenAIConfig(model="mock", base_url=url), specs(2, out=10), concurrency=2)
        log = server_log(url)
    assert [r.output_tokens for r in with_tok] == [10, 10, 10]  # a byte-level tokenizer counts letters exactly
    assert chat_ids[0].ok and chat_ids[0].output_tokens == 4 and log["ids"]["prompt_tokens"] == 2
    assert [r.output_tokens for r in by_event] == [4, 4]  # events of 3+3+3+1 tokens, one counted per event
    assert any("no usage" in line and "one token per streamed event" in line for line in lines)


def _mooncake_trace(path, rows: int = 24, block: int = 32) -> list[int]:
    """A Mooncake trace whose requests share leading hash blocks (4 groups); returns the input lengths."""
    lengths = []
    with path.open("w") as f:
        for i in range(rows):
            hashes = [i % 4, 100 + i % 4][:1 + i % 2] + [1000 + i]
            lengths.append((len(hashes) - 1) * block + 1 + (7 * i) % block)
            f.write(json.dumps({"timestamp": 5 * i, "input_length": lengths[-1], "output_length": 3,
                                "hash_ids": hashes}) + "\n")
    return lengths


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_trace_prompts_reach_the_server_at_their_recorded_length_and_the_fidelity_summary_says_so(tmp_path,
                                                                                                  endpoint):
    """The audited case: a token-id trace sent to chat decoded its random byte ids to text of +24 to +6069 tokens,
    while records claimed the trace's lengths. Now chat gets text of exactly the recorded length (the mock server
    counts UTF-8 bytes: the builtin byte-level tokenizer's count of ASCII text), completions the ids; the server's
    count is recorded per request and compared in result.json and the report."""
    pytest.importorskip("transformers")
    lengths = _mooncake_trace(tmp_path / "trace.jsonl")
    with run_mock_server(MockServerConfig(ttft_ms=1, itl_ms=1)) as url:
        cfg = parse_config({"name": "prompt-lengths", "engine": {"kind": "openai", "model": "mock", "params": {
            "base_url": url, "endpoint": endpoint, "tokenizer": "builtin:tiny-llama", "api_key_env": None}},
            "workload": {"kind": "trace", "path": str(tmp_path / "trace.jsonl"), "block_size": 32, "speedup": 10}},
            "test")
        result = run_event_loop(measure(cfg, tmp_path))
        log = server_log(url)
    records = read_records(tmp_path / TrialFiles.RECORDS)
    assert all(r.ok for r in records)
    assert ([r.input_tokens for r in records] == [r.server_input_tokens for r in records]
            == [log[r.id]["prompt_tokens"] for r in records] == lengths)
    server = result["fidelity"]["input_tokens"]["counted_by_server"]
    assert server["difference"] == {"p50": 0, "min": 0, "max": 0} and server["ks_generated_vs_server"] == 0
    assert (server["off_typical_requests"], server["compared_requests"]) == (0, len(lengths))
    section = render_run_report(result, records, "bench").split("<h3>Workload fidelity</h3>", 1)[1]
    assert re.search(r"<th>input: counted by the server \(successful requests\)</th>"
                     rf'<td class="num">{len(lengths)}</td>(<td class="num">[^<]*</td>){{4}}\s*<td class="num">0</td>',
                     section)
    assert "p50 0 tokens (min 0, max\n0)" in section
    assert f'<span class="">0</span>\nof {len(lengths)} requests differ from it' in section


def _events(events: list[StreamEvent]) -> list[tuple[int, int]]:
    return [(e.t_ns, e.n_tokens) for e in events]


def test_output_counter_prefers_usage_and_rescales_estimates_to_the_final_report():
    continuous = OutputCounter(None)
    assert _events(continuous.add(1, "", 0)) == []  # chat's opening role event
    assert _events(continuous.add(2, "ab", 2)) == [(2, 2)]
    assert _events(continuous.add(3, "", 3)) == [(3, 1)]  # a token without text (held-back UTF-8 bytes)
    assert _events(continuous.add(4, "", 3) + continuous.finish()) == [] and not continuous.estimated

    final_only = OutputCounter(len)  # "tokenizer": one token per character
    for t, text in [(1, "a"), (2, "bcd"), (3, "ef")]:
        assert final_only.add(t, text, None, server_t_ns=t - 1) == []
    assert final_only.total == 6
    rescaled = final_only.add(4, "", 12)
    assert _events(rescaled) == [(1, 2), (2, 6), (3, 4)]  # x2, in proportion
    assert [e.server_t_ns for e in rescaled] == [0, 1, 2]
    assert final_only.settled == 12 and not final_only.estimated

    no_usage = OutputCounter(None)
    no_usage.add(1, "abc", None), no_usage.add(2, "", None), no_usage.add(3, "d", None)
    assert _events(no_usage.finish()) == [(1, 1), (3, 1)] and no_usage.estimated


def test_usage_prompt_tokens_details_cached_tokens_is_read_where_the_server_sends_it():
    """vLLM with --enable-prompt-tokens-details sends usage.prompt_tokens_details.cached_tokens; servers without it
    send no details, or details without the count (None, as from the mock server)."""
    usage = {"prompt_tokens": 120, "completion_tokens": 3, "prompt_tokens_details": {"cached_tokens": 96}}
    chunk = _parse_event(json.dumps({"choices": [], "usage": usage}).encode())
    assert (chunk.prompt_tokens, chunk.cached_tokens) == (120, 96)
    for details in ({}, {"prompt_tokens_details": None}, {"prompt_tokens_details": {"audio_tokens": 0}}):
        chunk = _parse_event(json.dumps({"choices": [], "usage": {"prompt_tokens": 120, **details}}).encode())
        assert (chunk.prompt_tokens, chunk.cached_tokens) == (120, None)


@pytest.mark.parametrize("split", [1, 7, 1000])
def test_sse_parser_handles_any_split_comments_fields_multiline_data_and_a_missing_final_blank_line(split):
    stream = b': keep-alive\nevent: message\ndata: {"a":\r\ndata: 1}\n\nid: 7\n\ndata:[DONE]'

    async def blocks():
        for i in range(0, len(stream), split):
            yield stream[i:i + split]

    async def collect():
        return [data async for _, data in iter_sse(blocks())]
    assert asyncio.run(collect()) == [b'{"a":\n1}', b"[DONE]"]


# ---- failures -----------------------------------------------------------------------------------------

def test_server_failures_are_recorded_per_request_and_the_run_goes_on():
    config = MockServerConfig(ttft_ms=2, itl_ms=1, error_rate=0.6, seed=3,
                              error_kinds=["http_500", "drop", "malformed", "error_event"])
    with run_mock_server(config) as url:
        records, _, _ = bench(OpenAIConfig(model="mock", base_url=url), specs(30, out=8), concurrency=1)
        log = server_log(url)
    expected = {None: None, "http_500": "HTTP 500: ", "drop": "stream ended before [DONE] after 4 tokens: ",
                "malformed": "malformed SSE event: ", "error_event": "error event in stream: mock: injected"}
    seen = set()
    for r in records:
        truth = log[r.id]
        fault = planned_fault(config, truth["index"])
        assert truth["outcome"] == (fault or "ok")
        seen.add(fault)
        if fault is None:
            assert r.ok and r.output_tokens == 8
        else:
            assert r.error.startswith(expected[fault]), (fault, r.error)
            assert r.output_tokens == (0 if fault == "http_500" else 4)  # partial output stays recorded
    assert seen == set(expected)


def test_a_stream_without_done_succeeds_only_after_a_finish_reason():
    """transformers serve never sends [DONE]: a clean end after `finish_reason` is a complete response,
    while a connection cut before it (the `drop` fault, no [DONE] either) stays a failure."""
    config = MockServerConfig(ttft_ms=2, itl_ms=1, send_done=False, error_rate=0.5, seed=1, error_kinds=["drop"])
    with run_mock_server(config) as url:
        records, _, _ = bench(OpenAIConfig(model="mock", base_url=url), specs(12, out=6), concurrency=2)
        log = server_log(url)
    for r in records:
        if planned_fault(config, log[r.id]["index"]) is None:
            assert r.ok and r.output_tokens == 6
        else:
            assert r.error.startswith("stream ended before [DONE]")
    assert any(r.ok for r in records) and any(not r.ok for r in records)


def test_api_key_is_sent_but_never_stored_or_shown(monkeypatch):
    key = "sk-test-0123456789abcdef"
    monkeypatch.setenv("HARNESS_TEST_KEY", key)
    with run_mock_server(MockServerConfig(ttft_ms=1, itl_ms=1, api_key_env="HARNESS_TEST_KEY")) as url:
        adapter = OpenAIAdapter()
        config = OpenAIConfig(model="mock", base_url=url, api_key_env="HARNESS_TEST_KEY")

        async def go():
            async with adapter.start(config) as engine:
                records, _ = await run(engine, specs(3, out=2), concurrency=3)
                return records, engine.log_lines()
        records, lines = asyncio.run(go())  # the server refuses requests without the key
        assert all(r.ok for r in records)
        stored = json.dumps([r.to_json() for r in records] + lines + [adapter.fingerprint(config),
                                                                       config.model_dump(mode="json")])
        assert key not in stored

        monkeypatch.setenv("WRONG_KEY", "sk-wrong-key-42")
        with pytest.raises(ServerUnavailable) as refused:  # the mock echoes the key it got: it must be scrubbed
            asyncio.run(_start(OpenAIConfig(model="mock", base_url=url, api_key_env="WRONG_KEY")))
        assert "HTTP 401" in str(refused.value) and "$WRONG_KEY was refused" in str(refused.value)
        assert "sk-wrong-key-42" not in str(refused.value)
        with pytest.raises(ServerUnavailable, match=r"set the API key in \$UNSET_KEY_VAR"):
            asyncio.run(_start(OpenAIConfig(model="mock", base_url=url, api_key_env="UNSET_KEY_VAR")))


async def _start(config: OpenAIConfig) -> None:
    async with OpenAIAdapter().start(config):
        pass


def test_unreachable_server_and_unserved_model_say_what_to_check(timed_server):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    config = OpenAIConfig(model="m", base_url=f"http://127.0.0.1:{port}", connect_timeout_s=2)
    with pytest.raises(ServerUnavailable, match=f"http://127.0.0.1:{port}/v1/models.*check that the server is running"):
        asyncio.run(_start(config))
    fp = OpenAIAdapter().fingerprint(config)
    assert fp["engine_version"] == "unknown" and fp["simulated"] is False
    with pytest.raises(ServerUnavailable, match="model 'llama' is not served .* it serves: mock"):
        asyncio.run(_start(OpenAIConfig(model="llama", base_url=timed_server + "/v1")))


def test_credentials_in_the_base_url_are_never_shown():
    assert public_url("http://user:secret@10.0.0.1:8000/v1") == "http://10.0.0.1:8000/v1"


# ---- overload: no coordinated omission ----------------------------------------------------------------

def test_reported_ttft_under_overload_is_the_servers_queueing_plus_its_ttft():
    """Capacity 2 x (5 ms + 7 x 5 ms) serves one request per ~20 ms; one arrives every 10 ms, so the
    server's queue grows ~10 ms per request. Measured from the scheduled time, TTFT must grow with it."""
    with run_mock_server(MockServerConfig(ttft_ms=5, itl_ms=5, max_concurrency=2)) as url:
        records, _, _ = bench(OpenAIConfig(model="mock", base_url=url), specs(16, out=8, every_s=0.010))
        log = server_log(url)
    assert all(r.ok and r.sent_ns - r.scheduled_ns < 20 * MS for r in records)  # the client kept its schedule
    reported = [(r.token_ns[0] - r.scheduled_ns) / MS for r in records]
    imposed = [log[r.id]["queue_ns"] / MS + 5 for r in records]
    assert imposed[-1] > 100, imposed  # the server's queue really grew
    # What remains is the request's own trip (~1 ms here), the server's timer lateness and the delivery.
    excess = [a - b for a, b in zip(reported, imposed)]
    assert min(excess) > 0 and pct(excess, 0.5) < 10 and max(excess) < 40, [f"{e:.2f}" for e in excess]


# ---- the mock server itself ---------------------------------------------------------------------------

def test_mock_server_cli_flags_round_trip():
    config = MockServerConfig(model="m", ttft_ms=1.5, tokens_per_chunk=3, error_kinds=["drop"], usage=False,
                              api_key_env="K")
    assert _parse_args(["--port", "0", *cli_args(config)]) == ("127.0.0.1", 0, config)


def test_mock_server_answers_non_streaming_and_rejects_bad_requests(timed_server):
    def post(path: str, body: dict) -> tuple[int, dict]:
        req = urllib.request.Request(timed_server + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as err:
            return err.code, json.load(err)

    parts = [{"type": "text", "text": "h"}, {"type": "text", "text": "i"}]
    status, body = post("/v1/chat/completions", {"model": "mock", "max_completion_tokens": 3,
                                                 "messages": [{"role": "user", "content": parts}]})
    assert status == 200 and body["choices"][0]["message"]["content"] == "abc"
    assert body["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert post("/v1/completions", {"model": "other", "prompt": "x"})[0] == 404
    assert post("/v1/completions", {"model": "mock", "prompt": "x", "max_tokens": 0})[0] == 400
    assert post("/v1/completions", {"model": "mock", "prompt": ["a", "b"]})[0] == 400

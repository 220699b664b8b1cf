"""`harness calibrate`: how far this machine's client can be trusted, measured against a known server.

The mock OpenAI server (a separate process on loopback) streams with scripted delays and logs
every chunk's send time (`time.perf_counter_ns`, CLOCK_MONOTONIC: one clock for every process on
this machine; read back from its `/mock/log`). The real client path (openai adapter + runner) drives it at rising load;
per level the client's timing error is what it measured minus what the server did:

- TTFT error: client arrival of the first chunk - server send of the first chunk;
- ITL error: client gap between consecutive chunks - server gap between them;
- E2E error: client end of stream - server send of the last chunk;
- schedule lag (open loop): client dispatch - scheduled time.

Closed-loop levels start their streams spread over one request's duration (`ramp_up_s`), so that
requests begin and end at the scattered moments of steady serving; started together, every stream
would re-send its next request within the same few milliseconds, for the whole level.

A level is within budget when TTFT error p50 and p99, schedule lag p99 and failures stay within
`Budget`. The highest concurrency and the highest rate within budget are certified; the
certificate is written as JSON, and runs beyond it are marked untrustworthy (see `trust_verdict`).
"""
from __future__ import annotations

import datetime as dt
import platform
import json
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from engine_adapters.mock_server import MockServerConfig, run_mock_server
from engine_adapters.openai_http import OpenAIAdapter, OpenAIConfig
from harness.clients import run_in_processes
from harness.metrics import summarize
from harness.runner import run, run_event_loop
from harness.store import read_json
from workloads import RequestSpec

CERTIFICATE_KIND = "harness.calibration"


@dataclass(frozen=True)
class Budget:
    """The client's allowed timing error (milliseconds) and failures."""

    ttft_p50_ms: float = 1.0
    ttft_p99_ms: float = 3.0
    schedule_lag_p99_ms: float = 5.0
    max_failed: int = 0


@dataclass(frozen=True)
class Level:
    """One load level: closed loop at `concurrency` streams, or open loop at `rate` req/s."""

    mode: str  # closed | open
    load: float  # streams (closed) or requests per second (open)
    requests: int
    output_tokens: int

    @property
    def duration_s(self) -> float:
        """How long one request of this level streams on the reference server."""
        return (SERVER.ttft_ms + (self.output_tokens - 1) * SERVER.itl_ms) / 1000

    @property
    def label(self) -> str:
        return f"{int(self.load)} streams" if self.mode == "closed" else f"{int(self.load)} req/s"


# Streams of 50 tokens at 10 ms ITL (the 128-stream target sits in the middle), then short
# requests at rising open-loop rates (the 1,000 req/s target likewise).
DEFAULT_LEVELS = (
    *(Level("closed", c, requests=8 * c, output_tokens=50) for c in (1, 16, 32, 64, 128, 256)),
    *(Level("open", r, requests=int(r * 2), output_tokens=4) for r in (100, 250, 500, 1000, 2000)),
)
SERVER = MockServerConfig(ttft_ms=20, itl_ms=10, tokens_per_chunk=1)


def _pct(values: list[float]) -> dict:
    """p50, p99 (as every harness percentile: linear interpolation) and the count; None when empty."""
    s = summarize(values)
    return {"p50": s["p50"], "p99": s["p99"], "n": s["count"]}


def _server_log(base_url: str) -> dict[str, dict]:
    """The mock server's per-request log (its own chunk send times), by client request id."""
    with urllib.request.urlopen(base_url.rstrip("/") + "/mock/log", timeout=30) as resp:
        return {entry["id"]: entry for entry in json.load(resp)["requests"]}


def _measure(base_url: str, level: Level, processes: int) -> dict:
    config = OpenAIConfig(model=SERVER.model, base_url=base_url, api_key_env=None)
    tag = f"{level.mode}{int(level.load)}p{processes}"
    specs = [RequestSpec(id=f"{tag}-{i}", max_output_tokens=level.output_tokens, prompt_token_ids=(65,) * 16,
                         scheduled_offset_s=None if level.mode == "closed" else i / level.load)
             for i in range(level.requests)]
    concurrency = int(level.load) if level.mode == "closed" else None
    # streams start spread over one request's duration: the phases of steady serving, not one synchronized burst
    load = {"concurrency": concurrency, "request_timeout_s": 60, "ramp_up_s": level.duration_s}
    if processes > 1:
        records, t0 = run_in_processes("openai", config.model_dump(), specs, processes, **load)
    else:
        async def one_process():
            async with OpenAIAdapter().start(config) as engine:
                return await run(engine, specs, **load)
        records, t0 = run_event_loop(one_process())
    log = _server_log(base_url)
    ttft, itl, e2e = [], [], []
    for record in records:
        entry = log.get(record.id)
        if not record.ok or not entry or len(entry["chunk_ns"]) != record.output_tokens:
            continue  # one token per chunk: client token k is server chunk k
        client = [t + t0 for t in record.token_ns]
        server = entry["chunk_ns"]
        ttft.append((client[0] - server[0]) / 1e6)
        e2e.append((record.end_ns + t0 - server[-1]) / 1e6)
        itl.extend(((c2 - c1) - (s2 - s1)) / 1e6 for c1, c2, s1, s2 in zip(client, client[1:], server, server[1:]))
    lag = [(r.dispatched_ns - r.scheduled_ns) / 1e6 for r in records if r.scheduled_ns is not None]
    return {"mode": level.mode, "load": level.load, "label": level.label, "client_processes": processes,
            "requests": len(records), "failed": sum(not r.ok for r in records), "compared": len(ttft),
            "ttft_error_ms": _pct(ttft), "itl_error_ms": _pct(itl), "e2e_error_ms": _pct(e2e),
            "schedule_lag_ms": _pct(lag)}


def within_budget(row: dict, budget: Budget) -> bool:
    t, lag = row["ttft_error_ms"], row["schedule_lag_ms"]
    return (row["failed"] <= budget.max_failed and t["p50"] is not None
            and t["p50"] <= budget.ttft_p50_ms and t["p99"] <= budget.ttft_p99_ms
            and (lag["p99"] is None or lag["p99"] <= budget.schedule_lag_p99_ms))


def _highest_passing(rows: list[dict]) -> float | None:
    """The highest load below which every level passed (a pass above a failure certifies nothing)."""
    best = None
    for row in sorted(rows, key=lambda r: r["load"]):
        if not row["within_budget"]:
            break
        best = row["load"]
    return best


def calibrate(levels=DEFAULT_LEVELS, budget: Budget = Budget(), client_processes: int = 1, on_level=None) -> dict:
    """Run every level against a fresh mock server process; return the certificate dict."""
    rows = []
    with run_mock_server(SERVER) as base_url:
        for level in levels:
            row = _measure(base_url, level, client_processes)
            row["within_budget"] = within_budget(row, budget)
            rows.append(row)
            if on_level:
                on_level(row)
    certified = {mode: _highest_passing([r for r in rows if r["mode"] == mode]) for mode in ("closed", "open")}
    return {"kind": CERTIFICATE_KIND, "schema_version": 1, "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "machine": {"hostname": platform.node(), "platform": platform.platform(), "python": platform.python_version()},
            "server": SERVER.model_dump(), "budget": asdict(budget), "client_processes": client_processes,
            "levels": rows,
            "certified_concurrency": certified["closed"], "certified_rate_req_s": certified["open"]}


def default_certificate_path() -> Path:
    from engine_adapters.builtin_models import cache_dir

    return cache_dir() / "calibration.json"


def trust_verdict(certificate: dict | None, *, remote: bool, concurrency: int | None, rate_req_s: float | None,
                  schedule_lag_p99_ms: float | None) -> dict:
    """Whether a run's client-side timing can be trusted: {"trusted": True | False | None, "reasons": [...]}.

    Any run whose client fell behind schedule beyond the budget is untrusted. For engines reached over
    the network (`remote`), the load must also be within what calibration certified on this machine;
    without a certificate for this host the verdict is None (unknown) and says how to get one.
    """
    budget = Budget(**certificate["budget"]) if certificate else Budget()
    reasons = []
    if schedule_lag_p99_ms is not None and schedule_lag_p99_ms > budget.schedule_lag_p99_ms:
        reasons.append(f"the client fell behind schedule: lag p99 {schedule_lag_p99_ms:.2f} ms > "
                       f"{budget.schedule_lag_p99_ms:g} ms")
    if not remote:
        return {"trusted": not reasons, "reasons": reasons}
    if certificate is None or certificate["machine"]["hostname"] != platform.node():
        return {"trusted": False if reasons else None,
                "reasons": reasons or ["no calibration for this machine: run `harness calibrate`"]}
    limit_c, limit_r = certificate["certified_concurrency"], certificate["certified_rate_req_s"]
    if concurrency is not None and (limit_c is None or concurrency > limit_c):
        reasons.append(f"{concurrency} concurrent streams exceed the {limit_c} certified by calibration")
    if rate_req_s is not None and (limit_r is None or rate_req_s > limit_r):
        reasons.append(f"{rate_req_s:g} req/s exceeds the {limit_r} req/s certified by calibration")
    return {"trusted": not reasons, "reasons": reasons}


def load_certificate(path: Path | None = None) -> dict | None:
    doc = read_json(path or default_certificate_path())
    return doc if doc and doc.get("kind") == CERTIFICATE_KIND else None

"""Harness results in the field names of other tools, and their results read back.

- `to_vllm(result, records)`: the keys of a `vllm bench serve --save-result` JSON.
- `to_trtllm_bench(result, records)`: the layout of a `trtllm-bench ... --report_json` file.
- `from_vllm(doc)`: a vLLM result JSON as harness's {counts, window, distributions, scalars}.

`result` is a trial's `result.json` (harness.trial.measure), `records` its `records.jsonl`. Counts,
window and throughput come from `result`; per-request statistics (std, median, the other tool's
percentile estimator) are recomputed from the measured, successful records. A field harness cannot
fill honestly (per-chunk ITL, a GPU count it was never told, engine internals) is left out, never
filled with zeros. Every export carries `harness_note`, saying how its numbers differ from the
other tool's own definitions (docs/metrics.md has the full comparison).

`origin` picks the clock start of TTFT and end-to-end latency: "harness" (the default: the
scheduled time in open loop, the send time in closed loop, as in result.json) or "sent" (when the
request was handed to the engine, the point where vLLM and trtllm-bench start their clocks).
"""
from __future__ import annotations

import datetime as dt
import re
from collections import Counter
from typing import Literal

import numpy as np

from harness.metrics import PERCENTILES, STATISTICS, request_values
from harness.records import RequestRecord

Origin = Literal["harness", "sent"]

_NS_PER_MS = 1e6
_NS_PER_S = 1e9
_VLLM_METRICS = {"ttft": "ttft_ms", "tpot": "tpot_ms", "itl": "itl_ms", "e2el": "e2e_ms",
                 "client_queue_time": "queue_ms"}


# ---------------------------------------------------------------------------------------------
# shared helpers


def _require(result: dict, *keys: str) -> None:
    for key in keys:
        if key not in result:
            raise ValueError(f"result is missing '{key}': pass the result.json of a completed run")


def _successful(records: list[RequestRecord]) -> list[RequestRecord]:
    return [r for r in records if r.phase == "measured" and r.ok]


def _start_ns(r: RequestRecord, origin: Origin) -> int | None:
    return r.origin_ns if origin == "harness" else r.sent_ns


def _ttft(r: RequestRecord, origin: Origin) -> list[float]:
    if origin == "harness":
        return request_values("ttft_ms", r)
    return [(r.first_token_ns - r.sent_ns) / _NS_PER_MS] if r.token_ns and r.sent_ns is not None else []


def _e2e(r: RequestRecord, origin: Origin) -> list[float]:
    if origin == "harness":
        return request_values("e2e_ms", r)
    return [(r.end_ns - r.sent_ns) / _NS_PER_MS] if r.sent_ns is not None else []


def _per_request(ok: list[RequestRecord], origin: Origin) -> dict[str, list[float]]:
    """Latency samples (ms) of the successful measured requests, keyed by harness metric name."""
    return {
        "ttft_ms": [v for r in ok for v in _ttft(r, origin)],
        "tpot_ms": [v for r in ok for v in request_values("tpot_ms", r)],
        "itl_ms": [v for r in ok for v in request_values("itl_ms", r)],
        "e2e_ms": [v for r in ok for v in _e2e(r, origin)],
        "queue_ms": [v for r in ok for v in request_values("queue_ms", r)],
    }


def _open_loop(result: dict) -> bool:
    arrival = (result.get("workload") or {}).get("arrival")
    return isinstance(arrival, dict) and arrival.get("process") not in (None, "closed")


def _clock_note(result: dict, origin: Origin, tool: str, tool_clock: str) -> str:
    if origin == "sent":
        return (f"TTFT and end-to-end latency run from when harness handed the request to the engine, "
                f"the point where {tool} starts its clock ({tool_clock}).")
    if _open_loop(result):
        return (f"TTFT and end-to-end latency run from each request's scheduled send time (open loop), so "
                f"client-side queueing and late sends count against the engine; {tool} starts its clock "
                f"{tool_clock}, which hides that wait (export with origin='sent' for {tool}'s clock).")
    return f"Closed loop: TTFT and end-to-end latency run from the send, as in {tool} ({tool_clock})."


def _window_note(result: dict, field: str) -> str:
    c = result["counts"]
    return (f"'{field}' is harness's measurement window, from the first measured request's start to the "
            f"last one's end; {c.get('excluded_warmup', 0)} warm-up and {c.get('excluded_cooldown', 0)} "
            f"cool-down requests were sent but are in no number here.")


def _model(result: dict) -> str | None:
    model = ((result.get("engine") or {}).get("config") or {}).get("model")
    return model if isinstance(model, str) else None


# ---------------------------------------------------------------------------------------------
# vLLM `bench serve`


def _vllm_stats(name: str, values: list[float], out: dict) -> None:
    """mean/median/std/pXX of one metric in vLLM's key pattern; nothing when there is no sample."""
    if not values:
        return
    arr = np.asarray(values, dtype=float)
    out[f"mean_{name}_ms"] = float(arr.mean())
    out[f"median_{name}_ms"] = float(np.median(arr))
    out[f"std_{name}_ms"] = float(arr.std())
    for p in PERCENTILES:
        out[f"p{p}_{name}_ms"] = float(np.percentile(arr, p))


def _vllm_traffic(result: dict) -> dict:
    """request_rate / burstiness / max_concurrency as vLLM would have been invoked for this traffic."""
    arrival = (result.get("workload") or {}).get("arrival")
    if not isinstance(arrival, dict):
        return {}
    process = arrival.get("process")
    if process == "closed":
        return {"request_rate": "inf", "burstiness": 1.0, "max_concurrency": arrival.get("concurrency")}
    burstiness = {"poisson": 1.0, "constant": "inf"}.get(process)
    if process == "gamma" and arrival.get("cv"):
        burstiness = 1.0 / arrival["cv"] ** 2  # gamma shape; vLLM's burstiness is the shape
    if burstiness is None:
        return {}
    return {"request_rate": arrival.get("rate"), "burstiness": burstiness,
            "max_concurrency": arrival.get("max_concurrency")}


def _peaks(ok: list[RequestRecord], origin: Origin) -> dict:
    """vLLM's max_output_tokens_per_s (1 s bins from the first start) and max_concurrent_requests."""
    spans = [(_start_ns(r, origin), r) for r in ok if _start_ns(r, origin) is not None]
    if not spans:
        return {}
    t0 = min(s for s, _ in spans)
    bins = Counter(int((t - t0) // _NS_PER_S) for _, r in spans for t in r.token_ns)
    events = sorted([(s, 1) for s, _ in spans] + [(r.end_ns, -1) for _, r in spans])  # ends before starts on ties
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    return {"max_output_tokens_per_s": float(max(bins.values(), default=0)), "max_concurrent_requests": peak}


def to_vllm(result: dict, records: list[RequestRecord], *, origin: Origin = "harness") -> dict:
    """`result` and its records as a `vllm bench serve` result JSON (vllm/benchmarks/serve.py keys)."""
    _require(result, "counts", "scalars", "window")
    counts, scalars = result["counts"], result["scalars"]
    ok = _successful(records)
    samples = _per_request(ok, origin)
    inputs_known = all(r.input_tokens is not None for r in ok)
    started = result.get("started_at")

    doc: dict = {}
    if started:
        doc["date"] = dt.datetime.fromisoformat(started).strftime("%Y%m%d-%H%M%S")
    kind = (result.get("engine") or {}).get("kind")
    if kind:
        doc["endpoint_type"] = doc["backend"] = f"harness:{kind}"
    doc["label"] = result.get("name")
    if _model(result):
        doc["model_id"] = _model(result)
    doc["num_prompts"] = counts.get("measured")
    doc.update(_vllm_traffic(result))
    doc["duration"] = result["window"]["duration_s"]
    doc["completed"] = counts["completed"]
    doc["failed"] = counts["failed"]
    if inputs_known:
        doc["total_input_tokens"] = sum(r.input_tokens for r in ok)
    doc["total_output_tokens"] = sum(r.output_tokens for r in ok)
    doc["request_throughput"] = scalars["request_throughput_req_s"]
    doc["request_goodput"] = scalars.get("goodput_req_s") if result.get("slo") else None
    doc["output_throughput"] = scalars["output_throughput_tok_s"]
    if inputs_known:
        doc["total_token_throughput"] = scalars["total_token_throughput_tok_s"]
    doc.update(_peaks(ok, origin))

    for vllm_name, harness_name in _VLLM_METRICS.items():
        if vllm_name == "client_queue_time" and not _open_loop(result):
            continue
        _vllm_stats(vllm_name, samples[harness_name], doc)
    if origin == "sent" and _open_loop(result):
        _vllm_stats("e2el_including_client_queue", [v for r in ok for v in request_values("e2e_ms", r)], doc)

    vllm_clock = "just before the HTTP request is sent, after its --max-concurrency slot frees"
    notes = [
        "Exported by harness; numbers follow harness's definitions under vLLM's names.",
        _clock_note(result, origin, "vLLM", vllm_clock),
        ("ITL is per token: a chunk of k tokens is spread evenly over the gap since the previous chunk "
         "(vLLM records one ITL sample per streamed chunk). E2EL ends at the end of the stream."),
        "TPOT excludes requests with a single output token.",
        _window_note(result, "duration"),
        ("Statistics rest on the successful measured requests only; 'failed' counts the measured ones that "
         "failed. Percentiles interpolate linearly (as numpy, like vLLM); std is the population standard deviation."),
    ]
    if "mean_client_queue_time_ms" in doc:
        notes.append("client_queue_time is harness's queue_ms: sent minus scheduled time.")
    if not inputs_known:
        notes.append("total_input_tokens and total_token_throughput are left out: some prompts were text "
                     "whose token count harness does not know.")
    if doc["request_goodput"] is not None:
        notes.append("request_goodput counts requests meeting every per-request SLO of the harness config.")
    doc["harness_note"] = " ".join(notes)
    doc["harness"] = {"name": result.get("name"), "origin": origin, "simulated": result.get("simulated"),
                      "schema_version": result.get("schema_version")}
    return doc


# ---------------------------------------------------------------------------------------------
# trtllm-bench `--report_json`


def _trt_stats(values: list[float]) -> dict | None:
    """trtllm-bench's PercentileStats: the sorted value at index int(n * q), no interpolation."""
    if not values:
        return None
    s = sorted(values)
    n = len(s)
    out = {f"p{p}": float(s[int(n * p / 100)]) for p in PERCENTILES}
    out.update(minimum=float(s[0]), maximum=float(s[-1]), average=float(sum(s) / n))
    return out


def _engine_config(result: dict) -> dict:
    return (result.get("engine") or {}).get("config") or {}


def to_trtllm_bench(result: dict, records: list[RequestRecord], *, origin: Origin = "harness") -> dict:
    """`result` and its records laid out like trtllm-bench's `--report_json` (get_statistics_dict)."""
    _require(result, "counts", "scalars", "window")
    counts, scalars = result["counts"], result["scalars"]
    cfg = _engine_config(result)
    ok = _successful(records)
    samples = _per_request(ok, origin)
    measured = [r for r in records if r.phase == "measured"]
    inputs_known = all(r.input_tokens is not None for r in ok)
    window_ms = result["window"]["duration_s"] * 1000.0

    engine: dict = {}
    if _model(result):
        engine["model"] = _model(result)
    kind = (result.get("engine") or {}).get("kind")
    if kind:
        engine["backend"] = f"harness:{kind}"
    version = ((result.get("fingerprint") or {}).get("engine") or {}).get("engine_version")
    if version:
        engine["version"] = version
    for key in ("dtype", "quantization"):
        if key in cfg:
            engine[key] = cfg[key]

    world: dict = {}
    tp = cfg.get("tp", cfg.get("tensor_parallel_size"))
    pp = cfg.get("pp", cfg.get("pipeline_parallel_size"))
    if tp is not None:
        world["tp_size"] = tp
    if pp is not None:
        world["pp_size"] = pp
    world_size = tp * (pp or 1) if tp is not None else None
    if world_size is not None:
        world["world_size"] = world_size
    for ours, theirs in (("max_batch_size", "max_batch_size"), ("max_num_tokens", "max_num_tokens"),
                         ("kv_cache_fraction", "kv_cache_percentage")):
        if ours in cfg:
            world[theirs] = cfg[ours]

    n_ok = len(ok)
    out_tokens = sum(r.output_tokens for r in ok)
    request_info: dict = {"num_requests": n_ok}
    if samples["e2e_ms"] and window_ms > 0:
        request_info["avg_num_concurrent_requests"] = sum(samples["e2e_ms"]) / window_ms
    if n_ok and inputs_known:
        request_info["avg_input_length"] = sum(r.input_tokens for r in ok) / n_ok
    if n_ok:
        request_info["avg_output_length"] = out_tokens / n_ok

    performance: dict = {"total_latency_ms": window_ms}
    if samples["e2e_ms"]:
        performance["avg_request_latency_ms"] = float(np.mean(samples["e2e_ms"]))
    performance["request_throughput_req_s"] = scalars["request_throughput_req_s"]
    performance["system_output_throughput_tok_s"] = scalars["output_throughput_tok_s"]
    if inputs_known:
        performance["system_total_throughput_tok_s"] = scalars["total_token_throughput_tok_s"]
    per_user = [r.output_tokens / (e / 1000.0) for r in ok for e in _e2e(r, origin) if e > 0]
    if per_user:
        performance["output_throughput_per_user_tok_s"] = float(np.mean(per_user))
    if world_size and scalars.get("output_throughput_tok_s") is not None:
        performance["output_throughput_per_gpu_tok_s"] = scalars["output_throughput_tok_s"] / world_size
    if samples["e2e_ms"]:
        performance["request_latency_percentiles_ms"] = _trt_stats(samples["e2e_ms"])

    doc: dict = {"engine": engine, "world_info": world, "request_info": request_info, "performance": performance}
    if samples["ttft_ms"]:
        gen_tps = [(len(r.token_ns) - 1) * _NS_PER_S / (r.token_ns[-1] - r.token_ns[0])
                   for r in ok if len(r.token_ns) >= 2 and r.token_ns[-1] > r.token_ns[0]]
        streaming: dict = {}
        if gen_tps:
            streaming["token_output_speed_tok_s"] = float(np.mean(gen_tps))
        streaming["avg_ttft_ms"] = float(np.mean(samples["ttft_ms"]))
        if samples["tpot_ms"]:
            streaming["avg_tpot_ms"] = float(np.mean(samples["tpot_ms"]))
            streaming["tpot_percentiles"] = _trt_stats(samples["tpot_ms"])
        streaming["ttft_percentiles"] = _trt_stats(samples["ttft_ms"])
        if gen_tps:
            streaming["gen_tps_percentiles"] = _trt_stats(gen_tps)
        doc["streaming_metrics"] = streaming

    dataset: dict = {}
    osl = [r.expected_output_tokens for r in measured]
    if measured and all(r.input_tokens is not None for r in measured):
        isl = [r.input_tokens for r in measured]
        seq = [i + o for i, o in zip(isl, osl, strict=True)]
        dataset.update(isl_stats=_trt_stats(isl), seq_len_stats=_trt_stats(seq))
    if osl:
        dataset["osl_stats"] = _trt_stats(osl)
    dataset["num_requests"] = len(measured)
    dataset["dataset_path"] = (result.get("workload") or {}).get("path")
    for name, key in (("isl", "isl_stats"), ("osl", "osl_stats"), ("sequence_length", "seq_len_stats")):
        if key in dataset:
            dataset[f"max_{name}"] = int(dataset[key]["maximum"])
            dataset[f"avg_{name}"] = int(dataset[key]["average"])
    doc["dataset"] = dataset

    notes = [
        "Exported by harness; numbers follow harness's definitions under trtllm-bench's names.",
        _clock_note(result, origin, "trtllm-bench",
                    "when it hands the request to the LLM API, after its --concurrency slot frees"),
        ("TPOT is per request (last token - first token) / (output tokens - 1); trtllm-bench uses the response "
         "end instead of the last token and counts one-token requests as 0, which harness leaves out."),
        ("Percentile blocks use trtllm-bench's estimator (the sorted value at index int(n*q), no "
         "interpolation), so they can differ from result.json's interpolated percentiles."),
        _window_note(result, "total_latency_ms"),
        (f"num_requests counts the {n_ok} successful measured requests; failed ones "
         f"({counts.get('failed', 0)}) are in no statistic (in trtllm-bench a failed request aborts the run). Left out as unknown to "
         "harness: issue_rate, ep_size, scheduling_policy, engine_dir, model_path, machine."),
    ]
    if not world_size:
        notes.append("world_info has no tp/pp and output_throughput_per_gpu_tok_s is left out: the engine "
                     "config names no parallelism.")
    if not inputs_known:
        notes.append("Input-length fields are left out: some prompts were text whose token count "
                     "harness does not know.")
    doc["harness_note"] = " ".join(notes)
    doc["harness"] = {"name": result.get("name"), "origin": origin, "simulated": result.get("simulated"),
                      "schema_version": result.get("schema_version")}
    return doc


# ---------------------------------------------------------------------------------------------
# reading vLLM results back

_PCT_KEY = re.compile(r"^p(\d+(?:\.\d+)?)_(ttft|tpot|itl|e2el|client_queue_time)_ms$")


def _number(doc: dict, key: str, required: bool = True) -> float | None:
    if key not in doc:
        if required:
            raise ValueError(f"vLLM result is missing field '{key}'")
        return None
    value = doc[key]
    if value is None and not required:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"vLLM result field '{key}' must be a number, got {value!r}")
    return value


def from_vllm(doc: dict) -> dict:
    """A `vllm bench serve` result JSON as harness's {counts, window, distributions, scalars}.

    Distribution statistics vLLM does not report (count, min, max, unreported percentiles,
    confidence intervals) are None; `std` and extra percentiles (e.g. p99.9) are kept. The numbers
    keep vLLM's definitions: its clock starts at the HTTP send and its ITL is per chunk.
    """
    if not isinstance(doc, dict):
        raise ValueError(f"vLLM result must be a JSON object, got {type(doc).__name__}")
    duration = _number(doc, "duration")
    completed = _number(doc, "completed")
    request_throughput = _number(doc, "request_throughput")
    failed = _number(doc, "failed", required=False)

    distributions: dict[str, dict] = {}
    for vllm_name, harness_name in _VLLM_METRICS.items():
        if f"mean_{vllm_name}_ms" not in doc:
            continue
        summary: dict = {"count": None, **{s: None for s in STATISTICS}}
        summary["mean"] = _number(doc, f"mean_{vllm_name}_ms")
        summary["p50"] = _number(doc, f"median_{vllm_name}_ms", required=False)
        summary["std"] = _number(doc, f"std_{vllm_name}_ms", required=False)
        distributions[harness_name] = summary
    for key in doc:
        m = _PCT_KEY.match(key)
        if m and _VLLM_METRICS[m.group(2)] in distributions:
            p = m.group(1)
            distributions[_VLLM_METRICS[m.group(2)]][f"p{p}"] = _number(doc, key)
    if not distributions:
        raise ValueError("vLLM result has no latency statistics (no 'mean_<metric>_ms' field for "
                         "ttft, tpot, itl or e2el)")
    for summary in distributions.values():
        summary["ci"] = {f"p{p}": [None, None] for p in PERCENTILES}

    total = None if failed is None else completed + failed
    scalars = {
        "output_throughput_tok_s": _number(doc, "output_throughput", required=False),
        "total_token_throughput_tok_s": _number(doc, "total_token_throughput", required=False),
        "request_throughput_req_s": request_throughput,
        "goodput_req_s": _number(doc, "request_goodput", required=False),
        "slo_attainment": None,
        "error_rate": None if not total else failed / total,
    }
    return {
        "kind": "vllm.bench_serve",
        "source": {k: doc.get(k) for k in ("date", "backend", "model_id", "label", "request_rate",
                                            "burstiness", "max_concurrency", "num_prompts") if k in doc},
        "counts": {"measured": total, "completed": completed, "failed": failed},
        "tokens": {"input": _number(doc, "total_input_tokens", required=False),
                   "output": _number(doc, "total_output_tokens", required=False)},
        "window": {"duration_s": duration},
        "distributions": distributions,
        "scalars": scalars,
    }

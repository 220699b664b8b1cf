"""Exports to vLLM / trtllm-bench field names from hand-built records with known values (ms -> ns)."""
import json

import pytest

from harness.export import from_vllm, to_trtllm_bench, to_vllm
from harness.metrics import SloLimit, compute
from harness.records import RequestRecord

MS = 1_000_000


def rec(id, sched, sent, tokens, end=None, phase="measured", error=None, inp=10, expected=None):
    return RequestRecord(id=id, phase=phase, expected_output_tokens=expected or max(len(tokens), 1),
                         input_tokens=inp, scheduled_ns=None if sched is None else sched * MS,
                         dispatched_ns=sent * MS, sent_ns=sent * MS, token_ns=[t * MS for t in tokens],
                         end_ns=(end if end is not None else tokens[-1]) * MS, error=error)


def open_loop_records():
    return [
        rec("w", -50, -50, [-40, -30], phase="warmup"),
        rec("a", 0, 10, [100, 120, 140], inp=5),        # ttft 100 (90 from send), e2e 140 (130), tpot 20
        rec("b", 100, 100, [150, 160], end=170, inp=7),  # ttft 50, e2e 70, tpot 10
        rec("c", 200, 230, [300], inp=3),                # ttft 100 (70), e2e 100 (70), no tpot
        rec("f", 250, 250, [], end=400, error="boom", inp=4, expected=2),
    ]


def make_result(records, arrival=None, slo=None, engine_config=None):
    limits = [SloLimit(m, s, v) for m, stats in (slo or {}).items() for s, v in stats.items()]
    return {
        "schema_version": 1, "kind": "harness.run_result", "name": "exp", "simulated": True,
        "engine": {"kind": "mock", "config": engine_config or {"model": "m", "max_batch_size": 8}},
        "workload": {"kind": "synthetic", "arrival": arrival or {"process": "poisson", "rate": 10.0}},
        "slo": slo or {}, "fingerprint": {"engine": {"engine_version": "service-model-1"}},
        "started_at": "2025-01-02T03:04:05+00:00",
        **compute(records, limits),
    }


def test_vllm_export_matches_hand_computed_values():
    records = open_loop_records()
    doc = to_vllm(make_result(records), records)
    assert doc["date"] == "20250102-030405"
    assert doc["backend"] == "harness:mock" and doc["model_id"] == "m" and doc["label"] == "exp"
    assert (doc["request_rate"], doc["burstiness"], doc["max_concurrency"]) == (10.0, 1.0, None)
    assert doc["num_prompts"] == 4
    assert doc["duration"] == pytest.approx(0.4)       # window 0 .. 400 ms
    assert (doc["completed"], doc["failed"]) == (3, 1)
    assert (doc["total_input_tokens"], doc["total_output_tokens"]) == (15, 6)
    assert doc["request_throughput"] == pytest.approx(7.5)
    assert doc["output_throughput"] == pytest.approx(15.0)
    assert doc["total_token_throughput"] == pytest.approx(52.5)
    assert doc["request_goodput"] is None                # no SLO configured, as vLLM without --goodput
    # TTFT from the schedule: [100, 50, 100]
    assert doc["mean_ttft_ms"] == pytest.approx(250 / 3)
    assert doc["median_ttft_ms"] == pytest.approx(100)
    assert doc["std_ttft_ms"] == pytest.approx((5000 / 9) ** 0.5)   # population std
    assert doc["p99_ttft_ms"] == pytest.approx(100)
    assert doc["p50_ttft_ms"] == pytest.approx(100)
    # E2EL [140, 70, 100]: linear interpolation, p90 = 100 + 0.8 * 40
    assert doc["mean_e2el_ms"] == pytest.approx(310 / 3)
    assert doc["p90_e2el_ms"] == pytest.approx(132)
    # TPOT [20, 10] (the one-token request has none); ITL per token [20, 20, 10]
    assert (doc["mean_tpot_ms"], doc["median_tpot_ms"], doc["std_tpot_ms"]) == pytest.approx((15, 15, 5))
    assert (doc["mean_itl_ms"], doc["median_itl_ms"]) == pytest.approx((50 / 3, 20))
    # open loop: client queue time = sent - scheduled of the successful ones [10, 0, 30]
    assert (doc["mean_client_queue_time_ms"], doc["median_client_queue_time_ms"]) == pytest.approx((40 / 3, 10))
    # all six tokens arrive in the first second; requests a and b overlap
    assert doc["max_output_tokens_per_s"] == 6.0 and doc["max_concurrent_requests"] == 2
    assert "scheduled send time" in doc["harness_note"] and "per token" in doc["harness_note"]
    assert "1 warm-up" in doc["harness_note"]
    json.dumps(doc, allow_nan=False)  # strict JSON


def test_vllm_export_agrees_with_result_json_statistics():
    records = open_loop_records()
    result = make_result(records)
    doc = to_vllm(result, records)
    for vllm_name, ours in (("ttft", "ttft_ms"), ("tpot", "tpot_ms"), ("itl", "itl_ms"), ("e2el", "e2e_ms")):
        d = result["distributions"][ours]
        assert doc[f"mean_{vllm_name}_ms"] == pytest.approx(d["mean"])
        for p in ("p50", "p90", "p95", "p99"):
            assert doc[f"{p}_{vllm_name}_ms"] == pytest.approx(d[p])


def test_vllm_export_with_send_time_origin():
    records = open_loop_records()
    doc = to_vllm(make_result(records), records, origin="sent")
    assert doc["mean_ttft_ms"] == pytest.approx((90 + 50 + 70) / 3)
    assert doc["mean_e2el_ms"] == pytest.approx((130 + 70 + 70) / 3)
    # the queue-inclusive latency is harness's own e2e
    assert doc["mean_e2el_including_client_queue_ms"] == pytest.approx(310 / 3)
    assert doc["harness"]["origin"] == "sent"
    assert "handed the request to the engine" in doc["harness_note"]


def test_vllm_export_closed_loop_traffic_and_goodput():
    records = [rec("a", None, 0, [30, 40]), rec("b", None, 0, [80, 90])]
    result = make_result(records, arrival={"process": "closed", "concurrency": 2}, slo={"ttft_ms": {"p99": 50}})
    doc = to_vllm(result, records)
    assert (doc["request_rate"], doc["max_concurrency"]) == ("inf", 2)
    assert doc["request_goodput"] == pytest.approx(1 / 0.09)  # only "a" meets ttft <= 50 ms; window 90 ms
    assert "mean_client_queue_time_ms" not in doc
    assert "Closed loop" in doc["harness_note"]


@pytest.mark.parametrize("arrival,burstiness", [({"process": "gamma", "rate": 5, "cv": 2.0}, 0.25),
                                                ({"process": "constant", "rate": 5}, "inf")])
def test_vllm_burstiness_from_arrival(arrival, burstiness):
    records = [rec("a", 0, 0, [10, 20])]
    doc = to_vllm(make_result(records, arrival=arrival), records)
    assert doc["burstiness"] == burstiness and doc["request_rate"] == 5


def test_fields_harness_cannot_fill_are_left_out():
    records = [rec("a", 0, 0, [10], inp=None), rec("b", 5, 5, [20], inp=None)]  # text prompts, 1 token each
    doc = to_vllm(make_result(records), records)
    assert "total_input_tokens" not in doc and "total_token_throughput" not in doc
    assert not any(k.endswith(("_tpot_ms", "_itl_ms")) for k in doc)  # no zeros invented
    assert "text" in doc["harness_note"]
    trt = to_trtllm_bench(make_result(records), records)
    assert "system_total_throughput_tok_s" not in trt["performance"]
    assert "tpot_percentiles" not in trt["streaming_metrics"]
    assert "isl_stats" not in trt["dataset"] and "osl_stats" in trt["dataset"]
    assert "output_throughput_per_gpu_tok_s" not in trt["performance"] and trt["world_info"] == {"max_batch_size": 8}


def test_trtllm_bench_export_matches_hand_computed_values():
    records = open_loop_records()
    cfg = {"model": "m", "max_batch_size": 8, "max_num_tokens": 2048, "kv_cache_fraction": 0.9, "tp": 2, "pp": 1}
    doc = to_trtllm_bench(make_result(records, engine_config=cfg), records)
    assert doc["engine"] == {"model": "m", "backend": "harness:mock", "version": "service-model-1"}
    assert doc["world_info"] == {"tp_size": 2, "pp_size": 1, "world_size": 2, "max_batch_size": 8,
                                 "max_num_tokens": 2048, "kv_cache_percentage": 0.9}
    ri = doc["request_info"]
    assert ri["num_requests"] == 3
    assert ri["avg_num_concurrent_requests"] == pytest.approx(310 / 400)
    assert (ri["avg_input_length"], ri["avg_output_length"]) == (5, 2)
    perf = doc["performance"]
    assert perf["total_latency_ms"] == pytest.approx(400)
    assert perf["avg_request_latency_ms"] == pytest.approx(310 / 3)
    assert perf["request_throughput_req_s"] == pytest.approx(7.5)
    assert perf["system_output_throughput_tok_s"] == pytest.approx(15)
    assert perf["system_total_throughput_tok_s"] == pytest.approx(52.5)
    assert perf["output_throughput_per_user_tok_s"] == pytest.approx(20.0)  # mean of 3/.14, 2/.07, 1/.1
    assert perf["output_throughput_per_gpu_tok_s"] == pytest.approx(7.5)
    # trtllm-bench's estimator on [70, 100, 140]: sorted[int(n*q)], no interpolation
    assert perf["request_latency_percentiles_ms"] == pytest.approx(
        {"p50": 100, "p90": 140, "p95": 140, "p99": 140, "minimum": 70, "maximum": 140, "average": 310 / 3})
    st = doc["streaming_metrics"]
    assert st["avg_ttft_ms"] == pytest.approx(250 / 3)
    assert st["ttft_percentiles"]["p50"] == 100 and st["ttft_percentiles"]["minimum"] == 50
    assert st["avg_tpot_ms"] == pytest.approx(15)
    assert st["tpot_percentiles"] == pytest.approx(
        {"p50": 20, "p90": 20, "p95": 20, "p99": 20, "minimum": 10, "maximum": 20, "average": 15})
    assert st["token_output_speed_tok_s"] == pytest.approx(75)     # (2 / 40 ms + 1 / 10 ms) / 2
    assert st["gen_tps_percentiles"]["maximum"] == pytest.approx(100)
    ds = doc["dataset"]
    assert ds["num_requests"] == 4 and ds["max_isl"] == 7 and ds["avg_isl"] == 4  # isl [5, 7, 3, 4]
    assert ds["osl_stats"]["maximum"] == 3 and ds["max_sequence_length"] == 9
    assert "int(n*q)" in doc["harness_note"] and "failed ones (1)" in doc["harness_note"]
    json.dumps(doc, allow_nan=False)


def test_from_vllm_reads_back_what_to_vllm_wrote():
    records = open_loop_records()
    result = make_result(records)
    back = from_vllm(json.loads(json.dumps(to_vllm(result, records))))
    assert back["counts"] == {"measured": 4, "completed": 3, "failed": 1}
    assert back["window"]["duration_s"] == pytest.approx(0.4)
    assert back["scalars"]["request_throughput_req_s"] == pytest.approx(7.5)
    assert back["scalars"]["error_rate"] == pytest.approx(0.25)
    for m in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        for stat in ("mean", "p50", "p90", "p95", "p99"):
            assert back["distributions"][m][stat] == pytest.approx(result["distributions"][m][stat]), (m, stat)
        assert back["distributions"][m]["min"] is None and back["distributions"][m]["count"] is None
    # vLLM's client queue time covers successful requests only (harness's queue_ms also the failed one)
    assert back["distributions"]["queue_ms"]["mean"] == pytest.approx(40 / 3)


def test_from_vllm_reads_a_vllm_file():
    doc = {"date": "20250101-000000", "backend": "vllm", "model_id": "x", "request_rate": "inf",
           "duration": 10.0, "completed": 100, "failed": 0, "total_input_tokens": 1000,
           "total_output_tokens": 5000, "request_throughput": 10.0, "request_goodput": None,
           "output_throughput": 500.0, "total_token_throughput": 600.0,
           "mean_ttft_ms": 50.0, "median_ttft_ms": 45.0, "std_ttft_ms": 5.0, "p99_ttft_ms": 80.0,
           "p99.9_ttft_ms": 95.0, "mean_itl_ms": 10.0, "median_itl_ms": 9.0, "std_itl_ms": 1.0, "p99_itl_ms": 20.0}
    out = from_vllm(doc)
    ttft = out["distributions"]["ttft_ms"]
    assert (ttft["mean"], ttft["p50"], ttft["p99"], ttft["std"], ttft["p99.9"]) == (50.0, 45.0, 80.0, 5.0, 95.0)
    assert ttft["p90"] is None
    assert set(out["distributions"]) == {"ttft_ms", "itl_ms"}
    assert out["scalars"]["goodput_req_s"] is None and out["scalars"]["error_rate"] == 0
    assert out["source"]["model_id"] == "x" and out["tokens"] == {"input": 1000, "output": 5000}


@pytest.mark.parametrize("drop", ["duration", "completed", "request_throughput"])
def test_from_vllm_names_the_missing_field(drop):
    doc = {"duration": 1.0, "completed": 1, "request_throughput": 1.0, "mean_ttft_ms": 1.0}
    del doc[drop]
    with pytest.raises(ValueError, match=f"missing field '{drop}'"):
        from_vllm(doc)


def test_from_vllm_rejects_bad_values_and_empty_results():
    with pytest.raises(ValueError, match="'duration' must be a number"):
        from_vllm({"duration": "10s", "completed": 1, "request_throughput": 1.0, "mean_ttft_ms": 1.0})
    with pytest.raises(ValueError, match="no latency statistics"):
        from_vllm({"duration": 1.0, "completed": 1, "request_throughput": 1.0})
    with pytest.raises(ValueError, match="JSON object"):
        from_vllm([1, 2])


def test_export_needs_a_complete_result():
    with pytest.raises(ValueError, match="missing 'scalars'"):
        to_vllm({"counts": {}, "window": {}}, [])

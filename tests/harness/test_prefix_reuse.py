"""Prefix reuse from the client side (harness/prefix_reuse.py): cold vs warm TTFT, the ideal reuse, the result block
and its report section; end to end on the mock engine's SIMULATED prefix caching, whose exact answer `simulate` gives;
and the tuner picking prefix caching for shared-prefix traffic under a TTFT SLO."""
import random
import subprocess
import sys
from html import unescape

import numpy as np
import pytest
import yaml

from engine_adapters.mock import MockConfig, simulate, simulate_run
from harness.config import parse_config
from harness.prefix_reuse import ideal_reuse, prefix_reuse
from harness.records import RequestRecord, read_records
from harness.runner import run_event_loop
from harness.store import RunDir, TrialFiles, read_json
from harness.trial import measure
from reports import render_run_report
from tests.reports.test_reports import make_records, make_result
from workloads import RequestSpec, TokenSpace

MS = 1_000_000


def spec(i: int, group: str | None, prompt: tuple[int, ...] = (1, 2, 3, 4)) -> RequestSpec:
    return RequestSpec(id=f"r{i}", max_output_tokens=2, prompt_token_ids=prompt, shared_prefix_id=group)


def record(i: int, phase: str, sent_ms: float, ttft_ms: float | None, input_tokens: int = 100) -> RequestRecord:
    """A closed-loop record sent at `sent_ms`; `ttft_ms` None: it failed before its first token."""
    r = RequestRecord(id=f"r{i}", phase=phase, expected_output_tokens=2, input_tokens=input_tokens,
                      sent_ns=int(sent_ms * MS), dispatched_ns=int(sent_ms * MS))
    if ttft_ms is None:
        r.end_ns, r.error = r.sent_ns + MS, "server said 500"
    else:
        first = r.sent_ns + int(ttft_ms * MS)
        r.token_ns, r.end_ns = [first, first + MS], first + MS
    return r


def test_first_of_a_group_is_cold_and_later_ones_warm():
    groups = ["g1", "g2", "g1", None, "g2", "g3", "g3", "g2"]
    specs = [spec(i, g) for i, g in enumerate(groups)]
    records = [record(0, "warmup", 0, 90),  # g1 first, but warm-up: it fills the cache, its TTFT is not counted
               record(1, "measured", 100, 100),  # g2 cold
               record(2, "measured", 200, 20),  # g1 warm (after the warm-up request)
               record(3, "measured", 300, 50),  # no group: not counted
               record(4, "measured", 400, None),  # g2 warm, failed: not counted
               record(5, "measured", 500, 80, input_tokens=40),  # g3 cold
               record(6, "measured", 510, 60),  # g3 warm, sent before g3's first token (at 580 ms)
               record(7, "measured", 700, 30)]  # g2 warm
    block = prefix_reuse(specs, records)
    assert block["groups"] == 3 and block["requests"] == 7
    cold, warm = block["cold"], block["warm"]
    assert cold["ttft_ms"]["count"] == 2 and cold["ttft_ms"]["p50"] == pytest.approx(90)
    assert cold["ttft_per_input_token_ms"]["p50"] == pytest.approx((100 / 100 + 80 / 40) / 2)
    assert warm["ttft_ms"]["count"] == 3 and warm["ttft_ms"]["p50"] == pytest.approx(30)
    assert warm["ttft_ms"]["p95"] == pytest.approx(30 + 0.9 * 30)  # linear interpolation between 30 and 60
    assert block["warm_to_cold_p50"]["ttft_ms"] == pytest.approx(30 / 90)
    assert block["warm_sent_before_prefix_computed"] == 1
    assert block["ideal_reuse"] == {"reused_tokens": 7 * 4, "prompt_tokens": 8 * 4, "share": 7 / 8}

    # the preflight request was a copy of g2's first one: g2's first measured request is warm, and ready
    after_preflight = prefix_reuse(specs, records, sent_before=specs[1:2])
    assert after_preflight["cold"]["ttft_ms"]["count"] == 1 and after_preflight["warm"]["ttft_ms"]["count"] == 4
    assert after_preflight["warm_sent_before_prefix_computed"] == 1
    assert after_preflight["ideal_reuse"]["prompt_tokens"] == 9 * 4


def test_no_block_without_shared_prefixes_and_no_ideal_reuse_for_text_prompts():
    records = [record(i, "measured", i * 100, 10) for i in range(3)]
    assert prefix_reuse([spec(i, None) for i in range(3)], records) is None
    text = [RequestSpec(id=f"r{i}", max_output_tokens=2, prompt_text="same system prompt", shared_prefix_id="c")
            for i in range(3)]
    block = prefix_reuse(text, records)
    assert block["ideal_reuse"] is None and block["warm"]["ttft_ms"]["count"] == 2
    with pytest.raises(ValueError, match="same order"):
        prefix_reuse(text, records[::-1])


def test_ideal_reuse_is_the_longest_common_prefix_with_any_earlier_prompt():
    rng = random.Random(1)
    stems = [tuple(rng.randrange(3) for _ in range(rng.randrange(0, 12))) for _ in range(6)]
    prompts = [rng.choice(stems) + tuple(rng.randrange(3) for _ in range(rng.randrange(1, 8))) for _ in range(200)]

    def common(a, b):
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n

    brute = sum(max((common(p, q) for q in prompts[:i]), default=0) for i, p in enumerate(prompts))
    got = ideal_reuse(prompts)
    assert got["reused_tokens"] == brute and got["prompt_tokens"] == sum(map(len, prompts))


# end to end on the mock engine -----------------------------------------------------------------------

PREFIX, SUFFIX, GROUPS, REQUESTS = 1024, 32, 4, 24
ENGINE = {"step_ms": 2, "decode_ms_per_seq": 0.2, "prefill_ms_per_token": 0.02, "kv_block_tokens": 32}
WORKLOAD = {"kind": "shared_prefix", "requests": REQUESTS, "groups": GROUPS, "group_selection": "round_robin",
            "prefix_tokens": {"dist": "fixed", "value": PREFIX}, "suffix_tokens": {"dist": "fixed", "value": SUFFIX},
            "output_tokens": {"dist": "fixed", "value": 4}, "arrival": {"process": "constant", "rate": 20}}


def shared_prefix_run(tmp_path, caching: bool):
    cfg = parse_config({"name": "sp", "engine": {"kind": "mock", "params": {**ENGINE, "prefix_caching": caching}},
                        "workload": WORKLOAD}, "test")
    return cfg, run_event_loop(measure(cfg, tmp_path))


def simulated_requests(cfg) -> list[tuple[float, tuple[int, ...], int]]:
    """The run's requests as `simulate` takes them: the preflight (a 4-token copy of the first request) runs alone
    before the run, as in harness.trial.measure."""
    specs = list(cfg.workload.generate(TokenSpace(vocab_size=MockConfig().vocab_size)))
    start = 10.0  # s: the preflight is long done
    return [(0.0, specs[0].prompt_token_ids, 4)] + [(start + s.scheduled_offset_s, s.prompt_token_ids,
                                                     s.max_output_tokens) for s in specs]


def simulated_p50s(cfg) -> tuple[float, float]:
    """Cold and warm TTFT p50 (ms) as `simulate` computes them exactly."""
    requests = simulated_requests(cfg)
    ttft = [(first - arrival) * 1e3 for (first, _), (arrival, _, _) in zip(simulate(cfg.engine.resolve(), requests)[1:],
                                                                           requests[1:])]
    cold = ttft[1:GROUPS]  # request 0 repeats the preflight's prompt; requests 1..3 open their groups
    warm = [ttft[0]] + ttft[GROUPS:]
    return float(np.percentile(cold, 50)), float(np.percentile(warm, 50))


@pytest.mark.parametrize("caching", [True, False])
def test_warm_ttft_drops_by_the_simulated_prefill_of_the_cached_prefix(tmp_path, caching):
    """Requests 50 ms apart, each done in about 30 ms: no queueing, so TTFT is the prefill. With caching on, a warm
    request prefills only its 32-token suffix: 1024 x 0.02 = 20.48 ms less than a cold one (SIMULATED)."""
    cfg, result = shared_prefix_run(tmp_path, caching)
    block = result["prefix_reuse"]
    assert read_json(tmp_path / TrialFiles.RESULT)["prefix_reuse"] == block
    assert block["groups"] == GROUPS and block["requests"] == REQUESTS
    cold, warm = block["cold"]["ttft_ms"], block["warm"]["ttft_ms"]
    assert (cold["count"], warm["count"]) == (GROUPS - 1, REQUESTS - GROUPS + 1)  # request 0 follows the preflight
    assert block["ideal_reuse"]["prompt_tokens"] == (REQUESTS + 1) * (PREFIX + SUFFIX)
    least = (PREFIX + SUFFIX) + (REQUESTS - GROUPS) * PREFIX  # request 0 repeats the preflight, 20 repeat a prefix
    assert least <= block["ideal_reuse"]["reused_tokens"] <= least + 3 * REQUESTS  # random tokens may match by chance

    sim_cold, sim_warm = simulated_p50s(cfg)
    assert sim_cold == pytest.approx(2 + 0.02 * (PREFIX + SUFFIX))
    assert sim_warm == pytest.approx(2 + 0.02 * SUFFIX if caching else sim_cold)
    # measured from the scheduled time: the client's send and the engine's wake-up only add (at most a few ms here)
    assert -0.01 <= cold["p50"] - sim_cold < 3 and -0.01 <= warm["p50"] - sim_warm < 3
    if caching:
        assert cold["p50"] - warm["p50"] == pytest.approx(0.02 * PREFIX, abs=3)
        assert block["warm_to_cold_p50"]["ttft_ms"] < 0.3
    else:
        assert abs(cold["p50"] - warm["p50"]) < 3


def test_engine_reported_cached_tokens_are_the_simulated_hits(tmp_path):
    """The mock reports each request's SIMULATED cache hits; records.jsonl and the result's `engine_reported` part
    hold exactly what `simulate_run` computes: a warm request finds its 1024-token prefix (32 whole blocks)."""
    cfg, result = shared_prefix_run(tmp_path, caching=True)
    truth = [r.cached_prompt_tokens for r in simulate_run(cfg.engine.resolve(), simulated_requests(cfg))[1:]]
    records = read_records(tmp_path / TrialFiles.RECORDS)
    assert [r.cached_prompt_tokens for r in records] == truth
    assert truth[0] == PREFIX + SUFFIX - 32  # the preflight's copy: all but its last block
    assert truth[1:GROUPS] == [0] * (GROUPS - 1) and set(truth[GROUPS:]) == {PREFIX}
    reported = result["prefix_reuse"]["engine_reported"]
    prompt_tokens = REQUESTS * (PREFIX + SUFFIX)
    assert reported["all"] == {"requests": REQUESTS, "cached_prompt_tokens": sum(truth), "prompt_tokens": prompt_tokens,
                               "share": sum(truth) / prompt_tokens}
    assert reported["cold"]["cached_prompt_tokens"] == 0
    assert reported["warm"]["requests"] == REQUESTS - GROUPS + 1


def test_engine_reported_share_counts_only_requests_with_a_report():
    """Server-counted prompt lengths where given; a request without a report enters neither sum; the key is absent
    when no request has a report (results of engines that report nothing stay as they were)."""
    specs = [spec(i, "g") for i in range(4)]
    records = [record(i, "measured", i * 100, 30, input_tokens=100) for i in range(4)]
    assert "engine_reported" not in prefix_reuse(specs, records)
    records[1].cached_prompt_tokens, records[1].server_input_tokens = 96, 120
    records[2].cached_prompt_tokens = 64
    records[0].cached_prompt_tokens = 0
    reported = prefix_reuse(specs, records)["engine_reported"]
    assert reported["all"] == {"requests": 3, "cached_prompt_tokens": 160, "prompt_tokens": 320, "share": 0.5}
    assert reported["cold"] == {"requests": 1, "cached_prompt_tokens": 0, "prompt_tokens": 100, "share": 0.0}
    assert reported["warm"] == {"requests": 2, "cached_prompt_tokens": 160, "prompt_tokens": 220, "share": 160 / 220}


def test_result_without_shared_prefixes_has_no_block_and_report_shows_the_section():
    plain = make_result(make_records(), MockConfig().model_dump(mode="json"))
    assert "prefix_reuse" not in plain
    html = render_run_report(plain, make_records(), "bench")
    assert "Prefix reuse" not in html

    groups = [f"g{i % 3}" for i in range(40)]
    specs = [spec(i, g) for i, g in enumerate(groups)]
    records = [record(i, "measured", i * 100, 90 if i < 3 else 30) for i in range(40)]
    with_block = {**plain, "prefix_reuse": prefix_reuse(specs, records)}
    html = render_run_report(with_block, records, "bench")
    section = " ".join(unescape(html.split("<h3>Prefix reuse: cold vs warm TTFT</h3>", 1)[1].split("<h3>", 1)[0]).split())
    assert "40 requests in 3 prefix groups" in section
    assert "cold: first of its group</th><td class=\"num\">3</td><td class=\"num\">90.0 ms</td>" in section
    assert "warm: later in its group</th><td class=\"num\">37</td><td class=\"num\">30.0 ms</td>" in section
    assert "warm ÷ cold (p50)</th><td></td><td class=\"num\">0.333</td>" in section
    assert "Ideal reuse: 156 of 160 prompt tokens (97.5%)" in section
    assert "SIMULATED ENGINE" in html
    assert "engine reported no cache hits" in section


def _reuse_section(result: dict, records) -> str:
    html = render_run_report(result, records, "bench")
    return " ".join(unescape(html.split("<h3>Prefix reuse: cold vs warm TTFT</h3>", 1)[1].split("<h3>", 1)[0]).split())


@pytest.mark.parametrize("simulated", [True, False])
def test_report_shows_engine_reported_reuse_and_where_it_came_from(simulated):
    specs = [spec(i, "g") for i in range(4)]
    records = [record(i, "measured", i * 100, 30, input_tokens=100) for i in range(4)]
    for r, cached in zip(records, (0, 96, 96, 64)):
        r.cached_prompt_tokens = cached
    result = {**make_result(records, MockConfig().model_dump(mode="json")),
              "prefix_reuse": prefix_reuse(specs, records)}
    if not simulated:
        result = {**result, "simulated": False, "engine": {**result["engine"], "kind": "tensorrt_llm"}}
    section = _reuse_section(result, records)
    assert ("every request of the run</th><td class=\"num\">4</td><td class=\"num\">256</td>"
            "<td class=\"num\">400</td><td class=\"num\">64.0%</td>") in section
    assert "warm: later in its group</th><td class=\"num\">3</td><td class=\"num\">256</td>" in section
    assert ("SIMULATED</b>: the mock engine's own count" in section) is simulated
    assert ("Engine-reported: what the engine (tensorrt_llm) says" in section) is not simulated


# the tuner ---------------------------------------------------------------------------------------------

def test_tune_turns_prefix_caching_on_for_shared_prefixes_under_a_ttft_slo(tmp_path):
    """Both settings tried (grid); with caching off every request prefills 1056 tokens (23 ms SIMULATED), over the
    10 ms p95 SLO; with it on, only the first request of group 1 does (group 0's follows the preflight): 1 of 48."""
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump({"name": "pc", "engine": "mock",
                                     "params": {"prefix_caching": {"type": "categorical", "choices": [False, True]}}}))
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({
        "name": "pc", "engine": {"kind": "mock", "params": ENGINE}, "workload": {**WORKLOAD, "requests": 48, "groups": 2},
        "slo": {"ttft_ms": {"p95": 10}},
        "search": {"space": str(space), "trials": 2, "sampler": "grid", "objective": "maximize goodput_req_s"}}))
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    run = RunDir(tmp_path / "runs" / "pc")
    assert yaml.safe_load(run.recommended.read_text())["engine"]["params"]["prefix_caching"] is True
    assert "Prefix reuse: cold vs warm TTFT" in run.report.read_text()

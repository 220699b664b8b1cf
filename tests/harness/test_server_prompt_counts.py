"""The server's own prompt counts (usage.prompt_tokens) in the fidelity summary and the report: a chat template's
overhead is the typical difference, not a mismatch; requests off it are counted; without client-side lengths the
server's counts stand alone."""
from __future__ import annotations

from harness.fidelity import workload_fidelity
from reports import render_run_report
from tests.reports.test_reports import make_records, make_trial, specs_of
from workloads.profile import SourceProfile

SOURCE = SourceProfile(kind="synthetic", description="s", rows_read=10, rows_used=10)


def test_chat_template_overhead_is_the_typical_difference_and_requests_off_it_are_counted(tmp_path):
    records = make_records(n=10, warmup=0)  # 100 input tokens each; one fails
    for i, r in enumerate(records):
        r.server_input_tokens = 100 + (7 if i != 3 else 19)  # 7: the template; request 3 reached it 12 tokens long
    records[9].error, records[9].server_input_tokens = "HTTP 500", None
    server = workload_fidelity(SOURCE, specs_of(records), records)["input_tokens"]["counted_by_server"]
    assert server["difference"] == {"p50": 7, "min": 7, "max": 19}
    assert (server["off_typical_requests"], server["compared_requests"]) == (1, 9)
    assert server["lengths"]["count"] == 9 and server["lengths"]["max"] == 119
    assert server["ks_generated_vs_server"] == 1.0  # every count is above every generated length

    result = make_trial(tmp_path, 0, {}, records).result
    html = render_run_report(result, records, "bench")
    assert "p50 7 tokens (min 7, max\n19)" in html
    assert '<span class="fail">1</span>\nof 9 requests differ from it' in html


def test_without_client_lengths_the_server_counts_stand_alone(tmp_path):
    records = make_records(n=4, warmup=0)
    for r in records:
        r.input_tokens, r.server_input_tokens = None, 50  # text prompts, no tokenizer
    fidelity = workload_fidelity(SOURCE, specs_of(records), records)
    server = fidelity["input_tokens"]["counted_by_server"]
    assert server["difference"] is None and server["compared_requests"] == 0 and server["lengths"]["p50"] == 50
    result = make_trial(tmp_path, 0, {}, records).result
    result["fidelity"] = fidelity
    assert "the server's\ncounts are the only exact ones" in render_run_report(result, records, "bench")


def test_engines_that_report_no_prompt_counts_and_older_results_have_no_server_row(tmp_path):
    records = make_records(n=4, warmup=0)
    assert workload_fidelity(SOURCE, specs_of(records), records)["input_tokens"]["counted_by_server"] is None
    result = make_trial(tmp_path, 0, {}, records).result
    assert "counted by the server" not in render_run_report(result, records, "bench")
    del result["fidelity"]["input_tokens"]["counted_by_server"]  # as written before the field existed
    assert "counted by the server" not in render_run_report(result, records, "bench")

"""Trace replay: Azure CSV and Mooncake JSONL parsing, time scaling, shared blocks, bad rows, config errors."""
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from harness.config import parse_config
from harness.errors import ConfigError
from workloads import TokenSpace, WorkloadConfig
from workloads.profile import BadRowError, BadRows
from workloads.trace import DATA_DIR, TraceWorkload, read_trace

SPACE = TokenSpace(vocab_size=100, reserved_ids=frozenset({0, 1, 2}))
HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
AZURE_ROWS = ["2023-11-16 18:17:03.9799600,4808,10",
              "2023-11-16 18:17:04.0319600,3180,8",
              "2023-11-16 18:17:04.0781491,110,27",
              "2023-11-16 18:17:05.0000000,7,1"]
RECORDED = [0.0, 0.052, 0.0981891, 1.02004]  # seconds after the first row, exactly as written


def write(tmp_path, *lines, name="trace.csv"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def azure(tmp_path, *rows, **kw) -> TraceWorkload:
    return workload(write(tmp_path, HEADER, *(rows or AZURE_ROWS)), **kw)


def workload(path, **kw) -> TraceWorkload:
    return TypeAdapter(WorkloadConfig).validate_python({"kind": "trace", "path": str(path), **kw})


def offsets(w):
    return [r.scheduled_offset_s for r in w.generate(SPACE)]


def test_azure_rows_replay_exact_times_and_lengths(tmp_path):
    w = azure(tmp_path)
    reqs = list(w.generate(SPACE))
    assert w.format == "azure" and w.requests == 4
    assert [r.id for r in reqs] == ["req-000000", "req-000001", "req-000002", "req-000003"]
    assert [r.scheduled_offset_s for r in reqs] == RECORDED  # 100 ns resolution kept, no float-seconds drift
    assert [r.input_tokens for r in reqs] == [4808, 3180, 110, 7]
    assert [r.max_output_tokens for r in reqs] == [10, 8, 27, 1]
    assert reqs[2].source == {"kind": "trace", "path": str(tmp_path / "trace.csv"), "line": 4}
    assert all(r.shared_prefix_id is None for r in reqs)
    ids = np.concatenate([r.prompt_token_ids for r in reqs])
    assert ids.min() >= 3 and ids.max() < 100 and all(type(t) is int for t in reqs[3].prompt_token_ids)
    assert len(set(ids.tolist())) == 97  # the whole allowed vocabulary gets used
    assert w.max_sequence_tokens() == 4808 + 10
    assert w.arrival.process == "trace"


def test_prompts_are_deterministic_per_seed_and_row(tmp_path):
    a = list(azure(tmp_path).generate(SPACE))
    assert a == list(azure(tmp_path).generate(SPACE))
    assert [r.prompt_token_ids for r in azure(tmp_path, seed=1).generate(SPACE)] != [r.prompt_token_ids for r in a]
    later = list(azure(tmp_path, window={"start_s": 0.05}).generate(SPACE))  # the same rows, fewer of them
    assert [r.prompt_token_ids for r in later] == [r.prompt_token_ids for r in a[1:]]


def test_speedup_divides_every_gap(tmp_path):
    assert offsets(azure(tmp_path, speedup=4)) == pytest.approx([t / 4 for t in RECORDED], rel=1e-15, abs=0)
    assert offsets(azure(tmp_path, speedup=0.5)) == pytest.approx([t * 2 for t in RECORDED], rel=1e-15, abs=0)


def test_window_is_recorded_time_from_the_first_request_and_applies_before_speedup(tmp_path):
    w = azure(tmp_path, window={"start_s": 0.05, "duration_s": 0.5})  # rows at 0.052 and 0.0981891 s
    assert [r.input_tokens for r in w.generate(SPACE)] == [3180, 110]
    assert offsets(w) == [0.0, pytest.approx(0.0461891, rel=1e-12)]
    fast = azure(tmp_path, window={"start_s": 0.05, "duration_s": 0.5}, speedup=10)
    assert offsets(fast) == [0.0, pytest.approx(0.00461891, rel=1e-12)]
    assert [r.input_tokens for r in azure(tmp_path, window={"duration_s": 0.052}).generate(SPACE)] == [4808]  # end excluded


def test_rate_rescales_to_the_mean_rate_keeping_the_shape(tmp_path):
    w = azure(tmp_path, rate=3)
    got = offsets(w)
    assert got[-1] == pytest.approx(1.0, rel=1e-15)  # 3 gaps at a mean of 1/3 s
    assert got == pytest.approx([t / 1.02004 for t in RECORDED], rel=1e-12, abs=0)
    assert w.source_profile().time_scale == pytest.approx(1.02004, rel=1e-12)
    assert "recorded time / 1.02" in w.source_profile().description
    assert offsets(azure(tmp_path, rate=50, requests=1)) == [0.0]


def test_requests_takes_the_first_rows_of_the_window(tmp_path):
    w = azure(tmp_path, window={"start_s": 0.01}, requests=2)
    assert [r.input_tokens for r in w.generate(SPACE)] == [3180, 110]
    assert offsets(w) == [0.0, pytest.approx(0.0461891, rel=1e-12)]


def test_caps_clip_lengths_keep_the_rows_and_are_counted(tmp_path):
    w = azure(tmp_path, max_input_tokens=1000, max_output_tokens=9)
    reqs = list(w.generate(SPACE))
    assert [r.input_tokens for r in reqs] == [1000, 1000, 110, 7]
    assert [r.max_output_tokens for r in reqs] == [9, 8, 9, 1]
    assert [r.scheduled_offset_s for r in reqs] == RECORDED
    assert w.max_sequence_tokens() == 1009
    profile = w.source_profile()
    assert "2 of 4 rows had their input length clipped to max_input_tokens 1000" in profile.notes
    assert "2 of 4 rows had their output length clipped to max_output_tokens 9" in profile.notes
    # the source is what the trace recorded, so source-vs-generated comparisons show the clipping
    assert profile.input_tokens == [4808, 3180, 110, 7] and profile.output_tokens == [10, 8, 27, 1]


def test_source_profile_describes_the_replayed_rows_as_recorded(tmp_path):
    w = azure(tmp_path, speedup=2, window={"start_s": 0.01})
    list(w.generate(SPACE))
    p = w.source_profile()
    assert (p.kind, p.rows_read, p.rows_used) == ("trace", 4, 3)
    assert p.output_tokens == [8, 27, 1]
    assert p.recorded_inter_arrival_s == [0.0461891, 0.9218509]  # unscaled, from integer ns
    assert p.time_scale == 2
    assert "trace.csv (azure trace)" in p.description and "speedup 2x" in p.description
    assert p.skipped == {} and any("synthesized token ids of the exact recorded length" in n for n in p.notes)


MOONCAKE = [{"timestamp": 0, "input_length": 10, "output_length": 3, "hash_ids": [1, 2, 3]},
            {"timestamp": 1500, "input_length": 8, "output_length": 2, "hash_ids": [1, 2]},
            {"timestamp": 2500, "input_length": 6, "output_length": 1, "hash_ids": [7, 8]},
            {"timestamp": 2500, "input_length": 12, "output_length": 4, "hash_ids": [1, 9]},  # 1 block short
            {"timestamp": 3001, "input_length": 5, "output_length": 2}]                       # no hash ids


def mooncake(tmp_path, rows=MOONCAKE, **kw):
    return workload(write(tmp_path, *(json.dumps(r) for r in rows), name="trace.jsonl"), block_size=4, **kw)


def test_mooncake_equal_hash_ids_are_identical_blocks(tmp_path):
    w = mooncake(tmp_path)
    r = list(w.generate(SPACE))
    assert w.format == "mooncake"
    assert [x.input_tokens for x in r] == [10, 8, 6, 12, 5]
    assert [x.max_output_tokens for x in r] == [3, 2, 1, 4, 2]
    assert [x.scheduled_offset_s for x in r] == [0.0, 1.5, 2.5, 2.5, 3.001]
    p = [x.prompt_token_ids for x in r]
    assert p[0][:8] == p[1]                 # blocks 1 and 2
    assert p[3][:4] == p[0][:4]             # block 1
    assert p[3][4:8] != p[0][4:8]           # block 9 is not block 2
    assert p[0][8:] == block(tmp_path, 3)[:2]  # the last block is partial
    assert p[2][:4] != p[0][:4] and p[4][:4] != p[0][:4]
    assert [x.shared_prefix_id for x in r] == ["hash-1", "hash-1", None, "hash-1", None]
    assert any("identical 4-token blocks" in n for n in w.source_profile().notes)


def block(tmp_path, hash_id, seed=0):
    """The 4 tokens of one hash id, from a trace that holds only that block."""
    path = write(tmp_path, json.dumps({"timestamp": 0, "input_length": 4, "output_length": 1, "hash_ids": [hash_id]}),
                 name=f"block-{hash_id}.jsonl")
    return next(workload(path, block_size=4, seed=seed).generate(SPACE)).prompt_token_ids


def test_mooncake_blocks_depend_on_seed_and_hash_id_only(tmp_path):
    r = list(mooncake(tmp_path, window={"start_s": 1}).generate(SPACE))  # row 1 is not replayed
    assert r[0].prompt_token_ids[:4] == block(tmp_path, 1)
    assert r[0].shared_prefix_id == "hash-1" and r[1].shared_prefix_id is None  # hash 7 is no longer shared
    assert block(tmp_path, 1, seed=5) != block(tmp_path, 1)


def test_mooncake_clipping_cuts_blocks(tmp_path):
    r = list(mooncake(tmp_path, max_input_tokens=6).generate(SPACE))
    full = list(mooncake(tmp_path).generate(SPACE))
    assert [x.input_tokens for x in r] == [6, 6, 6, 6, 5]
    assert all(a.prompt_token_ids == b.prompt_token_ids[:6] for a, b in zip(r, full))


def test_mooncake_float_timestamps_are_milliseconds(tmp_path):
    rows = [{"timestamp": 0.5, "input_length": 4, "output_length": 1, "hash_ids": [0]},
            {"timestamp": 2.25, "input_length": 4, "output_length": 1, "hash_ids": [0]}]
    assert offsets(mooncake(tmp_path, rows)) == [0.0, 0.00175]


AZURE_BAD = [
    ("2023-11-16 18:17:04.5,12", "missing GeneratedTokens"),
    ("2023-11-16 18:17:04.5,,12", "missing ContextTokens"),
    (",5,12", "missing TIMESTAMP"),
    ("2023-11-16 18:17:04.5,abc,12", "non-integer ContextTokens"),
    ("2023-11-16 18:17:04.5,1.5,12", "non-integer ContextTokens"),
    ("2023-11-16 18:17:04.5,5,x", "non-integer GeneratedTokens"),
    ("2023-11-16 18:17:04.5,0,12", "input length 0"),
    ("2023-11-16 18:17:04.5,-3,12", "negative input length"),
    ("2023-11-16 18:17:04.5,5,0", "output length 0"),
    ("2023-11-16 18:17:04.5,5,-1", "negative output length"),
    ("16/11/2023 18:17:04,5,5", "unparseable TIMESTAMP"),
    ("2023-13-16 18:17:04,5,5", "unparseable TIMESTAMP"),
    ("2023-11-16 18:17:04.5,5,5,9", "too many fields"),
    ("2023-11-16 18:17:04.5+24:00,5,5", "unparseable TIMESTAMP"),
    ("2023-11-16 18:17:04.5+0100,5,5", "unparseable TIMESTAMP"),
    ("2023-11-16 18:17:04.5 UTC,5,5", "unparseable TIMESTAMP"),
]
GOOD_BEFORE, GOOD_AFTER = "2023-11-16 18:17:04.0000000,5,5", "2023-11-16 18:17:06.0000000,6,6"


@pytest.mark.parametrize("row,reason", AZURE_BAD)
def test_every_bad_azure_row_is_named_with_file_and_line(tmp_path, row, reason):
    path = write(tmp_path, HEADER, GOOD_BEFORE, row, GOOD_AFTER)
    with pytest.raises(BadRowError, match=f"^{path}:3: {reason} \\(set on_bad_row: skip"):
        read_trace(path, "azure", BadRows("error"))
    with pytest.raises(ValidationError, match=f"{path}:3: {reason}"):
        workload(path)
    w = workload(path, on_bad_row="skip")
    assert [r.input_tokens for r in w.generate(SPACE)] == [5, 6]
    p = w.source_profile()
    assert (p.rows_read, p.rows_used, p.skipped, p.skipped_examples) == (3, 2, {reason: 1}, [f"{path}:3: {reason}"])


MOONCAKE_BAD = [
    ("{not json", "invalid JSON"),
    ("[1, 2]", "not a JSON object"),
    ('{"input_length": 5, "output_length": 1}', "missing timestamp"),
    ('{"timestamp": 1500, "output_length": 1}', "missing input_length"),
    ('{"timestamp": 1500, "input_length": 5}', "missing output_length"),
    ('{"timestamp": "1500", "input_length": 5, "output_length": 1}', "non-numeric timestamp"),
    ('{"timestamp": -1, "input_length": 5, "output_length": 1}', "negative timestamp"),
    ('{"timestamp": 1500, "input_length": "5", "output_length": 1}', "non-integer input_length"),
    ('{"timestamp": 1500, "input_length": 5, "output_length": 2.0}', "non-integer output_length"),
    ('{"timestamp": 1500, "input_length": 0, "output_length": 1}', "input length 0"),
    ('{"timestamp": 1500, "input_length": 5, "output_length": 1, "hash_ids": [1, "x"]}',
     "hash_ids not a list of non-negative integers"),
    ('{"timestamp": 1500, "input_length": 5, "output_length": 1, "hash_ids": [-1, 2]}',
     "hash_ids not a list of non-negative integers"),
    ('{"timestamp": 1500, "input_length": 13, "output_length": 1, "hash_ids": [1]}',
     "hash_ids disagree with input_length by more than one block"),
]


@pytest.mark.parametrize("row,reason", MOONCAKE_BAD)
def test_every_bad_mooncake_row_is_named_with_file_and_line(tmp_path, row, reason):
    path = write(tmp_path, '{"timestamp": 1000, "input_length": 4, "output_length": 1}', row,
                 '{"timestamp": 2000, "input_length": 6, "output_length": 1}', name="m.jsonl")
    with pytest.raises(ValidationError, match=f"{path}:2: {reason}"):
        workload(path, block_size=4)
    w = workload(path, block_size=4, on_bad_row="skip")
    assert [r.input_tokens for r in w.generate(SPACE)] == [4, 6]
    assert w.source_profile().skipped == {reason: 1}


def test_non_utf8_rows_are_bad_rows(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(f"{HEADER}\n{GOOD_BEFORE}\n".encode() + b"\xff\xfe,1,1\n" + f"{GOOD_AFTER}\n".encode())
    with pytest.raises(ValidationError, match=f"{path}:3: not UTF-8 text"):
        workload(path)
    assert workload(path, on_bad_row="skip").requests == 2


def test_skip_counts_by_reason_and_keeps_examples(tmp_path):
    rows = [GOOD_BEFORE, "2023-11-16 18:17:04.1,x,1", "2023-11-16 18:17:04.2,y,1", "2023-11-16 18:17:04.3,5,0",
            "", GOOD_AFTER]
    w = workload(write(tmp_path, HEADER, *rows), on_bad_row="skip")
    p = w.source_profile()
    assert p.skipped == {"non-integer ContextTokens": 2, "output length 0": 1}
    assert p.skipped_examples[0].endswith("trace.csv:3: non-integer ContextTokens")
    assert (p.rows_read, p.rows_used) == (5, 2)  # the blank line is not a row


def stamped(*seconds: int) -> list[str]:
    """Azure rows at these seconds after 18:00:00, each with its position (1, 2, ...) as input length."""
    return [f"2023-11-16 {18 + s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d},{i},1" for i, s in enumerate(seconds, 1)]


def test_a_row_back_in_time_is_dropped_never_reordered(tmp_path):
    path = write(tmp_path, HEADER, *stamped(1, 3, 3, 2, 4, 6))  # equal timestamps are in order
    with pytest.raises(ValidationError, match=f"{path}:5: timestamp earlier than the previous row"):
        workload(path)
    w = workload(path, on_bad_row="skip")
    assert [r.input_tokens for r in w.generate(SPACE)] == [1, 2, 3, 5, 6]
    assert offsets(w) == [0.0, 2.0, 2.0, 3.0, 5.0]
    assert w.source_profile().skipped == {"timestamp earlier than the previous row": 1}


def test_a_row_ahead_in_time_costs_only_itself_and_does_not_end_the_window(tmp_path):
    # row 3 is an hour early in the clock (e.g. a typo): judged against the last row kept, every row after
    # it would look "earlier than the previous row"; it also lies past the window's end.
    path = write(tmp_path, HEADER, *stamped(1, 2, 3600, 3, 4, 5))
    with pytest.raises(ValidationError, match=f"{path}:4: timestamp later than the next row"):
        workload(path)
    w = workload(path, on_bad_row="skip", window={"duration_s": 60})
    assert [r.input_tokens for r in w.generate(SPACE)] == [1, 2, 4, 5, 6]
    assert offsets(w) == [0.0, 1.0, 2.0, 3.0, 4.0]
    p = w.source_profile()
    assert p.skipped == {"timestamp later than the next row": 1}
    assert p.skipped_examples == [f"{path}:4: timestamp later than the next row"]
    first = workload(write(tmp_path, HEADER, *stamped(3600, 1, 2), name="first.csv"), on_bad_row="skip")
    assert [r.input_tokens for r in first.generate(SPACE)] == [2, 3]  # the first row is judged the same way


def test_two_rows_ahead_in_time_are_kept_and_the_rows_after_them_dropped(tmp_path):
    """The rule looks one row ahead: a run of rows ahead in time looks like the true order, and every row after
    it is reported (never silently) as earlier than the previous row."""
    w = workload(write(tmp_path, HEADER, *stamped(1, 100, 101, 2, 3)), on_bad_row="skip")
    assert [r.input_tokens for r in w.generate(SPACE)] == [1, 2, 3]
    assert w.source_profile().skipped == {"timestamp earlier than the previous row": 2}


def test_mooncake_rows_out_of_time_order(tmp_path):
    rows = [{"timestamp": t, "input_length": 4, "output_length": n} for n, t in enumerate([0, 1000, 500, 2000], 1)]
    path = write(tmp_path, *(json.dumps(r) for r in rows), name="m.jsonl")
    with pytest.raises(ValidationError, match=f"{path}:2: timestamp later than the next row"):
        workload(path)
    w = workload(path, on_bad_row="skip")
    assert [r.max_output_tokens for r in w.generate(SPACE)] == [1, 3, 4]


def test_azure_2024_timestamps_with_a_utc_offset_are_exact(tmp_path):
    """The 2024 week-long traces write `2024-05-10 00:00:00.009930+00:00`; offsets move times to UTC exactly."""
    w = azure(tmp_path, "2024-05-10 00:00:00.009930+00:00,2048,28",
              "2024-05-10 00:00:00.125001+00:00,512,3",
              "2024-05-10 02:00:01.000000001+02:00,7,1",  # 00:00:01.000000001 UTC
              "2024-05-10T00:00:02Z,9,2",
              "2024-05-09 20:30:03-03:30,5,5")            # 00:00:03 UTC
    assert offsets(w) == [0.0, 0.115071, 0.990070001, 1.99007, 2.99007]
    assert [r.input_tokens for r in w.generate(SPACE)] == [2048, 512, 7, 9, 5]
    assert w.source_profile().recorded_inter_arrival_s == [0.115071, 0.874999001, 0.999999999, 1.0]


@pytest.mark.parametrize("lines,kw,message", [
    ([HEADER], {}, "no usable rows"),
    ([HEADER, "2023-11-16 18:17:04,x,1"], {"on_bad_row": "skip"}, "no usable rows .*1 rows read, 1 bad"),
    ([HEADER, *AZURE_ROWS], {"window": {"start_s": 5}}, "no usable rows in the window"),
    ([], {}, "expected the Azure trace header .* got nothing"),
    (["time,in,out", "1,2,3"], {}, r":1: expected the Azure trace header 'TIMESTAMP,ContextTokens,GeneratedTokens', got"),
])
def test_empty_and_malformed_files_name_the_file(tmp_path, lines, kw, message):
    path = write(tmp_path, *lines)
    with pytest.raises(ValidationError, match=f"{path}.*{message}"):
        workload(path, **kw)


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(ValidationError, match=f"{tmp_path / 'nope.csv'}: cannot read trace"):
        workload(tmp_path / "nope.csv")
    with pytest.raises(ValidationError, match="cannot tell the trace format.*set format: azure or mooncake"):
        workload(write(tmp_path, "hello", name="t.txt"))


def test_format_from_extension_first_line_or_config(tmp_path):
    assert workload(write(tmp_path, HEADER, *AZURE_ROWS, name="t.log")).format == "azure"
    line = json.dumps(MOONCAKE[0])
    assert workload(write(tmp_path, line, name="t.txt"), block_size=4).format == "mooncake"
    assert workload(write(tmp_path, line, name="t.data"), block_size=4, format="mooncake").requests == 1
    with pytest.raises(ValidationError, match="t.jsonl:1: invalid JSON"):
        workload(write(tmp_path, HEADER, *AZURE_ROWS, name="t.jsonl"))


@pytest.mark.parametrize("kw,message", [
    ({"rate": 5, "speedup": 2}, "give rate or speedup, not both"),
    ({"requests": 9}, "requests: 9 asked for but .* holds only 4 usable rows"),
    ({"warmup_requests": 3, "cooldown_requests": 1}, "leave no measured request out of 4"),
])
def test_option_conflicts_are_config_errors(tmp_path, kw, message):
    with pytest.raises(ValidationError, match=message):
        azure(tmp_path, **kw)


def test_rate_needs_distinct_timestamps(tmp_path):
    with pytest.raises(ValidationError, match="rate: cannot rescale .*all 2 requests have the same timestamp"):
        azure(tmp_path, AZURE_ROWS[0], AZURE_ROWS[0], rate=2)


def config(path, **kw):
    return {"name": "x", "engine": {"kind": "mock"}, "workload": {"kind": "trace", "path": str(path), **kw}}


@pytest.mark.parametrize("kw,expected", [
    ({"speedup": 0}, "workload.trace.speedup: Input should be greater than 0"),
    ({"window": {"start_s": -1}}, "workload.trace.window.start_s: Input should be greater than or equal to 0"),
    ({"window": {"end_s": 5}}, "workload.trace.window.end_s: unknown key"),
    ({"on_bad_row": "ignore"}, "workload.trace.on_bad_row: Input should be 'skip' or 'error'"),
    ({"arrival": {"process": "poisson"}}, "workload.trace.arrival.process: Input should be 'trace'"),
    ({"colour": "red"}, "workload.trace.colour: unknown key"),
    ({"rate": 1, "speedup": 2}, "workload.trace: give rate or speedup, not both"),
])
def test_config_errors_name_the_field(tmp_path, kw, expected):
    path = write(tmp_path, HEADER, *AZURE_ROWS)
    with pytest.raises(ConfigError) as err:
        parse_config(config(path, **kw), "c.yaml")
    assert "c.yaml: invalid config" in str(err.value) and expected in str(err.value)


def test_config_bad_row_names_file_and_line(tmp_path):
    path = write(tmp_path, HEADER, AZURE_ROWS[0], "2023-11-16 18:17:04.5,abc,12")
    with pytest.raises(ConfigError, match=f"workload.trace: {path}:3: non-integer ContextTokens"):
        parse_config(config(path), "c.yaml")
    cfg = parse_config(config(path, on_bad_row="skip", arrival={"max_concurrency": 4}), "c.yaml")
    assert cfg.workload.arrival.max_concurrency == 4 and cfg.workload.requests == 1


def test_harness_tune_exits_2_on_a_bad_trace_row(tmp_path):
    path = write(tmp_path, HEADER, AZURE_ROWS[0], "2023-11-16 18:17:04.5,5")
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({**config(path), "search": {"space": "mock-default", "trials": 1}}))
    proc = subprocess.run([sys.executable, "-m", "harness", "tune", str(cfg)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert f"workload.trace: {path}:3: missing GeneratedTokens" in proc.stderr and "Traceback" not in proc.stderr


def test_the_shipped_code_trace_is_the_catalog_workload_and_generates_fast():
    cfg = parse_config({"name": "x", "engine": {"kind": "mock"}, "workload": "code-completion"}, "test")
    w = cfg.workload
    assert w.path == "builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv" and w.requests == 1482
    assert w.window.duration_s == 600 and len(list(w.generate(SPACE))) == 1482

    whole = workload("builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv")
    lines = (DATA_DIR / "azure-llm-2023/AzureLLMInferenceTrace_code.csv").read_text().splitlines()[1:]
    expected = [int(line.split(",")[1]) for line in lines]
    space = TokenSpace(vocab_size=128256, reserved_ids=frozenset(range(10)))
    start = time.perf_counter()
    got = [len(r.prompt_token_ids) for r in whole.generate(space)]
    elapsed = time.perf_counter() - start
    assert got == expected and whole.requests == len(lines) == 8819
    assert elapsed < 5, f"generating the whole trace ({sum(got):,} tokens) took {elapsed:.1f} s"

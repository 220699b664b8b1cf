"""trtllm-bench dataset JSONL: reading it as a workload (tokenizing, filtering, sampling, bad rows at config
time), writing any workload back."""
import asyncio
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from harness.config import parse_config
from harness.errors import ConfigError
from workloads import SyntheticWorkload, TokenSpace, WorkloadConfig
from workloads.request import RequestSpec
from workloads.trtllm_dataset import TrtllmDatasetWorkload, write_trtllm_dataset

SPACE = TokenSpace(vocab_size=100, reserved_ids=frozenset({0}))


class ByteTokenizer:
    """Token ids = UTF-8 bytes; counts the texts it encoded."""

    name = "bytes-v1"

    def __init__(self):
        self.texts = 0

    def encode_batch(self, texts):
        self.texts += len(texts)
        return [list(t.encode()) for t in texts]

    def decode(self, ids):
        return bytes(ids).decode()


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def write_lines(tmp_path, *lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(line + "\n" for line in lines))
    return path


def workload(path, **kw) -> TrtllmDatasetWorkload:
    return TypeAdapter(WorkloadConfig).validate_python({"kind": "trtllm_dataset", "path": str(path), **kw})


def test_rows_become_token_and_text_prompts(tmp_path):
    path = write_lines(tmp_path,
                       '{"task_id": 7, "input_ids": [5, 6, 7], "output_tokens": 4}',
                       '',
                       '{"task_id": 8, "prompt": "hello there", "output_tokens": 2, "lora_request": null}',
                       '{"task_id": 9, "logits": [1, 2], "prompt": "both", "output_tokens": 3}')
    reqs = list(workload(path).generate(SPACE))
    assert [r.id for r in reqs] == ["req-000000", "req-000001", "req-000002"]
    assert reqs[0].prompt_token_ids == (5, 6, 7) and reqs[0].prompt_text is None and reqs[0].max_output_tokens == 4
    assert reqs[1].prompt_token_ids is None and reqs[1].prompt_text == "hello there"
    assert reqs[2].prompt_token_ids == (1, 2) and reqs[2].prompt_text == "both"   # input_ids win, text kept
    assert reqs[1].source == {"kind": "trtllm_dataset", "path": str(path), "line": 3, "task_id": 8}
    assert all(r.scheduled_offset_s is None for r in reqs)


def test_default_arrival_sends_everything_at_once_like_trtllm_bench(tmp_path):
    path = write_lines(tmp_path, *[json.dumps({"task_id": i, "input_ids": [1, 2], "output_tokens": 3})
                                   for i in range(5)])
    w = workload(path)
    assert w.arrival.process == "closed" and w.arrival.concurrency == 5
    assert workload(path, requests=3).arrival.concurrency == 3
    assert workload(path, arrival={"process": "closed", "concurrency": 2}).arrival.concurrency == 2
    assert w.model_dump(mode="json")["arrival"] == {"process": "closed", "concurrency": 5, "ramp_up_s": 0.0}


def test_open_loop_arrival_is_seeded_and_moves_nothing_else(tmp_path):
    path = write_lines(tmp_path, *[json.dumps({"task_id": i, "input_ids": [i + 1], "output_tokens": 2})
                                   for i in range(50)])
    a = list(workload(path, arrival={"process": "poisson", "rate": 100}, seed=1).generate(SPACE))
    b = list(workload(path, arrival={"process": "poisson", "rate": 100}, seed=2).generate(SPACE))
    assert a == list(workload(path, arrival={"process": "poisson", "rate": 100}, seed=1).generate(SPACE))
    assert a[0].scheduled_offset_s == 0 and np.all(np.diff([r.scheduled_offset_s for r in a]) >= 0)
    assert [r.scheduled_offset_s for r in a] != [r.scheduled_offset_s for r in b]
    assert [r.prompt_token_ids for r in a] == [r.prompt_token_ids for r in b]


def rows(n, **fields):
    return [json.dumps({"task_id": i, "input_ids": [1 + i % 50] * (1 + i % 9), "output_tokens": 1 + i % 5, **fields})
            for i in range(n)]


def test_requests_are_drawn_with_the_seed_and_sent_in_file_order(tmp_path):
    path = write_lines(tmp_path, *rows(100))
    a = list(workload(path, requests=30, seed=1).generate(SPACE))
    task_ids = [r.source["task_id"] for r in a]
    assert len(set(task_ids)) == 30 and task_ids == sorted(task_ids) and task_ids != list(range(30))
    assert [r.source["task_id"] for r in workload(path, requests=30, seed=1).generate(SPACE)] == task_ids
    assert [r.source["task_id"] for r in workload(path, requests=30, seed=2).generate(SPACE)] != task_ids
    shuffled = [r.source["task_id"] for r in workload(path, requests=30, seed=1, shuffle=True).generate(SPACE)]
    assert sorted(shuffled) == task_ids and shuffled != task_ids
    assert [r.source["task_id"] for r in workload(path).generate(SPACE)] == list(range(100))


def test_sequence_bound_is_exact_for_token_id_prompts(tmp_path):
    path = write_lines(tmp_path,
                       '{"task_id": 0, "input_ids": [1, 2, 3], "output_tokens": 10}',
                       '{"task_id": 1, "input_ids": [1], "output_tokens": 20}',
                       '{"task_id": 2, "input_ids": [1, 2, 3, 4], "output_tokens": 1}')
    assert workload(path).max_sequence_tokens() == 21 and workload(path).longest_prompt_tokens() == 4
    assert workload(path, max_output_tokens=15).max_sequence_tokens() == 13   # the 1 + 20 row is filtered out
    sent = list(workload(path, requests=2, seed=4).generate(SPACE))
    assert workload(path, requests=2, seed=4).max_sequence_tokens() == max(r.input_tokens + r.max_output_tokens
                                                                           for r in sent)
    text = write_lines(tmp_path, '{"task_id": 0, "prompt": "text", "output_tokens": 1}', name="text.jsonl")
    assert workload(text).max_sequence_tokens() is None   # a text prompt's token count is unknown before tokenizing
    assert workload(text).longest_prompt_tokens() is None
    assert workload(text, max_input_tokens=50).max_sequence_tokens() is None
    assert workload(text, max_input_tokens=50).longest_prompt_tokens() == 50
    assert workload(text, max_input_tokens=50, max_output_tokens=8).max_sequence_tokens() == 58
    with pytest.raises(ValidationError, match="requests: 4 asked for but .* holds only 3 usable rows"):
        workload(path, requests=4)
    with pytest.raises(ValidationError, match="leave no measured request"):
        workload(path, warmup_requests=2, cooldown_requests=1)


def test_text_prompts_are_tokenized_in_batches_and_cached(tmp_path, cache):
    path = write_lines(tmp_path, '{"task_id": 0, "input_ids": [7, 8], "output_tokens": 2}',
                       *[json.dumps({"task_id": i, "prompt": f"prompt number {i}", "output_tokens": 3})
                         for i in range(1, 2500)])
    tok = ByteTokenizer()
    w = workload(path)
    reqs = list(w.generate(TokenSpace(vocab_size=256, tokenizer=tok)))
    assert tok.texts == 2499   # the input_ids row is sent as it is
    assert reqs[0].prompt_token_ids == (7, 8) and reqs[0].prompt_text is None
    assert reqs[5].prompt_token_ids == tuple(b"prompt number 5") and reqs[5].prompt_text == "prompt number 5"
    profile = w.source_profile()
    assert profile.input_tokens[:2] == [2, len("prompt number 1")] and "now cached in" in profile.notes[0]
    again = workload(path)
    assert list(again.generate(TokenSpace(vocab_size=256, tokenizer=tok))) == reqs and tok.texts == 2499
    assert "read from the cache" in again.source_profile().notes[0]
    assert len(list((cache / "tokenized").glob("*.npz"))) == 1


def test_without_a_tokenizer_text_prompt_lengths_are_approximate(tmp_path, cache):
    path = write_lines(tmp_path, '{"task_id": 0, "input_ids": [7, 8], "output_tokens": 2}',
                       '{"task_id": 1, "prompt": "twelve bytes", "output_tokens": 3}')
    w = workload(path)
    reqs = list(w.generate(SPACE))
    assert [(r.prompt_token_ids, r.prompt_text) for r in reqs] == [((7, 8), None), (None, "twelve bytes")]
    profile = w.source_profile()
    assert profile.input_tokens == [2, 3] and "input lengths are APPROXIMATE" in profile.notes[0]
    assert not (cache / "tokenized").exists()


def test_length_filters_drop_and_count_and_the_profile_keeps_the_source_as_recorded(tmp_path):
    path = write_lines(tmp_path, *rows(20))
    w = workload(path, min_input_tokens=3, max_output_tokens=4)
    reqs = list(w.generate(SPACE))
    lengths = [(1 + i % 9, 1 + i % 5) for i in range(20)]
    kept = [(n, m) for n, m in lengths if n >= 3 and m <= 4]
    assert [(r.input_tokens, r.max_output_tokens) for r in reqs] == kept
    profile = w.source_profile()
    assert list(zip(profile.input_tokens, profile.output_tokens)) == lengths
    assert f"length filters kept {len(kept)} of 20 rows" in profile.notes
    assert profile.skipped == {"input tokens below min_input_tokens (3)": sum(n < 3 for n, _ in lengths),
                               "output tokens above max_output_tokens (4)": sum(n >= 3 and m > 4 for n, m in lengths)}
    assert profile.rows_read == 20 and profile.rows_used == len(kept)
    with pytest.raises(ValueError, match=r"18 requests asked for but only \d+ usable rows remain of 20 rows read"):
        list(workload(path, min_input_tokens=3, requests=18).generate(SPACE))


def test_round_trip_of_a_synthetic_workload(tmp_path):
    synth = SyntheticWorkload.model_validate({
        "kind": "synthetic", "requests": 20, "input_tokens": {"dist": "uniform", "low": 3, "high": 30},
        "output_tokens": {"dist": "uniform", "low": 1, "high": 9}, "arrival": {"process": "poisson", "rate": 5}})
    specs = list(synth.generate(SPACE))
    path = tmp_path / "out" / "synthetic.jsonl"
    assert write_trtllm_dataset(path, specs) == 20
    lines = path.read_text().splitlines()
    assert json.loads(lines[3]) == {"task_id": 3, "input_ids": list(specs[3].prompt_token_ids),
                                    "output_tokens": specs[3].max_output_tokens}
    back = list(workload(path).generate(SPACE))
    assert [(r.prompt_token_ids, r.max_output_tokens) for r in back] == \
           [(s.prompt_token_ids, s.max_output_tokens) for s in specs]
    assert [p.name for p in path.parent.iterdir()] == ["synthetic.jsonl"]  # no temporary file left


def test_round_trip_of_text_and_mixed_prompts(tmp_path):
    specs = [RequestSpec(id="x", max_output_tokens=5, prompt_text="héllo ✓ \"quoted\"\nnext line"),
             RequestSpec(id="y", max_output_tokens=2, prompt_token_ids=(4, 5), prompt_text="four five")]
    path = tmp_path / "text.jsonl"
    write_trtllm_dataset(path, specs)
    back = list(workload(path).generate(SPACE))
    assert [(r.source["task_id"], r.prompt_text, r.prompt_token_ids, r.max_output_tokens) for r in back] == [
        (0, specs[0].prompt_text, None, 5), (1, "four five", (4, 5), 2)]


def test_metadata_line_is_skipped_and_the_legacy_format_explained(tmp_path):
    path = write_lines(tmp_path, '{"metadata": {"workload_type": "token-norm-dist"}}',
                       '{"task_id": 0, "input_ids": [1], "output_tokens": 1}')
    assert len(list(workload(path).generate(SPACE))) == 1
    legacy = write_lines(tmp_path, '{"metadata": {}, "samples": [{"task_id": 0}]}', name="legacy.json")
    with pytest.raises(ValidationError, match=r"legacy.json:1: .*prepare_dataset.py --stdout"):
        workload(legacy, on_bad_row="skip")


GOOD = '{"task_id": 0, "input_ids": [1, 2], "output_tokens": 2}'


@pytest.mark.parametrize("bad,message", [
    ('{"task_id": 1, "input_ids": [1, 2], "output_tokens": 2', "invalid JSON"),
    ("[1, 2, 3]", "not a JSON object"),
    ('{"input_ids": [1], "output_tokens": 2}', "missing field 'task_id'"),
    ('{"task_id": "a", "input_ids": [1], "output_tokens": 2}', "'task_id' must be an integer"),
    ('{"task_id": 1, "input_ids": [1]}', "missing field 'output_tokens'"),
    ('{"task_id": 1, "input_ids": [1], "output_tokens": 2.5}', "'output_tokens' must be an integer"),
    ('{"task_id": 1, "input_ids": [1], "output_tokens": "2"}', "'output_tokens' must be an integer"),
    ('{"task_id": 1, "input_ids": [1], "output_tokens": true}', "'output_tokens' must be an integer"),
    ('{"task_id": 1, "input_ids": [1], "output_tokens": 0}', "'output_tokens' must be >= 1"),
    ('{"task_id": 1, "output_tokens": 2}', "needs 'input_ids' or 'prompt'"),
    ('{"task_id": 1, "turns": ["a", "b"], "output_tokens": 2}', "multi-turn rows"),
    ('{"task_id": 1, "prompt": "   ", "output_tokens": 2}', "'prompt' is empty"),
    ('{"task_id": 1, "prompt": 5, "output_tokens": 2}', "'prompt' must be a string"),
    ('{"task_id": 1, "input_ids": [], "output_tokens": 2}', "'input_ids' is empty"),
    ('{"task_id": 1, "input_ids": [1, "2"], "output_tokens": 2}', "list of integer token ids"),
    ('{"task_id": 1, "input_ids": [1, 2.0], "output_tokens": 2}', "list of integer token ids"),
    ('{"task_id": 1, "logits": [3, -1], "output_tokens": 2}', "'logits' holds a negative token id"),
    ('{"task_id": 1, "input_ids": [3, 2147483648], "output_tokens": 2}', "'input_ids' holds a token id above"),
    ('{"task_id": 1, "input_ids": [3, true], "output_tokens": 2}', "list of integer token ids"),
])
def test_bad_rows_reject_the_config_naming_file_and_line_or_are_skipped(tmp_path, bad, message):
    path = write_lines(tmp_path, GOOD, "", bad, GOOD)
    with pytest.raises(ValidationError, match=re.escape(f"{path}:3: ") + ".*" + message):
        workload(path)
    w = workload(path, on_bad_row="skip")
    assert len(list(w.generate(SPACE))) == 2
    profile = w.source_profile()
    assert profile.rows_read == 3 and sum(profile.skipped.values()) == 1 and re.search(message, *profile.skipped)
    assert profile.skipped_examples[0].startswith(f"{path}:3: ")


def test_token_ids_outside_the_engine_vocabulary(tmp_path):
    path = write_lines(tmp_path, GOOD, '{"task_id": 1, "input_ids": [3, 100], "output_tokens": 2}')
    with pytest.raises(ValueError, match=rf"{path}:2: token id 100 is outside the engine's vocabulary \(size 100\)"):
        list(workload(path).generate(SPACE))
    assert len(list(workload(path).generate(TokenSpace(vocab_size=101)))) == 2


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ValidationError, match="missing.jsonl does not exist"):
        workload(tmp_path / "missing.jsonl")
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"task_id": 1, "prompt": "caf\xe9", "output_tokens": 1}\n'.encode("latin-1")
    path.write_bytes(GOOD.encode() + b"\n" + latin1)
    with pytest.raises(ValidationError, match=r"latin1.jsonl:2: not UTF-8"):
        workload(path)
    empty = write_lines(tmp_path, "", name="empty.jsonl")
    with pytest.raises(ValidationError, match="no usable rows"):
        workload(empty)


def experiment(workload_cfg):
    return {"name": "ds", "engine": {"kind": "mock", "params": {"step_ms": 1, "decode_ms_per_seq": 0.1}},
            "workload": workload_cfg}


def test_the_experiment_config_accepts_a_trtllm_dataset(tmp_path):
    path = write_lines(tmp_path, GOOD, '{"task_id": 1, "prompt": "hi", "output_tokens": 3}')
    cfg = parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "warmup_requests": 1}), "x.yaml")
    assert isinstance(cfg.workload, TrtllmDatasetWorkload) and cfg.workload.warmup_requests == 1
    with pytest.raises(ConfigError, match=r"workload\.trtllm_dataset: path: .*missing\.jsonl does not exist"):
        parse_config(experiment({"kind": "trtllm_dataset", "path": str(tmp_path / "missing.jsonl")}), "x.yaml")
    with pytest.raises(ConfigError, match=r"workload\.trtllm_dataset\.columns: unknown key"):
        parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "columns": {}}), "x.yaml")


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_harness_exits_2_on_a_bad_row_before_any_engine_starts(tmp_path, command):
    path = write_lines(tmp_path, GOOD, '{"task_id": 1, "prompt": "", "output_tokens": 2}')
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**experiment({"kind": "trtllm_dataset", "path": str(path)}),
                                      "search": {"space": "mock-default", "trials": 2}}))
    proc = subprocess.run([sys.executable, "-m", "harness", command, str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"workload.trtllm_dataset: {path}:2: 'prompt' is empty" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()   # no trial, no engine


def test_a_dataset_run_measures_end_to_end_on_the_mock_engine(tmp_path):
    from harness.trial import measure
    path = write_lines(tmp_path, *[json.dumps({"task_id": i, "input_ids": [1, 2, 3], "output_tokens": 4})
                                   for i in range(6)], '{"task_id": 6, "prompt": "a b c", "output_tokens": 2}')
    cfg = parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "warmup_requests": 2}), "x.yaml")
    result = asyncio.run(measure(cfg, tmp_path))
    assert result["counts"]["measured"] == 5 and result["counts"]["excluded_warmup"] == 2
    assert result["counts"]["completed"] == 5
    assert result["workload"]["arrival"] == {"process": "closed", "concurrency": 7, "ramp_up_s": 0.0}

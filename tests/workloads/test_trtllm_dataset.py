"""trtllm-bench dataset JSONL: reading it as a workload, writing any workload back, bad-row errors."""
import asyncio
import json

import numpy as np
import pytest
from pydantic import TypeAdapter, ValidationError

from harness.config import parse_config
from harness.errors import ConfigError
from workloads import SyntheticWorkload, TokenSpace, WorkloadConfig
from workloads.request import RequestSpec
from workloads.trtllm_dataset import TrtllmDatasetWorkload, read_trtllm_dataset, write_trtllm_dataset

SPACE = TokenSpace(vocab_size=100, reserved_ids=frozenset({0}))


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


def test_first_n_rows_and_sequence_bound(tmp_path):
    path = write_lines(tmp_path,
                       '{"task_id": 0, "input_ids": [1, 2, 3], "output_tokens": 10}',
                       '{"task_id": 1, "input_ids": [1], "output_tokens": 20}',
                       '{"task_id": 2, "prompt": "text", "output_tokens": 1}')
    assert len(list(workload(path, requests=2).generate(SPACE))) == 2
    assert workload(path, requests=2).max_sequence_tokens() == 21
    assert workload(path).max_sequence_tokens() is None   # a text prompt's token count is unknown
    with pytest.raises(ValidationError, match="holds only 3 rows"):
        workload(path, requests=4)
    with pytest.raises(ValidationError, match="leave no measured request"):
        workload(path, warmup_requests=2, cooldown_requests=1)


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
    rows = read_trtllm_dataset(path)
    assert [(r.task_id, r.prompt, r.input_ids, r.output_tokens) for r in rows] == [
        (0, specs[0].prompt_text, None, 5), (1, "four five", (4, 5), 2)]


def test_metadata_line_is_skipped_and_the_legacy_format_explained(tmp_path):
    path = write_lines(tmp_path, '{"metadata": {"workload_type": "token-norm-dist"}}',
                       '{"task_id": 0, "input_ids": [1], "output_tokens": 1}')
    assert len(list(workload(path).generate(SPACE))) == 1
    legacy = write_lines(tmp_path, '{"metadata": {}, "samples": [{"task_id": 0}]}', name="legacy.json")
    with pytest.raises(ValueError, match=r"legacy.json:1: .*prepare_dataset.py --stdout"):
        read_trtllm_dataset(legacy)


GOOD = '{"task_id": 0, "input_ids": [1, 2], "output_tokens": 2}'


@pytest.mark.parametrize("bad,message", [
    ('{"task_id": 1, "input_ids": [1, 2], "output_tokens": 2', "invalid JSON"),
    ('[1, 2, 3]', "expected a JSON object"),
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
])
def test_bad_rows_name_file_and_line(tmp_path, bad, message):
    path = write_lines(tmp_path, GOOD, "", bad, GOOD)
    with pytest.raises(ValueError, match=message) as err:
        list(workload(path).generate(SPACE))
    assert f"{path}:3: " in str(err.value)


def test_token_ids_outside_the_engine_vocabulary(tmp_path):
    path = write_lines(tmp_path, GOOD, '{"task_id": 1, "input_ids": [3, 100], "output_tokens": 2}')
    with pytest.raises(ValueError, match=rf"{path}:2: token id 100 is outside the engine's vocabulary \(size 100\)"):
        list(workload(path).generate(SPACE))
    assert len(list(workload(path).generate(TokenSpace(vocab_size=101)))) == 2


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ValidationError, match="cannot read dataset"):
        workload(tmp_path / "missing.jsonl")
    path = tmp_path / "latin1.jsonl"
    latin1 = '{"task_id": 1, "prompt": "caf\xe9", "output_tokens": 1}\n'.encode("latin-1")
    path.write_bytes(GOOD.encode() + b"\n" + latin1)
    with pytest.raises(ValidationError, match=r"latin1.jsonl:2: not UTF-8"):
        workload(path)
    empty = write_lines(tmp_path, "", name="empty.jsonl")
    with pytest.raises(ValidationError, match="no rows"):
        workload(empty)


def experiment(workload_cfg):
    return {"name": "ds", "engine": {"kind": "mock", "params": {"step_ms": 1, "decode_ms_per_seq": 0.1}},
            "workload": workload_cfg}


def test_the_experiment_config_accepts_a_trtllm_dataset(tmp_path):
    path = write_lines(tmp_path, GOOD, '{"task_id": 1, "prompt": "hi", "output_tokens": 3}')
    cfg = parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "warmup_requests": 1}), "x.yaml")
    assert isinstance(cfg.workload, TrtllmDatasetWorkload) and cfg.workload.warmup_requests == 1
    with pytest.raises(ConfigError, match=r"workload\.trtllm_dataset: .*missing\.jsonl: cannot read dataset"):
        parse_config(experiment({"kind": "trtllm_dataset", "path": str(tmp_path / "missing.jsonl")}), "x.yaml")
    with pytest.raises(ConfigError, match=r"workload\.trtllm_dataset\.shuffle: unknown key"):
        parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "shuffle": True}), "x.yaml")


def test_a_dataset_run_measures_end_to_end_on_the_mock_engine(tmp_path):
    from harness.trial import measure
    path = write_lines(tmp_path, *[json.dumps({"task_id": i, "input_ids": [1, 2, 3], "output_tokens": 4})
                                   for i in range(6)], '{"task_id": 6, "prompt": "a b c", "output_tokens": 2}')
    cfg = parse_config(experiment({"kind": "trtllm_dataset", "path": str(path), "warmup_requests": 2}), "x.yaml")
    result = asyncio.run(measure(cfg, tmp_path))
    assert result["counts"]["measured"] == 5 and result["counts"]["excluded_warmup"] == 2
    assert result["counts"]["completed"] == 5
    assert result["workload"]["arrival"] == {"process": "closed", "concurrency": 7, "ramp_up_s": 0.0}

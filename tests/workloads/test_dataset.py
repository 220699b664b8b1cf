"""Dataset workloads: every format, column mapping, output lengths, filtering, sampling, multi-turn,
tokenization (exact, cached, or approximate without a tokenizer), bad rows and config-time errors."""
import csv
import json
import re
import subprocess
import sys

import pytest
import yaml
from pydantic import TypeAdapter, ValidationError

from harness.config import parse_config
from harness.errors import ConfigError
from workloads import TokenSpace, WorkloadConfig, dataset
from workloads.dataset import DatasetWorkload
from workloads.profile import BadRowError


class ByteTokenizer:
    """Token ids = UTF-8 bytes; counts its calls and the texts it encoded."""

    def __init__(self, name: str = "bytes-v1"):
        self.name, self.calls, self.texts = name, 0, 0

    def encode_batch(self, texts):
        self.calls += 1
        self.texts += len(texts)
        return [list(t.encode()) for t in texts]

    def decode(self, ids):
        return bytes(ids).decode()


RECORDS = [  # (question, answer, n)
    ("What is the capital of France?", "Paris.", 3),
    ("Write a haiku about the sea", "Waves fold into foam", 12),
    ("héllo wörld", "hi", 7),
]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def space(tokenizer=None) -> TokenSpace:
    return TokenSpace(vocab_size=256, tokenizer=ByteTokenizer() if tokenizer is None else tokenizer)


def workload(path, **kw) -> DatasetWorkload:
    data = {"kind": "dataset", "path": str(path), "arrival": {"process": "closed", "concurrency": 4}, **kw}
    return TypeAdapter(WorkloadConfig).validate_python(data)


def sharegpt(tmp_path, conversations, name="data.json", indent=None):
    """A ShareGPT file; record i starts on line i + 2 (with `indent`: records span lines, laid out by json.dumps)."""
    path = tmp_path / name
    records = [{"id": f"c{i}", "conversations": [{"from": r, "value": v} for r, v in turns]}
               for i, turns in enumerate(conversations)]
    path.write_text(json.dumps(records, indent=indent) if indent else
                    "[\n" + ",\n".join(json.dumps(r) for r in records) + "\n]\n")
    return path


def jsonl(tmp_path, *objects, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objects))
    return path


def write_csv(tmp_path, header, *rows, name="data.csv"):
    path = tmp_path / name
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def table():
    return {"question": [q for q, _, _ in RECORDS], "answer": [a for _, a, _ in RECORDS], "n": [n for *_, n in RECORDS]}


def write_format(tmp_path, fmt):
    """RECORDS as columns question / answer / n in `fmt`; returns the path."""
    t = table()
    rows = [dict(zip(t, values)) for values in zip(*t.values())]
    if fmt == "jsonl":
        return jsonl(tmp_path, *rows)
    if fmt == "csv":
        return write_csv(tmp_path, list(t), *[list(r.values()) for r in rows])
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table(t), tmp_path / "data.parquet")
        return tmp_path / "data.parquet"
    if fmt == "hf":
        datasets = pytest.importorskip("datasets")
        datasets.Dataset.from_dict(t).save_to_disk(str(tmp_path / "saved"))
        return tmp_path / "saved"
    if fmt == "hf-files":
        (tmp_path / "files").mkdir()
        jsonl(tmp_path / "files", *rows, name="part-0.jsonl")
        return tmp_path / "files"
    raise AssertionError(fmt)


def by_prompt(requests):
    return {r.prompt_text: r for r in requests}


# ---- sources ---------------------------------------------------------------------------------------


def test_sharegpt_first_human_turn_is_the_prompt_and_its_reply_the_output_length(tmp_path):
    path = sharegpt(tmp_path, [
        [("human", "Hello there"), ("gpt", "Hi! How can I help?"), ("human", "later"), ("gpt", "ignored")],
        [("system", "be brief"), ("human", "2+2?"), ("system", "note"), ("gpt", "4")],
        [("gpt", "I start"), ("human", "ok then"), ("gpt", "fine")],
    ])
    reqs = list(workload(path, shuffle=False).generate(space()))
    assert [(r.prompt_text, r.max_output_tokens) for r in reqs] == [
        ("Hello there", len("Hi! How can I help?")), ("2+2?", 1), ("ok then", 4)]
    assert reqs[0].prompt_token_ids == tuple(b"Hello there")
    assert [r.id for r in reqs] == ["req-000000", "req-000001", "req-000002"]
    assert reqs[2].source == {"kind": "dataset", "path": str(path), "row": 2, "line": 4}
    assert all(r.scheduled_offset_s is None and r.shared_prefix_id is None for r in reqs)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet", "hf", "hf-files"])
def test_each_format_with_a_column_mapping(tmp_path, fmt):
    path = write_format(tmp_path, fmt)
    w = workload(path, columns={"prompt": "question", "output_tokens": "n"})
    reqs = by_prompt(w.generate(space()))
    assert {q: reqs[q].max_output_tokens for q, _, _ in RECORDS} == {q: n for q, _, n in RECORDS}
    assert reqs["héllo wörld"].prompt_token_ids == tuple("héllo wörld".encode())
    by_text = by_prompt(workload(path, columns={"prompt": "question", "output_text": "answer"}).generate(space()))
    assert {q: by_text[q].max_output_tokens for q, _, _ in RECORDS} == {q: len(a.encode()) for q, a, _ in RECORDS}
    assert w.source_profile().description.startswith({"hf-files": "hf"}.get(fmt, fmt))


def test_default_prompt_columns_and_row_locations(tmp_path):
    reqs = list(workload(jsonl(tmp_path, {"text": "a b c", "output_tokens": 2}, "", {"text": "d", "output_tokens": 1}),
                         columns={"output_tokens": "output_tokens"}, shuffle=False).generate(space()))
    assert [r.prompt_text for r in reqs] == ["a b c", "d"]
    assert [r.source["line"] for r in reqs] == [1, 3] and "row" not in reqs[0].source
    path = write_csv(tmp_path, ["prompt", "len"], ["x", "2"], ["multi\nline", "3"], ["y", "4"])
    reqs = list(workload(path, columns={"output_tokens": "len"}, shuffle=False).generate(space()))
    assert [(r.source["row"], r.source["line"], r.prompt_text) for r in reqs] == [
        (0, 2, "x"), (1, 3, "multi\nline"), (2, 5, "y")]


def test_hf_split_of_a_saved_dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"prompt": ["t"], "n": [1]}),
                          "test": datasets.Dataset.from_dict({"prompt": ["u", "v"], "n": [2, 3]})}
                         ).save_to_disk(str(tmp_path / "dd"))
    reqs = list(workload(tmp_path / "dd", split="test", columns={"output_tokens": "n"}).generate(space()))
    assert sorted(r.prompt_text for r in reqs) == ["u", "v"]
    w = workload(tmp_path / "dd", columns={"output_tokens": "n"})
    assert [r.prompt_text for r in w.generate(space())] == ["t"]
    assert w.source_profile().description.endswith("split train")


def test_hf_conversations_column(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"id": ["a"], "conversations": [[
        {"from": "human", "value": "q1"}, {"from": "gpt", "value": "r1"},
        {"from": "human", "value": "q2"}, {"from": "gpt", "value": "r22"}]]}).save_to_disk(str(tmp_path / "conv"))
    reqs = list(workload(tmp_path / "conv", multi_turn=True, shuffle=False).generate(space()))
    assert [r.prompt_text for r in reqs] == ["User: q1\nAssistant:", "User: q1\nAssistant: r1\nUser: q2\nAssistant:"]
    assert [r.max_output_tokens for r in reqs] == [2, 3] and {r.shared_prefix_id for r in reqs} == {"a"}


def test_role_content_turns_are_read_too(tmp_path):
    path = jsonl(tmp_path, {"messages": [{"role": "user", "content": "hey"}, {"role": "assistant", "content": "yo"}]})
    reqs = list(workload(path, columns={"conversations": "messages"}).generate(space()))
    assert [(r.prompt_text, r.max_output_tokens) for r in reqs] == [("hey", 2)]


# ---- lengths, filters, sampling --------------------------------------------------------------------


def test_output_length_override_wins_and_is_seeded(tmp_path):
    path = sharegpt(tmp_path, [[("human", f"q{i}"), ("gpt", "r" * (i + 1))] for i in range(50)]
                    + [[("human", "no reply")]])
    override = {"dist": "uniform", "low": 5, "high": 9}
    w = workload(path, output_tokens=override, seed={"lengths": 1, "content": 1, "arrival": 1})
    tok = ByteTokenizer()
    reqs = list(w.generate(space(tok)))
    assert len(reqs) == 51 and {r.max_output_tokens for r in reqs} == {5, 6, 7, 8, 9}   # no reply: fine here
    assert tok.texts == 51   # replies are not tokenized when their lengths are not used
    assert "override" in " ".join(w.source_profile().notes)
    moved = list(workload(path, output_tokens=override, seed={"lengths": 2, "content": 1, "arrival": 1})
                 .generate(space()))
    assert [r.prompt_text for r in moved] == [r.prompt_text for r in reqs]
    assert [r.max_output_tokens for r in moved] != [r.max_output_tokens for r in reqs]


def test_filters_drop_and_count_by_reason(tmp_path):
    path = sharegpt(tmp_path, [[("human", "x" * n), ("gpt", "y" * m)] for n, m in
                               [(5, 5), (50, 5), (5, 50), (1, 5), (20, 20)]])
    w = workload(path, min_input_tokens=2, max_input_tokens=30, max_output_tokens=30)
    reqs = list(w.generate(space()))
    assert sorted(r.input_tokens for r in reqs) == [5, 20]
    profile = w.source_profile()
    assert profile.skipped == {"input tokens below min_input_tokens (2)": 1,
                               "input tokens above max_input_tokens (30)": 1,
                               "output tokens above max_output_tokens (30)": 1}
    assert profile.rows_read == 5 and profile.rows_used == 2
    # the profile is the source as recorded: every usable row, before the filters
    assert profile.input_tokens == [5, 50, 5, 1, 20] and profile.output_tokens == [5, 5, 50, 5, 20]
    assert "length filters kept 2 of 5 rows" in profile.notes
    assert any(e.startswith(f"{path}: row 1") for e in profile.skipped_examples)


def test_sampling_is_seeded_without_replacement_and_profiles_the_population(tmp_path):
    path = sharegpt(tmp_path, [[("human", f"prompt {i}"), ("gpt", "r" * (1 + i % 7))] for i in range(100)])
    a = list(workload(path, requests=30, seed=1).generate(space()))
    assert a == list(workload(path, requests=30, seed=1).generate(space()))
    assert len({r.prompt_text for r in a}) == 30
    b = list(workload(path, requests=30, seed=2).generate(space()))
    assert {r.prompt_text for r in a} != {r.prompt_text for r in b}
    w = workload(path, requests=30, seed=1, shuffle=False)
    ordered = list(w.generate(space()))
    assert [r.source["row"] for r in ordered] == sorted(r.source["row"] for r in a)   # same sample, file order
    assert len(w.source_profile().input_tokens) == 100 and w.source_profile().rows_used == 30
    everything = [r.source["row"] for r in workload(path, shuffle=False).generate(space())]
    assert everything == list(range(100))
    shuffled = [r.source["row"] for r in workload(path).generate(space())]
    assert sorted(shuffled) == everything and shuffled != everything


def test_arrival_times_do_not_move_the_sample(tmp_path):
    path = sharegpt(tmp_path, [[("human", f"p{i}"), ("gpt", "r")] for i in range(40)])
    poisson = {"process": "poisson", "rate": 10}
    a = list(workload(path, requests=10, arrival=poisson, seed={"lengths": 0, "content": 1, "arrival": 2})
             .generate(space()))
    b = list(workload(path, requests=10, arrival=poisson, seed={"lengths": 0, "content": 1, "arrival": 3})
             .generate(space()))
    assert [r.prompt_text for r in a] == [r.prompt_text for r in b]
    assert [r.scheduled_offset_s for r in a] != [r.scheduled_offset_s for r in b] and a[0].scheduled_offset_s == 0


def test_too_few_rows_names_how_many_remain_and_why(tmp_path):
    path = sharegpt(tmp_path, [[("human", "x" * n), ("gpt", "y")] for n in (1, 2, 50, 60)] + [[("gpt", "alone")]])
    w = workload(path, requests=3, max_input_tokens=10, on_bad_row="skip")
    with pytest.raises(ValueError, match=r"3 requests asked for but only 2 usable rows remain of 5 rows read; dropped: "
                                         r"conversation has no human turn \(1\), input tokens above max_input_tokens "
                                         r"\(10\) \(2\)"):
        list(w.generate(space()))
    with pytest.raises(ValueError, match="leave no measured request out of 2"):
        list(workload(path, max_input_tokens=10, on_bad_row="skip", warmup_requests=2).generate(space()))


def test_max_sequence_tokens(tmp_path):
    path = sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")]])
    assert workload(path).max_sequence_tokens() is None
    assert workload(path, max_input_tokens=100).max_sequence_tokens() is None
    assert workload(path, max_input_tokens=100, max_output_tokens=20).max_sequence_tokens() == 120
    assert workload(path).longest_prompt_tokens() is None
    assert workload(path, max_input_tokens=100).longest_prompt_tokens() == 100
    fixed = {"dist": "fixed", "value": 8}
    assert workload(path, max_input_tokens=100, output_tokens=fixed).max_sequence_tokens() == 108


# ---- tokenization ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama_tokenizer(tmp_path_factory):
    """The builtin tiny-llama's byte-level tokenizer, built once in a module-wide HARNESS_CACHE."""
    pytest.importorskip("transformers")
    from engine_adapters.builtin_models import HFTokenizer, require_torch_transformers, resolve_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HARNESS_CACHE", str(tmp_path_factory.mktemp("harness_cache")))
        _, transformers = require_torch_transformers()
        hf = transformers.AutoTokenizer.from_pretrained(resolve_model("builtin:tiny-llama"))
    return hf, HFTokenizer(hf, "builtin:tiny-llama")


def test_prompts_are_tokenized_exactly_with_the_engines_tokenizer(tmp_path, tiny_llama_tokenizer):
    hf, tokenizer = tiny_llama_tokenizer
    path = sharegpt(tmp_path, [[("human", "Ünïcode ✓ and spaces  "), ("gpt", "réponse ok")],
                               [("human", "x"), ("gpt", "y")]])
    reqs = by_prompt(workload(path).generate(TokenSpace(vocab_size=len(hf), tokenizer=tokenizer)))
    for prompt, reply in (("Ünïcode ✓ and spaces  ", "réponse ok"), ("x", "y")):
        assert list(reqs[prompt].prompt_token_ids) == hf(prompt, add_special_tokens=False)["input_ids"]
        assert reqs[prompt].max_output_tokens == len(hf(reply, add_special_tokens=False)["input_ids"])
        assert hf.decode(reqs[prompt].prompt_token_ids) == prompt


def test_tokenization_is_batched_and_cached(tmp_path, cache):
    path = sharegpt(tmp_path, [[("human", f"prompt {i}"), ("gpt", "r" * (1 + i % 5))] for i in range(2500)])
    tok = ByteTokenizer()
    w = workload(path, requests=100, seed=3)
    first = list(w.generate(space(tok)))
    assert tok.calls == 3 and tok.texts == 5000   # chunks of 1,000 prompts, each with its replies
    assert "now cached in" in w.source_profile().notes[0]
    assert len(list((cache / "tokenized").glob("*.npz"))) == 1 and not list((cache / "tokenized").glob(".*"))
    assert list(w.generate(space(tok))) == first and tok.calls == 3
    assert "read from the cache" in w.source_profile().notes[0]
    other = ByteTokenizer(name="bytes-v2")
    assert list(w.generate(space(other))) == first and other.calls == 3   # another tokenizer: another entry
    path.write_text(path.read_text().replace("prompt 7", "prompt 7!"))
    list(w.generate(space(tok)))
    assert tok.calls == 6   # the file changed: tokenized again


def test_cached_lengths_keep_bad_rows_counted(tmp_path):
    path = sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")], [("gpt", "no question")]])
    tok = ByteTokenizer()
    for _ in range(2):  # tokenized, then from the cache
        skip = workload(path, on_bad_row="skip")
        assert len(list(skip.generate(space(tok)))) == 1 and skip.source_profile().skipped == {
            "conversation has no human turn": 1}
    assert tok.calls == 1 and "read from the cache" in skip.source_profile().notes[0]
    with pytest.raises(ValidationError, match=re.escape(f"{path}: row 1 (line 3): conversation has no human turn")):
        workload(path)


def test_corrupt_cache_file_is_rebuilt(tmp_path, cache):
    path = sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")]])
    tok = ByteTokenizer()
    list(workload(path).generate(space(tok)))
    (entry,) = (cache / "tokenized").glob("*.npz")
    entry.write_bytes(b"not a zip")
    assert [r.prompt_text for r in workload(path).generate(space(tok))] == ["q"] and tok.calls == 2


def test_without_a_tokenizer_prompts_are_text_and_lengths_approximate(tmp_path, cache):
    path = sharegpt(tmp_path, [[("human", "x" * 10), ("gpt", "é" * 10)], [("human", "y"), ("gpt", "z")]])
    w = workload(path, shuffle=False)
    reqs = list(w.generate(TokenSpace(vocab_size=256)))
    assert [(r.prompt_token_ids, r.prompt_text, r.max_output_tokens) for r in reqs] == [
        (None, "x" * 10, 5), (None, "y", 1)]   # 10 bytes -> 3; 20 bytes -> 5; 1 byte -> 1
    profile = w.source_profile()
    assert profile.input_tokens == [3, 1] and "APPROXIMATE" in profile.notes[0]
    assert "output lengths from text" in profile.notes[0]
    assert not (cache / "tokenized").exists()


# ---- multi-turn ------------------------------------------------------------------------------------


def test_multi_turn_prompts_hold_the_history_and_share_a_prefix_id(tmp_path):
    convs = [[("system", "sys"), ("human", "a1"), ("gpt", "b1"), ("human", "a2"), ("gpt", "b22"), ("human", "a3")],
             [("human", "c1"), ("gpt", "d1")]]
    path = sharegpt(tmp_path, convs)
    w = workload(path, multi_turn=True, shuffle=False, output_tokens={"dist": "fixed", "value": 4})
    reqs = list(w.generate(space()))
    assert [r.prompt_text for r in reqs] == [
        "System: sys\nUser: a1\nAssistant:",
        "System: sys\nUser: a1\nAssistant: b1\nUser: a2\nAssistant:",
        "System: sys\nUser: a1\nAssistant: b1\nUser: a2\nAssistant: b22\nUser: a3\nAssistant:",
        "User: c1\nAssistant:"]
    assert [r.shared_prefix_id for r in reqs] == ["c0", "c0", "c0", "c1"]
    assert [r.source["turn"] for r in reqs] == [0, 1, 2, 0]
    assert reqs[1].prompt_token_ids[:len(reqs[0].prompt_token_ids)] == reqs[0].prompt_token_ids
    assert "independent request" in " ".join(w.source_profile().notes)
    # without the override, the last turn (no reply) is a bad row; the others take their reply's length
    skip = workload(path, multi_turn=True, shuffle=False, on_bad_row="skip")
    assert [r.max_output_tokens for r in skip.generate(space())] == [2, 3, 2]
    assert skip.source_profile().skipped_examples == [
        f"{path}: row 0 (line 2), turn 2: no output length (no reply, no output column value)"]


def test_multi_turn_sampling_keeps_conversations_whole_and_in_order(tmp_path):
    path = sharegpt(tmp_path, [[t for k in range(4) for t in (("human", f"c{i} t{k}"), ("gpt", "r"))]
                               for i in range(30)])
    reqs = list(workload(path, multi_turn=True, requests=42, seed=5).generate(space()))
    turns: dict[str, list[int]] = {}
    for r in reqs:
        turns.setdefault(r.shared_prefix_id, []).append(r.source["turn"])
    assert len(reqs) == 42 and len(turns) == 11   # 10 whole conversations and the first 2 turns of one more
    assert all(t == list(range(len(t))) for t in turns.values())
    assert sorted(len(t) for t in turns.values()) == [2] + [4] * 10
    ids = [r.shared_prefix_id for r in reqs]
    assert sum(a != b for a, b in zip(ids, ids[1:])) > len(turns)   # conversations interleave


# ---- bad rows --------------------------------------------------------------------------------------


def jsonl_case(tmp_path, bad_line):
    return jsonl(tmp_path, {"prompt": "fine", "n": 2}, bad_line, {"prompt": "also fine", "n": 3})


def sharegpt_case(tmp_path, bad_turns):
    return sharegpt(tmp_path, [[("human", "a"), ("gpt", "b")], bad_turns, [("human", "c"), ("gpt", "d")]])


N = {"columns": {"output_tokens": "n"}}
BAD = [  # (writer, config, location, reason)
    (lambda p: jsonl_case(p, '{"prompt": "x", "n": 2'), N, "data.jsonl:2", "invalid JSON"),
    (lambda p: jsonl_case(p, '[1, 2]'), N, "data.jsonl:2", "not a JSON object"),
    (lambda p: jsonl_case(p, '{"question": "x", "n": 2}'), N, "data.jsonl:2", "missing prompt column 'prompt'"),
    (lambda p: jsonl_case(p, '{"prompt": "  ", "n": 2}'), N, "data.jsonl:2", "empty prompt"),
    (lambda p: jsonl_case(p, '{"prompt": "x", "n": 2.5}'), N, "data.jsonl:2", "non-integer value in column 'n'"),
    (lambda p: jsonl_case(p, '{"prompt": "x", "n": "ten"}'), N, "data.jsonl:2", "non-integer value in column 'n'"),
    (lambda p: jsonl_case(p, '{"prompt": "x", "n": -3}'), N, "data.jsonl:2", "value below 1 in column 'n'"),
    (lambda p: jsonl_case(p, '{"prompt": "x"}'), N, "data.jsonl:2", "no output length"),
    (lambda p: write_csv(p, ["prompt", "n"], ["a", "1"], ["", "2"], ["b", "3"]), N, "data.csv: row 1 (line 3)",
     "empty prompt"),
    (lambda p: write_csv(p, ["prompt", "n"], ["a", "1"], ["x", "2", "extra"], ["b", "3"]), N,
     "data.csv: row 1 (line 3)", "wrong number of fields"),
    (lambda p: sharegpt_case(p, [("gpt", "only")]), {}, "data.json: row 1 (line 3)", "conversation has no human turn"),
    (lambda p: sharegpt_case(p, [("human", " "), ("gpt", "x")]), {}, "data.json: row 1 (line 3)", "empty prompt"),
    (lambda p: sharegpt_case(p, [("human", "q")]), {}, "data.json: row 1 (line 3)", "no output length"),
    (lambda p: sharegpt_case(p, [("human", "q"), ("gpt", 7)]), {}, "data.json: row 1 (line 3)", "malformed turn"),
]


@pytest.mark.parametrize("write,config,where,reason", BAD)
def test_bad_rows_reject_the_config_naming_where_or_are_skipped_and_counted(tmp_path, write, config, where, reason):
    path = write(tmp_path)
    with pytest.raises(ValidationError, match=re.escape(f"{tmp_path}/{where}: {reason}")):
        workload(path, **config)
    w = workload(path, on_bad_row="skip", shuffle=False, **config)
    assert len(list(w.generate(space()))) == 2
    profile = w.source_profile()
    assert sum(profile.skipped.values()) == 1 and next(iter(profile.skipped)).startswith(reason)
    assert profile.skipped_examples[0].startswith(f"{tmp_path}/{where}: {reason}") and profile.rows_read == 3


# ---- config-time errors ----------------------------------------------------------------------------


def experiment(workload_fields: dict) -> dict:
    return {"name": "x", "engine": {"kind": "mock"},
            "workload": {"kind": "dataset", "arrival": {"process": "poisson", "rate": 5}, **workload_fields}}


@pytest.mark.parametrize("fields,expected", [
    ({"path": "{tmp}/missing.json"}, "path: {tmp}/missing.json does not exist"),
    ({"path": "{tmp}/data.txt"}, "format: cannot tell the format of {tmp}/data.txt from its name"),
    ({"path": "{tmp}/data.csv", "columns": {"prompt": "question"}},
     "columns.prompt: {tmp}/data.csv has no column 'question'; its columns: len, prompt"),
    ({"path": "{tmp}/data.csv", "columns": {"output_tokens": "n"}},
     "columns.output_tokens: {tmp}/data.csv has no column 'n'"),
    ({"path": "{tmp}/other.csv"},
     "columns.prompt: {tmp}/other.csv has none of the columns prompt, text, conversations"),
    ({"path": "{tmp}/data.jsonl", "columns": {"output_text": "answer"}},
     "columns.output_text: {tmp}/data.jsonl has no column 'answer'; its columns: output_tokens, prompt"),
    ({"path": "{tmp}/data.parquet", "columns": {"prompt": "q"}},
     "columns.prompt: {tmp}/data.parquet has no column 'q'"),
    ({"path": "{tmp}/data.csv", "multi_turn": True}, "multi_turn: needs conversations"),
    ({"path": "{tmp}/data.json", "columns": {"output_tokens": "n"}},
     "columns.output_tokens: {tmp}/data.json has no column"),
    ({"path": "{tmp}/data.json", "multi_turn": True, "columns": {"output_text": "id"}}, "one length per row"),
    ({"path": "{tmp}/data.json", "format": "jsonl"}, "{tmp}/data.json:1: invalid JSON"),
    ({"path": "{tmp}/data.jsonl", "format": "sharegpt"}, "not a JSON array of records"),
    ({"path": "{tmp}/data.json", "format": "hf"}, "format: hf needs a folder"),
    ({"path": "{tmp}/data.json", "split": "test"}, "split: applies to format hf only"),
    ({"path": "{tmp}/files", "split": "test"}, "{tmp}/files (split 'test'): the datasets library cannot open it"),
    ({"path": "{tmp}/data.json", "min_input_tokens": 9, "max_input_tokens": 3},
     "min_input_tokens (9) > max_input_tokens (3)"),
    ({"path": "{tmp}/data.json", "max_output_tokens": 9, "output_tokens": {"dist": "fixed", "value": 3}},
     "bound it with its own min / max"),
    ({"path": "{tmp}/data.json", "requests": 2, "warmup_requests": 2}, "leave no measured request out of 2"),
    ({"path": "{tmp}/data.json", "columns": {"prompt": "a", "conversations": "b"}}, "not both"),
    ({"path": "{tmp}/data.json", "colour": "red"}, "workload.dataset.colour: unknown key"),
])
def test_config_errors_name_the_field(tmp_path, fields, expected):
    sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")]])
    write_csv(tmp_path, ["prompt", "len"], ["q", "1"])
    write_csv(tmp_path, ["question"], ["q"], name="other.csv")
    jsonl(tmp_path, {"prompt": "q", "output_tokens": 1})
    (tmp_path / "data.txt").write_text("q\n")
    write_format(tmp_path, "parquet")
    if fields["path"].endswith("files"):
        write_format(tmp_path, "hf-files")
    fields = {k: v.replace("{tmp}", str(tmp_path)) if isinstance(v, str) else v for k, v in fields.items()}
    with pytest.raises(ConfigError) as err:
        parse_config(experiment(fields), "c.yaml")
    assert "workload.dataset" in str(err.value) and expected.replace("{tmp}", str(tmp_path)) in str(err.value)


def test_every_row_is_checked_when_the_config_is_validated(tmp_path):
    path = jsonl(tmp_path, *[{"prompt": f"p{i}", "output_tokens": 1} for i in range(200)], '{"broken')
    fields = {"path": str(path), "columns": {"output_tokens": "output_tokens"}}
    with pytest.raises(ConfigError, match=re.escape(f"workload.dataset: {path}:201: invalid JSON (set on_bad_row")):
        parse_config(experiment(fields), "c.yaml")
    cfg = parse_config(experiment({**fields, "on_bad_row": "skip"}), "c.yaml")
    assert isinstance(cfg.workload, DatasetWorkload) and cfg.workload.model_dump()["format"] == "auto"
    assert len(list(cfg.workload.generate(space()))) == 200
    assert cfg.workload.source_profile().skipped == {"invalid JSON": 1}
    with pytest.raises(ConfigError, match=r"requests: 201 asked for but .*data\.jsonl holds only 200 usable rows "
                                          r"\(1 bad rows skipped\)"):
        parse_config(experiment({**fields, "on_bad_row": "skip", "requests": 201}), "c.yaml")


def test_rows_read_at_validation_are_reused_until_the_file_changes(tmp_path, monkeypatch):
    reads = []
    reader = dataset.RECORD_READERS["sharegpt"]
    monkeypatch.setitem(dataset.RECORD_READERS, "sharegpt", lambda *a: reads.append(a) or reader(*a))
    path = sharegpt(tmp_path, [[("human", f"q{i}"), ("gpt", "r")] for i in range(3)])
    w = workload(path)
    assert len(list(w.generate(space()))) == 3 and len(list(w.generate(space()))) == 3 and len(reads) == 1
    sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")], [("human", "")]])   # changed: read and checked again
    with pytest.raises(BadRowError, match=re.escape(f"{path}: row 1 (line 3): empty prompt")):
        list(w.generate(space()))
    assert len(reads) == 2


def test_sharegpt_locations_name_the_line_each_record_starts_on(tmp_path):
    path = sharegpt(tmp_path, [[("human", "a"), ("gpt", "b")], [("human", "c"), ("gpt", "d")], [("gpt", "only")]],
                    indent=2)
    text = path.read_text()
    starts = [text[:m.start()].count("\n") + 1 for m in re.finditer(r'^  \{$', text, re.M)]
    assert len(starts) == 3 and starts[0] == 2 and starts[1] > 10
    w = workload(path, on_bad_row="skip", shuffle=False)
    assert [r.source["line"] for r in w.generate(space())] == starts[:2]
    assert w.source_profile().skipped_examples == [f"{path}: row 2 (line {starts[2]}): conversation has no human turn"]
    broken = tmp_path / "broken.json"
    broken.write_text(text.replace('"value": "c"', '"value": "c" "oops"'))
    line = text[:text.index('"value": "c"')].count("\n") + 1
    with pytest.raises(ValidationError, match=re.escape(f"{broken}:{line}: invalid JSON: Expecting ',' delimiter")):
        workload(broken)


@pytest.mark.parametrize("command", ["bench", "tune"])
def test_harness_exits_2_on_a_bad_row_before_any_engine_starts(tmp_path, command):
    path = sharegpt(tmp_path, [[("human", "q"), ("gpt", "r")], [("human", " "), ("gpt", "r")]])
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**experiment({"path": str(path)}), "search": {"space": "mock-default",
                                                                                    "trials": 2}}))
    proc = subprocess.run([sys.executable, "-m", "harness", command, str(config)], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"workload.dataset: {path}: row 1 (line 3): empty prompt" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "runs").exists()   # no trial, no engine

"""Dataset workloads: prompts, and output lengths, read from a dataset file or folder.

Sources (`format`; `auto` tells it from the path):
- `sharegpt`: a JSON array of records `{"id", "conversations": [{"from": "human"|"gpt"|"system",
  "value": str}, ...]}` (auto: a `.json` file starting with `[`).
- `jsonl`: one JSON object a line (auto: `.jsonl`, `.ndjson`, or a `.json` file starting with `{`).
- `csv`: a header row, then one record a row (auto: `.csv`).
- `parquet` (auto: `.parquet`, `.pq`).
- `hf` (auto: a folder): a LOCAL dataset the `datasets` library opens: a folder written by
  `save_to_disk` (`load_from_disk`; `split` picks from a DatasetDict), else a folder of data files
  (`load_dataset(path, split=split)`, streamed). The network is off while it runs: nothing is downloaded.

Every source is a sequence of records with named fields ("columns"). A record gives its prompt either
from a text column (`columns.prompt`; left out: "prompt", else "text") or from ShareGPT-style turns
(`columns.conversations`; the default when the data has neither prompt column but has
"conversations"; turns are `{"from", "value"}` or `{"role", "content"}`; "human"/"user" is the user,
"system" a system prompt, any other role a reply). With turns, the first human turn is the prompt and
the reply that follows it gives the output length.

Output length, first found: the `output_tokens` override (a LengthDist, drawn per row with the
lengths seed); the `columns.output_tokens` integer column; the token length of `columns.output_text`;
the token length of the reply. A record with none of these is a bad row.

Lengths. With the engine's tokenizer (`TokenSpace.tokenizer`) every prompt is tokenized once and sent
as `prompt_token_ids` (exact length) with its `prompt_text`; reply and output texts are tokenized for
their lengths (not with an override). The result is cached on disk (workloads/tokenized_cache.py)
under a key of the source's content, format, columns, split, multi_turn, whether output texts were
measured and the tokenizer's name, so a second run reads no text and encodes nothing.
Without a tokenizer (the simulated mock engine, an OpenAI server without a tokenizer) prompts are sent
as text only and every length is APPROXIMATE: UTF-8 bytes / 4, rounded up, at least 1; the source
profile says so.

Filtering and sampling. Rows whose input or output length lies outside `min_/max_input_tokens`,
`min_/max_output_tokens` are dropped and counted by reason (not errors). From what remains (the
population the source profile describes), `requests: N` rows are drawn without replacement with the
content seed (fewer than N left is an error saying why); left out, all of them are sent. `shuffle`
sends them in random order, else in file order.

Multi-turn (`multi_turn: true`, conversations only): every human turn k becomes its own request whose
prompt is the conversation so far, the dataset's replies included, in a role-tagged template
("User: ...\\nAssistant: ...\\n" ... "User: <turn k>\\nAssistant:"); its output length is the length of
the dataset's reply to turn k. The turns are sent as INDEPENDENT requests: the history holds the
dataset's replies, not the engine's, so a turn never waits for the previous answer. Consecutive turns
of a conversation share a growing prefix (and `shared_prefix_id` = the conversation's `id`, else
"row-<i>"), which is what lets prefix caching be measured. Sampling takes whole conversations (the last
one cut short to make N); shuffling interleaves conversations but keeps each one's turns in order.

Bad rows (`on_bad_row`, see workloads/profile.py): invalid JSON lines, missing or empty prompts,
malformed turns, conversations without a human turn, non-integer or < 1 output lengths, no output
length at all. Locations: JSONL `path:line`, CSV `path: row i (line n)`, others `path: row i` (i from 0),
plus `, turn k` in multi-turn.

Config-time checks (so that `harness tune` exits 2 naming the field): the path exists and is readable,
the format is known, and every configured column exists (a column the data lacks altogether is a
config error naming the columns it has; a record lacking it is a bad row). The columns are the CSV
header, the Parquet schema, the hf dataset's features (or its first record), the keys of the objects on
a JSONL file's first 100 lines, the fields of a ShareGPT file's first record. Reading every row and
tokenizing happen in `generate`.
"""
from __future__ import annotations

import csv
import importlib
import itertools
import json
import math
import os
from contextlib import closing, contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal, NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from workloads import tokenized_cache
from workloads.arrival import ArrivalProcess
from workloads.distributions import LengthDist
from workloads.profile import BadRows, OnBadRow, SourceProfile
from workloads.request import RequestSpec, Tokenizer, TokenSpace
from workloads.synthetic import Seeds

Format = Literal["sharegpt", "jsonl", "csv", "parquet", "hf"]

_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                                ".pq": "parquet"}
_INSTALL_HINT = "pip install 'datasets>=3'"
_CHUNK = 1000        # prompts (with their output texts) per encode_batch call
_PEEK_BYTES = 1 << 20  # of a ShareGPT file, to read its first record's fields at validation
_PEEK_LINES = 100    # of a JSONL file, whose objects' keys are its columns at validation
_ROLE_TAGS = {"human": "User", "system": "System", "reply": "Assistant"}


class DatasetColumns(BaseModel):
    """Which record fields hold what (see the module docstring for the defaults)."""

    model_config = ConfigDict(extra="forbid")
    prompt: str | None = Field(None, description='prompt text column (default: "prompt", else "text")')
    conversations: str | None = Field(
        None, description='ShareGPT-style turns column (default: "conversations" when there is no prompt column)')
    output_tokens: str | None = Field(None, description="integer column: the output length")
    output_text: str | None = Field(None, description="text column whose token length is the output length")

    @model_validator(mode="after")
    def _one_prompt_source(self):
        if self.prompt and self.conversations:
            raise ValueError("give columns.prompt or columns.conversations, not both")
        return self


@dataclass(frozen=True)
class _Fields:
    """The resolved columns: exactly one of `prompt` / `conversations`; `id` names conversations."""

    prompt: str | None
    conversations: str | None
    output_tokens: str | None
    output_text: str | None
    id: str | None

    def names(self) -> list[str]:
        return [n for n in (self.prompt, self.conversations, self.output_tokens, self.output_text, self.id) if n]


@dataclass
class _Unreadable:
    """A record that could not be read at all (invalid JSON, wrong number of CSV fields)."""

    reason: str


class _RowError(Exception):
    """A record that cannot be used; the message is its row-independent reason."""


class _Item(NamedTuple):
    """One request a record gives: `output_tokens` -1 when the record gives no count."""

    turn: int
    prompt: str
    output_tokens: int
    output_text: str | None


class _Bad(NamedTuple):
    turn: int
    reason: str


@dataclass(frozen=True)
class _Locator:
    """Names a record (row from 0, line from 1 or -1, turn or -1) in messages and in `RequestSpec.source`."""

    path: str
    format: Format

    def where(self, row: int, line: int, turn: int) -> str:
        if self.format == "jsonl":
            at = f"{self.path}:{line}"
        else:
            at = f"{self.path}: row {row}" + (f" (line {line})" if line >= 0 else "")
        return at + (f", turn {turn}" if turn >= 0 else "")

    def source(self, row: int, line: int, turn: int) -> dict:
        source: dict = {"kind": "dataset", "path": self.path}
        if self.format != "jsonl":
            source["row"] = row
        if line >= 0:
            source["line"] = line
        if turn >= 0:
            source["turn"] = turn
        return source


@dataclass
class _Source:
    """The items of a dataset (one per request it can give) with their lengths: what the cache holds.

    Arrays run over items. `output_len` is -1 (or 0) where the source gives no output length.
    `ids`/`offsets` (item i's prompt is ids[offsets[i]:offsets[i + 1]]) are None without a tokenizer,
    and `input_len` is then approximate. `bad`: (row, line, turn, reason) of every bad record or turn.
    """

    prompts: list[str]
    output_len: np.ndarray
    rows: np.ndarray
    lines: np.ndarray
    turns: np.ndarray
    conversation_ids: list[str]
    bad: list[tuple[int, int, int, str]]
    rows_read: int
    input_len: np.ndarray | None = None
    ids: np.ndarray | None = None
    offsets: np.ndarray | None = None

    def to_arrays(self) -> dict[str, np.ndarray]:
        prompts, prompt_offsets = tokenized_cache.pack_strings(self.prompts)
        convs, conv_offsets = tokenized_cache.pack_strings(self.conversation_ids)
        meta = json.dumps({"bad": self.bad, "rows_read": self.rows_read}).encode()
        return dict(prompts=prompts, prompt_offsets=prompt_offsets, conversations=convs,
                    conversation_offsets=conv_offsets, meta=np.frombuffer(meta, dtype=np.uint8),
                    output_len=self.output_len, rows=self.rows, lines=self.lines, turns=self.turns,
                    ids=self.ids, offsets=self.offsets)

    @classmethod
    def from_arrays(cls, a: dict[str, np.ndarray]) -> "_Source":
        meta = json.loads(a["meta"].tobytes())
        return cls(prompts=tokenized_cache.unpack_strings(a["prompts"], a["prompt_offsets"]),
                   conversation_ids=tokenized_cache.unpack_strings(a["conversations"], a["conversation_offsets"]),
                   bad=[tuple(b) for b in meta["bad"]], rows_read=meta["rows_read"], output_len=a["output_len"],
                   rows=a["rows"], lines=a["lines"], turns=a["turns"], ids=a["ids"], offsets=a["offsets"],
                   input_len=np.diff(a["offsets"]))


class DatasetWorkload(BaseModel):
    """Requests whose prompts and output lengths come from a dataset (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["dataset"]
    path: str = Field(description="dataset file, or folder for hf; relative paths are from the working directory")
    format: Literal["auto", "sharegpt", "jsonl", "csv", "parquet", "hf"] = "auto"
    split: str | None = Field(None, description='hf only: the split to read (default "train")')
    columns: DatasetColumns = Field(default_factory=DatasetColumns)
    multi_turn: bool = Field(False, description="every human turn of a conversation becomes a request")
    output_tokens: LengthDist | None = Field(None, description="output lengths drawn from this, not the dataset")
    min_input_tokens: int | None = Field(None, ge=1)
    max_input_tokens: int | None = Field(None, ge=1)
    min_output_tokens: int | None = Field(None, ge=1)
    max_output_tokens: int | None = Field(None, ge=1)
    requests: int | None = Field(None, ge=1, description="rows drawn at random (default: all); warm-up included")
    shuffle: bool = Field(True, description="send in random order; false: in file order")
    arrival: ArrivalProcess
    warmup_requests: int = Field(0, ge=0, description="first requests sent but excluded from metrics")
    cooldown_requests: int = Field(0, ge=0, description="last requests sent but excluded from metrics")
    seed: int | Seeds = Field(0, description="lengths: the output_tokens override; content: which rows, "
                                             "in which order; arrival: send times")
    on_bad_row: OnBadRow = "error"

    _format: Format = PrivateAttr()
    _fields: _Fields = PrivateAttr()
    _profile: SourceProfile | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _check_source(self):
        path = Path(self.path)
        _check_readable(path)
        self._format = _resolve_format(path, self.format)
        if self.split is not None and self._format != "hf":
            raise ValueError(f"split: applies to format hf only, not {self._format}")
        self._fields = self._resolve_fields(_COLUMN_READERS[self._format](path, self._split()))
        for what in ("input", "output"):
            low, high = getattr(self, f"min_{what}_tokens"), getattr(self, f"max_{what}_tokens")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what}_tokens ({low}) > max_{what}_tokens ({high})")
        if self.output_tokens is not None and (self.min_output_tokens or self.max_output_tokens):
            raise ValueError("min_output_tokens / max_output_tokens filter the dataset's output lengths; with an "
                             "output_tokens override, bound it with its own min / max instead")
        if self.requests is not None and self.warmup_requests + self.cooldown_requests >= self.requests:
            raise ValueError(f"warmup_requests + cooldown_requests ({self.warmup_requests} + "
                             f"{self.cooldown_requests}) leave no measured request out of {self.requests}")
        return self

    def _split(self) -> str:
        return self.split or "train"

    def _resolve_fields(self, available: set[str] | None) -> _Fields:
        """The columns to read; `available` is None where the data's columns are unknown before reading."""
        c = self.columns

        def need(field: str, name: str | None) -> str | None:
            if name is not None and available is not None and name not in available:
                raise ValueError(f"columns.{field}: {self.path} has no column {name!r}; "
                                 f"its columns: {', '.join(sorted(available)) or '(none)'}")
            return name

        prompt, conversations = need("prompt", c.prompt), need("conversations", c.conversations)
        if not (prompt or conversations):
            found = ["conversations"] if available is None else [
                n for n in ("prompt", "text", "conversations") if n in available]
            if not found:
                raise ValueError(f"columns.prompt: {self.path} has none of the columns prompt, text, conversations; "
                                 f"name the prompt column (its columns: {', '.join(sorted(available)) or '(none)'})")
            prompt, conversations = (None, found[0]) if found[0] == "conversations" else (found[0], None)
        if conversations and self._format == "csv":
            raise ValueError("columns.conversations: a CSV cell holds text, not a list of turns")
        if self.multi_turn:
            if not conversations:
                raise ValueError(f"multi_turn: needs conversations (ShareGPT-style turns); {self.path} gives "
                                 f"prompts from column {prompt!r}")
            if c.output_tokens or c.output_text:
                raise ValueError("columns.output_tokens / output_text give one length per row; with multi_turn each "
                                 "turn's reply gives its output length (or set an output_tokens override)")
        has_id = self.multi_turn and (available is None or "id" in available)
        return _Fields(prompt=prompt, conversations=conversations, output_tokens=need("output_tokens", c.output_tokens),
                       output_text=need("output_text", c.output_text), id="id" if has_id else None)

    def max_sequence_tokens(self) -> int | None:
        """Longest prompt + output, when `max_input_tokens` and the output bound (the override's upper
        bound, else `max_output_tokens`) give it; else None: text lengths are unknown before tokenizing."""
        out = self.output_tokens.upper_bound() if self.output_tokens is not None else self.max_output_tokens
        return None if self.max_input_tokens is None or out is None else self.max_input_tokens + out

    def source_profile(self) -> SourceProfile:
        """The dataset after filtering, before sampling (valid once `generate` has run)."""
        if self._profile is None:
            raise RuntimeError("source_profile() describes the last generate(): call generate first")
        return self._profile

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the requests in send order; the same config, data and tokenizer give the same requests.

        Reads (or takes from the cache) and tokenizes the whole dataset before the first request.
        """
        tokenizer = token_space.tokenizer
        seeds = self.seed if isinstance(self.seed, Seeds) else Seeds.from_base(self.seed)
        bad, locator = BadRows(self.on_bad_row), _Locator(self.path, self._format)
        src, notes = self._load(tokenizer, bad, locator)
        n = len(src.prompts)

        def where(i: int) -> str:
            return locator.where(int(src.rows[i]), int(src.lines[i]), int(src.turns[i]))

        usable = np.ones(n, dtype=bool)
        if self.output_tokens is not None:
            out = self.output_tokens.sample(np.random.default_rng(seeds.lengths), n)
            notes.append("output lengths are drawn from the output_tokens override, not taken from the dataset")
        else:
            out = src.output_len
            for i in np.flatnonzero(out < 1):
                bad.add(where(i), "no output length (no reply, no output column value)")
            usable &= out >= 1
        filtered = BadRows("skip")
        for reason, outside in self._filters(src.input_len, out):
            for i in np.flatnonzero(usable & outside):
                filtered.add(where(i), reason)
            usable &= ~outside
        population = np.flatnonzero(usable)

        n_requests = self.requests or len(population)
        if not 0 < n_requests <= len(population):
            asked = f"{self.requests} requests asked for but only" if self.requests else "no requests:"
            dropped = [f"{reason} ({count})" for reason, count in (bad.counts + filtered.counts).items()]
            unit = "turns" if self.multi_turn else "rows"
            raise ValueError(f"{self.path}: {asked} {len(population)} usable {unit} remain of {src.rows_read} rows "
                             f"read" + (f"; dropped: {', '.join(dropped)}" if dropped else ""))
        if self.warmup_requests + self.cooldown_requests >= n_requests:
            raise ValueError(f"warmup_requests + cooldown_requests ({self.warmup_requests} + "
                             f"{self.cooldown_requests}) leave no measured request out of {n_requests}")
        order = _order(population, src.rows, n_requests, self.shuffle, np.random.default_rng(seeds.content))
        if self.multi_turn:
            notes.append("multi-turn: each human turn is an independent request whose prompt holds the "
                         "conversation so far with the dataset's replies (not the engine's); turns of a "
                         "conversation share shared_prefix_id")
        self._profile = SourceProfile(
            kind="dataset", description=self._description(), rows_read=src.rows_read,
            rows_used=len(np.unique(src.rows[order])), input_tokens=src.input_len[population].tolist(),
            output_tokens=out[population].tolist(), skipped=dict(bad.counts + filtered.counts),
            skipped_examples=bad.examples + filtered.examples, notes=notes)

        offsets = self.arrival.offsets(np.random.default_rng(seeds.arrival), n_requests)
        for k, i in enumerate(order.tolist()):
            ids = None if src.ids is None else tuple(src.ids[src.offsets[i]:src.offsets[i + 1]].tolist())
            yield RequestSpec(
                id=f"req-{k:06d}",
                max_output_tokens=int(out[i]),
                prompt_token_ids=ids,
                prompt_text=src.prompts[i],
                scheduled_offset_s=None if offsets is None else float(offsets[k]),
                shared_prefix_id=src.conversation_ids[i] if self.multi_turn else None,
                source=locator.source(int(src.rows[i]), int(src.lines[i]), int(src.turns[i])),
            )

    def _filters(self, input_len: np.ndarray, output_len: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(reason, mask of items outside the bound) of each length bound set."""
        for what, lengths in (("input", input_len), ("output", output_len)):
            low, high = getattr(self, f"min_{what}_tokens"), getattr(self, f"max_{what}_tokens")
            if low is not None:
                yield f"{what} tokens below min_{what}_tokens ({low})", lengths < low
            if high is not None:
                yield f"{what} tokens above max_{what}_tokens ({high})", lengths > high

    def _load(self, tokenizer: Tokenizer | None, bad: BadRows, locator: _Locator) -> tuple[_Source, list[str]]:
        """The dataset's items measured with `tokenizer` (from the cache when there), and notes on how;
        bad records go to `bad`."""
        if tokenizer is None:
            src, texts = self._parse(bad, locator)
            _approximate(src, texts)
            measured = "input lengths" + (" and output lengths from text" if self.output_tokens is None
                                          and not self._fields.output_tokens else "")
            return src, [f"the engine offers no tokenizer: prompts are sent as text and {measured} are "
                         "APPROXIMATE (UTF-8 bytes / 4), filters included"]
        measure_outputs = self.output_tokens is None  # with an override, output texts need no tokenizing
        identity = dict(format=self._format, fields=asdict(self._fields), split=self._split(),
                        multi_turn=self.multi_turn, output_lengths=measure_outputs, tokenizer=tokenizer.name)
        key = tokenized_cache.cache_key(Path(self.path), identity)
        arrays = tokenized_cache.load(key)
        if arrays is not None:
            src = _Source.from_arrays(arrays)
            for row, line, turn, reason in src.bad:
                bad.add(locator.where(row, line, turn), reason)
            return src, [f"tokenized with {tokenizer.name}: read from the cache ({key[:12]})"]
        src, texts = self._parse(bad, locator)
        _tokenize(src, texts if measure_outputs else [None] * len(texts), tokenizer)
        file = tokenized_cache.save(key, src.to_arrays())
        return src, [f"tokenized with {tokenizer.name}: {len(src.prompts)} prompts, now cached in {file}"]

    def _parse(self, bad: BadRows, locator: _Locator) -> tuple[_Source, list[str | None]]:
        """Every record's items (lengths not yet measured) and their output texts; bad ones go to `bad`."""
        prompts, texts, outs, rows, lines, turns, conversation_ids = [], [], [], [], [], [], []
        bad_list: list[tuple[int, int, int, str]] = []
        rows_read, fields, multi_turn = 0, self._fields, self.multi_turn
        records = _RECORD_READERS[self._format](Path(self.path), fields, self._split())
        with closing(records):  # a bad row that raises still closes the file (and the datasets context)
            for row, line, record in records:
                rows_read += 1
                for item in _items(record, fields, multi_turn):
                    if isinstance(item, _Bad):
                        bad_list.append((row, line, item.turn, item.reason))
                        bad.add(locator.where(row, line, item.turn), item.reason)
                        continue
                    prompts.append(item.prompt)
                    texts.append(item.output_text)
                    outs.append(item.output_tokens)
                    rows.append(row)
                    lines.append(line)
                    turns.append(item.turn)
                    if multi_turn:
                        given = record.get(fields.id) if fields.id else None
                        conversation_ids.append(f"row-{row}" if given is None else str(given))
        src = _Source(prompts=prompts, output_len=np.array(outs, dtype=np.int64), rows=np.array(rows, dtype=np.int64),
                      lines=np.array(lines, dtype=np.int64), turns=np.array(turns, dtype=np.int64),
                      conversation_ids=conversation_ids, bad=bad_list, rows_read=rows_read)
        return src, texts

    def _description(self) -> str:
        split = f", split {self._split()}" if self._format == "hf" else ""
        return f"{self._format} dataset {self.path}{split}{', multi-turn' if self.multi_turn else ''}"


def _order(population: np.ndarray, groups: np.ndarray, n: int, shuffle: bool, rng: np.random.Generator) -> np.ndarray:
    """`n` items of `population` in send order.

    Items of one group (a record: one item, or a conversation's turns) lie next to each other in
    index order. Whole groups are taken in random order until there are `n` items (the last group
    cut short); they are sent in index order, or shuffled with each group's items kept in order.
    """
    _, starts, sizes = np.unique(groups[population], return_index=True, return_counts=True)
    perm = rng.permutation(len(starts))
    starts, sizes = starts[perm], sizes[perm]
    taken = np.searchsorted(np.cumsum(sizes), n) + 1  # groups needed for n items
    chosen = population[_ranges(starts[:taken], sizes[:taken])][:n]
    if not shuffle:
        return np.sort(chosen)
    order = rng.permutation(chosen)
    positions = np.lexsort((np.arange(n), groups[order]))  # positions grouped by group, in order
    order[positions] = np.sort(order)  # ... get that group's items in order
    return order


def _ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of range(start, start + size) for each (start, size)."""
    ends = np.cumsum(sizes)
    return np.repeat(starts - (ends - sizes), sizes) + np.arange(ends[-1] if len(ends) else 0)


def _items(record, fields: _Fields, multi_turn: bool) -> Iterator[_Item | _Bad]:
    """The requests one record gives, and its bad parts (turn -1: the whole record)."""
    if isinstance(record, _Unreadable):
        yield _Bad(-1, record.reason)
        return
    try:
        output_tokens = _count(record.get(fields.output_tokens), fields.output_tokens) if fields.output_tokens else None
        output_text = _text(record.get(fields.output_text), fields.output_text) if fields.output_text else None
        if fields.prompt:
            prompt = _text(record.get(fields.prompt), fields.prompt)
            if prompt is None:
                raise _RowError(f"missing prompt column {fields.prompt!r}")
            if not prompt.strip():
                raise _RowError("empty prompt")
            turns = None
        else:
            turns = _turns(record.get(fields.conversations), fields.conversations)
    except _RowError as exc:
        yield _Bad(-1, str(exc))
        return
    if output_text is not None and not output_text.strip():
        output_text = None
    if turns is None:
        yield _Item(-1, prompt, output_tokens or -1, output_text)
        return
    humans = [k for k, (role, _) in enumerate(turns) if role == "human"]
    if not humans:
        yield _Bad(-1, "conversation has no human turn")
    elif not multi_turn:
        text = turns[humans[0]][1]
        yield (_Item(-1, text, output_tokens or -1, output_text or _reply_after(turns, humans[0])) if text.strip()
               else _Bad(-1, "empty prompt"))
    else:
        rendered = [f"{_ROLE_TAGS[role]}: {text}\n" for role, text in turns]
        for k, t in enumerate(humans):
            text = turns[t][1]
            yield (_Item(k, "".join(rendered[:t]) + f"User: {text}\nAssistant:", -1, _reply_after(turns, t))
                   if text.strip() else _Bad(k, "empty prompt"))


def _turns(value, column: str) -> list[tuple[str, str]]:
    """(role, text) of each turn, role "human", "system" or "reply"."""
    if value is None:
        raise _RowError(f"missing conversations column {column!r}")
    if not isinstance(value, list):
        raise _RowError(f"column {column!r} is not a list of turns")
    turns = []
    for turn in value:
        role = (turn.get("from") or turn.get("role")) if isinstance(turn, dict) else None
        text = (turn.get("value") if turn.get("value") is not None else turn.get("content")) if role else None
        if not isinstance(role, str) or not isinstance(text, str):
            raise _RowError("malformed turn (needs from/value or role/content strings)")
        turns.append(("human" if role in ("human", "user") else "system" if role == "system" else "reply", text))
    return turns


def _reply_after(turns: list[tuple[str, str]], k: int) -> str | None:
    """The text of the reply to human turn `k` (system turns between are passed over), if any and not blank."""
    for role, text in turns[k + 1:]:
        if role == "reply":
            return text if text.strip() else None
        if role == "human":
            return None
    return None


def _count(value, column: str) -> int | None:
    """A positive integer from a cell (int, integral float, numeric text); None for an empty cell."""
    if isinstance(value, str):
        if not value.strip():
            return None
        try:
            value = float(value)
        except ValueError:
            raise _RowError(f"non-integer value in column {column!r}") from None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise _RowError(f"non-integer value in column {column!r}")
    if value < 1:
        raise _RowError(f"value below 1 in column {column!r}")
    return int(value)


def _text(value, column: str) -> str | None:
    """A text cell; None for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise _RowError(f"non-text value in column {column!r}")
    return value


def _approx_tokens(text: str) -> int:
    return max(1, -(-len(text.encode("utf-8")) // 4))


def _approximate(src: _Source, texts: list[str | None]) -> None:
    """Fill in approximate lengths (no tokenizer)."""
    src.input_len = np.array([_approx_tokens(p) for p in src.prompts], dtype=np.int64)
    for i, text in enumerate(texts):
        if src.output_len[i] < 0 and text is not None:
            src.output_len[i] = _approx_tokens(text)


def _tokenize(src: _Source, texts: list[str | None], tokenizer: Tokenizer) -> None:
    """Fill in prompt ids and exact lengths, encoding prompts and output texts `_CHUNK` at a time."""
    n = len(src.prompts)
    parts, input_len = [], np.zeros(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        end = min(start + _CHUNK, n)
        measure = [i for i in range(start, end) if src.output_len[i] < 0 and texts[i] is not None]
        encoded = tokenizer.encode_batch(src.prompts[start:end] + [texts[i] for i in measure])
        prompt_ids = encoded[:end - start]
        input_len[start:end] = [len(ids) for ids in prompt_ids]
        parts.append(np.fromiter(itertools.chain.from_iterable(prompt_ids), dtype=np.int32,
                                 count=int(input_len[start:end].sum())))
        for i, ids in zip(measure, encoded[end - start:]):
            src.output_len[i] = len(ids)
    src.input_len = input_len
    src.ids = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)
    src.offsets = np.concatenate([[0], np.cumsum(input_len)]).astype(np.int64)


# ---- sources: config-time checks and column names, then records ------------------------------------


def _check_readable(path: Path) -> None:
    if not path.exists():
        raise ValueError(f"path: {path} does not exist")
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            path.open("rb").close()
    except OSError as exc:
        raise ValueError(f"path: cannot read {path}: {exc.strerror or exc}") from None


def _resolve_format(path: Path, fmt: str) -> Format:
    if fmt != "auto":
        if (fmt == "hf") != path.is_dir():
            raise ValueError(f"format: {fmt} needs {'a folder' if fmt == 'hf' else 'a file'}; {path} is "
                             f"{'a folder' if path.is_dir() else 'a file'}")
        return fmt
    if path.is_dir():
        return "hf"
    suffix = path.suffix.lower()
    if suffix == ".json":
        with path.open("rb") as f:
            return "sharegpt" if f.read(4096).lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"[") else "jsonl"
    if suffix in _SUFFIXES:
        return _SUFFIXES[suffix]
    raise ValueError(f"format: cannot tell the format of {path} from its name; set format: sharegpt, jsonl, csv, "
                     "parquet or hf")


def _import(module: str):
    """`module`, or a ValueError naming the install command (so that a config check reports it)."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ValueError(f"reading this dataset needs {module.split('.')[0]} ({exc}); "
                         f"install it with: {_INSTALL_HINT}") from None


@contextmanager
def _datasets_offline():
    """The `datasets` module with the network switched off (env and its config) for the duration."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    saved = {name: os.environ.get(name) for name in names}
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        datasets = _import("datasets")
        offline, datasets.config.HF_HUB_OFFLINE = datasets.config.HF_HUB_OFFLINE, True
        try:
            yield datasets
        finally:
            datasets.config.HF_HUB_OFFLINE = offline
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _open_hf(datasets, path: Path, split: str):
    """The split of a local dataset: saved with save_to_disk (memory-mapped), else a folder of data files (streamed)."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"no such split; its splits: {', '.join(ds)}")
            ds = ds[split]
        return ds
    cache = tokenized_cache.cache_dir().parent / "hf-datasets"
    return datasets.load_dataset(str(path), split=split, streaming=True, cache_dir=str(cache))


def _sharegpt_columns(path: Path, split: str) -> set[str] | None:
    """The fields of the first record (None when it does not fit in the first `_PEEK_BYTES`)."""
    with path.open("rb") as f:
        head = f.read(_PEEK_BYTES).decode("utf-8", errors="replace").lstrip("\ufeff \t\r\n")
    if not head.startswith("["):
        raise ValueError(f"{path}: not a JSON array of records (ShareGPT format); for one JSON object a line, "
                         "use format: jsonl")
    body = head[1:].lstrip()
    if body.startswith("]"):
        raise ValueError(f"{path}: the dataset has no records")
    try:
        first, _ = json.JSONDecoder().raw_decode(body)
    except json.JSONDecodeError:
        return None
    return set(first) if isinstance(first, dict) else None


def _jsonl_columns(path: Path, split: str) -> set[str]:
    """The keys of the objects among the first `_PEEK_LINES` lines."""
    keys, objects = set(), 0
    with path.open("rb") as f:
        for raw in itertools.islice(f, _PEEK_LINES):
            try:
                obj = json.loads(raw)
            except ValueError:
                continue
            if isinstance(obj, dict):
                keys |= obj.keys()
                objects += 1
    if not objects:
        raise ValueError(f"{path}: no JSON object in its first {_PEEK_LINES} lines (expected one JSON object a line)")
    return keys


def _csv_columns(path: Path, split: str) -> set[str]:
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as f:
        header = next(csv.reader(f), None)
    if not header:
        raise ValueError(f"{path}: no header row (the first line must name the columns)")
    return set(header)


def _parquet_columns(path: Path, split: str) -> set[str]:
    pq = _import("pyarrow.parquet")
    try:
        return set(pq.read_schema(path).names)
    except Exception as exc:  # pyarrow raises its own error types for every kind of bad file
        raise ValueError(f"{path}: cannot read it as Parquet: {exc}") from None


def _hf_columns(path: Path, split: str) -> set[str]:
    with _datasets_offline() as datasets:
        try:
            ds = _open_hf(datasets, path, split)
            names = ds.column_names
            if names is None:  # a streamed dataset whose features are known only from a record
                names = list(next(iter(ds), {}))
        except Exception as exc:  # datasets raises a wide range of types for unreadable folders
            raise ValueError(f"{path} (split {split!r}): the datasets library cannot open it: {exc}") from None
    return set(names)


_Record = tuple[int, int, dict | _Unreadable]  # (row from 0, line from 1 or -1, the record)


def _sharegpt_records(path: Path, fields: _Fields, split: str) -> Iterator[_Record]:
    try:
        data = json.loads(path.read_bytes())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of records (ShareGPT format), got {type(data).__name__}")
    for row, record in enumerate(data):
        yield row, -1, record if isinstance(record, dict) else _Unreadable("record is not a JSON object")


def _jsonl_records(path: Path, fields: _Fields, split: str) -> Iterator[_Record]:
    with path.open("rb") as f:
        rows = itertools.count()
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                record = _Unreadable("invalid JSON")
            yield next(rows), line, (record if isinstance(record, (dict, _Unreadable))
                                     else _Unreadable("not a JSON object"))


def _csv_records(path: Path, fields: _Fields, split: str) -> Iterator[_Record]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, [])
            end, rows = reader.line_num, itertools.count()
            for cells in reader:
                line, end = end + 1, reader.line_num
                if cells:
                    yield next(rows), line, (dict(zip(header, cells)) if len(cells) == len(header)
                                             else _Unreadable("wrong number of fields"))
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _parquet_records(path: Path, fields: _Fields, split: str) -> Iterator[_Record]:
    pq = _import("pyarrow.parquet")
    rows = itertools.count()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_CHUNK, columns=fields.names()):
        for record in batch.to_pylist():
            yield next(rows), -1, record


def _hf_records(path: Path, fields: _Fields, split: str) -> Iterator[_Record]:
    with _datasets_offline() as datasets:
        for row, record in enumerate(_open_hf(datasets, path, split).select_columns(fields.names())):
            yield row, -1, record


_COLUMN_READERS: dict[Format, Callable[[Path, str], set[str] | None]] = {
    "sharegpt": _sharegpt_columns, "jsonl": _jsonl_columns, "csv": _csv_columns, "parquet": _parquet_columns,
    "hf": _hf_columns}
_RECORD_READERS: dict[Format, Callable[[Path, _Fields, str], Iterator[_Record]]] = {
    "sharegpt": _sharegpt_records, "jsonl": _jsonl_records, "csv": _csv_records, "parquet": _parquet_records,
    "hf": _hf_records}

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
Each format's reader (columns at config time, then records with row and line) is in workloads/dataset_files.py.
trtllm-bench dataset JSONL is one more source (workloads/trtllm_dataset.py, `kind: trtllm_dataset`)
feeding the same pipeline: reading, bad rows, lengths, filters, sampling and profile below.

Every source is a sequence of records with named fields ("columns"). A record gives its prompt either
from a text column (`columns.prompt`; left out: "prompt", else "text") or from ShareGPT-style turns
(`columns.conversations`; the default when the data has neither prompt column but has
"conversations"; turns are `{"from", "value"}` or `{"role", "content"}`; "human"/"user" is the user,
"system" a system prompt, any other role a reply). With turns, the first human turn is the prompt and
the reply that follows it gives the output length.

Output length, first found: the `output_tokens` override (a LengthDist, drawn per row with the
lengths seed); the `columns.output_tokens` integer column; the token length of `columns.output_text`;
the token length of the reply. A record with none of these is a bad row.

Reading. Validation (the config check) reads every record and applies the bad-row rules below, so with
`on_bad_row: error` a bad row rejects the config (exit 2), naming where it is, before any engine
starts; so does `requests` above the number of usable rows. What it read is kept for `generate`,
which reads again only if the source changed since (size or modification time).

Lengths. `generate` measures them. With the engine's tokenizer (`TokenSpace.tokenizer`) every text prompt
is tokenized once and sent as `prompt_token_ids` (exact length) with its `prompt_text`; reply and output
texts are tokenized for their lengths (not with an override). The result is cached on disk
(workloads/tokenized_cache.py) under a key of the source's content, what was read from it and the
tokenizer's name, so a second run encodes nothing. Without a tokenizer (the simulated mock engine, an
OpenAI server without a tokenizer) text prompts are sent as text only and their lengths are
APPROXIMATE: UTF-8 bytes / 4, rounded up, at least 1; the source profile says so. Token-id prompts a
source gives (trtllm-bench `input_ids`) are sent as they are, with their exact length.

Filtering and sampling. Rows whose input or output length lies outside `min_/max_input_tokens`,
`min_/max_output_tokens` are dropped and counted by reason (not errors). From what remains,
`requests: N` rows are drawn without replacement with the content seed (fewer than N left is an error
saying why); left out, all of them are sent. `shuffle` sends them in random order, else in file order.
The source profile describes the source as recorded: the lengths of every usable row before the
filters and the sampling, with a note of how many rows the filters kept.

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
length at all. Locations: JSONL `path:line`; CSV and ShareGPT `path: row i (line n)` (ShareGPT: the
line where the record starts); Parquet and hf `path: row i` (i from 0); plus `, turn k` in multi-turn.

Config-time checks (so that `harness tune` exits 2 naming the field): the path exists and is readable,
the format is known, every configured column exists (a column the data lacks altogether is a config
error naming the columns it has; a record lacking it is a bad row), and every row (above). The columns
are the CSV header, the Parquet schema, the hf dataset's features (or its first record), the keys of
the objects on a JSONL file's first 100 lines, the fields of a ShareGPT file's first record.
"""
from __future__ import annotations

import math
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Literal, NamedTuple, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from workloads import tokenized_cache
from workloads.dataset_files import (COLUMN_READERS, RECORD_READERS, Fields, Format, Record, Unreadable, check_readable,
                                      resolve_format)
from workloads.arrival import ArrivalProcess
from workloads.distributions import LengthDist
from workloads.profile import BadRows, OnBadRow, SourceProfile
from workloads.request import RequestSpec, Tokenizer, TokenSpace
from workloads.synthetic import Seeds

_CHUNK = 1000        # prompts (with their output texts) per encode_batch call
_ROLE_TAGS = {"human": "User", "system": "System", "reply": "Assistant"}
_NO_OUTPUT = "no output length (no reply, no output column value)"
#: Part of every tokenized-cache key: bump when what a cached entry holds for a source changes.
_CACHE_LAYOUT = 2


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


class RowError(Exception):
    """A record that cannot be used; the message is its row-independent reason."""


class Item(NamedTuple):
    """One request a record gives.

    `prompt` is None when the record gives only token ids (`ids`, int32); `output_tokens` is -1 when the record
    gives no count; `conversation` names a multi-turn conversation (None: "row-<i>"); `source`: extra
    keys for the request's `source`.
    """

    turn: int
    prompt: str | None
    output_tokens: int
    output_text: str | None
    ids: np.ndarray | None = None
    conversation: str | None = None
    source: dict | None = None


class BadItem(NamedTuple):
    """A record (turn -1) or one of its turns that cannot be used, and why."""

    turn: int
    reason: str




@dataclass(frozen=True)
class _Locator:
    """Names a record (row from 0, line from 1 or -1, turn or -1) in messages and in `RequestSpec.source`."""

    path: str
    format: Format
    kind: str

    def where(self, row: int, line: int, turn: int) -> str:
        if self.format == "jsonl":
            at = f"{self.path}:{line}"
        else:
            at = f"{self.path}: row {row}" + (f" (line {line})" if line >= 0 else "")
        return at + (f", turn {turn}" if turn >= 0 else "")

    def source(self, row: int, line: int, turn: int) -> dict:
        source: dict = {"kind": self.kind, "path": self.path}
        if self.format != "jsonl":
            source["row"] = row
        if line >= 0:
            source["line"] = line
        if turn >= 0:
            source["turn"] = turn
        return source


@dataclass
class _Parsed:
    """What reading a source found: its usable items (one per request it can give) and its bad ones.

    Lists and arrays run over usable items. `output_len` is -1 where the record gives no count (an output
    text or the override gives it); `given_ids`: token ids the records give (None: the source gives none);
    `bad`: (row, line, turn, reason) of every bad record or turn; `stamp`: the source when read (`_stamp`).
    """

    prompts: list[str | None]
    output_texts: list[str | None]
    output_len: np.ndarray
    rows: np.ndarray
    lines: np.ndarray
    turns: np.ndarray
    conversation_ids: list[str]
    sources: list[dict | None]
    given_ids: list[np.ndarray | None] | None
    bad: list[tuple[int, int, int, str]]
    rows_read: int
    stamp: tuple


@dataclass
class _Lengths:
    """The items' lengths as measured; item i's prompt ids are ids[offsets[i]:offsets[i + 1]] where has_ids[i]
    (else it is sent as text only and its input length is approximate)."""

    input_len: np.ndarray
    output_len: np.ndarray
    ids: np.ndarray
    offsets: np.ndarray
    has_ids: np.ndarray


class DatasetSource(BaseModel):
    """What the dataset workloads share (see the module docstring): every row read and checked at validation;
    lengths measured, rows filtered and sampled, the source profiled, in `generate`.

    A subclass names its `kind`, finds its format in `_resolve` (config-time checks) and reads records with
    `_records` and `_items`."""

    model_config = ConfigDict(extra="forbid")
    kind: str
    path: str = Field(description="dataset file, or folder for hf; relative paths are from the working directory")
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
    _parsed: _Parsed | None = PrivateAttr(default=None)
    _profile: SourceProfile | None = PrivateAttr(default=None)

    # ---- what a subclass gives ----

    def _resolve(self) -> None:
        """Config-time checks of the source (readable, format, columns); sets `_format`."""
        raise NotImplementedError

    def _records(self) -> Iterator[Record]:
        raise NotImplementedError

    def _items(self, record: dict | Unreadable) -> Iterator[Item | BadItem]:
        """The requests one record gives, and its bad parts (turn -1: the whole record)."""
        raise NotImplementedError

    def _identity(self) -> dict:
        """Everything besides the file's content that what `_records` and `_items` give depends on."""
        raise NotImplementedError

    def _description(self) -> str:
        raise NotImplementedError

    def _override(self) -> LengthDist | None:
        """The distribution output lengths are drawn from instead of the source's (None: the source's)."""
        return None

    def _multi_turn(self) -> bool:
        """Whether items are the turns of conversations (see the module docstring), each conversation's turns
        sharing `shared_prefix_id`."""
        return False

    def _unit(self) -> str:
        return "turns" if self._multi_turn() else "rows"

    # ---- the pipeline ----

    @model_validator(mode="after")
    def _read_every_row(self):
        self._resolve()
        for what in ("input", "output"):
            low, high = getattr(self, f"min_{what}_tokens"), getattr(self, f"max_{what}_tokens")
            if low is not None and high is not None and low > high:
                raise ValueError(f"min_{what}_tokens ({low}) > max_{what}_tokens ({high})")
        self._check_measured(self.requests)
        bad = BadRows(self.on_bad_row)
        parsed = self._rows(bad)
        usable = len(parsed.prompts)
        if not usable:
            raise ValueError(f"{self.path}: no usable {self._unit()} ({parsed.rows_read} rows read, {bad.total} bad)")
        if self.requests is not None and self.requests > usable:
            skipped = f" ({bad.total} bad rows skipped)" if bad.total else ""
            raise ValueError(f"requests: {self.requests} asked for but {self.path} holds only {usable} usable "
                             f"{self._unit()}{skipped}")
        self._check_measured(self.requests or usable)
        return self

    def _check_measured(self, n: int | None) -> None:
        if n is not None and self.warmup_requests + self.cooldown_requests >= n:
            raise ValueError(f"warmup_requests + cooldown_requests ({self.warmup_requests} + "
                             f"{self.cooldown_requests}) leave no measured request out of {n}")

    def _locator(self) -> _Locator:
        return _Locator(self.path, self._format, self.kind)

    def _seeds(self) -> Seeds:
        return self.seed if isinstance(self.seed, Seeds) else Seeds.from_base(self.seed)

    def _rows(self, bad: BadRows) -> _Parsed:
        """The source as read (again only if it changed since); its bad rows go to `bad`."""
        if self._parsed is None or self._parsed.stamp != _stamp(Path(self.path)):
            self._parsed = self._parse()
        locator = self._locator()
        for row, line, turn, reason in self._parsed.bad:
            bad.add(locator.where(row, line, turn), reason)
        return self._parsed

    def _parse(self) -> _Parsed:
        """Every record's items (lengths not yet measured) and where every bad one is."""
        path = Path(self.path)
        stamp = _stamp(path)
        prompts, texts, outs, rows, lines, turns, conversations, sources, ids = [], [], [], [], [], [], [], [], []
        bad: list[tuple[int, int, int, str]] = []
        rows_read, needs_output = 0, self._override() is None
        records = self._records()
        with closing(records):  # an error that stops reading still closes the file (and the datasets context)
            for row, line, record in records:
                rows_read += 1
                for item in self._items(record):
                    if isinstance(item, BadItem):
                        bad.append((row, line, item.turn, item.reason))
                    elif needs_output and item.output_tokens < 1 and item.output_text is None:
                        bad.append((row, line, item.turn, _NO_OUTPUT))
                    else:
                        prompts.append(item.prompt)
                        texts.append(item.output_text)
                        outs.append(item.output_tokens)
                        rows.append(row)
                        lines.append(line)
                        turns.append(item.turn)
                        conversations.append(f"row-{row}" if item.conversation is None else item.conversation)
                        sources.append(item.source)
                        ids.append(item.ids)
        return _Parsed(prompts=prompts, output_texts=texts, output_len=np.array(outs, dtype=np.int64),
                       rows=np.array(rows, dtype=np.int64), lines=np.array(lines, dtype=np.int64),
                       turns=np.array(turns, dtype=np.int64), conversation_ids=conversations, sources=sources,
                       given_ids=ids if any(i is not None for i in ids) else None, bad=bad, rows_read=rows_read,
                       stamp=stamp)

    def max_sequence_tokens(self) -> int | None:
        """Longest prompt + output sent: exact when every length is known without a tokenizer (token-id
        prompts with output counts); else `max_input_tokens` plus the output bound (the override's upper
        bound, else `max_output_tokens`) when both are set; else None (text lengths are unknown before
        tokenizing)."""
        if (exact := self._exact_lengths()) is not None:
            input_len, output_len = exact
            return int((input_len + output_len).max())
        override = self._override()
        out = override.upper_bound() if override is not None else self.max_output_tokens
        return None if self.max_input_tokens is None or out is None else self.max_input_tokens + out

    def longest_prompt_tokens(self) -> int | None:
        """Longest prompt sent: exact as in `max_sequence_tokens`, else `max_input_tokens` (None when unset)."""
        exact = self._exact_lengths()
        return self.max_input_tokens if exact is None else int(exact[0].max())

    def _exact_lengths(self) -> tuple[np.ndarray, np.ndarray] | None:
        """(input, output) lengths of the requests sent when they are known without a tokenizer (every
        prompt given as token ids, every output length given or drawn), else None."""
        parsed = self._rows(BadRows("skip"))
        if parsed.given_ids is None or any(ids is None for ids in parsed.given_ids) or (
                self._override() is None and (parsed.output_len < 1).any()):
            return None
        input_len = np.array([len(ids) for ids in parsed.given_ids], dtype=np.int64)
        order, out, _, _ = self._select(parsed, input_len, parsed.output_len, BadRows("skip"))
        return input_len[order], out[order]

    def source_profile(self) -> SourceProfile:
        """The source as recorded: every usable row before filters and sampling (valid once `generate` has run)."""
        if self._profile is None:
            raise RuntimeError("source_profile() describes the last generate(): call generate first")
        return self._profile

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the requests in send order; the same config, data and tokenizer give the same requests.

        Measures (tokenizes, or takes from the cache) every row before the first request."""
        bad = BadRows(self.on_bad_row)
        parsed = self._rows(bad)
        lengths, notes = self._measure(parsed, token_space.tokenizer)
        self._check_vocabulary(parsed, token_space)
        order, out, filtered, selection_notes = self._select(parsed, lengths.input_len, lengths.output_len, bad)
        self._profile = SourceProfile(
            kind=self.kind, description=self._description(), rows_read=parsed.rows_read,
            rows_used=len(np.unique(parsed.rows[order])), input_tokens=lengths.input_len.tolist(),
            output_tokens=out.tolist(), skipped=dict(bad.counts + filtered.counts),
            skipped_examples=bad.examples + filtered.examples, notes=notes + selection_notes)
        locator = self._locator()
        offsets = self.arrival.offsets(np.random.default_rng(self._seeds().arrival), len(order))
        for k, i in enumerate(order.tolist()):
            ids = (tuple(lengths.ids[lengths.offsets[i]:lengths.offsets[i + 1]].tolist()) if lengths.has_ids[i]
                   else None)
            yield RequestSpec(
                id=f"req-{k:06d}",
                max_output_tokens=int(out[i]),
                prompt_token_ids=ids,
                prompt_text=parsed.prompts[i],
                scheduled_offset_s=None if offsets is None else float(offsets[k]),
                shared_prefix_id=parsed.conversation_ids[i] if self._multi_turn() else None,
                source={**locator.source(int(parsed.rows[i]), int(parsed.lines[i]), int(parsed.turns[i])),
                        **(parsed.sources[i] or {})},
            )

    def _select(self, parsed: _Parsed, input_len: np.ndarray, output_len: np.ndarray, bad: BadRows
                ) -> tuple[np.ndarray, np.ndarray, BadRows, list[str]]:
        """(the items to send in send order, every item's output length (`output_len`, or drawn from the
        override), the items the length filters dropped, notes)."""
        seeds, n = self._seeds(), len(parsed.prompts)
        notes = []
        override = self._override()
        if override is not None:
            out = override.sample(np.random.default_rng(seeds.lengths), n)
            notes.append("output lengths are drawn from the output_tokens override, not taken from the dataset")
        else:
            out = output_len
        locator, filtered, kept = self._locator(), BadRows("skip"), np.ones(n, dtype=bool)
        filters = list(self._filters(input_len, out))
        for reason, outside in filters:
            for i in np.flatnonzero(kept & outside):
                filtered.add(locator.where(int(parsed.rows[i]), int(parsed.lines[i]), int(parsed.turns[i])), reason)
            kept &= ~outside
        population = np.flatnonzero(kept)
        if filters:
            notes.append(f"length filters kept {len(population)} of {n} {self._unit()}")
        if self._multi_turn():
            notes.append("multi-turn: each human turn is an independent request whose prompt holds the "
                         "conversation so far with the dataset's replies (not the engine's); turns of a "
                         "conversation share shared_prefix_id")
        n_requests = self.requests or len(population)
        if not 0 < n_requests <= len(population):
            asked = f"{self.requests} requests asked for but only" if self.requests else "no requests:"
            dropped = [f"{reason} ({count})" for reason, count in (bad.counts + filtered.counts).items()]
            raise ValueError(f"{self.path}: {asked} {len(population)} usable {self._unit()} remain of "
                             f"{parsed.rows_read} rows read" + (f"; dropped: {', '.join(dropped)}" if dropped else ""))
        self._check_measured(n_requests)
        order = _order(population, parsed.rows, n_requests, self.shuffle, np.random.default_rng(seeds.content))
        return order, out, filtered, notes

    def _filters(self, input_len: np.ndarray, output_len: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
        """(reason, mask of items outside the bound) of each length bound set."""
        for what, lengths in (("input", input_len), ("output", output_len)):
            low, high = getattr(self, f"min_{what}_tokens"), getattr(self, f"max_{what}_tokens")
            if low is not None:
                yield f"{what} tokens below min_{what}_tokens ({low})", lengths < low
            if high is not None:
                yield f"{what} tokens above max_{what}_tokens ({high})", lengths > high

    def _measure(self, parsed: _Parsed, tokenizer: Tokenizer | None) -> tuple[_Lengths, list[str]]:
        """The items' lengths measured with `tokenizer` (from the cache when there), and notes on how."""
        measure_outputs = self._override() is None  # with an override, output texts need no tokenizing
        n_texts = sum(ids is None for ids in parsed.given_ids or [None] * len(parsed.prompts))
        n_outputs = int(((parsed.output_len < 1) & np.array([t is not None for t in parsed.output_texts],
                                                            dtype=bool)).sum()) if measure_outputs else 0
        if tokenizer is None:
            lengths = _approximate(parsed, measure_outputs)
            measured = [what for what, count in (("input lengths", n_texts), ("output lengths from text", n_outputs))
                        if count]
            return lengths, [f"the engine offers no tokenizer: text prompts are sent as text and "
                             f"{' and '.join(measured)} are APPROXIMATE (UTF-8 bytes / 4), filters included"
                             ] if measured else []
        if not n_texts and not n_outputs:
            return _tokenize(parsed, tokenizer, measure_outputs), []
        key = tokenized_cache.cache_key(Path(self.path), dict(
            self._identity(), layout=_CACHE_LAYOUT, output_lengths=measure_outputs, tokenizer=tokenizer.name))
        arrays = tokenized_cache.load(key)
        if arrays is not None:
            return (_Lengths(input_len=np.diff(arrays["offsets"]), output_len=arrays["output_len"], ids=arrays["ids"],
                             offsets=arrays["offsets"], has_ids=np.ones(len(parsed.prompts), dtype=bool)),
                    [f"tokenized with {tokenizer.name}: read from the cache ({key[:12]})"])
        lengths = _tokenize(parsed, tokenizer, measure_outputs)
        file = tokenized_cache.save(key, {"ids": lengths.ids, "offsets": lengths.offsets,
                                          "output_len": lengths.output_len})
        return lengths, [f"tokenized with {tokenizer.name}: {n_texts} prompts, now cached in {file}"]

    def _check_vocabulary(self, parsed: _Parsed, token_space: TokenSpace) -> None:
        """Token ids the source gives must lie inside the engine's vocabulary."""
        for i, ids in enumerate(parsed.given_ids or []):
            if ids is not None and ids.max() >= token_space.vocab_size:
                where = self._locator().where(int(parsed.rows[i]), int(parsed.lines[i]), int(parsed.turns[i]))
                raise ValueError(f"{where}: token id {int(ids.max())} is outside the engine's vocabulary (size "
                                 f"{token_space.vocab_size}); was the dataset made with another tokenizer?")


class DatasetWorkload(DatasetSource):
    """Requests whose prompts and output lengths come from a dataset (see the module docstring)."""

    kind: Literal["dataset"]
    format: Literal["auto", "sharegpt", "jsonl", "csv", "parquet", "hf"] = "auto"
    split: str | None = Field(None, description='hf only: the split to read (default "train")')
    columns: DatasetColumns = Field(default_factory=DatasetColumns)
    multi_turn: bool = Field(False, description="every human turn of a conversation becomes a request")
    output_tokens: LengthDist | None = Field(None, description="output lengths drawn from this, not the dataset")

    _fields: Fields = PrivateAttr()

    def _resolve(self) -> None:
        path = Path(self.path)
        check_readable(path)
        self._format = resolve_format(path, self.format)
        if self.split is not None and self._format != "hf":
            raise ValueError(f"split: applies to format hf only, not {self._format}")
        self._fields = self._resolve_fields(COLUMN_READERS[self._format](path, self._split()))
        if self.output_tokens is not None and (self.min_output_tokens or self.max_output_tokens):
            raise ValueError("min_output_tokens / max_output_tokens filter the dataset's output lengths; with an "
                             "output_tokens override, bound it with its own min / max instead")

    def _split(self) -> str:
        return self.split or "train"

    def _resolve_fields(self, available: set[str] | None) -> Fields:
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
        return Fields(prompt=prompt, conversations=conversations, output_tokens=need("output_tokens", c.output_tokens),
                       output_text=need("output_text", c.output_text), id="id" if has_id else None)

    def _records(self) -> Iterator[Record]:
        return RECORD_READERS[self._format](Path(self.path), self._fields, self._split())

    def _items(self, record: dict | Unreadable) -> Iterator[Item | BadItem]:
        return _record_items(record, self._fields, self.multi_turn)

    def _identity(self) -> dict:
        return dict(format=self._format, fields=asdict(self._fields), split=self._split(), multi_turn=self.multi_turn)

    def _override(self) -> LengthDist | None:
        return self.output_tokens

    def _multi_turn(self) -> bool:
        return self.multi_turn

    def _description(self) -> str:
        split = f", split {self._split()}" if self._format == "hf" else ""
        return f"{self._format} dataset {self.path}{split}{', multi-turn' if self.multi_turn else ''}"


def _stamp(path: Path) -> tuple:
    """What tells whether a source changed: size and modification time of the file, or of each file in the folder."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return tuple((str(p), st.st_size, st.st_mtime_ns) for p in files for st in [p.stat()])


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


def _record_items(record: dict | Unreadable, fields: Fields, multi_turn: bool) -> Iterator[Item | BadItem]:
    """The requests one record gives, and its bad parts (turn -1: the whole record)."""
    if isinstance(record, Unreadable):
        yield BadItem(-1, record.reason)
        return
    try:
        output_tokens = _count(record.get(fields.output_tokens), fields.output_tokens) if fields.output_tokens else None
        output_text = _text(record.get(fields.output_text), fields.output_text) if fields.output_text else None
        if fields.prompt:
            prompt = _text(record.get(fields.prompt), fields.prompt)
            if prompt is None:
                raise RowError(f"missing prompt column {fields.prompt!r}")
            if not prompt.strip():
                raise RowError("empty prompt")
            turns = None
        else:
            turns = _turns(record.get(fields.conversations), fields.conversations)
    except RowError as exc:
        yield BadItem(-1, str(exc))
        return
    if output_text is not None and not output_text.strip():
        output_text = None
    if turns is None:
        yield Item(-1, prompt, output_tokens or -1, output_text)
        return
    humans = [k for k, (role, _) in enumerate(turns) if role == "human"]
    if not humans:
        yield BadItem(-1, "conversation has no human turn")
    elif not multi_turn:
        text = turns[humans[0]][1]
        yield (Item(-1, text, output_tokens or -1, output_text or _reply_after(turns, humans[0])) if text.strip()
               else BadItem(-1, "empty prompt"))
    else:
        given = record.get(fields.id) if fields.id else None
        conversation = None if given is None else str(given)
        rendered = [f"{_ROLE_TAGS[role]}: {text}\n" for role, text in turns]
        for k, t in enumerate(humans):
            text = turns[t][1]
            yield (Item(k, "".join(rendered[:t]) + f"User: {text}\nAssistant:", -1, _reply_after(turns, t),
                        conversation=conversation)
                   if text.strip() else BadItem(k, "empty prompt"))


def _turns(value, column: str) -> list[tuple[str, str]]:
    """(role, text) of each turn, role "human", "system" or "reply"."""
    if value is None:
        raise RowError(f"missing conversations column {column!r}")
    if not isinstance(value, list):
        raise RowError(f"column {column!r} is not a list of turns")
    turns = []
    for turn in value:
        role = (turn.get("from") or turn.get("role")) if isinstance(turn, dict) else None
        text = (turn.get("value") if turn.get("value") is not None else turn.get("content")) if role else None
        if not isinstance(role, str) or not isinstance(text, str):
            raise RowError("malformed turn (needs from/value or role/content strings)")
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
            raise RowError(f"non-integer value in column {column!r}") from None
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise RowError(f"non-integer value in column {column!r}")
    if value < 1:
        raise RowError(f"value below 1 in column {column!r}")
    return int(value)


def _text(value, column: str) -> str | None:
    """A text cell; None for a missing one."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if not isinstance(value, str):
        raise RowError(f"non-text value in column {column!r}")
    return value


def _approx_tokens(text: str) -> int:
    return max(1, -(-len(text.encode("utf-8")) // 4))


def _pack(prompt_ids: Sequence[Sequence[int] | None]) -> tuple[np.ndarray, np.ndarray]:
    """(the ids of every prompt that has ids, one after another; each prompt's length, 0 for one without)."""
    sizes = np.fromiter((0 if ids is None else len(ids) for ids in prompt_ids), dtype=np.int64, count=len(prompt_ids))
    present = [np.asarray(ids, dtype=np.int32) for ids in prompt_ids if ids is not None]
    return (np.concatenate(present) if present else np.zeros(0, dtype=np.int32)), sizes


def _approximate(parsed: _Parsed, measure_outputs: bool) -> _Lengths:
    """Lengths without a tokenizer: exact for token-id prompts, approximate for text."""
    given = parsed.given_ids or [None] * len(parsed.prompts)
    ids, sizes = _pack(given)
    input_len = np.array([len(g) if g is not None else _approx_tokens(p) for g, p in zip(given, parsed.prompts)],
                         dtype=np.int64)
    output_len = parsed.output_len.copy()
    if measure_outputs:
        for i, text in enumerate(parsed.output_texts):
            if output_len[i] < 1 and text is not None:
                output_len[i] = _approx_tokens(text)
    return _Lengths(input_len=input_len, output_len=output_len, ids=ids,
                    offsets=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                    has_ids=np.array([g is not None for g in given], dtype=bool))


def _tokenize(parsed: _Parsed, tokenizer: Tokenizer, measure_outputs: bool) -> _Lengths:
    """Exact lengths and every prompt's ids: text prompts (and output texts) encoded `_CHUNK` items at a time."""
    n = len(parsed.prompts)
    given = parsed.given_ids or [None] * n
    output_len, parts, input_len = parsed.output_len.copy(), [], np.zeros(n, dtype=np.int64)
    for start in range(0, n, _CHUNK):
        end = min(start + _CHUNK, n)
        encode = [i for i in range(start, end) if given[i] is None]
        measure = [i for i in range(start, end)
                   if measure_outputs and output_len[i] < 1 and parsed.output_texts[i] is not None]
        texts = [parsed.prompts[i] for i in encode] + [parsed.output_texts[i] for i in measure]
        encoded = tokenizer.encode_batch(texts) if texts else []
        chunk = given[start:end]
        for i, ids in zip(encode, encoded):
            chunk[i - start] = ids
        for i, ids in zip(measure, encoded[len(encode):]):
            output_len[i] = len(ids)
        ids, input_len[start:end] = _pack(chunk)
        parts.append(ids)
    return _Lengths(input_len=input_len, output_len=output_len,
                    ids=np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32),
                    offsets=np.concatenate([[0], np.cumsum(input_len)]).astype(np.int64),
                    has_ids=np.ones(n, dtype=bool))

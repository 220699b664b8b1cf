"""Trace replay: send times and prompt/output lengths as a production trace recorded them.

Formats (`format: auto` picks by extension, `.csv` / `.jsonl`, else by the first line):

- `azure`: the Azure LLM inference trace CSV (Azure/AzurePublicDataset), header
  `TIMESTAMP,ContextTokens,GeneratedTokens`, rows like `2023-11-16 18:17:03.9799600,4808,10` (2023)
  or `2024-05-10 00:00:00.009930+00:00,2048,28` (2024). Timestamps are read exactly (to the nanosecond,
  never through float seconds); one with a UTC offset (`+HH:MM`, `-HH:MM`, `Z`) is moved to UTC by
  integer arithmetic, one without is taken as UTC.
- `mooncake`: the Mooncake trace JSONL, one object a line:
  `{"timestamp": 27482, "input_length": 6955, "output_length": 52, "hash_ids": [46, 47, ...]}`,
  the timestamp in milliseconds from the trace start; hash id k names the k-th block of `block_size`
  prompt tokens (the last block may be partial), and equal hash ids are identical blocks: shared
  prefixes. Rows without `hash_ids` get prompts that share nothing. Other keys are ignored.

Neither trace holds text: prompts are synthesized token ids of exactly the recorded length, drawn from
the engine's vocabulary less its reserved ids, a pure function of `seed` and the row (Azure: its line
number; Mooncake: each block's hash id), so equal hash ids give identical blocks in every request and
an engine's prefix cache sees the sharing production saw. A Mooncake request whose first block is also
the first block of another replayed request gets `shared_prefix_id` "hash-<first hash id>"; all other
requests get None.

Time: the trace's first usable row is time 0; `window` keeps the rows in [start_s, start_s +
duration_s) of recorded time, then `requests` keeps the first N of those; the gaps between the kept
rows are divided by `speedup`, or scaled so that the mean rate (requests - 1) / (last send - first
send) is `rate` (the source profile's `time_scale` is the divisor either way). The first kept request is
sent at 0.

Lengths above `max_input_tokens` / `max_output_tokens` are clipped to the cap, not skipped, so the
arrival process stays as recorded. The source profile holds the kept rows' lengths as recorded, before
clipping, and notes how many rows were clipped, so the fidelity summary's KS statistic shows the change.

Bad rows (invalid JSON, a missing field, a length that is not a positive integer, an unparseable
timestamp, hash ids that do not fit the input length, a row out of time order) raise BadRowError naming
file and line with `on_bad_row: error`; with `skip` they are counted by reason. Rows are never
reordered. Out of order is a row earlier than the last row kept ("timestamp earlier than the previous
row"), or a row later than the next parseable row where dropping it restores the order ("timestamp
later than the next row"): so one row that jumps ahead in time costs only itself, not every row after
it, and never ends the window early. The file is read when the config is validated; reading stops
once the first row past the window (or the `requests`-th kept row) is known to be in order.

Paths: a relative `path` is resolved against the working directory; `builtin:NAME` names a trace
shipped in `workloads/data/` (the `code-completion` catalog workload replays
`builtin:azure-llm-2023/AzureLLMInferenceTrace_code.csv`).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from workloads.profile import BadRows, OnBadRow, SourceProfile, numbered_lines
from workloads.request import RequestSpec, TokenSpace

DATA_DIR = Path(__file__).parent / "data"
AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"
_AZURE_FIELDS = AZURE_HEADER.split(",")
_TIMESTAMP = re.compile(r"(\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?)(Z|[+-]\d{2}:\d{2})?")
_INTEGER = re.compile(r"-?[0-9]+")
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def resolve_path(path: str) -> Path:
    """The file a trace `path` names: `builtin:NAME` is NAME under workloads/data, anything else as given."""
    return DATA_DIR / path.removeprefix("builtin:") if path.startswith("builtin:") else Path(path)


@dataclass(frozen=True)
class TraceRow:
    """One usable trace row: 1-based line, absolute time in ns, lengths, Mooncake hash ids (or None)."""

    line: int
    t_ns: int
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] | None = None


class _Bad(Exception):
    """A row cannot be used; the message is the reason (row-independent, so counts group)."""


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _length(value, name: str, what: str) -> int:
    """A positive token count from a JSON value (or a CSV field parsed by `_csv_int`)."""
    if not _is_int(value):
        raise _Bad(f"non-integer {name}")
    if value < 0:
        raise _Bad(f"negative {what} length")
    if value == 0:
        raise _Bad(f"{what} length 0")
    return value


def _azure_row(line: int, text: str, block_size: int) -> TraceRow:
    fields = [f.strip() for f in text.split(",")]
    if len(fields) > len(_AZURE_FIELDS):
        raise _Bad("too many fields")
    fields += [""] * (len(_AZURE_FIELDS) - len(fields))
    for name, value in zip(_AZURE_FIELDS, fields):
        if not value:
            raise _Bad(f"missing {name}")
    stamp, context, generated = fields
    return TraceRow(line, _utc_ns(stamp), _length(_csv_int(context), "ContextTokens", "input"),
                    _length(_csv_int(generated), "GeneratedTokens", "output"))


def _utc_ns(stamp: str) -> int:
    """Nanoseconds since the epoch (UTC) of an ISO date and time, exactly; no UTC offset means UTC."""
    match = _TIMESTAMP.fullmatch(stamp)
    if not match:
        raise _Bad("unparseable TIMESTAMP")
    local, offset = match.groups()
    try:
        t_ns = int(np.datetime64(local, "ns").astype(np.int64))
    except ValueError:  # well-formed but impossible, e.g. month 13
        raise _Bad("unparseable TIMESTAMP") from None
    if offset is None or offset == "Z":
        return t_ns
    hours, minutes = int(offset[1:3]), int(offset[4:6])
    if hours > 23 or minutes > 59:
        raise _Bad("unparseable TIMESTAMP")
    sign = 1 if offset[0] == "+" else -1
    return t_ns - sign * (hours * 60 + minutes) * 60 * 10**9


def _csv_int(text: str) -> int | str:
    """The integer a CSV field spells, else the text (which `_length` rejects)."""
    return int(text) if _INTEGER.fullmatch(text) else text


def _mooncake_row(line: int, text: str, block_size: int) -> TraceRow:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        raise _Bad("invalid JSON") from None
    if not isinstance(obj, dict):
        raise _Bad("not a JSON object")
    for key in ("timestamp", "input_length", "output_length"):
        if key not in obj:
            raise _Bad(f"missing {key}")
    ms = obj["timestamp"]
    if isinstance(ms, bool) or not isinstance(ms, (int, float)) or not math.isfinite(ms):
        raise _Bad("non-numeric timestamp")
    if ms < 0:
        raise _Bad("negative timestamp")
    n_in = _length(obj["input_length"], "input_length", "input")
    n_out = _length(obj["output_length"], "output_length", "output")
    hash_ids = obj.get("hash_ids")
    if hash_ids is not None:
        if not isinstance(hash_ids, list) or not all(_is_int(h) and h >= 0 for h in hash_ids):
            raise _Bad("hash_ids not a list of non-negative integers")
        if abs(len(hash_ids) - -(-n_in // block_size)) > 1:
            raise _Bad("hash_ids disagree with input_length by more than one block")
        hash_ids = tuple(hash_ids)
    t_ns = ms * 1_000_000 if isinstance(ms, int) else round(ms * 1e6)
    return TraceRow(line, t_ns, n_in, n_out, hash_ids)


def detect_format(path: Path) -> Literal["azure", "mooncake"]:
    """The trace format from the file name (.csv, .jsonl), else from the first non-blank line."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return "azure"
    if suffix in (".jsonl", ".json"):
        return "mooncake"
    first = next((text for _, text in numbered_lines(path, "trace") if text is None or text.strip()), None) or ""
    if first.lstrip().startswith("{"):
        return "mooncake"
    if first.startswith("TIMESTAMP"):
        return "azure"
    raise ValueError(f"{path}: cannot tell the trace format from the file name or first line; "
                     "set format: azure or mooncake")


def read_trace(path: Path, fmt: Literal["azure", "mooncake"], bad: BadRows, *, block_size: int = 512,
               start_ns: int = 0, end_ns: int | None = None, limit: int | None = None) -> tuple[list[TraceRow], int]:
    """(usable rows in [start_ns, end_ns) after the first usable row, at most `limit`; data rows read).

    Unusable rows go to `bad`; reading stops at the first usable row at or past `end_ns`, or at `limit` rows.
    """
    parse = _azure_row if fmt == "azure" else _mooncake_row
    lines = numbered_lines(path, "trace")
    if fmt == "azure":
        _, header = next(lines, (1, ""))
        if header is None or header.strip() != AZURE_HEADER:
            got = "nothing" if not header else repr(header.strip()[:80])
            raise ValueError(f"{path}:1: expected the Azure trace header {AZURE_HEADER!r}, got {got}")
    read = 0

    def parsed() -> Iterator[TraceRow]:
        nonlocal read
        for line, text in lines:
            if text is not None and not text.strip():
                continue
            read += 1
            try:
                if text is None:
                    raise _Bad("not UTF-8 text")
                yield parse(line, text.strip(), block_size)
            except _Bad as reason:
                bad.add(f"{path}:{line}", str(reason))

    rows: list[TraceRow] = []
    first_ns = None
    for row in _in_time_order(parsed(), bad, path):
        first_ns = row.t_ns if first_ns is None else first_ns
        t = row.t_ns - first_ns
        if end_ns is not None and t >= end_ns:
            break
        if t >= start_ns:
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows, read


def _in_time_order(rows: Iterator[TraceRow], bad: BadRows, path: Path) -> Iterator[TraceRow]:
    """`rows` less those out of time order (see the module docstring), reported to `bad`; a row is
    yielded once the next row shows it in order (or the rows end)."""
    kept = held = None  # the last row yielded; the row waiting for the next one
    for row in rows:
        if held is not None:
            if row.t_ns < held.t_ns and (kept is None or row.t_ns >= kept.t_ns):
                bad.add(f"{path}:{held.line}", "timestamp later than the next row")
            else:
                yield held
                kept = held
            held = None
        if kept is not None and row.t_ns < kept.t_ns:
            bad.add(f"{path}:{row.line}", "timestamp earlier than the previous row")
        else:
            held = row
    if held is not None:
        yield held


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's output function on uint64 arrays (wrapping arithmetic is intended)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


class _Prompts:
    """Token-id prompts as pure functions of (seed, stream, key): equal keys give equal tokens,
    whatever else was generated before."""

    def __init__(self, seed: int, token_space: TokenSpace):
        reserved = np.fromiter(token_space.reserved_ids, dtype=np.int64, count=len(token_space.reserved_ids))
        self.allowed = np.setdiff1d(np.arange(token_space.vocab_size), reserved)
        self.seed = seed
        self.blocks: dict[int, tuple[int, ...]] = {}

    def random(self, stream: str, key: int, n: int) -> tuple[int, ...]:
        digest = hashlib.blake2b(f"{self.seed}:{stream}:{key}".encode(), digest_size=8).digest()
        z = np.uint64(int.from_bytes(digest, "little")) + np.arange(1, n + 1, dtype=np.uint64) * _GOLDEN
        return tuple(self.allowed[_mix(z) % np.uint64(len(self.allowed))].tolist())

    def blocked(self, row: TraceRow, n: int, block_size: int) -> tuple[int, ...]:
        """`n` tokens made of the row's hash blocks (cut to `n`; an unshared tail where the blocks run short)."""
        hashes = row.hash_ids[:-(-n // block_size)]
        for h in hashes:
            if h not in self.blocks:
                self.blocks[h] = self.random("block", h, block_size)
        ids = tuple(chain.from_iterable(self.blocks[h] for h in hashes))[:n]
        return ids + self.random("tail", row.line, n - len(ids)) if len(ids) < n else ids


@dataclass(frozen=True)
class _Replay:
    """What validation read: the rows replayed (as recorded: unclipped), their send offsets, which are
    the recorded times divided by `time_scale`, and the rows looked at."""

    rows: list[TraceRow]
    offsets_s: np.ndarray
    time_scale: float
    rows_read: int
    bad: BadRows


class TraceWindow(BaseModel):
    """The recorded time to replay: [start_s, start_s + duration_s) from the trace's first request."""

    model_config = ConfigDict(extra="forbid")
    start_s: float = Field(0.0, ge=0)
    duration_s: float | None = Field(None, gt=0, description="default: to the end of the trace")


class TraceArrival(BaseModel):
    """Open loop at the trace's (windowed, scaled) times; `max_concurrency` caps requests in flight."""

    model_config = ConfigDict(extra="forbid")
    process: Literal["trace"] = "trace"
    max_concurrency: int | None = Field(
        None, ge=1, description="client-side cap on requests in flight; waiting counts as queue_ms")


class TraceWorkload(BaseModel):
    """Requests replayed from a production trace (see the module docstring).

    Validation reads the trace; afterwards `format` and `requests` hold what was found (the detected
    format, the number of requests replayed) so a dumped config says what ran.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["trace"]
    path: str = Field(description="trace file; relative to the working directory, or builtin:NAME")
    format: Literal["auto", "azure", "mooncake"] = "auto"
    window: TraceWindow = Field(default_factory=TraceWindow)
    speedup: float = Field(1.0, gt=0, description="divides every gap between requests")
    rate: float | None = Field(None, gt=0, description="rescale times to this mean req/s (instead of speedup)")
    requests: int | None = Field(None, ge=1, description="the first N requests of the window (default: all)")
    max_input_tokens: int | None = Field(None, ge=1, description="longer prompts are clipped to this")
    max_output_tokens: int | None = Field(None, ge=1, description="longer outputs are clipped to this")
    warmup_requests: int = Field(0, ge=0, description="first requests sent but excluded from metrics")
    cooldown_requests: int = Field(0, ge=0, description="last requests sent but excluded from metrics")
    on_bad_row: OnBadRow = "error"
    seed: int = Field(0, ge=0, description="seed of the synthesized prompt tokens")
    block_size: int = Field(512, ge=1, description="tokens per Mooncake hash id")
    arrival: TraceArrival = Field(default_factory=TraceArrival)

    _replay: _Replay | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _read(self):
        if self.rate is not None and self.speedup != 1:
            raise ValueError("give rate or speedup, not both")
        path = resolve_path(self.path)
        if self.format == "auto":
            self.format = detect_format(path)
        bad = BadRows(self.on_bad_row)
        start_ns = round(self.window.start_s * 1e9)
        end_ns = None if self.window.duration_s is None else start_ns + round(self.window.duration_s * 1e9)
        rows, read = read_trace(path, self.format, bad, block_size=self.block_size,
                                start_ns=start_ns, end_ns=end_ns, limit=self.requests)
        if not rows:
            where = "" if self.window == TraceWindow() else f" in the window {self.window.model_dump()}"
            raise ValueError(f"{path}: no usable rows{where} ({read} rows read, {bad.total} bad)")
        if self.requests is not None and len(rows) < self.requests:
            raise ValueError(f"requests: {self.requests} asked for but {path} holds only {len(rows)} usable rows "
                             "in the window")
        n = self.requests = len(rows)
        if self.warmup_requests + self.cooldown_requests >= n:
            raise ValueError(f"warmup_requests + cooldown_requests ({self.warmup_requests} + "
                             f"{self.cooldown_requests}) leave no measured request out of {n}")
        recorded = np.array([r.t_ns - rows[0].t_ns for r in rows], dtype=np.int64) / 1e9
        if self.rate is None:
            scale = self.speedup
        elif n == 1:
            scale = 1.0
        elif recorded[-1] == 0:
            raise ValueError(f"rate: cannot rescale {path}: all {n} requests have the same timestamp")
        else:
            scale = recorded[-1] * self.rate / (n - 1)
        self._replay = _Replay(rows=rows, offsets_s=recorded / scale, time_scale=float(scale), rows_read=read, bad=bad)
        return self

    def _lengths(self, row: TraceRow) -> tuple[int, int]:
        """(prompt, output) tokens a row is replayed with: as recorded, clipped to the caps."""
        return (min(row.input_tokens, self.max_input_tokens or row.input_tokens),
                min(row.output_tokens, self.max_output_tokens or row.output_tokens))

    def max_sequence_tokens(self) -> int:
        """Longest prompt + output among the requests replayed (after clipping)."""
        return max(sum(self._lengths(r)) for r in self._replay.rows)

    def longest_prompt_tokens(self) -> int:
        """Longest prompt among the requests replayed (after clipping)."""
        return max(self._lengths(r)[0] for r in self._replay.rows)

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the requests in trace order; the same config and token space give the same requests."""
        replay, path = self._replay, str(resolve_path(self.path))
        prompts = _Prompts(self.seed, token_space)
        first_blocks = Counter(r.hash_ids[0] for r in replay.rows if r.hash_ids)
        for i, (row, offset) in enumerate(zip(replay.rows, replay.offsets_s.tolist())):
            n_in, n_out = self._lengths(row)
            if row.hash_ids is None:
                ids = prompts.random("row", row.line, n_in)
            else:
                ids = prompts.blocked(row, n_in, self.block_size)
            shared = bool(row.hash_ids) and first_blocks[row.hash_ids[0]] > 1
            yield RequestSpec(
                id=f"req-{i:06d}",
                max_output_tokens=n_out,
                prompt_token_ids=ids,
                scheduled_offset_s=offset,
                shared_prefix_id=f"hash-{row.hash_ids[0]}" if shared else None,
                source={"kind": "trace", "path": path, "line": row.line},
            )

    def source_profile(self) -> SourceProfile:
        """The replayed rows as recorded (lengths before clipping, gaps before scaling), the time scale,
        how many rows were clipped, bad rows by reason."""
        replay, rows = self._replay, self._replay.rows
        notes = ["prompts are synthesized token ids of the exact recorded length; the trace has no text"]
        if self.format == "mooncake":
            notes.append(f"equal hash ids are identical {self.block_size}-token blocks, so prompts share "
                         "prefixes as recorded")
        for field, what, cap in (("input_tokens", "input", self.max_input_tokens),
                                 ("output_tokens", "output", self.max_output_tokens)):
            clipped = sum(cap is not None and getattr(r, field) > cap for r in rows)
            if clipped:
                notes.append(f"{clipped:,} of {len(rows):,} rows had their {what} length clipped to "
                             f"max_{what}_tokens {cap}")
        return SourceProfile.with_bad_rows(
            replay.bad, kind="trace", description=self._describe(), rows_read=replay.rows_read,
            rows_used=len(rows), input_tokens=[r.input_tokens for r in rows],
            output_tokens=[r.output_tokens for r in rows],
            recorded_inter_arrival_s=(np.diff([r.t_ns for r in rows]) / 1e9).tolist(),
            time_scale=replay.time_scale, notes=notes)

    def _describe(self) -> str:
        w = self.window
        end = "end" if w.duration_s is None else f"{w.start_s + w.duration_s:g} s"
        timing = (f"rescaled to a mean of {self.rate:g} req/s (recorded time / {self._replay.time_scale:.4g})"
                  if self.rate is not None
                  else f"speedup {self.speedup:g}x" if self.speedup != 1 else "at recorded speed")
        return (f"{self.path} ({self.format} trace), recorded time {w.start_s:g} s to {end}, "
                f"{len(self._replay.rows)} requests, {timing}")

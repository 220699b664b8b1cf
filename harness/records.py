"""What the runner observed about each request (one JSON line each in `records.jsonl`).

Times are integer nanoseconds of `time.perf_counter_ns`, relative to the run's start (t0).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Literal

Phase = Literal["warmup", "measured", "cooldown"]


@dataclass
class RequestRecord:
    """One request's life: scheduled (open loop) -> dispatched -> sent -> tokens -> end.

    `token_ns` holds one entry per output token; a chunk of k tokens arriving at once is spread
    evenly over the gap since the previous chunk (the first chunk's tokens all take its arrival time).
    `error` is set when the request failed; partial output stays recorded.
    `input_tokens` is the prompt's length as sent, in the engine tokenizer's tokens (None when the client
    cannot know it: a text prompt and no tokenizer); `server_input_tokens` is the length the server reported
    (OpenAI `usage.prompt_tokens`: with the chat template and special tokens it adds), None where it reports none.
    `cached_prompt_tokens` is how many prompt tokens the engine reported taking from its prefix cache (None: no
    report); records written before it existed read as None.
    """

    id: str
    phase: Phase
    expected_output_tokens: int
    input_tokens: int | None
    scheduled_ns: int | None = None
    dispatched_ns: int | None = None
    sent_ns: int | None = None
    token_ns: list[int] = field(default_factory=list)
    end_ns: int | None = None
    error: str | None = None
    server_input_tokens: int | None = None
    cached_prompt_tokens: int | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.end_ns is not None

    @property
    def output_tokens(self) -> int:
        return len(self.token_ns)

    @property
    def first_token_ns(self) -> int | None:
        return self.token_ns[0] if self.token_ns else None

    @property
    def origin_ns(self) -> int | None:
        """Where latency is measured from: the scheduled time (open loop) or the send time (closed loop)."""
        return self.scheduled_ns if self.scheduled_ns is not None else self.sent_ns

    def add_chunk(self, t_ns: int, n_tokens: int) -> None:
        """Record `n_tokens` arriving together at `t_ns`."""
        if n_tokens <= 0:
            return
        if not self.token_ns:
            self.token_ns.extend([t_ns] * n_tokens)
            return
        prev = self.token_ns[-1]
        self.token_ns.extend(prev + (t_ns - prev) * i // n_tokens for i in range(1, n_tokens + 1))

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, row: dict) -> "RequestRecord":
        return cls(**row)


def write_records(path: Path, records: Iterable[RequestRecord]) -> None:
    """Write one JSON object per line, atomically (a partial file is never left under `path`)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w") as f:
        for r in records:
            f.write(json.dumps(r.to_json(), separators=(",", ":")) + "\n")
    tmp.replace(path)


def read_records(path: Path) -> list[RequestRecord]:
    with path.open() as f:
        return [RequestRecord.from_json(json.loads(line)) for line in f if line.strip()]

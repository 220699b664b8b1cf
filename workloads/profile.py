"""What a workload's source looked like, for the fidelity summary, and how bad source rows are handled.

Every workload, once `generate` has run, describes its source with a `SourceProfile`: the lengths and
inter-arrival times of the source AS RECORDED, before the workload clipped, filtered, sampled or
rescaled anything, the rows read and the rows skipped with why. `harness.fidelity` compares it with
what was generated and with what the run actually sent, so the comparison shows every such change.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

#: What to do with a source row that cannot be used: count it and go on, or stop with its location.
OnBadRow = Literal["skip", "error"]

_EXAMPLES = 10


def numbered_lines(path: Path, what: str) -> Iterator[tuple[int, str | None]]:
    """(1-based line number, text) of each line of a UTF-8 file (a leading byte-order mark dropped); the
    text is None for a line that is not UTF-8. An unreadable file raises ValueError naming it as `what`."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise ValueError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    with f:
        for line, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                yield line, None
            else:
                yield line, text.removeprefix("\ufeff") if line == 1 else text


class BadRowError(ValueError):
    """A source row that cannot be used, with `on_bad_row: error`; the message names file and line."""


@dataclass
class BadRows:
    """Collects unusable source rows under a policy: `skip` counts them by reason (keeping the first
    few locations as examples); `error` raises BadRowError at the first."""

    policy: OnBadRow = "error"
    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def add(self, where: str, reason: str) -> None:
        """Report the row at `where` (e.g. "trace.csv:17") as unusable because of `reason` (a short,
        row-independent phrase such as "non-numeric ContextTokens", so that counts group)."""
        if self.policy == "error":
            raise BadRowError(f"{where}: {reason} (set on_bad_row: skip to skip such rows and count them)")
        self.counts[reason] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class SourceProfile:
    """The source population of a workload as replayed (see the module docstring).

    `input_tokens` / `output_tokens`: the source's lengths as recorded, before any clipping, length
    filter or sampling, of the rows the workload selects from: a trace's rows that the window and then
    `requests: N` (the first N of the window) pick, one per request replayed, with their recorded lengths
    even where `max_*_tokens` clips them; a dataset's usable rows (not bad), before its length filters
    and its `requests` sample. None where the source has no lengths (e.g. text prompts and no tokenizer).
    `recorded_inter_arrival_s`: the gaps between consecutive selected rows as recorded, before
    `speedup` / `rate`; `time_scale`: what the replay divides recorded time by (the schedule's gaps are
    these gaps / time_scale). Both None when the source has no times (synthetic and dataset workloads).
    `rows_read`: rows looked at; `rows_used`: rows the requests come from; `notes`: anything a reader
    must know (approximate lengths, how many rows were clipped, ...).
    """

    kind: str
    description: str
    rows_read: int
    rows_used: int
    input_tokens: list[int] | None = None
    output_tokens: list[int] | None = None
    recorded_inter_arrival_s: list[float] | None = None
    time_scale: float | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    skipped_examples: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def with_bad_rows(cls, bad: BadRows, **fields) -> "SourceProfile":
        return cls(skipped=dict(bad.counts), skipped_examples=list(bad.examples), **fields)

"""trtllm-bench dataset JSONL as a workload, and any workload's requests written back in that format.

The format is the one `trtllm-bench throughput/latency --dataset` reads (one JSON object a line,
as written by TensorRT-LLM's `prepare_dataset.py`):

    {"task_id": 0, "input_ids": [101, 2023, ...], "output_tokens": 128}
    {"task_id": 1, "prompt": "Summarize ...", "output_tokens": 64}

- `task_id` (integer) is kept as request metadata; request ids are `req-000000`, `req-000001`, ...
  in file order, so repeated task ids are harmless.
- `input_ids` (trtllm-bench also accepts the older name `logits`) becomes a token-id prompt; it wins
  over `prompt` when a row has both, as in trtllm-bench. `prompt` alone becomes a text prompt.
- `output_tokens` becomes `max_output_tokens`.
- Other keys (`lora_request`, `media_paths`, ...) are ignored. Multi-turn rows (`turns` without a
  prompt) are not supported and are rejected.
- Blank lines are skipped. A first line holding only a `metadata` object is skipped too.

Every problem (invalid JSON, a missing field, a non-integer length, an empty prompt, a token id
outside the engine's vocabulary) raises ValueError naming the file and the 1-based line number.

Traffic shape. trtllm-bench's throughput benchmark submits every request at once unless
`--concurrency N` is given, so the default here (`arrival` left out) is the same: a closed loop
whose concurrency is the number of requests. Give `arrival: {process: closed, concurrency: N}` for
`--concurrency N`, or any open-loop process (poisson, gamma, constant) to replay the dataset at a
rate; `seed` seeds the arrival times. Unlike trtllm-bench's `--warmup` (extra requests run before
the benchmark), `warmup_requests` are the first rows of the dataset, sent and excluded from the
metrics, as for every harness workload.

A relative `path` is resolved against the current working directory.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from workloads.arrival import ArrivalProcess, Closed
from workloads.profile import SourceProfile, numbered_lines
from workloads.request import RequestSpec, TokenSpace


@dataclass(frozen=True)
class DatasetRow:
    """One validated row of a trtllm-bench dataset file."""

    line: int
    task_id: int
    output_tokens: int
    input_ids: tuple[int, ...] | None
    prompt: str | None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_row(path: Path, line_no: int, text: str) -> DatasetRow | None:
    """Validate one line; None for a line to skip (blank, or a leading metadata object)."""
    where = f"{path}:{line_no}"
    if not text.strip():
        return None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(obj, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if "task_id" not in obj:
        if _is_metadata_line(line_no, text):
            return None
        if "samples" in obj:
            raise ValueError(f"{where}: this is the older single-document format ({{metadata, samples}}); "
                             "trtllm-bench reads JSON lines: regenerate it with prepare_dataset.py --stdout")
        raise ValueError(f"{where}: missing field 'task_id'")
    task_id = obj["task_id"]
    if not _is_int(task_id):
        raise ValueError(f"{where}: 'task_id' must be an integer, got {task_id!r}")
    if "output_tokens" not in obj:
        raise ValueError(f"{where}: missing field 'output_tokens'")
    out = obj["output_tokens"]
    if not _is_int(out):
        raise ValueError(f"{where}: 'output_tokens' must be an integer, got {out!r}")
    if out < 1:
        raise ValueError(f"{where}: 'output_tokens' must be >= 1, got {out}")

    key = "input_ids" if "input_ids" in obj else "logits" if "logits" in obj else None
    ids = obj.get(key) if key else None
    prompt = obj.get("prompt")
    if ids is None and prompt is None:
        if "turns" in obj:
            raise ValueError(f"{where}: multi-turn rows ('turns') are not supported; give 'input_ids' or 'prompt'")
        raise ValueError(f"{where}: needs 'input_ids' or 'prompt'")
    if ids is not None:
        if not isinstance(ids, list) or not all(_is_int(t) for t in ids):
            raise ValueError(f"{where}: '{key}' must be a list of integer token ids")
        if not ids:
            raise ValueError(f"{where}: '{key}' is empty")
        if any(t < 0 for t in ids):
            raise ValueError(f"{where}: '{key}' holds a negative token id ({min(ids)})")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: 'prompt' must be a string, got {type(prompt).__name__}")
        if ids is None and not prompt.strip():
            raise ValueError(f"{where}: 'prompt' is empty")
        if not prompt.strip():
            prompt = None  # an empty prompt next to input_ids carries nothing
    return DatasetRow(line=line_no, task_id=task_id, output_tokens=out,
                      input_ids=None if ids is None else tuple(ids), prompt=prompt)


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(1-based line number, text) of each line; unreadable files and non-UTF-8 lines raise ValueError."""
    for line_no, text in numbered_lines(path, "dataset"):
        if text is None:
            raise ValueError(f"{path}:{line_no}: not UTF-8 text")
        yield line_no, text


def _is_metadata_line(line_no: int, text: str) -> bool:
    if line_no != 1 or '"metadata"' not in text:
        return False
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return False
    return isinstance(obj, dict) and set(obj) == {"metadata"}


def read_trtllm_dataset(path: Path | str, limit: int | None = None) -> list[DatasetRow]:
    """The validated rows of a trtllm-bench dataset file (the first `limit` rows when given)."""
    path = Path(path)
    rows: list[DatasetRow] = []
    for line_no, text in _lines(path):
        row = _parse_row(path, line_no, text)
        if row is not None:
            rows.append(row)
            if limit is not None and len(rows) >= limit:
                break
    return rows


def _count_rows(path: Path) -> int:
    """Rows a dataset file holds (non-blank lines, less a leading metadata line), without validating them."""
    return sum(1 for line_no, text in _lines(path) if text.strip() and not _is_metadata_line(line_no, text))


class TrtllmDatasetWorkload(BaseModel):
    """Requests read from a trtllm-bench dataset JSONL file (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["trtllm_dataset"]
    path: str = Field(description="trtllm-bench dataset JSONL; relative paths are from the working directory")
    requests: int | None = Field(None, ge=1, description="use the first N rows (default: all); warm-up included")
    arrival: ArrivalProcess | None = Field(
        None, description="default: every request at once (closed loop, concurrency = requests), like trtllm-bench")
    warmup_requests: int = Field(0, ge=0, description="first requests sent but excluded from metrics")
    cooldown_requests: int = Field(0, ge=0, description="last requests sent but excluded from metrics")
    seed: int = Field(0, description="seed of the arrival times (open loop)")

    _rows: list[DatasetRow] | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_count(self):
        available = _count_rows(Path(self.path))
        if available == 0:
            raise ValueError(f"{self.path}: dataset has no rows")
        if self.requests is not None and self.requests > available:
            raise ValueError(f"requests: {self.requests} asked for but {self.path} holds only {available} rows")
        n = self.requests or available
        if self.warmup_requests + self.cooldown_requests >= n:
            raise ValueError(f"warmup_requests + cooldown_requests ({self.warmup_requests} + "
                             f"{self.cooldown_requests}) leave no measured request out of {n}")
        if self.arrival is None:
            self.arrival = Closed(process="closed", concurrency=n)
        return self

    def rows(self) -> list[DatasetRow]:
        """The validated rows this workload sends, read once and kept."""
        if self._rows is None:
            self._rows = read_trtllm_dataset(self.path, self.requests)
        return self._rows

    def max_sequence_tokens(self) -> int | None:
        """Longest prompt + output, or None when a text prompt's token count is unknown before tokenizing."""
        longest = 0
        for row in self.rows():
            if row.input_ids is None:
                return None
            longest = max(longest, len(row.input_ids) + row.output_tokens)
        return longest

    def generate(self, token_space: TokenSpace) -> Iterator[RequestSpec]:
        """Yield the rows as requests in file order; token ids must lie inside `token_space`."""
        rows = self.rows()
        offsets = self.arrival.offsets(np.random.default_rng(self.seed), len(rows))
        for i, row in enumerate(rows):
            if row.input_ids is not None:
                top = max(row.input_ids)
                if top >= token_space.vocab_size:
                    raise ValueError(f"{self.path}:{row.line}: token id {top} is outside the engine's vocabulary "
                                     f"(size {token_space.vocab_size}); was the dataset made with another tokenizer?")
            yield RequestSpec(
                id=f"req-{i:06d}",
                max_output_tokens=row.output_tokens,
                prompt_token_ids=row.input_ids,
                prompt_text=row.prompt,
                scheduled_offset_s=None if offsets is None else float(offsets[i]),
                source={"kind": "trtllm_dataset", "path": self.path, "line": row.line, "task_id": row.task_id},
            )


    def source_profile(self) -> SourceProfile:
        """The rows used, with their lengths (input lengths only when every row has token ids)."""
        rows = self.rows()
        ids = [len(r.input_ids) for r in rows if r.input_ids is not None]
        notes = [] if len(ids) == len(rows) else ["text prompts: input lengths are known only after tokenizing"]
        return SourceProfile(kind="trtllm_dataset", description=f"trtllm-bench dataset {self.path}",
                             rows_read=len(rows), rows_used=len(rows), input_tokens=ids or None,
                             output_tokens=[r.output_tokens for r in rows], notes=notes)


def write_trtllm_dataset(path: Path | str, specs: Iterable[RequestSpec]) -> int:
    """Write `specs` as trtllm-bench dataset JSONL (atomically); return the number of rows.

    `task_id` is the request's position (trtllm-bench wants an integer). Token-id prompts are written
    as `input_ids`, text prompts as `prompt` (both when a request has both). Send times are not part
    of the format: give trtllm-bench `--concurrency` to shape the load.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    n = 0
    try:
        with tmp.open("w", encoding="utf-8") as f:
            for n, spec in enumerate(specs, start=1):
                row: dict = {"task_id": n - 1}
                if spec.prompt_token_ids is not None:
                    row["input_ids"] = list(spec.prompt_token_ids)
                if spec.prompt_text is not None:
                    row["prompt"] = spec.prompt_text
                row["output_tokens"] = spec.max_output_tokens
                f.write(json.dumps(row, separators=(",", ":"), ensure_ascii=False) + "\n")
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return n

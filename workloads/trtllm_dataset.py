"""trtllm-bench dataset JSONL as a workload, and any workload's requests written back in that format.

The format is the one `trtllm-bench throughput/latency --dataset` reads (one JSON object a line,
as written by TensorRT-LLM's `prepare_dataset.py`):

    {"task_id": 0, "input_ids": [101, 2023, ...], "output_tokens": 128}
    {"task_id": 1, "prompt": "Summarize ...", "output_tokens": 64}

- `task_id` (integer) is kept as request metadata; request ids are `req-000000`, `req-000001`, ...
  in send order, so repeated task ids are harmless.
- `input_ids` (trtllm-bench also accepts the older name `logits`) becomes a token-id prompt, sent as
  it is; it wins over `prompt` when a row has both, as in trtllm-bench. `prompt` alone becomes a text
  prompt, tokenized with the engine's tokenizer (batched, cached on disk) or, without one, sent as text
  with an approximate length, as for `kind: dataset`.
- `output_tokens` becomes `max_output_tokens`.
- Other keys (`lora_request`, `media_paths`, ...) are ignored. Multi-turn rows (`turns` without a
  prompt) are not supported: they are bad rows.
- Blank lines are skipped. A first line holding only a `metadata` object is skipped too.

The rows go through the pipeline of workloads/dataset.py: every row is read and checked when the config
is validated (bad rows: invalid JSON, a missing field, a non-integer or < 1 length, an empty prompt,
bad token ids; `on_bad_row: error` names `file:line`, `skip` counts them by reason); length filters
`min_/max_input_tokens`, `min_/max_output_tokens`; `requests: N` draws N rows at random with the
content seed (default: all). A token id outside the engine's vocabulary is an error naming the line
when the requests are generated.

Traffic shape. trtllm-bench's throughput benchmark submits every request at once, in dataset order,
unless `--concurrency N` is given, so the defaults here are the same: file order (`shuffle: false`) and
a closed loop whose concurrency is the number of requests (`arrival` left out). Give
`arrival: {process: closed, concurrency: N}` for `--concurrency N`, or any open-loop process (poisson,
gamma, constant) to replay the dataset at a rate. Unlike trtllm-bench's `--warmup` (extra requests
run before the benchmark), `warmup_requests` are the first requests sent, excluded from the metrics,
as for every harness workload.

A relative `path` is resolved against the current working directory.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from workloads.arrival import ArrivalProcess, Closed
from workloads.dataset import BadItem, DatasetSource, Item, RowError
from workloads.dataset_files import Record, Unreadable, check_readable, jsonl_records
from workloads.request import RequestSpec
from workloads.synthetic import Seeds

_MAX_ID = np.iinfo(np.int32).max  # token ids are kept as int32


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _row_item(obj: dict) -> Item:
    """The request one row gives; RowError says why a row cannot be used."""
    if "task_id" not in obj:
        raise RowError("missing field 'task_id'")
    if not _is_int(obj["task_id"]):
        raise RowError("'task_id' must be an integer")
    if "output_tokens" not in obj:
        raise RowError("missing field 'output_tokens'")
    out = obj["output_tokens"]
    if not _is_int(out):
        raise RowError("'output_tokens' must be an integer")
    if out < 1:
        raise RowError("'output_tokens' must be >= 1")
    key = "input_ids" if "input_ids" in obj else "logits" if "logits" in obj else None
    ids = obj.get(key) if key else None
    prompt = obj.get("prompt")
    if ids is None and prompt is None:
        raise RowError("multi-turn rows ('turns') are not supported; give 'input_ids' or 'prompt'" if "turns" in obj
                       else "needs 'input_ids' or 'prompt'")
    if ids is not None:
        if not isinstance(ids, list) or not set(map(type, ids)) <= {int}:
            raise RowError(f"'{key}' must be a list of integer token ids")
        if not ids:
            raise RowError(f"'{key}' is empty")
        if min(ids) < 0:
            raise RowError(f"'{key}' holds a negative token id")
        if max(ids) > _MAX_ID:
            raise RowError(f"'{key}' holds a token id above {_MAX_ID}")
        ids = np.array(ids, dtype=np.int32)
    if prompt is not None:
        if not isinstance(prompt, str):
            raise RowError("'prompt' must be a string")
        if ids is None and not prompt.strip():
            raise RowError("'prompt' is empty")
    return Item(-1, prompt if prompt and prompt.strip() else None, out, None,  # a blank prompt next to ids: none
                ids=ids, source={"task_id": obj["task_id"]})


class TrtllmDatasetWorkload(DatasetSource):
    """Requests read from a trtllm-bench dataset JSONL file (see the module docstring)."""

    kind: Literal["trtllm_dataset"]
    path: str = Field(description="trtllm-bench dataset JSONL; relative paths are from the working directory")
    shuffle: bool = Field(False, description="send in random order; false (default, as trtllm-bench): file order")
    arrival: ArrivalProcess | None = Field(
        None, description="default: every request at once (closed loop, concurrency = requests), like trtllm-bench")
    seed: int | Seeds = Field(0, description="content: which rows (with requests), in which order (with shuffle); "
                                            "arrival: send times (open loop)")

    @model_validator(mode="after")
    def _all_at_once(self):
        """Runs after DatasetSource's validator (pydantic runs a base class's first), which read the rows."""
        if self.arrival is None:
            self.arrival = Closed(process="closed", concurrency=self.requests or len(self._parsed.prompts))
        return self

    def _resolve(self) -> None:
        check_readable(Path(self.path))
        self._format = "jsonl"

    def _records(self) -> Iterator[Record]:
        for row, line, record in jsonl_records(Path(self.path)):
            if line == 1 and isinstance(record, dict) and "task_id" not in record:
                if set(record) == {"metadata"}:
                    continue
                if "samples" in record:
                    raise ValueError(f"{self.path}:1: this is the older single-document format "
                                     "({metadata, samples}); trtllm-bench reads JSON lines: regenerate it with "
                                     "prepare_dataset.py --stdout")
            yield row, line, record

    def _items(self, record: dict | Unreadable) -> Iterator[Item | BadItem]:
        if isinstance(record, Unreadable):
            yield BadItem(-1, record.reason)
            return
        try:
            yield _row_item(record)
        except RowError as exc:
            yield BadItem(-1, str(exc))

    def _identity(self) -> dict:
        return {"format": "trtllm-bench"}

    def _description(self) -> str:
        return f"trtllm-bench dataset {self.path}"


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

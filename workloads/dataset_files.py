"""Dataset files, format by format (workloads/dataset.py reads them): which format a path holds, its column
names at config time, and its records one by one with their row and line.

Formats: `sharegpt` (a JSON array of records), `jsonl`, `csv`, `parquet`, `hf` (a local folder the `datasets`
library opens, with the network off). A record that cannot be read at all is an `Unreadable` with the reason;
whether a readable one is usable is for workloads/dataset.py to say.
"""
from __future__ import annotations

import csv
import importlib
import itertools
import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Literal

from workloads import tokenized_cache

Format = Literal["sharegpt", "jsonl", "csv", "parquet", "hf"]

_SUFFIXES: dict[str, Format] = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".parquet": "parquet",
                                ".pq": "parquet"}
_INSTALL_HINT = "pip install 'datasets>=3'"
_PARQUET_BATCH = 1000  # records per Parquet read
_PEEK_BYTES = 1 << 20  # of a ShareGPT file, to read its first record's fields at validation
_PEEK_LINES = 100    # of a JSONL file, whose objects' keys are its columns at validation
_JSON_SPACE = re.compile(r"[ \t\n\r]*")


@dataclass(frozen=True)
class Fields:
    """The resolved columns: exactly one of `prompt` / `conversations`; `id` names conversations."""

    prompt: str | None
    conversations: str | None
    output_tokens: str | None
    output_text: str | None
    id: str | None

    def names(self) -> list[str]:
        return [n for n in (self.prompt, self.conversations, self.output_tokens, self.output_text, self.id) if n]


@dataclass
class Unreadable:
    """A record that could not be read at all (invalid JSON, wrong number of CSV fields)."""

    reason: str


Record = tuple[int, int, dict | Unreadable]  # (row from 0, line from 1 or -1, the record)


def check_readable(path: Path) -> None:
    """A ValueError naming the field `path` unless it exists and can be read."""
    if not path.exists():
        raise ValueError(f"path: {path} does not exist")
    try:
        if path.is_dir():
            os.listdir(path)
        else:
            path.open("rb").close()
    except OSError as exc:
        raise ValueError(f"path: cannot read {path}: {exc.strerror or exc}") from None


def resolve_format(path: Path, fmt: str) -> Format:
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


def _sharegpt_records(path: Path, fields: Fields, split: str) -> Iterator[Record]:
    """The array's records one by one, each with the line it starts on."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None
    decoder, space = json.JSONDecoder(), _JSON_SPACE.match
    pos = space(text).end()
    if not text.startswith("[", pos):
        raise ValueError(f"{path}: expected a JSON array of records (ShareGPT format)")
    pos = space(text, pos + 1).end()
    line, counted, closed = 1, 0, text.startswith("]", pos)
    pos += closed
    for row in itertools.count():
        if closed:
            break
        try:
            record, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise _invalid_json(path, exc) from None
        line, counted = line + text.count("\n", counted, pos), pos
        yield row, line, record if isinstance(record, dict) else Unreadable("record is not a JSON object")
        pos = space(text, end).end()
        closed = text.startswith("]", pos)
        if not (closed or text.startswith(",", pos)):
            raise _invalid_json(path, json.JSONDecodeError("Expecting ',' delimiter", text, pos))
        pos = space(text, pos + 1).end()
    if pos < len(text):
        raise _invalid_json(path, json.JSONDecodeError("Extra data", text, pos))


def _invalid_json(path: Path, exc: json.JSONDecodeError) -> ValueError:
    return ValueError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})")


def jsonl_records(path: Path, fields: Fields | None = None, split: str = "") -> Iterator[Record]:
    """One record a non-blank line (`fields` and `split` are not used: every reader takes them)."""
    with path.open("rb") as f:
        rows = itertools.count()
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw)
            except UnicodeDecodeError:
                record = Unreadable("not UTF-8 text")
            except ValueError:
                record = Unreadable("invalid JSON")
            yield next(rows), line, (record if isinstance(record, (dict, Unreadable))
                                     else Unreadable("not a JSON object"))


def _csv_records(path: Path, fields: Fields, split: str) -> Iterator[Record]:
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        try:
            header = next(reader, [])
            end, rows = reader.line_num, itertools.count()
            for cells in reader:
                line, end = end + 1, reader.line_num
                if cells:
                    yield next(rows), line, (dict(zip(header, cells)) if len(cells) == len(header)
                                             else Unreadable("wrong number of fields"))
        except csv.Error as exc:
            raise ValueError(f"{path}:{reader.line_num}: invalid CSV: {exc}") from None
        except UnicodeDecodeError as exc:
            raise ValueError(f"{path}: not UTF-8 text ({exc.reason})") from None


def _parquet_records(path: Path, fields: Fields, split: str) -> Iterator[Record]:
    pq = _import("pyarrow.parquet")
    rows = itertools.count()
    for batch in pq.ParquetFile(path).iter_batches(batch_size=_PARQUET_BATCH, columns=fields.names()):
        for record in batch.to_pylist():
            yield next(rows), -1, record


def _hf_records(path: Path, fields: Fields, split: str) -> Iterator[Record]:
    with _datasets_offline() as datasets:
        for row, record in enumerate(_open_hf(datasets, path, split).select_columns(fields.names())):
            yield row, -1, record


COLUMN_READERS: dict[Format, Callable[[Path, str], set[str] | None]] = {
    "sharegpt": _sharegpt_columns, "jsonl": _jsonl_columns, "csv": _csv_columns, "parquet": _parquet_columns,
    "hf": _hf_columns}
RECORD_READERS: dict[Format, Callable[[Path, Fields, str], Iterator[Record]]] = {
    "sharegpt": _sharegpt_records, "jsonl": jsonl_records, "csv": _csv_records, "parquet": _parquet_records,
    "hf": _hf_records}

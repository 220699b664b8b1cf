"""On-disk cache of tokenized sources: named numpy arrays stored under a key derived from the content.

A file lives at `$HARNESS_CACHE/tokenized/<key>.npz` (default `~/.cache/harness`): an uncompressed
npz, written to a temporary file and renamed into place, so a reader sees a whole file or none and
concurrent writers of one key are harmless. A file that cannot be read counts as absent (and is
rewritten). Nothing is evicted: delete the folder to reclaim the space.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

#: Bump when what a cached file holds changes meaning: older files then simply stop matching.
VERSION = 1


def cache_dir() -> Path:
    """`$HARNESS_CACHE/tokenized` (`~/.cache/harness/tokenized` when HARNESS_CACHE is unset)."""
    return Path(os.environ.get("HARNESS_CACHE") or Path.home() / ".cache" / "harness") / "tokenized"


def cache_key(source: Path, identity: dict) -> str:
    """sha256 of `source` (a file's bytes; a folder's listing with sizes and mtimes) and `identity`
    (JSON-serialisable: everything else the cached content depends on, e.g. the tokenizer's name)."""
    h = hashlib.sha256(json.dumps({"version": VERSION, **identity}, sort_keys=True).encode())
    if source.is_dir():
        for p in sorted(source.rglob("*")):
            if p.is_file():
                st = p.stat()
                h.update(f"{p.relative_to(source).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    else:
        with source.open("rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


def load(key: str) -> dict[str, np.ndarray] | None:
    """The arrays saved under `key`, or None when there are none (or the file is unreadable)."""
    path = cache_dir() / f"{key}.npz"
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {name: npz[name] for name in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile):
        return None


def save(key: str, arrays: dict[str, np.ndarray]) -> Path:
    """Store `arrays` under `key` atomically; return the file."""
    path = cache_dir() / f"{key}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def pack_strings(strings: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Strings as (UTF-8 bytes of all of them, offsets: string i is bytes[offsets[i]:offsets[i + 1]])."""
    encoded = [s.encode("utf-8") for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def unpack_strings(blob: np.ndarray, offsets: np.ndarray) -> list[str]:
    """The inverse of `pack_strings`."""
    data, bounds = blob.tobytes(), offsets.tolist()
    return [data[a:b].decode("utf-8") for a, b in zip(bounds[:-1], bounds[1:])]

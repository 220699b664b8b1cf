"""The run directory (DESIGN.md section 5): paths, atomic writes, and reading results back.

A file that exists is complete: everything is written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import yaml

SCHEMA_VERSION = 1


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_json(path: Path, data: dict) -> None:
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_yaml(path: Path, data: dict) -> None:
    write_text_atomic(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


def read_json(path: Path) -> dict | None:
    """The parsed file, or None when it does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


@dataclass(frozen=True)
class RunDir:
    """`runs/<name>/`: the study database, one folder per trial, the report and recommended config."""

    path: Path

    @property
    def study_db(self) -> Path:
        return self.path / "study.db"

    def storage_url(self) -> str:
        return f"sqlite:///{self.study_db.resolve()}"

    def trial_dir(self, number: int) -> Path:
        return self.path / "trials" / str(number)

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def recommended(self) -> Path:
        return self.path / "recommended.yaml"


class TrialFiles:
    """Names of the files inside one trial (or bench) directory."""

    CONFIG = "config.yaml"
    RESULT = "result.json"
    FAILURE = "failure.json"
    RECORDS = "records.jsonl"
    TELEMETRY = "telemetry.csv"
    LOG = "engine.log"

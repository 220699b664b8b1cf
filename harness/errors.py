"""Errors the CLI turns into exit codes and one clear message."""
from __future__ import annotations


class HarnessError(Exception):
    """Base class; `exit_code` is what the CLI exits with."""

    exit_code = 1


class ConfigError(HarnessError):
    """Bad user input: a config, search space or data file. The message names the file and field/line."""

    exit_code = 2


class PreflightError(HarnessError):
    """The single request sent before measuring failed; the message says what to fix."""

    exit_code = 1

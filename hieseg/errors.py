"""Errors the user can act on: each one renders as a single line naming the file and the problem."""

from __future__ import annotations

from pathlib import Path


class HiesegError(Exception):
    """Base class: a failure with a message fit for one log line."""


class InputError(HiesegError):
    """An input image is missing, unreadable or not a valid ADC / Z-ADC map."""

    def __init__(self, path: str | Path | None, problem: str) -> None:
        self.path = None if path is None else Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path is not None else problem)


class ModelError(HiesegError):
    """The model folder or manifest is missing, malformed or tampered with."""


class DeviceError(HiesegError):
    """The requested execution device cannot run here."""


class OutputError(HiesegError):
    """The output location cannot be written."""


class MissingDependency(HiesegError, ImportError):
    """An optional package needed for evaluation or QC pictures is not installed."""

"""Errors with a code, where they happened, and what to do about them.

Codes are stable so scripts and operators can match on them. Bad *documents* never
raise these: they become dead letters. These are for bad configuration, missing
models and other conditions a person must fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Problem:
    """One problem found in a pipeline file."""

    path: str
    message: str
    line: int | None = None

    def render(self, filename: str = "") -> str:
        where = f"{filename}:{self.line}" if self.line is not None else filename
        location = f"{where}: " if where else ""
        return f"{location}[{self.path}] {self.message}"


class TextworkerError(Exception):
    """Base error: `code` (e.g. TW101), the message, and a hint on how to fix it."""

    code = "TW000"

    def __init__(self, message: str, *, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        text = f"{self.code} {self.message}"
        return f"{text}\n  hint: {self.hint}" if self.hint else text


class PipelineFileError(TextworkerError):
    """The pipeline file cannot be read or does not validate; lists every problem."""

    code = "TW101"

    def __init__(self, filename: str, problems: list[Problem]) -> None:
        self.filename = filename
        self.problems = problems
        lines = "\n".join("  " + p.render(filename) for p in problems)
        super().__init__(
            f"{filename}: {len(problems)} problem(s) in the pipeline file\n{lines}",
            hint="fix the fields named in brackets; `textworker validate FILE` re-checks",
        )


class ModelNotFoundError(TextworkerError):
    """A model reference is neither a local directory nor reachable on a hub."""

    code = "TW201"


class ModelFormatError(TextworkerError):
    """The model exists but cannot be used by the stage (wrong head, no safetensors...)."""

    code = "TW202"


class DataFileError(TextworkerError):
    """A training or evaluation data file is missing or malformed."""

    code = "TW301"


class SinkError(TextworkerError):
    """The SQL store cannot be reached or migrated."""

    code = "TW401"


class SinkUnavailable(SinkError):
    """Backpressure: the sink cannot take writes now (a lost connection, a restarting server).

    Nothing of the batch was stored. It is a signal, not a failure: the stream driver
    obeys it by pausing its source, keeping its group membership and writing the same
    batch again after a backoff; a one-shot caller reports it."""

    code = "TW402"


@dataclass
class StageFailure(Exception):
    """A stage could not process one document; the runner turns it into a dead letter."""

    reason: str
    detail: str = ""
    extra: dict[str, str] = field(default_factory=dict)

"""Structured JSON logs on stderr: one object per line with the record's extra fields.

`log_context(run_id=..., stage=..., doc_id=..., model_version=...)` adds fields to every
record logged inside it (this thread or task only), so a line from deep inside a stage
still says which run, stage and model version it belongs to.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
_CONTEXT: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("textworker_log_context", default=None)


def bind_log_context(**fields: Any) -> contextvars.Token[dict[str, Any] | None]:
    """Add `fields` (None values are left out) to every record logged from here on; undo with `unbind_log_context`."""
    return _CONTEXT.set({**(_CONTEXT.get() or {}), **{k: v for k, v in fields.items() if v is not None}})


def unbind_log_context(token: contextvars.Token[dict[str, Any] | None]) -> None:
    _CONTEXT.reset(token)


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """`bind_log_context` for the duration of a block."""
    token = bind_log_context(**fields)
    try:
        yield
    finally:
        unbind_log_context(token)


class ContextFilter(logging.Filter):
    """Copies the `log_context` fields onto the record; a field the call itself passed wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in (_CONTEXT.get() or {}).items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def setup_logging(level: str = "WARNING") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
    except ImportError:
        pass
    quiet_level = logging.WARNING if root.level <= logging.INFO else logging.ERROR
    for noisy in ("transformers", "urllib3", "filelock", "alembic", "httpx", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(max(quiet_level, root.level))

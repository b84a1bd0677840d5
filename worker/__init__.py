"""textworker: documents from files or Kafka through NLP stages into SQL.

The Python API is `Pipeline` (see `worker.api`); the command line is `textworker`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schemas.results import DocumentResult
    from worker.api import Pipeline

__all__ = ["DocumentResult", "Pipeline"]


def __getattr__(name: str) -> Any:
    """`Pipeline` and `DocumentResult` load on first use, so `import worker` stays light."""
    if name == "Pipeline":
        from worker.api import Pipeline

        return Pipeline
    if name == "DocumentResult":
        from schemas.results import DocumentResult

        return DocumentResult
    raise AttributeError(f"module 'worker' has no attribute {name!r}")

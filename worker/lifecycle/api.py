"""HTTP feedback: `POST /v1/feedback`, as a FastAPI router that a server mounts.

Body: one row (`{"stage": "spam", "text": "...", "label": "spam"}`), a list of rows,
or `{"stage": "spam", "who": "...", "rows": [{...}, ...]}` (the outer `stage`/`who`
apply to rows without their own). Row fields per stage type are those of
`worker.lifecycle.feedback.validate_row`.

All or nothing: if any row is invalid the answer is 422 listing each invalid row
(`index`, `reason`, `detail`) and nothing is stored, so a client fixes and resends the
whole request. A valid request answers 200 with `received`, `inserted` and
`duplicates`; resending it stores nothing new (rows are keyed by their fingerprint).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Body, HTTPException
from sqlalchemy.engine import Engine

from schemas.pipeline import PipelineSpec
from worker.lifecycle.feedback import Rejected, RowProblem, stage_labels, store_rows, validate_any
from worker.sinks.sql import make_engine, migrate, normalise_url

MAX_ROWS = 10_000


def _rows(payload: Any) -> list[dict[str, Any]] | list[Any]:
    if isinstance(payload, list):
        return payload
    if isinstance(payload, dict) and isinstance(payload.get("rows"), list):
        defaults = {k: payload[k] for k in ("stage", "who") if k in payload}
        return [{**defaults, **row} if isinstance(row, dict) else row for row in payload["rows"]]
    return [payload]


def _lazy_engine(database_url: str) -> Callable[[], Engine]:
    """The engine, migrated on first use (the server may start before the database does)."""
    lock = threading.Lock()
    state: dict[str, Engine] = {}

    def get() -> Engine:
        with lock:
            if "engine" not in state:
                engine = make_engine(normalise_url(database_url))
                migrate(engine)
                state["engine"] = engine
            return state["engine"]

    return get


def make_router(spec: PipelineSpec, database_url: str, *, token: str | None = None) -> APIRouter:
    """A router with `POST /v1/feedback` storing rows for `spec`'s stages in `database_url`.

    `token` is accepted for symmetry with the other mounted routers: the app's own
    middleware (`worker.observability.http_guard`) guards this route.
    """
    del token
    router = APIRouter(tags=["feedback"])
    engine = _lazy_engine(database_url)
    stages = {stage.name: stage for stage in spec.stages}
    labels = {name: stage_labels(stage) for name, stage in stages.items()}

    @router.post("/v1/feedback")
    def post_feedback(payload: Any = Body(...)) -> dict[str, int]:  # noqa: B008 - FastAPI's way to take any JSON body
        raws = _rows(payload)
        if not raws:
            raise HTTPException(422, {"message": "no rows", "rejected": []})
        if len(raws) > MAX_ROWS:
            raise HTTPException(413, {"message": f"at most {MAX_ROWS} rows per request, got {len(raws)}"})
        good, bad = [], []
        for index, raw in enumerate(raws):
            try:  # any JSON gives a row or a reason code (never a 500): see feedback.validate_any
                good.append(validate_any(stages, labels, raw))
            except RowProblem as problem:
                bad.append(Rejected(index, problem.reason, problem.detail))
        if bad:
            detail = {"message": f"{len(bad)} of {len(raws)} rows are invalid; nothing was stored",
                      "rejected": [{"index": r.line, "reason": r.reason, "detail": r.detail} for r in bad]}
            raise HTTPException(422, detail)
        inserted, duplicates = store_rows(engine(), spec.name, good, source="api")
        return {"received": len(raws), "inserted": inserted, "duplicates": duplicates}

    return router

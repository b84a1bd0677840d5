"""The SQL sink: documents, stage results, dead letters and stream offsets.

Delivery contract: `write(batch)` stores everything in the batch in ONE transaction,
or nothing. Rows are upserted on their natural keys (doc_id; pipeline+doc_id+stage;
pipeline+ref+stage), so writing the same batch twice leaves the same rows. Offsets
in the batch are stored in that same transaction, so after a crash at any line the
stored offsets never run ahead of the stored results. Review-queue items (low-confidence
results, see `worker.lifecycle.review`) are queued in that same transaction too.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, stop_never, wait_exponential

from schemas.documents import DeadLetter, Document, StageResult
from worker.errors import SinkError
from worker.sinks import tables

if TYPE_CHECKING:
    from worker.lifecycle.review import ReviewItem

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


@dataclass
class Offset:
    group: str
    topic: str
    partition: int
    next_offset: int


@dataclass
class SinkBatch:
    documents: list[Document] = field(default_factory=list)
    results: list[StageResult] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    offsets: list[Offset] = field(default_factory=list)
    reviews: list[ReviewItem] = field(default_factory=list)  # low-confidence results to queue for people

    def __bool__(self) -> bool:
        return bool(self.documents or self.results or self.dead_letters or self.offsets or self.reviews)


def make_engine(url: str) -> Engine:
    """An engine for the URL, with the settings this project relies on per dialect."""
    try:
        engine = sa.create_engine(url, pool_pre_ping=True, future=True)
    except (sa.exc.ArgumentError, ImportError, ValueError) as exc:
        from worker.config import hide_password

        raise SinkError(f"cannot use database URL: {hide_password(str(exc))}",
                        hint="e.g. sqlite:///textworker.db or postgresql+psycopg://user@host/db") from None
    if engine.dialect.name == "sqlite":
        if engine.url.database and engine.url.database != ":memory:":
            _writable_sqlite_file(Path(engine.url.database).expanduser())

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cursor = dbapi_conn.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    return engine


def _writable_sqlite_file(path: Path) -> None:
    """Create the SQLite file's directory and the file itself, or say in one line why that is impossible."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename and str(exc.filename) != str(path) else ""
        raise SinkError(f"cannot write the SQLite database {path}: {exc.strerror or exc}{where}",
                        hint="point --database-url at a file in a writable directory, e.g. sqlite:///textworker.db") from None


def normalise_url(url: str) -> str:
    """`postgresql://` means psycopg 3 here (the driver this project installs)."""
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def migrate(engine: Engine) -> None:
    """Bring the schema to the newest Alembic revision (safe to call on every start)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    try:
        with engine.begin() as conn:
            if engine.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7461726)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.OperationalError as exc:
        raise SinkError(f"cannot reach the database to migrate it: {exc.orig}", hint="check --database-url and that the server runs") from exc


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: lost connections, server restarts, lock timeouts."""
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def _now() -> datetime:
    return datetime.now(UTC)


class SqlResultSink:
    """Writes `SinkBatch`es to a SQLAlchemy database.

    `retry_forever=True` (streaming) keeps retrying transient errors with capped
    exponential backoff; otherwise a transient error is retried `attempts` times.
    `on_retry` lets the caller pause its source while the database is away.
    """

    def __init__(
        self,
        url: str,
        pipeline: str,
        run_id: str,
        *,
        store_text: bool = True,
        retry_forever: bool = False,
        attempts: int = 5,
        max_backoff_s: float = 10.0,
        on_retry: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.url = normalise_url(url)
        self.pipeline = pipeline
        self.run_id = run_id
        self.store_text = store_text
        self.on_retry = on_retry
        self._stop = stop_never if retry_forever else stop_after_attempt(attempts)
        self._wait = wait_exponential(multiplier=0.2, max=max_backoff_s)
        self.engine: Engine | None = None

    def open(self) -> SqlResultSink:
        self.engine = make_engine(self.url)
        self._retrying(lambda: migrate(self._engine))
        return self

    @property
    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("SqlResultSink.open() was not called")
        return self.engine

    def _retrying(self, fn: Callable[[], Any]) -> Any:
        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()
            log.warning("database unavailable, retrying", extra={"error": str(exc)[:300], "attempt": state.attempt_number})
            if self.on_retry is not None:
                self.on_retry(exc)

        def transient(exc: BaseException) -> bool:
            return is_transient(exc) or (isinstance(exc, SinkError) and isinstance(exc.__cause__, sa.exc.OperationalError))

        retrying = Retrying(
            retry=retry_if_exception(transient), stop=self._stop, wait=self._wait,
            before_sleep=before_sleep, reraise=True,
        )
        return retrying(fn)

    def write(self, batch: SinkBatch) -> None:
        """Store the whole batch in one transaction (retrying transient errors)."""
        if batch:
            self._retrying(lambda: self._write_once(batch))

    def _write_once(self, batch: SinkBatch) -> None:
        with self._engine.begin() as conn:
            self._upsert_documents(conn, batch.documents)
            self._upsert_results(conn, batch.results)
            self._upsert_dead_letters(conn, batch.dead_letters)
            self._upsert_offsets(conn, batch.offsets)
            if batch.reviews:
                from worker.lifecycle.review import enqueue

                enqueue(conn, self.pipeline, batch.reviews)

    def start_run(self, stats: dict[str, Any] | None = None) -> None:
        row = {"run_id": self.run_id, "pipeline": self.pipeline, "status": "running", "started_at": _now(), "stats": stats or {}}
        self._retrying(lambda: self._exec(lambda c: c.execute(tables.runs.insert().values(**row))))

    def finish_run(self, status: str, stats: dict[str, Any]) -> None:
        stmt = tables.runs.update().where(tables.runs.c.run_id == self.run_id).values(status=status, finished_at=_now(), stats=stats)
        self._retrying(lambda: self._exec(lambda c: c.execute(stmt)))

    def load_offsets(self, group: str) -> dict[tuple[str, int], int]:
        """Next offset to read per (topic, partition) for a consumer group."""
        t = tables.stream_offsets
        query = sa.select(t.c.topic, t.c.partition, t.c.next_offset).where(t.c.consumer_group == group)
        rows = self._retrying(lambda: self._exec(lambda c: c.execute(query).all()))
        return {(r.topic, r.partition): r.next_offset for r in rows}

    def _exec(self, fn: Callable[[Connection], Any]) -> Any:
        with self._engine.begin() as conn:
            return fn(conn)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None

    # ------------------------------------------------------------------ upserts

    def _upsert(self, conn: Connection, table: sa.Table, rows: Sequence[dict[str, Any]], keys: list[str], update: list[str]) -> None:
        if not rows:
            return
        dialect = conn.dialect.name
        stmt: Any
        if dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table)
            stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
            stmt = stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update})
        elif dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table)
            stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update})
        else:
            raise SinkError(f"database dialect `{dialect}` is not supported", hint="use SQLite, PostgreSQL or MariaDB/MySQL")
        conn.execute(stmt, _dedupe(rows, keys))

    def _upsert_documents(self, conn: Connection, docs: list[Document]) -> None:
        now = _now()
        rows = [
            {
                "doc_id": d.id, "text": d.text if self.store_text else None, "chars": len(d.text),
                "sha256": hashlib.sha256(d.text.encode("utf-8")).hexdigest(), "meta": _jsonable(d.meta),
                "source_ref": d.source_ref[:1024], "created_at": now, "updated_at": now,
            }
            for d in docs
        ]
        self._upsert(conn, tables.documents, rows, ["doc_id"], ["text", "chars", "sha256", "meta", "source_ref", "updated_at"])

    def _upsert_results(self, conn: Connection, results: list[StageResult]) -> None:
        now = _now()
        rows = [
            {
                "pipeline": self.pipeline, "doc_id": r.doc_id, "stage": r.stage,
                "label": r.label[:256] if r.label is not None else None, "score": r.score,
                "output": _jsonable(r.output), "model_version": r.model_version[:128],
                "run_id": self.run_id, "created_at": now, "updated_at": now,
            }
            for r in results
        ]
        update = ["label", "score", "output", "model_version", "run_id", "updated_at"]
        self._upsert(conn, tables.results, rows, ["pipeline", "doc_id", "stage"], update)

    def _upsert_dead_letters(self, conn: Connection, letters: list[DeadLetter]) -> None:
        now = _now()
        rows = [
            {
                "pipeline": self.pipeline, "ref": d.ref[:1024], "stage": d.stage, "reason": d.reason,
                "detail": d.detail[:4000], "payload": d.payload.replace("\x00", "\\x00"),
                "run_id": self.run_id, "created_at": now, "updated_at": now, "requeued_at": None,
            }
            for d in letters
        ]
        update = ["reason", "detail", "payload", "run_id", "updated_at", "requeued_at"]  # failing again ends a requeue
        self._upsert(conn, tables.dead_letters, rows, ["pipeline", "ref", "stage"], update)

    def _upsert_offsets(self, conn: Connection, offsets: list[Offset]) -> None:
        now = _now()
        rows = [
            {"consumer_group": o.group, "topic": o.topic, "partition": o.partition, "next_offset": o.next_offset, "updated_at": now}
            for o in offsets
        ]
        self._upsert(conn, tables.stream_offsets, rows, ["consumer_group", "topic", "partition"], ["next_offset", "updated_at"])


def _dedupe(rows: Sequence[dict[str, Any]], keys: list[str]) -> list[dict[str, Any]]:
    """Keep the last row per key: one statement may not touch a row twice in PostgreSQL."""
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        latest[tuple(row[k] for k in keys)] = row
    return list(latest.values())


def _jsonable(value: Any) -> Any:
    """JSON-safe copy: PostgreSQL JSONB rejects NUL characters and non-finite floats."""
    if isinstance(value, dict):
        return {str(k).replace("\x00", ""): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value

"""The SQL sink: documents, stage results, dead letters and stream offsets.

Delivery contract: `write(batch)` stores everything in the batch in ONE transaction,
or nothing. Rows are upserted on their natural keys (pipeline+doc_id; pipeline+doc_id+stage;
pipeline+ref+stage), so writing the same batch twice leaves the same rows. Offsets
in the batch are stored in that same transaction, so after a crash at any line the
stored offsets never run ahead of the stored results. Review-queue items (low-confidence
results, see `worker.sinks.review_queue`) are queued in that same transaction too.

Poison rows: the last line of defence
-------------------------------------
Sources validate records at their boundary (`worker.sources.validation`), so a row the
database refuses should never reach the sink. If one does, a batch whose write fails
with a non-transient error (the database refuses a value, or the driver cannot encode
it) is bisected: it is split into units (a document with its results, review items and
stage dead letters; or a lone dead letter), halves are written until every unit that
can be stored is, and each unit that fails on its own becomes a dead letter
`sink_rejected` at stage `sink`, with the database's message and the unit as JSON. The
good units, then the rejections with the batch's offsets, are written in transactions
of their own, offsets last, so the stored offsets still never run ahead of the stored
rows. If even the ASCII-only rejection rows cannot be written, the error is not the
rows' fault and is raised.

Errors: only connection-level failures (refused or lost connections, timeouts, a
server restarting) are retried, `attempts` times; then the sink raises
`SinkUnavailable`, its backpressure signal. The stream driver builds its sink with one
attempt and obeys the signal itself (`worker.engine.stream`): it pauses the source and
writes the batch again, for as long as the outage lasts. A failed authentication or an
unknown database is fatal at once (`SinkError`, one line); so is a host name that does
not resolve when the sink opens (later it counts as a connection failure).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.engine import Connection, Engine
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

from schemas.documents import DeadLetter, Document, StageResult
from worker.errors import SinkError, SinkUnavailable
from worker.sinks import tables

if TYPE_CHECKING:
    from worker.sinks.review_queue import ReviewItem

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


_AUTH = re.compile(r"password authentication failed|authentication failed|role \S+ does not exist|no pg_hba\.conf entry"
                   r"|access denied for user|\(1045,", re.I)
_UNKNOWN_DB = re.compile(r"database \S+ does not exist|unknown database|\(1049,", re.I)
_MISSING_SCHEMA = re.compile(r"no such table|no such column", re.I)
_DNS = re.compile(r"failed to resolve host|could not translate host name|name or service not known|nodename nor servname"
                  r"|temporary failure in name resolution|unknown (mysql|mariadb) server host|getaddrinfo failed", re.I)


def connection_problem(exc: BaseException) -> str | None:
    """`authentication`, `unknown database` or `dns` when a connection failure is one a person must fix."""
    while isinstance(exc, SinkError) and exc.__cause__ is not None:
        exc = exc.__cause__
    if not isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError):
        return None
    message = str(exc.orig) if exc.orig is not None else str(exc)
    if _AUTH.search(message):
        return "authentication"
    if _UNKNOWN_DB.search(message):
        return "unknown database"
    if _DNS.search(message):
        return "dns"
    return None


def is_transient(exc: BaseException) -> bool:
    """Errors worth retrying: lost connections, server restarts, lock timeouts (not a refused login or an unknown database)."""
    if connection_problem(exc) in ("authentication", "unknown database"):
        return False
    if _MISSING_SCHEMA.search(str(exc)):  # SQLite says OperationalError for a dropped table: no retry fixes it
        return False
    if isinstance(exc, sa.exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | sa.exc.TimeoutError)


def is_poison(exc: BaseException) -> bool:
    """A failure caused by the rows written: the database refused a value, or it could not be encoded."""
    if isinstance(exc, SinkError) or is_transient(exc) or connection_problem(exc):
        return False
    if isinstance(exc, sa.exc.DBAPIError):  # a missing table or privilege (ProgrammingError...) is no row's fault
        return isinstance(exc, sa.exc.DataError | sa.exc.IntegrityError)
    return isinstance(exc, sa.exc.StatementError | ValueError | TypeError | RecursionError | OverflowError)


def fatal_error(exc: BaseException, url: sa.engine.URL, *, opening: bool) -> SinkError | None:
    """A one-line SinkError for a failure no retry can fix (a DNS failure only while opening)."""
    problem = connection_problem(exc)
    where = f"{url.host or 'localhost'}{':' + str(url.port) if url.port else ''}/{url.database or ''}"
    if problem == "authentication":
        return SinkError(f"the database at {where} refused the login of user `{url.username or ''}`: check the user and password in the database URL")
    if problem == "unknown database":
        return SinkError(f"the database `{url.database}` does not exist on {url.host or 'localhost'}: create it or fix the database URL")
    if problem == "dns" and opening:
        return SinkError(f"the database host `{url.host}` does not resolve (DNS): fix the host in the database URL")
    return None


def _now() -> datetime:
    return datetime.now(UTC)


class SqlResultSink:
    """Writes `SinkBatch`es to a SQLAlchemy database.

    A transient error is retried `attempts` times with capped exponential backoff, then
    raised as `SinkUnavailable` (backpressure: nothing of the batch was stored)."""

    def __init__(
        self,
        url: str,
        pipeline: str,
        run_id: str,
        *,
        store_text: bool = True,
        attempts: int = 5,
        max_backoff_s: float = 10.0,
    ) -> None:
        self.url = normalise_url(url)
        self.pipeline = pipeline
        self.run_id = run_id
        self.store_text = store_text
        self._stop = stop_after_attempt(attempts)
        self._wait = wait_exponential(multiplier=0.2, max=max_backoff_s)
        self.engine: Engine | None = None

    @classmethod
    def from_spec(cls, spec: Any, pipeline: str, run_id: str, *, url: str | None = None, **options: Any) -> SqlResultSink:
        """From a pipeline's `sink:` spec (`url` overrides the file's, as `--database-url` does)."""
        return cls(url or spec.url, pipeline, run_id, store_text=spec.store_text, **options)

    def open(self) -> SqlResultSink:
        """Connect and migrate, retrying while the server is unreachable; fatal (one line) for a
        refused login, an unknown database or a host name that does not resolve."""
        self.engine = make_engine(self.url)
        try:
            self._retrying(lambda: migrate(self._engine), opening=True)
        except Exception as exc:
            fatal = fatal_error(exc, self._engine.url, opening=True)
            if fatal is not None:
                raise fatal from None
            raise
        return self

    @property
    def _engine(self) -> Engine:
        if self.engine is None:
            raise RuntimeError("SqlResultSink.open() was not called")
        return self.engine

    def _retrying(self, fn: Callable[[], Any], *, opening: bool = False) -> Any:
        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()
            log.warning("database unavailable, retrying", extra={"error": str(exc)[:300], "attempt": state.attempt_number})

        def transient(exc: BaseException) -> bool:
            if fatal_error(exc, self._engine.url, opening=opening) is not None:
                return False
            return is_transient(exc) or (isinstance(exc, SinkError) and is_transient(exc.__cause__ or exc))

        retrying = Retrying(
            retry=retry_if_exception(transient), stop=self._stop, wait=self._wait,
            before_sleep=before_sleep, reraise=True,
        )
        try:
            return retrying(fn)
        except SinkUnavailable:
            raise
        except Exception as exc:
            if not transient(exc):
                raise
            if isinstance(exc, SinkError):
                raise SinkUnavailable(exc.message, hint=exc.hint) from exc
            raise SinkUnavailable(f"the database is unavailable: {first_line(exc)}",
                                  hint="writes resume when the server is back") from exc

    def write(self, batch: SinkBatch) -> None:
        """Store the whole batch in one transaction (retrying transient errors); a batch the
        database refuses is bisected and its poison rows dead-lettered (module docstring)."""
        if not batch:
            return
        try:
            self._retrying(lambda: self._write_once(batch))
        except Exception as exc:
            fatal = fatal_error(exc, self._engine.url, opening=False)
            if fatal is not None:
                raise fatal from exc
            if not is_poison(exc):
                raise
            self._write_isolating(batch, exc)

    def _write_isolating(self, batch: SinkBatch, first: BaseException) -> None:
        """Bisect `batch` (which failed with `first`): store what can be stored, dead-letter the rest."""
        units = split_units(batch)
        rejected: list[DeadLetter] = []
        todo = [units[: len(units) // 2], units[len(units) // 2:]] if len(units) > 1 else []
        if len(units) == 1:
            rejected.append(rejection(units[0], first))
        while todo:
            group = todo.pop(0)
            if not group:
                continue
            try:
                self._retrying(lambda group=group: self._write_once(merge_units(group)))  # type: ignore[misc]
            except Exception as exc:
                if not is_poison(exc):
                    raise
                if len(group) == 1:
                    rejected.append(rejection(group[0], exc))
                else:
                    todo[:0] = [group[: len(group) // 2], group[len(group) // 2:]]
        try:
            self._retrying(lambda: self._write_once(SinkBatch(dead_letters=rejected, offsets=batch.offsets)))
        except Exception as exc:
            if is_poison(exc):
                raise SinkError(f"the database refuses even plain ASCII rows: {first_line(exc)}") from first
            raise
        for letter in rejected:
            log.warning("row rejected by the database", extra={"doc_id": letter.ref, "reason": letter.reason, "detail": letter.detail[:300]})

    def _write_once(self, batch: SinkBatch) -> None:
        with self._engine.begin() as conn:
            self._upsert_documents(conn, batch.documents)
            self._upsert_results(conn, batch.results)
            self._upsert_dead_letters(conn, batch.dead_letters)
            self._upsert_offsets(conn, batch.offsets)
            if batch.reviews:
                from worker.sinks.review_queue import enqueue

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
            stmt = (stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update}) if update
                    else stmt.on_conflict_do_nothing(index_elements=keys))
        elif dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt = sqlite_insert(table)
            stmt = (stmt.on_conflict_do_update(index_elements=keys, set_={c: stmt.excluded[c] for c in update}) if update
                    else stmt.on_conflict_do_nothing(index_elements=keys))
        elif dialect in ("mysql", "mariadb"):
            from sqlalchemy.dialects.mysql import insert as mysql_insert

            stmt = mysql_insert(table)
            stmt = stmt.on_duplicate_key_update({c: stmt.inserted[c] for c in update or keys[-1:]})
        else:
            raise SinkError(f"database dialect `{dialect}` is not supported", hint="use SQLite, PostgreSQL or MariaDB/MySQL")
        conn.execute(stmt, _dedupe(rows, keys))

    def _upsert_documents(self, conn: Connection, docs: list[Document]) -> None:
        """Upsert on (pipeline, doc_id); a `clipped` document (requeued from a clipped payload)
        is only inserted when no row exists, never written over a stored one."""
        now = _now()
        rows = {
            clipped: [
                {
                    "pipeline": self.pipeline, "doc_id": d.id, "text": d.text if self.store_text else None, "chars": len(d.text),
                    "sha256": hashlib.sha256(d.text.encode("utf-8")).hexdigest(), "meta": _jsonable(d.meta),
                    "source_ref": d.source_ref[:1024], "created_at": now, "updated_at": now,
                }
                for d in docs if d.clipped == clipped
            ]
            for clipped in (False, True)
        }
        keys = ["pipeline", "doc_id"]
        self._upsert(conn, tables.documents, rows[False], keys, ["text", "chars", "sha256", "meta", "source_ref", "updated_at"])
        self._upsert(conn, tables.documents, rows[True], keys, [])

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
                "pipeline": self.pipeline, "ref": d.ref[:1024], "stage": d.stage[:64], "reason": d.reason[:64],
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


def store_dead_letters(engine: Engine, pipeline: str, run_id: str, letters: list[DeadLetter]) -> None:
    """Write dead letters through a sink on an engine that is already open and migrated (the
    feedback topic's refused records); the same upserts, retries and poison isolation."""
    if not letters:
        return
    sink = SqlResultSink(engine.url.render_as_string(hide_password=False), pipeline, run_id)
    sink.engine = engine  # borrowed: not disposed here
    sink.write(SinkBatch(dead_letters=letters))


# --------------------------------------------------------------------------- poison isolation


@dataclass
class Unit:
    """What is written or refused together: a document with its results, review items and
    stage dead letters, or a lone dead letter."""

    key: str
    batch: SinkBatch


def split_units(batch: SinkBatch) -> list[Unit]:
    """The batch's rows grouped by document (offsets excluded), in batch order."""
    units: dict[str, SinkBatch] = {}

    def unit(key: str) -> SinkBatch:
        return units.setdefault(key, SinkBatch())

    for doc in batch.documents:
        unit(f"doc:{doc.id}").documents.append(doc)
    for result in batch.results:
        unit(f"doc:{result.doc_id}").results.append(result)
    for item in batch.reviews:
        unit(f"doc:{item.doc_id}").reviews.append(item)
    for index, letter in enumerate(batch.dead_letters):
        key = f"doc:{letter.ref}"
        unit(key if key in units and letter.stage != "source" else f"letter:{index}").dead_letters.append(letter)
    return [Unit(key, part) for key, part in units.items()]


def merge_units(units: Sequence[Unit]) -> SinkBatch:
    merged = SinkBatch()
    for unit in units:
        merged.documents += unit.batch.documents
        merged.results += unit.batch.results
        merged.dead_letters += unit.batch.dead_letters
        merged.reviews += unit.batch.reviews
    return merged


def _ascii(text: str, limit: int) -> str:
    return text.encode("ascii", "backslashreplace").decode("ascii").replace("\x00", "\\x00")[:limit]


def first_line(exc: BaseException) -> str:
    """`Type: first line of the message` of an error (the driver's error when SQLAlchemy wraps one)."""
    orig = getattr(exc, "orig", None)
    message = str(orig if orig is not None else exc).strip().splitlines()
    return f"{type(orig if orig is not None else exc).__name__}: {message[0] if message else ''}"


def rejection(unit: Unit, exc: BaseException) -> DeadLetter:
    """The `sink_rejected` dead letter of a unit the database refused: ASCII only, so it can always be stored.

    Its payload is the document as JSON (`id`, `text`, then its fields), which requeue
    validates again like a source record; for a lone dead letter, that letter."""
    part = unit.batch
    record: dict[str, Any]
    if part.documents:
        doc = part.documents[-1]
        ref, record = doc.id, {"id": doc.id, "text": doc.text, **doc.meta}
    elif part.results:
        ref, record = str(part.results[0].doc_id), {"id": part.results[0].doc_id, "stage": part.results[0].stage}
    else:
        letter = part.dead_letters[0]
        ref, record = str(letter.ref), {"ref": letter.ref, "stage": letter.stage, "reason": letter.reason, "detail": letter.detail}
    try:
        payload = json.dumps(record, ensure_ascii=True)
    except (ValueError, TypeError, RecursionError):
        payload = json.dumps({"id": ref, "text": record.get("text", "")}, ensure_ascii=True)
    return DeadLetter(ref=_ascii(ref, 1024), stage="sink", reason="sink_rejected",
                      detail=_ascii(first_line(exc), 2000), payload=_ascii(payload, 64 * 1024))

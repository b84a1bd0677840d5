"""The versioned model registry: `model_registry` rows and the `model_events` history.

A registry *name* is a model family: the basename of a stage's family directory
(`models/spam` -> `spam`). Each version is a row with a status:

    candidate --promote--> champion --(another promote)--> retired
        |                      |
      reject                rollback: champion -> retired ("rolled back"),
    (stays candidate,          the previous champion -> champion again
     reason recorded)

Contract:
- At most one champion per name. `promote` retires the old champion and crowns the
  new one in ONE transaction.
- The registry is the source of truth for pipelines that run against its database;
  the family's on-disk `current` pointer is what pipelines without a registry (or
  against another database) load. Promotion moves the pointer only when asked
  (`move_pointer=True`: `models promote --pointer`, or `finetune.move_pointer` in the
  pipeline file), inside the same transaction: if the pointer cannot be written the
  transaction rolls back and nothing changed. `models list` shows both and warns when
  they disagree.
- Each version's reference sets (`worker.lifecycle.references`) are stored with it in
  `model_reference_sets`, rows included.
- Every change adds a `model_events` row (register, promote, retire, reject, rollback)
  with its reason and the figures it was decided on.
- `champion(engine, name)` is the one call running stages make at batch boundaries:
  one indexed SELECT, no file I/O. Its `version` is the string results carry
  (`<name>@<version>`, as `worker.models.loading.resolve` builds it).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from worker.errors import TextworkerError
from worker.models import loading
from worker.sinks import tables
from worker.sinks.registry_read import ChampionRef, champion  # noqa: F401 - re-exported: the registry's read side
from worker.sinks.sql import make_engine, migrate, normalise_url

log = logging.getLogger(__name__)
CANDIDATE, CHAMPION, RETIRED = "candidate", "champion", "retired"
_reg = tables.model_registry
_events = tables.model_events
_refs = tables.model_reference_sets


class RegistryError(TextworkerError):
    """A registry operation that cannot be done (unknown version, nothing to roll back to...)."""

    code = "TW501"


@dataclass(frozen=True)
class ModelRecord:
    """One `model_registry` row."""

    name: str
    version: str
    stage: str
    task: str
    status: str
    artifact_path: str
    pipeline: str | None
    base_model: str | None
    parent_version: str | None
    data_fingerprint: str | None
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    reason: str | None
    created_at: datetime
    updated_at: datetime

    @property
    def model_version(self) -> str:
        """The version string results carry (`name@version`)."""
        return str(self.train_config.get("model_version") or f"{self.name}@{self.version}")

    def as_dict(self) -> dict[str, Any]:
        data = {k: getattr(self, k) for k in self.__dataclass_fields__}
        data["model_version"] = self.model_version
        return data

    @classmethod
    def from_row(cls, row: Any) -> ModelRecord:
        values = dict(row._mapping)
        return cls(**{k: values[k] for k in cls.__dataclass_fields__})


def _now() -> datetime:
    return datetime.now(UTC)


def open_engine(url: str) -> Engine:
    """An engine on `url` with the schema migrated to the newest revision."""
    engine = make_engine(normalise_url(url))
    migrate(engine)
    return engine


def family_dir(model_ref: str) -> Path | None:
    """The family directory a stage's `model` names: the directory itself when it holds versions,
    the parent of a model directory, None for hub ids and built-in models."""
    if model_ref.startswith("builtin:"):
        return None
    path = Path(model_ref).expanduser()
    if not path.is_dir():
        return None
    return (path.parent if loading.is_model_dir(path) else path).resolve()


def family_name(model_ref: str) -> str:
    """The registry name of a stage's model (its family directory's basename)."""
    family = family_dir(model_ref)
    if family is None:
        raise RegistryError(
            f"model `{model_ref}` is not a local model family directory, so it has no registry name",
            hint="point the stage's `model` at a family directory (models/NAME holding versions and a `current` file)",
        )
    return family.name


class ModelRegistry:
    """Registry operations on one database; every method is one transaction."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, url: str) -> ModelRegistry:
        return cls(open_engine(url))

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ reading

    def get(self, name: str, version: str) -> ModelRecord | None:
        with self.engine.connect() as conn:
            return self._get(conn, name, version)

    def _get(self, conn: Connection, name: str, version: str) -> ModelRecord | None:
        row = conn.execute(sa.select(_reg).where(_reg.c.name == name, _reg.c.version == version)).first()
        return ModelRecord.from_row(row) if row is not None else None

    def require(self, name: str, version: str) -> ModelRecord:
        record = self.get(name, version)
        if record is None:
            known = ", ".join(r.version for r in self.versions(name)) or "none"
            raise RegistryError(f"model `{name}` has no version `{version}` in the registry (versions: {known})",
                                hint="`textworker models list` shows what is registered")
        return record

    def versions(self, name: str | None = None) -> list[ModelRecord]:
        query = sa.select(_reg).order_by(_reg.c.name, _reg.c.created_at, _reg.c.id)
        if name is not None:
            query = query.where(_reg.c.name == name)
        with self.engine.connect() as conn:
            return [ModelRecord.from_row(r) for r in conn.execute(query)]

    def champion(self, name: str) -> ModelRecord | None:
        query = sa.select(_reg).where(_reg.c.name == name, _reg.c.status == CHAMPION).order_by(_reg.c.updated_at.desc())
        with self.engine.connect() as conn:
            row = conn.execute(query.limit(1)).first()
        return ModelRecord.from_row(row) if row is not None else None

    def events(self, name: str, version: str | None = None) -> list[dict[str, Any]]:
        query = sa.select(_events).where(_events.c.name == name).order_by(_events.c.id)
        if version is not None:
            query = query.where(_events.c.version == version)
        with self.engine.connect() as conn:
            return [dict(r._mapping) for r in conn.execute(query)]

    # ------------------------------------------------------------------ changes

    def register(
        self, *, name: str, version: str, stage: str, task: str, artifact_path: str | Path, pipeline: str | None = None,
        base_model: str | None = None, parent_version: str | None = None, data_fingerprint: str | None = None,
        train_config: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None, reason: str = "registered",
    ) -> ModelRecord:
        """Add a version as a candidate (an `register` event records where it came from)."""
        now = _now()
        row = {
            "name": name, "version": version, "pipeline": pipeline, "stage": stage, "task": task,
            "base_model": base_model, "parent_version": parent_version, "artifact_path": str(Path(artifact_path).resolve()),
            "data_fingerprint": data_fingerprint, "train_config": train_config or {}, "metrics": metrics or {},
            "status": CANDIDATE, "reason": reason, "created_at": now, "updated_at": now,
        }
        with self.engine.begin() as conn:
            if self._get(conn, name, version) is not None:
                raise RegistryError(f"model `{name}` already has a version `{version}`", hint="pick another version name")
            conn.execute(_reg.insert().values(**row))
            self._event(conn, name, version, "register", reason, {"parent_version": parent_version, "stage": stage})
            record = self._get(conn, name, version)
        assert record is not None
        return record

    def update_metrics(self, name: str, version: str, metrics: dict[str, Any]) -> None:
        with self.engine.begin() as conn:
            conn.execute(_reg.update().where(_reg.c.name == name, _reg.c.version == version).values(metrics=metrics, updated_at=_now()))

    def promote(self, name: str, version: str, reason: str, details: dict[str, Any] | None = None,
                *, action: str = "promote", move_pointer: bool = False) -> ModelRecord:
        """Make `version` the champion; the old champion is retired. With `move_pointer`, the family's
        on-disk `current` file follows (same transaction); without, the pointer stays where it was."""
        with self.engine.begin() as conn:
            record = self._lock(conn, name, version)
            if record.status == CHAMPION:
                raise RegistryError(f"`{name}` {version} is already the champion")
            old = self._current_champion(conn, name)
            now = _now()
            if old is not None:
                why = f"replaced by {version}" if action == "promote" else f"rolled back: {reason}"
                conn.execute(_reg.update().where(_reg.c.name == name, _reg.c.version == old.version)
                             .values(status=RETIRED, reason=why, updated_at=now))
                self._event(conn, name, old.version, "retire" if action == "promote" else "rollback", why,
                            {"replaced_by": version, **(details or {})})
            conn.execute(_reg.update().where(_reg.c.name == name, _reg.c.version == version)
                         .values(status=CHAMPION, reason=reason, updated_at=now))
            self._event(conn, name, version, "promote", reason,
                        {"previous": old.version if old else None, "action": action, "pointer_moved": move_pointer,
                         **(details or {})})
            if move_pointer:
                move_current_pointer(name, Path(record.artifact_path))
            promoted = self._get(conn, name, version)
        assert promoted is not None
        log.info("model promoted", extra={"model": name, "version": version, "reason": reason})
        return promoted

    def reject(self, name: str, version: str, reason: str, details: dict[str, Any] | None = None) -> ModelRecord:
        """Keep `version` a candidate, with the reason it was not promoted."""
        with self.engine.begin() as conn:
            record = self._lock(conn, name, version)
            if record.status != CANDIDATE:
                raise RegistryError(f"`{name}` {version} is a {record.status}, not a candidate; only candidates are rejected")
            conn.execute(_reg.update().where(_reg.c.name == name, _reg.c.version == version).values(reason=reason, updated_at=_now()))
            self._event(conn, name, version, "reject", reason, details or {})
            rejected = self._get(conn, name, version)
        assert rejected is not None
        log.info("candidate rejected", extra={"model": name, "version": version, "reason": reason})
        return rejected

    def rollback(self, name: str, reason: str = "manual rollback", *, move_pointer: bool = False) -> ModelRecord:
        """Retire the champion as rolled back and restore the champion before it; returns the restored version."""
        with self.engine.connect() as conn:
            current = self._current_champion(conn, name)
            if current is None:
                raise RegistryError(f"model `{name}` has no champion to roll back")
            target = _previous_champion(self.events(name), current.version)
        if target is None:
            raise RegistryError(f"model `{name}` has no earlier champion to go back to (champion: {current.version})",
                                hint="promote a specific version instead: textworker models promote NAME VERSION")
        return self.promote(name, target, reason, {"rollback_from": current.version}, action="rollback",
                            move_pointer=move_pointer)

    def bootstrap(self, stage: Any, pipeline: str | None = None) -> ModelRecord:
        """The family's champion; a family with no rows first gets its on-disk current version registered as champion."""
        name = family_name(stage.model)
        existing = self.champion(name)
        if existing is not None:
            return existing
        if self.versions(name):
            raise RegistryError(f"model `{name}` has registry rows but no champion",
                                hint=f"promote one: textworker models promote {name} VERSION")
        family = family_dir(stage.model)
        assert family is not None
        version_dir = Path(stage.model).expanduser().resolve() if loading.is_model_dir(Path(stage.model).expanduser()) \
            else loading.current_version_dir(family)
        if version_dir is None:
            raise RegistryError(f"model family `{family}` holds no version to bootstrap the registry from",
                                hint="build or train one first (textworker models build-defaults / textworker train)")
        from worker.lifecycle.feedback import stage_labels
        from worker.lifecycle.references import backfill

        backfill(version_dir, stage_labels(stage))
        record = self.register_directory(name, version_dir, stage=stage.name, task=stage.type, pipeline=pipeline,
                                         reason="bootstrap: the family's on-disk current version")
        return self.promote(name, record.version, "bootstrap: the family's on-disk current version")

    def register_directory(self, name: str, version_dir: Path, *, stage: str, task: str, pipeline: str | None = None,
                           reason: str = "registered from disk") -> ModelRecord:
        """Register a version directory (e.g. one `textworker train` wrote) as a candidate, from its textworker.json."""
        ref = loading.resolve(str(version_dir))
        meta = ref.metadata
        version = str(meta.get("version") or ref.version.split("@", 1)[1])
        record = self.register(
            name=name, version=version, stage=stage, task=str(meta.get("task") or task), artifact_path=version_dir,
            pipeline=pipeline, base_model=meta.get("base_model"), data_fingerprint=(meta.get("train_data") or {}).get("sha256"),
            train_config={"model_version": ref.version, "seed": meta.get("seed"), "params": meta.get("params")},
            metrics=meta.get("metrics") or {}, reason=reason,
        )
        self.save_references(name, version, version_dir)
        return record

    # ------------------------------------------------------------------ reference sets

    def save_references(self, name: str, version: str, version_dir: str | Path) -> int:
        """Store the reference sets a version directory lists (rows included); returns how many."""
        from worker.lifecycle import references

        sets = references.manifest(version_dir)
        rows = []
        for ref in sets:
            path = Path(version_dir) / ref.file
            if not path.is_file():
                log.warning("reference set listed but missing; not stored", extra={"model": name, "version": version, "set": ref.name})
                continue
            lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
            rows.append({"name": name, "version": version, "set_name": ref.name, "task": ref.task, "role": ref.role,
                         "origin_version": ref.origin, "n_rows": ref.rows, "sha256": ref.sha256, "manifest": ref.as_dict(),
                         "rows": lines, "created_at": _now()})
        with self.engine.begin() as conn:
            conn.execute(_refs.delete().where(_refs.c.name == name, _refs.c.version == version))
            if rows:
                conn.execute(_refs.insert(), rows)
        return len(rows)

    def references(self, name: str, version: str, *, with_rows: bool = False) -> list[dict[str, Any]]:
        """A version's stored reference sets: each `manifest` entry, plus `rows` (JSON lines) when asked."""
        columns = [_refs.c.set_name, _refs.c.manifest] + ([_refs.c.rows] if with_rows else [])
        query = sa.select(*columns).where(_refs.c.name == name, _refs.c.version == version).order_by(_refs.c.id)
        with self.engine.connect() as conn:
            found = conn.execute(query).all()
        return [{**row.manifest, **({"rows_data": row.rows} if with_rows else {})} for row in found]

    # ------------------------------------------------------------------ helpers

    def _lock(self, conn: Connection, name: str, version: str) -> ModelRecord:
        """Lock the family's rows (PostgreSQL) so two promotions cannot interleave."""
        conn.execute(sa.select(_reg.c.id).where(_reg.c.name == name).with_for_update()).all()
        record = self._get(conn, name, version)
        if record is None:
            raise RegistryError(f"model `{name}` has no version `{version}` in the registry",
                                hint="`textworker models list` shows what is registered")
        return record

    def _current_champion(self, conn: Connection, name: str) -> ModelRecord | None:
        row = conn.execute(sa.select(_reg).where(_reg.c.name == name, _reg.c.status == CHAMPION)).first()
        return ModelRecord.from_row(row) if row is not None else None

    def _event(self, conn: Connection, name: str, version: str, action: str, reason: str | None, details: dict[str, Any]) -> None:
        conn.execute(_events.insert().values(name=name, version=version, action=action, reason=reason,
                                             details=details, created_at=_now()))


def _previous_champion(events: Iterable[dict[str, Any]], current: str) -> str | None:
    """The most recent earlier champion that has not been rolled back since it was last promoted."""
    last_promote: dict[str, int] = {}
    last_rollback: dict[str, int] = {}
    for event in events:
        if event["action"] == "promote":
            last_promote[event["version"]] = event["id"]
        elif event["action"] == "rollback":
            last_rollback[event["version"]] = event["id"]
    candidates = [
        (event_id, version) for version, event_id in last_promote.items()
        if version != current and last_rollback.get(version, -1) < event_id
    ]
    return max(candidates)[1] if candidates else None


def move_current_pointer(name: str, artifact: Path) -> None:
    """Point the family directory's `current` file at `artifact` when it lives in that family."""
    family = artifact.parent
    if family.name == name and family.is_dir() and loading.is_model_dir(artifact):
        loading.set_current_version(family, artifact)
    else:
        log.warning("champion lives outside its family directory; `current` pointer not moved",
                    extra={"model": name, "artifact": str(artifact)})

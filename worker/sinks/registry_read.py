"""The model registry's read side that running stages need: which version is a family's champion.

Hot swap (`worker.engine.swap`) asks this between batches; everything else about the
registry (recording, promotion, rollback, events) is `worker.lifecycle.registry`.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from worker.sinks import tables

_reg = tables.model_registry
CHAMPION = "champion"


@dataclass(frozen=True)
class ChampionRef:
    """What a running stage needs to switch models: the version string results carry and where the weights are."""

    name: str
    version: str
    artifact_path: str
    registry_version: str



def champion(engine: Engine, name: str) -> ChampionRef | None:
    """The champion of model family `name`, or None when the family has none (or no registry tables yet)."""
    query = sa.select(_reg.c.version, _reg.c.artifact_path, _reg.c.train_config).where(
        _reg.c.name == name, _reg.c.status == CHAMPION
    )
    try:
        with engine.connect() as conn:
            row = conn.execute(query.order_by(_reg.c.updated_at.desc()).limit(1)).first()
    except sa.exc.ProgrammingError:
        return None
    except sa.exc.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    model_version = (row.train_config or {}).get("model_version") or f"{name}@{row.version}"
    return ChampionRef(name=name, version=str(model_version), artifact_path=row.artifact_path, registry_version=row.version)

"""Hot swap: a running stage follows its model family's champion, switching between batches.

A stage whose `model` is a model family directory (versions plus a `current` file)
asks, at a batch boundary and at most every `swap_check_seconds`, which version is the
family's champion: the SQL model registry when the run has a database and the registry
names a champion for the family (`name` = the family directory's name), else the
family's `current` file. When that is not the loaded version, the new one is loaded and
checked on a background thread while the old one keeps serving; the first batch
boundary after it is ready switches the stage to it in one step.

Guarantees:
- a batch runs on one model from start to end, and each result carries the version of
  the model that produced it (the switch happens only between `process` calls);
- a swap drops and repeats no document: it never touches the documents in flight;
- a version that fails to load (or does not fit the stage: other labels, no head) is
  logged as an error and the old version keeps serving; the same version is tried
  again after `retry_seconds`. A database that cannot be read leaves the model as is.
Works wherever the engine runs stage calls (`worker.engine.stage_call`): in process, in Ray actors, in Serve replicas.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.models import loading

HFStage = Any  # a stage with `spec`, `ref`, `model_version`, `stats`, `prepared()` and `adopt()` (worker.stages.base.HFStage)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Champion:
    """The version a family should serve: where it lies and (from the registry) its version string."""

    location: str
    version: str | None
    source: str  # registry | pointer


class LookupFailed(Exception):
    """The champion could not be read now (database away); try again at the next check."""


def model_family(model: str) -> Path | None:
    """The family directory a stage's `model` names, or None (a single model dir, a hub id)."""
    path = Path(model).expanduser()
    if path.is_dir() and not loading.is_model_dir(path):
        return path.resolve()
    return None


class ChampionLookup:
    """Which version of one model family serves now. Cheap to build; the engine opens on first use."""

    def __init__(self, family: Path, database_url: str | None) -> None:
        self.family = family
        self.name = family.name
        self.database_url = database_url
        self._engine: Any = None

    def champion(self) -> Champion | None:
        """Registry champion if the registry names one, else the `current` file; raises LookupFailed."""
        found = self._from_registry()
        if found is not None:
            return found
        directory = loading.current_version_dir(self.family)
        return Champion(str(directory.resolve()), None, "pointer") if directory is not None else None

    def _from_registry(self) -> Champion | None:
        if not self.database_url:
            return None
        import sqlalchemy as sa

        from worker.sinks import registry_read

        try:
            if self._engine is None:
                from worker.sinks.sql import make_engine, normalise_url

                self._engine = make_engine(normalise_url(self.database_url))
            ref = registry_read.champion(self._engine, self.name)
        except sa.exc.SQLAlchemyError as exc:
            raise LookupFailed(str(exc).splitlines()[0][:300]) from exc
        if ref is None:
            return None
        location = Path(ref.artifact_path).expanduser().resolve()
        if not location.is_relative_to(self.family.resolve()):
            # a registry row is data anyone with write access to the database can change: never load from elsewhere
            log.error("registry champion lies outside its family directory; not loaded",
                      extra={"model": self.name, "version": ref.version, "artifact_path": str(location)[:300], "family": str(self.family)})
            raise LookupFailed(f"the registry's champion of `{self.name}` lies at {location}, outside the family directory {self.family}")
        return Champion(str(location), ref.version, "registry")

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None


class ModelSwapper:
    """Keeps one stage on its family's champion; see the module docstring for the contract.

    `at_batch_boundary()` runs on the thread that runs the stage's batches; loading runs
    on a daemon thread, at most one at a time.
    """

    def __init__(self, stage: HFStage, lookup: ChampionLookup, every_s: float, *, retry_s: float | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stage, self.lookup, self.every_s, self.clock = stage, lookup, every_s, clock
        self.retry_s = retry_s if retry_s is not None else max(30.0, 6 * every_s)
        self.swaps = 0
        self._next_check = 0.0
        self._retry_at: dict[str, float] = {}
        self._loader: threading.Thread | None = None
        self._ready: HFStage | None = None
        self._lock = threading.Lock()

    def starting_model(self) -> tuple[loading.ModelRef, str | None]:
        """What the stage loads first: the champion, else the stage's own reference."""
        self._next_check = self.clock() + self.every_s
        try:
            champion = self.lookup.champion()
        except LookupFailed as exc:
            log.warning("model registry unreadable at start; using the family's current version",
                        extra={"stage": self.stage.name, "error": str(exc)})
            champion = None
        if champion is None:
            return loading.resolve(self.stage.spec.model, self.stage.spec.revision), None
        return loading.resolve(champion.location), champion.version

    def at_batch_boundary(self) -> None:
        """Install a prepared version, or look for a new champion when a check is due."""
        with self._lock:
            ready, self._ready = self._ready, None
        if ready is not None:
            self._install(ready)
        if self._loader is not None and self._loader.is_alive():
            return
        now = self.clock()
        if now < self._next_check:
            return
        self._next_check = now + self.every_s
        try:
            champion = self.lookup.champion()
        except LookupFailed as exc:
            log.warning("cannot read the model registry; keeping the loaded model", extra={"stage": self.stage.name, "error": str(exc)})
            return
        if champion is None or self._is_loaded(champion) or self._retry_at.get(champion.location, 0.0) > now:
            return
        self._loader = threading.Thread(target=self._prepare, args=(champion,), name=f"swap-{self.stage.name}", daemon=True)
        self._loader.start()

    def wait_idle(self, timeout: float | None = None) -> None:
        """Block until a load in progress has finished (for tests and orderly shutdowns)."""
        if self._loader is not None:
            self._loader.join(timeout)

    def _is_loaded(self, champion: Champion) -> bool:
        ref = self.stage.ref
        if ref is None or Path(ref.location).resolve() != Path(champion.location):
            return False
        return champion.version is None or champion.version == self.stage.model_version

    def _prepare(self, champion: Champion) -> None:
        try:
            candidate = self.stage.prepared(loading.resolve(champion.location), champion.version)
        except Exception as exc:  # noqa: BLE001 - any failure keeps the old model serving
            self._retry_at[champion.location] = self.clock() + self.retry_s
            log.error("new model version failed to load; the current one keeps serving",
                      extra={"stage": self.stage.name, "model_version": self.stage.model_version, "candidate": champion.location,
                             "source": champion.source, "error": f"{type(exc).__name__}: {str(exc)[:500]}", "retry_in_s": self.retry_s})
            return
        with self._lock:
            self._ready = candidate

    def _install(self, ready: HFStage) -> None:
        old = self.stage.model_version
        self.stage.adopt(ready)
        self.swaps += 1
        self.stage.stats.extra["model_swaps"] = self.stage.stats.extra.get("model_swaps", 0) + 1
        log.info("model swapped", extra={"stage": self.stage.name, "old_version": old, "new_version": self.stage.model_version})


def follow_champions(stages: Iterable[Any], database_url: str | None) -> None:
    """Give every stage whose model is a family a swapper, so it starts on the champion of the run's registry.

    With `swap_check_seconds` set the stage also switches to later champions; with it null
    (hot swap off) it only starts on the registry's champion and keeps it. Without a
    database the family's `current` file decides. Call before the stages load.
    """
    for stage in stages:
        if not hasattr(stage, "prepared") or getattr(stage, "swapper", None) is not None:
            continue
        every = stage.spec.swap_check_seconds
        family = model_family(stage.spec.model)
        if family is None or (every is None and not database_url):
            continue
        stage.swapper = ModelSwapper(stage, ChampionLookup(family, database_url), every if every is not None else math.inf)

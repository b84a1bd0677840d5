"""Executors, keyed by `--runtime`: where stage calls run. Adding one is a module plus a line here."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from worker.engine.core import Executor


def _local(database_url: str | None, address: str | None, **kwargs: Any) -> Executor:
    from worker.engine.executors.local import LocalExecutor

    return LocalExecutor(database_url, **kwargs)


def _ray(database_url: str | None, address: str | None, **kwargs: Any) -> Executor:
    from worker.engine.executors.ray import RayExecutor

    return RayExecutor(database_url, address)


EXECUTORS: dict[str, Callable[..., Executor]] = {
    "local": _local,
    "ray": _ray,
}


def make_executor(runtime: str, database_url: str | None = None, address: str | None = None, **kwargs: Any) -> Executor:
    """The executor for `runtime` (`local`: this process; `ray`: Ray actor pools)."""
    try:
        factory = EXECUTORS[runtime]
    except KeyError:
        raise ValueError(f"unknown runtime `{runtime}`; choose one of {sorted(EXECUTORS)}") from None
    return factory(database_url, address, **kwargs)

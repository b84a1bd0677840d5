"""The operations dashboard (`textworker dashboard`, mounted by `textworker serve` too)."""

from worker.dashboard.app import make_app, make_router

__all__ = ["make_app", "make_router"]

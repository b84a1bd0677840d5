"""The `textworker` commands, one module each; `worker.cli` parses and dispatches to them.

Shared console helpers live in `worker.console`.
"""

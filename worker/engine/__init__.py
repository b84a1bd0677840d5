"""The engine: one stage loop for every entry point, over pluggable executors.

    source -> Engine (stage loop, hooks) -> Executor (in process | Ray actors | Serve) -> sink

See `worker.engine.core` for the loop's rules, `worker.engine.executors` for where
stage calls run, `worker.engine.batch` and `worker.engine.stream` for the drivers.
"""

from worker.engine.core import Chunk, ChunkInput, Engine, Executor
from worker.engine.hooks import Hook

__all__ = ["Chunk", "ChunkInput", "Engine", "Executor", "Hook"]

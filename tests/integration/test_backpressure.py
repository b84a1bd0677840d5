"""Backpressure in the Ray runtime: a large input is read lazily, chunk by chunk, as slots free.

40,000 generated documents go through a real (tiny, randomly initialised) RoBERTa
classifier in a Ray actor. The source is a generator, so it is consumed only as the
pipeline asks; the test checks that it is never more than `max_inflight` chunks ahead of
the completed ones, and that the driver's resident memory stays flat while the whole
input passes through (measured: about 1 MiB of growth, where holding the input would
take ~30 MiB and its results ~60 MiB more).
"""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from schemas.documents import Document
from schemas.pipeline import ClassifyStage, FileSource, PipelineSpec

DOCS = 40_000
CHUNK = 500
MAX_INFLIGHT = 3
RSS_GROWTH_LIMIT = 24 * 1024 * 1024  # holding the 40k documents takes ~30 MiB, their results ~60 MiB more
WORDS = "the quick brown fox jumps over a lazy dog while seven merchants argue about the price of maps".split()


def _rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.models.roberta import build_roberta

    texts = [" ".join(itertools.islice(itertools.cycle(WORDS), i, i + 12)) for i in range(400)]
    return build_roberta(texts, tmp_path_factory.mktemp("tiny") / "roberta", size="tiny", vocab_size=1000, max_length=64)


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    import ray

    from worker.engine.executors.ray import ensure_ray

    started = not ray.is_initialized()
    ensure_ray(num_cpus=2)
    yield
    if started:
        ray.shutdown()


def _text(n: int) -> str:
    start = n % len(WORDS)
    return f"message {n}: " + " ".join(WORDS[start:] + WORDS[:start])


@pytest.mark.slow
def test_large_input_is_read_lazily_with_bounded_memory(ray_session: None, tiny_classifier: Path) -> None:
    from worker.engine import Chunk, ChunkInput, Engine
    from worker.engine.executors.ray import RayExecutor

    stage = ClassifyStage(name="label", model=str(tiny_classifier), labels=["negative", "positive"], max_length=32,
                          batch_size=128, max_tokens=4096, resources={"cpus": 1, "threads": 1})
    pipeline = Engine(PipelineSpec(name="backpressure", source=FileSource(path="unused"), stages=[stage]), RayExecutor(),
                      max_inflight=MAX_INFLIGHT)
    pulled = completed = results = 0
    max_ahead = 0
    baseline = peak = 0

    def chunks() -> Iterator[ChunkInput]:
        nonlocal pulled, max_ahead
        for start in range(0, DOCS, CHUNK):
            pulled += 1
            max_ahead = max(max_ahead, pulled - completed)
            yield ChunkInput([Document(id=f"d{n}", text=_text(n)) for n in range(start, start + CHUNK)])

    def done(chunk: Chunk) -> None:
        nonlocal completed, results, baseline, peak
        completed += 1
        results += len(chunk.results)
        if completed == 10:  # past start-up: connections, buffers, first deserialisations
            gc.collect()
            baseline = peak = _rss_bytes()
        elif completed > 10:
            peak = max(peak, _rss_bytes())

    try:
        pipeline.run(chunks(), done)
    finally:
        pipeline.close()
    assert completed == DOCS // CHUNK and results == DOCS
    assert max_ahead <= MAX_INFLIGHT and pipeline.peak_inflight <= MAX_INFLIGHT
    assert peak - baseline < RSS_GROWTH_LIMIT, f"driver RSS grew {(peak - baseline) / 2**20:.1f} MiB over {DOCS} documents"

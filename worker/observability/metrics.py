"""Prometheus metrics of a running pipeline, and the helpers the runtimes call.

Every metric lives on `REGISTRY`, a registry of this module's own (not the
process-wide default one), so an exposition shows textworker's figures and nothing a
library registered by accident. `render()` adds the SQL-derived gauges of
`worker.observability.sql_metrics` for one database.

Where the figures come from:

- local and streaming runs call `observe_stage` around each stage call (the stage's
  `StageStats` before and after) and `observe_chunk` for each chunk they store;
- the Ray runtime's driver calls `observe_stage_delta` with the per-call deltas its
  stage actors return, so the driver's registry holds every actor's work;
- the streaming loop calls `observe_lag` after each poll.

Counters only grow, so throughput is `rate(textworker_stage_documents_out_total[1m])`,
tokens/s is `rate(textworker_stage_tokens_total[1m])` and padding waste is
`1 - rate(textworker_stage_tokens_total) / rate(textworker_stage_padded_tokens_total)`.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector

from schemas.documents import DeadLetter, StageResult

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(namespace="textworker", registry=REGISTRY)

STAGE = ["pipeline", "stage"]
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

STAGE_IN = Counter("textworker_stage_documents_in", "Documents handed to a stage (its `when` admitted them).", STAGE, registry=REGISTRY)
STAGE_OUT = Counter("textworker_stage_documents_out", "Results a stage produced.", STAGE, registry=REGISTRY)
STAGE_FAILED = Counter("textworker_stage_documents_failed", "Documents a stage turned into dead letters.", STAGE, registry=REGISTRY)
STAGE_SKIPPED = Counter("textworker_stage_documents_skipped", "Documents a stage's `when` did not admit.", STAGE, registry=REGISTRY)
CACHE_HITS = Counter("textworker_stage_cache_hits", "Documents answered by the duplicate-text cache, without a stage call.", STAGE,
                     registry=REGISTRY)
STAGE_SECONDS = Histogram("textworker_stage_batch_seconds", "Time of one stage call over one chunk's documents.", STAGE,
                          buckets=LATENCY_BUCKETS, registry=REGISTRY)
STAGE_BATCH = Histogram("textworker_stage_batch_documents", "Documents in one stage call.", STAGE, buckets=SIZE_BUCKETS, registry=REGISTRY)
MODEL_BATCHES = Counter("textworker_stage_model_batches", "Forward passes (padded model batches) a stage ran.", STAGE, registry=REGISTRY)
TOKENS = Counter("textworker_stage_tokens", "Real (unpadded) tokens a stage's model read.", STAGE, registry=REGISTRY)
PADDED = Counter("textworker_stage_padded_tokens", "Tokens including padding that a stage's model read.", STAGE, registry=REGISTRY)
TOKENS_PER_S = Gauge("textworker_stage_tokens_per_second", "Real tokens per second of the stage's last call.", STAGE, registry=REGISTRY)
PADDING_WASTE = Gauge("textworker_stage_padding_waste_ratio", "1 - real/padded tokens, over this process's life.", STAGE, registry=REGISTRY)
STAGE_GPU = Gauge("textworker_stage_gpu_memory_bytes", "Peak GPU memory a stage's actor allocated (Ray runtime, GPU stages).",
                  STAGE, registry=REGISTRY)
LABELS = Counter("textworker_stage_labels", "Results of classify and spam stages by label (what the pipeline finds).",
                 [*STAGE, "label"], registry=REGISTRY)
MODEL_INFO = Gauge("textworker_model_info", "1 for the model version a stage runs now.", [*STAGE, "model_version"], registry=REGISTRY)

ITEMS = Counter("textworker_source_items", "Input items read (documents and unreadable records).", ["pipeline"], registry=REGISTRY)
DOCUMENTS = Counter("textworker_documents_stored", "Documents written to SQL.", ["pipeline"], registry=REGISTRY)
DEAD_LETTERS = Counter("textworker_dead_letters", "Dead letters written, by the stage (`source` for input errors) and reason code.",
                       ["pipeline", "stage", "reason"], registry=REGISTRY)
CHUNK_SIZE = Histogram("textworker_chunk_documents", "Documents per stored chunk (Kafka: per polled batch).", ["pipeline"],
                       buckets=SIZE_BUCKETS, registry=REGISTRY)
SINK_SECONDS = Histogram("textworker_sink_write_seconds", "Time of one SQL transaction (retries included).", ["pipeline"],
                         buckets=LATENCY_BUCKETS, registry=REGISTRY)
CONSUMER_LAG = Gauge("textworker_consumer_lag", "Records behind the partition's high watermark (last fetch).",
                     ["pipeline", "group", "topic", "partition"], registry=REGISTRY)
RUNS = Counter("textworker_runs", "Runs that ended, by status.", ["pipeline", "status"], registry=REGISTRY)
RUN_ACTIVE = Gauge("textworker_run_active", "1 while a run of the pipeline is going on in this process.", ["pipeline"], registry=REGISTRY)
RUN_INFO = Gauge("textworker_run_info", "1 for the id of the pipeline's latest run in this process.", ["pipeline", "run_id"], registry=REGISTRY)
RUN_STARTED = Gauge("textworker_run_started_timestamp_seconds", "When the latest run started (Unix time).", ["pipeline"], registry=REGISTRY)

_lock = threading.Lock()
_versions: dict[tuple[str, str], str] = {}
_run_ids: dict[str, str] = {}
_padding: dict[tuple[str, str], list[int]] = {}
_latencies: dict[tuple[str, str], deque[float]] = {}
_lag_keys: dict[tuple[str, str], set[tuple[str, int]]] = {}
_labels: dict[tuple[str, str], set[str]] = {}
MAX_LABELS = 50
LATENCY_WINDOW = 4096


class GpuMemoryCollector:
    """GPU memory of this process's CUDA devices, read at scrape time.

    Reports nothing unless torch is already imported and has initialised CUDA here,
    so a scrape never loads torch or creates a CUDA context by itself.
    """

    def collect(self) -> Iterator[Metric]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
            return
        allocated = GaugeMetricFamily("textworker_gpu_memory_allocated_bytes", "Memory held by tensors on the device.", labels=["device"])
        reserved = GaugeMetricFamily("textworker_gpu_memory_reserved_bytes", "Memory the caching allocator reserved.", labels=["device"])
        used = GaugeMetricFamily("textworker_gpu_memory_used_bytes", "Device memory in use by every process.", labels=["device"])
        total = GaugeMetricFamily("textworker_gpu_memory_total_bytes", "Device memory.", labels=["device"])
        for index in range(torch.cuda.device_count()):
            device = str(index)
            allocated.add_metric([device], float(torch.cuda.memory_allocated(index)))
            reserved.add_metric([device], float(torch.cuda.memory_reserved(index)))
            free, size = torch.cuda.mem_get_info(index)
            used.add_metric([device], float(size - free))
            total.add_metric([device], float(size))
        yield from (allocated, reserved, used, total)

    def describe(self) -> list[Metric]:
        return []


REGISTRY.register(GpuMemoryCollector())


# ---------------------------------------------------------------------- stage calls


def observe_stage_delta(pipeline: str, stage: str, model_version: str, *, skipped: int = 0, docs_in: int, results: int, failed: int,
                        seconds: float, delta: Mapping[str, float]) -> None:
    """Record one stage call from counts and a stats delta (what Ray stage actors return)."""
    labels = (pipeline, stage)
    if skipped:
        STAGE_SKIPPED.labels(*labels).inc(skipped)
    set_model_version(pipeline, stage, model_version)
    if docs_in <= 0:
        return
    STAGE_IN.labels(*labels).inc(docs_in)
    STAGE_OUT.labels(*labels).inc(results)
    STAGE_FAILED.labels(*labels).inc(failed)
    STAGE_BATCH.labels(*labels).observe(docs_in)
    STAGE_SECONDS.labels(*labels).observe(seconds)
    if delta.get("cache_hits"):
        CACHE_HITS.labels(*labels).inc(int(delta["cache_hits"]))
    real, padded = int(delta.get("real_tokens", 0)), int(delta.get("padded_tokens", 0))
    MODEL_BATCHES.labels(*labels).inc(int(delta.get("batches", 0)))
    TOKENS.labels(*labels).inc(real)
    PADDED.labels(*labels).inc(padded)
    if seconds > 0 and real:
        TOKENS_PER_S.labels(*labels).set(real / seconds)
    if delta.get("gpu_memory_bytes"):
        STAGE_GPU.labels(*labels).set(float(delta["gpu_memory_bytes"]))
    with _lock:
        totals = _padding.setdefault(labels, [0, 0])
        totals[0] += real
        totals[1] += padded
        waste = 1 - totals[0] / totals[1] if totals[1] else 0.0
        _latencies.setdefault(labels, deque(maxlen=LATENCY_WINDOW)).append(seconds)
    PADDING_WASTE.labels(*labels).set(waste)


def observe_labels(pipeline: str, stage: str, outcomes: Sequence[Any]) -> None:
    """Count the labels of classification results (a bounded set: QA answers and translations are not labels)."""
    for outcome in outcomes:
        if not isinstance(outcome, StageResult) or outcome.label is None:
            continue
        if "scores" not in outcome.output and "spam_probability" not in outcome.output:
            return
        with _lock:
            seen = _labels.setdefault((pipeline, stage), set())
            label = outcome.label if outcome.label in seen or len(seen) < MAX_LABELS else "(other)"
            seen.add(label)
        LABELS.labels(pipeline, stage, label).inc()


def observe_skipped(pipeline: str, stage: str, count: int) -> None:
    if count:
        STAGE_SKIPPED.labels(pipeline, stage).inc(count)


def set_model_version(pipeline: str, stage: str, version: str) -> None:
    """`textworker_model_info` shows one version per stage: the old series goes when it changes."""
    if not version:
        return
    with _lock:
        old = _versions.get((pipeline, stage))
        if old == version:
            return
        _versions[(pipeline, stage)] = version
    if old is not None:
        try:
            MODEL_INFO.remove(pipeline, stage, old)
        except KeyError:
            pass
    MODEL_INFO.labels(pipeline, stage, version).set(1)


# ---------------------------------------------------------------------- chunks, sink, runs


def observe_chunk(pipeline: str, *, items: int, docs: int, letters: Iterable[DeadLetter]) -> None:
    """Record one stored chunk: input items, documents written, dead letters by stage and reason."""
    ITEMS.labels(pipeline).inc(items)
    DOCUMENTS.labels(pipeline).inc(docs)
    CHUNK_SIZE.labels(pipeline).observe(docs)
    for letter in letters:
        DEAD_LETTERS.labels(pipeline, letter.stage, letter.reason).inc()


def observe_sink(pipeline: str, seconds: float) -> None:
    """One sink write (a chunk's transaction) took `seconds`."""
    SINK_SECONDS.labels(pipeline).observe(seconds)


def run_started(pipeline: str, run_id: str) -> None:
    """A run begins: its id replaces the previous one and its latency window starts empty."""
    with _lock:
        old = _run_ids.get(pipeline)
        _run_ids[pipeline] = run_id
        for key in [k for k in _latencies if k[0] == pipeline]:
            _latencies[key].clear()
    if old is not None and old != run_id:
        try:
            RUN_INFO.remove(pipeline, old)
        except KeyError:
            pass
    RUN_INFO.labels(pipeline, run_id).set(1)
    RUN_ACTIVE.labels(pipeline).set(1)
    RUN_STARTED.labels(pipeline).set(time.time())


def run_finished(pipeline: str, status: str) -> None:
    RUN_ACTIVE.labels(pipeline).set(0)
    RUNS.labels(pipeline, status).inc()


def latency_quantiles(pipeline: str, stage: str, quantiles: Sequence[float] = (0.5, 0.95)) -> dict[str, float]:
    """Exact quantiles (ms) of the latest run's stage-call latencies, e.g. {"latency_p50_ms": 12.3, ...}."""
    with _lock:
        values = sorted(_latencies.get((pipeline, stage), ()))
    if not values:
        return {}
    out = {}
    for q in quantiles:
        index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
        out[f"latency_p{round(q * 100)}_ms"] = round(values[index] * 1000, 2)
    return out


def add_latencies(summary: Any) -> None:
    """Put each stage's p50/p95 call latency into a `RunSummary`'s stage stats (stored with the run)."""
    for name, stats in summary.stage_stats.items():
        stats.update(latency_quantiles(summary.pipeline, name))


def observe_lag(pipeline: str, group: str, lags: Mapping[tuple[str, int], int]) -> None:
    """Set the lag of every owned partition; partitions this worker no longer owns drop out."""
    with _lock:
        gone = _lag_keys.get((pipeline, group), set()) - set(lags)
        _lag_keys[(pipeline, group)] = set(lags)
    for topic, partition in gone:
        try:
            CONSUMER_LAG.remove(pipeline, group, topic, str(partition))
        except KeyError:
            pass
    for (topic, partition), lag in lags.items():
        CONSUMER_LAG.labels(pipeline, group, topic, str(partition)).set(max(0, lag))


# ---------------------------------------------------------------------- exposition


class CombinedCollector:
    """Several collectors exposed as one (this module's registry plus SQL gauges)."""

    def __init__(self, *collectors: Any) -> None:
        self.collectors = collectors

    def collect(self) -> Iterator[Metric]:
        for collector in self.collectors:
            yield from collector.collect()


def render(database_url: str | None = None) -> bytes:
    """The text exposition of this process's metrics, plus the SQL gauges of `database_url`."""
    collectors: list[Any] = [REGISTRY]
    if database_url:
        from worker.observability.sql_metrics import collector_for

        collectors.append(collector_for(database_url))
    return generate_latest(CombinedCollector(*collectors))

"""The stream's latency budget (`max_latency_ms`) and the latency bench's arithmetic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.pipeline import PipelineSpec
from worker.bench_latency import crossing, percentile
from worker.engine.stream import BatchSizer
from worker.sources.kafka import consumer_config


def test_without_a_budget_polls_take_max_batch() -> None:
    sizer = BatchSizer(256, None)
    sizer.record(100, 1.0)
    assert sizer.limit(0) == 256 and sizer.fits() is None


def test_budget_bounds_the_batch_to_what_half_of_it_processes() -> None:
    sizer = BatchSizer(256, 200)
    assert sizer.limit(0) == 256  # nothing measured yet
    sizer.record(50, 1.0)  # 20 ms per record
    assert sizer.fits() == 5  # 100 ms / 20 ms
    assert sizer.limit(0) == 5 and sizer.limit(10) == 5
    assert sizer.limit(11) == 256  # a backlog over two batches: heavy load, throughput first


def test_the_per_record_cost_follows_recent_batches() -> None:
    sizer = BatchSizer(256, 1000)
    sizer.record(10, 1.0)
    for _ in range(30):
        sizer.record(100, 1.0)  # ten times cheaper now
    assert sizer.fits() == pytest.approx(50, abs=2)
    sizer.record(0, 1.0)
    sizer.record(5, 0.0)  # nothing to learn from
    assert sizer.fits() == pytest.approx(50, abs=2)


@given(st.integers(1, 5000), st.integers(10, 600_000), st.lists(st.tuples(st.integers(0, 10_000), st.floats(0, 100)), max_size=30),
       st.integers(0, 10**6))
def test_limit_is_always_between_one_and_max_batch(max_batch: int, budget: int, batches: list[tuple[int, float]], backlog: int) -> None:
    sizer = BatchSizer(max_batch, budget)
    for records, seconds in batches:
        sizer.record(records, seconds)
    assert 1 <= sizer.limit(backlog) <= max_batch


def test_budget_is_validated_and_reaches_the_consumer() -> None:
    base = {"name": "p", "source": {"type": "kafka", "bootstrap_servers": "localhost:9092", "topics": ["t"], "group": "g"},
            "stages": [{"name": "s", "type": "spam", "model": "m"}]}
    spec = PipelineSpec.model_validate({**base, "max_latency_ms": 200})
    assert spec.max_latency_ms == 200
    with pytest.raises(ValueError):
        PipelineSpec.model_validate({**base, "max_latency_ms": 0})
    assert consumer_config(spec.source, grouped=True, fetch_wait_ms=50)["fetch_max_wait_ms"] == 50  # type: ignore[arg-type]
    assert "fetch_max_wait_ms" not in consumer_config(spec.source, grouped=True)  # type: ignore[arg-type]


def test_percentiles_interpolate_between_ranks() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile([7.0], 99) == 7.0


def test_crossing_interpolates_where_p95_passes_one_second() -> None:
    rows = [{"offered_rate": 20, "p95": 100.0}, {"offered_rate": 100, "p95": 600.0}, {"offered_rate": 140, "p95": 1400.0}]
    found = crossing(rows)
    assert found["rate"] == pytest.approx(120.0) and found["between"] == [100, 140]
    assert crossing(rows[:2])["above"] == 100 and crossing(rows[:2])["rate"] is None
    assert crossing([{"offered_rate": 50, "p95": 2000.0}])["below"] == 50

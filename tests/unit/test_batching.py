"""Unit tests for worker.stages.batching.plan_batches (token-budget batching)."""

from __future__ import annotations

import random

import pytest

from worker.stages.batching import BatchPlan, plan_batches


def lognormal_lengths(seed: int, n: int = 256, mu: float = 4.5, sigma: float = 0.8, cap: int = 512) -> list[int]:
    rng = random.Random(seed)
    return [max(1, min(cap, int(rng.lognormvariate(mu, sigma)))) for _ in range(n)]


def check_plan(plan: BatchPlan, lengths: list[int], max_tokens: int, max_batch: int) -> None:
    flat = [i for batch in plan.batches for i in batch]
    assert sorted(flat) == list(range(len(lengths))), "every index exactly once"
    assert all(batch for batch in plan.batches), "no empty batch"
    padded = 0
    for batch in plan.batches:
        width = max(max(1, lengths[i]) for i in batch)
        assert len(batch) <= max_batch
        if len(batch) > 1:
            assert width * len(batch) <= max_tokens, (width, len(batch))
        padded += width * len(batch)
    assert plan.padded_tokens == padded
    assert plan.real_tokens == sum(max(1, n) for n in lengths)
    assert plan.padded_tokens >= plan.real_tokens


def test_empty_input() -> None:
    plan = plan_batches([], max_tokens=8192, max_batch=64)
    assert plan.batches == [] and plan.real_tokens == 0 and plan.padded_tokens == 0
    assert plan.padding_waste == 0.0


def test_single_item() -> None:
    plan = plan_batches([10], max_tokens=100, max_batch=4)
    assert plan.batches == [[0]] and plan.real_tokens == 10 and plan.padded_tokens == 10


def test_equal_lengths_fill_to_budget_and_max_batch() -> None:
    plan = plan_batches([100] * 10, max_tokens=300, max_batch=64)
    check_plan(plan, [100] * 10, 300, 64)
    assert sorted(len(b) for b in plan.batches) == [1, 3, 3, 3]
    plan = plan_batches([10] * 10, max_tokens=10_000, max_batch=4)
    check_plan(plan, [10] * 10, 10_000, 4)
    assert max(len(b) for b in plan.batches) <= 4 and len(plan.batches) == 3


def test_over_long_item_goes_alone() -> None:
    lengths = [20, 10_000, 30, 25]
    plan = plan_batches(lengths, max_tokens=8192, max_batch=64)
    check_plan(plan, lengths, 8192, 64)
    assert [1] in plan.batches
    assert plan.batches[0] == [1], "longest first"


def test_zero_lengths_count_as_one() -> None:
    plan = plan_batches([0, 0, 3], max_tokens=100, max_batch=8)
    check_plan(plan, [0, 0, 3], 100, 8)
    assert plan.real_tokens == 5


def test_batches_come_longest_first() -> None:
    lengths = lognormal_lengths(7, n=100)
    plan = plan_batches(lengths, max_tokens=4096, max_batch=32)
    widths = [max(lengths[i] for i in b) for b in plan.batches]
    assert widths == sorted(widths, reverse=True)
    assert max(lengths) == widths[0]


def test_tiny_overhead_vs_big_overhead() -> None:
    lengths = [100, 90, 80, 70, 60, 50, 40, 30]
    many = plan_batches(lengths, max_tokens=10_000, max_batch=64, overhead=0)
    one = plan_batches(lengths, max_tokens=10_000, max_batch=64, overhead=100_000)
    assert many.padding_waste == 0.0 and len(many.batches) == len(lengths)
    assert len(one.batches) == 1


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize(("max_tokens", "max_batch"), [(8192, 64), (2048, 16), (600, 3), (513, 100)])
def test_random_plans_respect_limits(seed: int, max_tokens: int, max_batch: int) -> None:
    rng = random.Random(seed * 1000 + max_tokens)
    n = rng.randint(0, 300)
    lengths = [rng.choice([0, 1, 5, rng.randint(1, 2000)]) for _ in range(n)]
    plan = plan_batches(lengths, max_tokens=max_tokens, max_batch=max_batch)
    check_plan(plan, lengths, max_tokens, max_batch)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42])
def test_padding_waste_low_on_realistic_mix(seed: int) -> None:
    lengths = lognormal_lengths(seed)
    assert len(set(lengths)) > 100, "a genuinely mixed distribution"
    plan = plan_batches(lengths, max_tokens=8192, max_batch=64)
    check_plan(plan, lengths, 8192, 64)
    assert plan.padding_waste < 0.10, plan.padding_waste
    # unsorted fixed-size batching of the same input wastes far more
    naive = sum(max(lengths[i : i + 16]) * len(lengths[i : i + 16]) for i in range(0, len(lengths), 16))
    assert plan.padded_tokens < naive

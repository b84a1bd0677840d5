"""The schedule rule: cron ticks, new-label counts, and both together."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from worker.lifecycle.schedule import is_due

NOW = datetime(2026, 11, 30, 10, 30, tzinfo=UTC)
NIGHTLY = "0 3 * * *"


def test_cron_only_needs_a_tick_since_the_last_finetune_and_one_new_label() -> None:
    assert is_due(NIGHTLY, None, NOW, last=NOW - timedelta(days=1), new_labels=5).due
    waiting = is_due(NIGHTLY, None, NOW, last=NOW - timedelta(hours=2), new_labels=5)
    assert not waiting.due and "no cron tick since the last fine-tune (last tick 2026-11-30 03:00)" in waiting.why
    assert not is_due(NIGHTLY, None, NOW, last=NOW - timedelta(days=1), new_labels=0).due
    assert is_due(NIGHTLY, None, NOW, last=None, new_labels=1).due


def test_min_new_labels_only() -> None:
    assert is_due(None, 100, NOW, last=NOW - timedelta(minutes=1), new_labels=100).due
    short = is_due(None, 100, NOW, last=None, new_labels=99)
    assert not short.due and short.why == "99 new labels, waiting for 100"


def test_both_need_the_tick_and_the_labels() -> None:
    last = NOW - timedelta(days=2)
    assert is_due(NIGHTLY, 50, NOW, last, new_labels=50).due
    assert not is_due(NIGHTLY, 50, NOW, last, new_labels=49).due
    assert not is_due(NIGHTLY, 50, NOW, NOW - timedelta(hours=1), new_labels=500).due
    assert "cron tick 2026-11-30 03:00 passed, 50 new labels" == is_due(NIGHTLY, 50, NOW, last, new_labels=50).why

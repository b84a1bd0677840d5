"""Memory stays flat with input size: `textworker run` on generated JSONL files of two sizes.

The files come from `benchmarks/memory_2gb.py` (which measures a 2 GB file with the demo
pipeline): short documents that the spam model classifies, between 1 MB lines over the
source's `max_chars` that are read, refused at the source boundary and dead-lettered. A
file four times larger must not raise the peak RSS of the run (ru_maxrss of the process).
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest
import yaml

from tests.conftest import benchmark_script
from tests.integration.kafka_helpers import Db

pytestmark = [pytest.mark.slow]
MIB = 1024 * 1024


def _benchmark() -> ModuleType:
    return benchmark_script("memory_2gb")


def test_peak_rss_does_not_grow_with_the_file(models_dir: Path, tmp_path: Path) -> None:
    bench = _benchmark()
    pipeline = tmp_path / "memory.yaml"
    pipeline.write_text(yaml.safe_dump({
        "version": 1, "name": "memory", "source": {"type": "file", "path": "unused.jsonl", "max_chars": 100_000},
        "stages": [{"name": "spam", "type": "spam", "model": str(models_dir / "spam"), "max_length": 64}],
    }), encoding="utf-8")
    peaks = {}
    for megabytes in (32, 128):
        data = tmp_path / f"{megabytes}.jsonl"
        counts = bench.write_jsonl(data, megabytes * MIB, normal=100, big_line_bytes=MIB)
        database_url = f"sqlite:///{tmp_path / f'{megabytes}.db'}"
        code, peak, _seconds, tail = bench.peak_rss_run(str(pipeline), data, database_url)
        assert code == 0, tail
        db = Db(database_url)
        assert db.scalar("SELECT count(*) FROM results") == counts["normal"] == 100
        assert db.scalar("SELECT count(*) FROM dead_letters WHERE reason = 'too_large'") == counts["big"]
        db.close()
        data.unlink()
        peaks[megabytes] = peak
    grew = peaks[128] - peaks[32]
    assert grew < 48 * MIB, f"peak RSS {peaks[32] / MIB:.0f} MiB -> {peaks[128] / MIB:.0f} MiB for a 4x larger file"

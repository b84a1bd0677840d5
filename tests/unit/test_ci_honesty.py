"""CI runs every test: a missing data set or service fails there instead of skipping."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import shared_data_path


def test_missing_shared_data_skips_on_a_laptop_and_fails_in_ci(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TEXTWORKER_SHARED_DATA", str(tmp_path / "nowhere"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="shared data sets are not on this machine"):
        shared_data_path()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="required in CI"):
        shared_data_path()
    (tmp_path / "nowhere" / "docs").mkdir(parents=True)
    assert shared_data_path() == tmp_path / "nowhere"

"""What lies in a models directory: every version of every family, with its metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from worker.models import int8, loading


def list_models(models_dir: Path) -> list[dict[str, Any]]:
    """Every version of every model family under `models_dir`, with its metadata."""
    rows: list[dict[str, Any]] = []
    if not models_dir.is_dir():
        return rows
    for family in sorted(p for p in models_dir.iterdir() if p.is_dir()):
        current = loading.current_version_dir(family)
        versions = loading.family_versions(family) or ([family] if loading.is_model_dir(family) else [])
        for version in versions:
            meta = loading.read_metadata(version)
            rows.append({
                "family": family.name, "version": meta.get("version", version.name), "task": meta.get("task"),
                "current": version == current or version == family, "path": str(version),
                "base_model": meta.get("base_model"), "created_at": meta.get("created_at"),
                "metrics": meta.get("metrics") or {}, "train_seconds": meta.get("train_seconds"),
                "int8": int8.read_info(version),
            })
    return rows


def _headline(metrics: dict[str, Any]) -> str:
    keys = ("accuracy", "macro_f1", "f1", "exact_match", "bleu", "chrf")
    return " ".join(f"{k}={metrics[k]}" for k in keys if k in metrics)


def int8_summary(info: dict[str, Any] | None) -> str:
    """One cell for `models list`: the version's int8 build and its quality check."""
    if not info:
        return "-"
    quality = info.get("quality")
    if not quality:
        return "unchecked"
    if quality.get("error"):
        return "not built"
    outcome = "pass" if quality.get("passed") else "FAIL"
    where = ["held out" if quality.get("held_out", True) else "train rows"] + ([quality["kernels"]] if quality.get("kernels") else [])
    where.append(info.get("runtime") or "onnxruntime")
    return f"{outcome} {quality.get('drop', 0):+g} ({', '.join(where)})"

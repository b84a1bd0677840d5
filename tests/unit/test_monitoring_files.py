"""infra/monitoring (Prometheus scrape config, alert rules, Grafana dashboard) names only metrics textworker exposes."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

import yaml
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from schemas.documents import DeadLetter, StageResult
from worker.observability import metrics
from worker.observability.sql_metrics import SqlLifecycleCollector
from worker.sinks.sql import SqlResultSink

MONITORING = Path(__file__).resolve().parents[2] / "infra" / "monitoring"
NAME = re.compile(r"\btextworker_[a-z_]+\b")


def exposed_names(tmp_path: Path) -> set[str]:
    pipeline = f"p{uuid.uuid4().hex[:8]}"
    metrics.run_started(pipeline, "r")
    metrics.observe_labels(pipeline, "spam", [StageResult(doc_id="a", stage="spam", label="spam", output={"spam_probability": 1.0})])
    metrics.observe_stage_delta(pipeline, "spam", "spam@v0", skipped=1, docs_in=2, results=1, failed=1, seconds=0.1,
                                delta={"batches": 1, "real_tokens": 5, "padded_tokens": 8, "gpu_memory_bytes": 1024.0})
    metrics.observe_sink(pipeline, 0.01)
    metrics.observe_chunk(pipeline, items=3, docs=2, letters=[DeadLetter(ref="x", reason="empty_text")])
    metrics.observe_lag(pipeline, "g", {("t", 0): 1})
    metrics.run_finished(pipeline, "finished")
    url = f"sqlite:///{tmp_path / 'm.db'}"
    SqlResultSink(url, pipeline, "r").open().close()  # the schema, empty tables
    text = metrics.render().decode() + generate_latest(SqlLifecycleCollector(url)).decode()  # type: ignore[arg-type]
    families = list(text_string_to_metric_families(text))
    names = {s.name for family in families for s in family.samples} | {family.name for family in families}
    # GPU gauges appear only where CUDA is initialised; their names are checked against the collector's source
    source = (Path(metrics.__file__)).read_text(encoding="utf-8")
    names |= {n for n in NAME.findall(source) if n.startswith("textworker_gpu_memory_")}
    return names


def test_every_metric_the_monitoring_files_use_is_exposed(tmp_path: Path) -> None:
    names = exposed_names(tmp_path)
    used: dict[str, set[str]] = {}
    for path in MONITORING.iterdir():
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".json":
            json.loads(text)
        else:
            yaml.safe_load(text)
        for name in NAME.findall(text):
            used.setdefault(name, set()).add(path.name)
    # the scrape config's relabel regex lists SQL gauges as alternatives inside one pattern
    relabelled = set()
    for pattern in re.findall(r'regex: "textworker_\(([^)]*)\)"', (MONITORING / "prometheus.yml").read_text(encoding="utf-8")):
        relabelled |= {f"textworker_{part}" for part in pattern.split("|")}
    assert relabelled and relabelled <= names
    missing = {name: files for name, files in used.items() if name not in names and name != "textworker_"}
    assert not missing, f"not exposed by textworker: {missing}"
    assert len(used) >= 25


def test_grafana_dashboard_panels_have_queries() -> None:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text(encoding="utf-8"))
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels and all(p["targets"] and all(t["expr"] for t in p["targets"]) for p in panels)
    assert len({p["id"] for p in dashboard["panels"]}) == len(dashboard["panels"])

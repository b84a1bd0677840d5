"""The dashboard's reads of the SQL store: aggregates and pages, never whole tables.

Every query is either a GROUP BY served by an index (migration 0003 adds the ones the
time charts and pages need), a lookup in a small table (runs, model registry, events,
review queue), or a page of at most `MAX_PAGE` rows found by keyset (`id < before`),
so answering stays fast with millions of results. Numbers are exact counts.

Stage kinds (classify, spam, qa, translate) come from the pipeline file when the
dashboard has one, else from the newest result of each stage (its output's shape).
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from schemas.pipeline import PipelineSpec
from worker.sinks import tables
from worker.sinks.sql import make_engine, migrate, normalise_url
from worker.stages import STAGE_TYPES, StagePlugin
from worker.stages.plugin import clip

MAX_PAGE = 200
TOP_LABELS = 20
NICE_BUCKETS_S = (1, 5, 10, 30, 60, 300, 600, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400, 7 * 86400)
KIND_CACHE_S = 60.0
_DISTINCT_PIPELINES = sa.text(  # pipelines with results but no runs row (a loose index scan)
    "WITH RECURSIVE p(pipeline) AS ("
    " SELECT min(pipeline) FROM results"
    " UNION ALL"
    " SELECT (SELECT min(pipeline) FROM results WHERE pipeline > p.pipeline) FROM p WHERE p.pipeline IS NOT NULL"
    ") SELECT pipeline FROM p"
)
_DISTINCT_STAGES = sa.text(
    "WITH RECURSIVE s(stage) AS ("
    " SELECT min(stage) FROM results WHERE pipeline = :pipeline"
    " UNION ALL"
    " SELECT (SELECT min(stage) FROM results WHERE pipeline = :pipeline AND stage > s.stage) FROM s WHERE s.stage IS NOT NULL"
    ") SELECT stage FROM s"
)


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.isoformat(timespec="seconds")
    return str(value)


def _clip(text: Any, limit: int = 300) -> str:
    return clip(text, limit)


def bucket_for(span_s: float, buckets: int = 60) -> int:
    """A round bucket width that cuts `span_s` into about `buckets` pieces."""
    wanted = max(1.0, span_s / buckets)
    return next((b for b in NICE_BUCKETS_S if b >= wanted), NICE_BUCKETS_S[-1])


def kind_of_output(output: Any) -> str:
    """A stage's type from the shape of one of its outputs (the first plug-in that recognises it)."""
    if not isinstance(output, dict):
        return "unknown"
    return next((kind for kind, plugin in STAGE_TYPES.items() if plugin.recognise(output)), "unknown")


def _plugin(kind: str) -> StagePlugin | None:
    return STAGE_TYPES.get(kind)


class DashboardStore:
    """Read (and requeue) access to one textworker database for the dashboard."""

    def __init__(self, database_url: str, spec: PipelineSpec | None = None) -> None:
        self.url = normalise_url(database_url)
        self.spec = spec
        self._engine: Engine | None = None
        self._kinds: dict[str, tuple[float, dict[str, str]]] = {}

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            engine = make_engine(self.url)
            migrate(engine)
            self._engine = engine
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    # ------------------------------------------------------------------ pipelines and stages

    def pipelines(self) -> list[str]:
        r = tables.runs
        with self.engine.connect() as conn:
            names = [row[0] for row in conn.execute(sa.select(r.c.pipeline).group_by(r.c.pipeline).order_by(sa.func.max(r.c.started_at).desc()))]
            names += [row[0] for row in conn.execute(_DISTINCT_PIPELINES) if row[0] is not None and row[0] not in names]
        if self.spec is not None and self.spec.name not in names:
            names.insert(0, self.spec.name)
        return names

    def default_pipeline(self) -> str | None:
        if self.spec is not None:
            return self.spec.name
        names = self.pipelines()
        return names[0] if names else None

    def stages(self, conn: Connection, pipeline: str) -> dict[str, str]:
        """Stage name -> kind, in pipeline order (cached for a minute)."""
        cached = self._kinds.get(pipeline)
        if cached is not None and time.monotonic() - cached[0] < KIND_CACHE_S:
            return cached[1]
        if self.spec is not None and self.spec.name == pipeline:
            kinds: dict[str, str] = {s.name: str(s.type) for s in self.spec.stages}
        else:
            kinds = {name: self._infer_kind(conn, pipeline, name) for name in self._stage_names(conn, pipeline)}
        self._kinds[pipeline] = (time.monotonic(), kinds)
        return kinds

    def _stage_names(self, conn: Connection, pipeline: str) -> list[str]:
        """Stages with results (a loose index scan), in pipeline order.

        Every runtime writes a chunk's results stage by stage, so the order of each stage's
        first result id is the pipeline's order (the runs' JSONB summaries do not keep it).
        """
        res = tables.results
        found = [row[0] for row in conn.execute(_DISTINCT_STAGES, {"pipeline": pipeline}) if row[0] is not None]
        first = {name: conn.execute(sa.select(sa.func.min(res.c.id)).where(res.c.pipeline == pipeline, res.c.stage == name)).scalar()
                 for name in found}
        return sorted(found, key=lambda name: (first[name] is None, first[name] or 0, name))

    def _infer_kind(self, conn: Connection, pipeline: str, stage: str) -> str:
        res = tables.results
        row = conn.execute(sa.select(res.c.output).where(res.c.pipeline == pipeline, res.c.stage == stage)
                           .order_by(res.c.id.desc()).limit(1)).first()
        return kind_of_output(row[0]) if row is not None else "unknown"

    def rated_stage(self, kinds: dict[str, str]) -> tuple[str, str] | None:
        """The first stage whose type charts a label's rate (spam), with that label (from the pipeline file when known)."""
        for name, kind in kinds.items():
            plugin = _plugin(kind)
            if plugin is not None and plugin.rate_label is not None:
                spec = next((s for s in self.spec.stages if s.name == name), None) if self.spec is not None else None
                return name, str(plugin.rate_label(spec))
        return None

    # ------------------------------------------------------------------ overview, labels

    def overview(self, pipeline: str) -> dict[str, Any]:
        res, dl, runs = tables.results, tables.dead_letters, tables.runs
        with self.engine.connect() as conn:
            kinds = self.stages(conn, pipeline)
            per_stage: dict[str, int] = dict(conn.execute(sa.select(res.c.stage, sa.func.count()).where(res.c.pipeline == pipeline).group_by(res.c.stage)).all())
            letters = conn.execute(sa.select(sa.func.count(), sa.func.count(dl.c.requeued_at)).where(dl.c.pipeline == pipeline)).one()
            documents = conn.execute(sa.select(sa.func.count()).select_from(tables.documents)).scalar_one()
            last = conn.execute(sa.select(runs).where(runs.c.pipeline == pipeline).order_by(runs.c.started_at.desc()).limit(1)).first()
            run_count = conn.execute(sa.select(sa.func.count()).where(runs.c.pipeline == pipeline)).scalar_one()
            spam = self._spam_counts(conn, pipeline, kinds)
        return {
            "pipeline": pipeline, "documents": documents, "results": sum(per_stage.values()),
            "stages": [{"name": name, "kind": kind, "results": per_stage.get(name, 0)} for name, kind in kinds.items()],
            "dead_letters": letters[0], "dead_letters_requeued": letters[1], "runs": run_count,
            "last_run": _run_row(last) if last is not None else None, "spam": spam,
        }

    def _spam_counts(self, conn: Connection, pipeline: str, kinds: dict[str, str]) -> dict[str, Any] | None:
        rated = self.rated_stage(kinds)
        if rated is None:
            return None
        res = tables.results
        stage, label = rated
        total, spam = conn.execute(
            sa.select(sa.func.count(), sa.func.count().filter(res.c.label == label)).where(res.c.pipeline == pipeline, res.c.stage == stage)
        ).one()
        return {"stage": stage, "label": label, "spam": spam, "total": total, "rate": spam / total if total else 0.0}

    def labels(self, pipeline: str) -> dict[str, Any]:
        """Label counts of the classify and spam stages: the top labels, the rest as `(other)`."""
        res = tables.results
        with self.engine.connect() as conn:
            kinds = self.stages(conn, pipeline)
            wanted = [name for name, kind in kinds.items() if (plugin := _plugin(kind)) is not None and plugin.charts_labels]
            rows = conn.execute(
                sa.select(res.c.stage, res.c.label, sa.func.count()).where(res.c.pipeline == pipeline, res.c.stage.in_(wanted))
                .group_by(res.c.stage, res.c.label)
            ).all() if wanted else []
        out: dict[str, list[dict[str, Any]]] = {name: [] for name in wanted}
        for stage, label, count in rows:
            out[stage].append({"label": "(none)" if label is None else label, "count": count})
        for stage, items in out.items():
            items.sort(key=lambda item: (-item["count"], item["label"]))
            if len(items) > TOP_LABELS:
                rest = sum(item["count"] for item in items[TOP_LABELS:])
                out[stage] = [*items[:TOP_LABELS], {"label": "(other)", "count": rest}]
        return {"pipeline": pipeline, "stages": [{"name": name, "kind": kinds[name], "labels": items} for name, items in out.items()]}

    # ------------------------------------------------------------------ time series

    def _bucket(self, conn: Connection, column: Any, width: int) -> Any:
        if conn.dialect.name == "sqlite":
            epoch = sa.cast(sa.func.strftime("%s", column), sa.Integer)
            return (epoch // width) * width
        if conn.dialect.name == "postgresql":
            return sa.func.floor(sa.func.date_part("epoch", column) / width) * width  # float8: far cheaper than EXTRACT's numeric
        return sa.func.floor(sa.func.unix_timestamp(column) / width) * width

    def _window(self, conn: Connection, pipeline: str, stages: Sequence[str], window_s: float) -> tuple[datetime, datetime, int]:
        """The window ends at the newest result (or now when there is none) and spans `window_s`."""
        res = tables.results
        latest: datetime | None = None
        for stage in stages:
            value = conn.execute(sa.select(sa.func.max(res.c.updated_at)).where(res.c.pipeline == pipeline, res.c.stage == stage)).scalar()
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if value is not None:
                value = value if value.tzinfo else value.replace(tzinfo=UTC)
                latest = value if latest is None or value > latest else latest
        end = latest or datetime.now(UTC)
        width = bucket_for(window_s)
        end_epoch = math.floor(end.timestamp() / width) * width + width
        return datetime.fromtimestamp(end_epoch - window_s, UTC), datetime.fromtimestamp(end_epoch, UTC), width

    def throughput(self, pipeline: str, window_s: float) -> dict[str, Any]:
        """Results per stage per time bucket (by when each result was last written)."""
        res = tables.results
        with self.engine.connect() as conn:
            stages = list(self.stages(conn, pipeline))
            start, end, width = self._window(conn, pipeline, stages, window_s)
            bucket = self._bucket(conn, res.c.updated_at, width).label("bucket")
            series: dict[str, list[list[float]]] = {}
            for stage in stages:  # one query per stage: each is an index-only range scan, even over every row
                rows = conn.execute(sa.select(bucket, sa.func.count())
                                    .where(res.c.pipeline == pipeline, res.c.stage == stage, res.c.updated_at >= start).group_by(bucket))
                series[stage] = [[float(at), count] for at, count in rows]
        for points in series.values():
            points.sort()
        return {"pipeline": pipeline, "bucket_s": width, "start": start.timestamp(), "end": end.timestamp(), "series": series}

    def spam_rate(self, pipeline: str, window_s: float) -> dict[str, Any]:
        res = tables.results
        with self.engine.connect() as conn:
            kinds = self.stages(conn, pipeline)
            rated = self.rated_stage(kinds)
            if rated is None:
                return {"pipeline": pipeline, "stage": None, "points": []}
            stage, label = rated
            start, end, width = self._window(conn, pipeline, [stage], window_s)
            bucket = self._bucket(conn, res.c.updated_at, width).label("bucket")
            rows = conn.execute(
                sa.select(bucket, sa.func.count(), sa.func.count().filter(res.c.label == label))
                .where(res.c.pipeline == pipeline, res.c.stage == stage, res.c.updated_at >= start).group_by(bucket)
            ).all()
        points = sorted([float(at), total, spam, spam / total if total else 0.0] for at, total, spam in rows)
        return {"pipeline": pipeline, "stage": stage, "label": label, "bucket_s": width, "start": start.timestamp(),
                "end": end.timestamp(), "points": points}

    def runs(self, pipeline: str, limit: int = 50) -> dict[str, Any]:
        """The newest runs with their summaries (docs/s, per-stage latency p50/p95, model versions)."""
        r = tables.runs
        with self.engine.connect() as conn:
            rows = conn.execute(sa.select(r).where(r.c.pipeline == pipeline).order_by(r.c.started_at.desc()).limit(min(limit, MAX_PAGE))).all()
        return {"pipeline": pipeline, "runs": [_run_row(row) for row in rows]}

    # ------------------------------------------------------------------ pages

    def samples(self, pipeline: str, stage: str, before: int | None, limit: int) -> dict[str, Any]:
        """Newest results of one stage with a clip of their document's text."""
        res, docs = tables.results, tables.documents
        query = (sa.select(res.c.id, res.c.doc_id, res.c.label, res.c.score, res.c.output, res.c.model_version, res.c.updated_at,
                           sa.func.substr(docs.c.text, 1, 400).label("text"))
                 .select_from(res.outerjoin(docs, (docs.c.pipeline == res.c.pipeline) & (docs.c.doc_id == res.c.doc_id)))
                 .where(res.c.pipeline == pipeline, res.c.stage == stage).order_by(res.c.id.desc()).limit(_page(limit)))
        if before is not None:
            query = query.where(res.c.id < before)
        with self.engine.connect() as conn:
            kind = self.stages(conn, pipeline).get(stage, "unknown")
            rows = conn.execute(query).all()
        items = [{
            "id": row.id, "doc_id": row.doc_id, "label": row.label, "score": row.score, "model_version": row.model_version,
            "updated_at": _iso(row.updated_at), "text": _clip(row.text), **_sample_output(kind, row.output),
        } for row in rows]
        return {"pipeline": pipeline, "stage": stage, "kind": kind, "items": items, "next_before": items[-1]["id"] if len(items) == _page(limit) else None}

    def dead_letter_reasons(self, pipeline: str) -> dict[str, Any]:
        dl = tables.dead_letters
        with self.engine.connect() as conn:
            rows = conn.execute(
                sa.select(dl.c.reason, dl.c.stage, sa.func.count(), sa.func.count(dl.c.requeued_at))
                .where(dl.c.pipeline == pipeline).group_by(dl.c.reason, dl.c.stage)
            ).all()
        reasons = [{"reason": reason, "stage": stage, "count": count, "requeued": requeued} for reason, stage, count, requeued in rows]
        reasons.sort(key=lambda item: (-item["count"], item["reason"], item["stage"]))
        return {"pipeline": pipeline, "reasons": reasons}

    def dead_letters(self, pipeline: str, *, reason: str | None, status: str, before: int | None, limit: int) -> dict[str, Any]:
        """A newest-first page of dead letters; `status` is all, pending or requeued."""
        dl = tables.dead_letters
        query = sa.select(dl).where(dl.c.pipeline == pipeline).order_by(dl.c.id.desc()).limit(_page(limit))
        if reason:
            query = query.where(dl.c.reason == reason)
        if status == "pending":
            query = query.where(dl.c.requeued_at.is_(None))
        elif status == "requeued":
            query = query.where(dl.c.requeued_at.is_not(None))
        if before is not None:
            query = query.where(dl.c.id < before)
        with self.engine.connect() as conn:
            rows = conn.execute(query).all()
        items = [{
            "id": row.id, "ref": row.ref, "stage": row.stage, "reason": row.reason, "detail": _clip(row.detail),
            "payload": _clip(row.payload), "run_id": row.run_id, "created_at": _iso(row.created_at),
            "updated_at": _iso(row.updated_at), "requeued_at": _iso(row.requeued_at),
        } for row in rows]
        return {"pipeline": pipeline, "items": items, "next_before": items[-1]["id"] if len(items) == _page(limit) else None}

    def requeue(self, pipeline: str, *, ids: Sequence[int] = (), reason: str | None = None, stage: str | None = None) -> int:
        """Mark dead letters for requeue (by id, or every pending one with `reason`); returns how many.

        `textworker requeue PIPELINE` then sends them through the stages again (see
        `worker.dashboard.requeue`).
        """
        dl = tables.dead_letters
        where = [dl.c.pipeline == pipeline, dl.c.requeued_at.is_(None)]
        if ids:
            where.append(dl.c.id.in_([int(i) for i in ids][:10_000]))
        elif reason:
            where.append(dl.c.reason == reason)
            if stage:
                where.append(dl.c.stage == stage)
        else:
            return 0
        with self.engine.begin() as conn:
            return int(conn.execute(dl.update().where(*where).values(requeued_at=datetime.now(UTC))).rowcount or 0)

    # ------------------------------------------------------------------ models, feedback

    def models(self, name: str | None = None, events_limit: int = 100) -> dict[str, Any]:
        """Registered versions with their metrics, and the newest lifecycle events (promotion history)."""
        reg, ev = tables.model_registry, tables.model_events
        versions_q = sa.select(reg).order_by(reg.c.name, reg.c.created_at, reg.c.id)
        events_q = sa.select(ev).order_by(ev.c.id.desc()).limit(_page(events_limit))
        if name:
            versions_q, events_q = versions_q.where(reg.c.name == name), events_q.where(ev.c.name == name)
        refs = tables.model_reference_sets
        refs_q = sa.select(refs.c.name, refs.c.version, refs.c.manifest).order_by(refs.c.id)
        gate_q = (sa.select(ev.c.name, ev.c.version, ev.c.details).where(ev.c.action.in_(("promote", "reject")))
                  .order_by(ev.c.id))
        if name:
            refs_q, gate_q = refs_q.where(refs.c.name == name), gate_q.where(ev.c.name == name)
        with self.engine.connect() as conn:
            versions = [{
                "name": row.name, "version": row.version, "stage": row.stage, "task": row.task, "status": row.status,
                "reason": row.reason, "parent_version": row.parent_version, "metrics": row.metrics or {},
                "target_metrics": _headline_metrics(row.metrics or {}), "reference_metrics": _reference_metrics(row.metrics or {}),
                "created_at": _iso(row.created_at), "updated_at": _iso(row.updated_at),
            } for row in conn.execute(versions_q)]
            events = [{
                "id": row.id, "name": row.name, "version": row.version, "action": row.action, "reason": row.reason,
                "details": row.details or {}, "created_at": _iso(row.created_at),
            } for row in conn.execute(events_q)]
            sets: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for row in conn.execute(refs_q):
                m = row.manifest or {}
                sets.setdefault((row.name, row.version), []).append(
                    {k: m.get(k) for k in ("name", "role", "rows", "sha256", "origin", "task")})
            gates: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for row in conn.execute(gate_q):  # the newest gate decision of each version wins
                lines = ((row.details or {}).get("gate") or {}).get("sets")
                if isinstance(lines, list):
                    gates[(row.name, row.version)] = lines
        for version in versions:
            key = (version["name"], version["version"])
            version["reference_sets"] = sets.get(key, [])
            version["gate_sets"] = gates.get(key, [])
        return {"versions": versions, "events": events}

    def feedback(self, pipeline: str) -> dict[str, Any]:
        fb, rq = tables.feedback, tables.review_queue
        with self.engine.connect() as conn:
            feedback = conn.execute(sa.select(fb.c.stage, fb.c.source, sa.func.count()).where(fb.c.pipeline == pipeline)
                                    .group_by(fb.c.stage, fb.c.source)).all()
            review = conn.execute(sa.select(rq.c.stage, rq.c.status, sa.func.count()).where(rq.c.pipeline == pipeline)
                                  .group_by(rq.c.stage, rq.c.status)).all()
        return {
            "pipeline": pipeline,
            "feedback": [{"stage": s, "source": src, "count": c} for s, src, c in sorted(feedback)],
            "review": [{"stage": s, "status": st, "count": c} for s, st, c in sorted(review)],
        }


def _headline_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """A version's target metrics: a fine-tuned version's `eval.all` (flattened per label), else the stored figures."""
    found = metrics.get("eval", {}).get("all") if isinstance(metrics.get("eval"), dict) else None
    if not isinstance(found, dict):
        return metrics
    flat = {k: v for k, v in found.items() if not isinstance(v, dict)}
    for label, scores in (found.get("per_label") or {}).items():
        flat[f"f1_{label}"] = scores.get("f1")
    return flat


def _reference_metrics(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per reference set, the version's figures on it (what the gate measured): {set: {metric: value}}."""
    found_eval = metrics.get("eval")
    scored: dict[str, Any] = found_eval if isinstance(found_eval, dict) else {}
    out: dict[str, dict[str, Any]] = {}
    for key, found in scored.items():
        if key.startswith("ref:") and isinstance(found, dict):
            values = {k: v for k, v in found.items() if not isinstance(v, dict)}
            for label, scores in (found.get("per_label") or {}).items():
                values[f"f1_{label}"] = scores.get("f1")
            out[key[4:]] = values
    return out


def _page(limit: int) -> int:
    return max(1, min(int(limit), MAX_PAGE))


def _run_row(row: Any) -> dict[str, Any]:
    stats = row.stats or {}
    stages: dict[str, Any] = stats["stages"] if isinstance(stats.get("stages"), dict) else {}
    return {
        "run_id": row.run_id, "status": row.status, "started_at": _iso(row.started_at), "finished_at": _iso(row.finished_at),
        "docs": stats.get("docs"), "dead_letters": stats.get("dead_letters"), "seconds": stats.get("seconds"),
        "docs_per_s": stats.get("docs_per_s"),
        "stages": {name: {k: st.get(k) for k in ("results", "failed", "model_version", "tokens_per_s", "padding_waste", "latency_p50_ms", "latency_p95_ms")}
                   for name, st in stages.items()},
    }


def _sample_output(kind: str, output: Any) -> dict[str, Any]:
    """The fields the stage type shows beside a sample (its plug-in's `sample`)."""
    plugin = _plugin(kind)
    return plugin.sample(output) if plugin is not None and isinstance(output, dict) else {}


def window_seconds(text: str | None, default_s: float = 86400.0) -> float:
    """`1h`, `24h`, `7d`, `30m`, or plain seconds -> seconds (1 minute to 400 days).

    Raises ValueError for anything else (`nan`, `inf`, `-1h`, `soon`), which the API answers with 422.
    """
    if not text:
        return default_s
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    number, unit = (text[:-1], units[text[-1]]) if text[-1] in units else (text, 1)
    try:
        value = float(number) * unit
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"window `{text[:40]}` is not a positive duration: use e.g. 90m, 24h or 7d")
    return min(max(value, 60.0), timedelta(days=400).total_seconds())

"""A readable report of what a pipeline run stored: counts, labels, samples, dead letters."""

from __future__ import annotations

import sqlalchemy as sa

from worker.sinks import tables
from worker.sinks.sql import make_engine, normalise_url


def _clip(text: str | None, width: int = 70) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


def print_report(url: str, pipeline: str, samples: int = 3) -> None:
    from worker.config import hide_password

    engine = make_engine(normalise_url(url))
    r, d, dl = tables.results, tables.documents, tables.dead_letters
    with engine.connect() as conn:
        print(f"\nWhat the database ({hide_password(url)}) now holds for pipeline `{pipeline}`:")
        counts = conn.execute(sa.select(r.c.stage, r.c.label, sa.func.count()).where(r.c.pipeline == pipeline)
                              .group_by(r.c.stage, r.c.label).order_by(r.c.stage)).all()
        by_stage: dict[str, list[str]] = {}
        for stage, label, n in counts:
            by_stage.setdefault(stage, []).append(f"{label}={n}")
        for stage, parts in by_stage.items():
            shown = parts if stage != "qa" and stage != "translate" else [f"{sum(int(p.rsplit('=', 1)[1]) for p in parts)} rows"]
            print(f"  {stage:<10} {', '.join(shown)}")
        for stage in ("sentiment", "spam"):
            rows = conn.execute(sa.select(r.c.label, r.c.score, d.c.text).join(d, (d.c.pipeline == r.c.pipeline) & (d.c.doc_id == r.c.doc_id))
                                .where(r.c.pipeline == pipeline, r.c.stage == stage).order_by(r.c.score.desc()).limit(samples)).all()
            for label, score, text in rows:
                print(f"  [{stage} {label} {score:.2f}] {_clip(text)}")
        qa_rows = conn.execute(sa.select(r.c.output, r.c.doc_id).where(r.c.pipeline == pipeline, r.c.stage == "qa")
                            .order_by(r.c.score.desc()).limit(samples)).all()
        for output, doc_id in qa_rows:
            for answer in output.get("answers", [])[-1:]:
                print(f"  [qa {doc_id}] Q: {_clip(answer['question'], 50)}  A: {_clip(answer['answer'], 40)} ({answer['score']:.2f})")
        tr_rows = conn.execute(sa.select(r.c.output, d.c.text).join(d, (d.c.pipeline == r.c.pipeline) & (d.c.doc_id == r.c.doc_id))
                            .where(r.c.pipeline == pipeline, r.c.stage == "translate").order_by(d.c.chars).limit(samples)).all()
        for output, text in tr_rows:
            print(f"  [translate] {_clip(text, 45)}  ->  {_clip(output.get('translation'), 45)}")
        letters = conn.execute(sa.select(dl.c.ref, dl.c.stage, dl.c.reason, dl.c.detail).where(dl.c.pipeline == pipeline).order_by(dl.c.id)).all()
        print(f"  dead letters: {len(letters)}")
        for ref, stage, reason, detail in letters[:12]:
            print(f"    {_clip(ref, 48):<48} {stage:<9} {reason:<20} {_clip(detail, 50)}")
    engine.dispose()

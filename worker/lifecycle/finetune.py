"""Fine-tune a stage's champion on its labelled feedback, then let the gate decide.

One call of `finetune()`:

1. the registry's champion for the stage's model family (bootstrapped from the
   family's on-disk `current` version when the family has no rows yet);
2. the stage's feedback, split for good by each row's fingerprint: a row whose
   sha256 falls below `holdout` is held out for the gate, every time, so no row is
   trained on in one round and judged on in the next;
3. training rows = the rest, plus replay against forgetting: `base_mix` x as many rows
   sampled (with `seed`) from the champion's known training data (`base_data` when set,
   else the file its version records, checked against its fingerprint, else its `train`
   reference snapshot; `worker.lifecycle.references.replay_source`). Rows of the
   champion's `eval`/`heldout` reference sets are never replayed. The data fingerprint
   is the sha256 of the sorted row fingerprints;
4. a Ray task (one GPU when the cluster has one, else the free CPUs) trains the
   candidate from the champion with the existing `worker.training` code and scores
   candidate and champion on the same rows: the target (frozen `eval_data` plus the
   held-out slice) and every reference set of the champion (`worker.lifecycle.evaluation`);
5. the candidate is registered with its reference sets (the champion's, inherited, plus
   its own target data), and `worker.lifecycle.gate` promotes it or rejects it with the
   reason, one line per reference set. When the candidate improves the target but fails
   the reference guard, and replay is on, ONE more candidate is trained with twice the
   replay (`finetune.retry`) before the fine-tune gives up. Promotion changes the
   registry; the on-disk `current` pointer moves only with `finetune.move_pointer`.
   Running stages against this database switch at their next batch boundary.

Crash safety: the candidate's directory is complete before it is registered; a failed or
cancelled training removes it, and a crash before registration leaves at most an
unregistered directory and no registry change.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.pipeline import FinetuneSpec, PipelineSpec
from worker.errors import DataFileError, TextworkerError
from worker.lifecycle import gate, precision, references
from worker.lifecycle.feedback import StoredFeedback, load_feedback, stage_labels
from worker.lifecycle.registry import ModelRecord, ModelRegistry, family_dir
from worker.models import loading
from worker.stages import plugin_for

log = logging.getLogger(__name__)
REF_PREFIX = "ref:"
StageSpec = Any  # a stage spec of any registered type


class FinetuneInterrupted(TextworkerError):
    """A stop was requested while the fine-tune ran; nothing was registered."""

    code = "TW502"


@dataclass
class FinetuneOptions:
    """Command-line overrides of the stage's `finetune:` block."""

    epochs: float | None = None
    max_minutes: float | None = None
    seed: int | None = None
    base_data: str | None = None
    ray_address: str | None = None


@dataclass
class FinetuneResult:
    candidate: str | None
    promoted: bool
    reason: str
    metrics: dict[str, Any] = field(default_factory=dict)
    model: str = ""
    champion: str | None = None
    train: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    references: list[dict[str, Any]] = field(default_factory=list)
    attempts: list[dict[str, Any]] = field(default_factory=list)
    int8: dict[str, Any] | None = None  # the promoted version's int8 check (worker.lifecycle.precision), when it has one

    def as_dict(self) -> dict[str, Any]:
        return {"candidate": self.candidate, "promoted": self.promoted, "reason": self.reason, "metrics": self.metrics,
                "model": self.model, "champion": self.champion, "train": self.train, "seconds": self.seconds,
                "references": self.references, "attempts": self.attempts, "int8": self.int8}


# --------------------------------------------------------------------------- data


def row_hash(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def is_held_out(fingerprint: str, holdout: float) -> bool:
    """Stable split: the first 8 hex digits of the row's sha256, as a fraction of 16**8."""
    return int(fingerprint[:8], 16) / 16**8 < holdout


def data_fingerprint(fingerprints: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(fingerprints)).encode("ascii")).hexdigest()


def feedback_example(stage: StageSpec, row: StoredFeedback) -> Any:
    """A feedback row in the shape the stage type's training and scoring code takes."""
    plugin = plugin_for(stage.type)
    if plugin.feedback_example is None:
        raise TextworkerError(f"a {stage.type} stage takes no labelled feedback")
    return plugin.feedback_example(stage, row)


def read_examples(stage: StageSpec, path: str, labels: list[str] | None) -> list[Any]:
    """Examples of a data file (the `train --data` formats)."""
    if not Path(path).is_file():
        raise DataFileError(f"data file `{path}` does not exist", hint="fix the path in the stage's `finetune:` block")
    return references.read_examples(stage.type, path, stage, labels)


@dataclass
class TrainingData:
    train: list[Any]
    heldout: list[Any]
    frozen: list[Any]
    fingerprint: str
    counts: dict[str, int]
    replay_from: str | None = None


def prepare_data(stage: StageSpec, rows: list[StoredFeedback], cfg: FinetuneSpec, labels: list[str] | None,
                 base_data: str | list[Any] | None, seed: int, *, mix: float | None = None,
                 exclude: set[str] | None = None) -> TrainingData:
    """Split the feedback, add `mix` (default `cfg.base_mix`) replay rows per training row from `base_data`
    (a file or examples), never one whose `row_hash` is in `exclude`."""
    mix = cfg.base_mix if mix is None else mix
    train_rows = [r for r in rows if not is_held_out(r.fingerprint, cfg.holdout)]
    heldout = [feedback_example(stage, r) for r in rows if is_held_out(r.fingerprint, cfg.holdout)]
    train = [feedback_example(stage, r) for r in train_rows]
    fingerprints = [r.fingerprint for r in train_rows]
    base: list[Any] = []
    if base_data and mix > 0 and train:
        pool = read_examples(stage, base_data, labels) if isinstance(base_data, str) else list(base_data)
        if exclude:
            pool = [example for example in pool if row_hash(example) not in exclude]
        base = random.Random(seed).sample(pool, min(len(pool), round(mix * len(train))))
        fingerprints += [row_hash(example) for example in base]
    frozen = read_examples(stage, cfg.eval_data, labels) if cfg.eval_data else []
    combined = train + base
    random.Random(seed).shuffle(combined)
    counts = {"feedback": len(rows), "train_feedback": len(train), "base": len(base), "heldout": len(heldout), "frozen_eval": len(frozen)}
    return TrainingData(combined, heldout, frozen, data_fingerprint(fingerprints), counts)


# --------------------------------------------------------------------------- the Ray task


def train_and_score(job: dict[str, Any]) -> dict[str, Any]:
    """Runs in a Ray worker: train the candidate into `job["out"]`, score it and the champion on the same sets."""
    from pydantic import TypeAdapter

    from schemas.pipeline import StageSpec as StageUnion
    from worker.lifecycle.evaluation import score_model

    stage: StageSpec = TypeAdapter(StageUnion).validate_python(job["stage"])
    started = time.perf_counter()
    info = _train(stage, job)
    info["train_seconds"] = round(time.perf_counter() - started, 1)
    sets = {"frozen": job["frozen"], "heldout": job["heldout"],
            **{REF_PREFIX + name: rows for name, rows in (job.get("references") or {}).items()}}
    labels = job.get("labels")
    champion = job.get("champion_scores") or score_model(stage, job["base"], sets, labels)
    return {"train": info, "candidate": score_model(stage, job["out"], sets, labels), "champion": champion}


def _train(stage: StageSpec, job: dict[str, Any]) -> dict[str, Any]:
    return plugin_for(stage.type).load_trainer().train(stage, job["train"], job["out"], base=job["base"], labels=job["labels"],
                                                       **job["params"])


def run_on_ray(job: dict[str, Any], *, address: str | None, stop: threading.Event | None) -> dict[str, Any]:
    """`train_and_score(job)` as a Ray task; a set `stop` cancels it and raises FinetuneInterrupted."""
    import ray

    from worker.engine.executors.ray import ensure_ray

    ensure_ray(address)
    total, free = ray.cluster_resources(), ray.available_resources()
    gpus = 1 if total.get("GPU", 0) >= 1 else 0
    cpus = max(1, min(int(free.get("CPU", 1)), int(total.get("CPU", 1))))
    task = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(train_and_score)
    ref = task.remote(job)
    log.info("fine-tune task submitted", extra={"cpus": cpus, "gpus": gpus})
    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        if ready:
            try:
                done: dict[str, Any] = ray.get(ref)
                return done
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else exc
                raise TextworkerError(f"fine-tuning failed: {type(cause).__name__}: {str(cause)[:500]}") from exc
        if stop is not None and stop.is_set():
            ray.cancel(ref, force=True)
            raise FinetuneInterrupted("stopped while fine-tuning; no candidate was registered")


# --------------------------------------------------------------------------- the whole step


def _model_labels(champion_dir: str, labels: list[str] | None) -> list[str] | None:
    """The champion head's label order when it holds the same labels (so its head is kept as is)."""
    ordered = loading.config_labels(champion_dir)
    if ordered is None:
        return labels
    return ordered if labels is None or set(ordered) == set(labels) else labels


def _new_version(registry: ModelRegistry, name: str, family: Path) -> str:
    stamp = "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    version, n = stamp, 1
    while (family / version).exists() or registry.get(name, version) is not None:
        n += 1
        version = f"{stamp}-{n}"
    return version


def _params(stage: StageSpec, cfg: FinetuneSpec, options: FinetuneOptions, seed: int) -> dict[str, Any]:
    return {"epochs": options.epochs if options.epochs is not None else cfg.epochs, "lr": cfg.lr, "batch_size": cfg.batch_size,
            "max_length": cfg.max_length, "max_minutes": options.max_minutes if options.max_minutes is not None else cfg.max_minutes,
            "seed": seed}


@dataclass
class ChampionReferences:
    """The champion's reference sets of the stage's task, with their rows (from its directory, else the registry)."""

    sets: list[references.ReferenceSet]
    rows: dict[str, list[Any]]
    skipped: list[str]

    def guarded_hashes(self) -> set[str]:
        """Rows of evaluation sets, which replay must never train on."""
        return {row_hash(example) for ref in self.sets if ref.role != "train" for example in self.rows[ref.name]}


def champion_references(registry: ModelRegistry, champ: ModelRecord, task: str) -> ChampionReferences:
    found = references.manifest(champ.artifact_path)
    rows: dict[str, list[Any]] = {}
    sets, skipped = [], []
    stored = {entry["name"]: entry for entry in registry.references(champ.name, champ.version, with_rows=True)}
    if not found:
        found = [references.ReferenceSet.from_dict(entry) for entry in stored.values()]
    for ref in found:
        if ref.task != task:
            skipped.append(ref.name)
            continue
        try:
            rows[ref.name] = references.load_rows(champ.artifact_path, ref)
        except references.ReferenceError:
            if ref.name not in stored:
                raise
            rows[ref.name] = references.decode_rows(ref.task, stored[ref.name]["rows_data"])
        sets.append(ref)
    return ChampionReferences(sets, rows, skipped)


def _replay_pool(stage: StageSpec, champ: ModelRecord, cfg: FinetuneSpec, options: FinetuneOptions,
                 labels: list[str] | None) -> tuple[str | list[Any] | None, str | None]:
    """(what to replay, where it came from): `base_data` when set, else the champion's known training data."""
    explicit = options.base_data or cfg.base_data
    if explicit:
        return explicit, explicit
    source = references.replay_source(champ.artifact_path, stage.type, stage, labels)
    if source is None:
        return None, None
    return source.examples, f"{source.origin}:{source.where}"


def finetune(spec: PipelineSpec, stage_name: str, registry: ModelRegistry, options: FinetuneOptions | None = None,
             stop: threading.Event | None = None) -> FinetuneResult:
    """Train, score, register and gate a candidate for `stage_name` (see the module docstring)."""
    options = options or FinetuneOptions()
    started = time.perf_counter()
    started_at = datetime.now(UTC)
    stage = spec.stage(stage_name)
    cfg = stage.finetune or FinetuneSpec()
    champ = registry.bootstrap(stage, spec.name)
    seed = options.seed if options.seed is not None else cfg.seed
    labels = _model_labels(champ.artifact_path, stage_labels(stage)) if plugin_for(stage.type).label_set else None
    rows = load_feedback(registry.engine, spec.name, stage.name)
    refs = champion_references(registry, champ, stage.type)
    pool, replay_from = _replay_pool(stage, champ, cfg, options, labels)
    exclude = refs.guarded_hashes()
    data = prepare_data(stage, rows, cfg, labels, pool, seed, exclude=exclude)
    data.replay_from = replay_from
    result = FinetuneResult(None, False, "", model=champ.name, champion=champ.version)
    result.references = [{"name": r.name, "role": r.role, "rows": r.rows, "sha256": r.sha256, "origin": r.origin}
                         for r in refs.sets] + [{"name": n, "skipped": "another task"} for n in refs.skipped]
    if data.counts["train_feedback"] < cfg.min_rows:
        result.reason = f"{data.counts['train_feedback']} feedback rows to train on, fewer than min_rows {cfg.min_rows}; nothing trained"
        return result
    if not data.frozen and not data.heldout:
        result.reason = "no evaluation rows: declare `finetune.eval_data` or collect more feedback; nothing trained"
        return result
    rules = gate.rules_for(stage)
    family = family_dir(stage.model)
    assert family is not None
    mix = cfg.base_mix if pool is not None else 0.0
    champion_scores: dict[str, Any] | None = None
    for attempt in (1, 2):
        version = _new_version(registry, champ.name, family)
        out = family / version
        params = _params(stage, cfg, options, seed)
        job = {"stage": stage.model_dump(mode="json", by_alias=True), "out": str(out), "base": champ.artifact_path,
               "labels": labels, "params": params, "train": data.train, "heldout": data.heldout, "frozen": data.frozen,
               "references": refs.rows if rules.references else {}, "champion_scores": champion_scores}
        try:
            scored = run_on_ray(job, address=options.ray_address, stop=stop)
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            raise
        champion_scores = scored["champion"]
        params["started_at"] = started_at.isoformat()
        params["replay"] = {"mix": mix, "rows": data.counts["base"], "from": data.replay_from, "attempt": attempt}
        record = _register(registry, spec, stage, champ, version, out, data, params, scored)
        decision = gate.decide_with_references(
            scored["candidate"].get("all", {}), scored["champion"].get("all", {}),
            [(r.name, r.role, scored["candidate"].get(REF_PREFIX + r.name, {}), scored["champion"].get(REF_PREFIX + r.name, {}))
             for r in refs.sets], rules)
        details = {"gate": decision.as_dict(), "candidate": scored["candidate"], "champion": scored["champion"], "attempt": attempt}
        retry = (attempt == 1 and not decision.promote and decision.target_ok is True and decision.guard_ok is False
                 and cfg.retry and mix > 0 and pool is not None)
        more: TrainingData | None = None
        if retry:  # only when twice the replay really adds rows (a small training set may be used up already)
            more = prepare_data(stage, rows, cfg, labels, pool, seed, mix=mix * 2, exclude=exclude)
            if more.counts["base"] <= data.counts["base"]:
                retry = False
                decision = replace(decision, reason=decision.reason + f"; no retry: all {data.counts['base']} replay rows are used already")
                details["gate"] = decision.as_dict()
        if decision.promote:
            result.int8 = precision.check_quietly(stage, out, labels=labels)  # before promotion: a hot swap reads its verdict
            registry.promote(record.name, version, f"gate passed: {decision.reason}", details, move_pointer=cfg.move_pointer)
        else:
            registry.reject(record.name, version, f"gate: {decision.reason}" + ("; retrying with more replay" if retry else ""),
                            details)
        result.attempts.append({"candidate": version, "promoted": decision.promote, "reason": decision.reason,
                                "replay": params["replay"], "gate": decision.as_dict()})
        result.candidate, result.promoted, result.reason = version, decision.promote, decision.reason
        result.metrics = {"candidate": scored["candidate"], "champion": scored["champion"], "gate": decision.as_dict()}
        result.train = {**scored["train"], "rows": data.counts, "data_fingerprint": data.fingerprint,
                        "replay": params["replay"]}
        log.info("fine-tune decided", extra={"model": record.name, "candidate": version, "promoted": decision.promote,
                                             "reason": decision.reason, "attempt": attempt})
        if not retry or more is None:
            break
        mix, data = mix * 2, more
        data.replay_from = replay_from
    result.seconds = round(time.perf_counter() - started, 1)
    return result


def _register(registry: ModelRegistry, spec: PipelineSpec, stage: StageSpec, champ: ModelRecord, version: str, out: Path,
              data: TrainingData, params: dict[str, Any], scored: dict[str, Any]) -> ModelRecord:
    """Write the candidate's textworker.json and reference sets, then add it to the registry as a candidate."""
    cfg = stage.finetune or FinetuneSpec()
    meta_name = str(loading.read_metadata(champ.artifact_path).get("name") or champ.name)
    train = scored["train"]
    meta = {"name": meta_name, "version": version, "task": stage.type, "base_model": champ.artifact_path,
            "parent_version": champ.version, "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "train_data": {"source": "feedback", "rows": data.counts, "sha256": data.fingerprint},
            "replay_data": references.replay_record(champ.artifact_path),
            **{k: v for k, v in train.items() if k != "metrics"}, "metrics": scored["candidate"].get("all", {}),
            "reference_metrics": {k[len(REF_PREFIX):]: v for k, v in scored["candidate"].items() if k.startswith(REF_PREFIX)}}
    loading.write_metadata(out, meta)
    references.record_version(out, task=stage.type, version=version, parent_dir=champ.artifact_path, seed=params["seed"],
                              evals=[("eval", cfg.eval_data or "", data.frozen), ("heldout", "feedback held-out slice", data.heldout)])
    train_config = {"model_version": f"{meta_name}@{version}", "seed": params["seed"], "started_at": params.pop("started_at"),
                    "params": params,
                    "split": {"method": "sha256(row) prefix < holdout", "holdout": cfg.holdout},
                    "base_mix": cfg.base_mix, "replay": params.get("replay"), "rows": data.counts,
                    "steps": train.get("steps"), "train_seconds": train.get("train_seconds"), "device": train.get("device")}
    record = registry.register(
        name=champ.name, version=version, stage=stage.name, task=stage.type, artifact_path=out, pipeline=spec.name,
        base_model=champ.artifact_path, parent_version=champ.version, data_fingerprint=data.fingerprint,
        train_config=train_config, metrics={"eval": scored["candidate"], "champion_eval": scored["champion"]},
        reason="fine-tuned from feedback",
    )
    registry.save_references(champ.name, version, out)
    return record

"""Reference sets: fingerprinted, bounded, stratified snapshots of evaluation data that travel with model versions.

Every version that `make models`, `train`, `finetune` or `pretrain` writes records the
data it was measured on as one or more reference sets:

- a set is a sample of at most `MAX_ROWS` rows, stratified by label for classify/spam
  stages (every label keeps at least `MIN_PER_STRATUM` rows when it has them), a plain
  seeded sample for the other stage types;
- it is written to `<version>/references/<name>.jsonl` (one example per line, in a fixed
  order) and listed in the version's `textworker.json` under `references`, each entry with
  the sha256 of that file (its fingerprint), its row count, its role and its origin;
- the registry keeps a copy of each set, rows included (`model_reference_sets`), so a set
  survives a version directory that was moved or pruned;
- a version inherits its parent's sets (copied into its own directory) and adds its own;
  a set whose fingerprint is already there is not added twice.

Roles: `eval` (a frozen evaluation file), `heldout` (the held-out feedback slice a
fine-tune was judged on), `train` (a sample of the training data: what the version
learnt; it doubles as the replay source when the training file is gone). The gate
(`worker.lifecycle.gate.guard`) checks a candidate against every set of the champion.

Per-stage-type behaviour (how to read a data file, how to stratify, how an example is
written and read back) is the stage type's trainer (`StagePlugin.trainer`); `kind(task)`
finds it.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from worker.errors import DataFileError, TextworkerError
from worker.models import loading

MAX_ROWS = 2000
MIN_PER_STRATUM = 50
REFERENCE_DIR = "references"
ROLES = ("eval", "heldout", "train")


class ReferenceError(TextworkerError):
    """A reference set that cannot be read or whose rows no longer match its fingerprint."""

    code = "TW503"


# --------------------------------------------------------------------------- per stage type


def _read_texts(path: str, stage: Any, labels: Sequence[str] | None) -> list[Any]:
    from worker.training.data import read_texts

    return list(read_texts(Path(path)))


@dataclass(frozen=True)
class Kind:
    """How one task reads, stratifies, writes and reads back its examples (a stage type's trainer does the same)."""

    read: Callable[[str, Any, Sequence[str] | None], list[Any]]
    stratum: Callable[[Any], str]
    encode: Callable[[Any], dict[str, Any]]
    decode: Callable[[dict[str, Any]], Any]


MLM = Kind(_read_texts, lambda ex: "all", lambda ex: {"text": ex}, lambda row: row["text"])  # a pretrained encoder's sets


def known(task: str) -> bool:
    """A task with reference-set support: a stage type that has a trainer, or `mlm`."""
    from worker.stages import STAGE_TYPES

    return task == "mlm" or (task in STAGE_TYPES and STAGE_TYPES[task].trainer is not None)


def kind(task: str) -> Any:
    """The task's example I/O: its stage type's trainer, or the MLM kind."""
    if not known(task):
        raise ReferenceError(f"no reference-set support for task `{task}`")
    if task == "mlm":
        return MLM
    from worker.stages import plugin_for

    return plugin_for(task).load_trainer()


def read_examples(task: str, path: str, stage: Any = None, labels: Sequence[str] | None = None) -> list[Any]:
    """The examples of a data file in the shape the task's training and scoring code takes."""
    if not Path(path).is_file():
        raise DataFileError(f"data file `{path}` does not exist")
    try:
        return kind(task).read(path, stage, labels)
    except ValueError as exc:
        raise DataFileError(f"cannot read `{path}`: {exc}") from exc


# --------------------------------------------------------------------------- sets


@dataclass(frozen=True)
class ReferenceSet:
    """One manifest entry (`textworker.json` -> `references`)."""

    name: str
    task: str
    role: str
    origin: str  # the version that first recorded it
    rows: int
    sha256: str
    file: str
    source: dict[str, Any] = field(default_factory=dict)
    strata: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReferenceSet:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def example_hash(example: Any) -> str:
    return hashlib.sha256(json.dumps(example, ensure_ascii=False, sort_keys=True).encode("utf-8")).hexdigest()


def sample(task: str, examples: Sequence[Any], max_rows: int = MAX_ROWS, seed: int = 0) -> list[Any]:
    """At most `max_rows` examples, stratified; kept in their original order. Deterministic for a seed."""
    if len(examples) <= max_rows:
        return list(examples)
    strata: dict[str, list[int]] = {}
    for index, example in enumerate(examples):
        strata.setdefault(kind(task).stratum(example), []).append(index)
    total = len(examples)
    quota = {key: min(len(idx), max(MIN_PER_STRATUM, max_rows * len(idx) // total)) for key, idx in strata.items()}
    while sum(quota.values()) > max_rows:  # the floors pushed it over: trim the largest stratum
        largest = max(quota, key=lambda key: quota[key])
        quota[largest] -= sum(quota.values()) - max_rows
    rng = random.Random(seed)
    chosen = sorted(i for key, idx in sorted(strata.items()) for i in rng.sample(idx, quota[key]))
    return [examples[i] for i in chosen]


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".jsonl"


def _serialise(task: str, examples: Sequence[Any]) -> bytes:
    return "".join(json.dumps(kind(task).encode(ex), ensure_ascii=False, sort_keys=True) + "\n" for ex in examples).encode("utf-8")


def write_set(version_dir: Path, *, name: str, task: str, role: str, origin: str, examples: Sequence[Any],
              source: dict[str, Any] | None = None, seed: int = 0, max_rows: int = MAX_ROWS) -> ReferenceSet:
    """Snapshot (bounded, stratified) `examples` into the version directory; returns its manifest entry."""
    if role not in ROLES:
        raise ReferenceError(f"unknown reference role `{role}` (one of {', '.join(ROLES)})")
    rows = sample(task, examples, max_rows, seed)
    data = _serialise(task, rows)
    rel = f"{REFERENCE_DIR}/{_file_name(name)}"
    path = Path(version_dir) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    strata: dict[str, int] = {}
    for example in rows:
        key = kind(task).stratum(example)
        strata[key] = strata.get(key, 0) + 1
    return ReferenceSet(name=name, task=task, role=role, origin=origin, rows=len(rows),
                        sha256=hashlib.sha256(data).hexdigest(), file=rel,
                        source={**(source or {}), "rows_available": len(examples)}, strata=strata)


def manifest(version_dir: str | Path) -> list[ReferenceSet]:
    """The reference sets a version directory lists."""
    entries = loading.read_metadata(version_dir).get("references") or []
    return [ReferenceSet.from_dict(e) for e in entries if isinstance(e, dict)]


def save_manifest(version_dir: str | Path, sets: Sequence[ReferenceSet]) -> None:
    meta = loading.read_metadata(version_dir)
    meta["references"] = [s.as_dict() for s in sets]
    loading.write_metadata(version_dir, meta)


def decode_rows(task: str, lines: Sequence[dict[str, Any]]) -> list[Any]:
    return [kind(task).decode(row) for row in lines]


def load_rows(version_dir: str | Path, ref: ReferenceSet) -> list[Any]:
    """A set's examples from the version directory, checked against its fingerprint."""
    path = Path(version_dir) / ref.file
    if not path.is_file():
        raise ReferenceError(f"reference set `{ref.name}` is missing from {version_dir}")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != ref.sha256:
        raise ReferenceError(f"reference set `{ref.name}` in {version_dir} does not match its fingerprint {ref.sha256[:12]}",
                             hint="the snapshot was edited; restore it from the registry (model_reference_sets)")
    return decode_rows(ref.task, [json.loads(line) for line in data.decode("utf-8").splitlines() if line.strip()])


def add(sets: list[ReferenceSet], new: ReferenceSet, version_dir: Path) -> list[ReferenceSet]:
    """`sets` plus `new`, unless a set with the same rows is already there (then the new file is dropped)."""
    if any(s.sha256 == new.sha256 for s in sets):
        (version_dir / new.file).unlink(missing_ok=True)
        return sets
    return [*sets, new]


def inherit(parent_dir: str | Path | None, child_dir: Path) -> list[ReferenceSet]:
    """Copy the parent's reference sets into the child directory; returns their manifest entries."""
    if parent_dir is None or not Path(parent_dir).is_dir():
        return []
    inherited = []
    for ref in manifest(parent_dir):
        source = Path(parent_dir) / ref.file
        if not source.is_file():
            continue
        target = child_dir / ref.file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        inherited.append(ref)
    return inherited


def record_version(version_dir: Path, *, task: str, version: str, parent_dir: str | Path | None = None,
                   train: tuple[str, Sequence[Any]] | None = None, evals: Sequence[tuple[str, str, Sequence[Any]]] = (),
                   seed: int = 0) -> list[ReferenceSet]:
    """Inherit the parent's sets, snapshot this version's own, write the manifest; returns every set.

    `train` is (path, examples) of the training data; `evals` are (role, path-or-label, examples).
    """
    if not known(task):
        return []
    sets = inherit(parent_dir, version_dir)
    for role, where, examples in evals:
        if examples:
            new = write_set(version_dir, name=f"{version}.{role}", task=task, role=role, origin=version, examples=examples,
                            source=_source(where), seed=seed)
            sets = add(sets, new, version_dir)
    if train is not None and train[1]:
        new = write_set(version_dir, name=f"{version}.train", task=task, role="train", origin=version, examples=train[1],
                        source=_source(train[0]), seed=seed)
        sets = add(sets, new, version_dir)
    save_manifest(version_dir, sets)
    return sets


def _source(where: str) -> dict[str, Any]:
    from worker.training import data_fingerprint

    if where and Path(where).is_file():
        return {"path": str(Path(where).resolve()), "sha256": data_fingerprint(where)}
    return {"what": where}


def backfill(version_dir: Path, labels: Sequence[str] | None = None) -> list[ReferenceSet]:
    """A version written before reference sets existed: snapshot its recorded training data, if still there."""
    existing = manifest(version_dir)
    if existing:
        return existing
    meta = loading.read_metadata(version_dir)
    task = str(meta.get("task") or "")
    train = meta.get("train_data") or {}
    path = train.get("path") if isinstance(train, dict) else None
    if not known(task) or task == "mlm" or not path or not Path(path).is_file():
        return []
    from worker.training import data_fingerprint

    if train.get("sha256") and data_fingerprint(path) != train["sha256"]:
        return []
    try:
        examples = read_examples(task, path, None, labels)
    except DataFileError:
        return []
    version = str(meta.get("version") or version_dir.name)
    return record_version(version_dir, task=task, version=version, train=(path, examples))


# --------------------------------------------------------------------------- replay


@dataclass
class ReplaySource:
    """Where a fine-tune's replay rows come from: the champion's training file, or its snapshot."""

    examples: list[Any]
    origin: str  # path | snapshot
    where: str
    sha256: str | None


def replay_source(champion_dir: str | Path, task: str, stage: Any = None, labels: Sequence[str] | None = None) -> ReplaySource | None:
    """The champion's known training data: the recorded file when it is there and matches its fingerprint,
    else the `train` reference snapshot (own or inherited); None when neither is known."""
    from worker.training import data_fingerprint

    meta = loading.read_metadata(champion_dir)
    replay = meta.get("replay_data") or meta.get("train_data") or {}
    path, sha = (replay.get("path"), replay.get("sha256")) if isinstance(replay, dict) else (None, None)
    if path and Path(path).is_file() and sha and data_fingerprint(path) == sha:
        try:
            return ReplaySource(read_examples(task, path, stage, labels), "path", str(path), sha)
        except DataFileError:
            pass
    train_sets = [s for s in manifest(champion_dir) if s.role == "train" and s.task == task]
    if not train_sets:
        return None
    chosen = next((s for s in train_sets if sha and s.source.get("sha256") == sha), train_sets[0])
    return ReplaySource(load_rows(champion_dir, chosen), "snapshot", chosen.name, chosen.sha256)


def replay_record(champion_dir: str | Path) -> dict[str, Any] | None:
    """What a fine-tuned version records as its own replay data: its champion's (the feedback itself is in the database)."""
    meta = loading.read_metadata(champion_dir)
    replay = meta.get("replay_data") or meta.get("train_data") or {}
    if isinstance(replay, dict) and replay.get("path"):
        return {"path": replay["path"], "sha256": replay.get("sha256")}
    return None

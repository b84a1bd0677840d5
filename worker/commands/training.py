"""`textworker train` and `textworker eval`: one entry per stage type."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from schemas.pipeline import PipelineSpec, TrainSpec
from worker.config import load_pipeline
from worker.console import default_models_dir, emit
from worker.errors import DataFileError, TextworkerError
from worker.lifecycle.defaults import finish_version
from worker.lifecycle.references import read_examples
from worker.models import loading
from worker.stages import plugin_for
from worker.training.data import read_texts  # noqa: F401 - re-exported

StageSpec = Any  # a stage spec of any registered type


def configured_labels(stage: StageSpec) -> list[str] | None:
    """The labels the stage is configured with (None: whatever the data holds; unlike the lifecycle's
    `stage_labels`, the model's own labels are not read, so a new label set can be trained)."""
    return plugin_for(stage.type).labels(stage)


def version_dir(stage: StageSpec, out: str | None) -> tuple[Path, str]:
    """Where the new version goes: --out, else a new version beside the stage's model."""
    version = "v" + datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    if out:
        return Path(out), Path(out).name
    model = Path(stage.model).expanduser()
    family = model if model.is_dir() and not loading.is_model_dir(model) else Path(default_models_dir()) / stage.name
    return family / version, version


def _progress(args: argparse.Namespace, what: str) -> tuple[Callable[[int, int, dict[str, Any]], None] | None, Callable[[], None]]:
    if args.quiet or args.json:
        return None, lambda: None
    from tqdm import tqdm

    bar = tqdm(desc=what, unit=" steps", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, info: dict[str, Any]) -> None:
        bar.total = total
        bar.n = step
        bar.set_postfix(info, refresh=True)

    return update, bar.close


def _train_kwargs(args: argparse.Namespace, mapping: dict[str, str]) -> dict[str, Any]:
    return {name: getattr(args, attr) for attr, name in mapping.items() if getattr(args, attr, None) is not None}


RECIPE_FIELDS = tuple(TrainSpec.model_fields)  # each one a `train` flag of the same name


def with_recipe(args: argparse.Namespace, stage: StageSpec) -> argparse.Namespace:
    """The stage's `train:` block under the flags: a flag given wins, else the block's value, else the default."""
    recipe = getattr(stage, "train", None)
    merged = argparse.Namespace(**vars(args))
    for name in RECIPE_FIELDS:
        if getattr(merged, name, None) is None and recipe is not None:
            setattr(merged, name, getattr(recipe, name))
    if not merged.data:
        raise TextworkerError(f"no training data for `{stage.name}`: give --data FILE or a `train:` block with `data:` in the pipeline file")
    for path in data_files(merged.data):
        if not Path(path).is_file():
            raise DataFileError(f"training data `{path}` does not exist")
    if merged.eval_data and not Path(merged.eval_data).is_file():
        raise DataFileError(f"evaluation data `{merged.eval_data}` does not exist")
    return merged


def data_files(data: str | list[str] | None) -> list[str]:
    """A recipe's `data` as a list of files (one file, or several read as one set)."""
    if not data:
        return []
    return [data] if isinstance(data, str) else list(data)


def cmd_train(args: argparse.Namespace) -> int:
    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    args = with_recipe(args, stage)
    out, version = version_dir(stage, args.out)
    base = args.base or stage.model
    progress, close = _progress(args, f"train {stage.name}")
    started = time.perf_counter()
    try:
        info, examples = _train(stage, args, out, base, progress)
    finally:
        close()
    info.setdefault("train_seconds", round(time.perf_counter() - started, 1))
    evals = [("eval", args.eval_data, read_examples(stage.type, args.eval_data, stage, configured_labels(stage)))] if args.eval_data else []
    files = data_files(args.data)
    if len(files) > 1:
        info["train_files"] = files
    # several files: no single path to fingerprint, so the version keeps a snapshot of the combined set instead
    finish_version(out, name=stage.name, task=stage.type, base=str(base), data=Path(files[0]) if len(files) == 1 else None,
                   info=info, version=version, evals=evals, stage=stage, labels=configured_labels(stage),
                   train_examples=examples if len(files) > 1 else None)
    if args.promote:
        loading.set_current_version(out.parent, out)
    from worker.lifecycle import precision

    checked = precision.check_quietly(stage, out, labels=configured_labels(stage))
    metrics = info.get("metrics") or {}
    text = f"trained {stage.name} ({stage.type}) in {info['train_seconds']:.0f}s -> {out}"
    if checked is not None:
        info["int8"] = checked
        text += "\n  " + precision.describe(checked)
    if metrics:
        text += "\n  " + " ".join(f"{k}={v}" for k, v in metrics.items() if not isinstance(v, dict))
    emit(args, {"out": str(out), "version": version, **info}, text)
    return 0


def _train(stage: StageSpec, args: argparse.Namespace, out: Path, base: str, progress: Any) -> tuple[dict[str, Any], list[Any]]:
    """Train through the stage type's trainer (`--base scratch` starts from nothing where the type can); returns the
    version's info and the examples it was trained on (several data files are read as one set, `limit` applying to each)."""
    trainer = plugin_for(stage.type).load_trainer()
    labels = configured_labels(stage)
    examples = [example for path in data_files(args.data) for example in trainer.read(path, stage, labels, args.limit)]
    evals = trainer.read(args.eval_data, stage, labels) if args.eval_data else None
    params = _train_kwargs(args, {"epochs": "epochs", "lr": "lr", "max_minutes": "max_minutes", "seed": "seed",
                                  "batch_size": "batch_size", "max_length": "max_length", "size": "size",
                                  "dropout": "dropout", "dropout_from_epoch": "dropout_from_epoch",
                                  "curriculum_epochs": "curriculum_epochs"})
    info = trainer.train(stage, examples, out, base=None if base == "scratch" else _base_dir(base), labels=labels,
                         eval_examples=evals, progress=progress, **params)
    return info, examples


def _base_dir(base: str) -> str:
    """A family directory means its current version; anything else passes through."""
    return loading.resolve(base).location


def _count_inputs(net: Any, progress: Callable[[int], None]) -> Any:
    """A forward pre-hook on `net` reporting how many rows (QA: windows) the model reads; returns its handle."""

    def hook(_module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        ids = kwargs.get("input_ids") if kwargs.get("input_ids") is not None else (args[0] if args else None)
        if ids is not None and hasattr(ids, "shape"):
            progress(int(ids.shape[0]))

    return net.register_forward_pre_hook(hook, with_kwargs=True)


def evaluate_stage(spec: PipelineSpec, stage: StageSpec, data: str, model: str | None, limit: int | None,
                   progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Metrics for the stage's model (or `model`) on a labelled file; `progress(n)` as the model reads n more rows."""
    from worker.lifecycle.evaluation import load_model

    trainer = plugin_for(stage.type).load_trainer()
    ref = loading.resolve(model or stage.model)
    net, tokenizer = load_model(stage, trainer, ref.location)
    if progress is not None:
        _count_inputs(trainer.counted_module(net), progress)
    labels = configured_labels(stage)
    result: dict[str, Any] = {"stage": stage.name, "type": stage.type, "model": ref.location, "model_version": ref.version, "data": data,
                              "precision": getattr(net, "precision", None) or _dtype_name(net)}
    result["metrics"] = trainer.evaluate(stage, net, tokenizer, trainer.read(data, stage, labels, limit), labels)
    return result


def _dtype_name(net: Any) -> str:
    dtype = str(next(net.parameters()).dtype)
    return {"torch.float32": "fp32", "torch.bfloat16": "bf16", "torch.float16": "fp16"}.get(dtype, dtype)


def evaluate_references(stage: StageSpec, model_dir: str, registry_sets: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Metrics of a version on each of its reference sets of the stage's task (others are listed as skipped)."""
    from worker.lifecycle import gate, references
    from worker.lifecycle.evaluation import score_model

    sets = references.manifest(model_dir)
    if not sets and registry_sets:
        sets = [references.ReferenceSet.from_dict(entry) for entry in registry_sets]
    stored = {entry["name"]: entry for entry in registry_sets or []}
    rows: dict[str, list[Any]] = {}
    skipped = []
    for ref in sets:
        if ref.task != stage.type:
            skipped.append({"name": ref.name, "task": ref.task, "skipped": f"a {ref.task} set, not {stage.type}"})
            continue
        try:
            rows[ref.name] = references.load_rows(model_dir, ref)
        except references.ReferenceError:
            if ref.name not in stored or "rows_data" not in stored[ref.name]:
                raise
            rows[ref.name] = references.decode_rows(ref.task, stored[ref.name]["rows_data"])
    scores = score_model(stage, model_dir, rows, configured_labels(stage)) if rows else {}
    metric = gate.rules_for(stage).metric
    out = []
    for ref in sets:
        if ref.name in rows:
            found = scores.get(ref.name, {})
            out.append({**ref.as_dict(), "metric": metric, "value": gate.metric_value(found, metric), "metrics": found})
    return {"metric": metric, "sets": out, "skipped": skipped}


def _eval_references(args: argparse.Namespace, spec: PipelineSpec, stage: StageSpec) -> int:
    """`eval --references`: the version a pipeline against this database loads (or --model), on all its reference sets."""
    from worker.console import database_url
    from worker.engine.swap import ChampionLookup, model_family

    started = time.perf_counter()
    registry_sets: list[dict[str, Any]] = []
    url = database_url(args, spec)
    if args.model:
        location = loading.resolve(args.model).location
    else:
        family = model_family(stage.model)
        champion = ChampionLookup(family, url).champion() if family is not None else None
        location = champion.location if champion is not None else loading.resolve(stage.model).location
    if Path(location).is_dir():
        from worker.commands.lifecycle import _registry_if_present

        registry = _registry_if_present(url)
        if registry is not None:
            try:
                version = str(loading.read_metadata(location).get("version") or Path(location).name)
                registry_sets = registry.references(Path(location).parent.name, version, with_rows=True)
            finally:
                registry.close()
    ref = loading.resolve(location)
    result = {"stage": stage.name, "type": stage.type, "model": ref.location, "model_version": ref.version,
              **evaluate_references(stage, ref.location, registry_sets)}
    result["seconds"] = round(time.perf_counter() - started, 1)
    lines = [f"{stage.name} ({stage.type}) {ref.version}: {len(result['sets'])} reference set(s), {result['metric']} "
             f"({result['seconds']}s)"]
    for entry in result["sets"]:
        value = "-" if entry["value"] is None else f"{entry['value']:.4f}"
        lines.append(f"  {entry['name']:<36} {entry['role']:<8} {entry['rows']:>5} rows  {result['metric']} {value}  "
                     f"sha256 {entry['sha256'][:12]}")
    lines += [f"  {entry['name']:<36} skipped: {entry['skipped']}" for entry in result["skipped"]]
    if not result["sets"]:
        lines.append("  no reference sets of this task (versions record them when make models, train, finetune or pretrain write them)")
    emit(args, result, "\n".join(lines))
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    spec = load_pipeline(args.pipeline)
    stage = spec.stage(args.stage)
    if getattr(args, "precision", None):
        stage = stage.model_copy(update={"precision": args.precision})
    if getattr(args, "references", False):
        return _eval_references(args, spec, stage)
    recipe = getattr(stage, "train", None)
    if not args.data and recipe is not None and recipe.eval_data:
        args.data = recipe.eval_data
    if not args.data:
        raise TextworkerError("give --data FILE (or `train.eval_data` in the pipeline file), or --references to score the "
                              "version on its reference sets")
    if not Path(args.data).is_file():
        raise DataFileError(f"data file `{args.data}` does not exist")
    started = time.perf_counter()
    bar = None
    if not (args.quiet or args.json):
        from tqdm import tqdm

        bar = tqdm(desc=f"eval {stage.name}", unit=" " + plugin_for(stage.type).load_trainer().unit, file=sys.stderr, dynamic_ncols=True)
    try:
        result = evaluate_stage(spec, stage, args.data, args.model, args.limit, progress=bar.update if bar is not None else None)
    except (KeyError, ValueError) as exc:
        raise TextworkerError(f"cannot evaluate `{stage.name}` on {args.data}: {exc}") from exc
    finally:
        if bar is not None:
            bar.close()
    result["seconds"] = round(time.perf_counter() - started, 1)
    metrics = result["metrics"]
    lines = [f"{stage.name} ({stage.type}) {result['model_version']} at {result['precision']} on {args.data} "
             f"({metrics.get('n', '?')} rows, {result['seconds']}s)"]
    lines += [f"  {k}: {v}" for k, v in metrics.items() if not isinstance(v, dict) and k != "n"]
    for label, scores in (metrics.get("per_label") or {}).items():
        lines.append(f"  {label:<12} precision {scores['precision']:.4f}  recall {scores['recall']:.4f}  f1 {scores['f1']:.4f}  n={scores['support']}")
    emit(args, result, "\n".join(lines))
    return 0

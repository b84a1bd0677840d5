"""The evaluation gate: does a fine-tuned candidate replace the champion?

Pure functions over the metric dictionaries that `worker.training` evaluation returns
(`classification_metrics`, `evaluate_qa`, `evaluate_translation`). Both models must
have been scored on the same rows. The rules:

1. the primary metric (macro-F1; for spam stages the F1 of the spam label; QA F1;
   translation BLEU; or what `finetune.gate.metric` names) improves by at least
   `margin`, in the metric's own units (0..1 for classification, 0..100 for QA and BLEU);
2. no label's recall drops by more than `max_recall_drop` (classification only);
3. on EVERY reference set of the champion (`worker.lifecycle.references`), the metric
   falls by no more than `max_regression` (default 0.02 on 0..1 metrics, 2.0 on 0..100
   ones) and rule 2 holds on that set too. Sets of another task (an MLM set of a
   pretrained encoder) are listed and skipped. `references: false` turns rule 3 off.

A candidate that fails any rule stays a candidate; the reason names the rule, the set,
the label and the figures. Each reference set gets a line (`SetLine`) in the decision.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

HUNDRED_SCALE = ("f1", "exact_match", "bleu", "chrf")
EPSILON = 1e-9


@dataclass(frozen=True)
class GateRules:
    metric: str
    margin: float
    max_recall_drop: float
    max_regression: float = 0.02
    references: bool = True


@dataclass(frozen=True)
class GateDecision:
    promote: bool
    reason: str
    metric: str
    candidate: float | None
    champion: float | None
    delta: float | None
    recall_drops: dict[str, float] = field(default_factory=dict)
    sets: list[dict[str, Any]] = field(default_factory=list)
    target_ok: bool | None = None
    guard_ok: bool | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class SetLine:
    """The guard's verdict on one reference set."""

    set: str
    role: str
    rows: int
    metric: str
    champion: float | None
    candidate: float | None
    delta: float | None
    ok: bool
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_metric(stage: Any) -> str:
    """The stage type's primary metric (its plug-in's `default_metric`)."""
    from worker.stages import plugin_for

    return plugin_for(stage.type).metric(stage)


def rules_for(stage: Any) -> GateRules:
    """The stage's gate settings (`finetune.gate`) with the per-type defaults filled in."""
    gate = stage.finetune.gate if getattr(stage, "finetune", None) is not None else None
    metric = (gate.metric if gate is not None else None) or default_metric(stage)
    hundred = metric in HUNDRED_SCALE
    margin = gate.margin if gate is not None and gate.margin is not None else (1.0 if hundred else 0.01)
    regression = gate.max_regression if gate is not None and gate.max_regression is not None else (2.0 if hundred else 0.02)
    return GateRules(metric=metric, margin=margin, max_recall_drop=gate.max_recall_drop if gate is not None else 0.05,
                     max_regression=regression, references=gate.references if gate is not None else True)


def metric_value(metrics: dict[str, Any], metric: str) -> float | None:
    """`f1:<label>` reads the label's F1 from `per_label`; any other name is a top-level key."""
    if metric.startswith("f1:"):
        scores = (metrics.get("per_label") or {}).get(metric[3:])
        return float(scores["f1"]) if scores is not None else None
    value = metrics.get(metric)
    return float(value) if isinstance(value, int | float) else None


def recall_drops(candidate: dict[str, Any], champion: dict[str, Any]) -> dict[str, float]:
    """Per label: champion recall minus candidate recall (positive = the candidate finds fewer)."""
    cand = candidate.get("per_label") or {}
    champ = champion.get("per_label") or {}
    return {label: round(float(champ[label]["recall"]) - float(cand[label]["recall"]), 6)
            for label in champ if label in cand and champ[label].get("support", 1)}


def decide(candidate: dict[str, Any], champion: dict[str, Any], rules: GateRules) -> GateDecision:
    """Apply the gate's two rules; the reason says which rule failed, by how much."""
    cand, champ = metric_value(candidate, rules.metric), metric_value(champion, rules.metric)
    if cand is None or champ is None:
        missing = "candidate" if cand is None else "champion"
        return GateDecision(False, f"the {missing}'s metrics have no `{rules.metric}`", rules.metric, cand, champ, None)
    delta = round(cand - champ, 6)
    drops = recall_drops(candidate, champion)
    problems: list[str] = []
    if delta + EPSILON < rules.margin:
        verb = "improved by only" if delta > 0 else "changed by"
        problems.append(f"{rules.metric} {verb} {delta:+.4f} ({champ:.4f} -> {cand:.4f}), less than the margin {rules.margin:g}")
    for label, drop in sorted(drops.items(), key=lambda item: -item[1]):
        if drop > rules.max_recall_drop + EPSILON:
            before = float(champion["per_label"][label]["recall"])
            problems.append(f"recall of `{label}` drops by {drop:.4f} ({before:.4f} -> {before - drop:.4f}), "
                            f"more than the allowed {rules.max_recall_drop:g}")
    if problems:
        return GateDecision(False, "; ".join(problems), rules.metric, cand, champ, delta, drops)
    worst = max(drops.values(), default=0.0)
    reason = f"{rules.metric} {champ:.4f} -> {cand:.4f} ({delta:+.4f}, margin {rules.margin:g})"
    if drops:
        reason += f"; largest recall drop {max(worst, 0.0):.4f} (allowed {rules.max_recall_drop:g})"
    return GateDecision(True, reason, rules.metric, cand, champ, delta, drops)


def guard_set(name: str, role: str, candidate: dict[str, Any], champion: dict[str, Any], rules: GateRules) -> SetLine:
    """Rule 3 on one reference set: the metric falls by at most `max_regression`, no recall drops too far."""
    cand, champ = metric_value(candidate, rules.metric), metric_value(champion, rules.metric)
    rows = int(champion.get("n") or candidate.get("n") or 0)
    if cand is None or champ is None:
        return SetLine(name, role, rows, rules.metric, champ, cand, None, False, f"{name}: no `{rules.metric}` to compare")
    delta = round(cand - champ, 6)
    problems = []
    if delta + rules.max_regression < -EPSILON:
        problems.append(f"{rules.metric} falls by {-delta:.4f} ({champ:.4f} -> {cand:.4f}), more than max_regression "
                        f"{rules.max_regression:g}")
    for label, drop in sorted(recall_drops(candidate, champion).items(), key=lambda item: -item[1]):
        if drop > rules.max_recall_drop + EPSILON:
            before = float(champion["per_label"][label]["recall"])
            problems.append(f"recall of `{label}` drops by {drop:.4f} ({before:.4f} -> {before - drop:.4f}), "
                            f"more than the allowed {rules.max_recall_drop:g}")
    if problems:
        return SetLine(name, role, rows, rules.metric, champ, cand, delta, False, f"reference set {name} ({rows} rows): " + "; ".join(problems))
    return SetLine(name, role, rows, rules.metric, champ, cand, delta, True,
                   f"reference set {name} ({rows} rows): {rules.metric} {champ:.4f} -> {cand:.4f} ({delta:+.4f}, "
                   f"allowed -{rules.max_regression:g})")


def decide_with_references(target_candidate: dict[str, Any], target_champion: dict[str, Any],
                           references: list[tuple[str, str, dict[str, Any], dict[str, Any]]], rules: GateRules) -> GateDecision:
    """Rules 1-2 on the target data, rule 3 on each (name, role, candidate metrics, champion metrics) reference set."""
    target = decide(target_candidate, target_champion, rules)
    lines = [guard_set(name, role, cand, champ, rules) for name, role, cand, champ in references] if rules.references else []
    failed = [line for line in lines if not line.ok]
    problems = ([] if target.promote else [f"target: {target.reason}"]) + [line.reason for line in failed]
    guard_ok = not failed
    if problems:
        reason = "; ".join(problems)
    else:
        reason = target.reason + (f"; within {rules.max_regression:g} on all {len(lines)} reference sets" if lines else "")
        if not rules.references:
            reason += "; reference sets not guarded (gate.references: false)"
    return GateDecision(target.promote and guard_ok, reason, target.metric, target.candidate, target.champion, target.delta,
                        target.recall_drops, [line.as_dict() for line in lines], target.promote, guard_ok)

"""Gate decisions on metric dictionaries computed by the project's own metric code."""

from __future__ import annotations

from schemas.pipeline import FinetuneSpec, QaStage, SpamStage, TranslateStage
from worker.lifecycle.gate import GateRules, decide, metric_value, rules_for
from worker.training.metrics import classification_metrics

GOLDS = ["ham"] * 8 + ["spam"] * 4


def _metrics(preds: list[str]) -> dict:
    return classification_metrics(GOLDS, preds, ["ham", "spam"])


WEAK = _metrics(["ham"] * 8 + ["spam", "ham", "ham", "ham"])  # finds 1 of 4 spam
GOOD = _metrics(["ham"] * 8 + ["spam", "spam", "spam", "ham"])  # finds 3 of 4 spam
GREEDY = _metrics(["ham"] * 5 + ["spam"] * 3 + ["spam"] * 4)  # every spam, but 3 of 8 ham lost
RULES = GateRules(metric="f1:spam", margin=0.05, max_recall_drop=0.1)


def test_better_candidate_is_promoted() -> None:
    decision = decide(GOOD, WEAK, RULES)
    assert decision.promote, decision.reason
    assert decision.candidate == GOOD["per_label"]["spam"]["f1"] and decision.champion == WEAK["per_label"]["spam"]["f1"]
    assert decision.delta is not None and decision.delta > 0.05
    assert "f1:spam" in decision.reason


def test_improvement_below_the_margin_is_rejected_with_the_figures() -> None:
    decision = decide(GOOD, WEAK, GateRules("f1:spam", margin=0.5, max_recall_drop=0.1))
    assert not decision.promote
    assert "less than the margin 0.5" in decision.reason and "improved by only" in decision.reason


def test_a_worse_candidate_is_rejected() -> None:
    decision = decide(WEAK, GOOD, RULES)
    assert not decision.promote and decision.delta is not None and decision.delta < 0
    assert "changed by -" in decision.reason


def test_recall_drop_of_one_label_rejects_even_when_the_metric_improves() -> None:
    decision = decide(GREEDY, WEAK, RULES)
    assert decision.delta is not None and decision.delta > RULES.margin
    assert not decision.promote
    assert "recall of `ham` drops by 0.3750 (1.0000 -> 0.6250), more than the allowed 0.1" in decision.reason
    assert decision.recall_drops["ham"] == 0.375 and decision.recall_drops["spam"] < 0
    assert decide(GREEDY, WEAK, GateRules("f1:spam", 0.05, max_recall_drop=0.4)).promote


def test_macro_f1_and_missing_metrics() -> None:
    assert metric_value(GOOD, "macro_f1") == GOOD["macro_f1"]
    assert metric_value(GOOD, "f1:eggs") is None
    decision = decide({"bleu": 20.0}, {"chrf": 10.0}, GateRules("bleu", 1.0, 0.05))
    assert not decision.promote and "champion's metrics have no `bleu`" in decision.reason


def test_defaults_follow_the_stage_type() -> None:
    spam = rules_for(SpamStage(name="s", model="m", spam_label="junk", ham_label="ok"))
    assert (spam.metric, spam.margin, spam.max_recall_drop) == ("f1:junk", 0.01, 0.05)
    qa = rules_for(QaStage(name="q", model="m", questions=["why?"]))
    assert (qa.metric, qa.margin) == ("f1", 1.0)
    tr = rules_for(TranslateStage(name="t", model="m", finetune=FinetuneSpec.model_validate({"gate": {"margin": 0.5}})))
    assert (tr.metric, tr.margin) == ("bleu", 0.5)
    assert decide({"bleu": 21.0}, {"bleu": 20.0}, tr).promote
    assert not decide({"bleu": 20.4}, {"bleu": 20.0}, tr).promote


def test_every_reference_set_is_guarded_with_a_line_per_set() -> None:
    from worker.lifecycle.gate import decide_with_references

    rules = GateRules("f1:spam", margin=0.05, max_recall_drop=0.1, max_regression=0.02)
    kept = ("sms.eval", "eval", GOOD, GOOD)
    forgot = ("seed.train", "train", WEAK, GOOD)  # the candidate lost 2 of 4 spam on this set
    decision = decide_with_references(GOOD, WEAK, [kept, forgot], rules)
    assert not decision.promote and decision.target_ok is True and decision.guard_ok is False
    assert [(line["set"], line["ok"]) for line in decision.sets] == [("sms.eval", True), ("seed.train", False)]
    fall = GOOD["per_label"]["spam"]["f1"] - WEAK["per_label"]["spam"]["f1"]
    assert f"reference set seed.train (12 rows): f1:spam falls by {fall:.4f}" in decision.reason
    assert "more than max_regression 0.02" in decision.reason and "recall of `spam` drops by 0.5000" in decision.reason
    assert "sms.eval" not in decision.reason
    passed = decide_with_references(GOOD, WEAK, [kept], rules)
    assert passed.promote and "within 0.02 on all 1 reference sets" in passed.reason
    assert decide_with_references(GOOD, WEAK, [forgot], GateRules("f1:spam", 0.05, 0.1, references=False)).promote
    both = decide_with_references(WEAK, GOOD, [forgot], rules)
    assert not both.promote and both.reason.startswith("target: f1:spam changed by -") and "seed.train" in both.reason


def test_max_regression_is_a_boundary_in_the_metric_units() -> None:
    from worker.lifecycle.gate import guard_set

    champ = {"f1": 80.0, "n": 50}
    rules = GateRules("f1", margin=1.0, max_recall_drop=0.05, max_regression=2.0)
    assert guard_set("qa.eval", "eval", {"f1": 78.0, "n": 50}, champ, rules).ok
    line = guard_set("qa.eval", "eval", {"f1": 77.9, "n": 50}, champ, rules)
    assert not line.ok and line.delta == -2.1 and "falls by 2.1000 (80.0000 -> 77.9000)" in line.reason
    qa = rules_for(QaStage(name="q", model="m", questions=["q"]))
    assert (qa.max_regression, qa.references) == (2.0, True)
    spam = rules_for(SpamStage(name="s", model="m"))
    assert (spam.max_regression, spam.references) == (0.02, True)
    off = rules_for(SpamStage(name="s", model="m", finetune=FinetuneSpec(gate={"references": False, "max_regression": 0.05})))
    assert (off.max_regression, off.references) == (0.05, False)

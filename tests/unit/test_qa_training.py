"""Unit tests for worker.training.qa with a tiny random RoBERTa (byte-level BPE, no token_type_ids)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch = pytest.importorskip("torch")
tokenizers = pytest.importorskip("tokenizers")
transformers = pytest.importorskip("transformers")

from worker.training.qa import answer_questions, evaluate_qa, load_squad, squad_em_f1, train_qa  # noqa: E402

CONTEXTS = [
    "The Eiffel Tower is located in Paris and was completed in 1889 by Gustave Eiffel's company.",
    "Photosynthesis converts light energy into chemical energy, releasing oxygen as a by-product.",
    "Mount Everest, at 8,849 metres, is Earth's highest mountain above sea level.",
    "The Danube flows through ten countries before reaching the Black Sea.",
    "Ada Lovelace wrote the first algorithm intended for Charles Babbage's Analytical Engine.",
]
QAS = [
    (0, "Where is the Eiffel Tower?", "Paris"),
    (0, "When was the tower completed?", "1889"),
    (0, "Whose company built it?", "Gustave Eiffel's company"),
    (0, "What is located in Paris?", "The Eiffel Tower"),
    (1, "What does photosynthesis release?", "oxygen"),
    (1, "What energy is converted?", "light energy"),
    (1, "Into what is light converted?", "chemical energy"),
    (1, "What is oxygen?", "a by-product"),
    (2, "How tall is Everest?", "8,849 metres"),
    (2, "What is Earth's highest mountain?", "Mount Everest"),
    (2, "Above what is it measured?", "sea level"),
    (2, "Which planet?", "Earth"),
    (3, "How many countries does the Danube cross?", "ten"),
    (3, "Where does the Danube end?", "the Black Sea"),
    (3, "Which river?", "The Danube"),
    (3, "What flows through countries?", "The Danube"),
    (4, "Who wrote the first algorithm?", "Ada Lovelace"),
    (4, "For which engine?", "Analytical Engine"),
    (4, "Whose engine was it?", "Charles Babbage's"),
    (4, "What did she write?", "the first algorithm"),
]


def _examples() -> list[dict]:
    rows = []
    for n, (c, question, answer) in enumerate(QAS):
        context = CONTEXTS[c]
        rows.append(
            {
                "id": f"q{n}",
                "title": "t",
                "context": context,
                "question": question,
                "answers": {"text": [answer], "answer_start": [context.index(answer)]},
            }
        )
    return rows


@pytest.fixture(scope="module")
def tiny_roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny randomly initialised RobertaForQuestionAnswering + byte-level BPE tokenizer saved to a directory."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import RobertaProcessing
    from transformers import PreTrainedTokenizerFast, RobertaConfig, RobertaForQuestionAnswering

    out = tmp_path_factory.mktemp("tiny_roberta")
    specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    bpe = ByteLevelBPETokenizer()
    corpus = CONTEXTS + [q for _, q, _ in QAS] + ["Ünïcödé ✓ text 🙂 and numbers 12345"]
    bpe.train_from_iterator(corpus * 3, vocab_size=400, min_frequency=1, special_tokens=specials)
    bpe.post_processor = RobertaProcessing(("</s>", 2), ("<s>", 0), trim_offsets=True, add_prefix_space=False)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token="<s>", eos_token="</s>", cls_token="<s>", sep_token="</s>",
        unk_token="<unk>", pad_token="<pad>", mask_token="<mask>", model_max_length=512,
    )
    tok.model_input_names = ["input_ids", "attention_mask"]
    tok.save_pretrained(out)
    torch.manual_seed(0)
    config = RobertaConfig(
        vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=514, type_vocab_size=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
    )
    RobertaForQuestionAnswering(config).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_model(tiny_roberta: Path):
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    return AutoModelForQuestionAnswering.from_pretrained(tiny_roberta, use_safetensors=True), AutoTokenizer.from_pretrained(tiny_roberta)


@pytest.mark.parametrize(
    ("prediction", "golds", "em", "f1"),
    [
        ("Paris", ["Paris"], 1.0, 1.0),
        ("the Paris!", ["paris"], 1.0, 1.0),
        ("in Paris", ["Paris"], 0.0, 2 / 3),
        ("London", ["Paris", "France"], 0.0, 0.0),
        ("Black Sea", ["the Black Sea", "Sea"], 1.0, 1.0),
        ("", ["Paris"], 0.0, 0.0),
        ("", [], 1.0, 1.0),
        ("an   apple  pie", ["Apple pie."], 1.0, 1.0),
    ],
)
def test_squad_em_f1(prediction: str, golds: list[str], em: float, f1: float) -> None:
    got_em, got_f1 = squad_em_f1(prediction, golds)
    assert got_em == em
    assert got_f1 == pytest.approx(f1)


def test_answer_questions_substrings_and_order(tiny_model) -> None:
    model, tok = tiny_model
    items = [(q, CONTEXTS[c]) for c, q, _ in QAS[:6]] + [("Anything?", "Ünïcödé ✓ text 🙂 and numbers 12345 " * 10)]
    long_items = [("Where?", " ".join(CONTEXTS) * 3)]
    results = answer_questions(model, tok, items + long_items, max_length=48, stride=16, batch_size=4)
    assert len(results) == len(items) + 1
    for (_question, context), res in zip(items + long_items, results):
        assert set(res) == {"answer", "start", "end", "score", "no_answer", "windows", "truncated"}
        assert not res["no_answer"] and not res["truncated"]
        assert 0 <= res["start"] < res["end"] <= len(context)
        assert context[res["start"] : res["end"]] == res["answer"] == res["answer"].strip()
        assert 0.0 <= res["score"] <= 1.0
    assert results[-1]["windows"] > 1
    single = answer_questions(model, tok, [items[3]], max_length=48, stride=16)
    assert single[0]["answer"] == results[3]["answer"]


def test_answer_questions_empty_context_and_threshold(tiny_model) -> None:
    model, tok = tiny_model
    res = answer_questions(model, tok, [("Who?", ""), ("Who?", "   "), ("Who?", CONTEXTS[4])])
    for r in res[:2]:
        assert r["no_answer"] and r["answer"] == "" and r["start"] == r["end"] == -1 and r["windows"] == 0
    assert not res[2]["no_answer"]
    abstain = answer_questions(model, tok, [("Who?", CONTEXTS[4])], no_answer_threshold=-1e9)
    assert abstain[0]["no_answer"] and abstain[0]["answer"] == "" and abstain[0]["start"] == -1


def test_answer_questions_huge_context_is_bounded(tiny_model) -> None:
    model, tok = tiny_model
    context = ("The Danube flows through ten countries. " * 5000)[:200_000]
    res = answer_questions(model, tok, [("Which river?", context), ("Where?", CONTEXTS[0])], max_length=64, stride=16, max_windows=5)
    assert res[0]["truncated"] and 1 <= res[0]["windows"] <= 5
    assert context[res[0]["start"] : res[0]["end"]] == res[0]["answer"]
    assert not res[1]["truncated"] and res[1]["windows"] == 1


def test_train_qa_and_reload(tiny_roberta: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForQuestionAnswering, AutoTokenizer

    examples = _examples()
    calls: list[tuple[int, int, dict]] = []
    out = tmp_path / "qa_model"
    result = train_qa(
        examples, out, base=tiny_roberta, epochs=2, lr=1e-3, batch_size=8, max_length=64, stride=16,
        seed=1, eval_examples=examples[:6], progress=lambda s, t, info: calls.append((s, t, info)),
    )
    steps = 2 * math.ceil(result["train_features"] / 8)
    assert result["steps"] == steps and result["train_examples"] == 20 and result["train_features"] >= 20
    assert result["seed"] == 1 and result["params"]["lr"] == 1e-3
    assert 0.0 <= result["metrics"]["f1"] <= 100.0 and 0.0 <= result["metrics"]["exact_match"] <= 100.0
    assert calls and calls[-1][0] == calls[-1][1] == steps and all("loss" in info for _, _, info in calls)
    assert (out / "model.safetensors").exists()
    model = AutoModelForQuestionAnswering.from_pretrained(out, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(out)
    res = answer_questions(model, tok, [(examples[0]["question"], examples[0]["context"])], max_length=64, stride=16)
    assert examples[0]["context"][res[0]["start"] : res[0]["end"]] == res[0]["answer"]
    metrics = evaluate_qa(out, examples[:6], max_length=64, stride=16)
    assert metrics["n"] == 6 and metrics["f1"] == pytest.approx(result["metrics"]["f1"])
    again = train_qa(examples, tmp_path / "again", base=tiny_roberta, epochs=2, lr=1e-3, batch_size=8, max_length=64, stride=16, seed=1)
    assert again["steps"] == steps
    first = AutoModelForQuestionAnswering.from_pretrained(tmp_path / "again", use_safetensors=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), first.state_dict().values()))


def test_load_squad(tmp_path: Path) -> None:
    good = _examples()[:3]
    path = tmp_path / "data.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in good) + "\n\n")
    assert load_squad(path) == good
    assert len(load_squad(path, limit=2)) == 2
    bad = dict(good[1], answers={"text": ["x"], "answer_start": []})
    path.write_text("\n".join(json.dumps(r) for r in [good[0], bad, good[2]]))
    with pytest.raises(ValueError, match=":2:"):
        load_squad(path)
    path.write_text(json.dumps(good[0]) + "\n{not json\n")
    with pytest.raises(ValueError, match=":2:"):
        load_squad(path)
    path.write_text(json.dumps({k: v for k, v in good[0].items() if k != "question"}))
    with pytest.raises(ValueError, match=":1: .*question"):
        load_squad(path)

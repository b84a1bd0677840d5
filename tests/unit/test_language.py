"""Unit tests for worker.stages.language.language_problem and worker.stages.translate.split_chunks."""

from __future__ import annotations

import random

import pytest

from worker.stages.language import language_problem, script_shares
from worker.stages.translate import split_chunks

ENGLISH = (
    "The weather was lovely on Saturday, so we walked along the river and had lunch at a small cafe. "
    "It was the best day of the month and we will go back there soon."
)
GERMAN = (
    "Der Zug war heute wieder zu spät, und ich habe den Anschluss in Köln verpasst. "
    "Die Bahn hat sich nicht entschuldigt, aber wir sind trotzdem mit dem Bus nach Hause gekommen."
)


def test_english_passes() -> None:
    assert language_problem(ENGLISH, "en", ["LATIN"]) is None
    assert language_problem(ENGLISH, "en_US", ["LATIN"]) is None


@pytest.mark.parametrize(
    ("text", "script"),
    [
        ("Погода была прекрасной в субботу, и мы гуляли вдоль реки и обедали в маленьком кафе.", "CYRILLIC"),
        ("星期六天气很好，所以我们沿着河边散步，在一家小咖啡馆吃了午饭。", "CJK"),
        ("كان الطقس جميلا يوم السبت فمشينا على طول النهر وتناولنا الغداء في مقهى صغير.", "ARABIC"),
        ("Ο καιρός ήταν υπέροχος το Σάββατο και περπατήσαμε δίπλα στο ποτάμι.", "GREEK"),
    ],
)
def test_other_scripts_fail_with_script_named(text: str, script: str) -> None:
    problem = language_problem(text, "en", ["LATIN"])
    assert problem is not None
    assert script in problem and "LATIN" in problem


def test_script_allowed_when_listed() -> None:
    text = "Погода была прекрасной в субботу, и мы гуляли вдоль реки."
    assert language_problem(text, "ru", ["CYRILLIC"]) is None
    assert language_problem(text, "ru", ["LATIN", "CYRILLIC"]) is None


def test_mostly_latin_with_some_foreign_words_passes() -> None:
    text = ENGLISH + " Привет."
    assert language_problem(text, "en", ["LATIN"]) is None


def test_german_paragraph_fails_for_english_source() -> None:
    problem = language_problem(GERMAN, "en", ["LATIN"])
    assert problem is not None
    assert "`en`" in problem and "`de`" in problem


def test_german_paragraph_passes_for_german_source() -> None:
    assert language_problem(GERMAN, "de", ["LATIN"]) is None


def test_english_fails_for_german_source() -> None:
    assert language_problem(ENGLISH, "de", ["LATIN"]) is not None


@pytest.mark.parametrize("text", ["Hallo Welt", "Guten Morgen, wie geht es dir?", "ok", "12345 !!!", "", "Danke schön"])
def test_short_texts_pass(text: str) -> None:
    assert language_problem(text, "en", ["LATIN"]) is None


def test_unknown_source_language_only_checks_script() -> None:
    assert language_problem(GERMAN, "sv", ["LATIN"]) is None


def test_script_shares_sum_to_one() -> None:
    shares = script_shares("abc где")
    assert set(shares) == {"LATIN", "CYRILLIC"}
    assert shares["LATIN"] == pytest.approx(0.5) and sum(shares.values()) == pytest.approx(1.0)


# --------------------------------------------------------------------------- split_chunks


def squash(text: str) -> str:
    return "".join(text.split())


def test_short_text_is_one_chunk() -> None:
    assert split_chunks("Hello there. How are you?", 100) == ["Hello there. How are you?"]


def test_sentences_packed_within_limit() -> None:
    text = "One two three. Four five six! Seven eight nine? Ten eleven twelve."
    chunks = split_chunks(text, 32)
    assert chunks == ["One two three. Four five six!", "Seven eight nine?", "Ten eleven twelve."]
    assert all(len(c) <= 32 for c in chunks)


def test_newlines_split_and_blank_lines_dropped() -> None:
    chunks = split_chunks("Title\n\n\nFirst line of body\nsecond line", 12)
    assert chunks == ["Title", "First line", "of body", "second line"]


def test_over_long_sentence_is_cut_at_spaces() -> None:
    sentence = " ".join(f"word{i}" for i in range(60))
    chunks = split_chunks(sentence + ".", 50)
    assert len(chunks) > 1
    assert all(len(c) <= 50 for c in chunks)
    assert all(not c.startswith(" ") and not c.endswith(" ") for c in chunks)
    # cuts fall between words: every chunk is made of whole words
    words = {f"word{i}" for i in range(60)} | {"word59."}
    assert all(set(c.split()) <= words for c in chunks)
    assert squash(" ".join(chunks)) == squash(sentence + ".")


def test_over_long_word_is_hard_cut() -> None:
    text = "x" * 125
    chunks = split_chunks(text, 50)
    assert chunks == ["x" * 50, "x" * 50, "x" * 25]


def test_pending_chunk_flushed_before_long_sentence() -> None:
    chunks = split_chunks("Short. " + "y" * 30, 10)
    assert chunks[0] == "Short."
    assert "".join(chunks[1:]) == "y" * 30


def test_cjk_sentence_ends() -> None:
    chunks = split_chunks("今天天气很好。 我们去公园吧！ 好的？", 8)
    assert chunks == ["今天天气很好。", "我们去公园吧！", "好的？"]


def test_empty_text() -> None:
    assert split_chunks("", 10) == []
    assert split_chunks("  \n\n ", 10) == []


@pytest.mark.parametrize("seed", range(25))
def test_random_text_keeps_everything_and_respects_max_chars(seed: int) -> None:
    rng = random.Random(seed)
    vocab = ["a", "tree", "antidisestablishmentarianism", "is", "green.", "Why?", "Yes!", "x" * 70, "\n", "ok"]
    text = " ".join(rng.choice(vocab) for _ in range(rng.randint(1, 300)))
    max_chars = rng.choice([20, 40, 64, 200, 1000])
    chunks = split_chunks(text, max_chars)
    assert squash(" ".join(chunks)) == squash(text)
    assert all(0 < len(c) <= max_chars for c in chunks)


def test_degenerate_translations_are_flagged() -> None:
    from worker.stages.translate import quality_problems

    source = "The shop is closed on Sunday."
    assert quality_problems(source, "Das Geschäft ist am Sonntag geschlossen.") == []
    assert quality_problems(source, "") == ["empty"]
    assert quality_problems(source, "  ...  ") == ["empty"]
    assert quality_problems(source, "The shop is closed on Sunday.") == ["copy"]
    assert quality_problems(source, "the SHOP is closed, on sunday") == ["copy"]
    assert quality_problems(source, "Der Laden der Laden der Laden der Laden ist zu") == ["repetition"]
    assert quality_problems(source, "ist ist ist ist") == ["repetition"]
    looping = " ".join(["und", "die", "und", "der"] * 6)
    assert quality_problems(source, looping) == ["repetition"]
    assert quality_problems("Hi", "Hi") == []  # a short source may well be copied (names, greetings)
    assert quality_problems("", "") == []

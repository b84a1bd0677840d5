"""Cheap checks that a text is in a language a translation model can read.

Two signals, no model: the Unicode script of the letters, and for a few source
languages the share of their most common function words. A text that fails either
becomes a dead letter (`unsupported_language`) instead of a confident mistranslation.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

FUNCTION_WORDS = {
    "en": set(
        "the of and to a in is that for it was on with as by are be this from at i you he she we they not or an "
        "have has but my me your so do can will just if what all there get go u ur r im its am our"
        " how when out up no".split()
    ),
    "de": set("der die das und ist nicht ein eine zu den mit von sich auf für im dem des auch es ich sie wir".split()),
    "fr": set("le la les et est un une des du de en que qui dans pour pas sur au il elle nous vous".split()),
    "es": set("el la los las y es un una de del en que por con para no se al lo su".split()),
    "it": set("il lo la gli le e di che è per non un una del della con sono si".split()),
    "pt": set("o os as e de do da dos das que em um uma para com não se por".split()),
    "nl": set("de het een en van is dat niet op te zijn met voor er ook".split()),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
MIN_WORDS = 8
MIN_FUNCTION_SHARE = 0.05
MIN_SCRIPT_SHARE = 0.6


def script_shares(text: str) -> Counter[str]:
    """Share of letters per Unicode script name (LATIN, CYRILLIC, CJK, ...)."""
    counts: Counter[str] = Counter()
    for ch in text:
        if ch.isalpha():
            name = unicodedata.name(ch, "UNKNOWN")
            counts[name.split()[0]] += 1
    total = sum(counts.values()) or 1
    return Counter({script: n / total for script, n in counts.items()})


def language_problem(text: str, source_lang: str, scripts: list[str]) -> str | None:
    """None when the text looks readable, else a short reason for the dead letter."""
    shares = script_shares(text)
    if not shares:
        return None
    allowed = sum(shares.get(s.upper(), 0.0) for s in scripts)
    if allowed < MIN_SCRIPT_SHARE:
        main = shares.most_common(1)[0][0]
        return f"mostly {main} script; the model reads {', '.join(scripts)}"
    words = [w.lower() for w in _WORD.findall(text)]
    lang = source_lang.split("_")[0].lower()
    if lang not in FUNCTION_WORDS or len(words) < MIN_WORDS:
        return None
    shares_by_lang = {code: sum(w in common for w in words) / len(words) for code, common in FUNCTION_WORDS.items()}
    own = shares_by_lang[lang]
    rival, rival_share = max(((c, v) for c, v in shares_by_lang.items() if c != lang), key=lambda cv: cv[1])
    if own < MIN_FUNCTION_SHARE or (rival_share >= 0.08 and rival_share > own * 1.5):
        return f"does not look like `{source_lang}` (closer to `{rival}`: {rival_share:.0%} vs {own:.0%} common words)"
    return None

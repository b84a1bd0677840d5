"""Hypothesis strategies for hostile input: what a consumer must survive, as raw bytes.

Shared by the unit tests of the source boundary and by the integration tests that send
the same records through a real broker, PostgreSQL and both HTTP routes.

A record is `(key, value)` bytes (either may be None): random bytes; random JSON
structures nested up to 5,000 levels; lone surrogates and NUL characters in random
fields and keys; huge numbers (beyond 64 bits, beyond a float, beyond Python's digit
limit) and NaN/Infinity; huge strings and ids; duplicate keys; null keys and values;
non-UTF-8 bytes; and valid-looking documents with one of those in a field.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st

Record = tuple[bytes | None, bytes | None]

NASTY_CHARS = ["\x00", "\ud800", "\udfff", "\udc80", "\ufffe", "\uffff", "\u202e", "\U0001f4a9", "\\", '"', "\n", "\x7f", "\u0085"]
REASONS = {
    "invalid_json", "invalid_utf8", "not_an_object", "missing_text", "wrong_type", "empty_text", "too_large",
    "too_deep", "duplicate_key", "number_out_of_range", "invalid_id", "null_value",
}


def _nasty_text(draw: st.DrawFn, max_size: int = 40) -> str:
    base = draw(st.text(max_size=max_size))
    for _ in range(draw(st.integers(0, 3))):
        at = draw(st.integers(0, len(base)))
        base = base[:at] + draw(st.sampled_from(NASTY_CHARS)) + base[at:]
    return base


@st.composite
def nasty_strings(draw: st.DrawFn) -> str:
    return _nasty_text(draw)


def _dumps(value: Any) -> str:
    """JSON text; lone surrogates become \\udXXX escapes, NaN/Infinity stay (hostile on purpose)."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True)


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70), st.floats(allow_nan=True, allow_infinity=True),
    nasty_strings(), st.text(max_size=20),
)
json_values = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(nasty_strings(), children, max_size=4)),
    max_leaves=6,
)


def _deep(depth: int, kind: str) -> str:
    if kind == "list":
        return "[" * depth + "1" + "]" * depth
    return '{"a":' * depth + "1" + "}" * depth


@st.composite
def hostile_field(draw: st.DrawFn, storable: bool = False) -> str:
    """The JSON text of one hostile field value (`storable`: one that a document may keep)."""
    choice = draw(st.sampled_from([4, 8, 9, 10]) if storable else st.integers(0, 10))
    if choice == 8:  # hostile but storable: nesting under the limit, NULs (removed), odd characters, 64-bit ints
        return _deep(draw(st.integers(1, 60)), draw(st.sampled_from(["list", "dict"])))
    if choice == 9:
        return _dumps("\x00\u202e\U0001f4a9\ufffe" + draw(st.text(max_size=20)))
    if choice == 10:
        return str(draw(st.integers(-(2**63), 2**63 - 1)))
    if choice == 0:
        return _deep(draw(st.integers(1, 5000)), draw(st.sampled_from(["list", "dict"])))
    if choice == 1:
        return _dumps(_nasty_text(draw))
    if choice == 2:
        return draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e400", str(2**64), str(-(2**63) - 1),
                                     "9" * 5000, "1" * 400, "0.5e-400"]))
    if choice == 3:
        return _dumps("x" * draw(st.sampled_from([300, 300, 70_000, 70_000, 70_000, 1_100_000])))
    if choice == 4:
        return "null"
    if choice == 5:
        return _dumps(draw(json_values))
    if choice == 6:
        return '{"k": 1, "k": 2}'
    return _dumps({_nasty_text(draw): 1})


@st.composite
def hostile_object(draw: st.DrawFn) -> bytes:
    """A valid-looking document with hostile parts: text, id, keys and field values."""
    parts: list[str] = []
    if draw(st.integers(0, 2)) == 0:  # hostile, yet a document: everything in it can be stored once canonical
        parts.append('"id": ' + _dumps(f"kept-{draw(st.integers(0, 10**9))}\x00"))
        parts.append('"text": ' + _dumps("a hostile neighbour \x00\u202e\U0001f4a9 " + draw(st.text(max_size=30))))
        for index in range(draw(st.integers(0, 3))):
            parts.append(_dumps(f"f{index}\x00" + draw(st.text(max_size=8))) + ": " + draw(hostile_field(storable=True)))
        return ("{" + ", ".join(draw(st.permutations(parts))) + "}").encode("utf-8", "surrogatepass")
    if draw(st.booleans()):
        parts.append('"id": ' + draw(st.one_of(
            st.just(_dumps("i" * 600)), st.just(str(2**80)), st.just("null"), st.just("[1]"), st.just("true"),
            st.just(_dumps("id-\ud800")), st.just(_dumps("\x00")), st.integers(-5, 5).map(str),
            st.text(min_size=1, max_size=30).map(_dumps))))
    text = draw(st.one_of(st.just(_dumps("a hostile neighbour")), hostile_field(), st.just('""'), st.just(_dumps("\x00\x00"))))
    parts.append('"text": ' + text)
    for index in range(draw(st.integers(0, 3))):
        key = _dumps(f"f{index}" + _nasty_text(draw, 12))
        parts.append(f"{key}: {draw(hostile_field())}")
    if draw(st.integers(0, 7)) == 0:
        parts.append('"text": "a duplicate text key"')
    order = draw(st.permutations(parts))
    body = "{" + ", ".join(order) + "}"
    data = body.encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 9)) == 0:  # a stray byte that is not UTF-8
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.sampled_from([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"])) + data[at:]
    return data


@st.composite
def hostile_record(draw: st.DrawFn) -> Record:
    """One hostile Kafka record: (key, value)."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        value: bytes | None = draw(st.binary(max_size=200))
    elif kind == 1:
        value = None  # a tombstone
    elif kind == 2:
        value = _dumps(draw(json_values)).encode("utf-8")
    elif kind == 3:
        value = _deep(draw(st.integers(1, 5000)), draw(st.sampled_from(["list", "dict"]))).encode()
    else:
        value = draw(hostile_object())
    key = draw(st.one_of(st.none(), st.none(), st.binary(max_size=30), st.just(b"\xff\xfe"), st.just(b"k" * 700)))
    return key, value


def valid_document(index: int, tag: str) -> dict[str, Any]:
    """A plain, valid document that must get all its results."""
    return {"id": f"{tag}-valid-{index:05d}", "text": f"Valid neighbour number {index}: the film was good and the service fine."}


@st.composite
def hostile_feedback(draw: st.DrawFn, stage: str = "spam") -> bytes:
    """A feedback record: a row for `stage` with hostile parts, or any hostile record value."""
    if draw(st.integers(0, 3)) == 0:
        _key, value = draw(hostile_record())
        return value if value is not None else b"null"
    fields = {
        "stage": draw(st.sampled_from([_dumps(stage), _dumps(stage), "[]", "{}", "null", "5", _dumps(stage + "\ud800"), _dumps("nope")])),
        "text": draw(st.one_of(st.just(_dumps("a feedback text")), hostile_field())),
        "label": draw(st.sampled_from([_dumps("spam"), _dumps("ham"), "5", str(2**70), "9" * 4400, "[]", "null", _dumps("h\x00am"),
                                       _dumps("x" * 300), _dumps("\udc80")])),
    }
    optional = {
        "who": lambda: draw(st.one_of(st.just(_dumps("tester")), hostile_field())),
        "doc_id": lambda: draw(st.one_of(st.just(_dumps("d-1")), hostile_field())),
        "answers": lambda: '{"text": ' + draw(st.sampled_from(["5", "[]", '["a"]', "null", '"abc"', "[[1]]"])) + "}",
        "context": lambda: draw(hostile_field()),
        "question": lambda: draw(hostile_field()),
    }
    for name in draw(st.lists(st.sampled_from(sorted(optional)), unique=True, max_size=3)):
        fields[name] = optional[name]()
    body = "{" + ", ".join(f"{_dumps(k)}: {v}" for k, v in draw(st.permutations(list(fields.items())))) + "}"
    return body.encode("utf-8", "surrogatepass")

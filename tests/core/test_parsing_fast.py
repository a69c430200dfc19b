"""The contract fast path (core/parsing.parse_contract) gives the full parser's result on every reply, or none.

Replies are generated around the contract form (`[Ai] <name>: <score>/10 — <rationale>` and the four trailer
lines): exact ones, and near misses in every part of a line (separators, spaces, tags, unicode digits, number
words, decimals, scores out of range or with another denominator, a second score or a range in the rationale,
`;` and `|` lists, reasoning tags, JSON, prose, emphasis), in the reply (duplicate, missing, renamed, shuffled
slots, blank and whitespace lines, CRLF, trailing text, cuts) and in the call (finish_reason, the rubric's
names, names that look like trailer keys). On every one parse_reply must equal parse_reply_full. The golden
replies are checked here too; the other parser tests call parse_reply through tests/core/parsing_identity.py.
Derandomized and without an example database, so the run is the same everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mira_dagster.core.parsing import parse_contract, parse_reply, parse_reply_full
from mira_dagster.core.rubric import N_SLOTS
from mira_dagster.package_data import ANCHORS_DIR
from tests.core.parsing_identity import assert_same

REPLIES = Path(__file__).resolve().parents[1] / "fixtures" / "replies"
RUBRICS = {g: [json.loads(x)["name"] for x in (ANCHORS_DIR / f"group_{g}_dim_anchors.jsonl").open()] for g in "2D"}
OFFLINE = ["clarity", "correctness", "reasoning_depth", "relevance", "efficiency", "completeness", "novelty"]
ODD_NAMES = [
    "Dim 3",
    "Top 5 Accuracy",
    "Score",
    "one of ten",
    "N/A rate",
    "7/10 quality",
    "x = y",
    "Step 2 + 3",
    "Range 7-8",
    "Self-Consistency",
    "a - b",
    ".hidden",
    " spaced",
    "Cl\u00e4rity \u0130",
    "\u0661\u0662 digits",
    "Seven Seas",
    "Overall Quality",
    "brief",
]
SETTINGS = settings(
    max_examples=1500,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

RATIONALES = [
    "Clear and correct.",
    "weak on clarity judged from the record's surface features (offline stand-in).",
    "Every step checks out without gaps.",
    "About right throughout; the output is fine.",
    "Reaches 7/12 as the final answer.",
    "I'd say 8/10 on reflection.",
    "score 7 would be fair",
    "overall a (9/10) effort",
    "Score: 6",
    "or 8 maybe",
    "to ten steps",
    "- 6/10",
    "(8/10)",
    "8/10",
    "Covers both cases; misses one edge case.",
    "first | second",
    "uses </think> literally",
    '{"A1": 3}',
    "**bold** claim",
    ". Leading dot",
    "Rationale: labelled",
    "ends in a quote'",
    "the ratio 3:1 holds",
    "ſcore 5/10 folded",
    "\u212a kelvin",
    "trailing spaces   ",
    "nbsp at the end\u00a0",
    "",
]
SCORES = ["0", "3", "7", "10", "7.5", "0.5", "11", "10.5", "-1", "07", "\u0667", "seven", "N/A", "7-8", "7 or 8", "7,5"]
DENOMS = ["/10", "/10", "/10", "/ 10", "/100", "/5", " out of 10", "", "/10.0", "/1"]
NAME_SEPS = [": ", ": ", ": ", ":", " : ", " - ", " — ", "\uff1a ", " = ", " "]
RATIONALE_SEPS = [" — ", " — ", " — ", " - ", " – ", ": ", " | ", "; ", " —", " ", ". "]
TAGS = ["[A{n}] ", "[A{n}] ", "[A{n}] ", "[A{n}]", "[ A{n} ] ", "A{n}. ", "**[A{n}]** ", "- [A{n}] ", "[a{n}] "]
TRAILER = {"overall": "72", "training_recommendation": "keep", "domain_tag": "math/algebra", "brief": "A fine record."}
TRAILER_VALUES = {
    "overall": ["72", "0", "100", "100.5", "101", "7.5", "7.5/10", "72%", "72 points", "abc", "", "'72'", "-3"],
    "training_recommendation": ["keep", "downsample", "drop", "Keep", "down-sample", "keep | drop", "maybe", ""],
    "domain_tag": ["math/algebra", "code", "'quoted'", "", "a; b", "  spaced  ", "[tag]"],
    "brief": ["A fine record.", "On 'x': best on y (5/10).", "", "*", "has; a semicolon", "Two | parts", "x"],
}
KEY_FORMS = ["{k}: ", "{k}: ", "{k}: ", "{k}:", "{k} : ", "**{k}:** ", "{K}: ", "- {k}: ", "{k}= "]
FINISH = ["stop", "stop", "stop", None, "length", "eos", "end_turn", "content_filter"]
NOISE = ["", "   ", "Here is my evaluation:", "<think>", "</think>", "```", "{", "Score: 7/10", "\t"]


PLAIN = RATIONALES[:4]


@st.composite
def slot_line(draw: st.DrawFn, n: int, name: str, exact: bool) -> str:
    """One slot line: in the contract form (its rationale may still hold a second score), or a near miss in one or
    more of its parts."""
    if exact:
        score = draw(st.sampled_from(SCORES[:6]))
        rationale = draw(st.sampled_from(PLAIN) if draw(st.integers(0, 9)) else st.sampled_from(RATIONALES))
        return f"[A{n}] {name}: {score}/10 — {rationale}"
    tag = draw(st.sampled_from(TAGS)).format(n=n)
    return (
        tag
        + name
        + draw(st.sampled_from(NAME_SEPS))
        + draw(st.sampled_from(SCORES))
        + draw(st.sampled_from(DENOMS))
        + draw(st.sampled_from(RATIONALE_SEPS))
        + draw(st.sampled_from(RATIONALES))
    )


@st.composite
def trailer_line(draw: st.DrawFn, key: str, exact: bool) -> str:
    if exact:
        return f"{key}: " + draw(st.sampled_from([TRAILER[key], *TRAILER_VALUES[key][:3]]))
    form = draw(st.sampled_from(KEY_FORMS))
    return form.format(k=key, K=key.capitalize()) + draw(st.sampled_from(TRAILER_VALUES[key]))


@st.composite
def replies(draw: st.DrawFn) -> tuple[str, str | None, list[str]]:
    """A third exact contract replies, a third with one near miss (a line, the slots, the trailer, the text or
    the call), a third with misses anywhere."""
    mode = draw(st.sampled_from(["exact", "one", "many"]))
    rubric = draw(st.sampled_from(["2", "D", "offline", "odd"]))
    names = (
        RUBRICS[rubric]
        if rubric in RUBRICS
        else OFFLINE
        if rubric == "offline"
        else draw(st.lists(st.sampled_from(ODD_NAMES + OFFLINE), min_size=1, max_size=N_SLOTS))
    )
    miss = draw(st.sampled_from(["line", "slots", "trailer", "text", "call"])) if mode == "one" else None

    def bad(what: str) -> bool:
        return mode == "many" and draw(st.integers(0, 3)) == 0 or miss == what

    count = draw(st.integers(1, N_SLOTS))
    slots = list(range(1, count + 1))
    if bad("slots"):  # drop, repeat, renumber or shuffle slots
        slots = draw(st.lists(st.integers(0, 17), min_size=1, max_size=N_SLOTS + 2))
    odd_line = draw(st.integers(0, len(slots) - 1)) if miss == "line" else -1
    lines = [
        draw(slot_line(n, names[(n - 1) % len(names)] if n >= 1 else "zero", i != odd_line and mode != "many"))
        for i, n in enumerate(slots)
    ]
    keys = list(TRAILER)
    if bad("trailer") and draw(st.booleans()):  # drop, repeat or reorder trailer keys
        keys = draw(st.lists(st.sampled_from(list(TRAILER)), max_size=6))
    odd_key = draw(st.sampled_from(keys)) if miss == "trailer" and keys else None
    lines += [draw(trailer_line(k, k != odd_key and not (mode == "many" and draw(st.booleans())))) for k in keys]
    for _ in range(draw(st.integers(0, 2))):  # blank and whitespace lines are fine; prose, tags, fences are not
        noise = NOISE if bad("text") else NOISE[:2]
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(noise)))
    ends = ["\n", "\n", "", "\n\n", "\n   "] + (["\nThanks!", " "] if bad("text") else [])
    text = "\n".join(lines) + draw(st.sampled_from(ends))
    if draw(st.integers(0, 5)) == 0:
        text = text.replace("\n", "\r\n")
    if bad("text") and draw(st.booleans()):  # cut anywhere
        text = text[: draw(st.integers(0, len(text)))]
    calls = bad("call")
    finish = draw(st.sampled_from(FINISH if calls else ["stop", "stop", "eos", None]))
    passed = draw(st.sampled_from([names, (), ["overall", *names], ["Brief Summary", *names]] if calls else [names]))
    return text, finish, list(passed)


@SETTINGS
@given(replies())
def test_fast_path_equals_the_full_parser(case: tuple[str, str | None, list[str]]) -> None:
    assert_same(*case)


@SETTINGS
@given(st.integers(1, N_SLOTS), st.sampled_from(["2", "D"]), st.data())
def test_contract_replies_take_the_fast_path(count: int, group: str, data: st.DataObject) -> None:
    """Exact contract replies (any number of slots, the four trailer lines) are read by the fast path."""
    names = RUBRICS[group]
    scores = data.draw(st.lists(st.integers(0, 20).map(lambda x: x / 2), min_size=count, max_size=count))
    clean = [r for r in RATIONALES[:4] if r]
    rationales = data.draw(st.lists(st.sampled_from(clean), min_size=count, max_size=count))
    pairs = enumerate(zip(scores, rationales, strict=True), 1)
    lines = [f"[A{n}] {names[n - 1]}: {s:g}/10 — {r}" for n, (s, r) in pairs]
    text = "\n".join([*lines, *(f"{k}: {v}" for k, v in TRAILER.items())]) + "\n"
    fast = parse_contract(text, "stop", names)
    assert fast is not None
    assert fast == parse_reply_full(text, "stop", names)
    assert fast.scores[:count] == scores and fast.status == ("ok" if count == N_SLOTS else "partial")


@pytest.mark.parametrize("path", sorted(REPLIES.iterdir()), ids=lambda p: p.name)
@pytest.mark.parametrize("finish", ["stop", None, "length"])
def test_golden_replies(path: Path, finish: str | None) -> None:
    text = path.read_text(encoding="utf-8")
    for names in (RUBRICS["2"], RUBRICS["D"], ()):
        assert_same(text, finish, names)


def test_near_misses_go_to_the_full_parser() -> None:
    """One near miss of each kind is not read by the fast path (it would have to be right about it)."""
    line = "[A1] Clarity: 7/10 — clear"
    trailer = "\n".join(f"{k}: {v}" for k, v in TRAILER.items())
    assert parse_contract(f"{line}\n{trailer}\n", "stop", ["Clarity"]) is not None
    for miss in (
        "[A1] Clarity: 7/10 — clear, though 8/10 on reflection",
        "[A1] Clarity: 7/10 — or 8",
        "[A1] Clarity: 11/10 — clear",
        "[A1] Clarity: \u0667/10 — clear",
        "[A1] Clarity - 7/10 — clear",
        "[A1] Step 2 + 3: 7/10 — clear",
        "[A1] Top 5/10 Accuracy: 7/10 — clear",
        "[A1] Clarity: 7/10 — clear\n[A1] Clarity: 7/10 — clear",
        "[A1] Clarity: 7/10 — clear; [A2] Depth: 5/10 — ok",
        "[A1] Clarity: 7/10 — clear\nA note.",
        "**[A1] Clarity**: 7/10 — clear",
    ):
        assert parse_contract(f"{miss}\n{trailer}\n", "stop", ["Clarity"]) is None, miss
    assert parse_contract(f"{line}\n{trailer}\n", "length", ["Clarity"]) is None
    assert parse_contract(f"{line}\n{trailer}", None, ["Clarity"]) is None
    assert parse_contract(f"{line}\n{trailer}\n", "stop", ["Overall"]) is None
    assert parse_contract(f"{line}\n{trailer.replace('72', '7.5/10')}\n", "stop", ["Clarity"]) is None


def test_parse_reply_uses_the_fast_path_result() -> None:
    text = "[A1] Clarity: 7/10 — clear\n" + "\n".join(f"{k}: {v}" for k, v in TRAILER.items()) + "\n"
    r = parse_reply(text, "stop", ["Clarity"])
    assert r.scores[0] == 7.0 and r.rationales[0] == "clear" and r.status == "partial"
    assert r.issues == ["missing slots " + ",".join(f"A{n}" for n in range(2, N_SLOTS + 1))]

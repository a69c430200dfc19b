from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.core.parsing_identity import parse_reply  # held to the full parser on every reply

NAMES = [f"Dim {i}" for i in range(1, 16)]
TRAILER = "overall: 72\ntraining_recommendation: keep\ndomain_tag: math\nbrief: A clean worked solution.\n"


def contract(scores: list[str] | None = None, sep: str = "—", trailer: str = TRAILER) -> str:
    scores = scores or [str(i % 10) for i in range(1, 16)]
    rows = [f"[A{i}] {NAMES[i - 1]}: {s}/10 {sep} reason {i}" for i, s in enumerate(scores, 1)]
    return "\n".join(rows) + "\n" + trailer


def test_clean_reply_is_ok() -> None:
    r = parse_reply(contract())
    assert r.status == "ok"
    assert r.scores == [float(i % 10) for i in range(1, 16)]
    assert r.rationales[0] == "reason 1"
    assert (r.overall, r.recommendation, r.domain_tag, r.brief) == (72.0, "keep", "math", "A clean worked solution.")
    assert r.issues == []


def test_prose_before_and_after() -> None:
    text = "Sure! Here is my evaluation of the record.\n\n" + contract() + "\nLet me know if you need more."
    r = parse_reply(text)
    assert r.status == "ok"
    assert r.scores[14] == 5.0


@pytest.mark.parametrize("sep", ["—", "–", "-", ":", "|"])
def test_separators_before_rationale(sep: str) -> None:
    r = parse_reply(contract(sep=sep))
    assert r.status == "ok"
    assert r.rationales[2] == "reason 3"


def test_decimal_score() -> None:
    scores = ["7.5"] + ["5"] * 14
    assert parse_reply(contract(scores)).scores[0] == 7.5


@pytest.mark.parametrize("bad", ["11", "-1", "N/A", "10.5"])
def test_out_of_range_or_missing_scores_are_null(bad: str) -> None:
    scores = [bad] + ["5"] * 14
    r = parse_reply(contract(scores))
    assert r.scores[0] is None
    assert r.scores[1] == 5.0
    assert r.status == "partial"
    assert any(i.startswith("A1:") for i in r.issues)


def test_na_without_denominator() -> None:
    text = contract().replace("[A3] Dim 3: 3/10", "[A3] Dim 3: N/A")
    r = parse_reply(text)
    assert r.scores[2] is None and r.status == "partial"


def test_markdown_bold_names_and_scores() -> None:
    text = contract().replace("[A1] Dim 1: 1/10", "**[A1] Dim 1**: **1/10**").replace("overall: 72", "**overall:** 72")
    r = parse_reply(text)
    assert r.status == "ok"
    assert r.scores[0] == 1.0 and r.overall == 72.0


def test_windows_line_endings() -> None:
    r = parse_reply(contract().replace("\n", "\r\n"))
    assert r.status == "ok"
    assert r.brief == "A clean worked solution."


def test_missing_slot_is_partial() -> None:
    text = "\n".join(line for line in contract().split("\n") if not line.startswith("[A7]"))
    r = parse_reply(text)
    assert r.status == "partial"
    assert r.scores[6] is None
    assert "missing slots A7" in r.issues


def test_slot_given_twice_with_different_scores_is_refused() -> None:
    # was: the first kept, status ok (a number the reply does not give unambiguously)
    text = contract().replace("[A2] Dim 2: 2/10 — reason 2", "[A2] Dim 2: 2/10 — reason 2\n[A2] Dim 2: 9/10 — again")
    r = parse_reply(text)
    assert r.scores[1] is None
    assert "A2: given 2 times with different scores (2, 9); none stored" in r.issues
    assert r.status == "partial"


def test_slot_given_twice_with_the_same_score_is_kept() -> None:
    text = contract().replace("[A2] Dim 2: 2/10 — reason 2", "[A2] Dim 2: 2/10 — reason 2\n[A2] Dim 2: 2/10 — again")
    r = parse_reply(text)
    assert r.scores[1] == 2.0 and r.rationales[1] == "reason 2" and r.status == "ok"
    assert r.issues == ["A2 repeated with the same score"]


def test_repeated_names_are_matched_by_slot() -> None:
    # Group 2's rubric has "Answer Completeness" at A8 and A11.
    text = contract().replace("Dim 8", "Answer Completeness").replace("Dim 11", "Answer Completeness")
    r = parse_reply(text)
    assert r.scores[7] == 8.0 and r.scores[10] == 1.0


def test_reply_cut_mid_line_at_max_tokens() -> None:
    full = contract()
    cut = full[: full.index("[A9] Dim 9: 9") + len("[A9] Dim 9: 9")]
    r = parse_reply(cut, finish_reason="length")
    assert r.status == "partial"
    assert r.scores[7] == 8.0
    assert r.scores[8] is None
    assert "reply cut off" in r.issues
    assert r.overall is None


def test_reply_cut_inside_denominator_without_finish_reason() -> None:
    full = contract()
    cut = full[: full.index("[A4] Dim 4: 4/1") + len("[A4] Dim 4: 4/1")]
    r = parse_reply(cut)
    assert r.scores[3] is None
    assert r.scores[2] == 3.0
    assert "reply cut off" in r.issues


def test_cut_in_trailer_value_drops_it() -> None:
    full = contract()
    cut = full[: full.index("overall: 72") + len("overall: 7")]
    r = parse_reply(cut, finish_reason="length")
    assert r.overall is None
    assert all(s is not None for s in r.scores)
    assert r.status == "partial"


def test_prose_only_is_parse_error() -> None:
    r = parse_reply("I think this record is pretty good overall, maybe a 7.")
    assert r.status == "parse_error"
    assert r.scores == [None] * 15


def test_empty_reply_is_parse_error() -> None:
    assert parse_reply("").status == "parse_error"
    assert parse_reply(" \n", "stop").issues[0] == parse_reply("", "length").issues[0] == "the reply is empty"


def test_no_colon_form_with_denominator() -> None:
    text = contract().replace("[A5] Dim 5: 5/10 —", "[A5] Dim 5 - 6/10 -")
    r = parse_reply(text)
    assert r.scores[4] == 6.0


def test_unknown_recommendation_and_bad_overall() -> None:
    text = contract(trailer="overall: 140\ntraining_recommendation: maybe\ndomain_tag: x\nbrief: y\n")
    r = parse_reply(text)
    assert r.overall is None and r.recommendation is None
    assert r.status == "partial"
    assert any("overall" in i for i in r.issues) and any("recommendation" in i for i in r.issues)


def test_score_out_of_100_is_rejected() -> None:
    text = contract().replace("[A6] Dim 6: 6/10", "[A6] Dim 6: 60/100")
    r = parse_reply(text)
    assert r.scores[5] is None


# --- the rules the golden table (test_parsing_golden.py) exercises on whole replies, one at a time ---


def test_stop_is_never_cut_off() -> None:
    full = contract()
    text = full[: full.index("[A9] Dim 9: 9") + len("[A9] Dim 9: 9")]
    r = parse_reply(text, finish_reason="stop")
    assert "reply cut off" not in r.issues
    assert r.scores[8] == 9.0
    assert "missing overall, training_recommendation, domain_tag, brief" in r.issues


def test_no_final_newline_is_not_cut_off() -> None:
    text = contract(trailer="training_recommendation: keep\ndomain_tag: math\nbrief: fine.\noverall: 72")
    for finish in (None, "stop"):
        r = parse_reply(text, finish)
        assert r.status == "ok" and r.issues == [], finish


@pytest.mark.parametrize(
    "tail", ["[A1", "[A", "overall", "training_recommendation", "Training Recommendation", "domain_tag:", "brief:"]
)
def test_obviously_truncated_last_line_without_finish_reason(tail: str) -> None:
    r = parse_reply(contract(trailer="") + tail)
    assert "reply cut off" in r.issues


@pytest.mark.parametrize("tail", ["Let me know if you need more.", "brief: fine.", "training_recommendation: keep"])
def test_complete_last_line_without_finish_reason(tail: str) -> None:
    r = parse_reply(contract(trailer="") + tail)
    assert "reply cut off" not in r.issues


@pytest.mark.parametrize(
    ("value", "expected", "issue"),
    [
        ("72", 72.0, None),
        ("72/100", 72.0, None),
        ("72 / 100", 72.0, None),
        ("72%", 72.0, None),
        ("**80**", 80.0, None),
        ("7.8/10", 78.0, "overall 7.8/10 converted to 78 on 0-100"),
        ("8.5 out of 10", 85.0, "overall 8.5/10 converted to 85 on 0-100"),
        ("10/10", 100.0, "overall 10/10 converted to 100 on 0-100"),
        ("150", None, "overall not a number in 0-100: '150'"),
        ("72/50", None, "overall out of 50, not 100: '72/50'"),
        ("N/A", None, "overall not a number in 0-100: 'N/A'"),
    ],
)
def test_overall_is_on_0_100(value: str, expected: float | None, issue: str | None) -> None:
    r = parse_reply(contract(trailer=TRAILER.replace("overall: 72", f"overall: {value}")), "stop")
    assert r.overall == expected
    assert r.issues == ([issue] if issue else [])


@pytest.mark.parametrize(
    ("value", "expected"),
    [("KEEP", "keep"), ("Downsample", "downsample"), ("down-sample", "downsample"), ("drop — low value", "drop")],
)
def test_recommendation_forms(value: str, expected: str) -> None:
    r = parse_reply(contract(trailer=TRAILER.replace("keep", value)), "stop")
    assert r.recommendation == expected and r.status == "ok"


@pytest.mark.parametrize("value", ["keep / drop", "keep | downsample | drop", "maybe"])
def test_recommendation_not_chosen(value: str) -> None:
    r = parse_reply(contract(trailer=TRAILER.replace("keep", value)), "stop")
    assert r.recommendation is None and r.status == "partial"
    assert any(i.startswith("unknown recommendation") for i in r.issues)


def test_score_is_the_number_after_the_name() -> None:
    text = contract().replace("[A3] Dim 3: 3/10 — reason 3", "[A3] Clarity 7/10 — the ratio 3:1 holds at step 2: 5")
    r = parse_reply(text, "stop")
    assert r.scores[2] == 7.0 and r.rationales[2] == "the ratio 3:1 holds at step 2: 5"


def test_a_rationale_without_a_score_gives_no_score() -> None:
    text = contract().replace("[A3] Dim 3: 3/10 — reason 3", "[A3] Clarity — the ratio 3:1 holds")
    r = parse_reply(text, "stop")
    assert r.scores[2] is None and "A3: no score" in r.issues
    assert r.rationales[2] == "the ratio 3:1 holds"


def test_slot_tag_inside_text_is_not_a_slot() -> None:
    text = "Note that [A3] was the hardest call.\n" + contract().replace("reason 5", "unlike [A3], fine")
    r = parse_reply(text, "stop")
    assert r.status == "ok" and r.issues == []
    assert r.rationales[4] == "unlike [A3], fine"


def test_reasoning_tag_mentioned_in_a_rationale_is_text() -> None:
    text = contract().replace("reason 7", "the </think> tag closes the trace and <think> opens it")
    r = parse_reply(text, "stop")
    assert r.status == "ok" and r.issues == []
    assert r.scores[0] == 1.0


def test_overall_given_twice_with_different_values_is_refused() -> None:
    # was: the last kept (80); a prose line under the key is not a value
    text = "Overall: the record is strong.\n" + contract(trailer=TRAILER + "overall: 80\n")
    r = parse_reply(text, "stop")
    assert r.overall is None and r.status == "partial"
    assert r.issues == ["overall given 2 times with different values (72, 80); none stored"]


def test_last_valid_trailer_text_wins() -> None:
    text = contract(trailer=TRAILER + "domain_tag: algebra\n")
    r = parse_reply(text, "stop")
    assert r.domain_tag == "algebra"
    assert r.issues == ["domain_tag given 2 times with different values; last kept"]


def test_unclosed_think_is_only_a_draft() -> None:
    # was: read as the answer (status ok); an unclosed reasoning block is a draft, asked again
    r = parse_reply("<think>\nThe record is fine.\n" + contract(), "stop")
    assert r.status == "parse_error" and r.scores == [None] * 15
    assert r.issues[0] == "unclosed <think> block: the reply is only a draft; nothing in it is read"


def _best_ms(*texts: str) -> list[float]:
    """Each text's best parse time of 7, the texts timed in turn so that a load spike hits them alike."""
    import time

    best = [float("inf")] * len(texts)
    for _ in range(7):
        for i, text in enumerate(texts):
            t0 = time.perf_counter()
            parse_reply(text, "stop")
            best[i] = min(best[i], time.perf_counter() - t0)
    return [b * 1000 for b in best]


@pytest.mark.parametrize(
    "text",
    [
        "".join(f"[A{i % 15 + 1}] Dim {i}: {i % 10}/10 — reason {i}: 3:1, 4:5 at 10:42\n" for i in range(1000)),
        "[A3] Clarity 7/10 — " + "ratio 3:1 at 10:42, 2/3 of 7 steps: 5 " * 1400,
        "[A3] Clarity — " + "ratio 3:1 at 10:42, 2 of 7 steps: 5 (score " * 1200,
        "[A3] " + "1 " * 25_000,
        "- " * 25_000 + "[A1]",
        "overall: " + " " * 50_000 + "x",
        "<think>" * 7000,
        "**[A1]** " * 5500,
    ],
    ids=["slot-lines", "colons-and-digits", "no-score-colons", "digits", "bullets", "spaces", "tags", "emphasis"],
)
def test_parsing_grows_linearly_to_50kb(text: str) -> None:
    """No pattern backtracks on long replies: 8x the text costs about 8x the time, not 64x (quadratic) or worse.
    A ratio measured in the same run (machines here are shared and noisy), with 2 ms of slack for tiny timings."""
    assert len(text) >= 49_000
    eighth, full = _best_ms(text[: len(text) // 8], text)
    assert full <= 24 * eighth + 2, f"{full:.1f} ms for 50 KB vs {eighth:.1f} ms for an eighth of it"


def test_contract_key_wins_over_its_alias() -> None:
    text = contract(trailer=TRAILER + "Summary: This is a high-quality record overall.\nDomain: mathematics\n")
    r = parse_reply(text, "stop")
    assert (r.brief, r.domain_tag) == ("A clean worked solution.", "math")
    assert r.issues == []


def test_single_asterisk_emphasis_around_scores() -> None:
    text = contract().replace("[A2] Dim 2: 2/10 — reason 2", "[A2] *Dim 2*: *8*/10 — _reason 2_")
    r = parse_reply(text, "stop")
    assert r.scores[1] == 8.0 and r.status == "ok"


_PIECES = [
    "[A1] ", "[A15] ", "[A7]", "Dim: ", "7/10", " — ", ": ", "3:1", "N/A", "none of", "(8/10)", "**", "\n", "\n\n",
    "<think>", "</think>", "overall: ", "7.8/10", "brief: ", "training_recommendation: keep", "domain_tag: x", "```",
    "- ", "1. ", "| ", "Score: ", "out of 10", "11", "-1", "x",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=60), st.sampled_from(["stop", "length", None]))
def test_any_text_ends_in_one_consistent_status(pieces: list[str], finish: str | None) -> None:
    r = parse_reply("".join(pieces), finish)
    scored = [s for s in r.scores if s is not None]
    assert (r.status == "parse_error") == (not scored)
    assert all(0 <= s <= 10 for s in scored)
    assert r.overall is None or 0 <= r.overall <= 100
    if r.status == "ok":
        assert None not in (r.overall, r.recommendation, r.domain_tag, r.brief)
    if finish == "stop":
        assert "reply cut off" not in r.issues


@pytest.mark.parametrize("hedge", ["or 8", "maybe 8", "to 9", "perhaps 6"])
def test_an_alternative_after_the_dash_is_refused(hedge: str) -> None:
    """`7/10 — or 8`: the rationale offers another score (a real small model wrote such lines); none is stored."""
    r = parse_reply(contract().replace("[A3] Dim 3: 3/10 — reason 3", f"[A3] Dim 3: 3/10 — {hedge}"))
    assert r.scores[2] is None and r.status == "partial"
    assert any(i.startswith("A3: a range or alternative") for i in r.issues)
    assert parse_reply(contract().replace("reason 3", "or 3")).scores[2] == 3.0  # the same number is one score


# _may_hold_score spares a rationale the two late-score scans only when neither can match: never a false "no".
_FOLDS = "\u0130\u0131\u017f\u212a"


def test_the_letters_that_fold_to_ascii_under_re_i_are_the_four_the_guard_knows() -> None:
    import re

    from mira_dagster.core.parsing import _FOLDS_TO_ASCII

    letter = re.compile("[a-z/]", re.I)
    found = {chr(c) for c in range(0x80, 0x110000) if letter.fullmatch(chr(c))}
    assert found == set(_FOLDS_TO_ASCII) == set(_FOLDS)


@settings(max_examples=400)
@given(
    st.lists(
        st.sampled_from(
            [*"0123456789 /.:()[]—-,;OoUuTtSsCcRrEeAaIiNnGg", *_FOLDS, "10", " out of ", "score", "rating", "ten"]
            + ["8/10", " 7 out of ten", "ſcore: 7", "RATıNG = 6", "(7 / 10)", " oUt of 10", "Score:9"]
        ),
        max_size=24,
    )
)
def test_the_late_score_guard_never_skips_a_match(pieces: list[str]) -> None:
    from mira_dagster.core.parsing import _ANY_OF_TEN, _LATE_SCORE, _may_hold_score

    text = "".join(pieces)
    if _LATE_SCORE.search(text) or _ANY_OF_TEN.search(text):
        assert _may_hold_score(text)


@pytest.mark.parametrize(
    ("tail", "skipped"),
    [
        (" — clear and correct.", True),
        (" — clear, 8/10 on a second look.", False),
        (" — clear (ſcore: 8).", False),
        (" — OUT OF TEN, clear.", False),
        (" — Rating: 8", False),
    ],
)
def test_the_late_score_guard(tail: str, skipped: bool) -> None:
    from mira_dagster.core.parsing import _may_hold_score

    assert _may_hold_score(tail) is not skipped


TRAILER_JSON = '"overall": 70, "training_recommendation": "keep", "domain_tag": "math", "brief": "fine"'


@pytest.mark.parametrize(
    ("slots", "stored", "issue"),
    [
        # a scale beside the score, or around every slot, that is not out of ten: the number is not a 0-10 score
        ('"A{i}": {{"score": 4, "out_of": 5}}', None, "A1: score out of '5', not 10"),
        ('"A{i}": {{"score": 4, "max score": "1-5"}}', None, "A1: score out of '1-5', not 10"),
        ('"A{i}": {{"score": 4, "scale": "0-10"}}', 4.0, None),
        ('"A{i}": {{"score": 4, "out_of": 10}}', 4.0, None),
    ],
)
def test_a_json_score_is_read_on_its_own_scale(slots: str, stored: float | None, issue: str | None) -> None:
    body = ", ".join(slots.format(i=i) for i in range(1, 16))
    r = parse_reply("{" + body + ", " + TRAILER_JSON + "}", "stop")
    assert r.scores == [stored] * 15
    assert (issue in r.issues) if issue else r.status == "ok"


def test_a_scale_around_the_json_slots_counts_for_each() -> None:
    body = ", ".join(f'"A{i}": 4' for i in range(1, 16))
    r = parse_reply('{"scale": "1-5", ' + body + ", " + TRAILER_JSON + "}", "stop")
    assert r.scores == [None] * 15 and "A15: score out of '1-5', not 10" in r.issues
    r = parse_reply('{"scale": "0-10", ' + body + ", " + TRAILER_JSON + "}", "stop")
    assert r.scores == [4.0] * 15 and r.status == "ok"


SLOTS_BARE = "\n".join(f"[A{i}] Dimension {i}: {i % 5 + 1} — fine" for i in range(1, 16))
SLOTS_TEN = "\n".join(f"[A{i}] Dimension {i}: {i % 5 + 1}/10 — fine" for i in range(1, 16))
TRAILER_TEXT = "\noverall: 70\ntraining_recommendation: keep\ndomain_tag: math\nbrief: fine"
TABLE_1_5 = "| Slot | Score (1-5) |\n|---|---|\n" + "\n".join(f"| A{i} | {i % 5 + 1} |" for i in range(1, 16))


@pytest.mark.parametrize(
    ("reply", "read"),
    [
        ("All scores below are on a 1-5 scale.\n" + SLOTS_BARE, False),
        ("Scores (out of 5):\n" + SLOTS_BARE, False),
        ("Rated on a 5-point scale:\n" + SLOTS_BARE, False),
        (TABLE_1_5, False),
        ("Rate each 1–5:\n" + SLOTS_BARE, False),
        ("I rate them out of 5.\n" + SLOTS_BARE, False),
        # bare numbers under a scale of ten, or each written out of ten: read
        ("Scores (out of 10):\n" + SLOTS_BARE, True),
        ("Scores (out of 5):\n" + SLOTS_TEN, True),
        ("The overall score is out of 100.\n" + SLOTS_BARE, True),
        ("Accurate within 1-5 steps; concise.\n" + SLOTS_BARE, True),  # a word ending in "rate" is no scale
    ],
)
def test_bare_scores_under_a_scale_that_is_not_ten_are_refused(reply: str, read: bool) -> None:
    """A reply that says its scores are out of 5 and then gives bare numbers gave no score out of ten: each was
    stored as x/10 with status ok before."""
    r = parse_reply(reply + TRAILER_TEXT, "stop")
    if read:
        assert r.status == "ok" and r.scores == [float(i % 5 + 1) for i in range(1, 16)]
    else:
        assert r.scores == [None] * 15 and "the reply scores out of 5" in r.issues[0]


@pytest.mark.parametrize(
    ("overall", "recommendation", "stored"),
    [
        ("78 (or 80)", "keep", (None, "keep")),
        ("78-82", "keep", (None, "keep")),
        ("78/100 — but maybe 70", "keep", (None, "keep")),
        ("78 — solid, 2-3 small issues", "keep", (78.0, "keep")),
        ("78, 80", "keep", (None, "keep")),
        ("78 80", "keep", (None, "keep")),
        ("78; 80", "keep", (None, "keep")),
        ("78 and 82", "keep", (None, "keep")),
        ("78, solid overall", "keep", (78.0, "keep")),
        ("78 points", "keep", (78.0, "keep")),
        ("0.78", "keep", (None, "keep")),  # a 0-1 score? 0.78 of 100? not guessed
        ("0.78/100", "keep", (0.78, "keep")),
        ("0", "keep", (0.0, "keep")),
        ("78", "keep or downsample", (78.0, None)),
        ("78", "keep, maybe downsample", (78.0, None)),
        ("78", "keep (borderline)", (78.0, "keep")),
    ],
)
def test_a_hedged_trailer_value_is_not_stored(overall: str, recommendation: str, stored: tuple) -> None:
    """Two values offered for the overall or the recommendation: the first was stored before."""
    r = parse_reply(
        SLOTS_TEN + f"\noverall: {overall}\ntraining_recommendation: {recommendation}\ndomain_tag: m\nbrief: b", "stop"
    )
    assert (r.overall, r.recommendation) == stored


@pytest.mark.parametrize(
    "line",
    [
        "A{i} score: {s}/10 - fine",
        "A{i} score = {s}/10; rationale: fine",
        "A{i} = {s}/10 — fine",
        "A{i}={s}/10",
        "A{i} → {s}/10 fine",
        "A{i} -> {s}/10 fine",
        "A{i} scored {s}/10, fine",
        "A{i} rating: {s}/10 fine",
        "Slot A{i}: {s}/10 fine",
        "Dimension [A{i}] Clarity: {s}/10 fine",
        "a{i}: {s}/10 fine",
        "<A{i}> {s}/10 fine",
        "A-{i}: {s}/10 fine",
        "A_{i}: {s}/10 fine",
        "[A_{i}] {s}/10 fine",
    ],
)
def test_slot_lines_worded_by_other_scorers_are_read(line: str) -> None:
    """A bare tag followed by `=`, an arrow or a score word, after "Slot" / "Dimension", in lower case, in angle
    brackets or with `-` / `_` before its number: every slot was missing before (parse_error, no score stored)."""
    reply = "".join(line.format(i=i, s=i % 10) + "\n" for i in range(1, 16))
    r = parse_reply(reply + "overall: 70\ntraining_recommendation: keep\ndomain_tag: m\nbrief: b", "stop")
    assert r.status == "ok" and r.scores == [float(i % 10) for i in range(1, 16)], r.issues


def test_a_score_word_line_with_a_second_score_is_still_refused() -> None:
    reply = "".join(f"A{i} scored {i % 10}/10, but maybe {i % 10 + 1}/10\n" for i in range(1, 16))
    r = parse_reply(reply + "overall: 70\ntraining_recommendation: keep\ndomain_tag: m\nbrief: b", "stop")
    assert r.scores == [None] * 15 and "two scores on its line" in r.issues[0]


def test_bare_scores_all_within_0_1_with_fractions_are_a_0_1_scale_and_refused() -> None:
    """`A1: 0.7` on every line (or `"score": 0.7` in JSON) is a 0-1 scale: each was stored as 0.7/10 before."""
    trailer = "overall: 70\ntraining_recommendation: keep\ndomain_tag: m\nbrief: b"
    bare = "".join(f"[A{i}] d: 0.{i % 9 + 1} — ok\n" for i in range(1, 16))
    r = parse_reply(bare + trailer, "stop")
    assert r.scores == [None] * 15 and "a 0-1 scale, not 0-10" in r.issues[0]
    slots = {f"A{i}": {"score": (i % 9 + 1) / 10, "rationale": "r"} for i in range(1, 16)}
    r = parse_reply(json.dumps({**slots, "overall": 70, "training_recommendation": "keep"}), "stop")
    assert r.scores == [None] * 15
    for kept in (bare.replace(" — ok", "/10 — ok"), "".join(f"[A{i}] d: {i % 2}\n" for i in range(1, 16))):
        assert parse_reply(kept + trailer, "stop").status == "ok"  # said out of ten; or whole numbers 0 and 1

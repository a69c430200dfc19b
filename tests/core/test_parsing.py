from __future__ import annotations

import pytest

from mira_dagster.core.parsing import parse_reply

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


def test_duplicated_slot_keeps_first() -> None:
    text = contract().replace("[A2] Dim 2: 2/10 — reason 2", "[A2] Dim 2: 2/10 — reason 2\n[A2] Dim 2: 9/10 — again")
    r = parse_reply(text)
    assert r.scores[1] == 2.0
    assert "A2 repeated; first kept" in r.issues
    assert r.status == "ok"


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

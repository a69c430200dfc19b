"""Nectar-style ranked answers: the best rank is the chosen side, the worst the rejected side; a tie at that end is
refused, never broken by a guess nor read as one answer holding every ranked answer."""

from __future__ import annotations

import pytest

from mira_dagster.core.records import Rejected, to_fields

PROMPT = "\n\nHuman: I like tides.\n\nAssistant: Nice!\n\nHuman: Name one fact.\n\nAssistant: "


def _obj(ranks: list[float]) -> dict:
    return {"prompt": PROMPT, "answers": [{"answer": f"answer ranked {r}", "model": "m", "rank": r} for r in ranks]}


def test_best_and_worst_rank_are_the_two_sides_and_every_turn_is_in_the_question() -> None:
    obj = _obj([2.0, 1.0, 3.0])
    layout, chosen = to_fields(obj, "qa_with_think", None, "chosen")
    assert layout == "ranked_answers" and chosen["answer"] == "answer ranked 1.0"
    assert chosen["question"] == "### user\nI like tides.\n\n### assistant\nNice!\n\n### user\nName one fact."
    assert to_fields(obj, "qa_with_think", None, "rejected")[1]["answer"] == "answer ranked 3.0"


@pytest.mark.parametrize(("ranks", "side"), [([1.0, 1.0, 2.0], "chosen"), ([1.0, 3.0, 3.0], "rejected")])
def test_a_tie_at_the_side_taken_is_refused(ranks: list[float], side: str) -> None:
    with pytest.raises(Rejected) as exc:
        to_fields(_obj(ranks), "qa_with_think", None, side)  # type: ignore[arg-type]
    assert exc.value.kind in ("no layout", "empty field")

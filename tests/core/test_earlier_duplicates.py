"""BatchParser asks `earlier` once per batch which record ids an earlier ingest read: those lines are duplicates
named after the earlier line, exactly as a whole read names them, and nothing per earlier record is held."""

from __future__ import annotations

import json
from typing import Any

from mira_dagster.core.records import BatchParser, Unit

ROWS = [{"question": f"What is {i} squared?", "thinking": "multiply", "answer": i * i} for i in range(1, 9)]


def _units(values: list[Any], start: int = 1) -> list[Unit]:
    return [Unit(i, raw=json.dumps(v).encode()) for i, v in enumerate(values, start)]


class Earlier:
    """An earlier read's records, answering like io/earlier.EarlierRecords; counts the questions asked."""

    def __init__(self, held: dict[str, str]) -> None:
        self.held, self.asked = held, []

    def __call__(self, ids: list[str]) -> dict[str, str]:
        self.asked.append(list(ids))
        return {i: self.held[i] for i in ids if i in self.held}


def test_append_read_gives_the_same_records_and_reasons_as_a_whole_read() -> None:
    old, new = ROWS[:5], [ROWS[5], ROWS[1], "not an object", ROWS[6], ROWS[6], ROWS[4]]
    whole = BatchParser("s", "g", "qa_with_think").parse("a.jsonl", _units(old + new))
    first = BatchParser("s", "g", "qa_with_think").parse("a.jsonl", _units(old))
    earlier = Earlier({rid: f"a.jsonl:{pos}" for rid, pos in zip(first.record_id, first.position, strict=True)})
    appended = BatchParser("s", "g", "qa_with_think", earlier=earlier).parse("a.jsonl", _units(new, start=6))
    assert first.record_id + appended.record_id == whole.record_id
    assert first.position + appended.position == whole.position
    assert appended.rejected == whole.rejected  # the same lines, kinds, reasons and excerpts
    reasons = [r[2] for r in appended.rejected if r[1] == "duplicate"]
    assert reasons == ["duplicate of a.jsonl:2", "duplicate of a.jsonl:9", "duplicate of a.jsonl:5"]
    assert len(earlier.asked) == 1 and len(earlier.asked[0]) == 5  # one question per batch, the decoded ids


def test_no_earlier_question_for_a_batch_without_records() -> None:
    earlier = Earlier({})
    parsed = BatchParser("s", "g", "qa_with_think", earlier=earlier).parse("a.jsonl", [Unit(1, raw=b"{broken")])
    assert parsed.record_id == [] and [r[1] for r in parsed.rejected] == ["invalid JSON"]
    assert earlier.asked == []


def test_preference_pairs_both_sides_checked_against_the_earlier_read() -> None:
    pair = {"prompt": "Which is right?", "chosen": "Paris is the capital.", "rejected": "Lyon is the capital."}
    first = BatchParser("s", "g", "qa", preference="both").parse("p.jsonl", _units([pair]))
    assert len(first.record_id) == 2
    held = {first.record_id[0]: "p.jsonl:1"}  # only the chosen side was read earlier
    again = BatchParser("s", "g", "qa", preference="both", earlier=Earlier(held)).parse("p.jsonl", _units([pair], 2))
    assert again.record_id == first.record_id[1:]
    assert [r[2] for r in again.rejected] == ["chosen side: duplicate of p.jsonl:1"]

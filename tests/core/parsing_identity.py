"""parse_reply held to the full parser: the parser tests call it through here, so every reply they use checks that
the contract fast path (core/parsing.parse_contract) gives the full parser's result, field for field."""

from __future__ import annotations

from collections.abc import Sequence

from mira_dagster.core.parsing import ScoreResult, parse_contract, parse_reply_full
from mira_dagster.core.parsing import parse_reply as _parse_reply


def assert_same(text: str, finish_reason: str | None = None, names: Sequence[str] = ()) -> ScoreResult:
    """parse_reply's result after checking it equals parse_reply_full's (values and the fields set)."""
    full = parse_reply_full(text, finish_reason, names)
    got = _parse_reply(text, finish_reason, names)
    fast = parse_contract(text, finish_reason, names)
    assert got == full, (text, finish_reason, got, full)
    assert got.model_fields_set == full.model_fields_set, (text, got.model_fields_set, full.model_fields_set)
    assert fast is None or fast.model_dump() == full.model_dump(), (text, fast, full)
    return got


parse_reply = assert_same

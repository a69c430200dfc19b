"""Parsing scorer replies in the contract format, surviving what LLMs actually write.

Slots are matched by their `[Ai]` tag, never by name (a rubric may repeat a name, as group 2 does).
Every reply ends in one status: `ok` (15 scores and the four trailer lines), `partial` (some scores),
or `parse_error` (no score at all). Whatever is wrong is listed in `issues`, so a human can see why.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, Field

from mira_dagster.core.rubric import N_SLOTS

Status = Literal["ok", "partial", "parse_error", "too_long", "request_error", "invalid_input"]
STATUSES: tuple[Status, ...] = ("ok", "partial", "parse_error", "too_long", "request_error", "invalid_input")
Recommendation = Literal["keep", "downsample", "drop"]


class ScoreResult(BaseModel):
    status: Status
    scores: list[float | None] = Field(default_factory=lambda: [None] * N_SLOTS)
    rationales: list[str | None] = Field(default_factory=lambda: [None] * N_SLOTS)
    overall: float | None = None
    recommendation: Recommendation | None = None
    domain_tag: str | None = None
    brief: str | None = None
    issues: list[str] = []

    @classmethod
    def failed(cls, status: Status, issue: str) -> ScoreResult:
        return cls(status=status, issues=[issue])


_SLOT = re.compile(r"\[\s*A\s*(\d{1,2})\s*\]")
# A score follows a colon: 7, 7.5, -1, N/A; optionally "/10".
_SCORE = re.compile(
    r":\s*(?P<score>-?\d+(?:\.\d+)?|N/?A|n/a|none|null)(?P<denom>\s*/\s*(?P<of>\d+(?:\.\d+)?)?)?",
    re.I,
)
# Without a colon, accept "Name - 7/10 - why" only when "/10" makes the score unambiguous.
_SCORE_NO_COLON = re.compile(r"(?:^|\s)[—–-]?\s*(?P<score>-?\d+(?:\.\d+)?)(?P<denom>\s*/\s*(?P<of>10))\b")
_SEPARATORS = " \t—–-:|"
_TRAILER = re.compile(
    r"^\s*(?:[-*]\s*)?(?P<key>overall(?:[ _]score)?|training[ _]recommendation|recommendation|domain[ _]tag|brief)"
    r"\s*[:=]\s*(?P<value>.*)$",
    re.I,
)


def _clean(line: str) -> str:
    # Markdown emphasis around names or scores carries no meaning here.
    return line.replace("**", "").replace("__", "").strip()


def _parse_slot(rest: str, last_line_cut: bool) -> tuple[str | None, float | None, str | None, str | None]:
    """Return (name, score, rationale, issue) for the text after an `[Ai]` tag."""
    m = _SCORE.search(rest) or _SCORE_NO_COLON.search(rest)
    if m is None:
        return rest.strip(" :") or None, None, None, "no score"
    name = rest[: m.start()].strip(" *") or None
    rationale = rest[m.end() :].lstrip(_SEPARATORS).strip() or None
    token, of = m.group("score"), m.group("of")
    if last_line_cut and (of is None or float(of) != 10):
        return name, None, rationale, "score cut off"
    if m.group("denom") and of is None:
        return name, None, rationale, "score cut off"
    if of is not None and float(of) != 10:
        return name, None, rationale, f"score out of {of}, not 10"
    try:
        value = float(token)
    except ValueError:
        return name, None, rationale, f"no numeric score ({token})"
    if not 0 <= value <= 10:
        return name, None, rationale, f"score {token} outside 0-10"
    return name, value, rationale, None


def parse_reply(text: str, finish_reason: str | None = None) -> ScoreResult:
    """Parse a reply; `finish_reason == "length"` marks it as cut at max_tokens."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    cut = finish_reason == "length" or (bool(text) and not text.endswith("\n") and not _looks_complete(lines[-1]))
    res = ScoreResult(status="parse_error")
    seen: set[int] = set()
    for i, raw in enumerate(lines):
        line = _clean(raw)
        is_last = i == len(lines) - 1
        m = _SLOT.search(line)
        if m:
            slot = int(m.group(1))
            if not 1 <= slot <= N_SLOTS:
                res.issues.append(f"slot A{slot} does not exist")
                continue
            if slot in seen:
                res.issues.append(f"A{slot} repeated; first kept")
                continue
            seen.add(slot)
            _, score, rationale, issue = _parse_slot(line[m.end() :], cut and is_last)
            res.scores[slot - 1], res.rationales[slot - 1] = score, rationale
            if issue:
                res.issues.append(f"A{slot}: {issue}")
            continue
        t = _TRAILER.match(line)
        if t and not (cut and is_last):
            _set_trailer(res, t.group("key").lower(), t.group("value").strip())
    missing = [f"A{s}" for s in range(1, N_SLOTS + 1) if s not in seen]
    if missing:
        res.issues.append(f"missing slots {','.join(missing)}")
    if cut:
        res.issues.append("reply cut off")
    n_scored = sum(s is not None for s in res.scores)
    trailer_ok = None not in (res.overall, res.recommendation, res.domain_tag, res.brief)
    res.status = "ok" if n_scored == N_SLOTS and trailer_ok else "partial" if n_scored else "parse_error"
    return res


def _looks_complete(last_line: str) -> bool:
    """A reply without a final newline is complete if its last line is a whole trailer line."""
    line = _clean(last_line)
    return line == "" or bool(re.match(r"^(brief|domain[ _]tag)\s*:", line, re.I))


def _set_trailer(res: ScoreResult, key: str, value: str) -> None:
    value = value.strip().strip("*").strip()
    if key.startswith("overall"):
        m = re.match(r"(-?\d+(?:\.\d+)?)\s*(?:/\s*100)?", value)
        if m and 0 <= float(m.group(1)) <= 100:
            res.overall = float(m.group(1))
        else:
            res.issues.append(f"overall not a number in 0-100: {value[:40]!r}")
    elif "recommendation" in key:
        m = re.match(r"(keep|downsample|drop)\b", value, re.I)
        if m:
            res.recommendation = m.group(1).lower()  # type: ignore[assignment]
        else:
            res.issues.append(f"unknown recommendation {value[:40]!r}")
    elif key.startswith("domain"):
        res.domain_tag = value or None
    else:
        res.brief = value or None

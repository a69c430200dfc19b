"""Parsing scorer replies in the contract format, surviving what LLMs actually write, never inventing a number.

The one rule: a number is stored for a slot only when the reply's FINAL ANSWER gives that slot exactly one score,
unambiguously, on that slot's own line or field. Everything else leaves the slot missing with an issue naming the
slot and the reason, so the record is `partial` or `parse_error` and is asked again:

- Only the final answer counts. Reasoning comes first and is skipped: the answer is the text after the LAST
  closing reasoning tag (`</think>`, `</reasoning>`, `◁/think▷`, ...). A reasoning block opened and never closed
  is a draft, whatever it holds: nothing from its opening tag on is read. When the slot lines start over at
  `[A1]` (or the first slot's name) the last set is the answer. A reply cut at max_tokens (finish_reason
  "length") keeps only what was complete before the cut.
- One score per slot. A slot given twice with different scores, a range, an alternative or a hedge
  (`9-10/10`, `7 or 8`, `7/10 (8/10)`, `7/10, maybe 8`), arithmetic (`20.00 + 3.00 = 5.00`), a number that is
  not in the score position (`Clarity: 3 steps are shown`) and another `x/10` on the slot's line
  (`9/10 → revised to 8/10`) are refused. Repeats of the same score are fine.
- A slot line STARTS with its `[Ai]` tag (after bullets, numbering, headings, quotes, table pipes, emphasis), or
  with the slot's dimension name when the rubric's names are given (a name used by several slots takes them in
  order); a tag anywhere else is text. A score is the number right after the name and its separator
  (`7/10`, `(7/10)`, `**7**/10`, `7.5`, `seven`, `7 out of ten`, `7 of 10`), or a `x/10` (or `Score: x`) that
  ends the line after the rationale, or a `Score: x` line under the slot's line (or under its name as a
  heading). Whatever follows the score is the rationale.
- Also read: JSON objects (fenced or not, alone or ending a line of prose; slot tags or dimension names as keys;
  a number, a string score or {score, rationale} as values, or a list of {slot, score, rationale} objects;
  trailer keys beside them), markdown tables, and several slots (or trailer lines) on one line separated by `;`
  or `|`.
- Trailer lines are matched by key in any order and case (`Overall Score:`, `Training Recommendation:`,
  `Domain Tag:`); the last valid value of a key wins, except `overall`, which given twice with different values
  is not stored. `overall` is on 0-100; a value written out of 10 (`7.8/10`) is converted (78) and the
  conversion listed in `issues`.
- Cut off means `finish_reason == "length"`, or no finish_reason and a last line that is obviously truncated.
  A reply that ended with `stop` is never cut off. On a cut reply a last line's value that may be incomplete is
  dropped.

Every reply ends in one status: `ok` (15 scores and the four trailer lines), `partial` (some scores),
or `parse_error` (no score at all). Whatever is wrong is listed in `issues`, so a human can see why.
Every pattern is anchored or bounded and lines are read once, so parsing stays linear in the reply's size.
"""

from __future__ import annotations

import functools
import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

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


TRAILER_KEYS = ("overall", "training_recommendation", "domain_tag", "brief")
_STOP_REASONS = (None, "stop", "length", "eos", "end_turn", "stop_sequence")

# --- line shapes -------------------------------------------------------------------------------------------
# What may stand before a slot tag or a trailer key: bullets, block quotes, headings, emphasis, table pipes.
_LEAD = " \t>#*_+-•·|`"
_NUMBERING = re.compile(r"\(?\d{1,3}[ \t]?[.):|]")
_TAG = re.compile(
    r"[\[<][ \t]?[Aa][ \t_-]?(\d{1,2})[ \t]?[\]>]|\([Aa](\d{1,2})\)"
    r"|[Aa][_-]?(\d{1,2})(?=[ \t]{0,2}(?:[.:)|\]*—–：(=→]|->|-[ \t]|$)|[ \t]{1,2}(?:scored?|rating|rated|grade)\b)"
)
# "Slot A3: ...", "Dimension [A3] ...": the word before a tag
_TAG_WORD = re.compile(r"(?:slot|dimension|dim|criterion)[ \t]{1,2}(?=\[?[Aa]\d|\([Aa]\d)", re.I)
_KEY = re.compile(
    r"(?P<key>overall(?:[ _-]?(?:score|rating|quality))?|training[ _-]?recommendation|recommendation"
    r"|domain[ _-]?tag|domain|brief(?:[ _-]?summary)?|one[ -]sentence[ _-]summary|summary)"
    r"[*_` \t]{0,6}(?:\([^)\n]{0,40}\)[*_` \t]{0,6})?(?:[:=|：—–]|-(?=[ \t]))",
    re.I,
)
_FENCE = ("```", "~~~")
_MARKER = re.compile(
    r"<(?P<close>/)?[ \t]{0,2}(?P<tag>think|thinking|reasoning|reason|thought|thoughts|reflection|scratchpad)"
    r"[ \t]{0,2}>|◁(?P<close2>/)?think▷",
    re.I,
)

# --- inside a slot line --------------------------------------------------------------------------------------
_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_WORD = "|".join(_WORDS)
# The first separator or number after the tag ends the name. A colon between two digits ("3:1") is text.
_EVENT = re.compile(
    r"(?<!\d):|:(?!\d)|[=|—–：]|(?<!\S)-(?!\S)|(?<!\S)-(?=\d)|(?<![\w.])(?:\d+(?:\.\d+)?(?!\d)|N/A(?!\w))"
    rf"|(?<![\w-])(?:{_WORD})(?![\w-])",
    re.I,
)
_DENOM = re.compile(
    r"[ \t*_`]{0,4}/[ \t*_`]{0,4}(?P<of>\d+(?:\.\d+)?|ten\b)?"
    r"|[ \t*_`]{1,4}(?:out[ \t]{1,3})?of[ \t]{1,3}(?P<of2>(?<=out of )\d+(?:\.\d+)?|10(?![\d.])|ten\b)",
    re.I,
)
_TOKEN = re.compile(
    r"(?P<num>-?\d+(?:\.\d+|,\d(?=[ \t]?/))?)(?!\w|:\d)"
    rf"|(?P<word>{_WORD})(?![\w-])"
    r"|(?P<na>n/?a|none|null|nil|unscored|not[ -]applicable)(?=[ \t]{0,3}(?:$|[/)\]|—–:;,.*`(-]))",
    re.I,
)
# What may follow a score written without a denominator: the end of the line or a separator before a rationale.
_BARE_END = re.compile(r"[ \t*_`]*(?:$|[—–|;,(\[)\]]|-(?:[ \t]|$)|[.:](?:[ \t]|$))")
_LABEL = re.compile(r"(?:score|rating|grade)\b[ \t*_`]{0,4}[:=：]?", re.I)
_LABELLED_SCORE = re.compile(r"(?:score|rating|grade)\b", re.I)
_NAME_LABEL = re.compile(r"(?:name|dimension|dim|criterion)[ \t*_`]{0,4}[:=：]", re.I)
# A prose line of the answer that names a slot and gives a score out of ten ("Correction: [A3] ... 9/10", "on
# reflection A3 should be 9/10"): when that score differs from the slot's own line, the reply gave the slot two.
_MENTION = re.compile(r"(?<![\w\[])\[?A(1[0-5]|[1-9])\]?(?![\w.])")
_TEN_SCORE = re.compile(
    r"(?<![\w.])(\d{1,3}(?:\.\d+)?)[ \t*_`]{0,4}(?:/[ \t*_`]{0,4}10|[ \t]out[ \t]of[ \t]10)(?!\d|\.\d)", re.I
)
_RATIONALE_LABEL = re.compile(r"(?:rationale|justification|reason(?:ing)?|why|comment)[ \t*_`]{0,4}[:=：-]", re.I)
_NUM = rf"(?:\d+(?:\.\d+)?|{_WORD})"
_OF_TEN = r"[ \t]?(?:/[ \t]?10(?!\d)|[ \t]out[ \t]of[ \t](?:10(?!\d)|ten\b))"
# A score placed later on the line: "(7/10)", "[7/10]", "score: 7/10", ": 7/10" after a name with a dash,
# or a x/10 (or "Score: x") that ends the line after the rationale.
_LATE_SCORE = re.compile(
    rf"[(\[][ \t]?(?P<a>{_NUM}){_OF_TEN}[ \t]?[)\]]"
    rf"|(?:score|rating)[ \t*_`]{{0,4}}[:=]?[ \t*_`]{{0,4}}(?P<b>{_NUM}){_OF_TEN}"
    rf"|(?<!\d)[:：][ \t*_`]{{0,4}}(?P<c>{_NUM}){_OF_TEN}"
    rf"|(?:[—–|,;]|(?<!\S)-)[ \t*_`]{{0,4}}(?P<d>{_NUM}){_OF_TEN}[ \t*_`]{{0,4}}\.?[ \t]*$"
    rf"|(?:score|rating)[ \t*_`]{{0,4}}[:=][ \t*_`]{{0,4}}(?P<e>{_NUM})[ \t*_`]{{0,4}}[.)]?[ \t]*$",
    re.I,
)
_ANY_OF_TEN = re.compile(rf"(?<![\w.])({_NUM}){_OF_TEN}", re.I)
# Another score right after the score: a range (`9-10`), an alternative (`7 or 8`, `7/10 (8/10)`).
_ALTERNATIVE = re.compile(
    rf"(?P<tight>[-–~])[ \t]?(?P<n1>{_NUM})"
    rf"|[ \t*_`,;(—–]{{0,4}}(?:or[ \t]maybe|or[ \t]so|to|or|maybe|perhaps|possibly|arguably|could[ \t]be|might[ \t]be)"
    rf"[ \t*_`(]{{1,4}}(?P<n2>{_NUM})"
    rf"|[ \t*_`]{{0,4}}(?:[-–—~/]|\(|\[)[ \t*_`(]{{0,4}}(?:or[ \t]{{1,3}})?(?P<n3>{_NUM}){_OF_TEN}",
    re.I,
)
# A number and a range or alternative word right before the score: `7-8/10` read as 8 otherwise.
# A spaced dash counts only right after the slot's separator: in "Dim 5 - 6/10" it is the separator.
_RANGE_BEFORE = re.compile(
    rf"(?<![\w.]){_NUM}(?:[-–~]|[ \t]{{1,3}}(?:to|or)[ \t]{{1,3}})[ \t*_`]*$"
    rf"|(?:^|[:=|—–：])[ \t*_`]*{_NUM}[ \t]{{1,3}}[-–~][ \t*_`]{{1,4}}$",
    re.I,
)
_ARITHMETIC_BEFORE = re.compile(r"\d[ \t]*[+×÷=]|\d[ \t]+[*x][ \t]+\d")  # `*` alone is emphasis
_ARITHMETIC_AFTER = re.compile(r"[ \t]{0,4}(?:[+×÷=]|[*x][ \t])[ \t]{0,4}\(?-?\d")
_SKIP_BEFORE_SCORE = " \t*_`(["
_SKIP_BEFORE_RATIONALE = " \t*_`)]—–-:|,;.=>："

# --- trailer values ------------------------------------------------------------------------------------------
_OVERALL = re.compile(
    r"(?P<num>-?\d+(?:\.\d+)?)[ \t]{0,3}(?:/[ \t]{0,3}(?P<of>\d+(?:\.\d+)?)|(?P<pct>%)"
    r"|out[ \t]{1,3}of[ \t]{1,3}(?P<of2>\d+(?:\.\d+)?))?",
    re.I,
)
_RECOMMENDATION = re.compile(r"(keep|downsample|down[- ]sample|drop)\b", re.I)
_ANOTHER_CHOICE = re.compile(
    r"[ \t]{0,3}(?:[|/,(]|or\b|maybe\b|perhaps\b|then\b)[ \t(]{0,3}(?:(?:or|maybe|perhaps)[ \t]{1,3})?"
    r"(?:keep|downsample|down|drop)\b",
    re.I,
)
# Right after the overall's number, or later on its line: another one offered in its place ("78-82", "78 (or 80)",
# "78, 80", "78 80", "78, but maybe 70").
_OVERALL_RANGE = re.compile(
    r"[ \t]{0,3}(?:[-–~][ \t]{0,3}\d|\(?[ \t]{0,3}(?:or|to)[ \t]{1,3}\d"
    r"|(?:[,;&]|and\b|vs\.?)[ \t]{0,3}\d|(?<=[ \t])\d)",
    re.I,
)
_OVERALL_HEDGE = re.compile(
    r"\b(?:or|maybe|perhaps|possibly|arguably|revised|rather|actually|could[ \t]be|might[ \t]be)\b[^\d\n]{0,20}\d", re.I
)

# --- JSON ------------------------------------------------------------------------------------------------------
_JSON_SLOT_KEY = re.compile(r"\[?[ \t]?[Aa][ \t_-]?(\d{1,2})[ \t]?\]?(?:[ \t_:.-].*)?", re.S)
_JSON_SCORE = ("score", "rating", "grade", "value")
_JSON_RATIONALE = ("rationale", "justification", "reason", "reasoning", "comment", "explanation")
_JSON_SLOT_ID = ("slot", "id", "tag", "key")
_JSON_NAME = ("dimension", "name", "dim", "criterion")
_JSON_MAX_TRIES = 50


@dataclass
class _Slot:
    score: float | None
    rationale: str | None
    problem: str | None  # why the score is missing
    refused: bool = False  # the slot gave something ambiguous: no other line of it can make up for it


@dataclass
class _Line:
    kind: Literal["slot", "key", "text", "blank"]
    n: int = 0  # slot number (0: a dimension name, its slot assigned in order)
    key: str = ""  # trailer key
    alias: bool = False  # a trailer key under another name (summary, domain, recommendation)
    body: str = ""  # the text after the tag or key, or the whole stripped line
    name: str = ""  # the dimension name the line starts with, when it has no tag


class _Names:
    """The rubric's dimension names: which slots each takes, in order; longest first so a name that extends
    another ("Plan Quality / Reasoning Transparency (Goal Achievement)") is matched whole."""

    def __init__(self, names: Sequence[str]) -> None:
        self.slots: dict[str, list[int]] = {}
        for n, name in enumerate(names, 1):
            key = _norm(name)
            if key and n <= N_SLOTS:
                self.slots.setdefault(key, []).append(n)
        self.ordered = sorted(self.slots, key=len, reverse=True)

    def match(self, s: str) -> tuple[str, int] | None:
        """(name, end) when `s` starts with a dimension name followed by a separator or a score."""
        low = s.lower()
        for name in self.ordered:
            if low.startswith(name) and _after_name(s, len(name)):
                return name, len(name)
        return None

    def key(self, k: str) -> str | None:
        norm = _norm(k.replace("_", " "))
        return norm if norm in self.slots else None


def _norm(name: str) -> str:
    return " ".join(name.lower().split())


def _after_name(s: str, end: int) -> bool:
    rest = s[end:].lstrip(" \t*_`#")
    if s[end : end + 1].isalnum():
        return False
    if not rest:
        return True  # the name alone, as a heading: "Score: 7/10" may follow on the next line
    return rest[0] in ":=|—–-([：" or rest[0].isdigit() or bool(re.match(rf"(?:{_WORD})\b", rest, re.I))


# --- lines ---------------------------------------------------------------------------------------------------


def _after_lead(line: str) -> str:
    s = line.lstrip(_LEAD)
    m = _NUMBERING.match(s)
    return s[m.end() :].lstrip(_LEAD) if m else s


def _classify(raw: str, names: _Names) -> _Line:
    line = raw.replace("**", "").strip()
    if not line or line.startswith(_FENCE):
        return _Line("blank")
    s = _after_lead(line)
    if w := _TAG_WORD.match(s):
        s = s[w.end() :]
    m = _TAG.match(s)
    if m:
        return _Line("slot", n=int(m.group(1) or m.group(2) or m.group(3)), body=s[m.end() :])
    got = names.match(s)
    if got:
        # the name stays as text without separators or digits, so that `: 7` after it reads as after a tag's name
        return _Line("slot", name=got[0], body=re.sub(r"[:=|—–：\d-]", " ", s[: got[1]]) + s[got[1] :])
    k = _KEY.match(s)
    if k:
        key = k.group("key").lower()
        name = (
            "overall"
            if key.startswith("overall")
            else "training_recommendation"
            if "recommendation" in key
            else "domain_tag"
            if key.startswith("domain")
            else "brief"
        )
        alias = key in ("recommendation", "domain") or (name == "brief" and not key.startswith("brief"))
        return _Line("key", key=name, alias=alias, body=s[k.end() :].strip(" \t*_`").rstrip("|").strip())
    return _Line("text", body=line)


def _reasoning_split(lines: list[str], kinds: list[_Line], names: _Names, cut: bool, issues: list[str]) -> int:
    """Cut reasoning out of `lines` in place; return the index of the first answer line. An unclosed block makes
    the whole reply a draft: nothing of it is read."""
    close: tuple[int, int] | None = None
    opened: tuple[int, str] | None = None
    for i, line in enumerate(lines):
        if kinds[i].kind in ("slot", "key"):
            continue  # a tag inside a slot or trailer line is text
        for m in _MARKER.finditer(line):
            if m.group("close") or m.group("close2"):
                close, opened = (i, m.end()), None
            elif opened is None and not line[: m.start()].strip():
                opened = (i, m.group())
    start = 0
    if close is not None:
        i, col = close
        lines[i] = lines[i][col:]
        kinds[i] = _classify(lines[i], names)
        start = i
        if not any(k.kind == "slot" for k in kinds[i:]) and any(k.kind == "slot" for k in kinds[:i]):
            issues.append("slot lines only inside the reasoning block (ignored)")
    if opened is not None:
        tag = opened[1]
        if cut:
            issues.append(f"reply cut off inside an unclosed {tag} block; its draft is ignored")
        else:
            issues.append(f"unclosed {tag} block: the reply is only a draft; nothing in it is read")
        del lines[:], kinds[:]  # what came before it was superseded by the draft, what follows is the draft
        return 0
    return start


def _split_lists(lines: list[str], kinds: list[_Line], names: _Names, cut: bool) -> tuple[list[_Line], int]:
    """Lines that hold several slots (or trailer keys) separated by `;` or `|` become one line each. Returns the
    lines and the index of the one the reply was cut in (-1 if it was not cut)."""
    out: list[_Line] = []
    cut_at = -1
    for i, (line, k) in enumerate(zip(lines, kinds, strict=True)):
        parts = _list_parts(line, names) if k.kind != "blank" and (";" in line or "|" in line) else None
        out.extend([_classify(p, names) for p in parts] if parts else [k])
        if cut and i == len(lines) - 1:
            cut_at = len(out) - 1
    return out, cut_at


_LIST_VALUE = re.compile(rf"\d|\b(?:{_WORD}|n/a|none|null)\b", re.I)


def _list_parts(line: str, names: _Names) -> list[str] | None:
    for sep in (";", "|"):
        parts = line.split(sep)
        if len(parts) < 2:
            continue
        kinds = [_classify(p, names) for p in parts]
        scored = [k.kind == "slot" and bool(_LIST_VALUE.search(k.body)) for k in kinds]
        keyed = [k.kind == "key" and bool(k.body) for k in kinds]
        if sum(scored) + sum(keyed) < 2:
            continue
        merged: list[str] = []
        for p, a, b in zip(parts, scored, keyed, strict=True):
            if a or b or not merged:
                merged.append(p)
            else:
                merged[-1] += sep + p  # a `;` inside a rationale
        return merged
    return None


def _assign_names(kinds: list[_Line], names: _Names) -> None:
    """Slot lines that start with a dimension name take its slots in order; the first slot's name once its slots
    are used up starts a new set (a draft, then the final answer)."""
    used: Counter[str] = Counter()
    for k in kinds:
        if k.kind != "slot" or not k.name:
            continue
        slots = names.slots[k.name]
        if used[k.name] >= len(slots) and slots[0] == 1:
            used.clear()
        k.n = slots[min(used[k.name], len(slots) - 1)]
        used[k.name] += 1


def _last_set(kinds: list[_Line], start: int, issues: list[str]) -> int:
    """Where the last set of slot lines begins: slot lines that start over at [A1] after a set of at least two
    slots are a new set. A last "set" of one slot is a repeat of that slot, not a new answer."""
    sets: list[tuple[int, set[int]]] = []
    for i in range(start, len(kinds)):
        k = kinds[i]
        if k.kind != "slot":
            continue
        if not sets:
            sets.append((start, set()))
        elif k.n == 1 and 1 in sets[-1][1] and len(sets[-1][1]) > 1:
            sets.append((i, set()))
        sets[-1][1].add(k.n)
    while len(sets) > 1 and len(sets[-1][1]) < 2:
        sets.pop()
    if len(sets) > 1:
        issues.append(f"{len(sets)} sets of slot lines; the last one was read")
    return sets[-1][0] if sets else start


# --- one slot --------------------------------------------------------------------------------------------------


def _skip(s: str, p: int, chars: str) -> int:
    n = len(s)
    while p < n and s[p] in chars:
        p += 1
    return p


def _rationale(s: str) -> str | None:
    s = s.lstrip(_SKIP_BEFORE_RATIONALE).strip()
    m = _RATIONALE_LABEL.match(s)
    if m:
        s = s[m.end() :].strip()
    s = s.rstrip(" \t|*`").strip()
    return s or None


def _score_after(rest: str, p: int) -> re.Match[str] | None:
    p = _skip(rest, p, _SKIP_BEFORE_SCORE)
    lab = _LABEL.match(rest, p)
    if lab:
        p = _skip(rest, lab.end(), _SKIP_BEFORE_SCORE)
    return _TOKEN.match(rest, p)


def _value(number: str) -> float:
    low = number.lower()
    return float(_WORDS.index(low)) if low in _WORDS else float(number.replace(",", "."))


def _refuse(problem: str, rationale: str | None = None) -> _Slot:
    return _Slot(None, rationale, problem, refused=True)


def _read_slot(rest: str, last_cut: bool) -> _Slot:
    """Read `<name> <sep> <score>[/10] <sep> <rationale>` (the text after a slot's tag or name)."""
    rest = rest.rstrip().lstrip(" \t*_`:.|)—–：")
    tok: re.Match[str] | None = None
    sep_end = -1
    for ev in _EVENT.finditer(rest):
        t = ev.group()
        if t[0].isdigit() or t.lower() in _WORDS:
            den = _DENOM.match(rest, ev.end())
            if den is None and not (ev.start() == 0 and _BARE_END.match(rest, ev.end())):
                continue  # a number inside the name ("Top 5 Accuracy"), unless it stands alone: "[A1] 9 — ..."
            tok = _TOKEN.match(rest, ev.start())
        elif t[0] in "nN":
            tok = _TOKEN.match(rest, ev.start())
        else:
            sep_end = ev.end()
            tok = _score_after(rest, sep_end)
        break
    if tok is None:
        late = _late_score(rest, max(sep_end, 0), last_cut)
        if late is None:
            text = rest[sep_end:] if sep_end >= 0 else ""
            return _Slot(None, _rationale(text), "score cut off" if last_cut else "no score")
        if isinstance(late, _Slot):
            return late
        return _check(*late)
    if tok.group("na"):
        den = _DENOM.match(rest, tok.end())
        after = rest[den.end() if den else tok.end() :]
        return _Slot(None, _rationale(after), f"no score ({tok.group('na')})")
    number = tok.group("num") or tok.group("word")
    end = tok.end()
    den = _DENOM.match(rest, end)
    of = (den.group("of") or den.group("of2")) if den else None
    of = "10" if of is not None and of.lower() == "ten" else of
    if den is not None:
        end = den.end()
    after = rest[end:]
    if last_cut and not after.strip(" \t.*_`/—–-:|,;()[]"):
        return _Slot(None, None, "score cut off")  # on the cut line, a score counts once its rationale has begun
    if _ARITHMETIC_BEFORE.search(rest, 0, tok.start()) or _ARITHMETIC_AFTER.match(after):
        return _refuse(f"arithmetic, not a score: {_excerpt(rest)}")
    if _RANGE_BEFORE.search(rest, 0, tok.start()):
        return _refuse(f"a range or alternative, not one score: {_excerpt(rest)}")
    alt = _ALTERNATIVE.match(after)
    if alt and not (alt.group("tight") and den is not None and of is not None):
        other = alt.group("n1") or alt.group("n2") or alt.group("n3")
        if _value(other) != _value(number):
            return _refuse(f"a range or alternative, not one score: {_excerpt(rest)}")
    if den is not None and of is None:
        return _Slot(None, _rationale(after), f"score {number}/ without a denominator")
    if of is not None and float(of) != 10:
        return _Slot(None, _rationale(after), f"score out of {of}, not 10")
    if den is None and not _BARE_END.match(after):
        late = _late_score(rest, end, last_cut)  # "— 2 substitutions, fine — 6/10": 2 is text, 6/10 the score
        if isinstance(late, tuple):
            return _check(late[0], _rationale(f"{rest[tok.start() : end]}{late[1] and ' ' + late[1] or ''}"))
        return late or _refuse(f"number not in the score position: {_excerpt(rest)}")
    if _may_hold_score(after):
        for m in (*_LATE_SCORE.finditer(after), *_ANY_OF_TEN.finditer(after)):  # "7/10 → revised 8/10"
            other = next(g for g in m.groups() if g is not None)
            if _value(other) != _value(number):
                return _refuse(f"two scores on its line ({number}, {other})")
    return _check(number, _rationale(after))


# The only non-ASCII letters that match ASCII ones under re.I (the `re` documentation: İ, ı, ſ and the Kelvin sign).
_FOLDS_TO_ASCII = frozenset("\u0130\u0131\u017f\u212a")


def _may_hold_score(text: str) -> bool:
    """False only when neither _LATE_SCORE nor _ANY_OF_TEN can match in `text`: each of their branches needs a "/",
    an "out" (of ten), a "score" or a "rating". It spares most rationales the two scans, the bulk of a reply's
    parse."""
    if "/" in text or (not text.isascii() and not _FOLDS_TO_ASCII.isdisjoint(text)):  # isascii: a flag, O(1)
        return True
    low = text.lower()
    return "out" in low or "score" in low or "rating" in low


# A prose line that gives the scores' scale ("Scores (out of 5):", "on a 1-5 scale", a table's "Score (1-5)"):
# bare numbers under it are not scores out of ten.
_SCALE_DECL = re.compile(
    r"\b(?:scale|scor(?:e|es|ed|ing)|rat(?:e|es|ed|ing|ings)|grades?|graded)\b[^\n]{0,40}?"
    r"(?:\bout[ \t]+of[ \t]+(\d+)|\([ \t]*[01][ \t]*(?:-|–|to)[ \t]*(\d+)[ \t]*\)|\b[01][ \t]*(?:-|–|to)[ \t]*(\d+)\b)"
    r"|\b[01][ \t]*(?:-|–|to)[ \t]*(\d+)[ \t]*(?:-?[ \t]*point[ \t]+)?scale|\b(\d+)[ \t]*-?[ \t]*point[ \t]+scale",
    re.I,
)


def _note_scale(line: str, scales: list[tuple[int, str]]) -> None:
    """The scale a prose line gives the scores, if any (the overall's 0-100 is not a slot's scale)."""
    for m in _SCALE_DECL.finditer(line):
        top = int(next(g for g in m.groups() if g is not None))
        if not (top == 100 and "overall" in line.lower()):
            scales.append((top, line))


def _note_mentions(line: str, mentions: list[tuple[int, float, str]]) -> None:
    """The (slot, score) pairs a prose line may give: every slot it names with every score out of ten on it."""
    if "A" not in line:
        return
    slots = [int(m.group(1)) for m in _MENTION.finditer(line)]
    if slots:
        scores = [float(m.group(1)) for m in _TEN_SCORE.finditer(line)]
        mentions.extend((n, score, line) for n in slots for score in scores)


def _excerpt(text: str) -> str:
    flat = " ".join(text.split())
    return repr(flat if len(flat) <= 40 else flat[:39] + "…")


def _late_score(rest: str, sep_end: int, last_cut: bool = False) -> tuple[str, str | None] | _Slot | None:
    """A score that is not right after the first separator: `(7/10)` at the end, `Score: 7/10`, `: 7/10` after a
    name that holds a dash, or a `x/10` that ends the line after the rationale. Returns (score, rationale); two
    different ones are refused. On a line cut at max_tokens, one that ends the text may be incomplete."""
    found: list[tuple[str, str | None]] = []
    for m in _LATE_SCORE.finditer(rest, sep_end):
        if last_cut and not rest[m.end() :].strip(" \t.*_`/)]"):
            return _Slot(None, None, "score cut off")
        if m.group("c") is not None:
            between = rest[sep_end : m.start()]
            if len(between) > 80 or any(ch.isdigit() for ch in between):
                continue
            found.append((m.group("c"), _rationale(rest[m.end() :])))
            continue
        value = next(g for g in m.groups() if g is not None)
        found.append((value, _rationale(f"{rest[sep_end : m.start()].strip()} {rest[m.end() :].strip()}")))
    if not found:
        return None
    # away from the score position, any other x/10 on the line makes it ambiguous ("(7/10), though I'd say 5/10")
    found += [(m.group(1), None) for m in _ANY_OF_TEN.finditer(rest, sep_end)]
    distinct = list(dict.fromkeys(_value(v) for v, _ in found))
    if len(distinct) > 1:
        return _refuse(f"{len(distinct)} different scores on its line ({', '.join(f'{v:g}' for v in distinct)})")
    return found[0]


def _check(number: str, rationale: str | None) -> _Slot:
    value = _value(number)
    if not 0 <= value <= 10:
        return _Slot(None, rationale, f"score {number} outside 0-10")
    return _Slot(value, rationale, None)


# --- JSON ------------------------------------------------------------------------------------------------------


class _Obj(list[tuple[str, Any]]):
    """A JSON object as its (key, value) pairs in order, repeated keys kept."""


def _json_answer(lines: list[str], kinds: list[_Line], start: int) -> list[_Obj]:
    """The JSON objects of the answer that open on a line of their own; their lines are blanked for the line
    reader."""
    decoder = json.JSONDecoder(object_pairs_hook=_Obj)
    offsets, pos = [], 0
    for line in lines:
        offsets.append(pos)
        pos += len(line) + 1
    text = "\n".join(lines)
    found: list[_Obj] = []
    tries, i = 0, start
    while i < len(lines) and tries < _JSON_MAX_TRIES:
        stripped = lines[i].lstrip(" \t>`")
        if not stripped.startswith("{"):  # or a prose line ending in an object: "Result: {...}"
            brace = lines[i].find("{") if kinds[i].kind == "text" else -1
            if brace < 0:
                i += 1
                continue
            stripped = lines[i][brace:]
        tries += 1
        at = offsets[i] + len(lines[i]) - len(stripped)
        try:
            obj, end = decoder.raw_decode(text, at)
        except ValueError:
            i += 1
            continue
        last = i
        while last + 1 < len(lines) and offsets[last + 1] < end:
            last += 1
        if isinstance(obj, _Obj):
            found.append(obj)
            for j in range(i, last + 1):
                kinds[j] = _Line("blank")
        i = last + 1
    return found


def _walk_json(
    obj: _Obj,
    names: _Names,
    entries: dict[int, list[_Slot]],
    values: dict[str, list[tuple[object, str | None, bool]]],
    used: Counter[str],
    depth: int = 0,
    scale: object = None,
) -> None:
    """Slots and trailer keys of a JSON answer; a scale given beside the slots (`"scale": "1-5"`) that is not out of
    ten refuses every slot under it."""
    scale = _scale_in(obj, scale)
    for key, value in obj:
        k = str(key).strip()
        n = _json_slot(k, names, used)
        if n is not None:
            entries.setdefault(n, []).append(_json_slot_value(value, scale))
            continue
        t = _KEY.match(k.replace("_", " ") + ":")
        if t and t.end() == len(k) + 1 and not isinstance(value, _Obj | list):
            line = _classify(k + ": x", names)
            if line.kind == "key":
                values[line.key].append((*_trailer_value(line.key, str(value)), line.alias))
            continue
        if depth < 3 and isinstance(value, _Obj):
            _walk_json(value, names, entries, values, used, depth + 1, scale)
        elif depth < 3 and isinstance(value, list):
            for item in value:
                if isinstance(item, _Obj):
                    _json_item(item, names, entries, values, used, depth + 1, scale)


def _json_item(
    item: _Obj,
    names: _Names,
    entries: dict[int, list[_Slot]],
    values: dict[str, list[tuple[object, str | None, bool]]],
    used: Counter[str],
    depth: int,
    scale: object = None,
) -> None:
    """An element of a list of slots: `{"slot": "A1", "name": ..., "score": 9, "rationale": ...}`."""
    fields = {str(k).strip().lower(): v for k, v in reversed(item)}
    n = next((_json_slot(str(fields[f]), names, used) for f in _JSON_SLOT_ID if f in fields), None)
    if n is None and isinstance(fields.get("slot"), int) and not isinstance(fields["slot"], bool):
        n = fields["slot"] if 1 <= fields["slot"] <= N_SLOTS else None
    if n is None:
        n = next((_json_slot(str(fields[f]), names, used) for f in _JSON_NAME if f in fields), None)
    if n is not None:
        entries.setdefault(n, []).append(_json_slot_value(item, scale))
    else:
        _walk_json(item, names, entries, values, used, depth, scale)


def _json_slot(key: str, names: _Names, used: Counter[str]) -> int | None:
    m = _JSON_SLOT_KEY.fullmatch(key)
    if m and 1 <= int(m.group(1)) <= N_SLOTS:
        return int(m.group(1))
    name = names.key(key)
    if name is None:
        return None
    slots = names.slots[name]
    if used[name] >= len(slots) and slots[0] == 1:
        used.clear()
    used[name] += 1
    return slots[min(used[name] - 1, len(slots) - 1)]


# Keys beside a slot's score that give its scale: {"score": 4, "out_of": 5} is not 4 on 0-10.
_JSON_SCALE = frozenset(
    ("out_of", "score_out_of", "outof", "max", "max_score", "maximum", "scale", "score_scale", "denominator", "of")
)


def _out_of_ten(scale: object) -> bool:
    """Whether a scale field says 10 (`10`, `10.0`, `"10"`, `"0-10"`, `"/10"`)."""
    if isinstance(scale, bool):
        return False
    if isinstance(scale, int | float):
        return scale == 10
    return (
        isinstance(scale, str)
        and re.fullmatch(r"[ \t]*(?:(?:0|1)[ \t]*(?:-|–|to)[ \t]*|/[ \t]*)?10(?:\.0+)?[ \t]*", scale) is not None
    )


def _scale_in(obj: _Obj, around: object) -> object:
    """The scale an object gives its scores (a _JSON_SCALE key), else the one given around it."""
    return next((v for k, v in obj if str(k).strip().lower().replace(" ", "_") in _JSON_SCALE), around)


def _scale_text(scale: object) -> str:
    return _excerpt(scale if isinstance(scale, str) else json.dumps(scale))


def _json_slot_value(value: object, scale: object = None) -> _Slot:
    """A slot's JSON value (a number, a string, or an object with its score); `scale`: one given around it."""
    rationale = None
    if scale is not None and not _out_of_ten(scale) and not isinstance(value, _Obj):
        return _refuse(f"score out of {_scale_text(scale)}, not 10")
    if isinstance(value, _Obj):
        fields = {str(k).strip().lower(): v for k, v in value}
        r = next((fields[f] for f in _JSON_RATIONALE if f in fields), None)
        rationale = r.strip() or None if isinstance(r, str) else None
        scores = [v for k, v in value if str(k).strip().lower() in _JSON_SCORE]
        if len({json.dumps(v) for v in scores}) > 1:
            return _refuse(f"{len(scores)} different scores in its field", rationale)
        if not scores:
            return _Slot(None, rationale, "no score")
        scale = _scale_in(value, scale)
        if scale is not None and not _out_of_ten(scale):
            return _refuse(f"score out of {_scale_text(scale)}, not 10", rationale)
        value = scores[0]
    if value is None:
        return _Slot(None, rationale, "no score (null)")
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return _refuse(f"not a score: {_excerpt(json.dumps(value))}", rationale)
    if isinstance(value, int | float):
        got = _check(repr(float(value)), rationale)
        if got.problem:
            got.problem = f"score {value} outside 0-10"
        return got
    got = _read_slot(f"score: {value}", last_cut=False)
    got.rationale = rationale or got.rationale
    return got


# --- trailer ---------------------------------------------------------------------------------------------------


def _trailer_value(key: str, value: str) -> tuple[object, str | None]:
    """(parsed value or None, note): the note is an issue if the value is used or cannot be read."""
    v = value.strip(" \t*_`\"'<>[]")
    if key == "overall":
        m = _OVERALL.match(v)
        if not m:
            return None, f"overall not a number in 0-100: {value[:40]!r}"
        num, of = m.group("num"), m.group("of") or m.group("of2")
        if _OVERALL_RANGE.match(v, m.end()) or _OVERALL_HEDGE.search(v, m.end()):
            return None, f"overall: a range or alternative, not one value: {value[:40]!r}"
        x, note = float(num), None
        if of is None and not m.group("pct") and 0 < x < 1:  # 0.78: a 0-1 score, or 0.78 of 100? not guessed
            return None, f"overall {num} is a fraction, not a number in 0-100: {value[:40]!r}"
        if of is not None and float(of) == 10:
            x = round(x * 10, 6)
            note = f"overall {num}/10 converted to {x:g} on 0-100"
        elif of is not None and float(of) != 100:
            return None, f"overall out of {of}, not 100: {value[:40]!r}"
        if not 0 <= x <= 100:
            return None, f"overall not a number in 0-100: {value[:40]!r}"
        return x, note
    if key == "training_recommendation":
        m = _RECOMMENDATION.match(v)
        if not m or _ANOTHER_CHOICE.match(v, m.end()):
            return None, f"unknown recommendation {value[:40]!r}"
        word = m.group(1).lower()
        return ("downsample" if word.startswith("down") else word), None
    return (v or None), None


def _truncated_tail(text: str, last: str, names: _Names) -> bool:
    """Without a finish_reason: does the reply end in the middle of a line it was writing?"""
    if not text or text.endswith("\n") or not last.strip():
        return False
    k = _classify(last, names)
    if k.kind == "slot":
        return _read_slot(k.body, last_cut=True).problem == "score cut off"
    if k.kind == "key":
        return not k.body
    s = _after_lead(last.replace("**", "").strip()).lower()
    if not s:
        return False
    if re.fullmatch(r"\[a?\d{0,2}", s):
        return True  # "[A1" or "[A"
    return any(f"{key}:".startswith(s) or f"{key.replace('_', ' ')}:".startswith(s) for key in TRAILER_KEYS)


# --- the reply ---------------------------------------------------------------------------------------------------


def _resolve(n: int, got: list[_Slot], issues: list[str]) -> _Slot:
    """One slot's lines (or fields) in the final answer: exactly one score, or none with the reason."""
    refused = [s for s in got if s.refused]
    scored = [s for s in got if s.score is not None]
    rationale = next((s.rationale for s in scored or got if s.rationale), None)
    if refused:
        return _Slot(None, rationale, refused[0].problem)
    distinct = sorted({s.score for s in scored if s.score is not None})
    if len(distinct) > 1:
        shown = ", ".join(f"{v:g}" for v in distinct)
        return _Slot(None, rationale, f"given {len(scored)} times with different scores ({shown}); none stored")
    if scored:
        if len(got) > 1:
            issues.append(f"A{n} repeated with the same score")
        return _Slot(distinct[0], scored[0].rationale, None)
    return got[0]


def parse_reply(text: str, finish_reason: str | None = None, names: Sequence[str] = ()) -> ScoreResult:
    """Parse a reply; `finish_reason == "length"` marks it as cut at max_tokens, `stop` as complete. `names`, the
    rubric's dimension names in slot order, lets slot lines and JSON keys name a slot instead of tagging it.
    A reply in the exact contract form takes the fast path (the same result, a fraction of the time)."""
    fast = parse_contract(text, finish_reason, names)
    return fast if fast is not None else parse_reply_full(text, finish_reason, names)


def parse_reply_full(text: str, finish_reason: str | None = None, names: Sequence[str] = ()) -> ScoreResult:
    """The full parser alone, every shape it reads (parse_reply tries the contract fast path first)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    dims = _Names(names)
    issues: list[str] = []
    if finish_reason not in _STOP_REASONS:
        issues.append(f"finish_reason {finish_reason!r}")
    cut = finish_reason == "length" or (finish_reason is None and _truncated_tail(text, lines[-1], dims))
    kinds = [_classify(line, dims) for line in lines]
    start = _reasoning_split(lines, kinds, dims, cut, issues)
    answer_cut = cut and bool(lines)  # a draft dropped whole was cut, not the answer
    objects = _json_answer(lines, kinds, start)
    kinds, cut_at = _split_lists(lines[start:], kinds[start:], dims, answer_cut)
    _assign_names(kinds, dims)
    start = _last_set(kinds, 0, issues)

    entries: dict[int, list[_Slot]] = {}
    values: dict[str, list[tuple[object, str | None, bool]]] = {k: [] for k in TRAILER_KEYS}
    used: Counter[str] = Counter()
    for obj in objects:
        _walk_json(obj, dims, entries, values, used)
    mentions: list[tuple[int, float, str]] = []  # (slot, score, line) named in prose of the answer
    scales: list[tuple[int, str]] = []  # (top of the scale, line) a prose line of the answer gives the scores
    tens: set[int] = set()  # slots whose line says its score is out of ten
    open_slot: _Slot | None = None  # a slot line whose score or rationale may follow on the next lines
    open_n = 0  # its slot
    open_key: _Line | None = None  # a trailer key whose value may follow on the next line
    for i in range(start, len(kinds)):
        k = kinds[i]
        last_cut = i == cut_at
        if k.kind == "blank":
            continue
        if k.kind == "slot":
            open_slot = open_key = None
            if not 1 <= k.n <= N_SLOTS:
                issues.append(f"slot A{k.n} does not exist")
            else:
                open_slot, open_n = _read_slot(k.body, last_cut), k.n
                entries.setdefault(k.n, []).append(open_slot)
                if _TEN_SCORE.search(k.body):
                    tens.add(k.n)
            continue
        if k.kind == "key":
            open_slot = open_key = None
            if last_cut:
                issues.append(f"{k.key} cut off")
            elif k.body:
                values[k.key].append((*_trailer_value(k.key, k.body), k.alias))
            else:
                open_key = k
            continue
        # a text line: the score or rationale of the slot just above ("Score: 7/10", "Rationale: ..."),
        # the value of a trailer key written on the line after it, or prose to ignore
        body = _after_lead(k.body)
        if not (open_slot is not None and open_slot.score is None and _LABELLED_SCORE.match(body)):
            _note_mentions(k.body, mentions)
        if open_slot is not None and _NAME_LABEL.match(body):
            continue  # "name: Factual Correctness" under a slot written as fields
        if open_slot is not None and open_slot.score is None and _LABELLED_SCORE.match(body):
            if not open_slot.refused:
                if _TEN_SCORE.search(body):
                    tens.add(open_n)
                got = _read_slot(body, last_cut)
                open_slot.score, open_slot.problem, open_slot.refused = got.score, got.problem, got.refused
                open_slot.rationale = open_slot.rationale or got.rationale
        elif open_slot is not None and open_slot.rationale is None and not last_cut:
            open_slot.rationale = _rationale(body)
        elif open_key is not None and not last_cut:
            values[open_key.key].append((*_trailer_value(open_key.key, body), open_key.alias))
            open_key = None
        else:
            open_slot = open_key = None
            _note_scale(body, scales)

    res = ScoreResult(status="parse_error")
    for n in sorted(entries):
        s = _resolve(n, entries[n], issues)
        res.scores[n - 1], res.rationales[n - 1] = s.score, s.rationale
        if s.problem:
            issues.append(f"A{n}: {s.problem}")
    off = [(top, line) for top, line in scales if top != 10]
    for n in sorted(entries):
        if off and res.scores[n - 1] is not None and n not in tens:
            top, line = off[0]
            issues.append(f"A{n}: the reply scores out of {top} ({_excerpt(line)}), not 10; none stored")
            res.scores[n - 1] = res.rationales[n - 1] = None
    given = [n for n in sorted(entries) if res.scores[n - 1] is not None]
    values_given = [res.scores[n - 1] or 0.0 for n in given]
    if len(given) > 1 and not tens & set(given) and max(values_given) <= 1 and any(v % 1 for v in values_given):
        # every score bare, none above 1, some with a fraction: a 0-1 scale (0.7 is 7/10 there), not guessed
        shown = ", ".join(f"{v:g}" for v in values_given[:4]) + (", ..." if len(given) > 4 else "")
        issues.append(f"the scores are all within 0-1 with fractions ({shown}): a 0-1 scale, not 0-10; none stored")
        for n in given:
            res.scores[n - 1] = res.rationales[n - 1] = None
    for n, score, line in mentions:
        if res.scores[n - 1] is not None and score != res.scores[n - 1]:
            issues.append(f"A{n}: {res.scores[n - 1]:g} on its line, {score:g}/10 in {_excerpt(line)}; none stored")
            res.scores[n - 1] = res.rationales[n - 1] = None
    missing = [f"A{s}" for s in range(1, N_SLOTS + 1) if s not in entries]
    if missing:
        issues.append(f"missing slots {','.join(missing)}")
    absent = []
    for key in TRAILER_KEYS:
        got = [(v, note) for v, note, _ in values[key] if v is not None]
        exact = [(v, note) for v, note, alias in values[key] if v is not None and not alias]
        got = exact or got  # `brief:` wins over `Summary:`, `domain_tag:` over `Domain:`
        if key == "overall" and len({v for v, _ in got}) > 1:
            shown = ", ".join(f"{v:g}" for v in sorted({v for v, _ in got}))  # type: ignore[type-var,str-format]
            issues.append(f"overall given {len(got)} times with different values ({shown}); none stored")
        elif got:
            value, note = got[-1]
            setattr(res, "recommendation" if key == "training_recommendation" else key, value)
            if note:
                issues.append(note)
            if len({v for v, _ in got}) > 1:
                issues.append(f"{key} given {len(got)} times with different values; last kept")
        elif values[key]:
            issues.append(values[key][-1][1] or f"{key} empty")
        elif not any(f"{key} cut off" == i for i in issues):
            absent.append(key)
    if absent:
        issues.append(f"missing {', '.join(absent)}")
    if cut:
        issues.append("reply cut off")
    if not text.strip():
        issues.insert(0, "the reply is empty")  # said first: the missing fields that follow are why
    res.issues = issues
    n_scored = sum(s is not None for s in res.scores)
    trailer_ok = None not in (res.overall, res.recommendation, res.domain_tag, res.brief)
    res.status = "ok" if n_scored == N_SLOTS and trailer_ok else "partial" if n_scored else "parse_error"
    return res


# --- the contract fast path ----------------------------------------------------------------------------------------
# Replies in the exact form the cards ask for (`[Ai] <name>: <score>/10 — <rationale>` lines and the four
# `key: value` lines, blank lines anywhere) are most of what a scorer returns. parse_contract reads them with one
# match a line and returns what parse_reply_full would, field for field; anything it cannot vouch for returns None
# and goes to the full parser. Why each check makes the result the same is said beside it; tests/core/
# test_parsing_fast.py holds the two to each other on generated near misses and every reply the parser tests use.

_CONTRACT_SLOT = re.compile(r"\[A(1[0-5]|[1-9])\] ([^:]+): (10|[0-9](?:\.[0-9]+)?)/10( — (.*))")
_CONTRACT_KEY = re.compile(r"(overall|training_recommendation|domain_tag|brief):(.*)")
_CONTRACT_OVERALL = re.compile(r"(?:100|[0-9]{1,2})(?:\.[0-9]+)?")
_CONTRACT_STOPS = frozenset(r for r in _STOP_REASONS if r not in (None, "length"))
_CONTRACT_RECOMMENDATIONS = frozenset(("keep", "downsample", "drop"))
_RESULT_KEYS = {
    "overall": "overall",
    "training_recommendation": "recommendation",
    "domain_tag": "domain_tag",
    "brief": "brief",
}
_SLOT_LSTRIP = " \t*_`:.|)—–："  # what _read_slot strips before the name


@functools.lru_cache(maxsize=64)
def _contract_names(names: tuple[str, ...]) -> tuple[_Names, bool]:
    """The rubric's _Names, and whether no dimension name can take a trailer line for a slot (_classify tries the
    names before the trailer keys): a name that is a prefix of a key, or starts with one, sends every reply of
    this rubric to the full parser."""
    dims = _Names(names)
    keys = tuple(_RESULT_KEYS)
    return dims, not any(k.startswith(n) or n.startswith(k) for n in map(_norm, names) if n for k in keys)


@functools.lru_cache(maxsize=4096)
def _plain_name(name: str) -> bool:
    """True when, in `<name>: <score>/10`, _read_slot reads past the name to the colon and takes the score after
    it: the name does not start with what it strips, nothing in it stops its event loop (a separator, N/A, a number
    or number word that has a denominator or starts the name), and it holds no arithmetic or range before the
    score."""
    if name[0].isspace() or name[0] in _SLOT_LSTRIP:
        return False
    probe = name + ":"
    for ev in _EVENT.finditer(probe):
        if ev.start() == len(name):
            break
        t = ev.group()
        numeric = t[0].isdigit() or t.lower() in _WORDS
        if not numeric or ev.start() == 0 or _DENOM.match(probe, ev.end()) is not None:
            return False
    else:
        return False
    before = name + ": "
    return _ARITHMETIC_BEFORE.search(before) is None and _RANGE_BEFORE.search(before) is None


def parse_contract(text: str, finish_reason: str | None = None, names: Sequence[str] = ()) -> ScoreResult | None:
    """The result of parse_reply_full for a reply in the exact contract form, or None when the reply is not
    certainly in it (the caller then runs the full parser)."""
    if finish_reason not in _CONTRACT_STOPS and finish_reason is not None:
        return None  # another finish_reason is an issue; "length" is a cut
    if "**" in text:
        return None  # _classify drops "**" from every line
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    if finish_reason is None and not (text.endswith("\n") or not lines[-1].strip()):
        return None  # without a finish_reason a last line may be read as truncated
    dims, keys_plain = _contract_names(tuple(names))
    if not keys_plain:
        return None
    slots: dict[int, tuple[float, str | None]] = {}
    values: dict[str, object] = {}
    for raw in lines:
        line = raw.strip()
        if not line:
            continue  # blank: skipped by the full parser too
        if (";" in raw or "|" in raw) and _list_parts(raw, dims) is not None:
            return None  # the full parser would split it into several lines
        m = _CONTRACT_SLOT.fullmatch(line)
        if m is not None:
            n = int(m.group(1))
            after = m.group(4)
            if n in slots or not _plain_name(m.group(2)):
                return None  # a repeat (sets, repeats), or a name _read_slot may read a score in
            if _ALTERNATIVE.match(after) is not None:
                return None  # a range or an alternative right after the score
            # " — " holds nothing _may_hold_score looks for, and its dash is not ASCII: the rationale alone is asked
            if _may_hold_score(m.group(5)) and (_LATE_SCORE.search(after) or _ANY_OF_TEN.search(after)):
                return None  # another score on the line: the full parser decides
            slots[n] = (float(m.group(3)), _rationale(after))
            continue
        k = _CONTRACT_KEY.fullmatch(line)
        if k is None or k.group(1) in values:
            return None  # prose, another shape, or a trailer key given twice
        key = k.group(1)
        body = k.group(2).strip(" \t*_`").rstrip("|").strip()
        v = body.strip(" \t*_`\"'<>[]")
        if key == "overall":
            if _CONTRACT_OVERALL.fullmatch(v) is None or not (float(v) == 0 or 1 <= float(v) <= 100):
                return None  # the full parser says why (a fraction like 0.78 is not guessed onto 0-100)
            values[key] = float(v)
        elif key == "training_recommendation":
            if v not in _CONTRACT_RECOMMENDATIONS:
                return None
            values[key] = v
        else:
            if not v:
                return None
            values[key] = v
    if not slots or len(values) != len(TRAILER_KEYS):
        return None
    # built as parse_reply_full builds it, so the fields set match as well as the values
    res = ScoreResult(status="parse_error")
    for n in sorted(slots):
        res.scores[n - 1], res.rationales[n - 1] = slots[n]
    issues: list[str] = []
    if len(slots) < N_SLOTS:
        issues.append(f"missing slots {','.join(f'A{s}' for s in range(1, N_SLOTS + 1) if s not in slots)}")
    for key in TRAILER_KEYS:
        setattr(res, _RESULT_KEYS[key], values[key])
    res.issues = issues
    res.status = "ok" if len(slots) == N_SLOTS else "partial"
    return res

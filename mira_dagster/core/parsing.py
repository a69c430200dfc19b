"""Parsing scorer replies in the contract format, surviving what LLMs actually write.

The contract asks for fifteen `[Ai] <name>: <score>/10 — <rationale>` lines and four trailer lines
(`overall`, `training_recommendation`, `domain_tag`, `brief`). Teachers are reached without constrained
decoding, so the parser reads every variation seen in practice, by these rules:

- Reasoning comes first and is skipped: the answer is the text after the LAST closing reasoning tag
  (`</think>`, `</thinking>`, `</reasoning>`, `◁/think▷`, ...). A reasoning block opened but never closed is
  read only if the reply was not cut; then, as everywhere, when the slot lines start over at `[A1]` the last
  set of slot lines wins (a draft followed by the final answer).
- A slot line STARTS with its `[Ai]` tag, after optional bullets, numbering, headings, quotes, table pipes
  and emphasis; a tag anywhere else (in a rationale, in the brief) is text. Slots are matched by their tag,
  never by name (a rubric may repeat a name). A slot given twice in one set keeps the first.
- A slot's score is the number right after its name: after the first separator (`:`, `=`, `|`, a dash),
  optionally labelled `Score:`, optionally bracketed `(7/10)`; or a number written with `/10` (or
  "out of 10") before any separator (`Clarity 7/10 — ...`). Whatever follows is the rationale, whatever it
  holds (colons, digits, "none", "n/a"). Only a score position holding N/A / none / null means "no score".
  Scores outside 0-10 and denominators other than 10 are rejected with an issue.
- Trailer lines are matched by key in any order and case (`Overall Score:`, `Training Recommendation:`,
  `Domain Tag:`); the last valid value of a key wins. `overall` is on 0-100; a value written out of 10
  (`7.8/10`, "7.8 out of 10") is converted (78) and the conversion listed in `issues`.
- Cut off means `finish_reason == "length"`, or no finish_reason and a last line that is obviously
  truncated. A reply that ended with `stop` is never cut off. On a cut reply a last line's value that may
  be incomplete is dropped.
- Code fences, markdown emphasis, blank lines, preambles and closing remarks are ignored.

Every reply ends in one status: `ok` (15 scores and the four trailer lines), `partial` (some scores),
or `parse_error` (no score at all). Whatever is wrong is listed in `issues`, so a human can see why.
Every pattern is anchored or bounded and lines are read once, so parsing stays linear in the reply's size.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
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


TRAILER_KEYS = ("overall", "training_recommendation", "domain_tag", "brief")
_STOP_REASONS = (None, "stop", "length", "eos", "end_turn", "stop_sequence")

# --- line shapes -------------------------------------------------------------------------------------------
# What may stand before a slot tag or a trailer key: bullets, block quotes, headings, emphasis, table pipes.
_LEAD = " \t>#*_+-•·|`"
_NUMBERING = re.compile(r"\(?\d{1,3}[ \t]?[.):|]")
_TAG = re.compile(
    r"\[[ \t]?[Aa][ \t]?(\d{1,2})[ \t]?\]|\([Aa](\d{1,2})\)|A(\d{1,2})(?=[ \t]{0,2}(?:[.:)|\]*—–：]|-[ \t]|$))"
)
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
# The first separator or number after the tag ends the name. A colon between two digits ("3:1") is text.
_EVENT = re.compile(
    r"(?<!\d):|:(?!\d)|[=|—–：]|(?<!\S)-(?!\S)|(?<!\S)-(?=\d)|(?<![\w.])(?:\d+(?:\.\d+)?(?!\d)|N/A(?!\w))", re.I
)
_DENOM = re.compile(
    r"[ \t*_`]{0,4}/[ \t*_`]{0,4}(?P<of>\d+(?:\.\d+)?)?|[ \t*_`]{1,4}out[ \t]{1,3}of[ \t]{1,3}(?P<of2>\d+(?:\.\d+)?)",
    re.I,
)
_TOKEN = re.compile(
    r"(?P<num>-?\d+(?:\.\d+|,\d(?=[ \t]?/))?)(?!\w|:\d)"
    r"|(?P<na>n/?a|none|null|nil|unscored|not[ -]applicable)(?=[ \t]{0,3}(?:$|[/)\]|—–:;,.*`(-]))",
    re.I,
)
_LABEL = re.compile(r"(?:score|rating|grade)\b[ \t*_`]{0,4}[:=：]?", re.I)
_LABELLED_SCORE = re.compile(r"(?:score|rating|grade)\b", re.I)
_RATIONALE_LABEL = re.compile(r"(?:rationale|justification|reason(?:ing)?|why|comment)[ \t*_`]{0,4}[:=：-]", re.I)
# A score placed later on the line: "(7/10)", "[7/10]", "score: 7/10", or ": 7/10" after a name with a dash.
_LATE_SCORE = re.compile(
    r"[(\[][ \t]?(?P<a>\d+(?:\.\d+)?)[ \t]?/[ \t]?10[ \t]?[)\]]"
    r"|(?:score|rating)[ \t*_`]{0,4}[:=]?[ \t*_`]{0,4}(?P<b>\d+(?:\.\d+)?)[ \t]?/[ \t]?10(?!\d)"
    r"|(?<!\d)[:：][ \t*_`]{0,4}(?P<c>\d+(?:\.\d+)?)[ \t]?/[ \t]?10(?!\d)",
    re.I,
)
_SKIP_BEFORE_SCORE = " \t*_`(["
_SKIP_BEFORE_RATIONALE = " \t*_`)]—–-:|,;.=>："

# --- trailer values ------------------------------------------------------------------------------------------
_OVERALL = re.compile(
    r"(?P<num>-?\d+(?:\.\d+)?)[ \t]{0,3}(?:/[ \t]{0,3}(?P<of>\d+(?:\.\d+)?)|(?P<pct>%)"
    r"|out[ \t]{1,3}of[ \t]{1,3}(?P<of2>\d+(?:\.\d+)?))?",
    re.I,
)
_RECOMMENDATION = re.compile(r"(keep|downsample|down[- ]sample|drop)\b", re.I)
_ANOTHER_CHOICE = re.compile(r"[ \t]{0,3}[|/,][ \t]{0,3}(?:keep|downsample|down|drop)\b", re.I)


@dataclass
class _Slot:
    score: float | None
    rationale: str | None
    problem: str | None  # why the score is missing


@dataclass
class _Line:
    kind: Literal["slot", "key", "text", "blank"]
    n: int = 0  # slot number
    key: str = ""  # trailer key
    alias: bool = False  # a trailer key under another name (summary, domain, recommendation)
    body: str = ""  # the text after the tag or key, or the whole stripped line


# --- lines ---------------------------------------------------------------------------------------------------


def _after_lead(line: str) -> str:
    s = line.lstrip(_LEAD)
    m = _NUMBERING.match(s)
    return s[m.end() :].lstrip(_LEAD) if m else s


def _classify(raw: str) -> _Line:
    line = raw.replace("**", "").strip()
    if not line or line.startswith(_FENCE):
        return _Line("blank")
    s = _after_lead(line)
    m = _TAG.match(s)
    if m:
        return _Line("slot", n=int(m.group(1) or m.group(2) or m.group(3)), body=s[m.end() :])
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


def _reasoning_split(lines: list[str], kinds: list[_Line], cut: bool, issues: list[str]) -> int:
    """Cut reasoning out of `lines` in place; return the index of the first answer line."""
    close: tuple[int, int] | None = None
    opened: tuple[int, int, int, str] | None = None
    for i, line in enumerate(lines):
        if kinds[i].kind in ("slot", "key"):
            continue  # a tag inside a slot or trailer line is text
        for m in _MARKER.finditer(line):
            if m.group("close") or m.group("close2"):
                close, opened = (i, m.end()), None
            elif opened is None and not line[: m.start()].strip():
                opened = (i, m.start(), m.end(), m.group())
    start = 0
    if close is not None:
        i, col = close
        lines[i] = lines[i][col:]
        kinds[i] = _classify(lines[i])
        start = i
        if not any(k.kind == "slot" for k in kinds[i:]) and any(k.kind == "slot" for k in kinds[:i]):
            issues.append("slot lines only inside the reasoning block (ignored)")
    if opened is not None:
        i, s, e, tag = opened
        if cut:
            issues.append(f"reply cut off inside an unclosed {tag} block; its draft is ignored")
            lines[i] = lines[i][:s]
            kinds[i] = _classify(lines[i])
            del lines[i + 1 :], kinds[i + 1 :]
        else:
            issues.append(f"unclosed {tag} block; read the last set of slot lines in it")
            lines[i] = lines[i][:s] + lines[i][e:]
            kinds[i] = _classify(lines[i])
    return start


def _last_set(kinds: list[_Line], start: int, issues: list[str]) -> int:
    """Where the last set of slot lines begins: slot lines that start over at [A1] are a new set."""
    seen: set[int] = set()
    begin, sets = start, 0
    for i in range(start, len(kinds)):
        k = kinds[i]
        if k.kind != "slot":
            continue
        if not seen:
            sets = 1
        elif k.n == 1 and 1 in seen:
            begin, sets, seen = i, sets + 1, set()
        seen.add(k.n)
    if sets > 1:
        issues.append(f"{sets} sets of slot lines; the last one was read")
    return begin


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


def _read_slot(rest: str, last_cut: bool) -> _Slot:
    """Read `<name> <sep> <score>[/10] <sep> <rationale>` (the text after a slot's tag)."""
    rest = rest.rstrip().lstrip(" \t*_`:.|)—–：")
    tok: re.Match[str] | None = None
    sep_end = -1
    for ev in _EVENT.finditer(rest):
        t = ev.group()
        if t[0].isdigit():
            den = _DENOM.match(rest, ev.end())
            if den is None:
                continue  # a number inside the name ("Top 5 Accuracy")
            tok = _TOKEN.match(rest, ev.start())
        elif t[0] in "nN":
            tok = _TOKEN.match(rest, ev.start())
        else:
            sep_end = ev.end()
            tok = _score_after(rest, sep_end)
        break
    if tok is None:
        late = _late_score(rest, sep_end) if sep_end >= 0 else None
        if late is None:
            text = rest[sep_end:] if sep_end >= 0 else ""
            return _Slot(None, _rationale(text), "score cut off" if last_cut else "no score")
        return _check(*late)
    if tok.group("na"):
        den = _DENOM.match(rest, tok.end())
        after = rest[den.end() if den else tok.end() :]
        return _Slot(None, _rationale(after), f"no score ({tok.group('na')})")
    number = tok.group("num")
    end = tok.end()
    den = _DENOM.match(rest, end)
    of = (den.group("of") or den.group("of2")) if den else None
    if den is not None:
        end = den.end()
    after = rest[end:]
    if last_cut and of != "10" and not (den is None and after.strip()):
        return _Slot(None, None, "score cut off")  # the number or its denominator may be incomplete
    if den is not None and of is None:
        return _Slot(None, _rationale(after), f"score {number}/ without a denominator")
    if of is not None and float(of) != 10:
        return _Slot(None, _rationale(after), f"score out of {of}, not 10")
    return _check(number, _rationale(after))


def _late_score(rest: str, sep_end: int) -> tuple[str, str | None] | None:
    """A score that is not right after the first separator: `(7/10)` at the end, `Score: 7/10`, or
    `: 7/10` after a name that holds a dash. Returns (score, rationale)."""
    for m in _LATE_SCORE.finditer(rest, sep_end):
        if m.group("c") is not None:
            between = rest[sep_end : m.start()]
            if len(between) > 80 or any(ch.isdigit() for ch in between):
                continue
            return m.group("c"), _rationale(rest[m.end() :])
        value = m.group("a") or m.group("b")
        text = f"{rest[sep_end : m.start()].strip()} {rest[m.end() :].strip()}"
        return value, _rationale(text)
    return None


def _check(number: str, rationale: str | None) -> _Slot:
    value = float(number.replace(",", "."))
    if not 0 <= value <= 10:
        return _Slot(None, rationale, f"score {number} outside 0-10")
    return _Slot(value, rationale, None)


# --- trailer ---------------------------------------------------------------------------------------------------


def _trailer_value(key: str, value: str) -> tuple[object, str | None]:
    """(parsed value or None, note): the note is an issue if the value is used or cannot be read."""
    v = value.strip(" \t*_`\"'<>[]")
    if key == "overall":
        m = _OVERALL.match(v)
        if not m:
            return None, f"overall not a number in 0-100: {value[:40]!r}"
        num, of = m.group("num"), m.group("of") or m.group("of2")
        x, note = float(num), None
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


def _truncated_tail(text: str, last: str) -> bool:
    """Without a finish_reason: does the reply end in the middle of a line it was writing?"""
    if not text or text.endswith("\n") or not last.strip():
        return False
    k = _classify(last)
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


def parse_reply(text: str, finish_reason: str | None = None) -> ScoreResult:
    """Parse a reply; `finish_reason == "length"` marks it as cut at max_tokens, `stop` as complete."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.split("\n")
    issues: list[str] = []
    if finish_reason not in _STOP_REASONS:
        issues.append(f"finish_reason {finish_reason!r}")
    cut = finish_reason == "length" or (finish_reason is None and _truncated_tail(text, lines[-1]))
    last_index = len(lines) - 1
    kinds = [_classify(line) for line in lines]
    start = _reasoning_split(lines, kinds, cut, issues)
    start = _last_set(kinds, start, issues)

    slots: dict[int, _Slot] = {}
    values: dict[str, list[tuple[object, str | None, bool]]] = {k: [] for k in TRAILER_KEYS}
    open_slot: _Slot | None = None  # a slot line whose score or rationale may follow on the next lines
    open_key: _Line | None = None  # a trailer key whose value may follow on the next line
    for i in range(start, len(kinds)):
        k = kinds[i]
        last_cut = cut and i == last_index
        if k.kind == "blank":
            continue
        if k.kind == "slot":
            open_slot = open_key = None
            if not 1 <= k.n <= N_SLOTS:
                issues.append(f"slot A{k.n} does not exist")
            elif k.n in slots:
                issues.append(f"A{k.n} repeated; first kept")
            else:
                slots[k.n] = open_slot = _read_slot(k.body, last_cut)
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
        if open_slot is not None and open_slot.score is None and _LABELLED_SCORE.match(body):
            got = _read_slot(body, last_cut)
            open_slot.score, open_slot.problem = got.score, got.problem
            open_slot.rationale = open_slot.rationale or got.rationale
        elif open_slot is not None and open_slot.rationale is None and not last_cut:
            open_slot.rationale = _rationale(body)
        elif open_key is not None and not last_cut:
            values[open_key.key].append((*_trailer_value(open_key.key, body), open_key.alias))
            open_key = None
        else:
            open_slot = open_key = None

    res = ScoreResult(status="parse_error")
    for n in sorted(slots):
        s = slots[n]
        res.scores[n - 1], res.rationales[n - 1] = s.score, s.rationale
        if s.problem:
            issues.append(f"A{n}: {s.problem}")
    missing = [f"A{s}" for s in range(1, N_SLOTS + 1) if s not in slots]
    if missing:
        issues.append(f"missing slots {','.join(missing)}")
    absent = []
    for key in TRAILER_KEYS:
        got = [(v, note) for v, note, _ in values[key] if v is not None]
        exact = [(v, note) for v, note, alias in values[key] if v is not None and not alias]
        got = exact or got  # `brief:` wins over `Summary:`, `domain_tag:` over `Domain:`
        if got:
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
    res.issues = issues
    n_scored = sum(s is not None for s in res.scores)
    trailer_ok = None not in (res.overall, res.recommendation, res.domain_tag, res.brief)
    res.status = "ok" if n_scored == N_SLOTS and trailer_ok else "partial" if n_scored else "parse_error"
    return res

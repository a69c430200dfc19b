"""Reading source files into normalised records, with a quarantine for every line that is not one.

A source file is JSONL in one of several public layouts (DeepSeek-R1 distill dumps, Marco-o1 CoT,
Kimina/DeepSeek prover outputs, SWE-agent / SWE-smith / OpenHands trajectories, chat messages). Each
layout maps onto the fields the prompt family needs:

- `qa_with_think` and `qa`: question, thinking (may be empty for `qa`), answer;
- `agent`: task, trajectory (rendered turns), outcome (the final patch or submission).

Every line read ends as exactly one record or one quarantine row with a reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from mira_dagster.core.config import Family

TEXT_FIELDS = ("question", "thinking", "answer", "task", "trajectory", "outcome")

_TOKEN_RE = re.compile(r"\w{1,4}|[^\w\s]")


def estimate_tokens(text: str) -> int:
    """An offline token estimate: words cut into pieces of at most 4 characters, plus punctuation.

    It tracks BPE tokenizers within roughly +-25% on English prose and code; it is used for budgets
    and the offline length check. The serving path can count with the server's tokenizer instead.
    """
    return len(_TOKEN_RE.findall(text))


def normalise_text(text: str) -> str:
    text = unicodedata.normalize("NFC", text)
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


class Record(BaseModel):
    record_id: str
    source: str
    group_id: str
    format: Family
    layout: str
    question: str | None = None
    thinking: str | None = None
    answer: str | None = None
    task: str | None = None
    trajectory: str | None = None
    outcome: str | None = None
    n_tokens: int
    origin_file: str
    origin_line: int


class Quarantined(BaseModel):
    source: str
    origin_file: str
    origin_line: int
    reason: str
    excerpt: str


def record_id_of(fields: dict[str, str | None]) -> str:
    """Hash of the normalised content only, so the same content in two sources has one id."""
    canon = {k: normalise_text(v) for k, v in sorted(fields.items()) if v and normalise_text(v)}
    blob = json.dumps(canon, ensure_ascii=False, sort_keys=True).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:32]


# ---------------------------------------------------------------------------------------------
# Layouts: each takes a parsed JSON object and returns the prompt fields, or None if it does not apply.

Fields = dict[str, str]
Layout = Callable[[dict[str, Any]], Fields | None]

_THINK_RE = re.compile(r"<think>(.*?)(?:</think>|$)", re.S)
_THOUGHT_RE = re.compile(r"<Thought>(.*?)</Thought>", re.S)
_OUTPUT_RE = re.compile(r"<Output>(.*?)(?:</Output>|$)", re.S)
_THEOREM_RE = re.compile(r"(theorem\s.*?:=)", re.S)


def _str(v: Any) -> str:
    return v if isinstance(v, str) else ""


def _qa_generic(d: dict[str, Any]) -> Fields | None:
    if "question" in d and "answer" in d:
        return {"question": _str(d["question"]), "thinking": _str(d.get("thinking")), "answer": _str(d["answer"])}
    return None


def _prompt_solution(d: dict[str, Any]) -> Fields | None:
    # DeepSeek-R1 distill dumps: prompt ends with "<think>\n"; solution = thinking + "</think>" + answer.
    if "prompt" not in d or "solution" not in d:
        return None
    question = re.sub(r"<think>\s*$", "", _str(d["prompt"]))
    thinking, sep, answer = _str(d["solution"]).partition("</think>")
    if not sep:
        thinking, answer = "", thinking
    return {"question": question, "thinking": thinking, "answer": answer}


def _instruction_response(d: dict[str, Any]) -> Fields | None:
    # Marco-o1 style: <Thought>...</Thought><Output>...</Output>, or <think>...</think> answer.
    if "instruction" not in d or "response" not in d or not isinstance(d["response"], str):
        return None
    resp = d["response"]
    if m := _THOUGHT_RE.search(resp):
        out = _OUTPUT_RE.search(resp)
        return {
            "question": _str(d["instruction"]),
            "thinking": m.group(1),
            "answer": out.group(1) if out else resp[m.end() :],
        }
    thinking, sep, answer = resp.partition("</think>")
    if sep:
        return {"question": _str(d["instruction"]), "thinking": thinking.replace("<think>", ""), "answer": answer}
    return {"question": _str(d["instruction"]), "thinking": "", "answer": resp}


def _lean_cot_proof(d: dict[str, Any]) -> Fields | None:
    # Kimina-Prover: `cot` = <think>...</think> + Lean, `correct_proof` = the verified Lean file.
    if "cot" not in d or "correct_proof" not in d:
        return None
    proof = _str(d["correct_proof"])
    stmt = _THEOREM_RE.search(proof)
    think = _THINK_RE.search(_str(d["cot"]))
    question = f"Prove in Lean 4: {stmt.group(1)}" if stmt else f"Prove in Lean 4: {_str(d.get('name'))}"
    return {"question": question, "thinking": think.group(1) if think else "", "answer": proof}


def _lean_formal(d: dict[str, Any]) -> Fields | None:
    # DeepSeek-Prover few-shot: informal statement as a Lean comment, formal statement, tactic proof.
    if "formal_statement" not in d or "formal_proof" not in d:
        return None
    question = _str(d.get("informal_prefix")) + _str(d["formal_statement"])
    return {"question": question, "thinking": "", "answer": _str(d["formal_statement"]) + _str(d["formal_proof"])}


def _chat_qa(d: dict[str, Any]) -> Fields | None:
    msgs = d.get("messages")
    if not isinstance(msgs, list):
        return None
    user = next((m for m in msgs if isinstance(m, dict) and m.get("role") == "user"), None)
    asst = next((m for m in reversed(msgs) if isinstance(m, dict) and m.get("role") == "assistant"), None)
    if not user or not asst:
        return None
    thinking, sep, answer = _content_text(asst.get("content")).partition("</think>")
    if not sep:
        thinking, answer = "", thinking
    return {
        "question": _content_text(user.get("content")),
        "thinking": thinking.replace("<think>", ""),
        "answer": answer,
    }


def _content_text(content: Any) -> str:
    """Chat content as text: a string, or a list of OpenAI content parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(_str(p.get("text")) if isinstance(p, dict) else _str(p) for p in content)
    return ""


def _turn_text(turn: dict[str, Any]) -> tuple[str, str]:
    role = _str(turn.get("role")) or _str(turn.get("source"))
    if not role:
        role = "observation" if "observation" in turn else "action" if "action" in turn else "event"
    parts = [_content_text(turn.get("content")) or _str(turn.get("message"))]
    thought = _str(turn.get("thought"))
    if thought and thought not in parts[0]:
        parts.insert(0, thought)
    for key in ("command", "code"):
        if _str(turn.get(key)) and _str(turn.get(key)) not in parts[-1]:
            parts.append(f"[{key}] {turn[key]}")
    action = turn.get("action")
    if isinstance(action, str) and action and role in ("assistant", "agent") and action not in "\n".join(parts):
        parts.append(f"[action] {action}")
    return role, "\n".join(p for p in parts if p)


def _agent_turns(d: dict[str, Any]) -> Fields | None:
    turns = d.get("messages") if isinstance(d.get("messages"), list) else d.get("history")
    if not isinstance(turns, list) or not turns:
        return None
    rendered = [_turn_text(t) for t in turns if isinstance(t, dict)]
    trajectory = "\n\n".join(f"### {role}\n{text}" for role, text in rendered if text)
    task = _str(d.get("instruction")) or next((text for role, text in rendered if role == "user"), "")
    test_result = d.get("test_result") if isinstance(d.get("test_result"), dict) else {}
    info = d.get("info") if isinstance(d.get("info"), dict) else {}
    outcome = _str(d.get("git_patch")) or _str(test_result.get("git_patch")) or _str(info.get("submission"))
    return {"task": task, "trajectory": trajectory, "outcome": outcome}


LAYOUTS: dict[Family, list[tuple[str, Layout]]] = {
    "qa_with_think": [
        ("question_answer", _qa_generic),
        ("prompt_solution", _prompt_solution),
        ("instruction_response", _instruction_response),
        ("lean_cot_proof", _lean_cot_proof),
        ("lean_formal", _lean_formal),
        ("chat_messages", _chat_qa),
    ],
    "agent": [("agent_turns", _agent_turns)],
}
LAYOUTS["qa"] = LAYOUTS["qa_with_think"]

# Fields that must be non-empty after normalisation, per family.
REQUIRED: dict[Family, tuple[str, ...]] = {
    "qa_with_think": ("question", "answer"),
    "qa": ("question", "answer"),
    "agent": ("trajectory",),
}


# ---------------------------------------------------------------------------------------------


@dataclass
class SourceRead:
    records: list[Record]
    quarantined: list[Quarantined]
    lines_read: int
    empty_files: list[str] = field(default_factory=list)


class SourceFileError(OSError):
    """A source file that is missing or changed under the reader: the message names the source and file."""


MAX_RECORD_BYTES = 4 * 1024 * 1024  # a longer line is quarantined: no scorer context holds it


def _file_version(st: os.stat_result) -> tuple[int, int, int]:
    """What tells two versions of a file apart without reading it: inode, size, modification time."""
    return st.st_ino, st.st_size, st.st_mtime_ns


def input_fingerprint(files: list[Path]) -> str:
    """A cheap identity of a version of a source's files: it changes when a file is edited, replaced, added or
    removed, without reading the contents."""
    parts = [f"{path}:{_file_version(path.stat()) if path.exists() else 'missing'}" for path in files]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _lines(path: Path, source: str) -> Iterator[tuple[int, bytes]]:
    """The file's lines; raises SourceFileError if the file is replaced or changed while being read, since
    what was read would then match no version of it (the caller writes nothing and the run can be retried)."""
    with path.open("rb") as fh:
        before = _file_version(os.fstat(fh.fileno()))
        for lineno, raw in enumerate(fh, 1):
            yield lineno, raw.rstrip(b"\r\n")
        after = _file_version(os.fstat(fh.fileno()))
    now = _file_version(path.stat()) if path.exists() else None
    if not before == after == now:
        raise SourceFileError(
            f"source {source!r}: {path} was replaced or changed while being read; nothing was written, run the "
            "partition again once the file is complete"
        )


def parse_line(raw: bytes, family: Family, max_bytes: int = MAX_RECORD_BYTES) -> tuple[str, Fields] | str:
    """Return (layout, fields) for a usable line, or the quarantine reason."""
    if not raw.strip():
        return "blank line"
    if len(raw) > max_bytes:
        return f"record of {len(raw):,} bytes is over the {max_bytes:,}-byte limit (max_record_bytes)"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"not valid UTF-8 (byte {exc.start})"
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"invalid JSON: {exc.msg} at column {exc.colno}"
    if not isinstance(obj, dict):
        return f"expected a JSON object, got {type(obj).__name__}"
    for name, layout in LAYOUTS[family]:
        fields = layout(obj)
        if fields is None:
            continue
        missing = [f for f in REQUIRED[family] if not normalise_text(fields.get(f, ""))]
        if missing:
            return f"layout {name}: empty required field(s) {missing}"
        return name, {k: normalise_text(v) for k, v in fields.items()}
    return f"no {family} layout matches keys {sorted(obj)[:12]}"


def read_source(
    source: str, group_id: str, family: Family, files: list[Path], max_bytes: int = MAX_RECORD_BYTES
) -> SourceRead:
    """Read every line of a source's files; duplicates inside the source are quarantined.

    An empty file has no line to quarantine, so it is reported in `empty_files` (and by the asset) instead."""
    records: list[Record] = []
    quarantined: list[Quarantined] = []
    seen: dict[str, str] = {}
    lines_read = 0
    empty_files: list[str] = []
    for path in files:
        if not path.is_file():
            raise SourceFileError(f"source {source!r}: file not found: {path}")
        lines_before = lines_read
        for lineno, raw in _lines(path, source):
            lines_read += 1
            where = f"{path.name}:{lineno}"
            parsed = parse_line(raw, family, max_bytes)
            if isinstance(parsed, str):
                quarantined.append(_quarantine(source, path, lineno, parsed, raw))
                continue
            layout, fields = parsed
            rid = record_id_of(fields)
            if rid in seen:
                quarantined.append(_quarantine(source, path, lineno, f"duplicate of {seen[rid]}", raw))
                continue
            seen[rid] = where
            records.append(
                Record(
                    record_id=rid,
                    source=source,
                    group_id=group_id,
                    format=family,
                    layout=layout,
                    n_tokens=sum(estimate_tokens(v) for v in fields.values()),
                    origin_file=path.name,
                    origin_line=lineno,
                    **fields,
                )
            )
        if lines_read == lines_before:
            empty_files.append(str(path))
    return SourceRead(records, quarantined, lines_read, empty_files)


def _quarantine(source: str, path: Path, lineno: int, reason: str, raw: bytes) -> Quarantined:
    excerpt = raw[:200].decode("utf-8", errors="replace")
    return Quarantined(source=source, origin_file=path.name, origin_line=lineno, reason=reason, excerpt=excerpt)

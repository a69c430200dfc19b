"""The offline scorer: a documented stand-in used when no LLM endpoint is configured.

It is deterministic and needs no model. It reads the record and the slot names from the prompt, derives a
latent quality per slot from simple features of the text (length, a final answer or patch, repetition,
structure, formal content) plus a per-record latent, and writes the reply **as text in the contract
format**, so the parser runs on every record exactly as it would for a real model.

The offline teacher adds small noise to the latent quality. The offline student is the teacher plus
per-slot noise, large for a few slots (`noisy_slots`), so reliability estimation and masking have real
work to do: those slots should come out masked.
"""

from __future__ import annotations

import hashlib
import math
import re
from statistics import NormalDist

from mira_dagster.core.records import estimate_tokens
from mira_dagster.core.scoring import Completion, Role, ScorerSpec

_SLOT_LINE = re.compile(r"^\[A(\d+)\] (.+?): <score>/10", re.M)
_STD_NORMAL = NormalDist()

TEACHER_NOISE = 0.5
STUDENT_NOISE = 0.6
STUDENT_NOISY_SLOT_NOISE = 3.0


def _unit(*parts: object) -> float:
    """A deterministic number in (0, 1) from the parts."""
    digest = hashlib.blake2b("\x1f".join(map(str, parts)).encode("utf-8"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2**64


def _gauss(*parts: object) -> float:
    return _STD_NORMAL.inv_cdf(_unit(*parts))


def features(record_text: str) -> list[float]:
    """Five features in roughly [-1, 1]."""
    ntok = estimate_tokens(record_text)
    lines = [ln.strip() for ln in record_text.splitlines() if ln.strip()]
    repetition = 1 - len(set(lines)) / len(lines) if lines else 1.0
    final = bool(re.search(r"\\boxed|<Output>|:= by|diff --git|## Answer\n(?!\(none\))\S", record_text))
    formal = len(re.findall(r"\$|\\[a-z]+|:=|def |class |assert ", record_text))
    return [
        math.tanh((math.log1p(ntok) - 6.0) / 2.0),
        1.0 if final else -1.0,
        1.0 - 2.0 * repetition,
        math.tanh(len(lines) / max(1.0, ntok / 40.0) - 1.0),
        math.tanh(formal / 30.0),
    ]


def _weights(name: str) -> list[float]:
    return [-0.3 + 1.1 * _unit("weight", name, i) for i in range(5)]


def _domain(record_text: str) -> str:
    if "## Trajectory" in record_text:
        return "swe-agent"
    if "Lean" in record_text or "theorem " in record_text:
        return "lean-proof"
    if "\\boxed" in record_text:
        return "math"
    return "reasoning"


_WORD = re.compile(r"[A-Za-z][A-Za-z'-]{2,}")


def _brief(record_text: str, record_key: str, best: str, scores: dict[int, float], worst: str) -> str:
    """A brief that names the record (a few of its own words, picked by its hash), as a real scorer's brief would:
    a stand-in whose briefs repeat across records would trip the degenerate-replies check on every run."""
    words = _WORD.findall(record_text[-4000:])
    start = int(record_key[:8], 16) % max(1, len(words) - 4)
    about = " ".join(words[start : start + 4]) or "this record"
    high, low = max(scores.values(), default=0), min(scores.values(), default=0)
    return f"On '{about}': strongest on {best} ({high:g}/10), weakest on {worst} ({low:g}/10)."


class OfflineBackend:
    """Deterministic stand-in for a teacher or student endpoint."""

    def __init__(self, role: Role, noisy_slots: list[int] | None = None) -> None:
        self.role = role
        self.noisy_slots = set(noisy_slots or [])
        self.calls = 0

    def slot_score(self, record_key: str, feats: list[float], slot: int, name: str) -> float:
        latent = (
            5.5
            + 1.2 * _gauss("latent", record_key)
            + 1.5 * sum(w * f for w, f in zip(_weights(name), feats, strict=True))
        )
        value = latent + TEACHER_NOISE * _gauss("teacher", record_key, slot)
        if self.role == "student":
            sigma = STUDENT_NOISY_SLOT_NOISE if slot in self.noisy_slots else STUDENT_NOISE
            value += sigma * _gauss("student", record_key, slot)
        return float(min(10, max(0, round(value))))

    def reply(self, user: str) -> str:
        record_text = user.split("\nDimensions:", 1)[0]
        record_key = hashlib.sha256(record_text.encode("utf-8")).hexdigest()
        feats = features(record_text)
        slots = [(int(s), name) for s, name in _SLOT_LINE.findall(user)]
        scores = {s: self.slot_score(record_key, feats, s, name) for s, name in slots}
        lines = [f"[A{s}] {name}: {scores[s]:g}/10 — {_rationale(name, scores[s])}" for s, name in slots]
        mean = sum(scores.values()) / max(1, len(scores))
        overall = int(min(100, max(0, round(mean * 10 + 3 * _gauss("overall", self.role, record_key)))))
        rec = "keep" if overall >= 65 else "downsample" if overall >= 45 else "drop"
        best = max(slots, key=lambda x: scores[x[0]])[1] if slots else "-"
        worst = min(slots, key=lambda x: scores[x[0]])[1] if slots else "-"
        lines += [
            f"overall: {overall}",
            f"training_recommendation: {rec}",
            f"domain_tag: {_domain(record_text)}",
            f"brief: {_brief(record_text, record_key, best, scores, worst)}",
        ]
        return "\n".join(lines) + "\n"

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        return None  # no tokenizer: the engine falls back to the estimate

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.calls += 1
        text = self.reply(user)
        return Completion(
            text=text,
            finish_reason="stop",
            prompt_tokens=estimate_tokens(system) + estimate_tokens(user),
            completion_tokens=estimate_tokens(text),
        )


def _rationale(name: str, score: float) -> str:
    level = "strong" if score >= 7 else "adequate" if score >= 4 else "weak"
    return f"{level} on {name.lower()} judged from the record's surface features (offline stand-in)."

"""The distillation data: the teacher's labels as chat-format SFT examples (system, user, assistant), the training
data of a scorer unit's student. Each example is exactly what the teacher was sent and what it answered: the
scorer's system prompt, the user message rendered from the record, and the cached reply in the contract format."""

from __future__ import annotations

from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import RecordLike
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import ScorerSpec


def sft_messages(spec: ScorerSpec, rubric: Rubric, record: RecordLike, reply: str) -> list[dict[str, str]]:
    """One example's messages: the request as the scorer sent it, and the reply."""
    return [
        {"role": "system", "content": spec.system_prompt},
        {"role": "user", "content": render_user(spec.user_template, rubric, record)},
        {"role": "assistant", "content": reply},
    ]

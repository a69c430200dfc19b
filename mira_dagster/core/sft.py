"""The distillation data: the teacher's labels as chat-format SFT examples (system, user, assistant), the training
data of a scorer unit's student. Each example is exactly what the teacher was sent and what it answered: the
scorer's system prompt, the user message rendered from the record, and the cached reply in the contract format."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import Completion, ScorerSpec


def sft_messages(spec: ScorerSpec, rubric: Rubric, record: Record, reply: str) -> list[dict[str, str]]:
    """One example's messages: the request as the scorer sent it, and the reply."""
    return [
        {"role": "system", "content": spec.system_prompt},
        {"role": "user", "content": render_user(spec.user_template, rubric, record)},
        {"role": "assistant", "content": reply},
    ]


def write_sft_file(
    path: Path,
    labelled: Iterable[tuple[str, str]],
    records: Mapping[str, Record],
    replies: Mapping[str, Completion],
    spec: ScorerSpec,
    rubric: Rubric,
) -> dict[str, int]:
    """Write one JSON line per labelled (record_id, source) that has its record and reply, replacing `path` only
    once complete. Returns the examples written per source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    counts: dict[str, int] = {}
    with tmp.open("w", encoding="utf-8") as fh:
        for rid, source in labelled:
            if rid not in replies or rid not in records:
                continue
            messages = sft_messages(spec, rubric, records[rid], replies[rid].text)
            fh.write(json.dumps({"record_id": rid, "source": source, "messages": messages}, ensure_ascii=False) + "\n")
            counts[source] = counts.get(source, 0) + 1
    tmp.replace(path)
    return counts

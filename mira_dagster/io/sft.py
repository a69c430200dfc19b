"""A scorer unit's distillation file: one JSON line per labelled record (core/sft.sft_messages), written atomically."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path

from mira_dagster.core.records import Record
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import Completion, ScorerSpec
from mira_dagster.core.sft import sft_messages


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

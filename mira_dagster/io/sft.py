"""A scorer unit's distillation file: one JSON line per labelled record (core/sft.sft_messages), written atomically.

The labels' ids come in as a frame (capped by teacher_sample_max per source, not by the corpus); their text is read
from raw_records a row group at a time (io/sending.records_of: only the labelled records' text is kept), the replies
a batch at a time, and no pydantic object is made per record."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl

from mira_dagster.core.records import record_rows
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import ScorerSpec
from mira_dagster.core.sft import sft_messages
from mira_dagster.io.sending import records_of
from mira_dagster.io.tables import Store

BATCH_ROWS = 1024  # labelled records (their text and replies) held at a time


def write_sft_file(
    path: Path, store: Store, labels: pl.DataFrame, spec: ScorerSpec, rubric: Rubric, batch_rows: int = BATCH_ROWS
) -> dict[str, int]:
    """Write one JSON line per label (`labels`: record_id, source, in the file's order) whose record is in
    raw_records and whose reply is in the cache under spec.version, replacing `path` only once complete. Returns
    the examples written per source."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    counts: dict[str, int] = {}
    wanted = labels.select("record_id", "source").with_row_index("_pos")
    texts = records_of(store, wanted).sort("_pos")  # a source never holds a record twice: one row per label
    with tmp.open("w", encoding="utf-8") as fh:
        for batch in texts.iter_slices(batch_rows):
            rows = list(record_rows(batch))
            replies = store.replies.load(spec.version, [r.record_id for r in rows])
            for record in rows:
                if record.record_id not in replies:
                    continue
                messages = sft_messages(spec, rubric, record, replies[record.record_id].text)
                line = {"record_id": record.record_id, "source": record.source, "messages": messages}
                fh.write(json.dumps(line, ensure_ascii=False) + "\n")
                counts[record.source] = counts.get(record.source, 0) + 1
    tmp.replace(path)
    return counts

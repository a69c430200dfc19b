"""Ingest of a file holding secrets (an environment dump, a private key) quarantines it without copying them:
canaries in the environment and in the file never reach a quarantine row."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from mira_dagster.io.ingest import SourceIngest
from mira_dagster.settings import secret_values
from tests.core.test_redact import PEM

CANARY = "canary-value-5c1e7d"


def test_quarantine_rows_hold_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MIRA_TEACHER_API_KEY", CANARY)
    monkeypatch.setenv("SOME_SERVICE_TOKEN", CANARY + "-token")
    data = tmp_path / "leaky.jsonl"
    data.write_text(
        f"PATH=/bin\x00MIRA_TEACHER_API_KEY={CANARY}\x00HOME=/root\n"
        + PEM
        + "\n"
        + f'{{"question": "a key {CANARY}-token in a record that has no answer"}}\n'
        + '{"question": "What is 2+2?", "answer": "4"}\n'
    )
    ingest = SourceIngest("leaky", "g", "qa", [data], secrets=secret_values())
    frames = list(ingest.batches())
    quarantine = pl.concat([q for _, q in frames])
    records = pl.concat([r for r, _ in frames])
    assert records.height == 1 and quarantine.height == 6  # every line accounted for
    text = "\n".join(quarantine["excerpt"].to_list() + quarantine["reason"].to_list())
    assert CANARY not in text and "b3BlbnNz" not in text and "QyNTUxOQ" not in text
    assert "MIRA_TEACHER_API_KEY=" in text  # what it was stays readable

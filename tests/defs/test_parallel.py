"""Four source partitions materialised at the same time in separate processes against one MIRA_HOME:
no lock errors, exact counts, no duplicates (each partition is its own Parquet file; the catalogue's
view refresh is a short, retried transaction)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from mira_dagster.io.registry import load_config

pytestmark = pytest.mark.slow  # four partitions in four processes: about 25 s

SCRIPT = """
import sys
import dagster as dg
from mira_dagster import definitions as d
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
mira = MiraResource(home=sys.argv[2])
for selection in (d.INGEST_ASSETS, d.SCORING_ASSETS):
    res = dg.materialize(d.ALL_ASSETS, selection=selection, partition_key=sys.argv[1], resources={"mira": mira},
                         instance=in_process_instance())
    assert res.success
"""

SOURCES = ["ace_reason", "lean_qa", "qwq", "swe_qa"]


def test_four_partitions_at_once(tmp_path: Path) -> None:
    home = tmp_path / "home"
    script = tmp_path / "one.py"
    script.write_text(SCRIPT)
    procs = [
        subprocess.Popen(
            [sys.executable, script, s, str(home)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for s in SOURCES
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs, strict=True):
        assert p.returncode == 0, out[-3000:]
        assert "Could not set lock" not in out
    cfg = load_config()
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        raw = dict(con.execute("SELECT source, count(*) FROM raw_records GROUP BY source").fetchall())
        scores = con.execute("SELECT source, count(*), count(DISTINCT record_id) FROM student_scores GROUP BY source")
        scores = {s: (n, d) for s, n, d in scores.fetchall()}
        labels = dict(con.execute("SELECT source, count(*) FROM teacher_labels GROUP BY source").fetchall())
    for s in SOURCES:
        n_lines = sum(len(f.read_bytes().splitlines()) for f in cfg.sources[s].files)
        assert raw[s] == n_lines
        assert scores[s] == (raw[s], raw[s])
        assert labels[s] == min(raw[s], max(cfg.pipeline.teacher_sample_min, -(-raw[s] // 2)))

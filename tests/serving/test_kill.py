"""SIGKILL in the middle of a partition, then run again: the partition completes, nothing twice, and no
record answered before the kill is requested again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import dagster as dg
import polars as pl
import pytest

from mira_dagster.core.prompts import render_user
from mira_dagster.core.records import records_from
from mira_dagster.definitions import ALL_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.registry import load_config
from mira_dagster.io.store import ParquetReplyCache
from mira_dagster.io.templates import load_templates
from tests.loopback import ChatServer, serve, user_key

pytestmark = pytest.mark.slow

RAW, TEACHER, STUDENT = PARTITIONED_ASSETS
ALL = ALL_ASSETS
IN_FLIGHT = 4

SCRIPT = """
import dagster as dg
from mira_dagster.definitions import ALL_ASSETS, CORPUS_ASSETS, PARTITIONED_ASSETS
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.partitions import in_process_instance
mira = MiraResource(config_path={cfg!r}, home={home!r})
dg.materialize(ALL_ASSETS, selection=[PARTITIONED_ASSETS[2]], partition_key="lean_qa",
               instance=in_process_instance(), resources={{"mira": mira}})
"""


def test_sigkill_mid_partition_then_resume(small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = small_config.read_text().replace(
        "pipeline: {", f"pipeline: {{max_in_flight: {IN_FLIGHT}, write_batch_size: 1000, "
    )
    small_config.write_text(text)
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(small_config), home=str(home))
    instance = in_process_instance()
    assert dg.materialize(
        ALL, selection=[RAW], partition_key="lean_qa", instance=instance, resources={"mira": mira}
    ).success
    raw = pl.read_parquet(home / "tables" / "raw_records" / "lean_qa.parquet")
    cfg = load_config(small_config)
    rubric, template = load_rubric(cfg.groups["2"].anchors, "2", "qa_with_think"), load_templates()
    rid_of = {
        user_key({"messages": [{"content": render_user(template, rubric, r)}]}): r.record_id for r in records_from(raw)
    }

    server = ChatServer(latency_s=0.15)
    with serve(server) as url:
        monkeypatch.setenv("MIRA_STUDENT_BASE_URL", url)
        script = tmp_path / "score.py"
        script.write_text(textwrap.dedent(SCRIPT.format(cfg=str(small_config), home=str(home))))
        proc = subprocess.Popen(
            [sys.executable, script], env=dict(os.environ), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 120
        while len(server.answered) < 25:
            assert proc.poll() is None and time.monotonic() < deadline, "scoring ended before the kill"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        answered_before = {rid_of[k] for k in server.answered}

        version_dirs = list((home / "cache" / "replies").iterdir())
        assert len(version_dirs) == 1 and list(version_dirs[0].glob("*.wal.jsonl"))  # the log survived the kill
        cache = ParquetReplyCache(home / "cache" / "replies")
        cached = set(cache.load(version_dirs[0].name, list(rid_of.values())))
        assert cached <= answered_before
        assert len(answered_before - cached) <= IN_FLIGHT  # at most the replies in flight at the kill
        assert not (home / "tables" / "student_scores" / "lean_qa.parquet").exists()

        n_before = server.chat_requests
        res = dg.materialize(
            ALL, selection=[STUDENT], partition_key="lean_qa", instance=instance, resources={"mira": mira}
        )
        assert res.success
        rerequested = {rid_of[user_key(b)] for b in server.requests[n_before:]}

    assert not rerequested & cached  # nothing answered and logged before the kill is asked again
    assert rerequested | cached == set(rid_of.values())
    assert server.chat_requests - n_before == len(rerequested)  # each at most once
    df = pl.read_parquet(home / "tables" / "student_scores" / "lean_qa.parquet")
    assert df.height == 67 and df["record_id"].n_unique() == 67
    assert df["status"].to_list() == ["ok"] * 67
    assert df["from_cache"].sum() == len(cached)

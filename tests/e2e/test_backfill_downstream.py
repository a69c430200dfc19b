"""Dagster decides what follows a backfill: on a home where `mira run` already ran, a CLI backfill of six source
partitions, run by a real `dagster-daemon run`, is followed by exactly one run of the corpus assets, which starts
after the last source run ended; no corpus asset runs while a source partition is queued or running. The automation
conditions (defs/conditions.py) are evaluated by the automation sensor in the code server."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from mira_dagster.core.config import PROJECT_ROOT
from tests.e2e.test_commands import BIN, user_env
from tests.e2e.test_fresh_clone import open_instance

pytestmark = pytest.mark.e2e
CORPUS = {a.key for a in d.CORPUS_ASSETS}
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
SIX = ["ace_reason", "lean_qa", "mathcode", "qwq", "reason_dpsk32", "swe_qa"]


def test_a_six_partition_backfill_is_followed_by_one_corpus_run(tmp_path: Path) -> None:
    env = {  # the project folder's .env (user_env) keeps the instance in tmp_path/.mira/dagster
        **user_env(tmp_path),
        "MIRA_CONFIG": str(PROJECT_ROOT / "anchors" / "groups.yaml"),
        "MIRA_HOME": str(tmp_path / ".mira"),
    }
    first = subprocess.run([BIN / "mira", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    home = tmp_path / ".mira" / "dagster"
    with open_instance(home) as inst:
        before = {r.run_id for r in inst.get_runs()}
    # the README's CLI backfill: one refresh_sources run per source partition, queued for the daemon
    cmd = [BIN / "dagster", "job", "backfill", "-m", "mira_dagster.definitions", "-j", "refresh_sources"]
    out = subprocess.run(
        [*cmd, "--partitions", ",".join(SIX), "--noprompt"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr[-3000:]
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 900
        corpus_done_at = None
        while time.monotonic() < deadline:
            with open_instance(home) as inst:
                runs = [r for r in inst.get_runs() if r.run_id not in before]
            sources = [r for r in runs if r.job_name == "refresh_sources"]
            corpus = [r for r in runs if r.asset_selection and CORPUS & set(r.asset_selection)]
            if corpus_done_at is None and corpus and all(r.status in DONE for r in corpus):
                corpus_done_at = time.monotonic()
            # after the corpus run, several more ticks of the automation sensor (5 s) must request nothing
            if corpus_done_at is not None and time.monotonic() - corpus_done_at > 45:
                break
            time.sleep(3)
        assert sorted(r.tags["dagster/partition"] for r in sources) == SIX
        assert {r.status for r in sources} == {dg.DagsterRunStatus.SUCCESS}
        assert len(corpus) == 1, [(r.run_id, r.status, sorted(map(str, r.asset_selection))) for r in corpus]
        (follow,) = corpus
        assert follow.status == dg.DagsterRunStatus.SUCCESS
        assert set(follow.asset_selection) == CORPUS  # the whole block, in one run
        with open_instance(home) as inst:
            ends = [inst.get_run_record_by_id(r.run_id).end_time for r in sources]
            start = inst.get_run_record_by_id(follow.run_id).start_time
            failed = [
                r.run_id for r in inst.get_runs() if r.run_id not in before and r.status != dg.DagsterRunStatus.SUCCESS
            ]
        assert start is not None and start >= max(ends)
        assert failed == []
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()

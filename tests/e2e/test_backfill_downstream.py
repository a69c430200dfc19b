"""Downstream on by default: a backfill of every source partition, run by a real `dagster-daemon run`, is followed
by exactly one run of the corpus assets (AutomationCondition.eager, evaluated by the automation sensor that the
code location turns on)."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import dagster as dg
import pytest

from mira_dagster import definitions as d
from tests.e2e.test_fresh_clone import BIN, open_instance, run
from tests.e2e.test_fresh_clone import checkout as checkout  # noqa: F401 (the fixture)

pytestmark = pytest.mark.e2e
CORPUS = {a.key for a in d.CORPUS_ASSETS}
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


def test_a_backfill_of_every_source_is_followed_by_one_corpus_run(checkout: tuple[Path, dict[str, str]]) -> None:
    repo, env = checkout
    # the README's CLI backfill: one refresh_sources run per source partition, queued for the daemon
    cmd = "dagster job backfill -m mira_dagster.definitions -j refresh_sources --from agent_openhands --to lean_qa"
    out = run(cmd + " --noprompt", repo, env)
    assert out.returncode == 0, out.stderr[-3000:]
    home = repo / ".mira" / "dagster"
    daemon = subprocess.Popen(
        [BIN / "dagster-daemon", "run"],
        cwd=repo,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 480
        corpus_done_at = None
        while time.monotonic() < deadline:
            with open_instance(home) as inst:
                runs = inst.get_runs()
            sources = [r for r in runs if r.job_name == "refresh_sources"]
            corpus = [r for r in runs if r.asset_selection and CORPUS & set(r.asset_selection)]
            if corpus_done_at is None and corpus and all(r.status in DONE for r in corpus):
                corpus_done_at = time.monotonic()
            # after the corpus run, two more ticks of the automation sensor (30 s) must request nothing
            if corpus_done_at is not None and time.monotonic() - corpus_done_at > 70:
                break
            time.sleep(3)
        assert sorted(r.tags["dagster/partition"] for r in sources) == ["agent_openhands", "lean_qa"]
        assert {r.status for r in sources} == {dg.DagsterRunStatus.SUCCESS}
        assert len(corpus) == 1, [(r.run_id, r.status) for r in corpus]
        (follow,) = corpus
        assert follow.status == dg.DagsterRunStatus.SUCCESS
        assert set(follow.asset_selection) >= CORPUS
        # it started after the last source run ended
        with open_instance(home) as inst:
            ends = [inst.get_run_record_by_id(r.run_id).end_time for r in sources]
            start = inst.get_run_record_by_id(follow.run_id).start_time
        assert start is not None and start >= max(ends)
        assert (repo / ".mira" / "tables" / "selected_subset").exists()
    finally:
        os.killpg(daemon.pid, signal.SIGTERM)
        try:
            daemon.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(daemon.pid, signal.SIGKILL)
            daemon.wait()

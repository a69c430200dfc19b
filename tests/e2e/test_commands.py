"""The real commands, as a user runs them: `mira run`, then `dagster asset materialize` from the repo root."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import duckdb
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from mira_dagster.core.config import PROJECT_ROOT, load_config

BIN = Path(sys.executable).parent


def user_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_"))}
    # As in a shell in the repo root with the venv activated (Makefile adds DAGSTER_MODULE_NAME to it);
    # PWD stands in for the repo root's .mira so the run lands in tmp_path (the repo's .env uses ${PWD}).
    env.update(
        PATH=f"{BIN}:{env['PATH']}",
        PWD=str(tmp_path),
        MIRA_HOME=str(tmp_path / ".mira"),
        DAGSTER_MODULE_NAME="mira_dagster.definitions",
    )
    return env


def test_mira_run_then_dagster_materialize(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    run = subprocess.run([BIN / "mira", "run"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    sources = load_config().source_names()
    summary = run.stdout[run.stdout.index("| source") :]
    for source in sources:
        assert f"| {source} " in summary
    assert "| TOTAL " in summary

    db = tmp_path / ".mira" / "mira.duckdb"
    with duckdb.connect(str(db), read_only=True) as con:
        raw = dict(con.execute("SELECT source, count(*) FROM raw_records GROUP BY source").fetchall())
        status = dict(con.execute("SELECT source, count(*) FROM student_scores GROUP BY source").fetchall())
        kept = dict(con.execute("SELECT source, count(*) FROM selected_subset GROUP BY source").fetchall())
    assert sorted(raw) == sources
    assert raw == status
    assert all(kept.get(s, 0) > 0 for s in sources), kept

    mat = subprocess.run(
        [BIN / "dagster", "asset", "materialize", "--select", "selected_subset"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert mat.returncode == 0, mat.stdout + mat.stderr
    assert "RUN_SUCCESS" in mat.stderr + mat.stdout

    # both commands wrote to the one persistent instance that `dagster dev` would show
    with DagsterInstance.from_ref(InstanceRef.from_dir(str(tmp_path / ".mira" / "dagster"))) as inst:
        runs = inst.get_runs()
        assert len(runs) == len(sources) + 2
        ev = inst.get_latest_materialization_event(dg.AssetKey("selected_subset"))
        assert ev is not None and ev.run_id == runs[0].run_id
        parts = inst.get_materialized_partitions(dg.AssetKey("student_scores"))
        assert parts == set(sources)

"""SIGKILL in the middle of `mira run`, at several moments: every store stays readable, and the next run completes
with exactly the results of an uninterrupted one. Covers every asset that writes, not only scoring."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import duckdb
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from mira_dagster.io.store import Store
from tests.e2e.test_commands import BIN, user_env

pytestmark = pytest.mark.e2e

# what a finished run's tables must hold, compared between the interrupted home and an uninterrupted one
TABLES = {
    "raw_records": ["source", "record_id"],
    "quarantine": ["source", "origin_file", "origin_line"],
    "teacher_labels": ["source", "record_id"],
    "student_scores": ["source", "record_id"],
    "dim_reliability": ["source", "slot"],
    "reliability_mask": ["source", "slot"],
    "aggregated_scores": ["source", "record_id"],
    "selected_subset": ["source", "record_id"],
}
VOLATILE = {"from_cache"}  # a resumed run takes some replies from the cache: the only column allowed to differ


def _run(home: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [BIN / "mira", "run"], cwd=cwd, env={**env, "MIRA_HOME": str(home)}, capture_output=True, text=True, timeout=900
    )


def _assert_readable(home: Path) -> None:
    """Whatever a kill left: each Parquet file whole, the catalogue's views answer, the reply cache loads."""
    for path in (home / "tables").rglob("*.parquet"):
        pl.read_parquet(path)  # raises on a torn file
    store = Store(home)
    with store.connect() as con:
        for (view,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall():
            con.execute(f'SELECT count(*) FROM "{view}"').fetchone()
    if store.catalog_path.exists():
        with duckdb.connect(str(store.catalog_path), read_only=True) as con:
            con.execute("SELECT 1").fetchone()
    for version_dir in (home / "cache" / "replies").glob("*"):
        store.replies.count(version_dir.name)


def _table(home: Path, table: str) -> pl.DataFrame:
    df = Store(home).read(table)
    return df.drop([c for c in df.columns if c in VOLATILE]).sort(TABLES[table])


def test_sigkill_at_any_moment_then_rerun_gives_the_uninterrupted_result(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    reference = _run(tmp_path / "reference", env, tmp_path)
    assert reference.returncode == 0, reference.stdout + reference.stderr

    home = tmp_path / "killed"
    kills = 0
    for delay in (2, 5, 9, 14, 20, 27):
        proc = subprocess.Popen(
            [BIN / "mira", "run"],
            cwd=tmp_path,
            env={**env, "MIRA_HOME": str(home)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        time.sleep(delay)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
        _assert_readable(home)
    assert kills >= 3, f"only {kills} runs were still going when killed: the test did not interrupt anything"

    final = _run(home, env, tmp_path)
    assert final.returncode == 0, final.stdout + final.stderr

    def summary(stdout: str) -> str:  # the per-source table (the paths printed after it differ)
        return stdout[stdout.index("| source") : stdout.index("catalogue:")]

    assert summary(final.stdout) == summary(reference.stdout)
    for table in TABLES:
        # floats to 1e-9: DuckDB's parallel sums may differ in the last bits between any two runs
        assert_frame_equal(_table(home, table), _table(tmp_path / "reference", table), rel_tol=1e-9, abs_tol=1e-12)

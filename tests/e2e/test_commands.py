"""The real commands, as a user runs them: `mira run`, then `dagster asset materialize` from the repo root."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import duckdb
from dagster import DagsterInstance
from dagster._core.instance.ref import InstanceRef

from mira_dagster.core.config import PROJECT_ROOT, load_config
from mira_dagster.definitions import ALL_ASSETS

BIN = Path(sys.executable).parent


def user_env(tmp_path: Path) -> dict[str, str]:
    """A shell in a checkout's root: the files the commands read from the working directory are copied to
    tmp_path (the package itself is the installed one), so runs land in tmp_path/.mira as in the repo."""
    for name in (".env", "pyproject.toml", "workspace.yaml", "dagster.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MIRA_", "DAGSTER_"))}
    env.update(PATH=f"{BIN}:{env['PATH']}", PWD=str(tmp_path))
    return env


def test_mira_run_then_dagster_materialize(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    run = subprocess.run([BIN / "mira", "run"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
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

    # exactly what a user types after `source .venv/bin/activate`
    mat = subprocess.run(
        ["bash", "-c", f"source {BIN / 'activate'} && dagster asset materialize --select selected_subset"],
        cwd=tmp_path,
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
        n_groups = len(load_config().groups)
        assert len(runs) == 2 * len(sources) + 2 * n_groups + 2 + 1  # mira run's steps + the materialize
        ev = inst.get_latest_materialization_event(dg.AssetKey("selected_subset"))
        assert ev is not None and ev.run_id == runs[0].run_id
        parts = inst.get_materialized_partitions(dg.AssetKey("student_scores"))
        assert parts == set(sources)
        # dagster.yaml's run queue and pool limits are in force on the instance
        config = inst.get_concurrency_config()
        assert config.run_queue_config.max_concurrent_runs == 4
        assert inst.event_log_storage.get_concurrency_info("student").slot_count == 2


LAUNCH = """
mutation($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on InvalidSubsetError { message }
  }
}
"""


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.load(resp)["data"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_dagster_dev_shows_the_runs_of_mira_run(tmp_path: Path) -> None:
    env = user_env(tmp_path)
    run = subprocess.run(
        [BIN / "mira", "run", "--source", "lean_qa"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    port = free_port()
    dev = subprocess.Popen(
        [BIN / "dagster", "dev", "-p", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "dagster dev did not start in 180 s"
                assert dev.poll() is None, "dagster dev exited"
                time.sleep(2)
        data = graphql(
            port,
            "{ runsOrError { ... on Runs { results { status } } } "
            "assetNodes { assetKey { path } groupName description dependencyKeys { path } } }",
        )
        # one source: raw_records, source_groups, group 2 discovery, scoring, distillation, corpus
        assert [r["status"] for r in data["runsOrError"]["results"]] == ["SUCCESS"] * 6  # before the launch below
        nodes = {n["assetKey"]["path"][0]: n for n in data["assetNodes"]}
        assert set(nodes) == {a.key.path[0] for a in ALL_ASSETS}
        upstream = {k: {p["path"][0] for p in n["dependencyKeys"]} for k, n in nodes.items()}
        # the lineage of stage 1: source_groups -> teacher_judgments -> anchor_rubric -> teacher_labels / student_scores
        assert "source_groups" in upstream["teacher_judgments"]
        assert "teacher_judgments" in upstream["anchor_rubric"]
        assert "anchor_rubric" in upstream["teacher_labels"] and "anchor_rubric" in upstream["student_scores"]

        # launch a partition through the GraphQL API, as the UI does, and wait for the daemon to run it
        repo = graphql(
            port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
        )
        node = repo["repositoriesOrError"]["nodes"][0]
        launched = graphql(
            port,
            LAUNCH,
            {
                "params": {
                    "selector": {
                        "repositoryLocationName": node["location"]["name"],
                        "repositoryName": node["name"],
                        "jobName": "__ASSET_JOB",
                        "assetSelection": [{"path": ["raw_records"]}],
                    },
                    "executionMetadata": {"tags": [{"key": "dagster/partition", "value": "qwq"}]},
                }
            },
        )["launchRun"]
        assert launched["__typename"] == "LaunchRunSuccess", launched
        run_id = launched["run"]["runId"]
        deadline = time.monotonic() + 240
        status = None
        while time.monotonic() < deadline:
            status = graphql(port, f'{{ runOrError(runId: "{run_id}") {{ ... on Run {{ status }} }} }}')["runOrError"][
                "status"
            ]
            if status in ("SUCCESS", "FAILURE", "CANCELED"):
                break
            time.sleep(2)
        assert status == "SUCCESS"
        assert (tmp_path / ".mira" / "tables" / "raw_records" / "qwq.parquet").exists()
        assert all(n["groupName"] and n["description"] for n in nodes.values())
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)

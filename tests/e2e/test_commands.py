"""The real commands, as a user runs them: `mira run`, then `dagster asset materialize` from the repo root."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import duckdb
import pytest
import yaml
from dagster import DagsterInstance

from mira_dagster.core.config import PROJECT_ROOT
from mira_dagster.definitions import ALL_ASSETS
from mira_dagster.io.registry import load_config
from tests.loopback import wait_for_http

BIN = Path(sys.executable).parent
pytestmark = pytest.mark.e2e


def user_env(tmp_path: Path) -> dict[str, str]:
    """A shell in a checkout's root: the files the commands read from the working directory are copied to
    tmp_path (the package itself is the installed one), so runs land in tmp_path/.mira as in the repo."""
    for name in ("pyproject.toml", "workspace.yaml"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    # a project's .env (mira_dagster/project.py) without MIRA_CONFIG, which tests export (the file would win there)
    (tmp_path / ".env").write_text(f"DAGSTER_HOME={tmp_path / '.mira' / 'dagster'}\n")
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
        [
            "bash",
            "-c",
            f"source {BIN / 'activate'} && dagster asset materialize -m mira_dagster.definitions "
            "--select selected_subset",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert mat.returncode == 0, mat.stdout + mat.stderr
    assert "RUN_SUCCESS" in mat.stderr + mat.stdout

    # both commands wrote to the one persistent instance that `dagster dev` would show
    with DagsterInstance.from_config(str(tmp_path / ".mira" / "dagster")) as inst:
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
        assert config.run_queue_config.tag_concurrency_limits == [
            {"key": "mira/scorer_group", "value": {"applyLimitPerUniqueValue": True}, "limit": 2}
        ]
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


def watched_registry(tmp_path: Path) -> Path:
    """The bundled registry with absolute paths, plus a watched folder for group 2 (tmp_path/incoming)."""
    cfg_path = PROJECT_ROOT / "anchors" / "groups.yaml"
    raw = yaml.safe_load(cfg_path.read_text(encoding="utf-8"))
    for group in raw["groups"].values():
        group["anchors"] = str((cfg_path.parent / group["anchors"]).resolve())
    for src in raw["sources"].values():
        src["files"] = [str((cfg_path.parent / f).resolve()) for f in src["files"]]
    (tmp_path / "incoming").mkdir()
    raw["watch"] = {"2": str(tmp_path / "incoming")}
    out = tmp_path / "groups.yaml"
    out.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return out


@dataclass
class DevServer:
    port: int
    home: Path


@pytest.fixture(scope="module")
def dagster_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevServer]:
    """`mira run`, then `dagster dev` on loopback over the same DAGSTER_HOME (.env). Every source is up to date when
    the daemon starts: its automation condition runs only what the tests change."""
    tmp_path = tmp_path_factory.mktemp("dev")
    env = {**user_env(tmp_path), "MIRA_CONFIG": str(watched_registry(tmp_path))}
    run = subprocess.run(
        [BIN / "mira", "run"],
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
        wait_for_http(f"http://127.0.0.1:{port}/server_info", dev, 180, "dagster dev")
        yield DevServer(port, tmp_path)
    finally:
        os.killpg(dev.pid, signal.SIGTERM)
        try:
            dev.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)


def test_dagster_dev_shows_the_runs_of_mira_run(dagster_dev: DevServer) -> None:
    port, tmp_path = dagster_dev.port, dagster_dev.home
    data = graphql(
        port,
        "{ runsOrError { ... on Runs { results { status } } } "
        "assetNodes { assetKey { path } groupName description dependencyKeys { path } } }",
    )
    # every source: raw_records, source_groups, each group's discovery, scoring, distillation, corpus
    statuses = [r["status"] for r in data["runsOrError"]["results"]]
    assert len(statuses) >= 6 and set(statuses) == {"SUCCESS"}  # before the launch below
    nodes = {n["assetKey"]["path"][0]: n for n in data["assetNodes"]}
    assert set(nodes) == {a.key.path[0] for a in ALL_ASSETS}
    upstream = {k: {p["path"][0] for p in n["dependencyKeys"]} for k, n in nodes.items()}
    # the lineage of stage 1: source_groups -> teacher_judgments -> anchor_rubric -> teacher_labels / student_scores
    assert "source_groups" in upstream["teacher_judgments"]
    assert "teacher_judgments" in upstream["anchor_rubric"]
    assert "anchor_rubric" in upstream["teacher_labels"] and "anchor_rubric" in upstream["student_scores"]

    # launch a partition through the GraphQL API, as the UI does, and wait for the daemon to run it
    repo = graphql(port, "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }")
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


CHROMIUM = Path("/usr/bin/chromium")  # Debian's package; `make test` installs it
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
GROUPS = ["ingest", "discovery", "teacher", "student", "reliability", "selection"]


@pytest.mark.browser
def test_asset_graph_in_headless_chromium(dagster_dev: DevServer, tmp_path: Path) -> None:
    """The asset graph as a user sees it: the global lineage lists every group, a group's page draws its assets, and
    reliability_mask's page shows the reliability heatmap in place (a picture in its metadata row). Screenshots
    land in tmp_path (and in $MIRA_SCREENSHOT_DIR when set: that is how docs/ui-*.png are made)."""
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium package")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    base = f"http://127.0.0.1:{dagster_dev.port}"
    shots = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 1250})
        page.goto(f"{base}/asset-groups", wait_until="networkidle")
        with contextlib.suppress(PlaywrightTimeout):  # a fresh instance greets the first visitor with a dialog
            page.get_by_role("button", name="Skip").click(timeout=8000)
        for group in GROUPS:
            page.get_by_text(group, exact=True).first.wait_for(timeout=30000)
        shots["lineage"] = tmp_path / "ui-lineage.png"
        page.screenshot(path=shots["lineage"])

        page.goto(f"{base}/locations/mira_dagster.definitions/asset-groups/selection", wait_until="networkidle")
        for asset in ("aggregated_scores", "selected_random", "selected_subset", "selection_report"):
            page.get_by_text(asset, exact=True).first.wait_for(timeout=30000)
        page.wait_for_timeout(1000)  # let the graph finish laying out before the picture
        shots["selection"] = tmp_path / "ui-selection.png"
        page.screenshot(path=shots["selection"])

        page.goto(f"{base}/assets/reliability_mask", wait_until="networkidle")
        row = page.locator("tr", has=page.get_by_text("heatmap", exact=True)).first
        row.wait_for(timeout=30000)
        picture = row.locator("img").first
        picture.wait_for(timeout=30000)  # in the row itself, not behind a "[Show Markdown]" link
        width, height = picture.evaluate("img => [img.naturalWidth, img.naturalHeight]")
        assert width > 250 and height > 20  # the SVG decoded: 15 slot columns of 18 px, one row per source
        assert re.search(r"Rows: \d+ .*lean_qa.*\. Columns: A1–A15\.", row.inner_text()), row.inner_text()
        shots["heatmap"] = tmp_path / "ui-reliability-heatmap.png"
        row.screenshot(path=shots["heatmap"])
        browser.close()
    for name, path in shots.items():
        png = path.read_bytes()
        # a drawn page, not a blank one (the heatmap's table row is a smaller picture)
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > (5_000 if name == "heatmap" else 20_000)
    if os.environ.get("MIRA_SCREENSHOT_DIR"):
        for path in shots.values():
            shutil.copy(path, Path(os.environ["MIRA_SCREENSHOT_DIR"]) / path.name)


def test_a_new_file_in_a_watched_folder_gets_a_partition_and_a_run(dagster_dev: DevServer) -> None:
    """The daemon of `dagster dev`: drop a file, the `new_sources` sensor gives it a partition, and the automation
    condition (never materialised: stale) runs it through ingest and scoring."""
    sample = PROJECT_ROOT / "data" / "sample" / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"
    shutil.copy(sample, dagster_dev.home / "incoming" / "fresh_proofs.jsonl")
    query = (
        '{ runsOrError(filter: {tags: [{key: "dagster/partition", value: "fresh_proofs"}]}) '
        "{ ... on Runs { results { status tags { key value } } } } }"
    )
    tables = dagster_dev.home / ".mira" / "tables"
    deadline = time.monotonic() + 420
    runs: list = []
    while time.monotonic() < deadline:
        runs = graphql(dagster_dev.port, query)["runsOrError"]["results"]
        scored = (tables / "student_scores" / "fresh_proofs.parquet").exists()
        if scored and runs and all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in runs):
            break
        time.sleep(3)
    assert runs and {r["status"] for r in runs} == {"SUCCESS"}, runs
    for table in ("raw_records", "teacher_labels", "student_scores"):
        assert (dagster_dev.home / ".mira" / "tables" / table / "fresh_proofs.parquet").exists(), table


BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""


def test_a_backfill_of_several_partitions_runs_one_partition_per_run(dagster_dev: DevServer) -> None:
    """What the UI's "Materialize" over a set of partitions sends: an asset backfill, run by the daemon."""
    partitions = ["ace_reason", "mathcode", "swe_qa"]
    launched = graphql(
        dagster_dev.port,
        BACKFILL,
        {"params": {"partitionNames": partitions, "assetSelection": [{"path": ["raw_records"]}], "title": "e2e"}},
    )["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    query = (
        f'{{ partitionBackfillOrError(backfillId: "{launched["backfillId"]}") '
        "{ ... on PartitionBackfill { status runs(limit: 20) { status tags { key value } } } } }"
    )
    deadline = time.monotonic() + 300
    backfill: dict = {}
    while time.monotonic() < deadline:
        backfill = graphql(dagster_dev.port, query)["partitionBackfillOrError"]
        if backfill["status"] not in ("REQUESTED", "CANCELING", "FAILING"):
            break
        time.sleep(3)
    assert backfill["status"] in ("COMPLETED", "COMPLETED_SUCCESS"), backfill
    runs = backfill["runs"]
    # BackfillPolicy.multi_run(1): one run per partition, all successful
    assert len(runs) == len(partitions) and {r["status"] for r in runs} == {"SUCCESS"}
    # each run names its one partition as a range of one (dagster/asset_partition_range_start = _end)
    tags = [{t["key"]: t["value"] for t in r["tags"]} for r in runs]
    ranges = {(t["dagster/asset_partition_range_start"], t["dagster/asset_partition_range_end"]) for t in tags}
    assert ranges == {(p, p) for p in partitions}
    for source in partitions:
        assert (dagster_dev.home / ".mira" / "tables" / "raw_records" / f"{source}.parquet").exists()

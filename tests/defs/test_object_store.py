"""The store on S3-compatible object storage: moto's server on loopback, the pipeline's assets writing their
partitions, replies and export there, DuckDB reading them from there (through fsspec), nothing under the local
tables folder. tests/defs/test_shared_store.py: two homes sharing one store."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.store import object_store
from tests.loopback import wait_for_http
from tests.pipeline import run_pipeline

pytestmark = pytest.mark.slow  # the pipeline against a moto S3 server: about 40 s

SOURCES = ["lean_qa", "agent_openhands"]


@contextmanager
def moto_s3(bucket: str = "mira-test") -> Iterator[str]:
    """A moto S3 server on a free loopback port with `bucket`: its endpoint URL (AWS_* test credentials are the
    caller's to set)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [Path(sys.executable).parent / "moto_server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/", server, 60, "moto_server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(timeout=10)


def s3_environment(monkeypatch: pytest.MonkeyPatch, endpoint: str, url: str, var: str = "MIRA_STORE_URL") -> None:
    """The environment pointing at the moto server: test credentials, the endpoint, the store URL (in `var`)."""
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "MIRA_S3_ENDPOINT_URL": endpoint,
        var: url,
    }.items():
        monkeypatch.setenv(key, value)
    object_store(url, endpoint).mkdir(url.removeprefix("s3://").split("/", 1)[0])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto S3 server on a free loopback port, a bucket, and the environment pointing at it (through the alias
    MIRA_TABLES_URL: the whole store goes there)."""
    with moto_s3() as endpoint:
        s3_environment(monkeypatch, endpoint, "s3://mira-test/run-1", "MIRA_TABLES_URL")
        yield "s3://mira-test/run-1"


def test_pipeline_tables_on_object_storage(s3: str, small_config: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(small_config), home=str(home))
    instance = in_process_instance()
    run_pipeline(mira, instance, SOURCES)

    fs = mira.store().fs  # the settings' store: MIRA_TABLES_URL and MIRA_S3_ENDPOINT_URL from the environment
    stored = set(fs.find("mira-test/run-1/tables"))
    for table in ("raw_records", "teacher_labels", "student_scores"):
        for source in SOURCES:
            assert f"mira-test/run-1/tables/{table}/{source}.parquet" in stored
    for table in ("dim_reliability", "reliability_mask", "aggregated_scores", "selected_subset"):
        assert f"mira-test/run-1/tables/{table}/all.parquet" in stored
    assert not (home / "tables").exists()  # nothing went to the local disk

    # DuckDB reads the partitions from the object store: counts reconcile with the stored partitions
    store = mira.store()
    summary = store.query("run_summary")
    assert sorted(summary["source"].to_list()) == sorted(SOURCES)
    for row in summary.iter_rows(named=True):
        raw = store.read("raw_records", row["source"])
        assert row["records_in"] == raw.height == row["records_with_status"]
        assert row["records_kept"] > 0
    kept = store.read("selected_subset")
    assert kept.height == int(summary["records_kept"].sum())
    # the export is there too: a manifest PUT last, pointing at its generation's shards
    manifest = json.loads(fs.cat_file("mira-test/run-1/exports/selected_subset/manifest.json"))
    assert manifest["records"] == kept.height
    assert all(fs.exists(f"mira-test/run-1/exports/selected_subset/{f['file']}") for f in manifest["files"])
    assert not (home / "exports" / "selected_subset").exists()
    assert fs.find("mira-test/run-1/replies")  # and the reply cache

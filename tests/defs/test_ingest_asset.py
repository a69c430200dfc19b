"""raw_records through Dagster: one bad source fails its own partition with a message naming the cause, the others
materialise, and a failed read leaves the last good partition in place."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import dagster as dg
import polars as pl
import pytest
import yaml

from mira_dagster.definitions import ALL_ASSETS, INGEST_ASSETS
from mira_dagster.defs.partitions import register_sources
from mira_dagster.defs.resources import MiraResource
from tests.conftest import ANCHORS

GOOD = [{"question": f"What is {i} squared?", "thinking": "multiply", "answer": i * i} for i in range(1, 21)]


def _registry(tmp_path: Path, sources: dict[str, dict]) -> Path:
    shutil.copy(ANCHORS / "group_2_dim_anchors.jsonl", tmp_path / "anchors.jsonl")
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "groups": {"2": {"family": "qa_with_think", "student_model": "m", "anchors": "anchors.jsonl"}},
                "sources": {name: {"group": "2", "format": "qa_with_think", **s} for name, s in sources.items()},
            }
        )
    )
    return cfg


def _materialize(mira: MiraResource, instance: dg.DagsterInstance, source: str) -> dg.ExecuteInProcessResult:
    return dg.materialize(
        ALL_ASSETS,
        selection=INGEST_ASSETS,
        partition_key=source,
        instance=instance,
        resources={"mira": mira},
        raise_on_error=False,
    )


def _check(result: dg.ExecuteInProcessResult, name: str) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == name)


def test_each_source_succeeds_or_fails_alone(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "good.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in GOOD).encode()))
    (data / "noisy.jsonl").write_text("".join(json.dumps(r) + "\n" for r in GOOD[:5]) + "{broken\n" * 5)
    (data / "alien.jsonl").write_text(json.dumps({"foo": 1}) + "\n")
    cfg = _registry(
        tmp_path,
        {
            "good": {"files": ["data/*.jsonl.gz"]},
            "noisy": {"files": ["data/noisy.jsonl"]},
            "alien": {"files": ["data/alien.jsonl"]},
            "missing": {"files": ["data/missing.jsonl"]},
        },
    )
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, ["good", "noisy", "alien", "missing"])

    good = _materialize(mira, instance, "good")
    assert good.success
    assert _check(good, "records_usable").passed and _check(good, "lines_reconcile").passed

    noisy = _materialize(mira, instance, "noisy")  # 5 of 10 quarantined: over max_quarantine_share
    assert not noisy.success
    check = _check(noisy, "records_usable")
    assert not check.passed and "5 of 10 units quarantined (50%" in check.description
    assert "invalid JSON" in check.description and "mira inspect" in check.description

    alien = _materialize(mira, instance, "alien")
    assert not alien.success
    assert "0 records from 1 units read; most common reason: no layout" in _check(alien, "records_usable").description

    missing = _materialize(mira, instance, "missing")
    assert not missing.success
    (failure,) = missing.get_step_failure_events()
    assert "file not found" in str(failure.step_failure_data.error) and "missing.jsonl" in str(
        failure.step_failure_data.error
    )

    # what the summary will read: every unit of the sources that were read is a record or a quarantine row
    home = tmp_path / "home" / "tables"
    assert pl.read_parquet(home / "raw_records" / "good.parquet").height == 20
    assert pl.read_parquet(home / "quarantine" / "noisy.parquet")["kind"].to_list() == ["invalid JSON"] * 5


def _ingested_once(tmp_path: Path, name: str, content: bytes) -> tuple[Path, MiraResource, dg.DagsterInstance, Path]:
    """A one-source registry whose file `name` held `content`, ingested once: (the file, the resource, the
    instance, the stored raw_records partition)."""
    data = tmp_path / "data"
    data.mkdir()
    path = data / name
    path.write_bytes(content)
    cfg = _registry(tmp_path, {"a": {"files": [f"data/{name}"]}})
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, ["a"])
    assert _materialize(mira, instance, "a").success
    return path, mira, instance, tmp_path / "home" / "tables" / "raw_records" / "a.parquet"


def test_a_failed_read_keeps_the_last_good_partition(tmp_path: Path) -> None:
    good = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    path, mira, instance, stored = _ingested_once(tmp_path, "a.jsonl.gz", gzip.compress(good))
    before = stored.read_bytes()

    path.write_bytes(path.read_bytes()[:-30])  # the producer's upload was cut short
    result = _materialize(mira, instance, "a")
    assert not result.success
    assert "cannot read" in str(result.get_step_failure_events()[0].step_failure_data.error)
    assert stored.read_bytes() == before
    assert not list(stored.parent.glob(".*.tmp"))  # no staging file left behind


def test_a_failed_check_keeps_the_last_good_records_and_writes_why(tmp_path: Path) -> None:
    good = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    path, mira, instance, stored = _ingested_once(tmp_path, "a.jsonl", good)
    before = stored.read_bytes()

    path.write_text("{garbage\n" * 30)  # the producer overwrote it with something else
    result = _materialize(mira, instance, "a")
    assert not result.success and not _check(result, "records_usable").passed
    assert stored.read_bytes() == before  # the last good records stay
    quarantine = pl.read_parquet(tmp_path / "home" / "tables" / "quarantine" / "a.parquet")
    assert quarantine.height == 30 and set(quarantine["kind"]) == {"invalid JSON"}  # and why is on record


def test_a_partition_key_the_registry_does_not_know_fails_in_one_line(tmp_path: Path) -> None:
    """A key added to the instance directly (the UI can) is named with the registry, never a KeyError traceback."""
    data = tmp_path / "good.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in GOOD) + "\n")
    cfg = _registry(tmp_path, {"good": {"files": [str(data)]}})
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, ["good", "ghost"])
    for selection in (INGEST_ASSETS, ["teacher_labels"], ["student_scores"]):
        result = dg.materialize(
            ALL_ASSETS,
            selection=selection,
            partition_key="ghost",
            instance=instance,
            resources={"mira": mira},
            raise_on_error=False,
        )
        (failure,) = result.get_step_failure_events()
        error = failure.step_failure_data.error
        assert error is not None and error.cls_name == "Failure"
        assert error.message.strip().splitlines()[-1].endswith(f"unknown source 'ghost': not in {cfg}")


FIXTURES = Path(__file__).parents[1] / "fixtures" / "layouts"


def test_preference_both_reconciles_and_a_half_match_is_named_in_the_metadata(tmp_path: Path) -> None:
    """Two records per pair (units = records + quarantined - second sides); keys a layout left unused, with a
    mapping that reads them, in raw_records' metadata; the original kept beside the text."""
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_bytes((FIXTURES / "preference_pairs.jsonl").read_bytes() + (FIXTURES / "hh_rlhf.jsonl").read_bytes())
    cfg = _registry(
        tmp_path,
        {
            "pairs": {"files": [str(pairs)], "preference": "both"},
            "svamp": {"files": [str(FIXTURES / "word_problems.jsonl")]},
        },
    )
    mira = MiraResource(config_path=str(cfg), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, ["pairs", "svamp"])

    result = _materialize(mira, instance, "pairs")
    assert result.success and _check(result, "lines_reconcile").passed
    records = pl.read_parquet(tmp_path / "home" / "tables" / "raw_records" / "pairs.parquet")
    assert records.height == 12 and records["origin_line"].n_unique() == 6
    assert set(records["layout"]) == {
        f"{p}:{s}" for p in ("preference", "preference_hh") for s in ("chosen", "rejected")
    }
    lines = pairs.read_text(encoding="utf-8").splitlines()
    assert [json.loads(o) for o in records["original"]] == [json.loads(lines[i - 1]) for i in records["origin_line"]]
    meta = result.asset_materializations_for_node("raw_records")[0].metadata
    assert meta["extra_rows"].value == 6 and meta["dagster/row_count"].value == 12

    result = _materialize(mira, instance, "svamp")
    assert result.success
    meta = result.asset_materializations_for_node("raw_records")[0].metadata
    assert meta["unused_text_keys"].value == {"Body": 2}
    assert meta["suggested_fields"].value["question"] == 'join(`"\\n\\n"`, [Body, Question] | [?@])'


def test_a_table_sources_column_types_are_stored_for_the_export(tmp_path: Path) -> None:
    """raw_records keeps each Parquet file's schema beside its records (table_schemas): the export's only way back
    to the input's column types, since a row's original is JSON."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mira_dagster.io.export import stored_schemas

    rows = pa.table(
        {"question": [r["question"] for r in GOOD], "answer": pa.array([r["answer"] for r in GOOD], pa.uint16())}
    )
    buf = pa.BufferOutputStream()
    pq.write_table(rows, buf)
    _, mira, _, _ = _ingested_once(tmp_path, "t.parquet", buf.getvalue().to_pybytes())
    assert stored_schemas(mira.store()) == {("a", "t.parquet"): rows.schema.remove_metadata()}


def test_a_file_written_to_while_it_is_read_fails_and_the_next_run_reads_it_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A producer appends a line while the ingest reads, after the reader's own count of the file's units (so the
    lines_reconcile check cannot see it): the partition fails naming the file and nothing is published. Before, the
    file's fingerprint and state were taken after the read: the source was up to date for every later run, and the
    line was never read (an append-only read would resume after it)."""
    from mira_dagster.defs import ingest as ingest_defs

    good = "".join(json.dumps(r) + "\n" for r in GOOD).encode()
    path, mira, instance, stored = _ingested_once(tmp_path, "a.jsonl", good)
    before = stored.read_bytes()
    path.write_bytes(good + (json.dumps({"question": "q21", "thinking": "t", "answer": "a"}) + "\n").encode())
    count_units = ingest_defs.count_units

    def counting_then_appended(*args):  # type: ignore[no-untyped-def]
        n = count_units(*args)
        with path.open("a") as fh:
            fh.write(json.dumps({"question": "written meanwhile", "thinking": "t", "answer": "b"}) + "\n")
        return n

    monkeypatch.setattr(ingest_defs, "count_units", counting_then_appended)
    result = _materialize(mira, instance, "a")
    assert not result.success
    error = str(result.get_step_failure_events()[0].step_failure_data.error)
    assert f"{path} was replaced or changed while being read" in error, error
    assert stored.read_bytes() == before  # nothing published
    monkeypatch.setattr(ingest_defs, "count_units", count_units)
    assert _materialize(mira, instance, "a").success
    questions = pl.read_parquet(stored)["question"].to_list()
    assert len(questions) == 22 and "written meanwhile" in questions

"""The export gives the records back as their producers wrote them (issue 21 item 1): with every record kept,
export(ingest(files)) equals the input values as JSON values, for every container and layout we read."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mira_dagster.core.export import PREFIX, SELECTION_KEYS, without_selection
from mira_dagster.core.layouts import LAYOUTS
from mira_dagster.io import export as export_module
from mira_dagster.io.export import export_kept
from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.store import Store
from tests.conftest import SAMPLE

FIXTURES = Path(__file__).parents[1] / "fixtures" / "layouts"
HELDOUT = Path(__file__).parents[1] / "fixtures" / "heldout"


def _parquet(tmp: Path) -> Path:
    """A table as dataset hubs write them (GSM8K's question/answer columns, plus the column types a Parquet
    file holds: integers, floats, booleans, nulls, lists of structs (chat messages), structs)."""
    path = tmp / "gsm8k_style.parquet"
    rows = [
        {
            "question": f"Natalia sold clips to {n} of her friends. How many clips did she sell?",
            "answer": f"She sold {n} clips.\n#### {n}",
            "idx": n,
            "difficulty": n / 7,
            "verified": n % 2 == 0,
            "note": None if n % 3 else "checked",
            "meta": {"split": "train", "tags": ["arithmetic", "word problem"]},
        }
        for n in range(1, 9)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _chat_parquet(tmp: Path) -> Path:
    """A chat dataset as Parquet (HuggingFaceH4/ultrachat_200k: prompt, prompt_id, messages)."""
    path = tmp / "ultrachat_style.parquet"
    rows = [
        {
            "prompt": f"Plan a {d}-day trip to Lisbon.",
            "prompt_id": f"id{d}",
            "messages": [
                {"role": "user", "content": f"Plan a {d}-day trip to Lisbon."},
                {"role": "assistant", "content": f"Day 1: Alfama. Day {d}: Belem."},
                {"role": "user", "content": "Add a food tip."},
                {"role": "assistant", "content": f"Try pasteis de nata, tip {d}."},
            ],
        }
        for d in range(2, 6)
    ]
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def _values(path: Path) -> list[Any]:
    if path.suffix == ".parquet":
        return pq.read_table(path).to_pylist()
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json" and text.lstrip().startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _cases(tmp: Path) -> list[tuple[Path, str, str]]:
    """(file, family, preference) for every container (JSON Lines, JSON array, Parquet) and every layout."""
    qa = "qa_with_think"
    return [
        *((p, qa, "chosen") for p in sorted(FIXTURES.glob("*.jsonl"))),
        *((p, qa, "both") for p in (FIXTURES / "preference_pairs.jsonl", FIXTURES / "hh_rlhf.jsonl")),
        (FIXTURES / "alpaca_data.json", qa, "chosen"),
        (HELDOUT / "nectar.jsonl", qa, "both"),  # ranked answers: the best and the worst, two records
        (FIXTURES / "sharegpt.json", qa, "chosen"),
        (FIXTURES / "sharegpt.json", "agent", "chosen"),
        (FIXTURES / "responses_rollouts.jsonl", "agent", "chosen"),
        (FIXTURES / "chat_lists.jsonl", "agent", "chosen"),
        (FIXTURES / "chat_multiturn.jsonl", "agent", "chosen"),
        *((p, qa, "chosen") for p in sorted(SAMPLE.glob("[lm]*.jsonl"))),
        *((p, "agent", "chosen") for p in sorted(SAMPLE.glob("swe_*.jsonl"))),
        (_parquet(tmp), "qa", "chosen"),
        (_chat_parquet(tmp), "qa", "chosen"),
        (_chat_parquet(tmp), "agent", "chosen"),
    ]


def _ingest(store: Store, cases: list[tuple[Path, str, str]]) -> dict[str, tuple[Path, str]]:
    """Each case as its own source; every unit must become a record. Returns source -> (file, family)."""
    sources = {}
    for i, (path, family, preference) in enumerate(cases):
        source = f"s{i:02d}"
        ingest = SourceIngest(source, "g", family, [path], preference=preference)  # type: ignore[arg-type]
        frames = list(ingest.batches())
        records = pl.concat([r for r, _ in frames])
        quarantined = pl.concat([q for _, q in frames])
        assert quarantined.is_empty(), (path.name, family, quarantined.to_dicts()[:2])
        store.write("raw_records", records, source)
        sources[source] = (path, family)
    return sources


def _select_everything(store: Store) -> None:
    """retention 1.0: every record kept, with a score."""
    raw = store.query_sql("SELECT source, record_id FROM raw_records")
    rng = random.Random(0)
    store.write(
        "selected_subset",
        raw.with_columns(
            pl.Series("score", [rng.random() for _ in range(raw.height)]), pl.lit("mask-v1").alias("mask_version")
        ),
    )


def _exported(folder: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for f in sorted(folder.iterdir()):
        if f.suffix == ".jsonl":
            rows += [json.loads(line) for line in f.read_text(encoding="utf-8").splitlines()]
        elif f.suffix == ".parquet":
            rows += pq.read_table(f).to_pylist()
    return rows


def test_export_gives_back_every_input_value_for_every_container_and_layout(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    sources = _ingest(store, _cases(tmp_path))
    _select_everything(store)
    manifest = export_kept(store, {"variant": "test"}, shard_records=50)
    assert manifest["form"] == "original"
    exported = _exported(store.exports_dir / "selected_subset")
    assert len(exported) == manifest["records"] == store.query_sql("SELECT count(*) FROM raw_records").item()

    got: dict[tuple[str, int], list[Any]] = {}
    for row in exported:
        assert {PREFIX + k for k in SELECTION_KEYS} <= set(row)
        assert row[PREFIX + "mask_version"] == "mask-v1" and isinstance(row[PREFIX + "score"], float)
        got.setdefault((row[PREFIX + "source"], row[PREFIX + "origin_line"]), []).append(without_selection(row))
    for source, (path, _) in sources.items():
        for line, value in enumerate(_values(path), 1):
            assert got.pop((source, line)) in ([value], [value, value]), (path.name, line)
    assert got == {}

    # the files: JSON inputs as JSON Lines, tables as Parquet with the input's columns first
    formats = {f["source"]: f["format"] for f in manifest["files"]}
    parquet = next(s for s, (p, _) in sources.items() if p.name == "gsm8k_style.parquet")
    assert formats[parquet] == "parquet" and formats["s00"] == "jsonl"
    shard = next(f["file"] for f in manifest["files"] if f["source"] == parquet)
    names = pq.read_schema(store.exports_dir / "selected_subset" / shard).names
    assert names[:7] == ["question", "answer", "idx", "difficulty", "verified", "note", "meta"]

    # every layout of core/layouts.py was read (and given back)
    seen = store.query_sql("SELECT DISTINCT split_part(layout, ':', 1) AS layout, format FROM raw_records")
    for family in ("qa_with_think", "agent"):
        names_seen = set(seen.filter(pl.col("format") == family)["layout"])
        if family == "qa_with_think":
            names_seen |= set(seen.filter(pl.col("format") == "qa")["layout"])
        assert {name for name, _ in LAYOUTS[family]} <= names_seen, family


def test_a_jsonl_line_goes_out_with_its_own_text(tmp_path: Path) -> None:
    """No re-serialisation: key order, spacing, escapes and number spellings stay as written."""
    path = tmp_path / "odd.jsonl"
    line = '{"question":"caf\\u00e9?",  "answer": 1.50, "big": 123456789012345678901234567890, "z": [ ]}'
    path.write_text(line + "\n", encoding="utf-8")
    store = Store(tmp_path / "home")
    _ingest(store, [(path, "qa", "chosen")])
    _select_everything(store)
    export_kept(store, {})
    text = next((store.exports_dir / "selected_subset").glob("*.jsonl")).read_text(encoding="utf-8")
    assert text.startswith(line[:-1] + ", " + f'"{PREFIX}source": "s00"')
    assert without_selection(json.loads(text)) == json.loads(line)


def test_keys_already_named_like_the_selection_columns_are_never_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "clash.jsonl"
    rows = [
        {"question": "q1", "answer": "a1", "mira_source": "theirs", "mira_score": 3},
        {"question": "q2", "answer": "a2", "mira__x": 1},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    store = Store(tmp_path / "home")
    _ingest(store, [(path, "qa", "chosen")])
    _select_everything(store)
    export_kept(store, {})
    out = _exported(store.exports_dir / "selected_subset")
    by_q = {r["question"]: r for r in out}
    assert by_q["q1"]["mira_source"] == "theirs" and by_q["q1"]["mira__source"] == "s00"
    assert by_q["q2"]["mira___source"] == "s00"
    assert sorted((without_selection(r) for r in out), key=str) == sorted(rows, key=str)


def test_the_normalised_form_stays_available(tmp_path: Path) -> None:
    store = Store(tmp_path / "home")
    _ingest(store, [(FIXTURES / "chat_multiturn.jsonl", "qa", "chosen")])
    _select_everything(store)
    manifest = export_kept(store, {}, form="normalised")
    assert manifest["form"] == "normalised"
    table = pl.read_parquet(store.exports_dir / "selected_subset" / manifest["files"][0]["file"])
    assert "original" not in table.columns and {"question", "answer", "score", "mask_version"} <= set(table.columns)
    assert table.height == 4


def test_records_without_their_original_stop_the_export_with_the_reason(tmp_path: Path) -> None:
    """A partition written before originals were kept: the export refuses, naming the source, and writes nothing."""
    store = Store(tmp_path / "home")
    _ingest(store, [(FIXTURES / "qa_fields.jsonl", "qa", "chosen")])
    old = store.read("raw_records", "s00").with_columns(pl.lit(None, pl.String).alias("original"))
    store.write("raw_records", old, "s00")
    _select_everything(store)
    with pytest.raises(ValueError, match="source 's00' has records read before originals were kept"):
        export_kept(store, {})
    assert not (store.exports_dir / "selected_subset").exists()
    assert export_kept(store, {}, form="normalised")["records"] == old.height


def test_sub_buckets_change_no_byte_and_table_rows_keep_their_row_groups(tmp_path: Path, monkeypatch) -> None:
    """The export reads each bucket back in sub-buckets (io/export._SUB_ROWS places at a time, for memory): the
    files are the same whatever their size, and a table source's run within a batch is still one row group."""
    table = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": f"q{n}?", "answer": f"a{n}.", "n": n} for n in range(60)]), table)
    store = Store(tmp_path / "home")
    _ingest(store, [(table, "qa", "chosen"), (FIXTURES / "chat_multiturn.jsonl", "qa", "chosen")])
    _select_everything(store)
    out = store.exports_dir / "selected_subset"
    files: dict[int, dict[str, bytes]] = {}
    for sub in (10_000, 7, 1):
        monkeypatch.setattr(export_module, "_SUB_ROWS", sub)
        manifest = export_kept(store, {}, shard_records=50)
        files[sub] = {f.name: f.read_bytes() for f in sorted(out.iterdir())}
        groups = [pq.ParquetFile(out / f["file"]).metadata.num_row_groups for f in manifest["files"][:2]]
        assert [(f["format"], f["records"]) for f in manifest["files"]] == [
            ("parquet", 50),
            ("parquet", 10),
            ("jsonl", 4),
        ]
        assert groups[:2] == [1, 1]  # one write per run of a batch: 50 rows, then 10, not pieces of `sub`
    assert files[7] == files[10_000] == files[1]
    # past _MAX_OPEN buckets the rows take two passes, each opening at most _MAX_OPEN files: the same bytes
    spread, opened = export_module._spread, []

    def counting(batches, folder, size):
        numbers = spread(batches, folder, size)
        opened.append(len(numbers))
        return numbers

    monkeypatch.setattr(export_module, "_spread", counting)
    monkeypatch.setattr(export_module, "_SUB_ROWS", 7)
    monkeypatch.setattr(export_module, "_MAX_OPEN", 1)
    export_kept(store, {}, shard_records=50)
    assert {f.name: f.read_bytes() for f in sorted(out.iterdir())} == files[7]
    assert opened[0] == 1 and len(opened) > 1 + 2  # one span file, then its two buckets, then their sub-buckets


@pytest.mark.parametrize(("store_limit", "expected"), [("4GB", "256.0 MiB"), ("100MB", "95.3 MiB")])
def test_the_scan_lowers_duckdbs_memory_limit_and_never_raises_it(store_limit: str, expected: str) -> None:
    con = duckdb.connect(config={"memory_limit": store_limit})
    export_module._lower_memory_limit(con, 256)
    assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == expected


@pytest.mark.parametrize("archived", [False, True])
def test_table_rows_go_out_with_their_files_column_types(tmp_path: Path, archived: bool) -> None:
    """A Parquet file's dates, timestamps, decimals, unsigned and dictionary columns come back with their types (the
    originals are JSON, which has none of them: they went out as text or int64, and a uint64 over 2**63 failed the
    whole export); a type that cannot be given back is named in the manifest. The same for a Parquet member of a
    tar.gz (its types were not kept before)."""
    import datetime as dt
    from decimal import Decimal

    from mira_dagster.io.export import TABLE_SCHEMAS, schemas_frame

    path = tmp_path / "typed.parquet"
    table = pa.table(
        {
            "question": pa.array(["What is 1 + 1?", "What is 2 + 2?"]).dictionary_encode(),
            "answer": pa.array(["2", "4"], type=pa.large_string()),
            "day": pa.array([dt.date(2024, 1, 31), None]),
            "at": pa.array([dt.datetime(2024, 1, 31, 12, 30, 5, 123456), None], type=pa.timestamp("us", tz="UTC")),
            "price": pa.array([Decimal("1.10"), Decimal("-2.50")], type=pa.decimal128(6, 2)),
            "count": pa.array([2**64 - 1, 7], type=pa.uint64()),
            "ratio": pa.array([0.5, None], type=pa.float32()),
            "tags": pa.array([["a", "b"], []], type=pa.list_(pa.string())),
            "clock": pa.array([dt.time(12, 30), None], type=pa.time64("us")),
        }
    )
    pq.write_table(table, path)
    if archived:
        import tarfile

        with tarfile.open(tmp_path / "typed.tar.gz", "w:gz") as tar:
            tar.add(path, arcname="part-0.parquet")
        path.unlink()
        path = tmp_path / "typed.tar.gz"
    store = Store(tmp_path / "home")
    ingest = SourceIngest("typed", "g", "qa", [path], scratch=tmp_path / "scratch")
    frames = list(ingest.batches())
    store.write("raw_records", pl.concat([r for r, _ in frames]), "typed")
    store.write(TABLE_SCHEMAS, schemas_frame(ingest.table_schemas), "typed")  # as raw_records does
    _select_everything(store)
    manifest = export_kept(store, {"variant": "test"})
    [shard] = [f["file"] for f in manifest["files"]]
    out = pq.read_table(store.exports_dir / "selected_subset" / shard)
    for name in table.column_names:
        if name != "clock":
            assert out.schema.field(name).type == table.schema.field(name).type, name

    def rows(t: pa.Table) -> list[dict]:
        return sorted(t.select(table.column_names[:-1]).to_pylist(), key=lambda r: r["answer"])

    assert rows(out) == rows(table)
    # a time of day has no cast back from its JSON text: it goes out as that text, and the manifest says so
    assert out["clock"].to_pylist() == ["12:30:00", None]
    assert manifest["columns_not_retyped"] == {"typed": ["clock"]}

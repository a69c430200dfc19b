"""Issue 21's done-when on files from producers the other tests never saw (tests/fixtures/heldout, README.md names
each format's documentation): through Dagster's raw_records, at least 90% of every file's objects become records,
each holding the right text (every turn of a conversation, the whole question of a split-field problem); with
every record kept the export gives the original values back, equal as JSON values; `mira inspect` names each
file's container."""

from __future__ import annotations

import csv
import io
import json
import random
import shutil
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mira_dagster.core.export import PREFIX, without_selection
from mira_dagster.core.layouts import normalise_text
from mira_dagster.definitions import ALL_ASSETS, INGEST_ASSETS
from mira_dagster.defs.partitions import register_sources
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.export import export_kept
from mira_dagster.io.inspect import inspect_files, render_report
from tests.conftest import ANCHORS

HELDOUT = Path(__file__).parents[1] / "fixtures" / "heldout"


def _texts(turns: Any, *keys: str) -> list[str]:
    return [t[k] for t in turns for k in keys if isinstance(t.get(k), str)]


def _hh(prompt: str) -> list[str]:
    return [p.split(":", 1)[1].strip() for p in prompt.split("\n\n") if ":" in p and p.split(":", 1)[1].strip()]


def _gemini(v: dict) -> list[str]:
    out = [p["text"] for c in v["contents"] for p in c["parts"] if "text" in p]
    out += [p["functionCall"]["name"] for c in v["contents"] for p in c["parts"] if "functionCall" in p]
    out += [
        p["functionResponse"]["response"]["content"]
        for c in v["contents"]
        for p in c["parts"]
        if "functionResponse" in p
    ]
    return out + [p["text"] for p in v.get("systemInstruction", {}).get("parts", [])]


def _agents_sdk(v: list) -> list[str]:
    out = [i["content"] for i in v if isinstance(i.get("content"), str)]
    out += [p["text"] for i in v if isinstance(i.get("content"), list) for p in i["content"]]
    return out + [i[k] for i in v for k in ("name", "arguments", "output") if k in i]


# file -> (family, what the record's text must hold, from the original value)
CASES: dict[str, tuple[str, Callable[[Any], list[str]]]] = {
    "openhermes_2_5.json": ("qa_with_think", lambda v: _texts(v["conversations"], "value")),
    "lmsys_chat_1m.parquet": ("qa_with_think", lambda v: _texts(v["conversation"], "content")),
    "slimorca.jsonl": ("qa_with_think", lambda v: _texts(v["conversations"], "value")),
    "dolly_15k.jsonl": ("qa_with_think", lambda v: [v["instruction"], v["context"], v["response"]]),
    "nectar.jsonl": (
        "qa_with_think",
        lambda v: [*_hh(v["prompt"]), min(v["answers"], key=lambda a: a["rank"])["answer"]],
    ),
    "orca_dpo_pairs.jsonl": ("qa_with_think", lambda v: [v["system"], v["question"], v["chosen"]]),
    "tulu3_preference.jsonl": ("qa_with_think", lambda v: _texts(v["chosen"], "content")),
    "gemini_tuning.jsonl": ("qa_with_think", _gemini),
    "bedrock_claude_ft.jsonl": ("qa_with_think", lambda v: [v["system"], *_texts(v["messages"], "content")]),
    "cohere_chat_ft.jsonl": ("qa_with_think", lambda v: _texts(v["messages"], "content")),
    "xlam_function_calling.json": ("qa_with_think", lambda v: [v["query"], v["answers"]]),
    "numinamath_cot.parquet": ("qa_with_think", lambda v: [v["problem"], v["solution"]]),
    "truthfulqa.csv": ("qa_with_think", lambda v: [v["Question"], v["Best Answer"]]),
    "mini_swe_agent.traj.json": ("agent", lambda v: [*_texts(v["messages"], "content"), v["info"]["submission"]]),
    "agents_sdk_run.json": ("agent", _agents_sdk),
    "magpie_shards.tar.gz": ("qa_with_think", lambda v: [v["instruction"], v["response"]]),
    "wizardlm_evol_pretty.jsonl": ("qa_with_think", lambda v: _texts(v["conversations"], "value")),
    "tulu3_sft_disk": ("qa_with_think", lambda v: _texts(v["messages"], "content")),
    "vicuna_sharegpt_500.json": ("qa_with_think", lambda v: _texts(v["conversations"], "value")),
}
CONTAINERS = {  # what `describe_container` must call each file (a fragment of its description)
    ".jsonl": "JSON Lines",
    ".json": "JSON array",
    ".parquet": "Parquet",
    ".csv": "CSV",
    ".gz": "tar archive",
    "tulu3_sft_disk": "Hugging Face datasets folder",
    "wizardlm_evol_pretty.jsonl": "JSON values one after another",
    "mini_swe_agent.traj.json": "JSON values one after another",
    "agents_sdk_run.json": "JSON array of turns",
}


def _container(name: str) -> str:
    return CONTAINERS.get(name) or CONTAINERS[Path(name).suffix]


def _values(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(origin file, 1-based position, value) of every object of a file, read independently of the readers."""
    if path.is_dir():
        with pa.ipc.open_stream(path / "data-00000-of-00001.arrow") as reader:
            rows = reader.read_all().to_pylist()
        yield from ((path.name, i, r) for i, r in enumerate(rows, 1))
    elif path.suffix == ".parquet":
        yield from ((path.name, i, r) for i, r in enumerate(pq.read_table(path).to_pylist(), 1))
    elif path.suffix == ".csv":
        yield from ((path.name, i, r) for i, r in enumerate(csv.DictReader(io.StringIO(path.read_text())), 1))
    elif path.name.endswith(".tar.gz"):
        with tarfile.open(path) as tf:
            for member in tf.getmembers():
                lines = tf.extractfile(member).read().decode().splitlines()  # type: ignore[union-attr]
                yield from ((f"{path.name}!/{member.name}", i, json.loads(x)) for i, x in enumerate(lines, 1))
    else:
        text, dec, pos, values = path.read_text(), json.JSONDecoder(), 0, []
        while pos < len(text):
            if text[pos].isspace():
                pos += 1
                continue
            value, pos = dec.raw_decode(text, pos)
            values.append(value)
        # a JSON array of records; the Agents SDK run (a JSON array of its items) is one record
        if (
            path.suffix == ".json"
            and len(values) == 1
            and isinstance(values[0], list)
            and "agents_sdk" not in path.name
        ):
            values = values[0]
        yield from ((path.name, i, v) for i, v in enumerate(values, 1))


def _registry(tmp_path: Path) -> Path:
    shutil.copy(ANCHORS / "group_2_dim_anchors.jsonl", tmp_path / "a2.jsonl")
    shutil.copy(ANCHORS / "group_D_dim_anchors.jsonl", tmp_path / "aD.jsonl")
    groups = {
        "2": {"family": "qa_with_think", "student_model": "m", "anchors": "a2.jsonl"},
        "D": {"family": "agent", "student_model": "m", "anchors": "aD.jsonl"},
    }
    sources = {
        f"h{i:02d}": {"group": "D" if fam == "agent" else "2", "format": fam, "files": [str(HELDOUT / name)]}
        for i, (name, (fam, _)) in enumerate(CASES.items())
    }
    cfg = tmp_path / "groups.yaml"
    cfg.write_text(yaml.safe_dump({"groups": groups, "sources": sources}))
    return cfg


@pytest.mark.slow
def test_heldout_files_get_in_whole_and_come_back_as_written(tmp_path: Path) -> None:
    mira = MiraResource(config_path=str(_registry(tmp_path)), home=str(tmp_path / "home"))
    instance = dg.DagsterInstance.ephemeral()
    names = {f"h{i:02d}": name for i, name in enumerate(CASES)}
    register_sources(instance, list(names))
    for source, name in names.items():
        result = dg.materialize(
            ALL_ASSETS, selection=INGEST_ASSETS, partition_key=source, instance=instance, resources={"mira": mira}
        )
        (mat,) = [e.materialization for e in result.get_asset_materialization_events()]
        assert _container(name) in mat.metadata["containers"].value[name], (name, mat.metadata["containers"])

    store = mira.store()
    raw = store.query_sql("SELECT * FROM raw_records")
    failures = []
    for source, name in names.items():
        family, expected = CASES[name]
        mine = raw.filter(pl.col("source") == source)
        by_pos = {(r["origin_file"], r["origin_line"]): r for r in mine.iter_rows(named=True)}
        values = list(_values(HELDOUT / name))
        right = 0
        for origin, pos, value in values:
            rec = by_pos.get((origin, pos))
            fields = ("task", "trajectory", "outcome") if family == "agent" else ("question", "thinking", "answer")
            text = "\n".join(rec[f] or "" for f in fields) if rec else ""
            missing = [t for t in expected(value) if t.strip() and normalise_text(t) not in text]
            if rec is not None and not missing:
                right += 1
            elif len(failures) < 20:
                failures.append((name, pos, missing[:2] if rec else "no record"))
        assert right >= 0.9 * len(values), (name, right, len(values), failures)
        assert len(values) > 0
    assert not failures, failures  # every object, not only 90%, of this corpus
    assert raw.filter(pl.col("source") == "h18").height == 500  # 500 distinct conversations, 500 records

    # retention 1.0: every record kept; the export gives the input values back
    rng = random.Random(0)
    keys = raw.select("source", "record_id")
    store.write(
        "selected_subset",
        keys.with_columns(
            pl.Series("score", [rng.random() for _ in range(keys.height)]), pl.lit("v1").alias("mask_version")
        ),
    )
    manifest = export_kept(store, {"variant": "heldout"}, shard_records=100)
    assert manifest["records"] == raw.height
    got: dict[tuple[str, str, int], Any] = {}
    for f in sorted((store.exports_dir / "selected_subset").iterdir()):
        rows = (
            [json.loads(x) for x in f.read_text().splitlines()]
            if f.suffix == ".jsonl"
            else pq.read_table(f).to_pylist()
            if f.suffix == ".parquet"
            else []
        )
        for row in rows:
            got[(row[PREFIX + "source"], row[PREFIX + "origin_file"], row[PREFIX + "origin_line"])] = without_selection(
                row
            )
    for source, name in names.items():
        for origin, pos, value in _values(HELDOUT / name):
            assert got.pop((source, origin, pos)) == value, (name, pos)
    assert got == {}


@pytest.mark.parametrize("name", list(CASES))
def test_inspect_names_each_heldout_container_and_reads_every_object(name: str) -> None:
    family = CASES[name][0]
    (report,) = inspect_files([HELDOUT / name], family)
    assert report.error is None and _container(name) in report.container
    assert report.families[family].records == report.units > 0
    assert f"read as: {report.container}" in render_report([report])


def test_inspect_names_the_keys_a_half_match_leaves_unused_and_never_suggests_wrong_answers() -> None:
    """TruthfulQA: `Best Answer` is the answer; `Correct Answers` is prose left unused (named, with a mapping that
    reads it); `Incorrect Answers` is what the producer marked wrong: never called unused, never mapped."""
    (report,) = inspect_files([HELDOUT / "truthfulqa.csv"], "qa_with_think")
    res = report.families["qa_with_think"]
    assert set(res.unused) == {"Correct Answers"} and res.unused["Correct Answers"] == 6
    assert "Correct Answers" in res.unused_suggestion["question"]
    assert "Incorrect" not in str(res.unused_suggestion) and res.unused_suggestion["answer"] == '"Best Answer"'
    assert "WARNING: the layouts left text unused under: Correct Answers (6 records)" in render_report([report])
    # a multi-turn Human/Assistant prompt read turn by turn is not "unused"
    (nectar,) = inspect_files([HELDOUT / "nectar.jsonl"], "qa_with_think")
    assert not nectar.families["qa_with_think"].unused

"""Only regular files are read, wherever they are named (issue 23 item 1): a symlink is followed only to a regular
file inside an allowed root (the registry's folder, `allowed_roots`, the folder it was named in, a Hugging Face
cache repository's blobs), never to /proc, /sys, /dev, a FIFO or a device; a refusal is one line naming the link,
and nothing of what the link points to is read (a canary key file and a canary in the environment)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.readers import SourceFileError, expand_files, regular_file_problem
from mira_dagster.io.registry import load_config

KEY_CANARY = "CANARY-KEY-3f9a1c"
ENV_CANARY = "CANARY-ENV-77b2e0"
LINE = json.dumps({"question": "What is 2 + 2?", "answer": "4"}) + "\n"


@pytest.fixture
def layout(tmp_path: Path, monkeypatch) -> Path:
    """tmp/id_ed25519 (a key outside every root), tmp/reg/groups.yaml and tmp/reg/data/good.jsonl."""
    monkeypatch.setenv("MIRA_TEST_CANARY", ENV_CANARY)
    key = tmp_path / "id_ed25519"
    key.write_text(
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "".join(json.dumps({"question": KEY_CANARY, "answer": KEY_CANARY}) + "\n" for _ in range(3))
        + "-----END OPENSSH PRIVATE KEY-----\n"
    )
    (tmp_path / "reg" / "data").mkdir(parents=True)
    (tmp_path / "reg" / "data" / "good.jsonl").write_text(LINE)
    return tmp_path


def _registry(root: Path, files: list[str], allowed_roots: list[str] | None = None) -> Path:
    cfg = {
        "groups": {"g": {"family": "qa", "student_model": "m"}},
        "sources": {"s": {"group": "g", "format": "qa", "files": files}},
    }
    if allowed_roots is not None:
        cfg["allowed_roots"] = allowed_roots
    path = root / "reg" / "groups.yaml"
    path.write_text(json.dumps(cfg))
    return path


def _ingest(registry: Path) -> SourceIngest:
    """The source as raw_records reads it: its entries checked with the registry's roots (for the append plan,
    then once more by SourceIngest, which is given the entries), then read."""
    cfg = load_config(registry)
    src = cfg.sources["s"]
    expand_files(src.files, "s", cfg.read_roots())
    ingest = SourceIngest("s", "g", "qa", src.files, roots=cfg.read_roots())
    list(ingest.batches())
    return ingest


def _refused(registry: Path, link: str) -> str:
    with pytest.raises(SourceFileError) as err:
        _ingest(registry)
    message = str(err.value)
    assert link in message and "\n" not in message
    assert KEY_CANARY not in message and ENV_CANARY not in message
    return message


@pytest.mark.parametrize("entry", ["data/", "data/*.jsonl", "data/**/*.jsonl", "data/key.jsonl"])
def test_a_link_to_a_key_outside_the_roots_is_refused_wherever_it_is_named(layout: Path, entry: str) -> None:
    os.symlink(layout / "id_ed25519", layout / "reg" / "data" / "key.jsonl")
    message = _refused(_registry(layout, [entry]), "key.jsonl")
    assert "symlink to a file outside" in message


@pytest.mark.parametrize("entry", ["data/", "data/*.jsonl", "data/env.jsonl"])
def test_a_link_to_proc_self_environ_is_refused(layout: Path, entry: str) -> None:
    os.symlink("/proc/self/environ", layout / "reg" / "data" / "env.jsonl")
    assert "system pseudo-file" in _refused(_registry(layout, [entry]), "env.jsonl")


def test_a_fifo_or_a_device_is_refused(layout: Path) -> None:
    os.mkfifo(layout / "reg" / "data" / "pipe.jsonl")
    assert "not a regular file" in _refused(_registry(layout, ["data/"]), "pipe.jsonl")
    os.unlink(layout / "reg" / "data" / "pipe.jsonl")
    os.symlink("/dev/zero", layout / "reg" / "data" / "zero.jsonl")  # would never end
    _refused(_registry(layout, ["data/zero.jsonl"]), "zero.jsonl")


def test_a_link_to_a_folder_outside_is_not_walked(layout: Path) -> None:
    (layout / "keys").mkdir()
    (layout / "keys" / "k.jsonl").write_text(LINE.replace("2 + 2", KEY_CANARY))
    os.symlink(layout / "keys", layout / "reg" / "data" / "more")
    _refused(_registry(layout, ["data/"]), "more")
    _refused(_registry(layout, ["data/**/*.jsonl"]), "k.jsonl")  # glob follows folder links: its match is checked


def test_links_inside_the_roots_and_to_allowed_roots_are_followed(layout: Path) -> None:
    shared = layout / "shared"
    shared.mkdir()
    (shared / "more.jsonl").write_text(LINE.replace("2 + 2", "3 + 3"))
    os.symlink(layout / "reg" / "data" / "good.jsonl", layout / "reg" / "alias.jsonl")  # inside the registry folder
    os.symlink(shared / "more.jsonl", layout / "reg" / "data" / "more.jsonl")
    _refused(_registry(layout, ["data/"]), "more.jsonl")
    ingest = _ingest(_registry(layout, ["data/", "alias.jsonl"], allowed_roots=["../shared"]))
    assert ingest.stats.records == 2 and ingest.stats.units_read == 3  # good, more, and alias (a duplicate)


def test_hugging_face_cache_snapshots_linking_to_their_blobs_keep_working(layout: Path) -> None:
    """`hub/datasets--org--name/snapshots/<rev>/data/train.jsonl -> ../../../blobs/<sha>`, as huggingface_hub
    lays out its cache, with the registry elsewhere."""
    repo = layout / "hub" / "datasets--org--name"
    (repo / "blobs").mkdir(parents=True)
    (repo / "blobs" / "9c1e4f").write_text(LINE * 2 + LINE.replace("2 + 2", "5 + 5"))
    snapshot = repo / "snapshots" / "0123abcd" / "data"
    snapshot.mkdir(parents=True)
    os.symlink("../../../blobs/9c1e4f", snapshot / "train.jsonl")
    for entry in (str(snapshot.parent), str(snapshot / "train.jsonl"), str(snapshot / "*.jsonl")):
        ingest = _ingest(_registry(layout, [entry]))
        assert ingest.stats.units_read == 3 and ingest.stats.records == 2


def test_the_registry_keeps_links_as_named(layout: Path) -> None:
    """A `files:` entry that is a link is checked as a link: the registry must not resolve it away first."""
    os.symlink(layout / "id_ed25519", layout / "reg" / "data" / "key.jsonl")
    cfg = load_config(_registry(layout, ["data/key.jsonl"]))
    assert cfg.sources["s"].files == [layout / "reg" / "data" / "key.jsonl"]


def test_watched_folders_use_the_same_check(layout: Path) -> None:
    inbox = layout / "reg" / "inbox"
    inbox.mkdir()
    os.symlink(layout / "id_ed25519", inbox / "key.jsonl")
    os.symlink("/proc/self/environ", inbox / "env.jsonl")
    assert "outside the watched folder" in (
        regular_file_problem(inbox / "key.jsonl", (), "the watched folder", inbox) or ""
    )
    assert "system pseudo-file" in (regular_file_problem(inbox / "env.jsonl", (), "the watched folder", inbox) or "")


@pytest.mark.parametrize("entry", ["/proc/self/environ", "/dev/stdin", "/proc/self/"])
def test_system_pseudo_files_named_directly_are_refused(layout: Path, entry: str) -> None:
    with pytest.raises(SourceFileError) as err:
        expand_files([Path(entry)], "s")
    assert entry.rstrip("/") in str(err.value) and ENV_CANARY not in str(err.value)


def test_a_files_entry_that_links_to_a_folder_outside_is_refused(layout: Path) -> None:
    (layout / "keys").mkdir()
    (layout / "keys" / "k.jsonl").write_text(LINE.replace("2 + 2", KEY_CANARY))
    os.symlink(layout / "keys", layout / "reg" / "data" / "more")
    assert "symlink to a folder outside" in _refused(_registry(layout, ["data/more"]), "more")
    assert _ingest(_registry(layout, ["data/more"], allowed_roots=["../keys"])).stats.records == 1


@pytest.mark.parametrize("entry", ["../ds", "../ds/*/*.jsonl"])
def test_a_link_within_a_listed_folder_outside_the_registry_folder_is_read(layout: Path, entry: str) -> None:
    """ds/a/link.jsonl -> ../b/x.data: inside the folder the entry names, so followed; the entry is judged once by
    its own folder (a second check of the expanded file alone once refused it)."""
    (layout / "ds" / "a").mkdir(parents=True)
    (layout / "ds" / "b").mkdir()
    (layout / "ds" / "b" / "x.data").write_text(LINE)
    os.symlink("../b/x.data", layout / "ds" / "a" / "link.jsonl")
    ingest = _ingest(_registry(layout, [entry]))
    assert ingest.stats.records == 1


def test_mira_inspect_follows_links_to_allowed_roots(layout: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`mira inspect --source` judges links with the registry's roots, as ingest does."""
    from mira_dagster import cli

    (layout / "outside").mkdir()
    (layout / "outside" / "a.jsonl").write_text(LINE)
    os.symlink(layout / "outside" / "a.jsonl", layout / "reg" / "link.jsonl")
    registry = _registry(layout, ["link.jsonl"], allowed_roots=["../outside"])
    assert cli.main(["inspect", "--config", str(registry), "--home", str(layout / "home"), "--source", "s"]) == 0
    assert "outside the allowed roots" not in capsys.readouterr().out


def test_a_table_inside_an_archive_is_kept_as_rows(tmp_path: Path) -> None:
    """A Parquet member of a .tar.gz is exported as rows with its columns, as the same file outside the archive."""
    import io
    import tarfile

    import pyarrow as pa
    import pyarrow.parquet as pq

    from mira_dagster.io.ingest import member_form

    buf = io.BytesIO()
    pq.write_table(pa.table({"question": ["What is 3 + 4?"], "answer": ["7"]}), buf)
    archive = tmp_path / "t.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for name, data in (("m.parquet", buf.getvalue()), ("l.jsonl", LINE.encode())):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    ingest = SourceIngest("s", "g", "qa", [archive], scratch=tmp_path / "scratch")
    records = [r for r, _ in ingest.batches()]
    forms = {row["origin_file"]: row["original_form"] for frame in records for row in frame.iter_rows(named=True)}
    assert forms == {"t.tar.gz!/m.parquet": "row", "t.tar.gz!/l.jsonl": "json"}
    assert (member_form("a/b.csv"), member_form("x.jsonl.gz")) == ("row", "json")

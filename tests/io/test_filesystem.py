"""One storage code path (io/filesystem.py): the local filesystem writes as object storage does (a file put whole,
create-only puts refused when the name is taken), the builder is the only module of io/ that tells local disk from
object storage, and a store URL naming a folder runs the same code as an s3:// one (replies as objects, the home
only a cache)."""

from __future__ import annotations

import ast
import json
import os
import threading
from pathlib import Path

import polars as pl
import pytest

from mira_dagster.core.scoring import Completion
from mira_dagster.io.export import EXPORT, export_kept
from mira_dagster.io.filesystem import LocalStoreFileSystem, store_filesystem
from mira_dagster.io.reply_cache import ObjectReplyCache, ParquetReplyCache
from mira_dagster.io.tables import Store

IO_DIR = Path(__file__).resolve().parents[2] / "mira_dagster" / "io"


def test_put_replaces_a_file_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    fs = LocalStoreFileSystem()
    staged, dest = tmp_path / "staged.bin", tmp_path / "store" / "a" / "dest.bin"
    staged.write_bytes(b"new")
    fs.put_file(str(staged), str(dest))  # the folder is made
    assert dest.read_bytes() == b"new"
    old = dest.open("rb")  # a reader of the old file keeps the old bytes: the name is renamed over, not rewritten
    staged_copy = tmp_path / "other.bin"
    staged_copy.write_bytes(b"newer")
    fs.put_file(str(staged_copy), str(dest))
    assert old.read() == b"new" and dest.read_bytes() == b"newer"
    old.close()
    assert sorted(os.listdir(dest.parent)) == ["dest.bin"]
    fs.put_file(str(dest), str(dest))  # onto itself: nothing to do
    assert dest.read_bytes() == b"newer" and sorted(os.listdir(dest.parent)) == ["dest.bin"]


def test_create_only_writes_refuse_a_taken_name(tmp_path: Path) -> None:
    fs = LocalStoreFileSystem()
    path = str(tmp_path / "obj")
    fs.pipe_file(path, b"first", mode="create")
    with pytest.raises(FileExistsError):
        fs.pipe_file(path, b"second", mode="create")
    assert fs.cat_file(path) == b"first"
    fs.pipe_file(path, b"third")  # an overwrite replaces it
    assert fs.cat_file(path) == b"third"
    assert os.listdir(tmp_path) == ["obj"]
    fs.rm([path, str(tmp_path / "gone")])  # a file already gone is no error, as a DELETE
    assert not os.listdir(tmp_path)


def test_concurrent_create_only_writes_have_one_winner(tmp_path: Path) -> None:
    fs = LocalStoreFileSystem()
    path = str(tmp_path / "obj")
    wins: list[int] = []

    def put(i: int) -> None:
        try:
            fs.pipe_file(path, str(i).encode() * 100_000, mode="create")
            wins.append(i)
        except FileExistsError:
            pass

    threads = [threading.Thread(target=put, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and fs.cat_file(path) == str(wins[0]).encode() * 100_000


def test_the_builder_names_the_filesystem_of_a_location(tmp_path: Path) -> None:
    fs, root = store_filesystem(tmp_path)
    assert isinstance(fs, LocalStoreFileSystem) and root == str(tmp_path)
    assert store_filesystem(f"file://{tmp_path}/")[1] == str(tmp_path)
    assert fs.unstrip_protocol(f"{root}/x") == f"{tmp_path}/x"
    s3, key = store_filesystem("s3://bucket/prefix/", "http://127.0.0.1:1")
    assert type(s3).__name__ == "S3FileSystem" and key == "bucket/prefix"
    assert s3.unstrip_protocol(f"{key}/x") == "s3://bucket/prefix/x"
    with pytest.raises(ValueError, match="gs://b/p"):
        store_filesystem("gs://b/p")


def _forbidden(tree: ast.AST) -> list[str]:
    """What in a module's code tells local disk from object storage: a scheme tested or stripped, a filesystem
    class named or imported, a filesystem compared with None."""
    found = []
    for node in ast.walk(tree):
        call = isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        if call and node.func.attr in {"startswith", "removeprefix", "endswith", "split", "partition"}:
            args = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
            found += [f"{node.func.attr}({a!r})" for a in args if "://" in a or a in {"s3", "file"}]
        if isinstance(node, ast.Name | ast.Attribute):
            name = node.id if isinstance(node, ast.Name) else node.attr
            named_class = name.endswith("FileSystem") and name != "AbstractFileSystem"  # the interface is fine
            if named_class or name in {"s3fs", "is_s3", "remote", "is_remote"}:
                found.append(name)
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            found += [n for n in names if n.startswith(("s3fs", "fsspec.implementations"))]
        none = isinstance(node, ast.Compare) and any(
            isinstance(c, ast.Constant) and c.value is None for c in node.comparators
        )
        if none and isinstance(node.left, ast.Attribute) and node.left.attr in {"fs", "url", "tables_url", "store_url"}:
            found.append(f"{node.left.attr} compared with None")
    return found


def test_no_module_of_io_asks_which_storage_it_is_on() -> None:
    offenders = {
        path.name: found
        for path in sorted(IO_DIR.glob("*.py"))
        if path.name != "filesystem.py" and (found := _forbidden(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert offenders == {}
    # and the check sees such a branch
    assert _forbidden(ast.parse("if url.startswith('s3://'):\n    pass\nif self.fs is not None:\n    pass"))


def _comp(text: str) -> Completion:
    return Completion(text=text, finish_reason="stop", prompt_tokens=3, completion_tokens=2, cached_tokens=0)


def test_a_store_in_another_folder_runs_the_object_storage_path(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    store = Store(tmp_path / "a", store_url=str(shared))
    assert isinstance(store.replies, ObjectReplyCache) and not store.home_is_store
    df = pl.DataFrame({"record_id": ["r1", "r2"], "source": ["s", "s"], "n": [1, 2]})
    assert store.write("numbers", df, "s") == str(shared / "tables" / "numbers" / "s.parquet")
    assert store.read("numbers", "s").equals(df)
    assert store.query_sql("SELECT sum(n) AS total FROM numbers")["total"].item() == 3
    with pytest.raises(FileNotFoundError, match="no partition 'x'"):
        store.read("numbers", "x")

    with store.replies.writer("v1", batch_size=10) as w:
        w.add("r1", _comp("one"))
    (tmp_path / "a" / "anchors").mkdir()
    (tmp_path / "a" / "anchors" / "rubric.jsonl").write_text("{}\n")
    assert store.publish_file("anchors/rubric.jsonl") == str(shared / "anchors" / "rubric.jsonl")

    # another home on the same store: the table, the reply and the rubric are there; no catalogue in either home
    other = Store(tmp_path / "b", store_url=f"file://{shared}")
    assert other.read("numbers", "s").equals(df)
    assert other.replies.load("v1", ["r1"])["r1"].text == "one"
    fetched = other.fetch_file("anchors/rubric.jsonl")
    assert fetched == tmp_path / "b" / "anchors" / "rubric.jsonl" and fetched.read_text() == "{}\n"
    assert not (tmp_path / "a" / "tables").exists() and not (tmp_path / "a" / "mira.duckdb").exists()
    assert sorted(p.name for p in (shared / "replies" / "v1").iterdir())[0].startswith("L0-")


def test_the_home_as_store_keeps_its_layout(tmp_path: Path) -> None:
    store = Store(tmp_path)
    assert type(store.replies) is ParquetReplyCache and store.home_is_store
    path = store.write("numbers", pl.DataFrame({"n": [1]}))
    assert path == str(store.partition_path("numbers")) and store.catalog_path.exists()
    assert store.location(EXPORT) == str(tmp_path / EXPORT)
    rubric = tmp_path / "anchors" / "r.jsonl"
    rubric.parent.mkdir()
    rubric.write_text("x")
    assert store.publish_file("anchors/r.jsonl") == str(rubric) and store.fetch_file("anchors/r.jsonl") == rubric
    assert os.listdir(rubric.parent) == ["r.jsonl"]


def test_an_export_to_a_folder_store_is_a_generation_and_a_manifest(tmp_path: Path) -> None:
    from tests.io.test_export_original import FIXTURES, _ingest, _select_everything

    shared = tmp_path / "shared"
    store = Store(tmp_path / "home", store_url=str(shared))
    _ingest(store, [(FIXTURES / "chat_multiturn.jsonl", "qa", "chosen")])
    _select_everything(store)
    first = export_kept(store, {}, form="normalised")
    second = export_kept(store, {}, form="normalised")
    root = shared / "exports" / "selected_subset"
    on_store = json.loads((root / "manifest.json").read_text())
    assert on_store["generation"] == second["generation"] != first["generation"]
    assert on_store["records"] == 4 and all((root / f["file"]).is_file() for f in on_store["files"])
    # the previous generation stays for readers still in it; nothing of the export is left in the home
    expected = sorted([first["generation"], second["generation"], "manifest.json"])
    assert sorted(p.name for p in root.iterdir()) == expected
    assert not (tmp_path / "home" / "exports" / "selected_subset").exists()

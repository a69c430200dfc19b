"""Archive members are unpacked under MIRA_HOME (the scratch folder passed down), never into the system temp
folder, and removed once read."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from mira_dagster.io.ingest import SourceIngest
from mira_dagster.io.readers import count_units, default_scratch, iter_units

CONTAINERS = Path(__file__).parents[1] / "fixtures" / "containers"
HELDOUT = Path(__file__).parents[1] / "fixtures" / "heldout"


@pytest.mark.parametrize("archive", [CONTAINERS / "qa.tar.gz", CONTAINERS / "qa.zip", HELDOUT / "magpie_shards.tar.gz"])
def test_members_are_unpacked_under_the_scratch_folder_only(
    archive: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    scratch = tmp_path / "home" / "scratch"
    seen_during: list[list[Path]] = []
    units = 0
    for batch in iter_units(archive, "s", 1 << 20, scratch=scratch):
        units += len(batch)
        seen_during.append([p for p in scratch.rglob("*") if p.is_file()])
    assert units == count_units(archive, scratch) > 0
    # at most the member being read, under MIRA_HOME (the last batch is handed over once all are read)
    assert max(map(len, seen_during)) == 1 and all(len(f) <= 1 for f in seen_during)
    assert all(f.parent.parent == scratch for files in seen_during for f in files)
    assert not [p for p in scratch.rglob("*") if p.is_file()]  # removed once read
    assert not list(system_tmp.iterdir())


def test_ingest_passes_its_scratch_down_and_the_default_is_under_mira_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "nowhere"))  # would fail if anything used it
    scratch = tmp_path / "home" / "scratch"
    ingest = SourceIngest("s", "g", "qa_with_think", [HELDOUT / "magpie_shards.tar.gz"], scratch=scratch)
    assert sum(r.height for r, _ in ingest.batches()) == 12 and scratch.is_dir()
    monkeypatch.setenv("MIRA_HOME", str(tmp_path / "home2"))
    assert default_scratch() == tmp_path / "home2" / "scratch"

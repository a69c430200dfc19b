"""A source with data in the store that the registry no longer has never silently leaves the selection: the corpus
fails naming it and `mira forget-source`, or (pipeline.unregistered_sources: drop) leaves it out and says so;
`mira forget-source` removes its data, and refuses a registered source."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest

from mira_dagster.cli import SUMMARY_COLUMNS, main, summary_rows
from mira_dagster.definitions import ALL_ASSETS, CORPUS_ASSETS
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from mira_dagster.io.forget import stored_sources
from mira_dagster.io.store import Store

DROPPED = "agent_openhands"


def _corpus(config: Path, home: Path) -> dg.ExecuteInProcessResult:
    mira = MiraResource(config_path=str(config), home=str(home))
    return dg.materialize(
        ALL_ASSETS,
        selection=CORPUS_ASSETS,
        instance=in_process_instance(),
        resources={"mira": mira},
        raise_on_error=False,
    )


def _meta(result: dg.ExecuteInProcessResult, asset: str) -> dict:
    return {k: v.value for k, v in result.asset_materializations_for_node(asset)[0].metadata.items()}


def _failure(result: dg.ExecuteInProcessResult) -> str:
    event = result.get_step_failure_events()[0]
    error = event.step_failure_data.error
    while error is not None and error.cause is not None:
        error = error.cause
    return (error.message if error else "").strip().splitlines()[0]


@pytest.fixture
def home_without_source(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[Path, Path]:
    """A home where both sources ran, and a registry without agent_openhands (its line taken out)."""
    for var in ("MIRA_CONFIG", "MIRA_HOME"):
        monkeypatch.setenv(var, "unset")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    home = tmp_path / "home"
    assert main(["run", "--config", str(small_config), "--home", str(home)]) == 0
    capsys.readouterr()
    lines = small_config.read_text(encoding="utf-8").splitlines()
    small_config.write_text("\n".join(ln for ln in lines if not ln.strip().startswith(DROPPED)), encoding="utf-8")
    return small_config, home


def test_the_corpus_fails_naming_the_source_and_the_command(home_without_source: tuple[Path, Path]) -> None:
    config, home = home_without_source
    result = _corpus(config, home)
    assert not result.success
    line = _failure(result)
    assert DROPPED in line and f"`mira forget-source {DROPPED}`" in line and "unregistered_sources: drop" in line
    assert str(config) in line


def test_drop_leaves_it_out_and_says_so(home_without_source: tuple[Path, Path]) -> None:
    config, home = home_without_source
    text = config.read_text(encoding="utf-8")
    config.write_text(text.replace("min_heldout: 4}", "min_heldout: 4, unregistered_sources: drop}"), "utf-8")
    result = _corpus(config, home)
    assert result.success
    assert _meta(result, "aggregated_scores")["unregistered_left_out"] == [DROPPED]
    assert _meta(result, "dim_reliability")["unregistered_left_out"] == [DROPPED]
    store = Store(home)
    assert set(store.read("aggregated_scores")["source"].unique()) == {"lean_qa"}
    assert DROPPED not in set(store.read("selected_subset")["source"].unique())
    # the summary still shows its rows in the store, named as what they are
    rows = {row[0]: row for row in summary_rows(home, ["lean_qa"])}
    assert set(rows) == {"lean_qa", f"{DROPPED} (not in the registry)"}
    assert rows[f"{DROPPED} (not in the registry)"][SUMMARY_COLUMNS.index("records_kept")] == 0


def test_forget_source_removes_its_data_then_the_corpus_passes(
    home_without_source: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config, home = home_without_source
    store = Store(home)
    assert DROPPED in stored_sources(store)
    assert main(["forget-source", DROPPED, "--config", str(config), "--home", str(home)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert f"removed: student_scores: partition {DROPPED} removed (2 rows)" in out
    assert f"removed: raw_records: partition {DROPPED} removed (2 rows)" in out
    assert any(line.startswith("removed: aggregated_scores: ") for line in out)
    assert stored_sources(store) == {"lean_qa"}
    for table in store.tables():
        df = store.read(table)
        assert "source" not in df.columns or DROPPED not in set(df["source"].to_list()), table
    result = _corpus(config, home)
    assert result.success
    assert _meta(result, "aggregated_scores")["unregistered_left_out"] == []


def test_forget_source_refuses_a_registered_source(
    small_config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("MIRA_CONFIG", "MIRA_HOME"):
        monkeypatch.setenv(var, "unset")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    home = tmp_path / "home"
    store = Store(home)
    store.write("raw_records", Store(home).query_sql("SELECT 'lean_qa' AS source, 'r1' AS record_id"), "lean_qa")
    assert main(["forget-source", "lean_qa", "--config", str(small_config), "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mira: refused: lean_qa is in the registry ")
    assert stored_sources(store) == {"lean_qa"}  # nothing removed
    # a name that is neither registered nor in the store (a typo) removes nothing either
    assert main(["forget-source", "lean_q", "--config", str(small_config), "--home", str(home)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("mira: no data of lean_q in the store ")
    assert err[0].endswith("(sources with data that the registry does not have: none); nothing removed")

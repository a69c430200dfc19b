"""reliability_mask_file through Dagster: the imported cells reach the mask and the aggregate; a file that cannot
apply fails the step and leaves the last mask in place."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import duckdb
import yaml

from mira_dagster import definitions as d
from mira_dagster.defs.partitions import in_process_instance
from mira_dagster.defs.resources import MiraResource
from tests.pipeline import run_pipeline

SOURCES = ["lean_qa", "agent_openhands"]


def _with_mask(small_config: Path, text: str, mode: str = "union") -> Path:
    (small_config.parent / "mask.csv").write_text(text)
    cfg = yaml.safe_load(small_config.read_text())
    cfg["pipeline"].update(reliability_mask_file="mask.csv", reliability_mask_mode=mode)
    small_config.write_text(yaml.safe_dump(cfg))
    return small_config


def test_an_imported_mask_reaches_the_aggregate(small_config: Path, tmp_path: Path) -> None:
    cfg = _with_mask(small_config, "source,dimension,masked\nlean_qa,A1,true\nlean_qa,A2,true\n")
    home = tmp_path / "home"
    mira = MiraResource(config_path=str(cfg), home=str(home))
    instance = in_process_instance()
    run_pipeline(mira, instance, SOURCES)
    with duckdb.connect(str(home / "mira.duckdb"), read_only=True) as con:
        cells = con.sql(
            "SELECT slot, masked, mask_basis FROM reliability_mask WHERE source = 'lean_qa' AND slot <= 2 ORDER BY slot"
        ).fetchall()
        rule = con.execute("SELECT any_value(rule) FROM reliability_mask").fetchone()[0]
        used = con.execute("SELECT max(n_dims_used) FROM aggregated_scores WHERE source = 'lean_qa'").fetchone()[0]
    assert [(slot, masked) for slot, masked, _ in cells] == [(1, True), (2, True)]
    assert {basis for _, _, basis in cells} <= {"imported", "both"}
    assert "imported mask mask.csv (union) sha256" in rule
    assert used <= 13  # two of the 15 dimensions no longer count

    # a file whose row matches nothing: the step fails, naming the row, and the mask stays as it was
    mask_file = home / "tables" / "reliability_mask" / "all.parquet"
    before = mask_file.read_bytes()
    (cfg.parent / "mask.csv").write_text("source,dimension,masked\nlean_qa,A1,true\nnope,A1,true\n")
    res = dg.materialize(
        d.ALL_ASSETS, selection=["reliability_mask"], instance=instance, resources={"mira": mira}, raise_on_error=False
    )
    assert not res.success
    (failure,) = res.get_step_failure_events()
    assert "row 2: no cell ('nope', 'A1')" in str(failure.step_failure_data.error)
    assert mask_file.read_bytes() == before

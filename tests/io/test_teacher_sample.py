"""The teacher sample drawn by DuckDB (io/sending.teacher_split, sql/teacher_sample.sql) is core/sampling's rule:
the same records, the same splits, for any ids, sizes, fractions, caps and seeds."""

from __future__ import annotations

from pathlib import Path

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mira_dagster.core.config import MiraConfig
from mira_dagster.core.sampling import teacher_sample
from mira_dagster.io.registry import load_config
from mira_dagster.io.sending import teacher_split
from mira_dagster.io.store import Store

IDS = st.lists(st.text(alphabet="0123456789abcdef:é ", min_size=1, max_size=12), max_size=300)


def _with(cfg: MiraConfig, **settings_: object) -> MiraConfig:
    return cfg.model_copy(update={"pipeline": cfg.pipeline.model_copy(update=settings_)})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ids=IDS,
    fraction=st.floats(0.0, 1.0),
    minimum=st.integers(0, 50),
    maximum=st.none() | st.integers(0, 80),
    heldout=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_the_sql_sample_is_the_python_rule(
    small_config: Path, tmp_path_factory, ids, fraction, minimum, maximum, heldout, seed
) -> None:
    cfg = _with(
        load_config(small_config),
        teacher_sample_fraction=fraction,
        teacher_sample_min=minimum,
        teacher_sample_max=maximum,
        heldout_fraction=heldout,
        seed=seed,
    )
    store = Store(tmp_path_factory.mktemp("home"))
    # ids as raw_records holds them (a repeated id counts once, as in the rule)
    store.write(
        "raw_records",
        pl.DataFrame(
            {"source": ["s"] * len(ids), "record_id": ids}, schema={"source": pl.String, "record_id": pl.String}
        ),
        "s",
    )
    expected = teacher_sample(
        ids, fraction=fraction, minimum=minimum, heldout_fraction=heldout, seed=seed, maximum=maximum
    )
    assert teacher_split(cfg, store, "s") == expected

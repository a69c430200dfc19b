"""Running the pipeline in-process in tests: each source's partitioned assets, then the corpus stage."""

from __future__ import annotations

from collections.abc import Sequence

import dagster as dg

from mira_dagster import definitions as d
from mira_dagster.defs.resources import MiraResource


def run_sources(mira: MiraResource, instance: dg.DagsterInstance, sources: Sequence[str]) -> None:
    """raw_records, teacher_labels and student_scores of every source, each run asserted successful."""
    for source in sources:
        result = dg.materialize(
            d.ALL_ASSETS,
            selection=[*d.INGEST_ASSETS, *d.SCORING_ASSETS],
            partition_key=source,
            instance=instance,
            resources={"mira": mira},
        )
        assert result.success, source


def run_pipeline(mira: MiraResource, instance: dg.DagsterInstance, sources: Sequence[str]) -> None:
    """The sources' partitions, then every corpus asset (reliability to selection), asserted successful."""
    run_sources(mira, instance, sources)
    assert dg.materialize(d.ALL_ASSETS, selection=d.CORPUS_ASSETS, instance=instance, resources={"mira": mira}).success

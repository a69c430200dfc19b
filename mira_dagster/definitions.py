"""The code location: `mira_dagster.definitions` (workspace.yaml, [tool.dagster] in pyproject.toml)."""

import dagster as dg

from mira_dagster.defs.automation import (
    executor_from_settings,
    follow_inputs,
    new_sources,
    refresh_sources_job,
)
from mira_dagster.defs.daemon import warn_without_daemon_on_load
from mira_dagster.defs.discovery import anchor_rubric, distillation_dataset, source_groups, teacher_judgments
from mira_dagster.defs.ingest import raw_records
from mira_dagster.defs.partitions import register_partitions_on_load
from mira_dagster.defs.reliability import dim_reliability, disagreements, reliability_mask
from mira_dagster.defs.resources import mira_resource
from mira_dagster.defs.scoring import student_scores, teacher_labels
from mira_dagster.defs.selection import aggregated_scores, selected_random, selected_subset, selection_report

# The stages in the order they run: per source, all sources, per scorer unit, per source, per unit, the corpus.
INGEST_ASSETS = [raw_records]
GROUPING_ASSETS = [source_groups]
DISCOVERY_ASSETS = [teacher_judgments, anchor_rubric]
PARTITIONED_ASSETS = [raw_records, teacher_labels, student_scores]
SCORING_ASSETS = [teacher_labels, student_scores]
DISTILL_ASSETS = [distillation_dataset]
CORPUS_ASSETS = [
    dim_reliability,
    reliability_mask,
    disagreements,
    aggregated_scores,
    selected_subset,
    selected_random,
    selection_report,
]
ALL_ASSETS = [
    raw_records,
    source_groups,
    teacher_judgments,
    anchor_rubric,
    teacher_labels,
    student_scores,
    distillation_dataset,
    *CORPUS_ASSETS,
]


@dg.definitions
def defs() -> dg.Definitions:
    """The code location, built when Dagster loads it. Loading also gives the current instance the registry's
    source and scorer-unit partitions (before any tick of `new_sources`, so that `dagster asset materialize
    --partition <source>` works on a fresh instance); that never fails the load."""
    register_partitions_on_load()
    warn_without_daemon_on_load()
    return dg.Definitions(
        assets=ALL_ASSETS,
        jobs=[refresh_sources_job],
        sensors=[new_sources, follow_inputs],
        resources={"mira": mira_resource()},  # the set MIRA_* variables as dg.EnvVar
        executor=executor_from_settings(),  # None: Dagster's default (multiprocess)
    )

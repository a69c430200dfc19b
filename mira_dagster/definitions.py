"""The code location: `mira_dagster.definitions` (workspace.yaml, [tool.dagster] in pyproject.toml)."""

import dagster as dg

from mira_dagster.defs.ingest import raw_records
from mira_dagster.defs.reliability import dim_reliability, reliability_mask
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.scoring import student_scores, teacher_labels
from mira_dagster.defs.selection import aggregated_scores, selected_subset

PARTITIONED_ASSETS = [raw_records, teacher_labels, student_scores]
CORPUS_ASSETS = [dim_reliability, reliability_mask, aggregated_scores, selected_subset]

defs = dg.Definitions(
    assets=[*PARTITIONED_ASSETS, *CORPUS_ASSETS],
    resources={"mira": MiraResource()},
)

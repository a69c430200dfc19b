"""Source partitions: one per source in the registry ($MIRA_CONFIG or anchors/groups.yaml)."""

import dagster as dg

from mira_dagster.core.config import load_config

source_partitions = dg.StaticPartitionsDefinition(load_config().source_names())

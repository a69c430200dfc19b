"""Partitions from the registry ($MIRA_CONFIG or anchors/groups.yaml): one per source, one per group."""

import warnings

import dagster as dg

from mira_dagster.core.config import load_config

_cfg = load_config()
source_partitions = dg.StaticPartitionsDefinition(_cfg.source_names())
group_partitions = dg.StaticPartitionsDefinition(sorted(_cfg.groups))

# A group's assets read all its sources; a source's assets read its group's rubric.
source_to_group = dg.StaticPartitionMapping({s: src.group for s, src in _cfg.sources.items()})
group_to_sources = dg.StaticPartitionMapping(
    {g: [s for s, src in _cfg.sources.items() if src.group == g] for g in _cfg.groups}
)

# Backfills from the UI: one source partition per run, so one bad source fails alone and the run queue and
# the scorer pools (dagster.yaml) decide how many run at once.
ONE_PARTITION_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset` is currently in beta")

# The corpus assets (reliability, mask, aggregates, selections, report) follow their inputs: with the daemon
# running, they materialise once every source partition they read exists and something upstream changed, and
# not while an upstream run is still in progress (docs: "Operating").
FOLLOW_INPUTS = dg.AutomationCondition.eager()

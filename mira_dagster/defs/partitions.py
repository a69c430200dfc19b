"""Partitions from the registry ($MIRA_CONFIG or anchors/groups.yaml): one per source, one per group."""

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

"""Partitions: one per source (dynamic: the registry's sources and the files of its watched folders, added to the
instance by the `new_sources` sensor or by `mira run`), one per group (static, from the registry)."""

import warnings

import dagster as dg

from mira_dagster.core.config import load_config

_cfg = load_config()
source_partitions = dg.DynamicPartitionsDefinition(name="sources")
group_partitions = dg.StaticPartitionsDefinition(sorted(_cfg.groups))

# A group's assets read its sources, a source's assets read its group's rubric. Dagster has no static mapping
# between a dynamic and a static partitions definition (StaticPartitionMapping needs two static ones), so the
# dependency is declared over all partitions: a group depends on every source partition and a source on every
# group's rubric. That over-approximates what the UI marks unsynced; the assets read only their own group's data,
# and the schedule decides staleness precisely (scorer_version, input_fingerprint).
source_to_group = dg.AllPartitionMapping()
group_to_sources = dg.AllPartitionMapping()

# Backfills from the UI: one source partition per run, so one bad source fails alone and the run queue and
# the scorer pools (dagster.yaml) decide how many run at once.
ONE_PARTITION_PER_RUN = dg.BackfillPolicy.multi_run(max_partitions_per_run=1)
warnings.filterwarnings("ignore", message="Parameter `backfill_policy` of function `asset` is currently in beta")

# The corpus assets (reliability, mask, aggregates, selections, report) follow their inputs: with the daemon
# running, they materialise once every source partition they read exists and something upstream changed, and
# not while an upstream run is still in progress (docs: "Operating").
FOLLOW_INPUTS = dg.AutomationCondition.eager()


def unregistered_sources(instance: dg.DagsterInstance, names: list[str]) -> list[str]:
    """The sources among `names` that have no partition in the instance yet."""
    known = set(instance.get_dynamic_partitions(source_partitions.name))
    return [n for n in names if n not in known]


def register_sources(instance: dg.DagsterInstance, names: list[str]) -> list[str]:
    """Add the source partitions the instance does not have yet; returns the new ones."""
    new = unregistered_sources(instance, names)
    if new:
        instance.add_dynamic_partitions(source_partitions.name, new)
    return new


def in_process_instance() -> dg.DagsterInstance:
    """An ephemeral instance that knows every source partition of the registry, for in-process
    `dg.materialize` calls (tests, notebooks)."""
    instance = dg.DagsterInstance.ephemeral()
    register_sources(instance, load_config().source_names())
    return instance

"""Partitions: one per source (dynamic: the registry's sources and the files of its watched folders, added to the
instance by the `new_sources` sensor or by `mira run`), and one per scorer unit of pipeline.scorer_scope (dynamic
too: the groups by default, "global", or the sources; kept in step with the registry by the same sensor and
`mira run`)."""

import logging
import os
import warnings

import dagster as dg

from mira_dagster.core.config import ConfigError, MiraConfig, SourceConfig
from mira_dagster.settings import load_registry

source_partitions = dg.DynamicPartitionsDefinition(name="sources")
unit_partitions = dg.DynamicPartitionsDefinition(name="scorer_units")

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


def known_source(cfg: MiraConfig, key: str) -> SourceConfig:
    """A source partition's registry entry, or a step failure of one line naming the key and the registry (a key
    added to the instance by hand, in the UI, or left from an older registry)."""
    try:
        return cfg.source(key)
    except ConfigError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


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


def register_units(instance: dg.DagsterInstance, cfg: MiraConfig) -> list[str]:
    """Make the instance's scorer-unit partitions those of the registry's scope (a unit of another scope, left
    from before the scope changed, is removed: its data stays on disk under its scope's name); returns the new."""
    want = list(cfg.scorer_units())
    known = instance.get_dynamic_partitions(unit_partitions.name)
    for key in [k for k in known if k not in want]:
        instance.delete_dynamic_partition(unit_partitions.name, key)
    new = [k for k in want if k not in known]
    if new:
        instance.add_dynamic_partitions(unit_partitions.name, new)
    return new


def register_partitions(instance: dg.DagsterInstance, cfg: MiraConfig) -> None:
    """Every partition the registry implies: its sources and its scope's scorer units."""
    register_sources(instance, cfg.source_names())
    register_units(instance, cfg)


def register_partitions_on_load() -> None:
    """When Dagster loads the code location with a persistent instance (DAGSTER_HOME set: `dagster dev`, its
    daemon, `dagster asset materialize`, ...), add the registry's partitions to it, as `new_sources` would at its
    next tick (the sensor still requests the runs). Run workers reload the definitions too and register again:
    adding partitions the instance has is a no-op (register_sources adds only new keys), and Dagster's public API
    does not say which kind of load this is. A failure (a broken registry, a locked database) is a warning, never
    a failed load."""
    if not os.environ.get("DAGSTER_HOME"):
        return
    try:
        with dg.DagsterInstance.get() as instance:
            register_partitions(instance, load_registry())
    except Exception as exc:
        logging.getLogger("dagster").warning(f"mira: the registry's partitions were not added at load: {exc}")


def in_process_instance(cfg: MiraConfig | None = None) -> dg.DagsterInstance:
    """An ephemeral instance that knows every source and scorer-unit partition of the registry (default: the
    configured one), for in-process `dg.materialize` calls (tests, notebooks)."""
    instance = dg.DagsterInstance.ephemeral()
    register_partitions(instance, cfg or load_registry())
    return instance

"""Sources that have data in the store but not in the registry: found (so that no selection loses them silently) and
removed (`mira forget-source`).

A source leaves the registry, or a run uses another registry, while its ingested and scored rows stay in the store's
tables. The corpus assets stop at such a source (pipeline.unregistered_sources: fail) naming it and the command that
removes its data, or leave it out and say so (drop). `forget_sources` removes a source's partitions and rows from every
table under MIRA_HOME/tables (or the store URL) and refreshes the catalogue. The reply cache is left alone: it is keyed
by (record_id, scorer_version), holds no source name, and a source registered again costs nothing for what was answered.
Exports are rewritten by the next corpus run.
"""

from __future__ import annotations

from collections.abc import Collection

import polars as pl

from mira_dagster.core.config import MiraConfig
from mira_dagster.io.store import UNPARTITIONED, Store

# Tables with one partition per source, named by it.
SOURCE_PARTITIONED = ("raw_records", "quarantine", "teacher_labels", "student_scores", "table_schemas")
# The tables whose sources count as "data in the store": what was ingested or scored.
DATA_TABLES = ("raw_records", "teacher_labels", "student_scores")


def stored_sources(store: Store) -> set[str]:
    """Every source with rows in raw_records, teacher_labels or student_scores."""
    present = [t for t in DATA_TABLES if t in store.tables()]
    if not present:
        return set()
    sql = " UNION ".join(f"SELECT DISTINCT source FROM {t}" for t in present)
    return set(store.query_sql(sql)["source"].to_list())


def unregistered_sources(cfg: MiraConfig, store: Store) -> list[str]:
    """The sources with data in the store that the registry does not have, sorted."""
    return sorted(stored_sources(store) - set(cfg.sources))


def forget_command(names: Collection[str]) -> str:
    return "mira forget-source " + " ".join(sorted(names))


def unregistered_message(cfg: MiraConfig, names: Collection[str]) -> str:
    """One line: which sources, which registry, and the two ways out."""
    return (
        f"sources with data in the store that the registry {cfg.path} does not have: {', '.join(sorted(names))}; "
        f"remove their data with `{forget_command(names)}`, or set pipeline.unregistered_sources: drop to leave "
        "them out of the selection"
    )


def forget_sources(store: Store, names: Collection[str]) -> list[str]:
    """Remove the sources' partitions and rows from every table; one line per table changed, saying what went."""
    wanted = set(names)
    done: list[str] = []
    for table in store.tables():
        for partition in store.partitions(table):
            if table in SOURCE_PARTITIONED:
                if partition in wanted:
                    rows = store.read(table, partition).height
                    store.remove(table, partition)
                    done.append(f"{table}: partition {partition} removed ({rows} rows)")
                continue
            df = store.read(table, None if partition == UNPARTITIONED else partition)
            if "source" not in df.columns:
                continue
            kept = df.filter(~pl.col("source").is_in(sorted(wanted)))
            if kept.height == df.height:
                continue
            store.write(table, kept, None if partition == UNPARTITIONED else partition)
            where = "" if partition == UNPARTITIONED else f" partition {partition}"
            done.append(f"{table}{where}: {df.height - kept.height} rows removed")
    store.refresh_catalog()
    return done

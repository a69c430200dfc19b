"""Automation: a sensor that adds a partition (and a run) for every new source, a schedule that re-runs the
source partitions that are missing or stale, and the corpus assets following their inputs by declarative
automation (AutomationCondition.eager on the corpus assets).

What is stale is defined once, in defs/freshness.py, for the schedule and `mira run` alike: a source whose files,
registry entry or ingest code changed, whose scorer_version changed, whose last scoring failed a check or left
records without a reply. Re-running a partition whose content did not change costs no request: replies are cached
by (record_id, scorer_version).
"""

from __future__ import annotations

import json

import dagster as dg

from mira_dagster.defs.freshness import Staleness, ingest_reason, scorer_versions, scoring_reason
from mira_dagster.defs.ingest import raw_records
from mira_dagster.defs.partitions import source_partitions, unit_partitions, unregistered_sources
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.scoring import student_scores, teacher_labels
from mira_dagster.settings import DEPLOY_VARS, Deployment

SCORER_GROUP_TAG = "mira/scorer_group"


def _scorer_group_tag(source: str) -> dict[str, str]:
    """Each run of a source carries its scorer unit (the group by default), which dagster.yaml limits per value
    (one endpoint group)."""
    cfg = MiraResource().config()  # the cached registry, reloaded only when it or a watched folder changes
    return {SCORER_GROUP_TAG: cfg.unit_of(source).key} if source in cfg.sources else {}


def executor_from_settings() -> dg.ExecutorDefinition | None:
    """The code location's executor, for refresh_sources and every run launched from the UI or the CLI (asset
    backfills too): Dagster's default (multiprocess: the steps in subprocesses of the run's process) unless
    MIRA_EXECUTOR=celery: then dagster-celery's, every step a task on the broker MIRA_CELERY_BROKER for the workers
    of `celery -A mira_dagster.worker worker` on any machine (mira_dagster/worker.py). Read when the code location
    loads (never at import); the broker's URL is resolved from the environment when a run starts: it is never in a
    job's config or the UI."""
    if Deployment.from_env().executor != "celery":
        return None
    from dagster_celery import celery_executor

    from mira_dagster.worker import celery_config

    broker = {"env": DEPLOY_VARS["celery_broker"]}
    return celery_executor.configured({"broker": broker, "backend": broker, "config_source": celery_config()})


refresh_sources_job = dg.define_asset_job(
    "refresh_sources",
    selection=dg.AssetSelection.assets(raw_records, teacher_labels, student_scores),
    config=dg.PartitionedConfig(
        partitions_def=source_partitions,
        run_config_for_partition_key_fn=lambda _key: {},
        tags_for_partition_key_fn=_scorer_group_tag,
    ),
    description=(
        "Ingest and score one source partition (raw_records, teacher_labels, student_scores). Its runs carry "
        f"the tag {SCORER_GROUP_TAG}=<group>, limited per group in dagster.yaml: backfill this job to cap the "
        "partitions sent to each group's scorers at once."
    ),
)


def stale_sources(instance: dg.DagsterInstance, mira: MiraResource) -> list[Staleness]:
    """Every source partition that was never materialised or whose inputs or scorer changed, with why."""
    cfg = mira.config()
    versions: dict[str, dict[str, str]] = {}
    out = []
    for source in cfg.source_names():
        reason = ingest_reason(instance, cfg, source)
        if reason is None:
            unit = cfg.unit_of(source).key
            if unit not in versions:  # building a scorer probes its endpoints: once per unit and tick
                versions[unit] = scorer_versions(mira, unit)
            reason = scoring_reason(instance, source, versions[unit])
        if reason is not None:
            out.append(Staleness(source, reason))
    return out


def in_flight_partitions(instance: dg.DagsterInstance) -> set[str]:
    """Source partitions with a run of refresh_sources queued or running."""
    runs = instance.get_runs(
        filters=dg.RunsFilter(
            job_name=refresh_sources_job.name,
            statuses=[
                dg.DagsterRunStatus.QUEUED,
                dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING,
                dg.DagsterRunStatus.STARTED,
            ],
        )
    )
    return {r.tags["dagster/partition"] for r in runs if "dagster/partition" in r.tags}


@dg.schedule(
    job=refresh_sources_job,
    cron_schedule="0 * * * *",
    description=(
        "Hourly: run every source partition that is missing or stale (input files changed, or a scorer_version "
        "changed). Partitions already queued or running are not requested twice."
    ),
)
def refresh_stale_sources(
    context: dg.ScheduleEvaluationContext, mira: MiraResource
) -> dg.SkipReason | list[dg.RunRequest]:
    return stale_run_requests(context.instance, mira)


def stale_run_requests(instance: dg.DagsterInstance, mira: MiraResource) -> dg.SkipReason | list[dg.RunRequest]:
    """One run request per missing or stale source partition not already queued or running."""
    busy = in_flight_partitions(instance)
    stale = [s for s in stale_sources(instance, mira) if s.source not in busy]
    if not stale:
        return dg.SkipReason("every source partition is up to date")
    # no run_key: a partition whose run failed is asked for again at the next tick; one still queued or
    # running is not (in_flight_partitions)
    return [dg.RunRequest(partition_key=s.source, tags={"mira/stale_reason": s.reason}) for s in stale]


def new_source_result(
    instance: dg.DagsterInstance, mira: MiraResource, seen: set[str] | None = None
) -> dg.SensorResult | dg.SkipReason:
    """Partitions for the registry's sources and watched files that the instance does not have yet, and a
    refresh_sources run for each; the scorer-unit partitions brought in step with pipeline.scorer_scope.

    `seen`: the sources the sensor knew at its last tick (its cursor; None before its first). Loading the code
    location registers the registry's sources (register_partitions_on_load), so a source can have a partition
    before the sensor sees it: one the sensor has not seen and that never had a run nor a materialisation is new too.
    At the first tick, that holds on a fresh instance (no run yet) only: on an instance with runs, the sources it
    already has are not new (`mira run --source a` then `dagster dev` must not start the other sources' runs)."""
    cfg = mira.config()
    names = cfg.source_names()
    unregistered = unregistered_sources(instance, names)
    if seen is None:
        seen = set() if not instance.get_run_records(limit=1) else set(names) - set(unregistered)
    unseen = [s for s in names if s not in unregistered and s not in seen]
    new = sorted({*unregistered, *never_run(instance, unseen)})
    known_units = instance.get_dynamic_partitions(unit_partitions.name)
    units = list(cfg.scorer_units())
    add_units = [u for u in units if u not in known_units]
    drop_units = [u for u in known_units if u not in units]
    rejected = "; ".join(cfg.rejected_files)
    if not new and not add_units and not drop_units:
        return dg.SkipReason("no new source" + (f"; not usable as sources: {rejected}" if rejected else ""))
    requests: list = [source_partitions.build_add_request(unregistered)] if unregistered else []
    if add_units:
        requests.append(unit_partitions.build_add_request(add_units))
    if drop_units:
        requests.append(unit_partitions.build_delete_request(drop_units))
    return dg.SensorResult(
        dynamic_partitions_requests=requests,
        run_requests=[dg.RunRequest(partition_key=s, tags={"mira/reason": "new source"}) for s in new],
    )


def never_run(instance: dg.DagsterInstance, sources: list[str]) -> list[str]:
    """The sources among `sources` with no run tagged with their partition and no raw_records materialisation."""
    if not sources:
        return []
    tagged = {v for _key, values in instance.get_run_tags(tag_keys=["dagster/partition"]) for v in values}
    done = instance.get_materialized_partitions(raw_records.key)
    return [s for s in sources if s not in tagged and s not in done]


@dg.sensor(
    job=refresh_sources_job,
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Adds a source partition for every source of the registry and every supported file of a watched folder "
        "(`watch:` in the registry) that has none yet, and requests its refresh_sources run. Files that cannot be "
        "sources (bad name, name taken) are named in the tick's skip reason."
    ),
)
def new_sources(context: dg.SensorEvaluationContext, mira: MiraResource) -> dg.SensorResult | dg.SkipReason:
    seen = set(json.loads(context.cursor)) if context.cursor else None
    result = new_source_result(context.instance, mira, seen)
    context.update_cursor(json.dumps(mira.config().source_names()))  # what this tick saw
    return result


# Declarative automation is evaluated by this sensor, which Dagster otherwise adds stopped: running by default, so
# that the corpus assets (AutomationCondition.eager) follow a backfill or the schedule without a click in the UI.
follow_inputs = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Evaluates the automation conditions: the corpus assets (dim_reliability to selection_report) run once "
        "after their inputs changed, when every source partition exists and no upstream run or backfill is in "
        "progress."
    ),
)

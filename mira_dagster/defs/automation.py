"""Automation: what is stale decides what runs, for the daemon and `mira run` alike (defs/freshness.py, the one
definition). Every asset carries the automation condition FOLLOW_INPUTS (defs/conditions.py): it is requested when it
is stale and nothing upstream of it is stale, queued or in progress. The automation condition sensor evaluates it in
the code server (the condition is Python: use_user_code_server) every few seconds; `mira run` without a daemon
evaluates the same conditions in its own process (local_run.py). A sensor adds a partition for every new source
(the condition then requests its runs).

Re-running a partition whose content did not change costs no request: replies are cached by (record_id,
scorer_version).
"""

from __future__ import annotations

import warnings

import dagster as dg

from mira_dagster.defs.conditions import SCORER_GROUP_TAG
from mira_dagster.defs.ingest import raw_records
from mira_dagster.defs.partitions import source_partitions, unit_partitions, unregistered_sources
from mira_dagster.defs.resources import MiraResource
from mira_dagster.defs.scoring import student_scores, teacher_labels
from mira_dagster.settings import DEPLOY_VARS, Deployment


def _scorer_group_tag(source: str) -> dict[str, str]:
    """Each run of a source carries its scorer unit (the group by default), which dagster.yaml limits per value
    (one endpoint group)."""
    cfg = MiraResource().config()  # the cached registry, reloaded only when it or a watched folder changes
    return {SCORER_GROUP_TAG: cfg.unit_of(source).key} if source in cfg.sources else {}


def executor_from_settings() -> dg.ExecutorDefinition | None:
    """The code location's executor, for refresh_sources and every run launched from the UI or the CLI (asset
    backfills too): Dagster's default (multiprocess: the steps in subprocesses of the run's process, so a source's
    teacher and student steps send at once), or with MIRA_EXECUTOR=in_process every step in the run's own process
    (one import of the code instead of one per step: on a small corpus most of a run), or with MIRA_EXECUTOR=celery
    dagster-celery's, every step a task on the broker MIRA_CELERY_BROKER for the workers
    of `celery -A mira_dagster.worker worker` on any machine (mira_dagster/worker.py). Read when the code location
    loads (never at import); the broker's URL is resolved from the environment when a run starts: it is never in a
    job's config or the UI."""
    executor = Deployment.from_env().executor
    if executor == "in_process":
        return dg.in_process_executor
    if executor != "celery":
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


def new_source_result(instance: dg.DagsterInstance, mira: MiraResource) -> dg.SensorResult | dg.SkipReason:
    """Partitions for the registry's sources and watched files that the instance does not have yet, and the
    scorer-unit partitions brought in step with pipeline.scorer_scope. Their runs are the automation condition's to
    request (a new partition is never materialised: stale)."""
    cfg = mira.config()
    unregistered = unregistered_sources(instance, cfg.source_names())
    known_units = instance.get_dynamic_partitions(unit_partitions.name)
    units = list(cfg.scorer_units())
    add_units = [u for u in units if u not in known_units]
    drop_units = [u for u in known_units if u not in units]
    rejected = "; ".join(cfg.rejected_files)
    if not unregistered and not add_units and not drop_units:
        return dg.SkipReason("no new source" + (f"; not usable as sources: {rejected}" if rejected else ""))
    requests: list = [source_partitions.build_add_request(unregistered)] if unregistered else []
    if add_units:
        requests.append(unit_partitions.build_add_request(add_units))
    if drop_units:
        requests.append(unit_partitions.build_delete_request(drop_units))
    return dg.SensorResult(dynamic_partitions_requests=requests)


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
    return new_source_result(context.instance, mira)


warnings.filterwarnings("ignore", message="Parameter `use_user_code_server`")
# The automation conditions (defs/conditions.py) are Python: evaluated in the code server, every few seconds, running
# by default so that a new or changed source is followed through to the selection without a click in the UI. Runs,
# not backfills: each goes through the run queue and the pools of dagster.yaml.
follow_inputs = dg.AutomationConditionSensorDefinition(
    "default_automation_condition_sensor",
    target=dg.AssetSelection.all(),
    default_status=dg.DefaultSensorStatus.RUNNING,
    use_user_code_server=True,
    # every loop of Dagster's sensor daemon (at least 5 s apart): a stage follows the one before without a lost loop
    minimum_interval_seconds=1,
    emit_backfills=False,
    description=(
        "Evaluates the automation conditions (defs/conditions.py): every stale asset partition runs once nothing "
        "upstream of it is stale, queued or running; the corpus assets (dim_reliability to selection_report) as one "
        "run after the last source run."
    ),
)

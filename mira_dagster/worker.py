"""The Celery worker of the distributed executor: `celery -A mira_dagster.worker worker` on any machine.

With `MIRA_EXECUTOR=celery`, refresh_sources (defs/automation.py) runs through dagster-celery's `celery_executor`:
its run process sends every step (raw_records, teacher_labels, student_scores of the partition) as a task to the
broker `MIRA_CELERY_BROKER` (Redis) and waits for the results; any worker started with this module takes the task,
loads the code location and executes the step against the same Dagster instance (`MIRA_DAGSTER_PG_URL`). A worker
needs the run's environment: the registry (`MIRA_CONFIG`), `MIRA_HOME` (or the store URL) and the endpoints. Pools
(`student`, `teacher`) are claimed in the instance, so they hold across workers and machines.

    celery -A mira_dagster.worker worker -n w1@%h --concurrency 1 --prefetch-multiplier 1

The app is dagster-celery's (`dagster_celery.app`: its queue `dagster`, its three tasks), configured from the
settings rather than a `dagster_celery_config` module. A task is acknowledged only when its step has finished
(`task_acks_late`, `task_reject_on_worker_lost`): the step of a worker that died goes to another worker, at once when
the pool process was killed, after the broker's visibility timeout when the whole worker vanished. That timeout
(VISIBILITY_TIMEOUT_S) must exceed the longest step: a step still running past it is handed out a second time.
"""

from __future__ import annotations

import os
from typing import Any

VISIBILITY_TIMEOUT_S = 6 * 3600


def celery_config(visibility_timeout_s: int = VISIBILITY_TIMEOUT_S) -> dict[str, Any]:
    """Celery settings shared by the executor (its `config_source`) and the workers; the broker comes apart."""
    return {
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "broker_transport_options": {"visibility_timeout": visibility_timeout_s},
    }


def make_worker_app() -> Any:
    """dagster-celery's app and tasks on the broker of the settings, for `celery -A mira_dagster.worker`."""
    from dagster_celery.make_app import make_app
    from dagster_celery.tasks import create_execute_job_task, create_resume_job_task, create_task

    from mira_dagster.core.config import ConfigError
    from mira_dagster.instance import use_postgres
    from mira_dagster.settings import DEPLOY_VARS, Deployment

    deploy = Deployment.from_env()
    if deploy.celery_broker is None:
        raise ConfigError("a Celery worker needs MIRA_CELERY_BROKER, the broker the runs send their steps to")
    use_postgres()  # the instance's URL with its driver, as the run process has it
    if deploy.executor != "celery":  # the code location this worker loads must define the job the run has
        os.environ[DEPLOY_VARS["executor"]] = "celery"
    broker = deploy.celery_broker.get_secret_value()
    app = make_app({"broker": broker, "backend": broker, "config_source": celery_config()})
    create_task(app)
    create_execute_job_task(app)
    create_resume_job_task(app)
    return app


_app: Any = None


def __getattr__(name: str) -> Any:
    """`app` (what `celery -A mira_dagster.worker` looks up), made when first asked for: importing this module for
    celery_config() starts nothing."""
    global _app
    if name != "app":
        raise AttributeError(name)
    if _app is None:
        _app = make_worker_app()
    return _app

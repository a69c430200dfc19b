"""A toy code location for the executor tests. `left` and `right` are independent partitioned assets in one pool,
so that one run has two steps the Celery workers can take at once; `slow` waits long enough for its worker to be
killed. Each step writes which worker ran it (MIRA_WORKER_NAME, set per worker by servers.celery_workers) under
MIRA_TOY_OUT. Loaded by the test process and by the workers (PYTHONPATH = the checkout)."""

import os
import socket
import time
from pathlib import Path

import dagster as dg

parts = dg.StaticPartitionsDefinition(["p1", "p2"])


def _out() -> Path:
    out = Path(os.environ["MIRA_TOY_OUT"])
    out.mkdir(parents=True, exist_ok=True)
    return out


def _worker() -> str:
    return os.environ.get("MIRA_WORKER_NAME", socket.gethostname())


def _record(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Writes `<asset>-<partition>`: the worker, and when the step started and ended (time.time())."""
    start = time.time()
    time.sleep(float(os.environ.get("MIRA_TOY_SLEEP", "1")))
    name = f"{context.asset_key.to_user_string()}-{context.partition_key}"
    (_out() / name).write_text(f"{_worker()} {start} {time.time()}")
    return dg.MaterializeResult(metadata={"worker": _worker()})


@dg.asset(partitions_def=parts, pool="toy")
def left(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return _record(context)


@dg.asset(partitions_def=parts, pool="toy")
def right(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    return _record(context)


@dg.asset(partitions_def=parts)
def slow(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
    """Writes `<worker>.started`, then waits MIRA_TOY_SLOW seconds: long enough to kill its worker."""
    (_out() / f"{_worker()}.started").write_text(context.run_id)
    time.sleep(float(os.environ.get("MIRA_TOY_SLOW", "20")))
    (_out() / f"slow-{context.partition_key}").write_text(_worker())
    return dg.MaterializeResult(metadata={"worker": _worker()})


def _executor() -> dg.ExecutorDefinition:
    from dagster_celery import celery_executor

    from tests.distributed.servers import celery_settings

    broker = os.environ["MIRA_CELERY_BROKER"]
    settings = celery_settings(broker, int(os.environ.get("MIRA_CELERY_VISIBILITY_S", "3600")))
    source = {k: v for k, v in settings.items() if k not in ("broker_url", "result_backend")}
    return celery_executor.configured({"broker": broker, "backend": broker, "config_source": source})


@dg.definitions
def defs() -> dg.Definitions:
    executor = _executor()
    return dg.Definitions(
        assets=[left, right, slow],
        jobs=[
            dg.define_asset_job("toy_celery", selection=[left, right], executor_def=executor),
            dg.define_asset_job("toy_slow", selection=[slow], executor_def=executor),
        ],
    )


def job(name: str) -> dg.JobDefinition:
    """One job of `defs`, for `dg.build_reconstructable_job`: how the test process and the workers rebuild it."""
    return defs().resolve_job_def(name)

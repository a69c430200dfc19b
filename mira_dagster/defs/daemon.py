"""Whether the project's Dagster daemon is running, said when Dagster loads the code location: a backfill (`dagster
job backfill ...`), a queued run, a sensor or a schedule of this instance waits for the daemon, and Dagster's CLI
queues them without a word. Loading is the one point of such a command where the project's code runs."""

import logging
import os
import time

import dagster as dg

# The daemon writes a heartbeat every 30 s (Dagster 1.13); one older than this means no daemon is running.
HEARTBEAT_STALE_SECONDS = 120.0
# the line also shows once while a daemon starts (`dagster-daemon run`, `dagster dev` load the code location before
# their first heartbeat; measured with 1.13.27), so it says so rather than claim what it cannot know
DAEMON_HINT = (
    "start it with `dagster-daemon run` (or `dagster dev`) in the project folder (ignore this while one starts)"
)
# a run's own processes load the definitions again: they are quiet while a run of the instance is in progress
IN_PROGRESS = [dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]

_warned: set[str] = set()  # the instances this process has warned about (Dagster loads the definitions repeatedly)


def daemon_running(instance: dg.DagsterInstance, now: float | None = None) -> bool:
    """True when any of the instance's daemons wrote a heartbeat in the last HEARTBEAT_STALE_SECONDS."""
    beats = instance.get_daemon_heartbeats().values()
    newest = max((beat.timestamp for beat in beats), default=None)
    return newest is not None and (time.time() if now is None else now) - newest <= HEARTBEAT_STALE_SECONDS


def daemon_warning_text(home: str) -> str:
    """The line itself: what waits, and how to start the daemon."""
    return f"mira: no Dagster daemon is running on {home}: backfills, queued runs, sensors wait for it; {DAEMON_HINT}"


def daemon_warning(instance: dg.DagsterInstance, home: str) -> str | None:
    """The line to log when no daemon runs on the instance and none of its runs is in progress, else None."""
    if daemon_running(instance) or instance.get_runs_count(dg.RunsFilter(statuses=IN_PROGRESS)):
        return None
    return daemon_warning_text(home)


def warn_without_daemon_on_load() -> None:
    """With a persistent instance (DAGSTER_HOME set) and no daemon on it, one warning line per process naming the
    instance and how to start the daemon, so that a CLI backfill does not wait silently. Never fails the load."""
    home = os.environ.get("DAGSTER_HOME")
    if not home or home in _warned:
        return
    _warned.add(home)
    logger = logging.getLogger("dagster")
    try:
        with dg.DagsterInstance.get() as instance:
            line = daemon_warning(instance, home)
    except Exception as exc:
        logger.warning(f"mira: the Dagster daemon's heartbeat in {home} could not be read: {exc}")
        return
    if line:
        logger.warning(line)

"""`mira run` on an instance whose Dagster daemon is running: the daemon alone runs the work. Its automation sensor
evaluates the automation conditions (defs/conditions.py) and its runs go through the run queue, the pools and the
per-group limits of dagster.yaml. `mira run` records what the user asked (retry incomplete work, `--force`) as a
request the conditions read (defs/freshness.py), then follows the instance's runs until nothing in flight is left
and nothing is stale, and says what ran and what failed. It launches nothing itself, so two orchestrators never
race over one instance."""

from __future__ import annotations

import datetime
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mira_dagster.defs.conditions import failed_upstream
from mira_dagster.defs.freshness import IN_FLIGHT, Evaluation, record_request, run_assets

POLL_SECONDS = 2.0
# the automation sensor ticks every 5 s; with nothing in flight and nothing launched for this long while something
# stale is not held back by a failure, the daemon is not doing the work (sensor stopped, code location broken)
IDLE_SECONDS = 90.0
EVALUATE_SECONDS = 10.0  # how often, with no run ending, to ask again what is stale while waiting for the daemon
DONE = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}


@dataclass
class RunEvents:
    """A finished run's check evaluations and step failures, read from the event log, shaped as an in-process
    run's result so that cli.failure_lines / warning_lines read both."""

    run_id: str
    checks: list[Any] = field(default_factory=list)
    failures: list[Any] = field(default_factory=list)

    @classmethod
    def read(cls, instance: dg.DagsterInstance, run_id: str) -> RunEvents:
        kinds = {dg.DagsterEventType.ASSET_CHECK_EVALUATION, dg.DagsterEventType.STEP_FAILURE}
        out = cls(run_id)
        for entry in instance.all_logs(run_id, of_type=kinds):
            event = entry.dagster_event
            if event is None:
                continue
            if event.event_type == dg.DagsterEventType.STEP_FAILURE:
                out.failures.append(event)
            else:
                out.checks.append(event.event_specific_data)
        return out

    def get_asset_check_evaluations(self) -> list[Any]:
        return self.checks

    def get_step_failure_events(self) -> list[Any]:
        return self.failures


START_SECONDS = 180.0  # a daemon's first heartbeat (it loads the code location first): 20-60 s measured here


def start_daemon(instance: dg.DagsterInstance, home: Path) -> str:
    """Start `dagster-daemon run` for this instance, detached (its own session: it outlives this command and keeps
    following the inputs), logging to <DAGSTER_HOME>/daemon.log, its pid in daemon.pid; wait for its heartbeat.
    Returns the line that says how to stop it. Raises RuntimeError naming the log when it does not come up."""
    from mira_dagster.defs.daemon import daemon_running

    log = home / "daemon.log"
    exe = Path(sys.executable).parent / "dagster-daemon"
    with log.open("ab") as sink:
        proc = subprocess.Popen(
            [str(exe), "run", "-m", "mira_dagster.definitions"],
            stdout=sink,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    (home / "daemon.pid").write_text(f"{proc.pid}\n")
    deadline = time.monotonic() + START_SECONDS
    while not daemon_running(instance):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the Dagster daemon did not start (exit code {proc.poll()}); see {log}")
        time.sleep(POLL_SECONDS)
    return f"started the Dagster daemon (pid {proc.pid}, log {log}); it keeps running: `kill {proc.pid}` stops it"


def stage_of(run: dg.DagsterRun, stages: list[tuple[str, tuple[str, ...], str]]) -> str:
    """The `mira run` stage a run belongs to: the first stage holding one of its assets."""
    chosen = run_assets(run) or frozenset()
    return next((name for name, assets, _ in stages if chosen & set(assets)), run.job_name)


def where(run: dg.DagsterRun, stage: str) -> str:
    return run.tags.get("dagster/partition") or stage


def pending(ev: Evaluation, stages: list[tuple[str, tuple[str, ...], str]]) -> list[tuple[str, str, str | None]]:
    """What the daemon still has to run: (asset, why, the failed run upstream that holds it back, if any)."""
    out = []
    for _, assets, _ in stages:
        for asset in assets:
            for partition in ev.partitions(asset):
                if (why := ev.reason(asset, partition)) is not None:
                    label = f"{asset}[{partition}]" if partition else asset
                    out.append((label, why, failed_upstream(ev, asset)))
    return out


def follow(
    instance: dg.DagsterInstance,
    mira: Any,
    stages: list[tuple[str, tuple[str, ...], str]],
    sources: list[str] | None,
    force: bool,
    verbose: bool,
) -> tuple[int, list[str], list[str]]:
    """Ask the daemon (retry; rerun all with `force`; for `sources`, None: all), then follow its runs until the
    work is done or held back by a failure. Returns (runs that ended, failure lines, warning lines)."""
    from mira_dagster.cli import failure_lines, release_dead_runs, warning_lines

    request = record_request(instance, force, sources)
    # SQLite keeps a run's creation time in whole seconds: look a little earlier, then leave out what ended before
    since = datetime.datetime.fromtimestamp(request.timestamp - 2, tz=datetime.UTC)
    print(
        "mira: the Dagster daemon of this instance runs the work (run queue, pools and limits of dagster.yaml); "
        f"asked it to retry incomplete work{' and rerun every step' if force else ''}, following its runs",
        flush=True,
    )
    watched = {r.dagster_run.run_id for r in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT))}
    ended: dict[str, str] = {}  # run id -> stage
    per_stage: Counter[str] = Counter()
    failed_stage: Counter[str] = Counter()
    failures: list[str] = []
    warnings: list[str] = []
    printed: set[str] = set()
    last_activity = time.monotonic()
    order = [name for name, _, _ in stages]
    todo: list[tuple[str, str, str | None]] | None = None
    ended_at_check, checked = 0, 0.0
    while True:
        for run_id in release_dead_runs(instance):  # a worker that died leaves its run "started" for ever
            print(f"mira: run {run_id} is marked failed and its pool slots freed: its process is gone", flush=True)
        records = list(instance.get_run_records(dg.RunsFilter(created_after=since)))
        if watched:
            records += instance.get_run_records(dg.RunsFilter(run_ids=sorted(watched)))
        in_flight = False
        for record in records:
            run = record.dagster_run
            if run.status not in DONE:
                in_flight = True
                continue
            if run.run_id in ended:
                continue
            if run.run_id not in watched and (record.end_time or 0.0) < request.timestamp:
                ended[run.run_id] = "before"  # a run that ended before the request: not this command's
                continue
            stage = stage_of(run, stages)
            ended[run.run_id] = stage
            per_stage[stage] += 1
            last_activity = time.monotonic()
            events = RunEvents.read(instance, run.run_id)
            warnings += warning_lines(events, where(run, stage))
            ok = run.status == dg.DagsterRunStatus.SUCCESS
            if not ok:
                failed_stage[stage] += 1
                failures += failure_lines(events, where(run, stage))
            if verbose:
                status = "ok" if ok else run.status.value.lower()
                print(f"[{stage}] {where(run, stage)}: run {run.run_id[:8]} {status}", flush=True)
        if in_flight:
            last_activity = time.monotonic()
        else:
            # what is stale changes only when a run ends (or an input does): asked again then, or every EVALUATE_SECONDS
            if todo is None or len(ended) != ended_at_check or time.monotonic() - checked > EVALUATE_SECONDS:
                todo, ended_at_check, checked = (
                    pending(Evaluation(instance, mira, retry=False), stages),
                    len(ended),
                    time.monotonic(),
                )
            if not todo or (failures and all(held for *_, held in todo)):
                break
            if time.monotonic() - last_activity > IDLE_SECONDS:
                label, why, held = todo[0]
                beat = max((b.timestamp for b in instance.get_daemon_heartbeats().values()), default=0.0)
                failures.append(
                    f"the daemon launched nothing for {IDLE_SECONDS:.0f} s while {label} is stale ({held or why}); "
                    f"its last heartbeat was {time.time() - beat:.0f} s ago: is it running, with its "
                    "default_automation_condition_sensor on (`dagster sensor list`)?"
                )
                break
        # a stage's line once a later stage has runs, or at the end
        latest = max((order.index(s) for s in per_stage if s in order), default=-1)
        for stage in order[:latest]:
            if per_stage[stage] and stage not in printed and not verbose:
                printed.add(stage)
                _stage_line(stage, per_stage[stage], failed_stage[stage])
        time.sleep(POLL_SECONDS)
    for stage in order:
        if per_stage[stage] and stage not in printed and not verbose:
            _stage_line(stage, per_stage[stage], failed_stage[stage])
    return sum(stage != "before" for stage in ended.values()), failures, warnings


def _stage_line(stage: str, runs: int, failed: int) -> None:
    status = f"{failed} failure(s)" if failed else "ok"
    print(f"{stage}: {runs} {'run' if runs == 1 else 'runs'} by the daemon, {status}", flush=True)
    sys.stdout.flush()

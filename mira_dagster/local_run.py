"""`mira run` on an instance without a running daemon: what the daemon's automation sensor would do, tick by tick,
in this process. Dagster's own evaluator (`dg.evaluate_automation_conditions`) evaluates the automation conditions
of defs/conditions.py, as the sensor does; each partition it requests runs here (`dg.materialize`), then the
conditions are evaluated again, until they request nothing. So what runs is decided in one place, the conditions,
with or without a daemon; `--source` scopes them to those sources (freshness.local)."""

from __future__ import annotations

import datetime
import os
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import dagster as dg

from mira_dagster.defs.conditions import last_evaluation
from mira_dagster.defs.freshness import IN_FLIGHT, UNIT_ASSETS, Evaluation, latest, local, run_assets

warnings.filterwarnings("ignore", message="Parameter `include_sources`")  # Dagster's evaluator, about itself

# a guard, not a limit: the conditions request each partition once per command (retry and force count once); a
# partition asked for again after it succeeded here means they disagree with themselves, and the command stops
MAX_TICKS = 200
WAIT_SECONDS = 2.0  # with runs of another process in flight upstream (a second machine): how often to look again
PAID = ("teacher_judgments", "teacher_labels", "student_scores")
# A `mira run` tags its runs with a heartbeat every HEARTBEAT_S seconds; a waiting `mira run` on another machine
# that sees a run's heartbeat unchanged for SILENT_BEATS beats (its own clock: no clock skew between machines)
# takes that run's process for dead, marks the run failed and goes on (the conditions retry it)
HEARTBEAT_TAG = "mira/heartbeat"
HEARTBEAT_EVERY_TAG = "mira/heartbeat_s"  # on a run from its start: it beats, and how often
HEARTBEAT_S = 30.0
SILENT_BEATS = 10
# runs of another process that are executing (a queued run waits for a daemon that is not running: not waited for)
RUNNING = (dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING)


@dataclass
class Step:
    """One run the conditions asked for: a partition (None: unpartitioned) and its requested assets, in stage order."""

    stage: str
    partition: str | None
    assets: list[str]
    where: str
    why: str


@dataclass
class Outcome:
    """What the runs of one command did: how many ran, the failure and warning lines."""

    ran: int = 0
    steps: set[tuple[str, str | None]] = field(default_factory=set)  # (stage, partition) of every run
    failures: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stopped: str | None = None  # why the command stopped before the conditions were done (refused cost, a bug)


def executing(run: dg.DagsterRun) -> bool:
    """Whether a run is executing or about to: a `mira run` process creates its run not started, then starts it
    (a run created and never launched, as one queued for a daemon that is not running, is not)."""
    return run.status in RUNNING or (
        run.status == dg.DagsterRunStatus.NOT_STARTED and run.tags.get("mira/entry") == "mira run"
    )


def downstream_of(asset: str) -> list[str]:
    """Every asset that reads `asset`, directly or not (the code location's graph)."""
    from mira_dagster.definitions import ALL_ASSETS
    from mira_dagster.defs.conditions import upstream_of

    return [k.to_user_string() for a in ALL_ASSETS for k in a.keys if asset in upstream_of(k.to_user_string())]


def stale_in_scope(ev: Evaluation, stages: list[tuple[str, tuple[str, ...], str]]) -> bool:
    """Whether anything this command covers is still stale (what a run of another process may be holding back)."""
    return any(ev.reason(a, p) is not None for _, assets, _ in stages for a in assets for p in ev.partitions(a))


def requested_steps(result: Any, stages: list[tuple[str, tuple[str, ...], str]], ev: Evaluation) -> list[Step]:
    """The runs of one evaluation, as the sensor builds them: per partition, the assets requested for it (the corpus
    block as one), ordered by stage."""
    order = {a: (i, j) for i, (_, assets, _) in enumerate(stages) for j, a in enumerate(assets)}
    stage_of = {a: name for name, assets, _ in stages for a in assets}
    by_partition: dict[tuple[bool, str | None], list[str]] = {}
    for asset in order:
        key = dg.AssetKey(asset)
        if not result.get_num_requested(key):
            continue
        partitions = result.get_requested_partitions(key)
        for partition in sorted(p for p in partitions if p is not None) or [None]:
            by_partition.setdefault((asset in UNIT_ASSETS, partition), []).append(asset)
    steps = []
    scope = ev.cfg.pipeline.scorer_scope
    for (unit, partition), assets in by_partition.items():
        assets.sort(key=order.__getitem__)
        stage = stage_of[assets[0]]
        where = f"{scope} {partition}" if unit else partition or stage
        why = next((w for a in assets if (w := ev.reason(a, partition)) is not None), "requested")
        steps.append(Step(stage, partition, assets, where, why))
    return sorted(steps, key=lambda s: (order[s.assets[0]], s.partition or ""))


def taken(instance: dg.DagsterInstance, step: Step, seen: dict[tuple[str, str | None], Any]) -> str | None:
    """Whether another process (a second `mira run` on this instance) has a run of this step's assets in flight, or
    materialised one of them since this tick's evaluation: one tick's steps run one after another, and without
    this look two commands evaluating at once would both run the same partitions."""
    tags = {"dagster/partition": step.partition} if step.partition is not None else None
    for record in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT, tags=tags)):
        assets = run_assets(record.dagster_run)
        if assets is None or assets & set(step.assets):
            host = record.dagster_run.tags.get("mira/host", "another process")
            return f"run {record.dagster_run.run_id[:8]} of {host} is running it"
    for asset in step.assets:
        before, now = seen.get((asset, step.partition)), latest(instance, asset, step.partition)
        if now is not None and (before is None or now.storage_id > before.storage_id):
            return f"{asset} was materialised meanwhile by another process"
    return None


def run_locally(
    instance: dg.DagsterInstance,
    mira: Any,
    stages: list[tuple[str, tuple[str, ...], str]],
    sources: list[str] | None,
    verbose: bool,
    gate: Callable[[set[str]], int | None],
    report: Callable[[Any, str], tuple[list[str], list[str]]],
) -> Outcome:
    """Evaluate the conditions, run what they request, again, until they request nothing. `gate(judged units)` is
    asked once, before the first run that may send (None: go on; else the exit code of a refusal); `report(result,
    where)` turns a run's result into (failure lines, warning lines)."""
    from mira_dagster import definitions as d
    from mira_dagster.cli import HOST_TAG, PID_TAG, release_run  # what cli.release_dead_runs reads if this one dies

    defs = dg.Definitions(assets=d.ALL_ASSETS, resources={"mira": mira})
    by_key = {k.to_user_string(): a for a in d.ALL_ASSETS for k in a.keys}
    run_config = {"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "ERROR"}}}}
    tags = {
        "mira/entry": "mira run",
        PID_TAG: str(os.getpid()),
        HOST_TAG: socket.gethostname(),
        HEARTBEAT_EVERY_TAG: f"{HEARTBEAT_S:g}",
    }
    out, progress = Outcome(), StageLines(verbose)
    silent = SilentRuns()
    done: set[tuple[str, str | None]] = set()
    failed: set[tuple[str, str | None]] = set()
    waited: set[str] = set()  # runs of other processes this command said it waits for
    gated, cursor = False, None
    with local(sources), Heartbeat(instance, tags):
        for _ in range(MAX_TICKS):
            result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
            cursor = result.cursor
            ev = last_evaluation() or Evaluation(instance, mira, retry=False)  # that tick's: the reasons printed
            steps = requested_steps(result, stages, ev)
            seen = {(a, s.partition): ev.latest(a, s.partition) for s in steps for a in s.assets}
            if not steps:
                running = [r for r in ev.in_flight if executing(r)]
                if running and stale_in_scope(ev, stages):  # held by another process's run (a second machine)
                    if dead := silent.dead(running):
                        for r, why in dead:
                            release_run(instance, r, why)
                            print(f"mira: run {r.run_id[:8]} marked failed: {why}", flush=True)
                        continue  # the conditions retry what it left
                    for r in running:
                        if r.run_id not in waited:
                            waited.add(r.run_id)
                            host = r.tags.get(HOST_TAG, "another process")
                            print(f"mira: waiting for run {r.run_id[:8]} of {host}, in progress", flush=True)
                    time.sleep(WAIT_SECONDS)
                    continue
                break
            if not gated and any(a in PAID for s in steps for a in s.assets):
                gated = True
                progress.close()  # the stage so far on its line, before the cost plan prints
                judged = {str(s.partition) for s in steps if "teacher_judgments" in s.assets}
                if (code := gate(judged)) is not None:
                    out.stopped = f"refused with exit code {code}"
                    return out
            # a failed run of this command holds what is downstream of it, and is not tried again in it (the next
            # `mira run` retries it): a stage never runs over the output of a failed run
            held = {later for asset, _ in failed for later in downstream_of(asset)}
            steps = [s for s in steps if not any((a, s.partition) in failed or a in held for a in s.assets)]
            if not steps:
                break
            for step in steps:
                again = [a for a in step.assets if (a, step.partition) in done]
                if again:
                    out.stopped = (
                        f"the automation conditions asked for {again[0]}[{step.partition}] again after it ran in "
                        "this command: stopped (please report this)"
                    )
                    out.failures.append(f"{step.where}: {out.stopped}")
                    return out
                if elsewhere := taken(instance, step, seen):  # another `mira run` started or did it meanwhile
                    print(f"mira: {step.where}: {elsewhere}; not run here", flush=True)
                    continue
                progress.start(step)
                run = dg.materialize(
                    d.ALL_ASSETS,
                    selection=[by_key[a] for a in step.assets],
                    partition_key=step.partition,
                    instance=instance,
                    resources={"mira": mira},
                    raise_on_error=False,
                    run_config=run_config,
                    tags=tags,
                )
                out.ran += 1
                out.steps.add((step.stage, step.partition))
                failures, warnings = report(run, step.where)
                out.warnings += warnings
                if run.success:
                    done.update((a, step.partition) for a in step.assets)
                else:
                    out.failures += failures
                    failed.update((a, step.partition) for a in step.assets)
                progress.done(run.success)
        else:
            out.stopped = f"the automation conditions still requested runs after {MAX_TICKS} evaluations"
            out.failures.append(out.stopped)
    progress.close()
    return out


class Heartbeat:
    """While `mira run` runs, a thread that tags this process's executing runs with the time every HEARTBEAT_S: how
    a `mira run` on another machine (which cannot see this process) tells a long run from a dead one."""

    def __init__(self, instance: dg.DagsterInstance, tags: dict[str, str]) -> None:
        self.instance = instance
        mine = {k: tags[k] for k in ("mira/pid", "mira/host")}
        self.mine = dg.RunsFilter(tags=mine, statuses=[*RUNNING, dg.DagsterRunStatus.NOT_STARTED])
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, name="mira-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            try:
                now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
                for run in self.instance.get_runs(filters=self.mine):
                    self.instance.add_run_tags(run.run_id, {HEARTBEAT_TAG: now})
            except Exception as exc:  # a missed beat is not worth stopping the run for; say it once
                print(f"mira: heartbeat not written ({type(exc).__name__}: {exc})"[:300], file=sys.stderr)


class SilentRuns:
    """The heartbeats of other processes' runs as this process saw them change, on its own clock."""

    def __init__(self) -> None:
        self.seen: dict[str, tuple[str | None, float]] = {}  # run id -> (its heartbeat, when it last changed here)

    def dead(self, runs: list[dg.DagsterRun]) -> list[tuple[dg.DagsterRun, str]]:
        """The runs that beat (they say how often) and whose heartbeat has not changed for SILENT_BEATS beats."""
        dead, now = [], time.monotonic()
        for run in runs:
            every = run.tags.get(HEARTBEAT_EVERY_TAG)
            if every is None:
                continue  # a run that never said it beats: waited for as before
            beat = run.tags.get(HEARTBEAT_TAG)
            last, since = self.seen.get(run.run_id, (None, now))
            if run.run_id not in self.seen or beat != last:
                self.seen[run.run_id] = (beat, now)
                continue
            if now - since >= SILENT_BEATS * float(every):
                host = run.tags.get("mira/host", "another machine")
                dead.append((run, f"its `mira run` on {host} sent no heartbeat for {now - since:.0f} s (last: {beat})"))
        return dead


class StageLines:
    """One line per stage once it is done (a bar on a terminal meanwhile); with -v one line per run as it starts."""

    def __init__(self, verbose: bool) -> None:
        self.verbose = verbose
        self.stage: str | None = None
        self.runs = self.failed = 0
        self.started = time.monotonic()
        self.bar: Any = None

    def start(self, step: Step) -> None:
        if step.stage != self.stage:
            self._line()
            self.stage, self.runs, self.failed, self.started = step.stage, 0, 0, time.monotonic()
            if sys.stdout.isatty() and not self.verbose:
                from tqdm import tqdm

                self.bar = tqdm(desc=step.stage, unit="run", leave=False, file=sys.stdout)
        label = f"{step.where}: {', '.join(step.assets)} ({step.why})"
        if self.verbose:
            print(f"[{step.stage} {self.runs + 1}/{self.runs + 1}] {label}", flush=True)
        elif self.bar is not None:
            self.bar.set_postfix_str(label[:60])

    def done(self, ok: bool) -> None:
        self.runs += 1
        self.failed += not ok
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """The stage so far on its line (at the end, or before something else prints); the next run starts a new one."""
        self._line()
        self.stage = None

    def _line(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        if self.stage is None or not self.runs:
            return
        took = time.monotonic() - self.started
        status = f"{self.failed} failure(s)" if self.failed else "ok"
        print(f"{self.stage}: {self.runs} {'run' if self.runs == 1 else 'runs'}, {status} ({took:.1f} s)", flush=True)

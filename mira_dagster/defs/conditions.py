"""The automation condition of every asset: run what is stale (defs/freshness.py) once nothing upstream of it is
stale, queued or running. The daemon's automation sensor evaluates it; `mira run` without a daemon has Dagster's
evaluator evaluate the same conditions in its own process (local_run.py), so the two cannot disagree."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Iterable
from typing import Any

import dagster as dg

from mira_dagster.defs.freshness import CORPUS, SCORING, Evaluation, run_assets

_lock = threading.Lock()
_evaluations: dict[tuple[int, Any], Evaluation] = {}


def evaluation(instance: dg.DagsterInstance, when: Any) -> Evaluation:
    """One Evaluation per tick (its evaluation time), shared by every asset's condition of that tick; the
    registry and home from the environment, as the code location's `mira` resource has them."""
    from mira_dagster.defs.resources import MiraResource

    key = (id(instance), when)
    with _lock:
        if key not in _evaluations:
            _evaluations.clear()
            # the daemon's view: incomplete work waits for a change of its inputs or a `mira run` (no retry)
            _evaluations[key] = Evaluation(instance, MiraResource(), retry=False)
        return _evaluations[key]


def last_evaluation() -> Evaluation | None:
    """The Evaluation of the latest tick in this process (local_run.py prints its reasons)."""
    with _lock:
        return next(iter(_evaluations.values()), None)


def _subset(context: dg.AutomationContext, keep: Iterable[str] | bool) -> Any:
    candidate = context.candidate_subset
    if candidate.is_partitioned:
        return candidate.compute_intersection_with_partition_keys(set(keep))  # type: ignore[arg-type]
    return candidate if keep and not candidate.is_empty else context.get_empty_subset()


def _where(context: dg.AutomationContext, holds: Callable[[Evaluation, str, str | None], bool]) -> dg.AutomationResult:
    """The candidate partitions (or the unpartitioned asset) for which `holds` is true in this tick's evaluation."""
    ev = evaluation(context.asset_graph_view.instance, context.evaluation_time)
    asset = context.key.to_user_string()
    candidate = context.candidate_subset
    if candidate.is_partitioned:
        keys = [k for k in candidate.expensively_compute_partition_keys() if holds(ev, asset, k)]
        return dg.AutomationResult(context, true_subset=_subset(context, keys))
    return dg.AutomationResult(context, true_subset=_subset(context, not candidate.is_empty and holds(ev, asset, None)))


class Stale(dg.AutomationCondition):
    """The partitions freshness.Evaluation calls stale."""

    @property
    def name(self) -> str:
        return "stale"

    @property
    def description(self) -> str:
        return "stale (defs/freshness.py): never materialised, or something it reads changed since"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # type: ignore[override]
        return _where(context, lambda ev, asset, partition: ev.reason(asset, partition) is not None)


class Running(dg.AutomationCondition):
    """The partitions a run in flight materialises, as the evaluation saw the runs before it read what is stale
    (Dagster's in_progress ends at the materialisation, before its run ends, and is read later: a partition
    materialised meanwhile would look stale and not in progress, and run twice)."""

    @property
    def name(self) -> str:
        return "run_in_flight"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # type: ignore[override]
        return _where(context, lambda ev, asset, partition: ev.running(asset, partition) is not None)


@functools.cache
def upstream_of(asset: str) -> frozenset[str]:
    """Every asset upstream of `asset` in the code location's graph (fixed once the definitions are loaded)."""
    from mira_dagster.definitions import ALL_ASSETS

    parents = {
        key.to_user_string(): {d.to_user_string() for d in deps}
        for a in ALL_ASSETS
        for key, deps in a.asset_deps.items()
    }
    seen: set[str] = set()
    todo = list(parents.get(asset, ()))
    while todo:
        up = todo.pop()
        if up not in seen:
            seen.add(up)
            todo.extend(parents.get(up, ()))
    return frozenset(seen)


def upstream_busy(ev: Evaluation, asset: str) -> str | None:
    """Why `asset` must wait: a run queued or in progress, or a backfill not done, that materialises something upstream
    of it; something upstream of it stale (it runs first), or whose latest run failed (as `mira run` starts no stage
    after a failed one). The corpus assets run as one block: they do not wait for each other."""
    up = upstream_of(asset)
    # for a corpus asset, a run of any of the block counts (Dagster's in_progress ends at an asset's materialisation,
    # before its run ends, and a block half done is stale)
    busy = up | (set(CORPUS) if asset in CORPUS else set())
    for run in ev.in_flight:
        assets = run_assets(run)
        if assets is None or assets & busy:
            return f"run {run.run_id[:8]} in progress upstream"
    if any(b.status.value == "REQUESTED" for b in ev.instance.get_backfills(limit=20)):
        return "a backfill in progress"
    for name in sorted(up - (set(CORPUS) if asset in CORPUS else set())):
        for partition in ev.partitions(name):
            if ev.reason(name, partition) is not None:
                return f"{name}[{partition}] stale upstream" if partition else f"{name} stale upstream"
    return failed_upstream(ev, asset)


def failed_upstream(ev: Evaluation, asset: str) -> str | None:
    """Why `asset` waits for a failed run upstream of it: nothing runs over the output of a failed run."""
    for name in sorted(upstream_of(asset) - (set(CORPUS) if asset in CORPUS else set())):
        for partition in ev.partitions(name):
            if (why := ev.waiting(name, partition)) is not None:
                return f"{name}[{partition}] upstream: {why}" if partition else f"{name} upstream: {why}"
    return None


class Blocked(dg.AutomationCondition):
    """Something upstream is stale, queued or running (upstream_busy): the asset waits for it."""

    @property
    def name(self) -> str:
        return "upstream_busy"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # type: ignore[override]
        ev = evaluation(context.asset_graph_view.instance, context.evaluation_time)
        busy = upstream_busy(ev, context.key.to_user_string()) is not None
        candidate = context.candidate_subset
        return dg.AutomationResult(context, true_subset=candidate if busy else context.get_empty_subset())


SCORER_GROUP_TAG = "mira/scorer_group"


def group_limit(instance: dg.DagsterInstance) -> int | None:
    """dagster.yaml's limit of runs in progress per scorer group (tag mira/scorer_group, a limit per value), if any."""
    queue = instance.get_concurrency_config().run_queue_config
    for rule in (queue.tag_concurrency_limits if queue is not None else None) or []:
        value = rule.get("value")
        if rule.get("key") == SCORER_GROUP_TAG and isinstance(value, dict) and value.get("applyLimitPerUniqueValue"):
            return int(rule["limit"])
    return None


def sends(run: dg.DagsterRun) -> bool:
    """Whether a run holds a step that sends to a scorer group's endpoints (a job's run without an asset selection,
    refresh_sources, counts: it scores)."""
    assets = run_assets(run)
    return assets is None or bool(assets & set(SCORING))


def within_group_limit(ev: Evaluation, keys: Iterable[str], limit: int) -> list[str]:
    """The source partitions of `keys` that may start sending now: per scorer group, at most `limit` in progress
    (the runs of its sources that send, already queued or running, count), the rest at a later tick."""
    cfg = ev.cfg
    busy: dict[str, int] = {}
    for run in ev.in_flight:
        source = run.tags.get("dagster/partition")
        if source in cfg.sources and sends(run):
            group = cfg.unit_of(source).key
            busy[group] = busy.get(group, 0) + 1
    keep = []
    for key in sorted(keys):
        group = cfg.unit_of(key).key if key in cfg.sources else key
        if busy.get(group, 0) < limit:
            keep.append(key)
            busy[group] = busy.get(group, 0) + 1
    return keep


class WithinGroupLimit(dg.AutomationCondition):
    """dagster.yaml's per-group run limit for the runs automation requests that send to a group's endpoints (the
    scoring steps; an ingest sends nothing and all of them start at once, the run queue's max_concurrent_runs
    holding them): the run queue applies it by the tag mira/scorer_group, which an automation sensor's runs cannot
    carry per partition, so the condition applies it."""

    @property
    def name(self) -> str:
        return "within_group_limit"

    def evaluate(self, context: dg.AutomationContext) -> dg.AutomationResult:  # type: ignore[override]
        candidate = context.candidate_subset
        instance = context.asset_graph_view.instance
        ev = evaluation(instance, context.evaluation_time)
        # `mira run` in its own process (ev.local) runs one run at a time: the limit holds by itself
        limit = group_limit(instance) if ev.local is None else None
        if limit is None or not candidate.is_partitioned or candidate.is_empty or context.key.path[-1] not in SCORING:
            return dg.AutomationResult(context, true_subset=candidate)
        keys = candidate.expensively_compute_partition_keys()
        if not set(keys) <= set(ev.cfg.sources):  # scorer-unit partitions: not a source's run
            return dg.AutomationResult(context, true_subset=candidate)
        return dg.AutomationResult(context, true_subset=_subset(context, within_group_limit(ev, keys, limit)))


STALE = Stale()
IN_PROGRESS = Running() | dg.AutomationCondition.backfill_in_progress()
FOLLOW_INPUTS = (STALE & ~IN_PROGRESS & ~Blocked() & WithinGroupLimit()).with_label(
    "stale, nothing upstream stale or running, within the group's run limit"
)


def with_its_stage(*earlier: str) -> dg.AutomationCondition:
    """FOLLOW_INPUTS, or requested with the earlier steps of its stage (same partitions) when they are requested:
    as `mira run` runs a stage from its first stale step on, the daemon runs them as one run, not a tick apart."""
    along = dg.AutomationCondition.any_deps_match(dg.AutomationCondition.will_be_requested()).allow(
        dg.AssetSelection.assets(*earlier)
    )
    return (FOLLOW_INPUTS | (along & ~IN_PROGRESS)).with_label(
        f"{FOLLOW_INPUTS.get_label()}; or in the same run as {', '.join(earlier)}"
    )

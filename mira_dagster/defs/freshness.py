"""What is stale: one definition, read from the Dagster instance, for the automation condition the daemon evaluates
(defs/automation.py) and for `mira run` alike. It keeps no state of its own (no cursor): a rule holds for as long as
what it compares holds, so a run killed half-way, a source added while nothing ran, or a second machine all leave
the instance saying what is still to do.

An asset partition is stale when it was never materialised, or when something it reads changed after its latest
materialisation: for raw_records, its ingest fingerprint (its files' identity, its registry entry, the ingest
settings and code version: io/ingest.ingest_fingerprint, also its Dagster data version); for the scoring assets,
their scorer_version, or their source re-ingested since; for the assets of a scorer unit and source_groups, a
source they read materialised after them or their set of sources changed; for the corpus assets (one block, run
together), the settings, the sources or any scoring partition (`corpus_fingerprint`), or a corpus asset left older
than the one before it. With `retry` (`mira run --plan`'s view), work that ended incomplete counts too: a scoring
whose blocking check failed or that left records without a reply, and a partition whose latest run failed. Without
it (every tick of the conditions), such work waits for its inputs to change or for a `mira run`, instead of failing
again at every tick. A `mira run`, with the daemon or in its own process (local_run.py), asks for that retry (and
for --force) with a request (`record_request`: an observation of selection_report): what it covers and that was not
materialised, nor tried and failed, since the request counts as `retry` (or forced), once.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mira_dagster.core.config import MiraConfig
from mira_dagster.io.export import EXPORT, TABLE_SCHEMAS
from mira_dagster.io.ingest import ingest_fingerprint, input_fingerprint
from mira_dagster.io.readers import SourceFileError, expand_files
from mira_dagster.io.tables import UNPARTITIONED

INPUT_FINGERPRINT = "input_fingerprint"  # everything that changes raw_records (io/ingest.ingest_fingerprint)
FILES_FINGERPRINT = "files_fingerprint"  # the files alone, to say which changed
CORPUS_FINGERPRINT = "corpus_fingerprint"
SCORING_ASSETS = (("teacher_labels", "teacher"), ("student_scores", "student"))


REQUEST = "mira_run_request"  # metadata key of the observation a `mira run` records for the daemon
WITHDRAWN = "mira_run_request_withdrawn"  # metadata key: the timestamp of a request its command took back
REQUEST_ASSET = "selection_report"  # the asset observed: the end of the pipeline, unpartitioned


@dataclass(frozen=True)
class Request:
    """What a `mira run` asked of the daemon at `timestamp`: retry incomplete work (always), rerun everything
    (`force`), for these sources (None: all)."""

    timestamp: float
    force: bool
    sources: tuple[str, ...] | None

    def covers(self, sources: Iterable[str]) -> bool:
        return self.sources is None or bool(set(self.sources) & set(sources))


def record_request(instance: dg.DagsterInstance, force: bool, sources: list[str] | None) -> Request:
    """Ask the instance's daemon, through its event log, to retry (or force) on the next evaluations."""
    payload = {"force": force, "sources": sorted(sources) if sources is not None else None}
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey(REQUEST_ASSET),
            description="`mira run` asks the daemon to retry incomplete work" + (" and rerun all" if force else ""),
            metadata={REQUEST: dg.MetadataValue.json(payload)},
        )
    )
    request = latest_request(instance)
    assert request is not None  # just written
    return request


def withdraw_request(instance: dg.DagsterInstance, request: Request) -> None:
    """Take back a request whose command refused to run (the cost gate), so no later evaluation acts on it."""
    instance.report_runless_asset_event(
        dg.AssetObservation(
            asset_key=dg.AssetKey(REQUEST_ASSET),
            description="`mira run` refused to run and took back its request",
            metadata={WITHDRAWN: dg.MetadataValue.float(request.timestamp)},
        )
    )


def latest_request(instance: dg.DagsterInstance) -> Request | None:
    """The newest `mira run` request of the instance that was not taken back, if any."""
    withdrawn: set[float] = set()
    for record in instance.fetch_observations(dg.AssetKey(REQUEST_ASSET), limit=50).records:
        obs = record.asset_observation
        if obs is None:
            continue
        if (taken_back := obs.metadata.get(WITHDRAWN)) is not None:
            withdrawn.add(float(taken_back.value))
            continue
        value = obs.metadata.get(REQUEST)
        if value is not None and record.timestamp not in withdrawn:
            payload = value.value
            sources = payload.get("sources")
            return Request(record.timestamp, bool(payload.get("force")), tuple(sources) if sources else None)
    return None


def run_assets(run: dg.DagsterRun) -> frozenset[str] | None:
    """The assets a run materialises; None when it does not say (a job's run: count it as touching everything).
    `dg.materialize` (a `mira run` without a daemon, on any machine) records no asset selection, only its steps,
    which are our assets' op names."""
    if run.asset_selection:
        return frozenset(k.to_user_string() for k in run.asset_selection)
    if run.asset_selection is not None and run.step_keys_to_execute:
        by_op = _assets_by_op()
        if all(step in by_op for step in run.step_keys_to_execute):
            return frozenset(k for step in run.step_keys_to_execute for k in by_op[step])
    return None


@functools.cache
def _assets_by_op() -> dict[str, list[str]]:
    from mira_dagster.definitions import ALL_ASSETS

    return {a.node_def.name: [k.to_user_string() for k in a.keys] for a in ALL_ASSETS}


def touches(run: dg.DagsterRun, asset: str) -> bool:
    """Whether the run materialises `asset` (or may: it does not say)."""
    assets = run_assets(run)
    return assets is None or asset in assets


@dataclass(frozen=True)
class Latest:
    """A partition's latest materialisation: when (the event's storage id orders them) and its metadata."""

    storage_id: int
    metadata: dict[str, Any]
    timestamp: float = 0.0


def latest(instance: dg.DagsterInstance, asset: str, partition: str | None = None) -> Latest | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(
            asset_key=dg.AssetKey(asset), asset_partitions=[partition] if partition is not None else None
        ),
        limit=1,
    ).records
    if not records or records[0].asset_materialization is None:
        return None
    meta = {k: v.value for k, v in records[0].asset_materialization.metadata.items()}
    return Latest(records[0].storage_id, meta, records[0].timestamp)


def ingest_reason(instance: dg.DagsterInstance, cfg: MiraConfig, source: str, retry: bool = True) -> str | None:
    """Why raw_records[source] must run, or None when it is up to date (without `retry`, an ingest its checks
    refused runs again only when its input changed)."""
    raw = latest(instance, "raw_records", source)
    if raw is None:
        return "never materialised"
    if retry and raw.metadata.get("records_written") is False:
        return "the last ingest was refused by its checks"
    src = cfg.sources[source]
    try:
        files = expand_files(src.files, source, cfg.read_roots())
    except SourceFileError as exc:
        return f"input files unreadable: {exc}"
    if raw.metadata.get(INPUT_FINGERPRINT) == ingest_fingerprint(files, src, cfg.pipeline.max_record_bytes):
        return None
    if raw.metadata.get(FILES_FINGERPRINT) not in (None, input_fingerprint(files)):
        return "input files changed"
    return "input files changed" if FILES_FINGERPRINT not in raw.metadata else "registry entry or ingest changed"


def scorer_versions(mira: Any, unit: str) -> dict[str, str]:
    """The scorer_version each role of a scorer unit has now (building a scorer probes its endpoints)."""
    return {role: mira.scorer(role, unit)[0].version for role in ("teacher", "student")}


def corpus_fingerprint(instance: dg.DagsterInstance, cfg: MiraConfig) -> str:
    """Changes when anything the corpus assets read changes: settings, sources, a scoring partition's output."""
    parts: list[Any] = [cfg.pipeline.model_dump(mode="json"), sorted(cfg.sources)]
    for source in cfg.source_names():
        for asset, _ in SCORING_ASSETS:
            done = latest(instance, asset, source)
            parts.append([asset, source, done.storage_id if done else None])
    if cfg.pipeline.reliability_mask_file is not None and cfg.pipeline.reliability_mask_file.exists():
        stat = cfg.pipeline.reliability_mask_file.stat()
        parts.append([stat.st_size, stat.st_mtime_ns])
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


SOURCES_FINGERPRINT = "sources_fingerprint"  # the sources an asset of several sources read (source_groups, units)
UNIT_ASSETS = ("teacher_judgments", "anchor_rubric", "distillation_dataset")
SCORING = tuple(asset for asset, _ in SCORING_ASSETS)
CORPUS = (
    "dim_reliability",
    "reliability_mask",
    "disagreements",
    "aggregated_scores",
    "selected_subset",
    "selected_random",
    "selection_report",
)
SIDE_TABLES = ("source_overlap", "selection_variants")  # written by selected_subset and selection_report beside theirs
FAILED = (dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED)
IN_FLIGHT = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.CANCELING,
]


@dataclass(frozen=True)
class Local:
    """`mira run` evaluating the conditions in its own process (local_run.py): it runs one run at a time, and with
    --source only those sources' partitions. Never set in the daemon's processes."""

    sources: frozenset[str] | None


_local: Local | None = None


@contextlib.contextmanager
def local(sources: Iterable[str] | None) -> Iterator[None]:
    """While `mira run` runs the conditions in its own process: what is about other sources than --source's (their
    partitions, and scorer units with none of them) is not this run's, so it is neither stale nor holding anything
    back (the daemon's evaluations are never scoped: there, --source narrows the request alone); and the per-group
    run limit holds by itself (conditions.WithinGroupLimit), as this process runs one run at a time."""
    global _local
    before, _local = _local, Local(frozenset(sources) if sources is not None else None)
    try:
        yield
    finally:
        _local = before


def sources_fingerprint(sources: Iterable[str]) -> str:
    return hashlib.sha256(json.dumps(sorted(sources)).encode()).hexdigest()[:16]


class Evaluation:
    """One evaluation of what is stale: the registry, and the scorer_versions built once per unit (building a scorer
    probes its endpoints). `retry`: count incomplete work as stale (see the module's docstring)."""

    def __init__(self, instance: dg.DagsterInstance, mira: Any, retry: bool) -> None:
        self.instance, self.mira, self.retry = instance, mira, retry
        # the runs in flight, read before any materialisation: a run that ends while this evaluation reads is seen
        # either in flight here or with its materialisations there, never as neither (a partition it just
        # materialised read as stale and as not in progress would run twice)
        self.in_flight = [r.dagster_run for r in instance.get_run_records(dg.RunsFilter(statuses=IN_FLIGHT))]
        self.cfg: MiraConfig = mira.config()
        self._versions: dict[str, dict[str, str] | str] = {}
        self._latest: dict[tuple[str, str | None], Latest | None] = {}
        self._reasons: dict[tuple[str, str | None], str | None] = {}
        self._waiting: dict[tuple[str, str | None], str] = {}
        self.request = None if retry else latest_request(instance)
        self.local = _local
        self._stored: dict[str, set[str]] = {}

    def in_scope(self, asset: str, partition: str | None) -> bool:
        """Whether asset[partition] is this evaluation's: always, unless `mira run --source` evaluates (local)."""
        scope = self.local.sources if self.local is not None else None
        if scope is None or partition is None:
            return True
        return bool(scope & set(self._scope(asset, partition)))

    def running(self, asset: str, partition: str | None = None) -> str | None:
        """The id of a run in flight (at the start of this evaluation) that materialises asset[partition]."""
        for run in self.in_flight:
            if not touches(run, asset):
                continue
            if partition is None or run.tags.get("dagster/partition") in (None, partition):
                return run.run_id
        return None

    def latest(self, asset: str, partition: str | None = None) -> Latest | None:
        key = (asset, partition)
        if key not in self._latest:
            self._latest[key] = latest(self.instance, asset, partition)
        return self._latest[key]

    def versions(self, source: str) -> dict[str, str] | str:
        """The scorer_version of each role of the source's unit now, or why they cannot be known (a missing rubric,
        an unreadable template: a reason to run, the step then reports it)."""
        unit = self.cfg.unit_of(source).key
        if unit not in self._versions:
            try:
                self._versions[unit] = scorer_versions(self.mira, unit)
            except Exception as exc:
                self._versions[unit] = f"scorer unavailable: {exc}"
        return self._versions[unit]

    def _newer(self, reads: Iterable[tuple[str, str | None]], than: Latest) -> str | None:
        for asset, partition in reads:
            done = self.latest(asset, partition)
            if done is not None and done.storage_id > than.storage_id:
                return f"{asset}[{partition}] materialised since" if partition else f"{asset} materialised since"
        return None

    def partitions(self, asset: str) -> list[str | None]:
        """The partitions of `asset` the registry implies: its sources, its scorer units, or the one of an
        unpartitioned asset."""
        if asset in ("raw_records", *SCORING):
            return list(self.cfg.source_names())
        if asset in UNIT_ASSETS:
            return list(self.cfg.scorer_units())
        return [None]

    def reason(self, asset: str, partition: str | None = None) -> str | None:
        """Why asset[partition] must run now, or None when it is up to date."""
        key = (asset, partition)
        if key not in self._reasons:
            self._reasons[key] = self._reason(asset, partition) if self.in_scope(asset, partition) else None
        return self._reasons[key]

    def waiting(self, asset: str, partition: str | None = None) -> str | None:
        """Why asset[partition] would run but waits: its latest run failed and nothing changed since (the daemon
        does not try it again at every tick). What reads it waits too."""
        self.reason(asset, partition)
        return self._waiting.get((asset, partition))

    def _scope(self, asset: str, partition: str | None) -> list[str]:
        """The sources asset[partition] is about, to match a request's scope."""
        if asset in ("raw_records", *SCORING):
            return [str(partition)]
        if asset in UNIT_ASSETS and partition in self.cfg.scorer_units():
            return list(self.cfg.scorer_units()[str(partition)].sources)
        return list(self.cfg.source_names())

    def _asked(self, asset: str, partition: str | None, me: Latest | None) -> Request | None:
        """The `mira run` request that still applies to asset[partition]: made after its latest materialisation,
        and not yet tried (no run of it failed since the request)."""
        req = self.request
        if req is None or not req.covers(self._scope(asset, partition)):
            return None
        if me is not None and me.timestamp >= req.timestamp:
            return None
        failed = self._failed_run(asset, partition, me)
        return None if failed is not None and failed[1] >= req.timestamp else req

    def _reason(self, asset: str, partition: str | None) -> str | None:
        cfg = self.cfg
        me = self.latest(REQUEST_ASSET if asset in CORPUS else asset, partition)
        asked = None if self.retry else self._asked(asset, partition, me)
        if asked is not None and asked.force:
            return "forced by `mira run --force`"
        retry = self.retry or asked is not None
        if asset in CORPUS:
            why = self._corpus()
        elif asset == "raw_records":
            why = ingest_reason(self.instance, cfg, str(partition), retry)
        elif me is None:
            why = "never materialised"
        elif asset == "source_groups":
            names = cfg.source_names()
            why = self._members_changed(me, names) or self._newer((("raw_records", s) for s in names), me)
        elif asset in SCORING:
            versions = self.versions(str(partition))
            why = versions if isinstance(versions, str) else self._scoring(asset, str(partition), versions, me, retry)
        else:  # a scorer unit's asset
            members = cfg.scorer_units()[str(partition)].sources if partition in cfg.scorer_units() else []
            reads: list[tuple[str, str | None]] = {
                "teacher_judgments": [("raw_records", s) for s in members],
                "anchor_rubric": [("teacher_judgments", partition)],
                "distillation_dataset": [(a, s) for s in members for a in SCORING] + [("anchor_rubric", partition)],
            }[asset]
            why = self._newer(reads, me)
            if why is None and asset != "anchor_rubric":
                why = self._members_changed(me, members)
        if why is None and me is not None:
            why = self._file_gone(asset, str(partition), me)
        if retry:
            return why or self._failed_last(asset, partition, me)
        if why is not None and (failed := self._failed_run(asset, partition, me)) is not None:
            if self._changed_since(asset, partition, failed):
                return why
            self._waiting[(asset, partition)] = f"{why}; its run {failed[0][:8]} failed, waiting for a change"
            return None
        return why

    def _file_gone(self, asset: str, source: str, me: Latest) -> str | None:
        """A source's table file that its latest materialisation wrote and that is no longer in the store (deleted by
        hand, or after it was found unreadable): the partition runs again (scoring from the reply cache, sending
        nothing), else the tables after it would be built without that source's rows."""
        if asset in SCORING:
            tables: tuple[str, ...] = (asset,)
        elif asset == "raw_records" and me.metadata.get("records_written"):
            # written together: the counts reconcile over the first two, the export retypes table rows by the third
            tables = ("raw_records", "quarantine", TABLE_SCHEMAS)
        else:
            return None
        gone = next((t for t in tables if source not in self._stored_partitions(t)), None)
        return None if gone is None else f"its table file tables/{gone}/{source}.parquet is gone"

    @functools.cached_property
    def _store(self) -> Any:
        """The store, built once per evaluation (its filesystem, settings and cache objects)."""
        return self.mira.store()

    def _stored_partitions(self, table: str) -> set[str]:
        """The partitions of a table in the store (one listing per table per evaluation)."""
        if table not in self._stored:
            self._stored[table] = set(self._store.partitions(table))
        return self._stored[table]

    def _members_changed(self, me: Latest, sources: Iterable[str]) -> str | None:
        recorded = me.metadata.get(SOURCES_FINGERPRINT)
        return "its sources changed" if recorded not in (None, sources_fingerprint(sources)) else None

    def _scoring(self, asset: str, source: str, versions: dict[str, str], me: Latest, retry: bool) -> str | None:
        raw = self.latest("raw_records", source)
        role = dict(SCORING_ASSETS)[asset]
        if me.metadata.get("scorer_version") != versions[role]:
            return "scorer_version changed"
        if raw is not None and raw.storage_id > me.storage_id:
            return "records re-ingested since"
        if retry and me.metadata.get("checks_passed") is False:
            return "failed a blocking check last time"
        if retry and (me.metadata.get("status_counts") or {}).get("request_error"):
            return "records without a reply (request errors are retried)"
        return None

    def _corpus(self) -> str | None:
        report = self.latest("selection_report")
        if report is None:
            return "never materialised"
        if any(self.latest(a) is None for a in CORPUS):
            return "a corpus asset never materialised"
        if any(self.latest(a).storage_id > report.storage_id for a in CORPUS[:-1]):  # type: ignore[union-attr]
            return "a run stopped between two corpus assets"
        if report.metadata.get(CORPUS_FINGERPRINT) != corpus_fingerprint(self.instance, self.cfg):
            return "an input changed"
        # every corpus asset that succeeds writes its table (two write one more each), and selected_subset the export
        written = [(a, UNPARTITIONED) for a in (*CORPUS, *SIDE_TABLES)]
        written.append(("scope_selections", self.cfg.pipeline.scorer_scope))  # this scope's kept set, for the report
        if gone := next(((t, p) for t, p in written if p not in self._stored_partitions(t)), None):
            return f"its table file tables/{gone[0]}/{gone[1]}.parquet is gone"
        if not self._store.exists(f"{EXPORT}/manifest.json"):
            return f"its export ({EXPORT}/manifest.json) is gone"
        return None

    def _failed_last(self, asset: str, partition: str | None, me: Latest | None) -> str | None:
        failed = self._failed_run(asset, partition, me)
        return None if failed is None else f"its latest run ({failed[0][:8]}) failed"

    def _failed_run(self, asset: str, partition: str | None, me: Latest | None) -> tuple[str, float] | None:
        """(run id, creation time) of the latest run that was to materialise asset[partition], when it failed after
        the partition's latest materialisation; else None."""
        tags = {"dagster/partition": partition} if partition else None
        for record in self.instance.get_run_records(dg.RunsFilter(tags=tags), limit=20):
            run = record.dagster_run
            if not touches(run, asset):
                continue
            created = record.create_timestamp.timestamp()
            if run.status in FAILED and (me is None or created > me.timestamp):
                return run.run_id, created
            return None
        return None

    def _changed_since(self, asset: str, partition: str | None, failed: tuple[str, float]) -> bool:
        """Whether something may have changed since asset[partition]'s failed run was created: for raw_records, a
        file or the registry written since; for the others, any run of the instance that succeeded since (coarse:
        a later success elsewhere lets the daemon try once more)."""
        if asset == "raw_records":
            src = self.cfg.sources[str(partition)]
            try:
                files = expand_files(src.files, str(partition), self.cfg.read_roots())
            except SourceFileError:
                return False
            paths = [*files, self.cfg.path]
            return any(p.stat().st_mtime > failed[1] for p in paths if p.exists())
        since = dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS], created_after=_utc(failed[1]))
        return bool(self.instance.get_run_records(since, limit=1))


def _utc(ts: float) -> Any:
    import datetime

    return datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)

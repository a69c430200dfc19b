"""What is stale, read from the Dagster instance: one definition for `mira run`, the refresh schedule and the UI.

A source partition is re-ingested when its ingest fingerprint (its files' identity, its registry entry, the ingest
settings and code version: io/ingest.ingest_fingerprint) differs from the one its last `raw_records`
materialisation recorded, when that materialisation's records were refused by its checks, or when it never ran. It
is re-scored when a scorer's `scorer_version` changed, when its records were re-ingested since, when the last
scoring failed a blocking check or left records without a reply (request errors are retried), or when it never
ran. The corpus assets rerun when their fingerprint changes: the pipeline settings, the registry's sources and the
latest materialisation of every scoring partition they read. The same fingerprints are Dagster data versions
(`raw_records` reports its ingest fingerprint as its data version), so the UI's staleness follows them too.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import dagster as dg

from mira_dagster.core.config import MiraConfig
from mira_dagster.io.ingest import ingest_fingerprint, input_fingerprint
from mira_dagster.io.readers import SourceFileError, expand_files

INPUT_FINGERPRINT = "input_fingerprint"  # everything that changes raw_records (io/ingest.ingest_fingerprint)
FILES_FINGERPRINT = "files_fingerprint"  # the files alone, to say which changed
CORPUS_FINGERPRINT = "corpus_fingerprint"
SCORING_ASSETS = (("teacher_labels", "teacher"), ("student_scores", "student"))


@dataclass(frozen=True)
class Staleness:
    source: str
    reason: str


@dataclass(frozen=True)
class Latest:
    """A partition's latest materialisation: when (the event's storage id orders them) and its metadata."""

    storage_id: int
    metadata: dict[str, Any]


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
    return Latest(records[0].storage_id, meta)


def ingest_reason(instance: dg.DagsterInstance, cfg: MiraConfig, source: str) -> str | None:
    """Why raw_records[source] must run, or None when it is up to date."""
    raw = latest(instance, "raw_records", source)
    if raw is None:
        return "never materialised"
    if raw.metadata.get("records_written") is False:
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


def scoring_reason(instance: dg.DagsterInstance, source: str, versions: dict[str, str]) -> str | None:
    """Why teacher_labels / student_scores of a source must run, or None. `versions`: role -> the scorer_version
    the source's scorers have now."""
    raw = latest(instance, "raw_records", source)
    for asset, role in SCORING_ASSETS:
        done = latest(instance, asset, source)
        if done is None:
            return f"{asset} never materialised"
        meta = done.metadata
        if meta.get("scorer_version") != versions[role]:
            return f"{asset} scorer_version changed"
        if raw is not None and raw.storage_id > done.storage_id:
            return f"records re-ingested since {asset}"
        if meta.get("checks_passed") is False:
            return f"{asset} failed a blocking check last time"
        if (meta.get("status_counts") or {}).get("request_error"):
            return f"{asset} has records without a reply (request errors are retried)"
    return None


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


def corpus_reason(instance: dg.DagsterInstance, cfg: MiraConfig) -> str | None:
    report = latest(instance, "selection_report")
    if report is None:
        return "never materialised"
    if report.metadata.get(CORPUS_FINGERPRINT) != corpus_fingerprint(instance, cfg):
        return "an input changed"
    return None


def never_materialised(instance: dg.DagsterInstance, assets: Iterable[str], partition: str | None) -> bool:
    return any(latest(instance, a, partition) is None for a in assets)


@dataclass(frozen=True)
class Step:
    """One in-process run of `mira run`: which stage (a key of cli.STAGES), for which partition, and why."""

    stage: str
    partition: str | None
    label: str


class RunPlan:
    """What `mira run` must materialise, phase by phase: only what is stale (or everything with force). Each phase
    is planned when it starts, after the earlier ones ran, since they change what is stale (a re-ingested source
    needs new judgments, a new rubric a new scorer_version). `skipped` collects what was up to date."""

    def __init__(self, instance: dg.DagsterInstance, mira: Any, sources: list[str], force: bool) -> None:
        self.instance, self.mira, self.sources, self.force = instance, mira, sources, force
        self.cfg: MiraConfig = mira.config()
        self.ingested: set[str] = set()
        self.scored: set[str] = set()
        self.skipped: list[str] = []
        self._versions: dict[str, dict[str, str] | str] = {}  # unit -> role -> scorer_version, or why unknown

    def done(self, step: Step) -> None:
        if step.stage == "ingest" and step.partition:
            self.ingested.add(step.partition)
        if step.stage == "scoring" and step.partition:
            self.scored.add(step.partition)

    def _units(self) -> dict[str, list[str]]:
        units: dict[str, list[str]] = {}
        for s in self.sources:
            units.setdefault(self.cfg.unit_of(s).key, []).append(s)
        return dict(sorted(units.items()))

    def ingest(self) -> list[Step]:
        steps = []
        for s in self.sources:
            why = "forced" if self.force else ingest_reason(self.instance, self.cfg, s)
            if why is None:
                self.skipped.append(f"{s}: raw_records")
            else:
                steps.append(Step("ingest", s, f"{s}: raw_records ({why})"))
        return steps

    def grouping(self) -> list[Step]:
        if self.force or self.ingested or latest(self.instance, "source_groups") is None:
            return [Step("grouping", None, "all sources: source_groups")]
        self.skipped.append("source_groups")
        return []

    def discovery(self) -> list[Step]:
        steps, scope = [], self.cfg.pipeline.scorer_scope
        for unit, members in self._units().items():
            new = never_materialised(self.instance, ("teacher_judgments", "anchor_rubric"), unit)
            if self.force or new or self.ingested & set(members):
                steps.append(Step("discovery", unit, f"{scope} {unit}: teacher_judgments, anchor_rubric"))
            else:
                self.skipped.append(f"{scope} {unit}: teacher_judgments, anchor_rubric")
        return steps

    def scoring(self) -> list[Step]:
        steps: list[Step] = []
        for s in self.sources:
            why = "forced" if self.force else "records re-ingested" if s in self.ingested else self._score_reason(s)
            if why is None:
                self.skipped.append(f"{s}: teacher_labels, student_scores")
            else:
                steps.append(Step("scoring", s, f"{s}: teacher_labels, student_scores ({why})"))
        return steps

    def _score_reason(self, source: str) -> str | None:
        """scoring_reason with the source's unit's current scorer_versions, built once per unit; a scorer that cannot
        be built (a missing rubric, an unreadable template) is a reason to run: the step then reports it."""
        unit = self.cfg.unit_of(source).key
        if unit not in self._versions:
            try:
                self._versions[unit] = scorer_versions(self.mira, unit)
            except Exception as exc:
                self._versions[unit] = f"scorer unavailable: {exc}"
        versions = self._versions[unit]
        return versions if isinstance(versions, str) else scoring_reason(self.instance, source, versions)

    def distill(self) -> list[Step]:
        steps, scope = [], self.cfg.pipeline.scorer_scope
        for unit, members in self._units().items():
            if self.force or self.scored & set(members) or latest(self.instance, "distillation_dataset", unit) is None:
                steps.append(Step("distill", unit, f"{scope} {unit}: distillation_dataset"))
            else:
                self.skipped.append(f"{scope} {unit}: distillation_dataset")
        return steps

    def corpus(self) -> list[Step]:
        why = "forced" if self.force else "sources re-scored" if self.scored else None
        why = why or corpus_reason(self.instance, self.cfg)
        if why is None:
            self.skipped.append("corpus (reliability to selection_report)")
            return []
        label = f"corpus: reliability, mask, aggregates, selected_subset, random, report ({why})"
        return [Step("corpus", None, label)]

    def phases(self) -> list[Any]:
        return [self.ingest, self.grouping, self.discovery, self.scoring, self.distill, self.corpus]

"""The source registry (`anchors/groups.yaml`) and the pipeline settings, validated at the boundary.

Models only: io/registry.py reads the file into them; which file (MIRA_CONFIG, `mira run --config`) and every other
setting's source are decided in mira_dagster/settings.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Family = Literal["qa_with_think", "qa", "agent"]

PROJECT_ROOT = Path(__file__).absolute().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "anchors" / "groups.yaml"

# Source names become partition keys, file names and SQL literals: keep them boring.
SAFE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_SAFE_GROUP = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_]{0,31}$")


class ConfigError(ValueError):
    """The registry or settings are not usable; the message names the file and the key."""


def _on_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `on` / `off` as a boolean: take it back as the word the user wrote."""
    return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class GroupConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    description: str = ""
    family: Family
    student_model: str
    # The group's rubric as released with its student (the model cards' anchors). Without it, the rubric
    # discovered by `anchor_rubric` is used.
    anchors: Path | None = None
    # Prompt templates (Jinja2, core/prompts.py), relative to the registry; unset = the shipped ones
    # (mira_dagster/resources/templates/). They are part of scorer_version.
    system_template: Path | None = None
    user_template: Path | None = None
    # vLLM structured outputs for this group's scorers; unset = pipeline.constrained_decoding.
    constrained_decoding: Literal["auto", "on", "off"] | None = None

    _constrained_words = field_validator("constrained_decoding", mode="before")(_on_off)


class SourceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    group: str
    format: Family
    # Files, globs (`data/*.jsonl.gz`) or folders of shards (every supported file inside, recursively).
    files: list[Path] = Field(min_length=1)
    # Optional field mapping: text field -> JMESPath expression over each object (core/mapping.py). When given,
    # it replaces layout detection for this source.
    fields: dict[str, str] | None = None
    # Preference pairs (`chosen` / `rejected`): which side becomes the record; `both` makes one record of each,
    # their layouts marked `:chosen` / `:rejected` (docs/sources.md). The other side stays in the original.
    preference: Literal["chosen", "rejected", "both"] = "chosen"

    @model_validator(mode="after")
    def _preference_is_for_layouts(self) -> SourceConfig:
        if self.fields is not None and self.preference != "chosen":
            raise ValueError(
                f"preference: {self.preference} picks the side of a detected preference pair; with a `fields:` "
                "mapping, map the side you want (e.g. answer: rejected) instead"
            )
        return self


class PipelineSettings(BaseModel):
    """Knobs of stages 2-4. Defaults are documented in README ("Settings")."""

    model_config = ConfigDict(extra="forbid")

    # Serving contract (model cards): sampling and context.
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 2048
    max_model_len: int = 65536
    # Teacher sample per source: max(teacher_sample_min, fraction * n), capped at n.
    teacher_sample_fraction: float = Field(0.5, gt=0, le=1)
    teacher_sample_min: int = Field(20, ge=0)
    # ... and at most this many per source (a count, so a 10M-record source does not buy 5M frontier requests).
    teacher_sample_max: int = Field(2000, ge=1)
    # Refuse a run whose teacher requests (labels and judgments it would send: not cached, not too long, only the
    # steps that run) would exceed this; None = no cap.
    max_teacher_requests: int | None = Field(None, ge=0)
    # A source with data in the store that the registry does not have: "fail" stops the corpus assets naming it
    # (and `mira forget-source`), "drop" leaves it out of the selection and says so in the metadata.
    unregistered_sources: Literal["fail", "drop"] = "fail"
    heldout_fraction: float = Field(0.4, gt=0, lt=1)
    seed: int = 0
    # Ingest: a longer line is quarantined (no scorer context holds it).
    max_record_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    # Blocking check on raw_records: a source fails when more than this share of what it read was quarantined.
    max_quarantine_share: float = Field(0.2, ge=0, le=1)
    # Reliability mask: a (source, dim) cell is kept when MAE <= max_mae and rho >= min_rho.
    mask_max_mae: float = 1.5
    mask_min_rho: float = 0.3
    # A mask from elsewhere (CSV / JSONL / Parquet of source, dimension, masked; core/mask_import.py), relative to
    # the registry: applied on top of the computed mask ("union") or instead of it for the cells it lists ("replace").
    reliability_mask_file: Path | None = None
    reliability_mask_mode: Literal["union", "replace"] = "union"
    disagreement_top_k: int = Field(10, ge=1)
    bootstrap_resamples: int = Field(1000, ge=10)
    ci_level: float = Field(0.95, gt=0, lt=1)
    # Cells with fewer held-out pairs use the group-level estimate pooled over the group's sources.
    min_heldout: int = Field(8, ge=2)
    # Selection: the token budget, as a share of all tokens (or absolute, budget_tokens, which wins), spread over
    # the variant's units in proportion to their tokens; per-source floor and cap as shares of its tokens.
    retention_share: float = Field(0.5, gt=0, le=1)
    budget_tokens: int | None = Field(None, gt=0)
    # Selection is per-source retention, the cards' rule: each source keeps its best records up to its share of the
    # budget. The aggregate z-normalises each dimension over the record's source (default), group, or all sources.
    normalise_within: Literal["global", "group", "source"] = "source"
    source_min_share: float = Field(0.0, ge=0, le=1)
    source_max_share: float = Field(1.0, ge=0, le=1)
    export_shard_records: int = Field(100_000, ge=1)
    # The export's form: the kept records as their producers wrote them, with the selection columns added
    # ("original"), or the normalised text fields ("normalised"); io/export.py.
    export_form: Literal["original", "normalised"] = "original"
    # Non-blocking check: a source's mean aggregate moving more than this between materialisations warns.
    drift_threshold: float = Field(0.25, ge=0)
    # Scoring client.
    # Requests in flight per endpoint: above what the server runs at once, so its queue never runs dry.
    max_in_flight: int = Field(128, ge=1)
    request_timeout_s: float = 120.0
    max_retries: int = Field(3, ge=0)
    write_batch_size: int = Field(256, ge=1)
    # With a store URL: an answer is PUT to the store at most this many seconds after it arrived (or with its
    # write_batch_size batch, if sooner), by each writer's publisher thread (never the scoring loop). 0 = as soon
    # as possible: group commit, one PUT in flight per writer taking every answer that arrived meanwhile, so the
    # other machines re-ask of a killed one only the answers whose PUT was in flight (plus its requests in flight).
    # A larger value adds this window's answers to those re-asks, for fewer, larger objects. Without a store URL
    # it does nothing (a local log survives a kill).
    reply_publish_seconds: float = Field(0.0, ge=0, allow_inf_nan=False)
    # Scoring streams a source in chunks of this many records (one reply cache lookup each; their text is read
    # io/sending.TEXT_BATCH_ROWS at a time): a step's memory is bounded by the chunk's ids, a text batch and
    # max_in_flight, not the source size.
    scoring_chunk_records: int = Field(20_000, ge=1)
    # DuckDB spills to disk instead of failing: its memory limit (DuckDB syntax, e.g. "4GB") and spill folder
    # (default $MIRA_HOME/duckdb_tmp).
    duckdb_memory_limit: str = "4GB"
    duckdb_temp_directory: Path | None = None
    # vLLM structured outputs: "auto" = on when the endpoint reports itself as vLLM.
    constrained_decoding: Literal["auto", "on", "off"] = "auto"
    _constrained_words = field_validator("constrained_decoding", mode="before")(_on_off)
    constrained_rationale_chars: int = Field(300, ge=1)  # measured: README "Constrained decoding"
    # A reply that is parse_error or partial is asked again up to this many times (every attempt is cached).
    parse_retries: int = Field(1, ge=0)
    # Prompt templates for scorer units that are not a group (scorer_scope global or source); unset = shipped.
    system_template: Path | None = None
    user_template: Path | None = None
    # The paper's variants: one rubric and one student over all sources ("global"), one per group ("group", the
    # released students) or one per source ("source"). Stages 1 and 2 run once per unit of the scope.
    scorer_scope: Literal["global", "group", "source"] = "group"
    # Blocking check: a partition whose replies fail to parse more often than this stops downstream.
    max_parse_failure_rate: float = Field(0.05, ge=0, le=1)
    # Blocking check: a partition whose requests failed (status request_error) more often than this fails, naming
    # the endpoint and the error (a server that is down must not look like a run with nothing to score).
    max_request_error_share: float = Field(0.2, ge=0, le=1)
    # Blocking check: a partition whose records were not scored (too_long, request_error, parse_error) more often
    # than this fails, naming the source and the share (most of a source unscored must not pass unnoticed).
    max_unscored_share: float = Field(0.5, ge=0, le=1)
    # Stage 1: which rubric the scorers use ("configured" = the group's anchors file when it has one).
    rubric_source: Literal["configured", "discovered"] = "configured"
    source_group_k: int = Field(2, ge=1)
    embed_sample_per_source: int = Field(40, ge=1)
    judge_sample_per_source: int = Field(30, ge=1)
    # Offline stand-in: slots (1-based) where the offline student is much noisier than the teacher.
    offline_noisy_slots: list[int] = [4, 9, 14]

    @model_validator(mode="before")
    @classmethod
    def _removed_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and "selection_variant" in data:
            raise ValueError(
                "pipeline.selection_variant was removed: selection is always per-source retention (the cards' rule). "
                "Use scorer_scope (global | group | source) for the paper's variants, and normalise_within for the "
                "scope the aggregate z-normalises over; selection_report compares the scopes with random"
            )
        return data


class ScorerUnit(BaseModel):
    """One scorer of the scope: the sources it scores, its rubric and its student (issue: the paper's variants).

    scorer_scope "group": one unit per group (the released students); "global": one unit, key "global", over all
    sources; "source": one unit per source, keyed by the source name.
    """

    key: str
    scope: Literal["global", "group", "source"]
    sources: list[str]
    # the prompt family of its records, or "mixed" when a global unit spans several
    family: Family | Literal["mixed"]
    description: str
    student_model: str
    # the registry group behind a group unit (its anchors, templates, released student); None otherwise
    group: str | None = None
    anchors: Path | None = None
    system_template: Path | None = None
    user_template: Path | None = None
    constrained_decoding: Literal["auto", "on", "off"]


class MiraConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    groups: dict[str, GroupConfig]
    sources: dict[str, SourceConfig]
    pipeline: PipelineSettings = PipelineSettings()
    # Watched folders, per group: each supported file (.jsonl, .json, .parquet, compressed too) directly inside
    # becomes a source of that group, named after the file (lowercased, other characters as "_"). The sensor
    # `new_sources` adds their partitions.
    watch: dict[str, Path] = {}
    path: Path = DEFAULT_CONFIG
    # Files in watched folders that could not become a source, with why (for the sensor to report).
    rejected_files: list[str] = []
    # Folders (relative to the registry) a symlink among the sources' files may lead into, beside the registry's
    # own folder and the folder the file was named in; a link leaving them all is refused (io/readers.py).
    allowed_roots: list[Path] = []

    def read_roots(self) -> list[Path]:
        """Where the sources' symlinks may lead: the registry's folder and allowed_roots."""
        return [self.path.parent, *self.allowed_roots]

    @field_validator("groups")
    @classmethod
    def _group_ids(cls, groups: dict[str, GroupConfig]) -> dict[str, GroupConfig]:
        for gid in groups:
            if not _SAFE_GROUP.match(gid):
                raise ValueError(f"group id {gid!r} must match {_SAFE_GROUP.pattern}")
        return groups

    @field_validator("sources")
    @classmethod
    def _source_names(cls, sources: dict[str, SourceConfig]) -> dict[str, SourceConfig]:
        for name in sources:
            if not SAFE_NAME.match(name):
                raise ValueError(
                    f"source name {name!r} must match {SAFE_NAME.pattern} "
                    "(it becomes a partition key, a file name and a SQL value)"
                )
        return sources

    @field_validator("watch", mode="before")
    @classmethod
    def _watch_keys(cls, watch: dict | None) -> dict:
        return {str(k): v for k, v in (watch or {}).items()}

    @model_validator(mode="after")
    def _sources_fit_groups(self) -> MiraConfig:
        from mira_dagster.core.mapping import mapping_problems

        for name, src in self.sources.items():
            if src.fields is not None and (problems := mapping_problems(src.fields, src.format)):
                raise ValueError(f"source {name!r}: fields: {'; '.join(problems)}")
            group = self.groups.get(src.group)
            if group is None:
                raise ValueError(f"source {name!r}: unknown group {src.group!r}")
            if src.format != group.family:
                raise ValueError(
                    f"source {name!r}: format {src.format!r} differs from group {src.group!r} family {group.family!r}"
                )
        return self

    def source(self, name: str) -> SourceConfig:
        """A source's entry; a partition key the registry does not know (added to the instance by hand, or left from
        an older registry) is named in one line."""
        try:
            return self.sources[name]
        except KeyError:
            raise ConfigError(f"unknown source {name!r}: not in {self.path}") from None

    def source_names(self) -> list[str]:
        return sorted(self.sources)

    def scorer_units(self) -> dict[str, ScorerUnit]:
        """The scorer units of pipeline.scorer_scope, by key (sorted), each with its sources (sorted)."""
        scope, p = self.pipeline.scorer_scope, self.pipeline
        if scope == "group":
            return {gid: self._group_unit(gid) for gid in sorted(self.groups)}
        if scope == "source":
            return {
                name: ScorerUnit(
                    key=name,
                    scope="source",
                    sources=[name],
                    family=src.format,
                    description=f"source {name} ({self.groups[src.group].description or src.format})",
                    student_model=f"mira-source-student-{name}",
                    system_template=p.system_template,
                    user_template=p.user_template,
                    constrained_decoding=p.constrained_decoding,
                )
                for name, src in sorted(self.sources.items())
            }
        families = sorted({src.format for src in self.sources.values()})
        return {
            "global": ScorerUnit(
                key="global",
                scope="global",
                sources=self.source_names(),
                family=families[0] if len(families) == 1 else "mixed",
                description="all sources",
                student_model="mira-global-student",
                system_template=p.system_template,
                user_template=p.user_template,
                constrained_decoding=p.constrained_decoding,
            )
        }

    def _group_unit(self, gid: str) -> ScorerUnit:
        g = self.groups[gid]
        return ScorerUnit(
            key=gid,
            scope="group",
            sources=sorted(n for n, src in self.sources.items() if src.group == gid),
            family=g.family,
            description=g.description,
            student_model=g.student_model,
            group=gid,
            anchors=g.anchors,
            system_template=g.system_template or self.pipeline.system_template,
            user_template=g.user_template or self.pipeline.user_template,
            constrained_decoding=g.constrained_decoding or self.pipeline.constrained_decoding,
        )

    def unit_of(self, source: str) -> ScorerUnit:
        """The scorer unit that scores a source."""
        scope = self.pipeline.scorer_scope
        key = {"group": self.source(source).group, "source": source, "global": "global"}[scope]
        return self.scorer_units()[key]

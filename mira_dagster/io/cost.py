"""Cost before spending: what a run will ask of each scorer endpoint, counted before the first request goes out.

For the chosen sources (after ingest, from raw_records) and their scorer units, per step and endpoint:

- teacher_judgments: the teacher judges judge_sample_per_source records of every source of the unit freely;
- teacher_labels: the teacher labels each source's teacher sample (core/sampling.teacher_sample, capped at
  teacher_sample_max);
- student_scores: the student scores every record.

`requests` are the records with no reply under the step's scorer_version in the reply cache (looked up by id, as
the assets do): a re-run counts only what it would send. Re-asks of replies that do not parse (parse_retries) are
not counted: they happen only for the replies that fail. Tokens are estimates (core/records.estimate_tokens):
prompt = the record's n_tokens + the system prompt + the user template around the record; completion = a typical
reply (TYPICAL_REPLY_TOKENS, capped at max_tokens), with max_tokens per request as the bound. Offline stand-ins
are marked free. A unit whose rubric is not discovered yet has no scorer_version for labels and scores: all its
records count as requests and the prompt leaves the rubric out.

Pure: no Dagster, no environment: the endpoints come in as a lookup (MiraResource.endpoint; None: all offline).
`cost_gate` is what `mira run` calls between ingest and the first paid step.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import polars as pl

from mira_dagster.core.config import Family, MiraConfig, ScorerUnit
from mira_dagster.core.prompts import fill_record, judge_template, render_user
from mira_dagster.core.records import Record, estimate_tokens
from mira_dagster.core.rubric import Rubric, discovered_anchor_name
from mira_dagster.core.sampling import hash_sample, teacher_sample
from mira_dagster.core.scoring import ChatBackend, ReplyCache, ScorerSpec
from mira_dagster.io.anchors import load_configured_rubric, load_rubric
from mira_dagster.io.llm_client import Endpoint
from mira_dagster.io.scorers import EndpointLookup, make_judge, make_scorer
from mira_dagster.io.store import Store

# A reply's typical length in tokens (estimate_tokens). A contract reply is 15 lines "[An] name: s/10 — <one
# sentence>" plus four trailer lines: the offline stand-in's replies measure 657-680 (20,000 records), real models'
# rationales are of the same length (README "Constrained decoding"). A free-form judgment names 5-10 dimensions in
# one line each: about 400.
TYPICAL_REPLY_TOKENS = {"contract": 700, "judgment": 400}
# Ids looked up in the reply cache at a time (memory: one batch of cached replies).
LOOKUP_BATCH = 20_000


@dataclass
class StepPlan:
    """One step of one scorer unit on one endpoint."""

    step: str
    unit: str
    endpoint: str
    free: bool
    records: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    completion_max: int = 0

    @property
    def requests(self) -> int:
        return self.records - self.cached

    @property
    def role(self) -> str:
        return "student" if self.step == "student_scores" else "teacher"


@dataclass
class CostPlan:
    steps: list[StepPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def teacher_requests(self) -> int:
        """Teacher requests not yet cached (judgments and labels), free stand-ins included: the cap is a count."""
        return sum(s.requests for s in self.steps if s.role == "teacher")

    def render(self) -> str:
        from tabulate import tabulate

        headers = ["step", "unit", "endpoint", "records", "cached", "requests", "prompt_tokens~", "completion_tokens~"]
        rows = [
            [s.step, s.unit, s.endpoint + (" (free)" if s.free else ""), s.records, s.cached, s.requests]
            + [s.prompt_tokens, f"{s.completion_tokens} (max {s.completion_max})"]
            for s in self.steps
        ]
        lines = ["cost plan: requests not yet cached and estimated tokens, per step and endpoint", ""]
        lines += [tabulate(rows, headers=headers, tablefmt="github"), ""]
        lines += [
            f"{role} {where}: {n} requests, ~{p} prompt + ~{c} completion tokens"
            for role, where, n, p, c in self.totals()
        ]
        return "\n".join(lines + [f"note: {n}" for n in self.notes])

    def totals(self) -> list[tuple[str, str, int, int, int]]:
        """(role, endpoint, requests, prompt tokens, completion tokens) per endpoint."""
        out: dict[tuple[str, str], list[int]] = {}
        for s in self.steps:
            acc = out.setdefault((s.role, s.endpoint + (" (free)" if s.free else "")), [0, 0, 0])
            acc[0] += s.requests
            acc[1] += s.prompt_tokens
            acc[2] += s.completion_tokens
        return [(role, where, *acc) for (role, where), acc in out.items()]  # type: ignore[misc]


def plan_run(
    cfg: MiraConfig, store: Store, sources: Sequence[str], endpoints: EndpointLookup | None = None
) -> CostPlan:
    """The plan for a run over `sources` (their units' judgments span all the units' sources, as the assets do)."""
    endpoints = endpoints or _offline
    plan = CostPlan()
    units = {cfg.unit_of(s).key: cfg.unit_of(s) for s in sources}
    ids = {s: _source_ids(store, s) for s in sorted({s for u in units.values() for s in u.sources} | set(sources))}
    for key, unit in sorted(units.items()):
        plan.steps.append(_judge_step(cfg, unit, ids, store.replies, endpoints))
        rubric = _rubric(cfg, unit, store)
        if rubric is None:
            plan.notes.append(f"{unit.scope} {key}: no rubric yet (discovered in this run): every record counted")
        mine = [s for s in sources if cfg.unit_of(s).key == key]
        plan.steps.append(_scoring_step(cfg, unit, rubric, "teacher", mine, ids, store.replies, endpoints))
        plan.steps.append(_scoring_step(cfg, unit, rubric, "student", mine, ids, store.replies, endpoints))
    return plan


def cost_gate(
    cfg: MiraConfig, store: Store, sources: Sequence[str], endpoints: EndpointLookup | None = None
) -> int | None:
    """Print the plan; return 1 (after one `mira: FAILED cost: ...` line) when the teacher requests not yet cached
    exceed pipeline.max_teacher_requests, else None. A plan that cannot be made is only a warning, unless a cap is
    set (then the run cannot be shown to keep to it)."""
    limit = cfg.pipeline.max_teacher_requests
    try:
        plan = plan_run(cfg, store, sources, endpoints)
    except Exception as exc:  # the plan is advice; without a cap a run need not wait for it
        print(f"mira: cost plan not available: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        if limit is None:
            return None
        print(f"mira: FAILED cost: cannot count the teacher requests (max_teacher_requests {limit})", file=sys.stderr)
        return 1
    print(plan.render(), flush=True)
    n = plan.teacher_requests
    if limit is not None and n > limit:
        print(
            f"mira: FAILED cost: {n} teacher requests not yet cached would exceed pipeline.max_teacher_requests "
            f"{limit}; nothing was sent (lower teacher_sample_max, run fewer sources with --source, or raise the cap)",
            file=sys.stderr,
        )
        return 1
    return None


# -- the steps ----------------------------------------------------------------------------------------------------


def _source_ids(store: Store, source: str) -> pl.DataFrame:
    """record_id and n_tokens of a source (no text); empty when it has no records yet."""
    if "raw_records" not in store.tables():
        return pl.DataFrame(schema={"record_id": pl.String, "n_tokens": pl.Int64})
    return store.query_sql(f"SELECT record_id, n_tokens FROM raw_records WHERE source = '{source}'")


def _offline(role: str, unit: str) -> None:
    return None


def _judge_step(
    cfg: MiraConfig, unit: ScorerUnit, ids: dict[str, pl.DataFrame], cache: ReplyCache, endpoints: EndpointLookup
) -> StepPlan:
    spec, backend, where = make_judge(unit, cfg, endpoints("teacher", unit.key))
    n = cfg.pipeline.judge_sample_per_source
    sample = pl.concat([hash_sample(ids[s], n, cfg.pipeline.seed, "judge") for s in unit.sources if ids[s].height])
    families = sorted({cfg.sources[s].format for s in unit.sources})
    overhead = max(estimate_tokens(fill_record(judge_template(f), _empty(f))) for f in families)
    return _step("teacher_judgments", unit, spec, backend, where, sample, overhead, "judgment", cache)


def _scoring_step(
    cfg: MiraConfig,
    unit: ScorerUnit,
    rubric: Rubric | None,
    role: str,
    sources: Sequence[str],
    ids: dict[str, pl.DataFrame],
    cache: ReplyCache,
    endpoints: EndpointLookup,
) -> StepPlan:
    p = cfg.pipeline
    if role == "teacher":
        frames = []
        for s in sources:
            split = teacher_sample(
                ids[s]["record_id"].to_list(),
                fraction=p.teacher_sample_fraction,
                minimum=p.teacher_sample_min,
                heldout_fraction=p.heldout_fraction,
                seed=p.seed,
                maximum=p.teacher_sample_max,
            )
            frames.append(ids[s].filter(pl.col("record_id").is_in(list(split))))
    else:
        frames = [ids[s] for s in sources]
    records = pl.concat(frames) if frames else pl.DataFrame(schema={"record_id": pl.String, "n_tokens": pl.Int64})
    step = "teacher_labels" if role == "teacher" else "student_scores"
    endpoint = endpoints(role, unit.key)  # type: ignore[arg-type]
    if rubric is None:  # no scorer_version yet: nothing can be cached, and the rubric's tokens are unknown
        return _unversioned(step, unit, cfg, records, endpoint)
    spec, backend, where = make_scorer(role, unit, cfg, rubric, endpoint)  # type: ignore[arg-type]
    families = sorted({cfg.sources[s].format for s in sources}) or ["qa"]
    overhead = max(estimate_tokens(render_user(spec.user_template, rubric, _empty(f))) for f in families)
    return _step(step, unit, spec, backend, where, records, overhead, "contract", cache)


def _step(
    step: str,
    unit: ScorerUnit,
    spec: ScorerSpec,
    backend: ChatBackend,
    where: str,
    records: pl.DataFrame,
    overhead: int,
    kind: str,
    cache: ReplyCache,
) -> StepPlan:
    _close(backend)
    free = spec.backend == "offline"
    plan = StepPlan(step, unit.key, "offline stand-in" if free else where, free, records=records.height)
    todo = records.filter(~pl.col("record_id").is_in(list(_cached(cache, spec.version, records["record_id"]))))
    plan.cached = records.height - todo.height
    per_request = estimate_tokens(spec.system_prompt) + overhead
    plan.prompt_tokens = int(todo["n_tokens"].sum() or 0) + per_request * todo.height
    plan.completion_tokens = min(spec.max_tokens, TYPICAL_REPLY_TOKENS[kind]) * todo.height
    plan.completion_max = spec.max_tokens * todo.height
    return plan


def _unversioned(
    step: str, unit: ScorerUnit, cfg: MiraConfig, records: pl.DataFrame, endpoint: Endpoint | None
) -> StepPlan:
    where = "offline stand-in" if endpoint is None else endpoint.redacted()
    plan = StepPlan(step, unit.key, where, endpoint is None, records=records.height)
    plan.prompt_tokens = int(records["n_tokens"].sum() or 0)
    plan.completion_tokens = min(cfg.pipeline.max_tokens, TYPICAL_REPLY_TOKENS["contract"]) * records.height
    plan.completion_max = cfg.pipeline.max_tokens * records.height
    return plan


def _cached(cache: ReplyCache, version: str, ids: pl.Series) -> set[str]:
    """The ids with any reply under the version (a record whose replies all failed to parse may still be re-asked:
    not counted, see the module docstring)."""
    found: set[str] = set()
    for start in range(0, len(ids), LOOKUP_BATCH):
        found |= set(cache.load_attempts(version, ids[start : start + LOOKUP_BATCH].to_list()))
    return found


def _rubric(cfg: MiraConfig, unit: ScorerUnit, store: Store) -> Rubric | None:
    """The rubric the unit's scorers will use, as MiraResource.rubric chooses it; None when it is still to be
    discovered."""
    if unit.anchors is not None and cfg.pipeline.rubric_source == "configured":
        return load_configured_rubric(unit, store.fetch_file)
    path = store.fetch_file(discovered_anchor_name(unit.key, unit.scope))  # the store's, wherever it is
    return load_rubric(path, unit.key, unit.family) if path is not None else None


def _empty(family: Family) -> Record:
    """A record without text: its rendered prompt is the template's own length."""
    return Record.model_construct(
        record_id="", source="", group_id="", format=family, layout="", n_tokens=0, origin_file="", origin_line=0
    )


def _close(backend: ChatBackend) -> None:
    """Backends built only to learn the spec hold HTTP clients: close them."""
    if close := getattr(backend, "aclose", None):
        asyncio.run(close())

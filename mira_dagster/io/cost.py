"""Cost before spending: what a run will ask of each scorer endpoint, counted before the first request goes out.

The plan is made of `io/sending.pending`, the asset's own decision run with every request held back: for each step
that will run (`runs`: (asset, partition) pairs, as Dagster names them) it says how many of the records the step
feeds are cached (a reply under the step's scorer_version), too_long (the prompt does not fit the context: the check
scoring makes, with the server's context length and tokenizer when it has them) and to_send. So the plan counts
exactly what the assets send: a too_long record or an answered one is never pending, a step that will not run is not
in the plan, and a forced run that would send nothing passes any max_teacher_requests.

- teacher_judgments[unit]: the teacher judges judge_sample_per_source records of every source of the unit freely;
- teacher_labels[source]: the teacher labels the source's teacher sample (core/sampling.teacher_sample);
- student_scores[source]: the student scores every record.

Rows are per step and scorer unit (the unit's sources summed). When the rubric a unit's scorers will use is made in
this run (its teacher_judgments run and its scorers use the discovered rubric, or the generated references of a
configured one are still to be drawn), its labels and scores cannot be checked yet: every record counts as to_send,
with the records' own tokens (marked estimated). Re-asks of replies that do not parse (parse_retries) are not
counted: they happen only for replies that fail. Tokens are estimates (core/records.estimate_tokens of the rendered
prompts); completion = a typical reply (TYPICAL_REPLY_TOKENS, capped at max_tokens), max_tokens per request the
bound. Offline stand-ins are marked free. Making the plan renders every prompt the steps would send (no request goes
out; a server's tokenizer is asked only about prompts that may not fit).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from mira_dagster.core.config import MiraConfig, ScorerUnit
from mira_dagster.core.rubric import Rubric, discovered_anchor_name
from mira_dagster.core.scoring import ChatBackend, RequestCount, ScorerSpec
from mira_dagster.io.anchors import load_configured_rubric, load_rubric
from mira_dagster.io.scorers import EndpointLookup, make_judge, make_scorer
from mira_dagster.io.sending import ROLE_OF, STEPS, Step, pending, scoring_frames
from mira_dagster.io.store import Store

# A reply's typical length in tokens (estimate_tokens). A contract reply is 15 lines "[An] name: s/10 — <one
# sentence>" plus four trailer lines: the offline stand-in's replies measure 657-680 (20,000 records), real models'
# rationales are of the same length (README "Constrained decoding"). A free-form judgment names 5-10 dimensions in
# one line each: about 400.
TYPICAL_REPLY_TOKENS = {"contract": 700, "judgment": 400}
HEADERS = ["step", "unit", "endpoint", "records", "cached", "too_long", "to_send", "est_prompt_tokens"]
HEADERS += ["est_completion_tokens"]


@dataclass
class StepPlan:
    """One step of one scorer unit on one endpoint (its sources summed)."""

    step: str
    unit: str
    endpoint: str
    free: bool
    records: int = 0
    cached: int = 0
    too_long: int = 0
    to_send: int = 0
    unchecked: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    completion_max: int = 0
    estimated: bool = False  # the rubric is made in this run: every record counted, nothing checked

    @property
    def role(self) -> str:
        return "student" if self.step == "student_scores" else "teacher"

    @property
    def where(self) -> str:
        return self.endpoint + (" (free)" if self.free else "")


@dataclass
class CostPlan:
    steps: list[StepPlan] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    uncounted: bool = False  # no records ingested yet: the steps cannot be counted (not: nothing to send)

    @property
    def teacher_requests(self) -> int:
        """Teacher requests the run would send (judgments and labels), free stand-ins included: the cap is a count."""
        return sum(s.to_send for s in self.steps if s.role == "teacher")

    def lines(self) -> list[str]:
        """The plan as `mira run` prints it: a table of the steps, totals per endpoint, notes."""
        from tabulate import tabulate

        rows = [
            [s.step, s.unit, s.where, s.records, s.cached, s.too_long, f"{s.to_send}{' (est.)' if s.estimated else ''}"]
            + [s.prompt_tokens, f"{s.completion_tokens} (max {s.completion_max})"]
            for s in self.steps
        ]
        out = ["cost plan: the requests each step will send (cached and too long records are not sent)", ""]
        if rows:
            out += [*tabulate(rows, headers=HEADERS, tablefmt="github").splitlines(), ""]
        elif self.uncounted:
            out += [
                "not counted: no records are ingested yet; each teacher step checks pipeline.max_teacher_requests "
                "itself before its first request",
                "",
            ]
        else:
            out += ["no scoring step will run: nothing will be sent", ""]
        out += [
            f"{role} {where}: {n} requests, ~{p} prompt + ~{c} completion tokens"
            for role, where, n, p, c in self.totals()
        ]
        return out + [f"note: {n}" for n in self.notes]

    def render(self) -> str:
        return "\n".join(self.lines())

    def totals(self) -> list[tuple[str, str, int, int, int]]:
        """(role, endpoint, requests, prompt tokens, completion tokens) per endpoint."""
        out: dict[tuple[str, str], list[int]] = {}
        for s in self.steps:
            acc = out.setdefault((s.role, s.where), [0, 0, 0])
            acc[0] += s.to_send
            acc[1] += s.prompt_tokens
            acc[2] += s.completion_tokens
        return [(role, where, *acc) for (role, where), acc in out.items()]  # type: ignore[misc]

    def refusal(self, limit: int | None) -> str | None:
        """The one line refusing the run when the teacher requests it would send exceed the cap, else None."""
        n = self.teacher_requests
        if limit is None or n <= limit:
            return None
        return (
            f"mira: FAILED cost: {n} teacher requests would be sent, over pipeline.max_teacher_requests {limit}; "
            "nothing was sent (lower teacher_sample_max, run fewer sources with --source, or raise the cap)"
        )


def step_over_cap(
    cfg: MiraConfig, store: Store, step: Step, key: str, spec: ScorerSpec, backend: ChatBackend, rubric: Rubric | None
) -> str | None:
    """The one line refusing a teacher step that would send more requests than pipeline.max_teacher_requests by
    itself, else None. `mira run` refuses a whole run over the cap before it starts; this holds the cap where no
    `mira run` made a plan (the daemon's runs, a backfill, the UI), counted as the plan counts."""
    limit = cfg.pipeline.max_teacher_requests
    if limit is None or ROLE_OF.get(step, "teacher") != "teacher":
        return None
    n = pending(cfg, store, step, key, spec, backend, rubric).to_send
    if n <= limit:
        return None
    return (
        f"{n} teacher requests to send, over pipeline.max_teacher_requests {limit}; nothing was sent "
        "(lower teacher_sample_max or raise the cap)"
    )


def every_step(cfg: MiraConfig, sources: Sequence[str]) -> list[tuple[Step, str]]:
    """Every paid step of a run over `sources`: their units' judgments, and their labels and scores."""
    units = sorted({cfg.unit_of(s).key for s in sources})
    scored = [(step, s) for s in sources for step in STEPS[1:]]
    return [("teacher_judgments", u) for u in units] + scored  # type: ignore[list-item]


def cost_plan(
    cfg: MiraConfig, store: Store, runs: Iterable[tuple[str, str]], endpoints: EndpointLookup | None = None
) -> CostPlan:
    """The plan of the steps in `runs` ((asset, partition) pairs; other assets are free and left out)."""
    endpoints = endpoints or _offline
    plan = CostPlan()
    wanted = {(a, p) for a, p in runs if a in STEPS}
    units = cfg.scorer_units()
    judged = {p for a, p in wanted if a == "teacher_judgments"}
    if wanted and "raw_records" not in store.tables():
        plan.uncounted = True
        return plan
    present = set(store.query_sql("SELECT DISTINCT source FROM raw_records")["source"].to_list()) if wanted else set()
    for key in sorted(judged):
        unit = units[key]
        spec, backend, where = make_judge(unit, cfg, endpoints("teacher", key))
        row = _row("teacher_judgments", key, spec.backend == "offline", where)
        _add(row, pending(cfg, store, "teacher_judgments", key, spec, backend), spec.max_tokens, "judgment")
        plan.steps.append(row)
    for step in STEPS[1:]:
        by_unit: dict[str, list[str]] = {}
        for a, source in sorted(wanted):
            if a == step:
                by_unit.setdefault(cfg.unit_of(source).key, []).append(source)
        for key, sources in sorted(by_unit.items()):
            plan.steps.append(_scoring_row(cfg, store, step, units[key], sources, key in judged, endpoints, plan))
    missing = sorted({p for a, p in wanted if a != "teacher_judgments"} - present)
    if missing:
        plan.notes.append(
            f"not ingested yet, not counted (each teacher step checks the cap itself): {', '.join(missing)}"
        )
    return plan


def cost_gate(
    cfg: MiraConfig, store: Store, runs: Iterable[tuple[str, str]], endpoints: EndpointLookup | None = None
) -> int | None:
    """Print the plan; return 1 (after one `mira: FAILED cost: ...` line) when the teacher requests the run would
    send exceed pipeline.max_teacher_requests, else None. A plan that cannot be made is only a warning, unless a cap
    is set (then the run cannot be shown to keep to it)."""
    limit = cfg.pipeline.max_teacher_requests
    try:
        plan = cost_plan(cfg, store, runs, endpoints)
    except Exception as exc:  # the plan is advice; without a cap a run need not wait for it
        print(f"mira: cost plan not available: {type(exc).__name__}: {exc}".splitlines()[0], file=sys.stderr)
        if limit is None:
            return None
        print(f"mira: FAILED cost: cannot count the teacher requests (max_teacher_requests {limit})", file=sys.stderr)
        return 1
    print(plan.render(), flush=True)
    if (line := plan.refusal(limit)) is not None:
        print(line, file=sys.stderr)
        return 1
    return None


# -- the steps ----------------------------------------------------------------------------------------------------


def _offline(role: str, unit: str) -> None:
    return None


def _row(step: str, unit: str, free: bool, where: str) -> StepPlan:
    return StepPlan(step, unit, "offline stand-in" if free else where, free)


def _add(row: StepPlan, count: RequestCount, max_tokens: int, kind: str) -> None:
    """Add one partition's RequestCount to its unit's row."""
    row.records += count.records
    row.cached += count.cached
    row.too_long += count.too_long
    row.to_send += count.to_send
    row.unchecked += count.unchecked
    row.prompt_tokens += count.prompt_tokens
    row.completion_tokens += min(max_tokens, TYPICAL_REPLY_TOKENS[kind]) * count.to_send
    row.completion_max += max_tokens * count.to_send


def _scoring_row(
    cfg: MiraConfig,
    store: Store,
    step: Step,
    unit: ScorerUnit,
    sources: list[str],
    judged: bool,
    endpoints: EndpointLookup,
    plan: CostPlan,
) -> StepPlan:
    role = ROLE_OF[step]
    endpoint = endpoints(role, unit.key)  # type: ignore[arg-type]
    rubric = _rubric(cfg, unit, store, judged)
    if rubric is None:  # made in this run: no scorer_version yet, nothing cached, the prompt's length unknown
        row = _row(step, unit.key, endpoint is None, "" if endpoint is None else endpoint.redacted())
        row.estimated = True
        for source in sources:
            chunks, _, _ = scoring_frames(cfg, store, role, source)
            for chunk in chunks:
                row.records += len(chunk.ids)
                row.prompt_tokens += sum(int(df["n_tokens"].sum() or 0) for df in chunk.frames)
        row.to_send = row.records
        row.completion_tokens = min(cfg.pipeline.max_tokens, TYPICAL_REPLY_TOKENS["contract"]) * row.records
        row.completion_max = cfg.pipeline.max_tokens * row.records
        note = (
            f"{unit.scope} {unit.key}: its rubric is made in this run: its labels and scores count every record (est.)"
        )
        if note not in plan.notes:
            plan.notes.append(note)
        return row
    row = None
    for source in sources:
        # the asset builds its scorer per partition (and closes it): so does the plan
        spec, backend, where = make_scorer(role, unit, cfg, rubric, endpoint)
        row = row or _row(step, unit.key, spec.backend == "offline", where)
        _add(row, pending(cfg, store, step, source, spec, backend, rubric), spec.max_tokens, "contract")
    assert row is not None
    if row.unchecked:
        plan.notes.append(f"{step} {unit.key}: {row.unchecked} prompts' length could not be checked (not sent)")
    return row


def _rubric(cfg: MiraConfig, unit: ScorerUnit, store: Store, judged: bool) -> Rubric | None:
    """The rubric the unit's scorers will use, as MiraResource.rubric chooses it; None when this run makes it (its
    judgments run and it is the discovered rubric, or the configured one's references are still to be generated)
    or it is still to be discovered."""
    if unit.anchors is not None and cfg.pipeline.rubric_source == "configured":
        rubric = load_configured_rubric(unit, store.fetch_file)
        return None if judged and not rubric.n_references() else rubric
    if judged:
        return None
    path = store.fetch_file(discovered_anchor_name(unit.key, unit.scope))  # the store's, wherever it is
    return load_rubric(path, unit.key, unit.family) if path is not None else None

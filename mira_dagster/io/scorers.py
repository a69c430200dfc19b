"""Choosing a scorer for a (role, scorer unit): the spec that identifies it and the backend that runs it. A unit is a
group (the released students), the one global unit, or a source (pipeline.scorer_scope).

The endpoint is an argument (None: the offline stand-in); mira_dagster/settings.py resolves it from MIRA_<ROLE>_*."""

from __future__ import annotations

from collections.abc import Callable

from mira_dagster.core.config import MiraConfig, ScorerUnit
from mira_dagster.core.offline import OfflineBackend
from mira_dagster.core.offline_judge import OfflineJudge
from mira_dagster.core.prompts import contract_regex, judge_system_prompt, judge_template, render_system
from mira_dagster.core.rubric import Rubric
from mira_dagster.core.scoring import ChatBackend, Role, ScorerSpec
from mira_dagster.io.endpoint import DEFAULT_TEACHER_MODEL, Endpoint
from mira_dagster.io.templates import load_templates

# The endpoint of a (role, scorer unit key), None for the offline stand-in: MiraResource.endpoint.
EndpointLookup = Callable[[Role, str], Endpoint | None]


def default_model(role: Role, unit: ScorerUnit) -> str:
    """The model a role's requests name when no MIRA_<ROLE>_MODEL[_<UNIT>] says otherwise."""
    return unit.student_model if role == "student" else DEFAULT_TEACHER_MODEL


def make_scorer(
    role: Role, unit: ScorerUnit, cfg: MiraConfig, rubric: Rubric, endpoint: Endpoint | None = None
) -> tuple[ScorerSpec, ChatBackend, str]:
    """Return (spec, backend, where): `where` describes the endpoint without secrets, for logs. No endpoint: the
    offline stand-in."""
    group = unit  # a unit carries its group's description, templates and switches (or the pipeline's)
    settings = cfg.pipeline
    default = default_model(role, unit)
    backend: ChatBackend
    regex = None
    if endpoint is None:
        # the stand-in's noise settings change its scores, so they are part of its name (and scorer_version)
        noisy = ",".join(map(str, settings.offline_noisy_slots))
        model = f"offline-{role}[noisy={noisy}]:{default}"
        backend = OfflineBackend(role, settings.offline_noisy_slots)
        where = "offline stand-in (no endpoint configured)"
    else:
        from mira_dagster.io.llm_client import OpenAIBackend, probe  # the client loads only where requests are sent

        model = endpoint.model
        infos = {url: probe(url, endpoint.api_key) for url in endpoint.base_urls}
        is_vllm = any(i.is_vllm for i in infos.values())
        # the group's switch wins over the pipeline's (constrained decoding is ours, not the cards' plain call)
        constrained = group.constrained_decoding or settings.constrained_decoding
        if constrained == "on" or (constrained == "auto" and is_vllm):
            regex = contract_regex(rubric, settings.max_tokens, settings.constrained_rationale_chars)
        backend = OpenAIBackend(
            endpoint,
            timeout_s=settings.request_timeout_s,
            max_retries=settings.max_retries,
            max_in_flight=settings.max_in_flight,
            infos=infos,
        )
        kind = "vLLM" if is_vllm else "OpenAI-compatible"
        where = f"{kind} {endpoint.redacted()} model {model}, constrained decoding {'on' if regex else 'off'}"
    templates = load_templates(group.system_template, group.user_template)
    spec = ScorerSpec(
        role=role,
        backend="offline" if endpoint is None else "openai",
        model=model,
        # the rendered system prompt and the user template's source: a changed template file is a new version
        system_prompt=render_system(templates, rubric, group.description),
        user_template=templates.user,
        anchors_sha256=rubric.file_sha256,
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
        structured_regex=regex,
    )
    return spec, backend, where


def make_judge(
    unit: ScorerUnit, cfg: MiraConfig, endpoint: Endpoint | None = None
) -> tuple[ScorerSpec, ChatBackend, str]:
    """The teacher in free-form judging mode (rubric discovery): no rubric, no constrained decoding. Each record is
    judged with its own family's template; the spec holds those of every family of the unit (its version). No
    endpoint: the offline stand-in judge."""
    settings = cfg.pipeline
    families = sorted({cfg.sources[s].format for s in unit.sources}) or [unit.family]
    backend: ChatBackend
    if endpoint is None:
        model, backend, where = f"offline-judge:{DEFAULT_TEACHER_MODEL}", OfflineJudge(), "offline stand-in"
    else:
        from mira_dagster.io.llm_client import OpenAIBackend

        model = endpoint.model
        backend = OpenAIBackend(
            endpoint,
            timeout_s=settings.request_timeout_s,
            max_retries=settings.max_retries,
            max_in_flight=settings.max_in_flight,
        )
        where = f"{endpoint.redacted()} model {model}"
    spec = ScorerSpec(
        role="teacher",
        backend="offline" if endpoint is None else "openai",
        model=model,
        system_prompt=judge_system_prompt(unit.description),
        # one family: its template as before (same version); several: all of them
        user_template="\n\n".join(judge_template(f) for f in families),
        anchors_sha256="",
        temperature=settings.temperature,
        top_p=settings.top_p,
        max_tokens=settings.max_tokens,
    )
    return spec, backend, where

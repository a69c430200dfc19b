"""The scorer prompts are Jinja2 templates (mira_dagster/resources/templates/); these tests pin what they render.

tests/golden/prompts/ holds, per group of anchors/groups.yaml and for the qa family, the system prompt and one
rendered user message as the shipped templates render them (captured and reviewed, see its README), and two files
written by hand: what a user's own templates (written below into tmp_path) must render to.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from mira_dagster import cli
from mira_dagster.core.config import MiraConfig
from mira_dagster.core.prompts import (
    ContractTooLongError,
    PromptTemplateError,
    contract_limits,
    contract_regex,
    facet_guide,
    marked_system,
    marked_user,
    regex_literal,
    render_system,
    render_user,
)
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import AnchorDim, Rubric
from mira_dagster.core.scoring import Chunk, Completion, Job, Role, ScorerSpec, run_scorer
from mira_dagster.core.sft import sft_messages
from mira_dagster.io import llm_client
from mira_dagster.io.anchors import load_rubric
from mira_dagster.io.llm_client import Endpoint, ServerInfo
from mira_dagster.io.registry import load_config
from mira_dagster.io.scorers import make_scorer
from mira_dagster.io.store import ParquetReplyCache
from mira_dagster.io.templates import load_templates
from mira_dagster.package_data import ANCHORS_DIR, TEMPLATES_DIR

GOLDEN = Path(__file__).parents[1] / "golden" / "prompts"
OLD_GOLDEN = Path(__file__).parent / "golden"  # full prompts, also read by tests/e2e/test_anchors_command.py
UPSTREAM = Path(__file__).parents[1] / "fixtures" / "anchors" / "upstream" / "group_2_dim_anchors.jsonl"
REPLIES = Path(__file__).parents[1] / "fixtures" / "replies"

QA = Record(
    record_id="r1",
    source="reason_dpsk32",
    group_id="2",
    format="qa_with_think",
    layout="question_answer",
    question="What is 7 × 6?",
    thinking="Seven sixes: 6+6+6+6+6+6+6 = 42.",
    answer="The product is \\boxed{42}.",
    n_tokens=30,
    origin_file="x.jsonl",
    origin_line=1,
)
AGENT = Record(
    record_id="r2",
    source="swe_qa",
    group_id="D",
    format="agent",
    layout="agent_turns",
    task="Fix the missing colon in tests/missing_colon.py.",
    trajectory="### assistant\nLet me open the file.\n[action] open tests/missing_colon.py\n\n### tool\n1: def f()\n",
    outcome="diff --git a/tests/missing_colon.py b/tests/missing_colon.py\n-def f()\n+def f():",
    n_tokens=60,
    origin_file="y.jsonl",
    origin_line=3,
)
QA_PLAIN = Record(
    record_id="r3",
    source="s",
    group_id="Q",
    format="qa",
    layout="qa_fields",
    question="Is 91 prime?",
    answer="No: 91 = 7 × 13.",
    n_tokens=12,
    origin_file="z.jsonl",
    origin_line=2,
)
RECORDS = {"2": QA, "D": AGENT}


def golden(name: str, text: str) -> str:
    if os.environ.get("MIRA_UPDATE_GOLDEN"):
        (GOLDEN / name).write_text(text, encoding="utf-8")
    return (GOLDEN / name).read_text(encoding="utf-8")


def group_rubric(cfg: MiraConfig, group_id: str) -> Rubric:
    group = cfg.groups[group_id]
    return load_rubric(group.anchors, group_id, group.family)


def scorer_spec(
    cfg: MiraConfig, group_id: str, role: Role = "student", endpoint: Endpoint | None = None
) -> tuple[ScorerSpec, str]:
    spec, _, where = make_scorer(role, cfg.scorer_units()[group_id], cfg, group_rubric(cfg, group_id), endpoint)
    return spec, where


# --- the shipped templates reproduce the prompts byte for byte ---------------------------------------------------


@pytest.mark.parametrize("group_id", sorted(load_config().groups))
def test_every_group_renders_its_golden_prompts(group_id: str) -> None:
    cfg = load_config()
    rubric = group_rubric(cfg, group_id)
    spec, _ = scorer_spec(cfg, group_id)
    assert spec.system_prompt == golden(f"group_{group_id}.system.txt", spec.system_prompt)
    user = render_user(spec.user_template, rubric, RECORDS[group_id])
    assert user == golden(f"group_{group_id}.user.txt", user)
    # the same, as the full prompt a reviewer reads in tests/core/golden/
    full = (OLD_GOLDEN / f"prompt_group_{group_id}.txt").read_text(encoding="utf-8")
    assert full == f"=== system ===\n{spec.system_prompt}\n=== user ===\n{user}\n"


def test_qa_family_with_references_renders_its_golden_prompts() -> None:
    rubric = load_rubric(UPSTREAM, "Q", "qa")
    templates = load_templates()
    system = render_system(templates, rubric, "QA without thinking traces")
    assert system == golden("qa.system.txt", system)
    assert sum(ln.startswith("- ") for ln in system.splitlines()) == 12  # the cards' top-12
    user = render_user(templates, rubric, QA_PLAIN)
    assert user == golden("qa.user.txt", user)


@pytest.mark.parametrize("record", [QA, AGENT])
def test_user_prompt_follows_contract(record: Record) -> None:
    cfg = load_config()
    rubric = group_rubric(cfg, record.group_id)
    lines = render_user(load_templates(), rubric, record).splitlines()
    slot_lines = [ln for ln in lines if ln.startswith("[A")]
    assert slot_lines == [f"[A{d.slot}] {d.name}: <score>/10 — <justification>" for d in rubric.dims]
    assert lines[-4:] == [
        "overall: <0-100>",
        "training_recommendation: <keep | downsample | drop>",
        "domain_tag: <short tag>",
        "brief: <one-sentence summary>",
    ]


class _Recording:
    """A backend that records every (system, user) it is sent and answers nothing useful."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def complete(self, system: str, user: str, spec: ScorerSpec) -> Completion:
        self.sent.append((system, user))
        return Completion(text="no scores", finish_reason="stop")

    async def count_prompt_tokens(self, system: str, user: str, spec: ScorerSpec) -> int | None:
        return None


def test_system_prompt_is_identical_for_every_record_of_a_group(tmp_path: Path) -> None:
    """Records that differ in every field are scored the way the assets score them (run_scorer) and turned into
    SFT examples: every request and every example carries the group's golden system prompt, byte for byte, and
    nothing of its record (vLLM's prefix cache serves it once for all of them)."""
    cfg = load_config()
    spec, _ = scorer_spec(cfg, "2")
    rubric = group_rubric(cfg, "2")
    records = [
        QA,
        QA.model_copy(update={"record_id": "r8", "source": "lean_qa", "question": "Is 91 prime?", "answer": "No."}),
        QA.model_copy(update={"record_id": "r9", "question": "x" * 5000, "thinking": None, "answer": "{{ dims }}"}),
    ]
    backend = _Recording()
    jobs = [Job(r, render_user(spec.user_template, rubric, r)) for r in records]
    settings = cfg.pipeline.model_copy(update={"parse_retries": 0})
    chunk = Chunk([r.record_id for r in records], jobs)
    run_scorer([chunk], spec, backend, ParquetReplyCache(tmp_path), settings, sink=lambda j, o: None, total=3)
    assert len({user for _, user in backend.sent}) == len(records)  # the records' requests do differ
    expected = golden("group_2.system.txt", spec.system_prompt)
    assert [system for system, _ in backend.sent] == [expected] * len(records)
    assert [sft_messages(spec, rubric, r, "reply")[0]["content"] for r in records] == [expected] * len(records)
    assert not any(q in expected for q in ("What is 7", "Is 91 prime", "{{ dims }}"))


def test_qa_with_think_lists_five_dimensions_per_facet() -> None:
    user = render_user(load_templates(), group_rubric(load_config(), "2"), QA)
    for facet_text in (
        "judge the thinking trace itself",
        "judge the thinking trace and the answer together",
        "judge the question and the final answer",
    ):
        line = next(ln for ln in user.splitlines() if ln.endswith(facet_text))
        assert line.count("A") == 5


def test_one_mixed_rubric_renders_each_record_with_its_own_family() -> None:
    """scorer_scope global: one rubric over several families; each record keeps its own sections, and the guide
    lists the facets the dims have, in the order think, combined, qa, agent."""
    facets = ["agent", "think", "qa", "agent", "combined"] * 3
    dims = [AnchorDim(slot=i + 1, name=f"Dim {i + 1}", facet=f) for i, f in enumerate(facets)]
    rubric = Rubric.model_construct(group="global", family="mixed", dims=dims, file_sha256="x")
    assert [(g.facet, g.slots[0]) for g in facet_guide(rubric)] == [
        ("think", "A2"),
        ("combined", "A5"),
        ("qa", "A3"),
        ("agent", "A1"),
    ]
    templates = load_templates()
    agent, qa = render_user(templates, rubric, AGENT), render_user(templates, rubric, QA)
    assert "## Trajectory\n" in agent and "## Thinking" not in agent
    assert "## Thinking\nSeven sixes" in qa and "## Trajectory" not in qa
    assert "- A1, A4, A6, A9, A11, A14: judge the agent's trajectory and outcome" in agent


def test_record_text_that_looks_like_template_syntax_stays_literal() -> None:
    rubric = group_rubric(load_config(), "2")
    text = "Explain {{ answer }} and {% for x in y %}{{ x }}{% endfor %} {# not a comment #} ⟦answer⟧ {{"
    user = render_user(load_templates(), rubric, QA.model_copy(update={"question": text}))
    assert f"## Question\n{text}\n" in user


def test_empty_fields_read_none() -> None:
    user = render_user(load_templates(), group_rubric(load_config(), "2"), QA.model_copy(update={"thinking": ""}))
    assert "## Thinking\n(none)\n" in user


# --- a user's own templates --------------------------------------------------------------------------------------

CUSTOM_SYSTEM = """\
{# My upstream builder's system prompt, as a template. #}
You are the anchored judge for group {{ group }} — {{ description }}.
Score on these {{ dims | length }} dimensions:
{% for d in dims %}
  A{{ d.slot }} = {{ d.name }} (cluster {{ d.cluster_size }})
{% endfor %}
{% if not references %}
(no calibration references)
{% endif %}
"""

CUSTOM_USER = """\
{# My upstream builder's user prompt. #}
<record family="{{ family }}">
TASK: {{ task }}
OUTCOME: {{ outcome }}
</record>
Rate each of:
{% for d in dims %}
[A{{ d.slot }}] {{ d.name }}: <score>/10 — <justification>
{% endfor %}
{{ trailer }}
"""


def registry_with_templates(tmp_path: Path, **group_d: str) -> Path:
    """The shipped registry, copied into tmp_path, with group D's extra settings (relative paths stay relative)."""
    shipped = Path(load_config().path)
    # its data and anchors files sit beside its folder (../data/, ../mira_dagster/resources/anchors/)
    text = shipped.read_text(encoding="utf-8").replace(": ../", f": {shipped.parent.parent}/")
    text = text.replace("[../", f"[{shipped.parent.parent}/").replace("- ../", f"- {shipped.parent.parent}/")
    extra = "".join(f"\n    {k}: {v}" for k, v in group_d.items())
    text = text.replace("student_model: whw06/MIRA-Agent-Group4", f"student_model: whw06/MIRA-Agent-Group4{extra}")
    path = tmp_path / "groups.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_templates_dropped_in_by_a_user_render_byte_for_byte(tmp_path: Path) -> None:
    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "system.j2").write_text(CUSTOM_SYSTEM, encoding="utf-8")
    (tmp_path / "my" / "user.j2").write_text(CUSTOM_USER, encoding="utf-8")
    cfg = load_config(registry_with_templates(tmp_path, system_template="my/system.j2", user_template="my/user.j2"))
    rubric = group_rubric(cfg, "D")
    spec, _ = scorer_spec(cfg, "D")
    record = AGENT.model_copy(update={"task": "Make {{ 7 * 6 }} print 42 {% raw %}", "outcome": ""})
    assert spec.system_prompt == (GOLDEN / "custom_D.system.txt").read_text(encoding="utf-8")
    assert render_user(spec.user_template, rubric, record) == (GOLDEN / "custom_D.user.txt").read_text(encoding="utf-8")
    # the other group keeps the shipped templates
    shipped = (GOLDEN / "group_2.system.txt").read_text(encoding="utf-8")
    assert scorer_spec(cfg, "2")[0].system_prompt == shipped


@pytest.mark.parametrize(
    ("which", "old", "new", "new_version"),
    [
        ("system.j2", "Score on these", "Rate on these", True),
        ("user.j2", "Rate each of:", "Score each of:", True),
        # the user template's source is hashed (a message needs a record to render), so even a comment counts;
        # the system prompt is hashed as rendered, so a comment that changes no byte of it re-scores nothing
        ("user.j2", "{# My", "{# Still my", True),
        ("system.j2", "{# My", "{# Still my", False),
    ],
)
def test_a_changed_template_file_is_a_new_scorer_version(
    tmp_path: Path, which: str, old: str, new: str, new_version: bool
) -> None:
    (tmp_path / "system.j2").write_text(CUSTOM_SYSTEM, encoding="utf-8")
    (tmp_path / "user.j2").write_text(CUSTOM_USER, encoding="utf-8")
    cfg = load_config(registry_with_templates(tmp_path, system_template="system.j2", user_template="user.j2"))
    before = scorer_spec(cfg, "D")[0].version
    assert scorer_spec(cfg, "D")[0].version == before
    path = tmp_path / which
    path.write_text(path.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    assert (scorer_spec(cfg, "D")[0].version != before) == new_version


def test_a_template_error_is_one_line_naming_file_and_line(tmp_path: Path) -> None:
    rubric = group_rubric(load_config(), "2")
    bad = tmp_path / "user.j2"
    bad.write_text("Score this.\n\n{{ questoin }}\n", encoding="utf-8")
    with pytest.raises(PromptTemplateError) as err:
        render_user(load_templates(None, bad), rubric, QA)
    assert str(err.value) == f"{bad}:3: 'questoin' is undefined"
    bad.write_text("Score this.\n{% for d in dims %}\n", encoding="utf-8")
    with pytest.raises(PromptTemplateError, match=rf"^{re.escape(str(bad))}:2: .*'endfor'"):
        load_templates(None, bad)
    with pytest.raises(PromptTemplateError, match=r"nowhere\.j2: cannot read the prompt template"):
        load_templates(tmp_path / "nowhere.j2")


def test_anchors_check_shows_a_given_system_template(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "system.j2").write_text(CUSTOM_SYSTEM, encoding="utf-8")
    anchors = ANCHORS_DIR / "group_D_dim_anchors.jsonl"
    assert cli.main(["anchors", "check", str(anchors), "--system-template", str(tmp_path / "system.j2")]) == 0
    shown = capsys.readouterr().out.split("=== system prompt ===\n", 1)[1]
    assert shown == (GOLDEN / "custom_D.system.txt").read_text(encoding="utf-8") + "\n"


# --- constrained decoding ----------------------------------------------------------------------------------------


def contract_reply(rubric: Rubric, scores: list[str], rationale: str = "Clear and correct.") -> str:
    rows = "".join(f"[A{d.slot}] {d.name}: {s}/10 — {rationale}\n" for d, s in zip(rubric.dims, scores, strict=True))
    return rows + "overall: 78\ntraining_recommendation: keep\ndomain_tag: math/algebra\nbrief: A clean solution.\n"


def test_contract_regex_admits_half_points_and_the_longest_rationale_that_fits() -> None:
    cfg = load_config()
    rubric = group_rubric(cfg, "2")
    regex = contract_regex(rubric, cfg.pipeline.max_tokens, cfg.pipeline.constrained_rationale_chars)
    longest, _ = contract_limits(rubric, cfg.pipeline.max_tokens)
    assert 60 <= longest < 300  # derived from max_tokens 2048, below the setting's cap
    scores = ["7.5", "10", "0", "0.5", "9.5", *["8"] * 10]
    assert re.fullmatch(regex, contract_reply(rubric, scores))
    assert re.fullmatch(regex, contract_reply(rubric, scores, "x" * longest))
    assert not re.fullmatch(regex, contract_reply(rubric, scores, "x" * (longest + 1)))
    assert re.fullmatch(regex, (REPLIES / "01_contract_exact.txt").read_text(encoding="utf-8"))
    for bad in ("10.5", "11", "7.25", "-1", "07"):
        assert not re.fullmatch(regex, contract_reply(rubric, [bad, *scores[1:]])), bad
    assert not re.fullmatch(regex, contract_reply(rubric, scores, ""))
    for opens_with_a_number in ("3.5/10", "2.1", " 8"):  # what a small model wrote under the old constraint
        assert not re.fullmatch(regex, contract_reply(rubric, scores, opens_with_a_number)), opens_with_a_number
    assert not re.fullmatch(contract_regex(rubric, 2048, 20), contract_reply(rubric, scores, "x" * 21))  # the cap


def longest_reply(rubric: Rubric, max_tokens: int) -> str:
    """The longest reply the contract regex admits, in bytes: every free field at its limit."""
    rationale, tag = contract_limits(rubric, max_tokens)
    rows = "".join(f"[A{d.slot}] {d.name}: 7.5/10 — {'x' * rationale}\n" for d in rubric.dims)
    return (
        rows + f"overall: 100\ntraining_recommendation: downsample\ndomain_tag: {'t' * tag}\nbrief: {'b' * rationale}\n"
    )


@pytest.mark.parametrize("max_tokens", [1000, 1024, 2048, 4096])
@pytest.mark.parametrize("group", ["2", "D"])
def test_the_longest_constrained_reply_fits_max_tokens_at_a_byte_a_token(group: str, max_tokens: int) -> None:
    """No tokenizer of byte-level BPE or SentencePiece makes a token of less than a byte: a reply of at most
    max_tokens - 1 bytes (one token left for the end of sequence) always fits."""
    rubric = group_rubric(load_config(), group)
    reply = longest_reply(rubric, max_tokens)
    assert re.fullmatch(contract_regex(rubric, max_tokens), reply)
    assert max_tokens - 1 - len(rubric.dims) - 1 <= len(reply.encode()) <= max_tokens - 1  # fits, nearly all used


def test_a_max_tokens_too_small_for_the_contract_is_a_clear_error() -> None:
    rubric = group_rubric(load_config(), "D")
    with pytest.raises(ContractTooLongError, match="max_tokens 300 cannot hold a constrained reply"):
        contract_regex(rubric, 300)


def test_contract_regex_escapes_only_what_vllm_regex_engines_know() -> None:
    """re.escape writes escapes xgrammar warns about (`\\ `, `\\#`, `\\:`, ...): names are written literally,
    only the regex metacharacters escaped, and the regex still matches the name exactly."""
    name = "Plan (goal) / 2.5 + x? [a|b] {c} ^$ * & # ~ : , % ! @ = < > ; _ `é —"
    assert regex_literal(name) == (
        "Plan \\(goal\\) / 2\\.5 \\+ x\\? \\[a\\|b\\] \\{c\\} \\^\\$ \\* & # ~ : , % ! @ = < > ; _ `é —"
    )
    assert re.fullmatch(regex_literal(name), name)
    rubric = group_rubric(load_config(), "D")
    regex = contract_regex(rubric, 2048)
    assert not re.search(r"\\[^\\.^$*+?()\[\]{}|n]", regex)  # no other escape anywhere


@pytest.fixture
def vllm_endpoint(monkeypatch: pytest.MonkeyPatch) -> Endpoint:
    """An endpoint that says it is vLLM, without a server: make_scorer only probes it."""
    monkeypatch.setattr(llm_client, "probe", lambda url, key: ServerInfo(reachable=True, is_vllm=True))
    return Endpoint(base_urls=("http://127.0.0.1:9/v1",), api_key="EMPTY", model="whw06/MIRA-Agent-Group4")


@pytest.mark.parametrize(
    ("pipeline", "group", "constrained"),
    [("auto", None, True), ("auto", "off", False), ("off", None, False), ("off", "on", True), ("on", "off", False)],
)
def test_a_group_turns_constrained_decoding_on_or_off(
    vllm_endpoint: Endpoint, pipeline: str, group: str | None, constrained: bool
) -> None:
    cfg = load_config()
    cfg.pipeline.constrained_decoding = pipeline  # type: ignore[assignment]
    cfg.groups["D"].constrained_decoding = group  # type: ignore[assignment]
    spec, where = scorer_spec(cfg, "D", endpoint=vllm_endpoint)
    assert (spec.structured_regex is not None) == constrained
    assert where.endswith(f"constrained decoding {'on' if constrained else 'off'}")
    if constrained:
        assert spec.structured_regex == contract_regex(group_rubric(cfg, "D"), cfg.pipeline.max_tokens, 300)


# --- provenance marks --------------------------------------------------------------------------------------------

SHIPPED_TEMPLATES = TEMPLATES_DIR
ONLY_TAGS = re.compile(r"^\s*(\{%.*?%\}\s*|\{#.*?#\}\s*)*$")


@pytest.mark.parametrize("name", ["system.j2", "user.j2"])
def test_every_shipped_template_line_that_sends_text_is_marked(name: str) -> None:
    """Outside the header comment, a line is blank, only tags, or starts with `{# card ... #}` / `{# ours: why #}`;
    an `ours` mark always says why."""
    source = (SHIPPED_TEMPLATES / name).read_text(encoding="utf-8")
    body = source.split("#}\n", 1)[1]  # after the header comment
    for line in body.splitlines():
        if not line.strip() or ONLY_TAGS.match(line):
            continue
        m = re.match(r"\{# (card|ours)(:? ?)(.*?) #\}", line)
        assert m, line
        assert m[1] == "card" or (m[2] == ": " and m[3]), f"ours without a reason: {line}"


@pytest.mark.parametrize("group_id", ["2", "D"])
def test_marked_prompts_are_the_prompts_and_the_cards_lines_are_marked_card(group_id: str) -> None:
    cfg = load_config()
    rubric = load_rubric(UPSTREAM, group_id, cfg.groups[group_id].family) if group_id == "2" else group_rubric(cfg, "D")
    templates = load_templates()
    description = cfg.groups[group_id].description
    record = RECORDS[group_id]
    system = marked_system(templates, rubric, description)
    user = marked_user(templates, rubric, record)
    assert system is not None and user is not None
    # the marks send nothing: the marked lines are the prompts, byte for byte
    assert "\n".join(ln.text for ln in system) == render_system(templates, rubric, description)
    assert "\n".join(ln.text for ln in user) == render_user(templates, rubric, record)
    for line in system + user:
        assert (line.mark in ("card", "ours")) == bool(line.text.strip()), line
    card = {ln.text for ln in system + user if ln.mark == "card"}
    contract = {f"[A{d.slot}] {d.name}: <score>/10 — <justification>" for d in rubric.dims}
    contract |= {"overall: <0-100>", "training_recommendation: <keep | downsample | drop>"}
    contract |= {"domain_tag: <short tag>", "brief: <one-sentence summary>"}
    contract |= {ref.line(d.name) for d, ref in rubric.shown_references()}
    values = [getattr(record, f) for f in ("question", "thinking", "answer", "task", "trajectory", "outcome")]
    contract |= {v for text in values if text for v in text.splitlines() if v.strip()}
    assert card == contract  # exactly the cards' contract, the references and the record are "card"
    ours = [ln for ln in system + user if ln.mark == "ours"]
    assert ours and all(ln.why for ln in ours)


def test_a_template_without_marks_is_shown_unmarked() -> None:
    cfg = load_config()
    rubric = group_rubric(cfg, "D")
    templates = load_templates()
    plain = templates.__class__("Rate group {{ group }}.\nBe fair.", "x", templates.system_path, templates.user_path)
    lines = marked_system(plain, rubric, "")
    assert lines is not None and [ln.mark for ln in lines] == ["", ""]

"""The offline teacher's free-form judging: a documented stand-in for Phase 1 (rubric discovery).

For each record it picks 8 of 15 latent facets (deterministically from the record text), names each with one
of several surface names ("Factual Correctness", "Correctness", "Mathematical Accuracy"), scores it from the
record's features, and writes a justification from the facet's own vocabulary, in varied line formats. So the
discovery stage has real clustering work to do: many names, one facet.
"""

from __future__ import annotations

import hashlib

from mira_dagster.core.config import Family
from mira_dagster.core.offline import OfflineBackend, _unit, features

# (facet, surface names, vocabulary of the justification)
QA_FACETS: list[tuple[str, list[str], list[str]]] = [
    (
        "qa",
        ["Factual Correctness", "Correctness", "Mathematical Accuracy"],
        ["correct", "accurate", "valid", "error-free", "verified result"],
    ),
    (
        "think",
        ["Difficulty Appropriateness", "Challenge Level Fit", "Appropriate Difficulty"],
        ["suitable", "challenge", "level", "audience", "calibrated"],
    ),
    (
        "combined",
        ["Educational Value", "Instructional Value", "Learning Value"],
        ["teaches", "learner", "instructive", "lesson", "student"],
    ),
    (
        "think",
        ["Difficulty Level", "Problem Difficulty", "Complexity"],
        ["hard", "multi-step", "intricate", "nontrivial", "olympiad"],
    ),
    (
        "think",
        ["Specificity", "Precision of Steps", "Concreteness"],
        ["specific", "concrete", "explicit", "detailed", "exact"],
    ),
    (
        "qa",
        ["Answer Depth", "Depth of Explanation", "Thoroughness"],
        ["deep", "thorough", "insight", "explains why", "underlying"],
    ),
    (
        "combined",
        ["Think-Response Consistency", "Reasoning-Answer Alignment", "Consistency"],
        ["consistent", "matches", "aligned", "agrees", "contradiction"],
    ),
    (
        "qa",
        ["Answer Completeness", "Completeness", "Coverage"],
        ["complete", "covers", "missing", "all parts", "finished"],
    ),
    (
        "think",
        ["Verifiability", "Checkability", "Verifiable Reasoning"],
        ["checked", "verify", "proof", "traceable", "reproducible"],
    ),
    (
        "combined",
        ["Pedagogical Value", "Teaching Quality", "Didactic Quality"],
        ["pedagogy", "scaffold", "pedagogical", "walks through", "didactic"],
    ),
    (
        "think",
        ["Reasoning Coherence", "Logical Flow", "Coherence"],
        ["logical", "flows", "coherent", "sequence", "connected"],
    ),
    (
        "qa",
        ["Question Clarity", "Problem Clarity", "Clarity of Question"],
        ["question", "clearly posed", "unambiguous", "statement", "wording"],
    ),
    ("qa", ["Answer Conciseness", "Conciseness", "Brevity"], ["concise", "brief", "verbose", "succinct", "padding"]),
    (
        "combined",
        ["Actionability", "Usefulness", "Practical Use"],
        ["actionable", "usable", "apply", "useful", "takeaway"],
    ),
    (
        "combined",
        ["Practical Applicability", "Real-World Relevance", "Applicability"],
        ["real-world", "practical", "relevant", "application", "industry"],
    ),
]
AGENT_FACETS: list[tuple[str, list[str], list[str]]] = [
    (
        "agent",
        ["Goal Achievement", "Task Success", "Issue Resolution"],
        ["resolved", "fixed", "goal", "success", "tests pass"],
    ),
    (
        "agent",
        ["Plan Quality", "Reasoning Transparency", "Planning"],
        ["plan", "strategy", "explains", "reasoning", "intent"],
    ),
    (
        "agent",
        ["Output Style/Communication", "Communication", "Clarity of Messages"],
        ["communicates", "summary", "message", "tone", "readable"],
    ),
    (
        "agent",
        ["Test Coverage & Verification Rigor", "Verification", "Testing Rigor"],
        ["test", "reproduce", "verified", "regression", "assert"],
    ),
    (
        "agent",
        ["Multi-turn Coherence", "Turn Coherence", "Context Tracking"],
        ["turns", "context", "earlier", "coherent", "remembers"],
    ),
    (
        "agent",
        ["Error Recovery", "Recovery from Failures", "Resilience"],
        ["error", "recovers", "retry", "traceback", "failure"],
    ),
    (
        "agent",
        ["Tool Argument Correctness", "Argument Accuracy", "Command Correctness"],
        ["arguments", "flags", "paths", "parameters", "syntax"],
    ),
    (
        "agent",
        ["Action Efficiency", "Efficiency", "Step Economy"],
        ["efficient", "redundant", "steps", "wasted", "economy"],
    ),
    (
        "agent",
        ["User Intent Comprehension", "Intent Understanding", "Requirement Understanding"],
        ["intent", "requirement", "asked", "understands", "issue text"],
    ),
    (
        "agent",
        ["Safety & scope", "Scope Discipline", "Safe Operations"],
        ["safe", "scope", "destructive", "unrelated files", "permissions"],
    ),
    (
        "agent",
        ["Observation handling", "Use of Observations", "Output Reading"],
        ["observation", "output", "reads", "logs", "notices"],
    ),
    (
        "agent",
        ["Code Change Minimality", "Minimal Diff", "Patch Focus"],
        ["minimal", "diff", "focused", "small patch", "surgical"],
    ),
    (
        "agent",
        ["Tool Selection", "Tool Choice", "Choice of Tools"],
        ["tool", "chooses", "editor", "search command", "appropriate tool"],
    ),
    (
        "agent",
        ["Code Quality", "Maintainability", "Readability of Code"],
        ["readable", "idiomatic", "maintainable", "style", "naming"],
    ),
    (
        "agent",
        ["Exploration", "Codebase Navigation", "Repository Exploration"],
        ["explores", "navigates", "locates", "grep", "structure"],
    ),
]
_SECTION = {"think": "Thinking:", "qa": "Answer:", "combined": "Both:"}
FORMATS = ["- **{name}** ({score}/10): {why}", "{name}: {score}/10 — {why}", "{n}. {name} - {score}/10 - {why}"]


def catalogue(family: Family) -> list[tuple[str, list[str], list[str]]]:
    return AGENT_FACETS if family == "agent" else QA_FACETS


class OfflineJudge(OfflineBackend):
    """Answers the free-form judging prompt (see prompts.judge_template); the family comes from the prompt."""

    def __init__(self) -> None:
        super().__init__("teacher")

    def judge(self, user: str) -> str:
        record_text = user.split("\nJudge this record freely", 1)[0]
        key = hashlib.sha256(record_text.encode("utf-8")).hexdigest()
        family: Family = "agent" if "## Trajectory" in record_text else "qa_with_think"
        feats = features(record_text)
        facets = catalogue(family)
        chosen = sorted(range(len(facets)), key=lambda i: _unit("pick", key, i))[:8]
        by_section: dict[str, list[str]] = {}
        for n, i in enumerate(sorted(chosen), 1):
            facet, names, vocab = facets[i]
            name = names[int(_unit("name", key, i) * len(names))]
            words = sorted(vocab, key=lambda w: _unit("word", key, i, w))[:3]
            score = self.slot_score(key, feats, i + 1, names[0])
            why = f"The record is {words[0]} and {words[1]}; {words[2]} overall."
            line = FORMATS[int(_unit("fmt", key, i) * len(FORMATS))].format(name=name, score=f"{score:g}", why=why, n=n)
            by_section.setdefault(facet, []).append(line)
        lines = ["Here is my assessment of this record."]
        for facet, rows in by_section.items():
            if family == "qa_with_think":
                lines.append(_SECTION[facet])
            lines += rows
        return "\n".join(lines) + "\n"

    def reply(self, user: str) -> str:
        # OfflineBackend.complete calls this: the judge answers the free-form prompt instead of the contract
        return self.judge(user)

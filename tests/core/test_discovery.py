from __future__ import annotations

import random
from collections import Counter

import numpy as np
import pytest

from mira_dagster.core.clustering import group_sources
from mira_dagster.core.discovery import (
    JudgmentItem,
    discover_anchors,
    item_text,
    items_of,
    judgments_frame,
    parse_free_judgment,
)
from mira_dagster.core.embeddings import HashedTfidfEmbedder
from mira_dagster.core.offline_judge import OfflineJudge
from mira_dagster.core.prompts import fill_record, judge_template
from mira_dagster.io.embedding_client import OpenAIEmbedder
from tests.conftest import SAMPLE
from tests.helpers import read_source
from tests.loopback import ChatServer, serve

# 15 planted facets: several surface names each, and a vocabulary of their own for the rationales.
FACETS = [
    (["Factual Correctness", "Correctness", "Mathematical Accuracy"], "correct accurate valid error-free result"),
    (["Clarity", "Readability", "Clear Writing"], "clear readable wording plain legible"),
    (["Depth", "Thoroughness", "Insight"], "deep thorough insight underlying nuanced"),
    (["Difficulty", "Challenge", "Complexity"], "hard challenging intricate multi-step olympiad"),
    (["Completeness", "Coverage", "All Parts Answered"], "complete covers missing finished parts"),
    (["Conciseness", "Brevity", "Succinctness"], "concise brief verbose succinct padding"),
    (["Verifiability", "Checkability", "Traceability"], "verify checked traceable reproducible audit"),
    (["Pedagogy", "Teaching Value", "Didactic Quality"], "teaches learner lesson scaffold student"),
    (["Coherence", "Logical Flow", "Consistency of Steps"], "logical flows coherent sequence connected"),
    (["Relevance", "Practicality", "Real-World Use"], "practical real-world industry application relevant"),
    (["Formatting", "Presentation", "Layout"], "markdown headings bullets layout formatted"),
    (["Originality", "Novelty", "Creativity"], "novel original creative unusual fresh"),
    (["Safety", "Harmlessness", "Responsible Content"], "harmless safe toxic responsible policy"),
    (["Tool Selection", "Tool Choice"], "tool chooses editor grep appropriate"),
    (["Tool Selection", "Safety & Scope", "Scope Discipline"], "destructive permissions unrelated files scope rm"),
]
FILLER = ["the", "record", "this", "is", "overall", "quite", "somewhat", "and", "with", "of"]


def planted_items(seed: int = 0) -> tuple[list[JudgmentItem], list[int]]:
    rng = random.Random(seed)
    items, truth = [], []
    for f, (names, vocab) in enumerate(FACETS):
        words = vocab.split()
        n = 70 - 3 * f  # distinct sizes so the slot order is defined
        for j in range(n):
            if f == 13:  # "Tool Selection" dominates here ...
                name = "Tool Selection" if j % 4 else "Tool Choice"
            elif f == 14:  # ... and is the most frequent name here too, but with fewer items
                name = ["Tool Selection", "Tool Selection", "Safety & Scope", "Scope Discipline"][j % 4]
            else:
                name = names[j % len(names)]
            why = " ".join(rng.sample(words, 4) + rng.sample(FILLER, 2))
            items.append(
                JudgmentItem(
                    record_id=f"r{f}-{j}",
                    source="s",
                    dimension=name,
                    facet="qa",
                    score=rng.randint(0, 10),
                    rationale=why,
                )
            )
            truth.append(f)
    return items, truth


def test_anchor_rubric_recovers_planted_facets() -> None:
    items, truth = planted_items()
    x = HashedTfidfEmbedder().embed([item_text(i) for i in items])
    found = discover_anchors(items, x, seed=0)
    majority = {}
    for slot in range(1, 16):
        members = [t for t, s in zip(truth, found.item_slots, strict=True) if s == slot]
        majority[slot] = Counter(members).most_common(1)[0][0]
    counts = Counter(majority.values())
    one_to_one = [s for s, f in majority.items() if counts[f] == 1]
    assert len(one_to_one) >= 13, majority
    names = [d.name for d in found.dims]
    assert len(set(names)) == 15
    assert "Tool Selection" in names and "Tool Selection (Safety & Scope)" in names
    bare = next(d for d in found.dims if d.name == "Tool Selection")
    assert bare.cluster_size > next(d for d in found.dims if d.name == "Tool Selection (Safety & Scope)").cluster_size
    sizes = [d.cluster_size for d in found.dims]
    assert sizes == sorted(sizes, reverse=True) and [d.slot for d in found.dims] == list(range(1, 16))
    refs = [d for d in found.dims if d.calibration_references]
    assert [d.slot for d in refs] == list(range(1, 13))
    assert all(r.calibration_references[0].dimension == r.name for r in refs)


def test_the_rubric_does_not_depend_on_the_order_the_replies_came_in() -> None:
    """After an interrupted run the judgments come back cached first, the rest after: the same items in another
    order must give the same rubric (KMeans' start and the names' ties follow the input order)."""
    items, _ = planted_items(seed=3)
    tied = [i.model_copy(update={"dimension": "Alpha" if n % 2 else "Beta"}) for n, i in enumerate(items[:40])]
    frame = judgments_frame([*tied, *items[40:]])
    rubrics = []
    for df in (frame, frame.reverse(), frame.sample(fraction=1.0, shuffle=True, seed=7)):
        ordered = items_of(df)
        x = HashedTfidfEmbedder().embed([item_text(i) for i in ordered])
        rubrics.append(discover_anchors(ordered, x, seed=0).dims)
    assert rubrics[0] == rubrics[1] == rubrics[2]


def test_parse_free_judgment_formats() -> None:
    text = (
        "Here is my view.\r\nThinking:\r\n- **Logical Flow** (8/10): steps follow.\r\n"
        "Answer:\n1. Correctness - 9/10 - right.\nClarity: 7.5/10 — clear enough\n"
        "Both:\n* Consistency: 6/10 | matches\nNovelty: 11/10 — nope\nIn sum, good."
    )
    items = parse_free_judgment(text, "qa_with_think")
    assert items == [
        ("Logical Flow", "think", 8.0, "steps follow."),
        ("Correctness", "qa", 9.0, "right."),
        ("Clarity", "qa", 7.5, "clear enough"),
        ("Consistency", "combined", 6.0, "matches"),
    ]
    assert {f for _, f, _, _ in parse_free_judgment(text, "agent")} == {"agent"}


def test_offline_judge_names_vary_and_parse() -> None:
    recs = read_source(
        "s", "2", "qa_with_think", [SAMPLE / "lean_deepseek_prover_v15_minif2f_valid_fewshot.jsonl"]
    ).records
    judge, template = OfflineJudge(), judge_template("qa_with_think")
    items = [it for r in recs for it in parse_free_judgment(judge.judge(fill_record(template, r)), "qa_with_think")]
    assert len(items) == 8 * len(recs)
    names = Counter(name for name, *_ in items)
    assert {"Factual Correctness", "Correctness", "Mathematical Accuracy"} <= set(names)
    assert {f for _, f, _, _ in items} == {"think", "qa", "combined"}


def test_group_sources_separates_and_reports_disagreement() -> None:
    vecs = {
        "a1": np.array([1.0, 0.1, 0]),
        "a2": np.array([0.9, 0.2, 0]),
        "b1": np.array([0, 0.1, 1.0]),
        "b2": np.array([0, 0.2, 0.9]),
    }
    groups = group_sources(vecs, {"a1": "A", "a2": "A", "b1": "B", "b2": "A"}, k=2)
    by = {g.source: g for g in groups}
    assert by["a1"].cluster == by["a2"].cluster != by["b1"].cluster == by["b2"].cluster
    assert by["a1"].intra_cluster_cosine > 0.9
    assert [g.source for g in groups if not g.agrees] in (["b1"], ["b2"])  # the tied cluster: one disagrees


def test_openai_embedder_against_loopback() -> None:
    server = ChatServer()
    with serve(server) as url:
        emb = OpenAIEmbedder(url, "embed-model", batch_size=2)
        x = emb.embed(["tool choice grep", "tool choice grep editor", "deep thorough insight"])
    assert server.embedding_requests == 2
    assert x.shape == (3, 64)
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0)
    assert x[0] @ x[1] > x[0] @ x[2]


@pytest.mark.parametrize("seed", [1, 2])
def test_recovery_is_not_a_lucky_seed(seed: int) -> None:
    items, truth = planted_items(seed)
    found = discover_anchors(items, HashedTfidfEmbedder().embed([item_text(i) for i in items]), seed=seed)
    majority = {
        s: Counter(t for t, sl in zip(truth, found.item_slots, strict=True) if sl == s).most_common(1)[0][0]
        for s in range(1, 16)
    }
    counts = Counter(majority.values())
    assert sum(counts[f] == 1 for f in majority.values()) >= 13

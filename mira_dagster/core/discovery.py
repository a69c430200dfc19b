"""Stage 1: free-form teacher judgments, parsed into items, clustered into the group's 15 anchor slots.

The naming rule follows the model cards: slots are sorted by cluster size; a slot is named by the most
frequent dimension name among its items; when two clusters would share a name, the cluster holding more
items with that name keeps it bare and the other gets a parenthetical sub-label, its own most frequent other
name ("Tool Selection" and "Tool Selection (Safety & Scope)"). The item nearest each centroid of the 12
largest clusters becomes a calibration reference.

A configured rubric (a group's shipped anchors file, the released students') without references gets them the same
way from the same judgments (`configured_references`): each judged item joins the configured slot its text is
nearest to, and the item nearest the centre of each of the 12 largest of those clusters is the slot's reference.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import polars as pl
from pydantic import BaseModel

from mira_dagster.core.clustering import kmeans
from mira_dagster.core.config import Family
from mira_dagster.core.embeddings import dense
from mira_dagster.core.prompts import fill_record, judge_template
from mira_dagster.core.records import Record
from mira_dagster.core.rubric import N_SLOTS, AnchorDim, CalibrationReference, Facet
from mira_dagster.core.scoring import Job

if TYPE_CHECKING:
    from mira_dagster.core.embeddings import Matrix

N_REFERENCES = 12


class JudgmentItem(BaseModel):
    record_id: str
    source: str
    dimension: str
    facet: Facet
    score: float
    rationale: str


_HEADING = re.compile(
    r"^\s*(?:#+\s*)?\**\s*(thinking|answer|both|combined|qa|question and answer)\s*\**\s*:?\s*$", re.I
)
_ITEM = re.compile(
    r"^\s*(?:[-*•]|\d+[.)])?\s*\**\s*(?P<name>[A-Za-z][^:()\n]{1,80}?)\s*\**\s*"
    r"(?:\(\s*(?P<s1>-?\d+(?:\.\d+)?)\s*/\s*10\s*\)|[:\-–—]\s*\**\s*(?P<s2>-?\d+(?:\.\d+)?)\s*/\s*10\s*\**)"
    r"\s*[:\-–—|]?\s*(?P<rationale>.*)$"
)
_SECTION_FACET = {
    "thinking": "think",
    "answer": "qa",
    "qa": "qa",
    "question and answer": "qa",
    "both": "combined",
    "combined": "combined",
}


def parse_free_judgment(text: str, family: Family) -> list[tuple[str, Facet, float, str]]:
    """(dimension name, facet, score, rationale) for every judged dimension the text contains.

    Tolerates bullets, numbering, bold names, "(7/10)" or ": 7/10", any dash before the rationale, Windows line
    endings and prose around the list; a score outside 0-10 drops that item.
    """
    default: Facet = "agent" if family == "agent" else "qa"
    facet: Facet = default
    out = []
    for line in text.replace("\r\n", "\n").split("\n"):
        if h := _HEADING.match(line):
            facet = _SECTION_FACET[h.group(1).lower()] if family == "qa_with_think" else default  # type: ignore[assignment]
            continue
        m = _ITEM.match(line.replace("**", ""))
        if not m:
            continue
        score = float(m.group("s1") or m.group("s2"))
        if not 0 <= score <= 10:
            continue
        name = " ".join(m.group("name").split()).strip(" *")
        out.append((name, facet, score, m.group("rationale").strip()))
    return out


JUDGMENT_SCHEMA = {
    "record_id": pl.String,
    "source": pl.String,
    "dimension": pl.String,
    "facet": pl.String,
    "score": pl.Float64,
    "rationale": pl.String,
}


def judgment_jobs(records: Sequence[Record]) -> list[Job]:
    """Each record in its own family's free-form judging prompt (a global unit spans several families)."""
    return [Job(r, fill_record(judge_template(r.format), r)) for r in records]


def judgment_items(replies: Iterable[tuple[Record, str]]) -> list[JudgmentItem]:
    """The items of every (record, free-form reply)."""
    return [
        JudgmentItem(record_id=r.record_id, source=r.source, dimension=name, facet=facet, score=score, rationale=why)
        for r, text in replies
        for name, facet, score, why in parse_free_judgment(text, r.format)
    ]


def judgments_frame(items: Sequence[JudgmentItem]) -> pl.DataFrame:
    return pl.DataFrame([i.model_dump() for i in items], schema=JUDGMENT_SCHEMA)


def items_of(df: pl.DataFrame) -> list[JudgmentItem]:
    """The items of a teacher_judgments partition (its other columns ignored), in one order whatever order the
    replies came in (cached first after an interrupted run, say): KMeans and the names' ties depend on it."""
    fields = list(JudgmentItem.model_fields)
    rows = df.select(fields).sort(fields, nulls_last=True).iter_rows(named=True)
    return [JudgmentItem(**row) for row in rows]


def _ranked(counts: Counter[str]) -> list[tuple[str, int]]:
    """Counter.most_common with ties broken by the name (most_common breaks them by first appearance)."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def item_text(item: JudgmentItem) -> str:
    return f"{item.dimension}: {item.rationale}"


class Discovered(BaseModel):
    dims: list[AnchorDim]
    item_slots: list[int]  # the slot of every item, in input order


def discover_anchors(items: Sequence[JudgmentItem], x: Matrix, k: int = N_SLOTS, seed: int = 0) -> Discovered:
    labels, centers = kmeans(x, k, seed)
    sizes = Counter(labels.tolist())
    order = sorted(sizes, key=lambda c: (-sizes[c], c))  # slot i+1 = i-th largest cluster
    slot_of = {c: i + 1 for i, c in enumerate(order)}
    names = {c: Counter(items[i].dimension for i in np.flatnonzero(labels == c)) for c in order}
    slot_names = _unique_names(order, names)
    dims = []
    for c in order:
        members = np.flatnonzero(labels == c)
        facet = _ranked(Counter(items[i].facet for i in members))[0][0]
        refs = []
        if slot_of[c] <= N_REFERENCES:
            # the members' rows only (a sparse product when x is sparse): the judgment matrix is never densified,
            # which at 2^18 hashed columns would take n_items x 2 MB
            nearest = members[int(np.argmax(np.asarray(x[members] @ centers[c]).ravel()))]
            it = items[nearest]
            refs = [
                CalibrationReference(
                    dimension=slot_names[c],
                    score=it.score,
                    rationale=it.rationale,
                    source_dimension=it.dimension,
                    record_id=it.record_id,
                    origin="discovery: the judged item nearest its cluster's centre",
                    source=it.source,
                    cluster_items=int(sizes[c]),
                )
            ]
        dims.append(
            AnchorDim(
                slot=slot_of[c],
                name=slot_names[c],
                cluster_size=int(sizes[c]),
                facet=facet,
                calibration_references=refs,
            )
        )
    return Discovered(dims=dims, item_slots=[slot_of[c] for c in labels.tolist()])


def _unique_names(order: list[int], names: dict[int, Counter[str]]) -> dict[int, str]:
    top = {c: _ranked(names[c])[0][0] for c in order}
    result: dict[int, str] = {}
    for name in dict.fromkeys(top[c] for c in order):
        holders = [c for c in order if top[c] == name]
        # the cluster holding the most items labelled `name` keeps it bare (ties: the larger cluster)
        keeper = max(holders, key=lambda c: (names[c][name], -order.index(c)))
        result[keeper] = name
    used = set(result.values())
    for c in order:
        if c in result:
            continue
        name = top[c]
        subs = [n for n, _ in _ranked(names[c]) if n != name and f"{name} ({n})" not in used]
        label = f"{name} ({subs[0]})" if subs else name
        i = 2
        while label in used:
            label, i = f"{name} ({i})", i + 1
        result[c] = label
        used.add(label)
    return result


def configured_references(
    dims: Sequence[AnchorDim], items: Sequence[JudgmentItem], x_slots: Matrix, x_items: Matrix, **provenance: object
) -> list[AnchorDim]:
    """The configured slots with calibration references drawn from the teacher's free judgments of the user's corpus.

    `x_slots` embeds each slot's name, `x_items` each item's `item_text`, by one embedder in one batch (rows
    L2-normalised). Each item joins the slot whose name is nearest (cosine) among the slots of the item's facet (all
    slots when none has it); an item sharing nothing with any slot (cosine 0) joins none. A slot's cluster centre is
    the mean of its items; its reference is the item nearest that centre. The 12 slots with the most items (ties:
    slot order) get one each, as the cards' "top-12 anchor calibration references"; every reference records where it
    came from (`origin`, record, source, the judged dimension, the cluster's size, the cosine to its centre,
    `provenance`). Slots are returned in order, everything else in them unchanged.
    """
    sim = dense(x_items @ x_slots.T).reshape(len(items), len(dims))
    facets = np.array([d.facet for d in dims])
    members: dict[int, list[int]] = {n: [] for n in range(len(dims))}
    for i, item in enumerate(items):
        allowed = facets == item.facet
        row = np.where(allowed if allowed.any() else True, sim[i], -np.inf)
        best = int(np.argmax(row))
        if row[best] > 0:
            members[best].append(i)
    ranked = sorted((n for n in members if members[n]), key=lambda n: (-len(members[n]), n))[:N_REFERENCES]
    out = [d.model_copy(deep=True) for d in dims]
    for n in ranked:
        rows = x_items[members[n]]
        centre = np.asarray(rows.mean(axis=0)).ravel()
        centre /= np.linalg.norm(centre) or 1.0
        closeness = np.asarray(rows @ centre).ravel()
        pick = int(np.argmax(closeness))
        it = items[members[n][pick]]
        out[n].calibration_references = [
            CalibrationReference(
                dimension=dims[n].name,
                score=it.score,
                rationale=it.rationale,
                origin="teacher judgment nearest the slot's cluster centre",
                record_id=it.record_id,
                source=it.source,
                source_dimension=it.dimension,
                cluster_items=len(members[n]),
                centre_cosine=round(float(closeness[pick]), 4),
                **provenance,
            )
        ]
    return out

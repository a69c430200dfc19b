"""`mira inspect`: what ingest would make of some files, before they are registered. Reads only.

Per file: the format, how many units were read, which layout matched how many (per prompt family when no
group is given), a few normalised records, the quarantine reasons with counts; for objects no layout matched or
whose required fields came out empty, every key seen with an example value and a suggested `fields:` mapping to
paste into the registry; and keys holding prose a layout left unused (a half match), with a mapping that reads
them too.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from mira_dagster.core.layouts import PREFERENCE_LAYOUTS, Side, as_text
from mira_dagster.core.mapping import compile_mapping, suggest_mapping, suggest_with_unused
from mira_dagster.core.records import Rejected, is_pair, printable, to_fields, unit_value, unused_text_keys
from mira_dagster.io.readers import SourceFileError, describe_container, expand_files, iter_units, sniff

FAMILIES = ("qa_with_think", "agent")
Preference = Literal["chosen", "rejected", "both"]  # "qa" reads exactly as qa_with_think


@dataclass
class FamilyResult:
    records: int = 0
    layouts: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)  # kind
    first_reason: dict[str, str] = field(default_factory=dict)  # kind -> "line N: reason"
    examples: list[tuple[int, str, dict[str, str]]] = field(default_factory=list)
    unmatched_keys: Counter[tuple[str, ...]] = field(default_factory=Counter)
    first_unmatched: Any = None
    # every key of the objects that gave no record (no layout, empty field) -> an example value
    keys_seen: dict[str, str] = field(default_factory=dict)
    # keys holding prose a layout left unused -> records, and a mapping that reads them, from the first such record
    unused: Counter[str] = field(default_factory=Counter)
    unused_suggestion: dict[str, str] = field(default_factory=dict)


@dataclass
class FileReport:
    path: str
    format: str = ""
    container: str = ""  # what the file is read as, by its content (readers.describe_container)
    units: int = 0
    error: str | None = None
    families: dict[str, FamilyResult] = field(default_factory=dict)

    def best(self) -> tuple[str, FamilyResult] | None:
        return max(self.families.items(), key=lambda kv: kv[1].records, default=None)


def inspect_files(
    patterns: Sequence[Path],
    family: str | None = None,
    mapping: dict[str, str] | None = None,
    max_bytes: int = 4 * 1024 * 1024,
    examples: int = 3,
    preference: Preference = "chosen",
    scratch: Path | None = None,
    roots: Sequence[Path] = (),
) -> list[FileReport]:
    """One report per file; `preference` is the source's (which side of a preference pair is the record);
    `scratch` the folder under MIRA_HOME where archive members are unpacked while read; `roots` where symlinks may
    lead (the registry's folder and allowed_roots, as ingest reads them)."""
    reports = []
    for pattern in patterns:
        try:
            files = expand_files([Path(pattern).absolute()], "inspect", roots)
        except SourceFileError as exc:
            reports.append(FileReport(str(pattern), error=str(exc).removeprefix("source 'inspect': ")))
            continue
        reports += [_inspect_file(f, family, mapping, max_bytes, examples, preference, scratch) for f in files]
    return reports


def _inspect_file(
    path: Path,
    family: str | None,
    mapping: dict[str, str] | None,
    max_bytes: int,
    examples: int,
    preference: Preference = "chosen",
    scratch: Path | None = None,
) -> FileReport:
    families = (family,) if family else FAMILIES
    compiled = {f: compile_mapping(mapping, f) if mapping else None for f in families}
    report = FileReport(str(path), families={f: FamilyResult() for f in families})
    try:
        kind, comp = sniff(path)
        report.format = kind + (f", {comp}" if comp else "")
        report.container = describe_container(path)
        for units in iter_units(path, "inspect", max_bytes, scratch=scratch):
            for unit in units:
                report.units += 1
                _inspect_unit(report, unit, compiled, max_bytes, examples, preference)
    except Exception as exc:  # a file that cannot be read: said in its report, the other files go on
        report.error = str(exc).replace("source 'inspect': ", "")
    return report


def _inspect_unit(
    report: FileReport, unit: Any, compiled: dict[str, Any], max_bytes: int, examples: int, preference: Preference
) -> None:
    try:
        obj = unit_value(unit, max_bytes)
    except Exception as exc:  # as in ingest: one unit never stops the report
        rej = exc if isinstance(exc, Rejected) else Rejected("error", f"{type(exc).__name__}: {exc}")
        for res in report.families.values():
            _count_reason(res, rej, unit.position)
        return
    # as ingest does: `both` makes a pair two records, each side counted; one side otherwise
    sides: tuple[Side, ...] = ("chosen", "rejected") if preference == "both" else (preference,)
    for fam, res in report.families.items():
        for side in sides if is_pair(obj) else sides[:1]:
            _inspect_side(res, unit, obj, fam, compiled[fam], side, examples)


def _inspect_side(res: FamilyResult, unit: Any, obj: Any, fam: str, compiled: Any, side: Side, examples: int) -> None:
    """One side of one value (the only side, unless the source keeps both sides of its pairs)."""
    try:
        layout, fields = to_fields(obj, fam, compiled, side)  # type: ignore[arg-type]
    except Rejected as rej:
        _count_reason(res, rej, unit.position)
        if rej.kind in ("no layout", "empty field", "not an object") and isinstance(obj, dict | list):
            _note_keys(res, obj, rej.kind)
        return
    except Exception as exc:  # same rule as ingest: one object never stops the report
        _count_reason(res, Rejected("error", f"{type(exc).__name__}: {exc}"), unit.position)
        return
    if layout in PREFERENCE_LAYOUTS:
        layout = f"{layout}:{side}"
    res.records += 1
    res.layouts[layout] += 1
    if len(res.examples) < examples:
        res.examples.append((unit.position, layout, fields))
    if compiled is None and (unused := unused_text_keys(obj, fields)):
        res.unused.update(unused)
        res.unused_suggestion = res.unused_suggestion or suggest_with_unused(obj, fields, unused, fam)


_MAX_KEYS = 40


def _note_keys(res: FamilyResult, obj: dict[str, Any] | list[Any], kind: str) -> None:
    """The keys of an object that gave no record, each with a first non-empty example value."""
    if kind == "no layout" and isinstance(obj, dict):
        res.unmatched_keys[tuple(sorted(map(str, obj))[:12])] += 1
    if res.first_unmatched is None:
        res.first_unmatched = obj
    items = obj.items() if isinstance(obj, dict) else enumerate(obj[:_MAX_KEYS])
    for key, value in items:
        name = str(key) if isinstance(obj, dict) else f"[{key}]"
        if len(res.keys_seen) >= _MAX_KEYS and name not in res.keys_seen:
            break
        text = as_text(value)
        if not res.keys_seen.get(name) and text.strip():
            res.keys_seen[name] = text
        res.keys_seen.setdefault(name, "")


def _count_reason(res: FamilyResult, rej: Rejected, position: int) -> None:
    res.reasons[rej.kind] += 1
    res.first_reason.setdefault(rej.kind, _short(f"#{position}: {rej}", 160))


def _short(text: str, n: int = 90) -> str:
    flat = " ".join(printable(text).split())  # lone surrogates from the data would not print
    return flat if len(flat) <= n else f"{flat[: n - 1]}… ({len(text):,} chars)"


def render_report(reports: list[FileReport], examples: int = 3) -> str:
    out: list[str] = []
    for rep in reports:
        out.append(f"== {rep.path}" + (f"  ({rep.format})" if rep.format else "") + f"  {rep.units:,} read")
        if rep.container:
            out.append(f"   read as: {rep.container}")
        if rep.error:
            out.append(f"   ERROR: {rep.error}")
        best = rep.best()
        if best is None:
            continue
        for fam, res in rep.families.items():
            share = f" ({res.records / rep.units:.0%})" if rep.units else ""
            layouts = ", ".join(f"{name} {n:,}" for name, n in res.layouts.most_common()) or "none"
            out.append(f"   {fam}: {res.records:,} records{share}; layouts: {layouts}")
        fam, res = best
        quarantined = sum(res.reasons.values())
        if quarantined:
            out.append(f"   quarantined as {fam}: {quarantined:,}")
            out += [f"     {kind}: {n:,}  (first: {res.first_reason[kind]})" for kind, n in res.reasons.most_common()]
        for position, layout, fields in res.examples[:examples]:
            out.append(f"   example #{position} [{layout}]")
            out += [f"     {name}: {_short(text)}" for name, text in fields.items() if text]
        if res.unmatched_keys:
            out.append(f"   objects no {fam} layout matched, by keys:")
            out += [f"     {list(keys)}: {n:,}" for keys, n in res.unmatched_keys.most_common(5)]
        if res.keys_seen:
            out.append(f"   keys of the objects that gave no {fam} record, with an example value:")
            out += [f"     {key}: {_short(text, 70) if text else '(empty)'}" for key, text in res.keys_seen.items()]
            suggestion = suggest_mapping(res.first_unmatched, fam)
            if suggestion:
                out.append("   a mapping to start from (registry, under the source; check every path):")
                out += _yaml(suggestion)
        if res.unused:
            keys = ", ".join(f"{key} ({n:,} records)" for key, n in res.unused.most_common())
            out.append(f"   WARNING: the layouts left text unused under: {keys}")
            if res.unused_suggestion:
                out.append("   a mapping that reads it too (registry, under the source; check every path):")
                out += _yaml(res.unused_suggestion)
    return "\n".join(out)


def _yaml(mapping: dict[str, str]) -> list[str]:
    snippet = yaml.safe_dump({"fields": mapping}, sort_keys=False, allow_unicode=True)
    return [f"     {line}" for line in snippet.splitlines()]

"""The export's original form: each kept record as its producer wrote it, with the selection columns added.

A JSON input's value goes out as one JSON Lines line; a table's row (Parquet, CSV, ...) as a Parquet row with the
input's columns. The selection columns are added under the prefix `mira_`:

    mira_source, mira_record_id, mira_score, mira_mask_version, mira_layout, mira_origin_file, mira_origin_line

Collision-proof: when a key of the object (a column of the batch, for rows) already starts with `mira_`, the prefix
takes one more `_` (`mira__`, `mira___`, ...) until none does, so no key the producer wrote is ever overwritten,
and the added keys are the ones under the longest such prefix. A value that is not an object (a bare list of chat
turns, a string) is wrapped: `{"messages": turns}` for a list of chat turns (the shape training tools read),
`{"value": v}` otherwise, with `mira_wrapped` naming the key. Removing the added keys (and unwrapping) gives back
the original value, equal as a JSON value."""

from __future__ import annotations

import json
import re
from typing import Any

from mira_dagster.core.layouts import as_object

PREFIX = "mira_"
SELECTION_KEYS = ("source", "record_id", "score", "mask_version", "layout", "origin_file", "origin_line")
WRAPPED = "wrapped"

# A key that may start with "mira_": written plainly, or with one of its characters escaped (\u006d is "m")
_MAYBE_PREFIXED = re.compile(r'"mira_|\\u00(?:6[dD9]|72|61|5[fF])')
_ENCODER = json.JSONEncoder(ensure_ascii=False)


def prefix_for(keys: Any) -> str:
    """The shortest `mira_`, `mira__`, ... that no key starts with."""
    keys = [str(k) for k in keys]
    prefix = PREFIX
    while any(k.startswith(prefix) for k in keys):
        prefix += "_"
    return prefix


def original_line(original: str, selection: dict[str, Any]) -> str:
    """One export line: the original JSON text with the selection keys added (see the module docstring). An
    object whose text cannot hold a `mira_` key keeps its exact text, the keys spliced in before its last brace."""
    text = original.strip()
    if text.startswith("{") and text.endswith("}") and not _MAYBE_PREFIXED.search(text):
        added = ", ".join(f'"{PREFIX}{k}": {_ENCODER.encode(v)}' for k, v in selection.items())
        inner = text[1:-1]
        return "{" + (f"{inner}, {added}" if inner.strip() else added) + "}"
    return _ENCODER.encode(with_selection(json.loads(text), selection))


def with_selection(value: Any, selection: dict[str, Any]) -> dict[str, Any]:
    """The value as an object with the selection keys added (wrapped first when it is not an object)."""
    if isinstance(value, dict):
        prefix = prefix_for(value)
        return {**value, **{prefix + k: v for k, v in selection.items()}}
    key = "messages" if as_object(value) is not None else "value"
    return {key: value, PREFIX + WRAPPED: key, **{PREFIX + k: v for k, v in selection.items()}}


def without_selection(exported: dict[str, Any]) -> Any:
    """The original value of an exported object: the inverse of with_selection (for readers and the tests)."""
    # the added keys are under the longest prefix: no key of the original starts with it
    prefix = max(
        (k[: -len("record_id")] for k in exported if k.endswith("record_id") and k.startswith(PREFIX)),
        key=len,
        default=PREFIX,
    )
    if prefix == PREFIX and PREFIX + WRAPPED in exported:
        return exported[exported[PREFIX + WRAPPED]]
    return {k: v for k, v in exported.items() if not (k.startswith(prefix) and k[len(prefix) :] in SELECTION_KEYS)}

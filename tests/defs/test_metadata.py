"""The reliability heatmap's metadata: a compact picture under the 1,000 characters below which Dagster's UI shows
Markdown in place (the browser test in tests/e2e/test_commands.py sees it there), the full one behind a link."""

from __future__ import annotations

import base64
import re
from urllib.parse import unquote

import polars as pl

from mira_dagster.defs.metadata import INLINE_MARKDOWN_LIMIT, heatmap_metadata


def mask(n_sources: int, name: str = "source_{}") -> pl.DataFrame:
    rows = [
        {
            "source": name.format(i),
            "slot": slot,
            "used_rho": None if (i + slot) % 7 == 0 else ((i * 37 + slot * 11) % 120) / 100 - 0.2,
            "masked": (i * slot) % 5 == 0,
        }
        for i in range(n_sources)
        for slot in range(1, 16)
    ]
    return pl.DataFrame(rows)


def test_the_heatmap_of_a_dozen_sources_is_inline_with_their_names() -> None:
    meta = heatmap_metadata(mask(12, "src_{:02d}"))
    text = meta["heatmap"].value
    assert len(text) < INLINE_MARKDOWN_LIMIT
    assert "Rows: 1 src_00, 2 src_01" in text and "12 src_11." in text
    svg = unquote(re.search(r"\(data:image/svg\+xml,(.*)\)", text).group(1))
    assert svg.startswith("<svg xmlns='http://www.w3.org/2000/svg'") and svg.endswith("</svg>")
    png = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)'", svg).group(1))
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 15 and int.from_bytes(png[20:24], "big") == 12  # a pixel a cell
    assert meta["heatmap_detail"].value.startswith("![reliability heatmap](data:image/png;base64,iVBORw0KGgo")


def test_many_sources_fall_back_to_the_full_picture() -> None:
    """Long names drop out of the legend first; a picture that cannot fit at all is the full one, behind the link."""
    shorter = heatmap_metadata(mask(14, "a_rather_long_source_name_{}"))
    assert "Rows: the sources by name (see heatmap_detail)." in shorter["heatmap"].value
    assert len(shorter["heatmap"].value) < INLINE_MARKDOWN_LIMIT
    (only,) = heatmap_metadata(mask(60)).values()
    assert only.value.startswith("![reliability heatmap](data:image/png;base64,")

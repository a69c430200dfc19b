"""Small helpers for the metadata every materialisation reports."""

import base64
from typing import Any
from urllib.parse import quote

import dagster as dg
import polars as pl
from tabulate import tabulate


def _cell(value: Any, width: int) -> Any:
    if isinstance(value, str):
        flat = " ".join(value.split())
        return flat if len(flat) <= width else flat[: width - 1] + "…"
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, list):
        return _cell(str(value), width)
    return value


def md_table(df: pl.DataFrame, n: int = 10, width: int = 48) -> dg.MetadataValue:
    """A Markdown table of the first n rows, long text cut to `width` characters."""
    rows = [[_cell(v, width) for v in row] for row in df.head(n).iter_rows()]
    return dg.MetadataValue.md(tabulate(rows, headers=df.columns, tablefmt="github"))


def table_metadata(df: pl.DataFrame, preview_columns: list[str] | None = None, n: int = 10) -> dict[str, Any]:
    preview = df.select(preview_columns) if preview_columns else df
    return {"dagster/row_count": df.height, "preview": md_table(preview, n)}


def md_image(png: bytes, alt: str) -> dg.MetadataValue:
    """A PNG inlined in Markdown metadata (a data URI), so the UI shows it without any file server."""
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(png).decode()})")


INLINE_MARKDOWN_LIMIT = 1000  # Dagster's UI (1.13) shows a Markdown entry in place only below this many characters


def heatmap_metadata(mask: pl.DataFrame) -> dict[str, dg.MetadataValue]:
    """The reliability heatmap for the asset's metadata. `heatmap`: a compact picture with its legend, shown in place
    in the UI (Dagster shows Markdown metadata inline only under 1,000 characters, behind a "[Show Markdown]" link
    otherwise, and no PNG of a labelled plot is that small); `heatmap_detail`: the full picture, with the source
    names and a colour bar, behind that link. When even the compact one cannot fit (many sources), `heatmap` is the
    full picture."""
    from mira_dagster.core.plots import reliability_heatmap, reliability_heatmap_svg

    detail = md_image(reliability_heatmap(mask), "reliability heatmap")
    svg = quote(reliability_heatmap_svg(mask), safe="/:=';,+-._<>")  # Markdown needs only the spaces encoded
    image = f"![ρ per source × slot](data:image/svg+xml,{svg})"
    sources = sorted(mask["source"].unique().to_list())
    names = ", ".join(f"{i} {s}" for i, s in enumerate(sources, 1))
    scale = "Red: masked; else held-out Spearman ρ, dark −0.2 to yellow 1, grey: none."
    for legend in (f"Rows: {names}.", "Rows: the sources by name (see heatmap_detail)."):
        text = f"{image}\n\n{legend} Columns: A1–A15. {scale}"
        if len(text) < INLINE_MARKDOWN_LIMIT:
            return {"heatmap": dg.MetadataValue.md(text), "heatmap_detail": detail}
    return {"heatmap": detail}

"""Pictures for the Dagster UI (PNG bytes): the reliability heatmap, score distributions, retention curves."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: render to memory

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

from mira_dagster.core.rubric import N_SLOTS  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reliability_heatmap(mask: pl.DataFrame) -> bytes:
    """Source × slot heatmap of the ρ the mask decision used; masked cells crossed out."""
    sources = sorted(mask["source"].unique().to_list())
    rho = np.full((len(sources), N_SLOTS), np.nan)
    masked = np.zeros((len(sources), N_SLOTS), dtype=bool)
    for row in mask.iter_rows(named=True):
        i, j = sources.index(row["source"]), row["slot"] - 1
        rho[i, j] = np.nan if row["used_rho"] is None else row["used_rho"]
        masked[i, j] = row["masked"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(sources) + 1.5))
    im = ax.imshow(rho, vmin=-0.2, vmax=1.0, cmap="viridis", aspect="auto")
    for i, j in zip(*np.nonzero(masked), strict=True):
        ax.text(j, i, "×", ha="center", va="center", color="red", fontsize=14, fontweight="bold")
    ax.set_xticks(range(N_SLOTS), [f"A{k}" for k in range(1, N_SLOTS + 1)])
    ax.set_yticks(range(len(sources)), sources)
    ax.set_title("Spearman ρ, teacher vs student on the held-out split (× = masked)")
    fig.colorbar(im, ax=ax, shrink=0.8)
    return _png(fig)


def score_distributions(agg: pl.DataFrame, column: str = "aggregate") -> bytes:
    """One box per source of the records' aggregate scores (`agg`: the table or, at corpus scale, a sample of it)."""
    data = agg.filter(pl.col(column).is_not_null())
    sources = sorted(data["source"].unique().to_list())
    fig, ax = plt.subplots(figsize=(9, 0.4 * len(sources) + 1.5))
    ax.boxplot([data.filter(pl.col("source") == s)[column].to_numpy() for s in sources], orientation="horizontal")
    ax.set_yticks(range(1, len(sources) + 1), sources)
    ax.set_xlabel(f"{column} (mean z of unmasked dimensions)")
    ax.set_title("Score distribution per source")
    return _png(fig)


def retention_curves(agg: pl.DataFrame, column: str = "aggregate") -> bytes:
    """Per source: the share of its tokens kept if every record scoring at least x were kept. From a uniform sample
    of records the curve is an estimate (shares of the sample's tokens), which is all a picture needs."""
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for (source,), part in agg.group_by("source", maintain_order=True):
        total = part["n_tokens"].sum()
        scored = part.filter(pl.col(column).is_not_null()).sort(column, descending=True)
        if scored.is_empty() or not total:
            continue
        ax.step(scored[column].to_numpy(), scored["n_tokens"].cum_sum().to_numpy() / total, where="post", label=source)
    ax.set_xlabel(f"threshold on {column}")
    ax.set_ylabel("share of the source's tokens kept")
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # no scored record: no curve, no legend
        ax.legend(fontsize=7, ncol=2)
    ax.set_title("Retention curve per source")
    return _png(fig)


def _indexed_png(pixels: np.ndarray, palette: list[tuple[int, int, int]]) -> bytes:
    """A 4-bit palette PNG of `pixels` (indices into at most 16 colours), written directly: a few hundred bytes for
    a small grid."""
    import struct
    import zlib

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    h, w = pixels.shape
    padded = np.zeros((h, w + w % 2), dtype=np.uint8)
    padded[:, :w] = pixels
    packed = (padded[:, 0::2] << 4) | padded[:, 1::2]  # two pixels a byte
    raw = np.hstack([np.zeros((h, 1), dtype=np.uint8), packed]).tobytes()  # filter byte 0 per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 4, 3, 0, 0, 0))
        + chunk(b"PLTE", bytes(c for rgb in palette for c in rgb))
        + chunk(b"IDAT", zlib.compress(raw, 9))
        + chunk(b"IEND", b"")
    )


def reliability_heatmap_svg(mask: pl.DataFrame, cell: int = 18, levels: int = 8) -> str:
    """The reliability heatmap in a few hundred bytes, for Markdown that Dagster's UI shows inline (it does so only
    under 1,000 characters): an SVG that scales a palette PNG of one pixel per (source, slot) to `cell` pixels,
    crisp (`image-rendering: pixelated`), numbered 1..15 across (slots A1..A15) and 1..n down (the sources in name
    order). A masked cell is red; the others show the ρ the mask decision used in `levels` steps of viridis over
    [-0.2, 1], grey where there is no estimate."""
    import base64

    sources = sorted(mask["source"].unique().to_list())
    n, m = len(sources), N_SLOTS
    cmap = matplotlib.colormaps["viridis"]
    palette = [(200, 200, 200), (230, 20, 20)]  # no estimate, masked
    palette += [tuple(int(255 * c) for c in cmap(k / (levels - 1))[:3]) for k in range(levels)]
    grid = np.zeros((n, m), dtype=np.uint8)
    for row in mask.iter_rows(named=True):
        i, j = sources.index(row["source"]), row["slot"] - 1
        rho = row["used_rho"]
        if rho is not None and rho == rho:
            grid[i, j] = 2 + round((min(max(rho, -0.2), 1.0) + 0.2) / 1.2 * (levels - 1))
        if row["masked"]:
            grid[i, j] = 1
    png = base64.b64encode(_indexed_png(grid, palette)).decode()
    left, top, digit = 7 * len(str(n)) + 4, 12, 6  # room for the row numbers, the column numbers; a digit's width
    # one <text> per axis, a position per digit: numbers centred on their column, right-aligned before their row
    cols = [(left + j * cell + (cell - digit * len(str(j + 1))) // 2 + digit * k, 10, d)
            for j in range(m) for k, d in enumerate(str(j + 1))]  # fmt: skip
    rows = [(left - 3 - digit * (len(str(i + 1)) - k), top + i * cell + cell // 2 + 4, d)
            for i in range(n) for k, d in enumerate(str(i + 1))]  # fmt: skip

    def text(glyphs: list[tuple[int, int, str]]) -> str:
        xs, ys = ",".join(str(x) for x, _, _ in glyphs), ",".join(str(y) for _, y, _ in glyphs)
        if len({y for _, y, _ in glyphs}) == 1:  # one line: its y once
            ys = str(glyphs[0][1])
        return f"<text x='{xs}' y='{ys}'>{''.join(d for _, _, d in glyphs)}</text>"

    return (
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + m * cell}' height='{top + n * cell}' font-size='11'>"
        f"<image href='data:image/png;base64,{png}' x='{left}' y='{top}' width='{m * cell}' height='{n * cell}' "
        f"image-rendering='pixelated'/>{text(cols)}{text(rows)}</svg>"
    )

"""Pictures for the Dagster UI (PNG bytes): the reliability heatmap, score distributions, retention curves."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display: render to memory

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402


def _png(fig: plt.Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def reliability_heatmap(mask: pl.DataFrame) -> bytes:
    """Source × slot heatmap of the ρ the mask decision used; masked cells crossed out."""
    sources = sorted(mask["source"].unique().to_list())
    rho = np.full((len(sources), 15), np.nan)
    masked = np.zeros((len(sources), 15), dtype=bool)
    for row in mask.iter_rows(named=True):
        i, j = sources.index(row["source"]), row["slot"] - 1
        rho[i, j] = np.nan if row["used_rho"] is None else row["used_rho"]
        masked[i, j] = row["masked"]
    fig, ax = plt.subplots(figsize=(9, 0.45 * len(sources) + 1.5))
    im = ax.imshow(rho, vmin=-0.2, vmax=1.0, cmap="viridis", aspect="auto")
    for i, j in zip(*np.nonzero(masked), strict=True):
        ax.text(j, i, "×", ha="center", va="center", color="red", fontsize=14, fontweight="bold")
    ax.set_xticks(range(15), [f"A{k}" for k in range(1, 16)])
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

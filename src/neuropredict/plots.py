"""PNG figures shared by DVC plots, MLflow artifacts, the evaluate report and the README."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

COLORS = {"lstm": "#1f77b4", "gru": "#ff7f0e", "persistence": "#7f7f7f", "actual": "#222222",
          "predicted": "#d62728"}


def _save(fig, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def skill_by_symbol(skills: Mapping[str, Mapping[str, float]], dm_t: Mapping[str, Mapping[str, float]],
                    path: Path, title: str) -> Path:
    """Grouped bars: skill (%) vs persistence per symbol for each model; DM t over each bar."""
    models = list(skills)
    symbols = list(next(iter(skills.values())))
    x = np.arange(len(symbols))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for i, model in enumerate(models):
        vals = [100 * skills[model][s] for s in symbols]
        bars = ax.bar(x + (i - (len(models) - 1) / 2) * width, vals, width, label=model.upper(),
                      color=COLORS.get(model))
        for bar, s in zip(bars, symbols):
            t = dm_t[model][s]
            ax.annotate(f"t={t:+.1f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom" if bar.get_height() >= 0 else "top", fontsize=7)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, symbols)
    ax.set_ylabel("skill vs persistence (%)\n>0: better than 'tomorrow = today'")
    ax.set_title(title)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def learning_curves(curves: Mapping[str, Mapping[str, Sequence[float]]], path: Path,
                    null_val_loss: float | None = None) -> Path:
    """Train and validation loss per epoch of each cell's best trial, beside the null model."""
    fig, ax = plt.subplots(figsize=(8, 4))
    for cell, hist in curves.items():
        epochs = np.arange(1, len(hist["loss"]) + 1)
        ax.plot(epochs, hist["loss"], "--", color=COLORS.get(cell), label=f"{cell.upper()} train")
        ax.plot(epochs, hist["val_loss"], "-", color=COLORS.get(cell), label=f"{cell.upper()} validation")
    if null_val_loss is not None:
        ax.axhline(null_val_loss, color=COLORS["persistence"], lw=1.0, ls=":",
                   label="validation loss of the null model (training mean return)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MSE of standardised next return")
    ax.set_title("Learning curves of each cell's best trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def predicted_vs_actual(rows: pd.DataFrame, path: Path, title: str, max_symbols: int = 8,
                        last_n: int | None = 60) -> Path:
    """One panel per symbol: actual price, model forecast and persistence over the last_n targets
    (a short span shows what a full year hides: the forecast is nearly the last price)."""
    symbols = sorted(rows["symbol"].unique())[:max_symbols]
    ncols = 2 if len(symbols) > 1 else 1
    nrows = int(np.ceil(len(symbols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 2.6 * nrows), squeeze=False)
    for ax, symbol in zip(axes.flat, symbols):
        g = rows[rows["symbol"] == symbol].sort_values("time")
        if last_n:
            g = g.tail(last_n)
        ax.plot(g["time"], g["actual"], "o-", color=COLORS["actual"], lw=1.2, ms=2.5, label="actual")
        ax.plot(g["time"], g["persistence"], "--", color=COLORS["persistence"], lw=1.0,
                label="persistence (last price)")
        ax.plot(g["time"], g["predicted"], "-", color=COLORS["predicted"], lw=1.0, label="model")
        ax.set_title(symbol, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(symbols):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)

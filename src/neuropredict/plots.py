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
          "predicted": "#d62728", "model": "#d62728", "constant": "#7f7f7f", "ewma": "#2ca02c",
          "conformal": "#ff9896", "garch": "#8c564b"}


def _save(fig, path: Path, rect: tuple[float, float, float, float] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout(rect=rect)
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
                   label="validation loss of the null model (training mean and volatility)")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("epoch")
    ax.set_ylabel("Gaussian NLL of standardised next return")
    ax.set_title("Learning curves of each cell's best trial")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def predicted_vs_actual(rows: pd.DataFrame, path: Path, title: str, max_symbols: int = 8,
                        last_n: int | None = 60) -> Path:
    """One panel per symbol: actual price, model forecast and persistence over the last_n targets
    (a short span shows what a full year hides: the forecast is nearly the last price)."""

    def panel(ax, g: pd.DataFrame) -> None:
        if last_n:
            g = g.tail(last_n)
        ax.plot(g["time"], g["actual"], "o-", color=COLORS["actual"], lw=1.2, ms=2.5, label="actual")
        ax.plot(g["time"], g["persistence"], "--", color=COLORS["persistence"], lw=1.0,
                label="persistence (last price)")
        ax.plot(g["time"], g["predicted"], "-", color=COLORS["predicted"], lw=1.0, label="model")

    return _per_symbol(rows, panel, path, title, max_symbols)


def _per_symbol(rows: pd.DataFrame, panel, path: Path, title: str, max_symbols: int) -> Path:
    """A grid of one panel per symbol (two columns), each drawn by panel(ax, the symbol's rows in time order)."""
    symbols = sorted(rows["symbol"].unique())[:max_symbols]
    ncols = 2 if len(symbols) > 1 else 1
    nrows = int(np.ceil(len(symbols) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(6 * ncols, 2.6 * nrows), squeeze=False)
    for ax, symbol in zip(axes.flat, symbols):
        panel(ax, rows[rows["symbol"] == symbol].sort_values("time"))
        ax.set_title(symbol, fontsize=10)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(symbols):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def calibration(curve: pd.DataFrame, levels: Sequence[float], rows: int, path: Path, title: str) -> Path:
    """Coverage minus nominal on the test period for each method (all calibrated on validation),
    inside the band an honest interval stays in 99 % of the time on `rows` rows (binomial)."""
    nominal = curve["nominal"].to_numpy(float)
    p = nominal / 100
    band = 100 * 2.576 * np.sqrt(p * (1 - p) / max(rows, 1))
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.fill_between(nominal, -band, band, color="grey", alpha=0.18, lw=0,
                    label=f"99 % binomial band ({rows} rows)")
    ax.axhline(0, color="black", lw=0.8)
    for method in [c for c in curve.columns if c != "nominal"]:
        ax.plot(nominal, curve[method] - nominal, "o-", ms=3, lw=1.2, color=COLORS.get(method), label=method)
    for level in levels:
        ax.axvline(100 * level, color="grey", lw=0.6, ls=":")
    ax.set_xlabel("nominal coverage (%); dotted: the served levels")
    ax.set_ylabel("coverage - nominal (points)\n>0: too wide, <0: too narrow")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def coverage_by_tercile(frame: pd.DataFrame, rows: int, path: Path, title: str) -> Path:
    """One panel per level: each method's coverage in the calm, middle and turbulent third of
    sessions (volatility terciles, backtests.py) against nominal, with the ±5-point band."""
    levels = list(dict.fromkeys(frame["level"]))
    methods = list(dict.fromkeys(frame["method"]))
    terciles = list(dict.fromkeys(frame["tercile"]))
    fig, axes = plt.subplots(1, len(levels), figsize=(4.6 * len(levels), 4.2), squeeze=False)
    width = 0.8 / len(methods)
    names = {"model": "served (online)", "conformal": "static conformal"}
    for ax, level in zip(axes[0], levels):
        nominal, mine = float(level), frame[frame["level"] == level]
        ax.axhspan(nominal - 5, nominal + 5, color="grey", alpha=0.15, lw=0, label="nominal ± 5 points")
        ax.axhline(nominal, color="black", lw=0.8)
        for k, method in enumerate(methods):
            bars = mine[mine["method"] == method].set_index("tercile")
            ax.bar(np.arange(len(terciles)) + (k - (len(methods) - 1) / 2) * width,
                   bars.loc[terciles, "coverage"], width, color=COLORS.get(method), label=names.get(method, method))
        ax.set_xticks(range(len(terciles)), [f"{t} volatility" for t in terciles])
        ax.set_ylim(min(nominal - 10, float(mine["coverage"].min()) - 3),
                    min(100.5, max(nominal + 8, float(mine["coverage"].max()) + 2)))
        ax.set_ylabel("coverage (%)")
        ax.set_title(f"{level} % intervals ({rows} rows, a third each)", fontsize=9)
        ax.grid(alpha=0.3, axis="y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path, rect=(0, 0.07, 1, 1))


def fan_chart(rows: pd.DataFrame, levels: Sequence[float], path: Path, title: str, max_symbols: int = 8) -> Path:
    """One panel per symbol: the actual price inside the model's intervals, widest palest; the
    misses of the widest interval marked."""
    from neuropredict.intervals import column

    widest_first = sorted(levels, reverse=True)
    widest = widest_first[0]

    def panel(ax, g: pd.DataFrame) -> None:
        for shade, level in enumerate(widest_first):
            ax.fill_between(g["time"], g[column("model", "lower", level)], g[column("model", "upper", level)],
                            color=COLORS["model"], alpha=0.15 + 0.2 * shade, lw=0,
                            label=f"{100 * level:g} % interval")
        ax.plot(g["time"], g["actual"], "-", color=COLORS["actual"], lw=0.9, label="actual")
        out = (g["actual"] < g[column("model", "lower", widest)]) | (g["actual"] > g[column("model", "upper", widest)])
        ax.plot(g["time"][out], g["actual"][out], "x", color="black", ms=4,
                label=f"outside the {100 * widest:g} % interval")

    return _per_symbol(rows, panel, path, title, max_symbols)


def loss_differential(paired: pd.DataFrame, a: str, b: str, path: Path, title: str) -> Path:
    """Cumulative squared-error difference (B - A) over the live ticks both scored, per symbol:
    a line that climbs means B is worse than A; flat, equal."""
    fig, ax = plt.subplots(figsize=(9, 4.2))
    for symbol, group in paired.sort_values("time").groupby("symbol", sort=True):
        d = (group["predicted_b"] - group["actual"]) ** 2 - (group["predicted"] - group["actual"]) ** 2
        ax.plot(np.arange(1, len(d) + 1), np.cumsum(d.to_numpy()), label=str(symbol))
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xlabel("live ticks scored by both (per symbol, in time order)")
    ax.set_ylabel(f"cumulative squared error\nv{b} minus v{a}  ($^2)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)

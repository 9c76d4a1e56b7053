"""`neuropredict view`: a page for a person watching the stream. Per symbol, the last prices with
the forecasts and their 80/95 % bands as they arrive (the newest forecast, whose price has not
come yet, beyond the last price), and live skill against persistence and coverage against
nominal on the same window.

Served from the topics, not from Prometheus: a forecast is judged against the price it forecast,
which arrives later, and Prometheus keeps samples of gauges taken every few seconds, not each
forecast beside its price. The page reads the newest forecasts of `predicted_prices` and the
inputs they came from, joined as `neuropredict evaluate` joins them (stream_report), so its
figures are evaluate's on the same rows. Refreshed at most every REFRESH_S; the browser reloads.
"""

from __future__ import annotations

import html
import io
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pandas as pd

from neuropredict import intervals, stream_report
from neuropredict.evaluation import score_rows
from neuropredict.settings.contracts import PRODUCTION_ALIAS, Topics
from neuropredict.stream.rules import TickRules

log = logging.getLogger(__name__)
REFRESH_S = 5.0
SHOWN_PER_SYMBOL = 60  # points drawn per symbol (the figures use every row read)


@dataclass
class Snapshot:
    """What the page shows, read once per refresh."""

    rows: pd.DataFrame  # scored forecasts: symbol, time, actual, predicted, persistence, bounds
    open: dict[str, dict]  # per symbol, the newest forecast whose price has not arrived
    read_at: float = field(default_factory=time.time)

    def figures(self) -> dict[str, dict[str, float]]:
        """Per symbol and pooled: n, MSE beside persistence's, skill, DM t, interval coverage (%)
        beside nominal with its binomial p."""
        if self.rows.empty:
            return {}
        scores = score_rows(self.rows)
        covered = stream_report.interval_scores(self.rows) or {}
        keep = ("n", "mse", "persistence_mse", "skill", "dm_t")
        out = {}
        for key, row in scores.items():
            out[key] = {k: row[k] for k in keep if k in row}
            out[key].update({k: v for k, v in covered.get(key, {}).items()
                             if k.startswith("coverage_")})  # coverage_80 and its p, coverage_p_80
        return out

    def as_json(self) -> dict[str, Any]:
        series = {symbol: {"time": g["time"].astype(str).tolist(), "actual": g["actual"].tolist(),
                           "predicted": g["predicted"].tolist()}
                  for symbol, g in self.rows.groupby("symbol")}
        return {"read_at": self.read_at, "figures": self.figures(), "open": self.open, "series": series}


class LiveView:
    """The newest forecasts and their prices, read from the topics at most every REFRESH_S."""

    def __init__(self, rules: TickRules, intraday: bool, topics: Topics, bootstrap: str, last: int):
        self.rules, self.intraday, self.topics, self.bootstrap, self.last = rules, intraday, topics, bootstrap, last
        self._snapshot: Snapshot | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        with self._lock:  # one read at a time; the others get its result
            if self._snapshot is None or time.time() - self._snapshot.read_at >= REFRESH_S:
                self._snapshot = self._read()
            return self._snapshot

    def _read(self) -> Snapshot:
        inputs, outputs = stream_report.read_tail(self.rules, self.topics, self.last, self.bootstrap)
        rows = stream_report.rows_from_records(inputs, outputs, self.rules, self.intraday, self.topics)
        rows = rows[rows["alias"] == PRODUCTION_ALIAS] if len(rows) else rows
        scored = set(zip(rows["input_partition"], rows["input_offset"])) if len(rows) else set()
        newest: dict[str, dict] = {}
        for pred in stream_report.predictions(outputs, self.topics):
            if pred.get("alias", PRODUCTION_ALIAS) != PRODUCTION_ALIAS:
                continue
            at = (int(pred["input_partition"]), int(pred["input_offset"]))
            held = newest.get(pred["symbol"])
            if at not in scored and (held is None or at[1] > held["input_offset"]):
                newest[pred["symbol"]] = pred
        return Snapshot(rows, newest)


def chart_png(snapshot: Snapshot) -> bytes:
    """One panel per symbol: prices, forecasts at the time they forecast, 80/95 % bands, the open forecast."""
    from neuropredict import plots

    plt = plots.plt
    symbols = sorted(set(snapshot.rows["symbol"]) | set(snapshot.open)) if len(snapshot.rows) else sorted(snapshot.open)
    cols = min(4, max(1, len(symbols)))
    nrows = max(1, -(-len(symbols) // cols))
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, symbol in zip(axes.flat, symbols):
        _panel(ax, symbol, snapshot.rows[snapshot.rows["symbol"] == symbol].tail(SHOWN_PER_SYMBOL),
               snapshot.open.get(symbol))
    for ax in list(axes.flat)[len(symbols):]:
        ax.set_visible(False)
    if symbols:
        axes.flat[0].legend(fontsize=7, loc="upper left")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=90)
    plt.close(fig)
    return buffer.getvalue()


def _panel(ax, symbol: str, rows: pd.DataFrame, open_forecast: dict | None) -> None:
    from neuropredict.plots import COLORS

    x = np.arange(len(rows))
    for level, alpha in ((0.95, 0.12), (0.8, 0.25)):
        lower, upper = (intervals.column("model", side, level) for side in ("lower", "upper"))
        if lower in rows and upper in rows:
            ax.fill_between(x, rows[lower], rows[upper], color=COLORS["predicted"], alpha=alpha, lw=0,
                            label=f"{intervals.label(level)} % interval")
    ax.plot(x, rows["actual"], color=COLORS["actual"], lw=1.2, label="price")
    ax.plot(x, rows["predicted"], ".", color=COLORS["predicted"], ms=3, label="forecast")
    if open_forecast is not None:  # the next price is still to come
        nx = len(rows)
        for level, alpha in ((0.95, 0.12), (0.8, 0.25)):
            label = intervals.label(level)
            if f"lower_{label}" in open_forecast:
                ax.vlines(nx, open_forecast[f"lower_{label}"], open_forecast[f"upper_{label}"],
                          color=COLORS["predicted"], alpha=min(1.0, 3 * alpha), lw=4)
        ax.plot([nx], [open_forecast["predicted_price"]], "o", color=COLORS["predicted"], ms=5, mfc="white")
    last = str(rows["time"].iloc[-1])[:16] if len(rows) else ""
    ax.set_title(f"{symbol}  (to {last})" if last else symbol, fontsize=9)
    ax.tick_params(labelsize=7)
    ax.set_xticks([])
    ax.grid(alpha=0.3)


def page_html(snapshot: Snapshot) -> str:
    figures = snapshot.figures()
    levels = [k.removeprefix("coverage_") for k in figures.get("_pooled", {})
              if k.startswith("coverage_") and not k.startswith("coverage_p_")]
    head = "".join(f"<th>{lv} % coverage (p)</th>" for lv in levels)
    body = []
    for key in sorted(figures, key=lambda k: (k == "_pooled", k)):
        f = figures[key]
        cells = "".join(f"<td>{f[f'coverage_{lv}']:.1f} ({f.get(f'coverage_p_{lv}', float('nan')):.2g})</td>"
                        for lv in levels)
        name = "all symbols" if key == "_pooled" else html.escape(key)
        body.append(f"<tr><td>{name}</td><td>{f['n']:.0f}</td><td>{f['mse']:.4g}</td><td>{f['persistence_mse']:.4g}"
                    f"</td><td>{100 * f['skill']:+.2f} %</td><td>{f['dm_t']:+.2f}</td>{cells}</tr>")
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.read_at))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>KafkaNeuroPredict: live view</title>
<meta http-equiv="refresh" content="{REFRESH_S:.0f}">
<style>body{{font-family:sans-serif;margin:1em 2em;color:#222}} table{{border-collapse:collapse;font-size:13px}}
td,th{{border-bottom:1px solid #ddd;padding:3px 10px;text-align:right}} td:first-child,th:first-child{{text-align:left}}
tr:last-child td{{font-weight:bold}} .note{{color:#666;font-size:12px}}</style></head><body>
<h2>Live forecasts against prices</h2>
<p class="note">The newest forecasts of each partition, joined with the prices they forecast (as <code>neuropredict
evaluate</code> joins them); an open circle is a forecast whose price has not arrived. Read {stamp}; this page
reloads every {REFRESH_S:.0f} s.</p>
<img src="chart.png" alt="prices, forecasts and intervals per symbol" style="max-width:100%">
<h3>On this window, beside the baselines</h3>
<table><tr><th>symbol</th><th>scored</th><th>MSE</th><th>persistence MSE</th><th>skill</th><th>DM t</th>{head}</tr>
{''.join(body) or '<tr><td colspan="6">no scored forecast yet</td></tr>'}</table>
<p class="note">Skill: 1 - MSE / persistence MSE (persistence repeats the last price). DM t: Diebold-Mariano t
against persistence (above 2: significantly worse). Coverage: share of prices inside the interval, beside its
nominal level; p: exact binomial test against it.</p></body></html>"""


def serve(view: LiveView, port: int, address: str = "127.0.0.1") -> ThreadingHTTPServer:
    """The page (/), its chart (/chart.png) and its figures (/data.json), until shut down."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            path = self.path.split("?")[0]
            routes = {"/": ("text/html; charset=utf-8", lambda s: page_html(s).encode()),
                      "/chart.png": ("image/png", chart_png),
                      "/data.json": ("application/json", lambda s: json.dumps(s.as_json()).encode())}
            if path not in routes:
                self.send_error(404)
                return
            kind, render = routes[path]
            body = render(view.snapshot())
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug(fmt, *args)

    server = ThreadingHTTPServer((address, port), Handler)
    threading.Thread(target=server.serve_forever, name="live-view", daemon=True).start()
    return server

#!/usr/bin/env python3
"""Draws deploy/grafana/handover.json's panels from a snapshot of real Prometheus query_range
results (panels.json, written by `dashboard_snapshot` in tests/prometheus.rs) into one PNG.

Grafana itself is not packaged for Debian 12, so this stands in for a screenshot: same panel
titles, same queries, same units and layout, with Prometheus' own answers as the data.

usage: render-dashboard.py panels.json deploy/grafana/handover.json out.png
"""
import json
import math
import re
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

snapshot_path, dashboard_path, out_path = sys.argv[1:4]
snapshot = json.load(open(snapshot_path))
dashboard = json.load(open(dashboard_path))
start = snapshot["start"]

BG, PANEL, GRID, TEXT = "#111217", "#181b1f", "#2c3235", "#ccccdc"
COLORS = ["#73bf69", "#f2cc0c", "#5794f2", "#ff780a", "#f2495c", "#b877d9", "#8ab8ff", "#fade2a"]
UNITS = {"short": "", "ops": "/s", "s": "s", "Bps": "B/s"}


def legend(fmt, labels):
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt) or str(labels)


def fill_gaps(pts, step=1.0):
    """query_range omits steps with no value: put NaN there so a plotted line breaks."""
    out = []
    for t, v in pts:
        if out and t - out[-1][0] > 1.5 * step:
            out.append((out[-1][0] + step, math.nan))
        out.append((t, v))
    return out


OUTCOME_COLORS = {"ok": ["#73bf69", "#56a64b", "#96d98d", "#37872d"],
                  "aborted": ["#f2cc0c", "#e0b400", "#ffee52", "#cc9d00"],
                  "failed": ["#f2495c", "#e02f44", "#ff7383", "#c4162a"]}


def color(name, i):
    """Migrations are coloured by outcome (green ok, yellow aborted, red failed)."""
    words = name.split()
    if len(words) == 2 and words[1] in OUTCOME_COLORS:
        shades = OUTCOME_COLORS[words[1]]
        return shades[["drain", "admin", "failover", "backend"].index(words[0]) % len(shades)] \
            if words[0] in ("drain", "admin", "failover", "backend") else shades[0]
    return COLORS[i % len(COLORS)]


by_title = {}
for p in snapshot["panels"]:
    by_title.setdefault(p["title"], []).append(p)

panels = dashboard["panels"]
rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels) // 8
fig = plt.figure(figsize=(16, 4.2 * rows), facecolor=BG)
grid = fig.add_gridspec(rows, 2, hspace=0.45, wspace=0.28, left=0.05, right=0.86, top=0.93, bottom=0.05)
fig.suptitle(
    f"{dashboard['title']}  ·  deploy/grafana/handover.json fed by a real run "
    f"(Prometheus scraping handover every 1 s, {snapshot['end'] - start:.0f} s)",
    color=TEXT, fontsize=14, x=0.45,
)

for panel in panels:
    pos = panel["gridPos"]
    row, col = pos["y"] // 8, pos["x"] // 12
    ax = fig.add_subplot(grid[row, col:] if pos["w"] == 24 else grid[row, col])
    ax.set_facecolor(PANEL)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=TEXT, labelsize=8)
    ax.grid(color=GRID, linewidth=0.6)
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    ax.set_title(panel["title"] + (f"  ({UNITS.get(unit, unit)})" if UNITS.get(unit) else ""),
                 color=TEXT, fontsize=11, loc="left")
    custom = panel["fieldConfig"]["defaults"]["custom"]
    stacked = custom["stacking"]["mode"] == "normal"
    series = []
    for target in by_title.get(panel["title"], []):
        for s in target["result"]:
            pts = [(float(t) - start, float(v)) for t, v in s["values"]]
            # Series that are zero or empty all run long are left out of the picture (Grafana
            # would list them in the legend); NaN stays, so lines break where there is no data.
            if any(v != 0 and not math.isnan(v) for _, v in pts):
                series.append((legend(target["legend"], s["metric"]), fill_gaps(pts)))
    series.sort(key=lambda s: s[0])
    if panel["title"] == "Backend state":
        # One lane per backend, coloured by state, like Grafana's state timeline.
        states = {"active": "#73bf69", "draining": "#f2cc0c", "drained": "#5794f2", "down": "#f2495c"}
        backends = sorted({name.split()[0] for name, _ in series})
        for name, pts in series:
            backend, state = name.split()
            lane = backends.index(backend)
            ax.scatter([t for t, _ in pts], [lane] * len(pts), marker="s", s=14,
                       color=states.get(state, TEXT), label=state, linewidths=0)
        ax.set_yticks(range(len(backends)), backends)
        ax.set_ylim(-0.6, len(backends) - 0.4)
        handles = [plt.Line2D([], [], marker="s", linestyle="", color=c, label=s) for s, c in states.items()]
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
                  facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT)
    elif not series:
        ax.text(0.5, 0.5, "no data", color=TEXT, ha="center", va="center", transform=ax.transAxes)
    else:
        times = sorted({t for _, pts in series for t, _ in pts})
        if stacked:
            ys = [[0.0 if math.isnan(v) else v for v in (dict(pts).get(t, 0.0) for t in times)]
                  for _, pts in series]
            if custom["drawStyle"] == "bars":
                bottom = [0.0] * len(times)
                for i, ((name, _), y) in enumerate(zip(series, ys)):
                    ax.bar(times, y, bottom=bottom, width=0.9, color=color(name, i), label=name,
                           edgecolor=PANEL, linewidth=0.3)
                    bottom = [b + v for b, v in zip(bottom, y)]
            else:
                ax.stackplot(times, ys, labels=[n for n, _ in series],
                             colors=COLORS[: len(series)], alpha=0.75)
        else:
            for i, (name, pts) in enumerate(series):
                # Dashes keep equal series (an echo backend's two directions) both visible.
                ax.plot([t for t, _ in pts], [v for _, v in pts], color=color(name, i),
                        linewidth=1.8, label=name, linestyle=["-", "--", ":"][i % 3],
                        marker="." if len(pts) < 20 else None)
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8,
                  facecolor=PANEL, edgecolor=GRID, labelcolor=TEXT)
        ax.set_ylim(bottom=0)
    for t, what in snapshot["events"]:
        ax.axvline(t - start, color="#8e8e8e", linewidth=0.8, linestyle="--")
        if row == 0:
            ax.text(t - start, 1.0, " " + what, color="#b0b0b0", fontsize=7, rotation=90,
                    va="top", ha="left", transform=ax.get_xaxis_transform())
    ax.set_xlim(0, snapshot["end"] - start)
    ax.set_xlabel("seconds into the run", color=TEXT, fontsize=8)

fig.savefig(out_path, dpi=90, facecolor=BG)
print(f"wrote {out_path}")

#!/usr/bin/env python3
"""Turns the raw results of bench/shard_count.sh into a section of
docs/BENCHMARKS.md (between its own markers) and an SVG plot. Standard
library only.

    shard_count_report.py OUT_DIR DOC_PATH SVG_PATH
"""
import html
import math
import os
import statistics
import sys

from report import fmt, pct, pgbench_run, read_lines, read_meta, splice_section

BEGIN = "<!-- bench/shard_count.sh: begin (generated; edit bench/shard_count_report.py, not this section) -->"
END = "<!-- bench/shard_count.sh: end -->"


def sessions(path):
    """[(library load, first lookup, [later lookups])] in ms, one per session."""
    rows = []
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                v = [float(x) for x in line.split()]
                if len(v) >= 3:
                    rows.append((v[0], v[1], v[2:]))
    return rows


def collect(out, n):
    d = os.path.join(out, "raw", str(n))
    _, lookup = pgbench_run(os.path.join(d, "lookup"))
    s = sessions(os.path.join(d, "sessions.txt"))
    return {
        "create": read_lines(os.path.join(d, "create_ms.txt")),
        "load": read_lines(os.path.join(d, "load_ms.txt")),
        "count": sorted(read_lines(os.path.join(d, "count_ms.txt"))),
        "scan": sorted(read_lines(os.path.join(d, "scan_ms.txt"))),
        "lookup": lookup,
        "lib": sorted(x[0] for x in s),
        "first": sorted(x[1] for x in s),
        "later": sorted(v for x in s for v in x[2]),
    }


def med(v):
    return statistics.median(v) if v else None


def svg_plot(counts, series, path, rows):
    """series: {name: [median ms per shard count]}; x and y on log scales."""
    W, H = 640, 380
    left, right, top, bottom = 64, 200, 34, 50
    pw, ph = W - left - right, H - top - bottom
    xpos = {n: left + pw * i / max(len(counts) - 1, 1) for i, n in enumerate(counts)}
    vals = [v for s in series.values() for v in s if v]
    ticks = [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000]
    lo = max([t for t in ticks if t <= min(vals)] or [ticks[0]])
    hi = min([t for t in ticks if t >= max(vals)] or [ticks[-1]])

    def y(v):
        v = min(max(v, lo), hi)
        return top + ph - ph * (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))

    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"]
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="20" text-anchor="middle" font-size="14">'
           f'latency vs shard count, {rows:,} rows over 4 nodes</text>']
    for t in ticks:
        if lo <= t <= hi:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for n in counts:
        out.append(f'<line x1="{xpos[n]:.1f}" x2="{xpos[n]:.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xpos[n]:.1f}" y="{top + ph + 18}" text-anchor="middle">{n}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 10}" text-anchor="middle">shards (log scale)</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">median latency, ms (log scale)</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="black"/>')
    legend_y = top + 10
    for (name, pts), color in zip(series.items(), colors):
        coords = [(xpos[n], v) for n, v in zip(counts, pts) if v]
        if len(coords) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
                color, " ".join(f"{cx:.1f},{y(v):.1f}" for cx, v in coords)))
        for cx, v in coords:
            out.append(f'<circle cx="{cx:.1f}" cy="{y(v):.1f}" r="3.5" fill="{color}"/>')
        out.append(f'<rect x="{left + pw + 20}" y="{legend_y - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 37}" y="{legend_y + 1}">{html.escape(name)}</text>')
        legend_y += 20
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


def main():
    out, doc_path, svg_path = sys.argv[1:4]
    meta = read_meta(out)
    counts = [int(n) for n in meta["shard_counts"].split()]
    rows = int(meta["rows"])
    data = {n: collect(out, n) for n in counts}

    L = [BEGIN, "## Latency against shard count", ""]
    a = L.append
    a(f"The same {rows:,} rows in one distributed table of each shard count over 4 conductor-nodes, "
      "one client, release build. Produced by:")
    a("")
    a("```")
    a(meta["command"])
    a("```")
    a("")
    a(f"Run {meta['start_utc']} – {meta.get('end_utc', '?')}, {meta['nproc']} cores ({meta['cpu']}), "
      f"load average {meta['loadavg_start']} at the start and {meta.get('loadavg_end', '?')} at the end; "
      f"{meta['postgres'].split(',')[0]}; {meta['conductor_ext']}; git {meta['git']}.")
    a("")
    a("| shards | create_distributed_table | load (INSERT … SELECT) | count(*) | whole-table scan | "
      "point lookup p50 / p99 | new session: LOAD / first lookup / later lookups |")
    a("|---:|---:|---:|---:|---:|---:|---:|")
    for n in counts:
        d = data[n]
        a(f"| {n} | {fmt(med(d['create']), ' ms')} | {fmt(med(d['load']), ' ms')} | "
          f"{fmt(med(d['count']), ' ms')} | {fmt(med(d['scan']), ' ms')} | "
          f"{fmt(pct(d['lookup'], 50), ' ms')} / {fmt(pct(d['lookup'], 99), ' ms')} | "
          f"{fmt(med(d['lib']), ' ms')} / {fmt(med(d['first']), ' ms')} / {fmt(med(d['later']), ' ms')} |")
    local = sessions(os.path.join(out, "raw", "local", "sessions.txt"))
    if local:
        lf, ll = med([x[1] for x in local]), med([v for x in local for v in x[2]])
        a(f"For comparison, the same new sessions on a local table of the same rows: first lookup "
          f"{fmt(lf, ' ms')}, later ones {fmt(ll, ' ms')} ({lf / ll:.1f}×): a session's first query pays "
          "for Postgres' catalog caches whatever the table.")
    a("")
    first, last = counts[0], counts[-1]
    grow = lambda k: (med(data[last][k]) - med(data[first][k])) / ((last - first) / 100.0)
    if data[first]["count"] and data[last]["count"]:
        a(f"From {first} to {last} shards, count(*) grows by {grow('count'):.2f} ms and the whole-table scan by "
          f"{grow('scan'):.2f} ms per hundred shards (medians). A new session's first point lookup "
          f"(reading the table's topology from the catalog and opening the connection to its node, after "
          f"`LOAD 'conductor'`) against its later ones at {last} shards: "
          f"{med(data[last]['first']) / med(data[last]['later']):.1f}×.")
        a("")
    a(f"Medians of {meta['query_runs']} runs (count(*), scan: `COPY (SELECT * FROM items) TO '/dev/null'`), "
      f"a {meta['seconds']} s single-client pgbench run of `bench/workloads/w1_point.sql` (point lookup), and "
      f"{meta['sessions']} new psql sessions (each: `LOAD 'conductor'`, then three point lookups, under `\\timing`).")
    a("")
    series = {
        "count(*)": [med(data[n]["count"]) for n in counts],
        "whole-table scan": [med(data[n]["scan"]) for n in counts],
        "point lookup (p50)": [pct(data[n]["lookup"], 50) for n in counts],
        "first lookup, new session": [med(data[n]["first"]) for n in counts],
    }
    svg_plot(counts, series, svg_path, rows)
    rel_svg = os.path.relpath(svg_path, os.path.dirname(os.path.abspath(doc_path)))
    a(f"![latency vs shard count]({rel_svg})")
    a("")
    a(END)
    splice_section(doc_path, BEGIN, END, "\n".join(L) + "\n")


if __name__ == "__main__":
    main()

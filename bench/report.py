#!/usr/bin/env python3
"""Turns the raw results of bench/run.sh into docs/BENCHMARKS.md (its own
section, between markers; the rest of the file is kept) and an SVG plot of
W6. Standard library only.

    report.py OUT_DIR DOC_PATH SVG_PATH
"""
import glob
import html
import os
import re
import statistics
import sys

BEGIN = "<!-- bench/run.sh: begin (generated; edit bench/report.py, not this section) -->"
END = "<!-- bench/run.sh: end -->"
TARGETS = ["conductor", "peer", "local"]
# pgbench runs with 8 clients: TPS and p50/p99.
THROUGHPUT = ["W1", "W2", "W3", "W12", "W13", "W14"]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- reading raw results ---------------------------------------------------------

def read_meta(out):
    meta = {}
    with open(os.path.join(out, "meta.txt")) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    return meta


def failed(path):
    f = os.path.join(path, "FAILED")
    if os.path.exists(f):
        with open(f) as fh:
            text = fh.read().strip()
        lines = [l for l in text.splitlines()
                 if l.strip() and "setting random seed" not in l and not l.startswith((" ", "DETAIL:  \n"))]
        # pgbench repeats the error for every client: keep the first one
        # (its line and the DETAIL lines after it).
        first = []
        for l in lines:
            if first and l.startswith("pgbench:"):
                break
            first.append(l.strip())
        return " ".join(first)[:400] or "failed (no message)"
    return None


def pgbench_run(path, failures=None):
    """(tps, [latency ms]) of one pgbench run directory. Transactions the
    log marks failed (a serialization failure or deadlock, which pgbench 15
    counts and goes on) have no latency; they are counted in `failures`."""
    tps = None
    with open(os.path.join(path, "stdout.txt")) as f:
        for line in f:
            m = re.match(r"tps = ([0-9.]+)", line)
            if m:
                tps = float(m.group(1))
    lat = []
    for log in glob.glob(os.path.join(path, "tx.*")):
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3:
                    if parts[2].isdigit():
                        lat.append(int(parts[2]) / 1000.0)
                    elif failures is not None:
                        failures.append(parts[2])
    return tps, sorted(lat)


def node_stats(path):
    """The conductor nodes' summed (lock waits, lock wait us, requests)
    over one run, from the /stats taken before and after it."""
    try:
        with open(os.path.join(path, "node_stats_before.txt")) as f:
            b = [int(x) for x in f.read().split()]
        with open(os.path.join(path, "node_stats_after.txt")) as f:
            e = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        return None
    if len(b) != 3 or len(e) != 3:
        return None
    return tuple(y - x for x, y in zip(b, e))


def pct(sorted_values, p):
    if not sorted_values:
        return None
    k = (len(sorted_values) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (k - lo)


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [float(l) for l in f if l.strip()]


class Result:
    """One workload on one target: samples, or the error that stopped it."""

    def __init__(self, error=None):
        self.error = error
        self.tps = []       # per run
        self.p50 = []       # per run, ms
        self.p99 = []
        self.lat = []       # every sample, ms
        self.rate = []      # rows/s per run
        self.hwm = None     # (before kB, after kB)
        self.cpu_ticks = None       # W7: router backend CPU over all scans
        self.threads = None         # W7: the same, per thread name
        self.storage_ticks = None   # W7: nodes / shard Postgres CPU over all scans
        self.tx = 0
        self.failed = []    # pgbench transactions logged as failed
        self.lock_wait_ms_per_tx = []   # per run, conductor's nodes
        self.requests_per_tx = []       # per run, conductor's nodes


def throughput(out, w, t):
    base = os.path.join(out, "raw", w, t)
    r = Result()
    for run in sorted(glob.glob(os.path.join(base, "run*"))):
        err = failed(run)
        if err:
            return Result(err)
        tps, lat = pgbench_run(run, r.failed)
        if tps is None or not lat:
            return Result("no result (see %s)" % run)
        ns = node_stats(run)
        if ns:
            r.lock_wait_ms_per_tx.append(ns[1] / 1000.0 / (len(lat) + 0.0))
            r.requests_per_tx.append(ns[2] / (len(lat) + 0.0))
        r.tps.append(tps)
        r.p50.append(pct(lat, 50))
        r.p99.append(pct(lat, 99))
        r.tx += len(lat)
    return r if r.tps else None


def latency(out, w, t):
    run = os.path.join(out, "raw", w, t, "run1")
    if not os.path.isdir(run):
        return None
    err = failed(run)
    if err:
        return Result(err)
    _, lat = pgbench_run(run)
    if not lat:
        return Result("no result (see %s)" % run)
    r = Result()
    r.lat = lat
    return r


def timed(out, w, t, rows):
    base = os.path.join(out, "raw", w, t)
    if not os.path.isdir(base):
        return None
    err = failed(base)
    times = read_lines(os.path.join(base, "times_ms.txt"))
    if err and not times:
        return Result(err)
    r = Result(err)
    r.lat = sorted(times)
    r.rate = [rows / (ms / 1000.0) for ms in times if ms > 0]
    stats = os.path.join(base, "stats.txt")
    if os.path.exists(stats):
        vals = {}
        with open(stats) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].isdigit():
                    vals[parts[0]] = int(parts[1])
                elif len(parts) == 2 and parts[0].startswith("THREADS_"):
                    vals[parts[0]] = {k: int(v) for k, v in
                                      (kv.split("=", 1) for kv in parts[1].split(",") if "=" in kv)}
        def delta(name):
            b, e = vals.get(name + "_BEFORE"), vals.get(name + "_AFTER")
            return None if b is None or e is None else e - b
        if "HWM_BEFORE" in vals and "HWM_AFTER" in vals:
            r.hwm = (vals["HWM_BEFORE"], vals["HWM_AFTER"])
        r.cpu_ticks = delta("CPU")
        tb, ta = vals.get("THREADS_BEFORE", {}), vals.get("THREADS_AFTER", {})
        r.threads = {k: v - tb.get(k, 0) for k, v in ta.items()} if ta else None
        r.storage_ticks = delta("STORAGE_CPU")
    return r


# ---- formatting ----------------------------------------------------------------

def fmt(v, unit=""):
    if v is None:
        return "–"
    if abs(v) >= 1000:
        s = f"{v:,.0f}"
    elif abs(v) >= 100:
        s = f"{v:.0f}"
    elif abs(v) >= 10:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + unit


def spread(values, unit=""):
    if not values:
        return "–"
    med = statistics.median(values)
    if len(values) == 1:
        return fmt(med, unit)
    return f"{fmt(med, unit)} ({fmt(min(values))}–{fmt(max(values))})"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "–"
    return f"{a / b:.2f}×"


def med(values):
    return statistics.median(values) if values else None


def read_text(path):
    with open(path) as f:
        return f.read()


def workload_sql(name):
    return read_text(os.path.join(ROOT, "bench", "workloads", name)).strip()


def client(out, w):
    p = os.path.join(out, "raw", w, "client.txt")
    return read_text(p).strip() if os.path.exists(p) else "–"


# ---- the plot --------------------------------------------------------------------

def svg_plot(points, path, delay_ms):
    """points: {series: [(shards, median, min, max) or None]}; log-scale y."""
    import math
    W, H = 600, 360
    left, right, top, bottom = 64, 170, 34, 50
    pw, ph = W - left - right, H - top - bottom
    xs = [1, 4, 16]
    xpos = {x: left + pw * i / (len(xs) - 1) for i, x in enumerate(xs)}
    vals = [v for s in points.values() for p in s if p for v in p[1:]]
    ticks = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000]
    lo = max([t for t in ticks if t <= min(vals + [delay_ms])] or [1])
    hi = min([t for t in ticks if t >= max(vals + [delay_ms * 2])] or [ticks[-1]])
    def y(v):
        v = min(max(v, lo), hi)
        return top + ph - ph * (math.log(v) - math.log(lo)) / (math.log(hi) - math.log(lo))
    colors = {"conductor": "#1f77b4", "peer (postgres_fdw)": "#d62728"}
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{left + pw / 2}" y="20" text-anchor="middle" font-size="14">'
           f'W6: latency vs shards touched, +{delay_ms:g} ms per round trip</text>']
    for t in ticks:
        if lo <= t <= hi:
            out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t:g}</text>')
    for x in xs:
        out.append(f'<line x1="{xpos[x]:.1f}" x2="{xpos[x]:.1f}" y1="{top}" y2="{top + ph}" stroke="#eee"/>')
        out.append(f'<text x="{xpos[x]:.1f}" y="{top + ph + 18}" text-anchor="middle">{x}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{H - 10}" text-anchor="middle">shards touched by the query</text>')
    out.append(f'<text x="16" y="{top + ph / 2}" text-anchor="middle" '
               f'transform="rotate(-90 16 {top + ph / 2})">median latency, ms (log scale)</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{top + ph}" y2="{top + ph}" stroke="black"/>')
    out.append(f'<line x1="{left}" x2="{left}" y1="{top}" y2="{top + ph}" stroke="black"/>')
    c1 = points.get("conductor", [None])[0]
    if c1:
        t = 1.3 * c1[1]
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" '
                   f'stroke="#1f77b4" stroke-dasharray="4 4" opacity="0.7"/>')
    legend_y = top + 10
    for name, pts in points.items():
        color = colors.get(name, "black")
        coords = [(xpos[x], p) for x, p in zip(xs, pts) if p]
        if len(coords) > 1:
            out.append('<polyline fill="none" stroke="%s" stroke-width="2" points="%s"/>' % (
                color, " ".join(f"{cx:.1f},{y(p[1]):.1f}" for cx, p in coords)))
        for cx, p in coords:
            out.append(f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(p[2]):.1f}" y2="{y(p[3]):.1f}" '
                       f'stroke="{color}" stroke-width="6" opacity="0.25"/>')
            out.append(f'<circle cx="{cx:.1f}" cy="{y(p[1]):.1f}" r="4" fill="{color}"/>')
            label = f"{p[1]:.0f} ms" if p[1] >= 10 else f"{p[1]:.1f} ms"
            last = cx >= left + pw - 1
            out.append(f'<text x="{cx - 8 if last else cx + 8:.1f}" y="{y(p[1]) - 7:.1f}" fill="{color}" '
                       f'text-anchor="{"end" if last else "start"}">{label}</text>')
        out.append(f'<rect x="{left + pw + 20}" y="{legend_y - 9}" width="12" height="12" fill="{color}"/>')
        out.append(f'<text x="{left + pw + 37}" y="{legend_y + 1}">{html.escape(name)}</text>')
        legend_y += 20
    out.append(f'<line x1="{left + pw + 20}" x2="{left + pw + 32}" y1="{legend_y - 3}" y2="{legend_y - 3}" '
               f'stroke="#1f77b4" stroke-dasharray="4 4"/>')
    out.append(f'<text x="{left + pw + 37}" y="{legend_y + 1}">target: 1.3× the</text>')
    out.append(f'<text x="{left + pw + 37}" y="{legend_y + 15}">conductor 1-shard</text>')
    out.append(f'<text x="{left + pw + 20}" y="{legend_y + 40}" font-size="11">dots: median;</text>')
    out.append(f'<text x="{left + pw + 20}" y="{legend_y + 54}" font-size="11">bands: min–max</text>')
    out.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")


# ---- "why" notes: only what this run's own evidence (errors, EXPLAIN) shows ----------

def why_notes(out, res, fails, meta, cpu, sto):
    notes = []
    if any("TOO_MANY_STREAMS" in e for _, t, e in fails if t == "conductor"):
        notes.append(
            "**Why conductor fails W1–W3 (HTTP 503 TOO_MANY_STREAMS).** Every shard read is a baton-less "
            "`POST /v3/cursor` (`crates/core/src/executor.rs`). On the node that opens a Hrana stream (the "
            "cursor's first line carries its baton), and the client never sends the `close` for it, so the "
            "stream stays open until the node's idle timeout (`--stream-idle-timeout-ms`, 10 s). With the node's "
            "limit of 1024 open streams, anything above ~100 shard reads per second per node fills the table "
            "and further reads get 503. The fix belongs in the client (close the cursor's stream, or send the "
            "read as a self-closing pipeline). `BENCH_NODE_OPTS='--stream-idle-timeout-ms 1000' bench/run.sh` "
            "shortens the leak and gets figures meanwhile (the doc then shows the option).")
    for w in ["W1", "W2"]:
        c, p = res[w]["conductor"], res[w]["peer"]
        if not (c and p and c.p50 and p.p50 and c.tps and p.tps) or c.error or p.error:
            continue
        c50, p50, c99, p99 = med(c.p50), med(p.p50), med(c.p99), med(p.p99)
        if c50 <= 1.25 * p50 and c99 > 3 * p99 and med(c.tps) < med(p.tps):
            mean_c = int(meta["clients"]) * 1000.0 / med(c.tps)
            notes.append(
                f"**{w}: the tail, not the median.** Conductor's median latency ({fmt(c50, ' ms')}) is close to the "
                f"peer's ({fmt(p50, ' ms')}), but its p99 is {c99 / p99:.0f}× the peer's ({fmt(c99, ' ms')} against "
                f"{fmt(p99, ' ms')}); with {meta['clients']} clients its TPS implies a mean of about "
                f"{fmt(mean_c, ' ms')} per lookup, so a minority of slow lookups costs the throughput. What stalls "
                "them is not established by this run (the machine was saturated; a rerun on an idle machine, and "
                "per-shard timings from EXPLAIN ANALYZE of slow executions, would tell).")
            break
    for w in ["W1", "W2"]:
        c, p = res[w]["conductor"], res[w]["peer"]
        if not (c and p and c.p50 and p.p50 and c.tps and p.tps) or c.error or p.error:
            continue
        c50, p50, c99, p99 = med(c.p50), med(p.p50), med(c.p99), med(p.p99)
        ratio = med(c.tps) / med(p.tps)
        if 1 <= ratio < 2 and c50 < p50:
            notes.append(
                f"**{w}: lower latency, less than 2× the throughput.** Conductor's median lookup takes "
                f"{fmt(c50, ' ms')} against the peer's {fmt(p50, ' ms')} (one HTTP request to one node against "
                f"postgres_fdw's round trips for transaction, cursor, fetch and close), yet its TPS is only "
                f"{ratio:.2f}× the peer's: with {meta['clients']} clients on {meta['nproc']} cores the run is "
                "bound by CPU, so throughput follows what each lookup costs across the backend and the node, "
                "not latency (a one-shard lookup runs on the backend's own thread; where its CPU goes is "
                "profiled in \"Where a point lookup's CPU goes\" above). "
                + (f"Conductor's p99 is higher ({fmt(c99, ' ms')} against {fmt(p99, ' ms')})."
                   if c99 > p99 else
                   f"Its p99 is lower too ({fmt(c99, ' ms')} against {fmt(p99, ' ms')})."))
    def explain(fn):
        p = os.path.join(out, fn)
        return read_text(p) if os.path.exists(p) else ""
    ce, pe = explain("explain-conductor.txt"), explain("explain-peer.txt")
    c_agg = re.search(r"Aggregate\s+Output: sum\(amount\)\s+->\s+Foreign Scan", ce)
    p_agg = re.search(r"Aggregate\s+Output: sum\(items\.amount\)\s+->\s+Append", pe)
    w5c, w5p = res["W5-sum"]["conductor"], res["W5-sum"]["peer"]
    if c_agg and w5c and w5c.lat and w5p and w5p.lat and med(w5c.lat) > med(w5p.lat):
        notes.append(
            "**W5 sum and GROUP BY.** `sum(amount)` is a sum of numeric, which conductor did not push in this "
            "run (it needs conductor-node's exact decimal aggregates on every node of the table; EXPLAIN below: `Aggregate` above conductor's `Foreign Scan`"
            + (", and above the peer's `Append` of foreign scans" if p_agg else "")
            + "): every row's amount travels to the router and is summed there, so these two rows, like the W7 "
            "scan, measure how fast each system brings rows to the router. W5 count(*) is pushed: each shard "
            "returns one row.")
    w10 = res.get("W10", {})
    w10c, w10p = w10.get("conductor"), w10.get("peer")
    if w10c and w10c.lat and w10p and w10p.lat and med(w10c.lat) > med(w10p.lat):
        notes.append(
            "**W10.** customer_id has about as many values as `items` has rows, and the table is sharded by id, "
            "so a customer's rows span shards: each shard returns one partial count per customer it holds "
            "(about as many rows as it stores), the router combines them and Postgres sorts the merged groups "
            "for the top 10. The row transfer is W7's; only a grouping that contains the shard key lets the "
            "shards sort and limit their groups themselves.")
    if cpu.get("conductor") and cpu.get("peer") and cpu["conductor"] > 2 * cpu["peer"]:
        text = (f"**Where conductor's scan time goes (W7).** Per million rows scanned, the router backend used "
                f"{cpu['conductor']:.2f} s of CPU under conductor against {cpu['peer']:.2f} s under the peer "
                f"({cpu['conductor'] / cpu['peer']:.0f}×)")
        if sto.get("conductor") is not None:
            text += f"; conductor's 4 nodes used {sto['conductor']:.2f} s"
            if sto.get("peer") is not None:
                text += f" (the peer's shard Postgres {sto['peer']:.2f} s)"
        th = res["W7"]["conductor"].threads or {}
        io, pg = th.get("conductor-io"), th.get("postgres")
        if io is not None and pg is not None and io + pg > 0:
            text += (f". Of the backend's CPU, {io / (io + pg) * 100:.0f}% is on its `conductor-io` threads (where "
                     "the executor does HTTP and decodes the nodes' JSON rows; which part of that dominates needs a "
                     "profiler) and "
                     f"{pg / (io + pg) * 100:.0f}% on Postgres' own thread (conversion to Datums, the executor, COPY)")
        text += (". So the time goes to the extension's per-row path in the backend, not to the nodes; on this "
                 "2-core machine that CPU is also taken away from the nodes and from everyone else.")
        notes.append(text)
    pw = explain("explain-peer-w6-16.txt")
    m_app = re.search(r"Append \(actual time=[0-9.]+\.\.([0-9.]+)", pw)
    m_exe = re.search(r"Execution Time: ([0-9.]+) ms", pw)
    if m_app and m_exe:
        notes.append(
            f"**W6, the peer.** EXPLAIN ANALYZE of its 16-shard query (below): the async `Append` has every row after "
            f"{float(m_app.group(1)):.0f} ms, the whole execution takes {float(m_exe.group(1)):.0f} ms. Only the "
            "partitions' fetches overlap; postgres_fdw's other round trips (opening each remote transaction and "
            "cursor, closing each cursor) happen one after another, 16 cursors over 4 connections, each "
            f"paying the {meta['delay_ms']} ms.")
    return notes


# ---- the document ------------------------------------------------------------------

W11 = ["W11-point", "W11-scan", "W11-one", "W11-all"]
W11_NAMES = {
    "W11-point": "W11 point lookup, one client (the yardstick of W11-one)",
    "W11-scan": "W11 one customer's orders, no join (the join's read path)",
    "W11-one": "W11 orders JOIN order_lines, one customer",
    "W11-all": "W11 orders JOIN order_lines, all customers, aggregated",
}
W11_SPECS = [
    ("W11-point", "W1's point lookup by key, one client: what W11-one is measured against", ["w11_point.sql"]),
    ("W11-scan", "one random customer's orders, no join: a one-shard read of several rows, as the join's", ["w11_scan_one.sql"]),
    ("W11-one", "orders JOIN order_lines on the shard key (and order_id) for one random customer", ["w11_join_one.sql"]),
    ("W11-all", "the same join for all customers, aggregated", ["w11_join_all.sql"]),
]
W11_EXPLAINS = [(f"W11 {t}", f"explain-w11-{t}.txt") for t in TARGETS]


def w11_goals(res, value):
    """The W11 rows of the targets table."""
    lines = []
    c1, cp = value(res["W11-one"]["conductor"], "lat"), value(res["W11-point"]["conductor"], "lat")
    if c1 is None or cp is None:
        lines.append("| W11 one-customer join latency ≤ 1.5× a point lookup's | no figure | **not measured** |")
    else:
        r = c1 / cp
        verdict = "met" if r <= 1.5 else f"**behind**: {r:.2f}× instead of ≤ 1.5×"
        lines.append(f"| W11 one-customer join latency ≤ 1.5× a point lookup's | {fmt(c1)} ms vs {fmt(cp)} ms = {r:.2f}× | {verdict} |")
    c, p = value(res["W11-all"]["conductor"], "lat"), value(res["W11-all"]["peer"], "lat")
    if c is None or p is None:
        lines.append("| W11 all-customer join ≥ 3× faster than the peer | no figure | **not measured** |")
    else:
        r = p / c
        verdict = "met" if r >= 3 else f"**behind**: {r:.2f}× faster instead of 3×"
        lines.append(f"| W11 all-customer join ≥ 3× faster than the peer | {fmt(c)} ms vs {fmt(p)} ms: {r:.2f}× faster | {verdict} |")
    return lines


# ---- W15: lookup by a non-key column through a virtual index ---------------------

W15_CONFIGS = [
    ("conductor", "conductor, no index on email"),
    ("conductor-shard-index", "conductor, shard index on email"),
    ("conductor-virtual-index", "conductor, virtual index on email"),
    ("peer", "peer, index on email"),
    ("local", "local, index on email"),
]
W15_CONDUCTOR = [c for c, _ in W15_CONFIGS if c.startswith("conductor")]
W15_EXPLAINS = [(f"W15 {label}", f"explain-w15-{c}.txt") for c, label in W15_CONFIGS if c != "conductor-shard-index"]


def w15_one(out, config):
    """(email lookups, key lookups) of a configuration's one-client run,
    whose log tells the two scripts apart (script 0: w15_email.sql, 1:
    w15_key.sql); None when it did not run."""
    run = os.path.join(out, "raw", "W15-one", config, "run1")
    if not os.path.isdir(run):
        return None, None
    err = failed(run)
    if err:
        return Result(err), Result(err)
    lat = {"0": [], "1": []}
    for log in glob.glob(os.path.join(run, "tx.*")):
        with open(log) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 4 and parts[2].isdigit() and parts[3] in lat:
                    lat[parts[3]].append(int(parts[2]) / 1000.0)
    results = []
    for k in ["0", "1"]:
        r = Result() if lat[k] else Result("no result (see %s)" % run)
        r.lat = sorted(lat[k])
        results.append(r)
    return tuple(results)


def w15_shards(out, config):
    """(shard reads, virtual-index lookups) per lookup at conductor's nodes,
    from the counting run of one configuration; a Result with its error;
    None when it did not run."""
    base = os.path.join(out, "raw", "W15-shards", config)
    if not os.path.isdir(base):
        return None
    err = failed(base)
    if err:
        return Result(err)
    try:
        n = int(read_text(os.path.join(base, "transactions.txt")).split()[0])
        b = [int(x) for x in read_text(os.path.join(base, "before.txt")).split()]
        e = [int(x) for x in read_text(os.path.join(base, "after.txt")).split()]
    except (OSError, ValueError, IndexError):
        return Result("no result (see %s)" % base)
    if n <= 0 or len(b) != 2 or len(e) != 2:
        return Result("no result (see %s)" % base)
    return ((e[0] - b[0]) / n, (e[1] - b[1]) / n)


def w15_results(out):
    one = {c: w15_one(out, c) for c, _ in W15_CONFIGS}
    return {
        "tps": {c: throughput(out, "W15", c) for c, _ in W15_CONFIGS},
        "one": {c: one[c][0] for c in one},
        "key": {c: one[c][1] for c in one},
        "shards": {c: w15_shards(out, c) for c in W15_CONDUCTOR + ["key"]},
    }


def w15_peer_partitions(out):
    """The peer's foreign scans in the plan of its email lookup (EXPLAIN
    ANALYZE, taken in the run): one remote query per partition."""
    p = os.path.join(out, "explain-w15-peer.txt")
    if not os.path.exists(p):
        return None
    n = len(re.findall(r"Foreign Scan on ", read_text(p)))
    return n or None


def _ok(r):
    return isinstance(r, Result) and not (r.error and not (r.tps or r.lat))


def w15_table(out, meta):
    """W15's own table: the conductor configurations beside the peer and
    local, as lines of markdown."""
    w = w15_results(out)
    if all(v is None for part in w.values() for v in part.values()):
        return []
    L = []
    a = L.append

    def cell(r, f):
        if r is None:
            return "not run"
        if r.error and not (r.tps or r.lat):
            return "**failed**"
        return f(r)

    cols = [c for c, _ in W15_CONFIGS]
    a("| W15 lookup by email | " + " | ".join(label for _, label in W15_CONFIGS) + " |")
    a("|---|" + "---|" * len(cols))
    a("| TPS, 8 clients | " + " | ".join(
        "– (one client only)" if c == "conductor-shard-index" else cell(w["tps"][c], lambda r: spread(r.tps))
        for c in cols) + " |")
    for p in ["p50", "p99"]:
        a(f"| {p} latency, 8 clients | " + " | ".join(
            "–" if c == "conductor-shard-index" else cell(w["tps"][c], lambda r, p=p: spread(getattr(r, p), " ms"))
            for c in cols) + " |")
    a("| latency, one client | " + " | ".join(cell(w["one"][c], lambda r: spread(r.lat, " ms")) for c in cols) + " |")
    a("| key lookup in the same one-client run: the yardstick | " + " | ".join(
        cell(w["key"][c], lambda r: spread(r.lat, " ms")) for c in cols) + " |")
    a("| email lookup ÷ key lookup, one client (medians) | " + " | ".join(
        ratio(med(w["one"][c].lat), med(w["key"][c].lat)) if _ok(w["one"][c]) and _ok(w["key"][c]) else "–"
        for c in cols) + " |")

    def shards_cell(c):
        if c == "peer":
            n = w15_peer_partitions(out)
            return f"{n} (partitions in its plan)" if n else "–"
        if c not in W15_CONDUCTOR:
            return "–"
        s = w["shards"][c]
        if s is None:
            return "not run"
        if not isinstance(s, tuple):
            return "**failed**"
        return fmt(s[0])
    a("| shards read per lookup (counted at the nodes) | " + " | ".join(shards_cell(c) for c in cols) + " |")
    a("| conductor's nodes: requests per transaction, 8 clients | " + " | ".join(
        spread(w["tps"][c].requests_per_tx) if c in W15_CONDUCTOR and _ok(w["tps"][c]) and w["tps"][c].requests_per_tx
        else "–" for c in cols) + " |")
    tv, tn = w["tps"]["conductor-virtual-index"], w["tps"]["conductor"]
    if _ok(tv) and _ok(tn):
        a(f"| TPS with the virtual index ÷ without any index | | | {ratio(med(tv.tps), med(tn.tps))} | | |")
    a("")
    fails = [(f"{label}, {part}", r.error) for part, what in [("tps", "8 clients"), ("one", "one client")]
             for c, label in W15_CONFIGS for r in [w[part][c]] if r is not None and r.error]
    fails += [(f"{c} shard count", r.error) for c, r in w["shards"].items() if isinstance(r, Result) and r.error]
    if fails:
        a("**W15 failures** (the error as the client printed it):")
        a("")
        for label, e in fails:
            a(f"- {label}: `{e}`")
        a("")
    build = meta.get("w15_build_ms")
    ix = meta.get("w15_index", "").split()
    if build:
        a(f"`CALL conductor.create_virtual_index('items', ARRAY['email'], true)` took {float(build) / 1000:.1f} s over the "
          f"{int(meta['rows']):,} rows" + (f"; `conductor.virtual_indexes` then showed {ix[0]} {ix[1]} with "
                                          f"{int(ix[2]):,} entries." if len(ix) == 3 and ix[2].isdigit() else "."))
        a("")
    o, k = w["one"]["conductor-virtual-index"], w["key"]["conductor-virtual-index"]
    sv, sk = w["shards"]["conductor-virtual-index"], w["shards"]["key"]
    if (_ok(o) and _ok(k) and isinstance(sv, tuple) and isinstance(sk, tuple)
            and med(o.lat) > 1.5 * med(k.lat)):
        a(f"**W15 latency against a key lookup.** Through the virtual index a lookup took {fmt(med(o.lat), ' ms')} "
          f"against a key lookup's {fmt(med(k.lat), ' ms')}. In the count, it made {fmt(sv[1])} virtual-index "
          f"lookup and {fmt(sv[0])} shard read per query where a key lookup made {fmt(sk[0])} shard read: the index "
          "lookup (which shards hold the value) must be answered before the shard read is sent, so the email "
          "lookup waits for two round trips where the key lookup waits for one.")
        a("")
    return L


def w15_goals(out):
    """The W15 rows of the targets table."""
    w = w15_results(out)
    lines = []
    v, n = w["tps"]["conductor-virtual-index"], w["tps"]["conductor"]
    goal = "W15 TPS with a virtual index ≥ 5× without one"
    if not (_ok(v) and _ok(n)):
        lines.append(f"| {goal} | no figure | **not measured** |")
    else:
        r = med(v.tps) / med(n.tps)
        verdict = "met" if r >= 5 else f"**behind**: {r:.2f}× instead of 5×"
        lines.append(f"| {goal} | {fmt(med(v.tps))} vs {fmt(med(n.tps))} TPS = {r:.2f}× | {verdict} |")
    o, k = w["one"]["conductor-virtual-index"], w["key"]["conductor-virtual-index"]
    goal = "W15 latency with a virtual index ≤ 1.5× a key lookup's"
    if not (_ok(o) and _ok(k)):
        lines.append(f"| {goal} | no figure | **not measured** |")
    else:
        r = med(o.lat) / med(k.lat)
        verdict = "met" if r <= 1.5 else f"**behind**: {r:.2f}× instead of ≤ 1.5×"
        lines.append(f"| {goal} | {fmt(med(o.lat))} ms vs {fmt(med(k.lat))} ms = {r:.2f}× | {verdict} |")
    return lines


def w15_spec(out):
    """W15's description for the workloads section."""
    L = []
    a = L.append
    a("**W15** — lookup by a non-key column: `items` is sharded (partitioned) by id, and each transaction looks up "
      "one existing row by its email. pgbench's `\\set` makes only numbers, so each transaction first computes a "
      "random row's email on the router with load.sql's formula (`SELECT … AS email \\gset`: a query of no table, "
      "in the target's own database), then runs the lookup with the email as a parameter (`-M prepared`: `$1`). "
      "Every target runs the same two statements. The yardstick (`w15_key.sql`) is the same transaction with "
      "`WHERE id = $1` instead; the one-client runs draw either script at random for each transaction, so the "
      "email lookup and its yardstick are measured at the same moment of the machine. Setups, each its natural "
      "best: the peer has an ordinary index on email on every partition's remote table, the local table one on "
      "email (both from the start of W15); conductor is measured with no index on email (every shard read whole), "
      "with `conductor.create_shard_index('items', ARRAY['email'])` alone (the local SQLite index in every shard "
      "that a virtual index also creates; every shard still read; one client only), and after `CALL "
      "conductor.create_virtual_index('items', ARRAY['email'], true)` (the lookup asks the value's lookup shard which "
      "shards hold it, then reads those). The 8-client runs without and with the virtual index are not "
      "interleaved (the index is built in between); the peer's and local's are interleaved with the first. "
      "Everything is dropped afterwards. Shards read per lookup are counted at conductor's nodes (`GET /stats`: "
      "statements run on the shard databases; with `conductor.max_requests_per_node = 16` every shard read is a "
      "request with its one statement, while at the default a node's shards share one read transaction), and "
      "virtual-index lookups as requests to the nodes' lookup databases (`GET /lookup/stats`); the peer's "
      "shards from its plan.")
    a("")
    for w, what in [("W15", "8 clients"), ("W15-one", "one client, both scripts"), ("W15-shards", "the count")]:
        a(f"- {what}: `{client(out, w)}`")
    a("")
    a("```sql")
    a(workload_sql("w15_email.sql"))
    a("-- w15_key.sql")
    a(workload_sql("w15_key.sql"))
    a("```")
    a("")
    return L


def cell(r, kind):
    """A result's table cell: its spread of `kind` (tps, lat, rate)."""
    if r is None:
        return "not run"
    if r.error and not (r.tps or r.lat):
        return "**failed**"
    if kind == "tps":
        return spread(r.tps)
    if kind == "lat":
        return spread(r.lat, " ms")
    if kind == "rate":
        return spread(r.rate)
    return "–"


def value(r, kind):
    """The median of a result's `kind`, or None if it failed."""
    if r is None or (r.error and not (r.tps or r.lat)):
        return None
    return {"tps": med(r.tps), "lat": med(r.lat), "rate": med(r.rate)}[kind]


def throughput_rows(w, name, r):
    """The table rows of a throughput workload (8 clients): TPS, p50, p99,
    and for the write workloads what conductor's nodes counted."""
    if all(r[t] is None for t in TARGETS):
        return [f"| {name} | TPS | not run | not run | not run | – | – |"]
    rows = [f"| {name} | TPS | {cell(r['conductor'], 'tps')} | {cell(r['peer'], 'tps')} | {cell(r['local'], 'tps')} "
            f"| {ratio(value(r['conductor'], 'tps'), value(r['peer'], 'tps'))} "
            f"| {ratio(value(r['conductor'], 'tps'), value(r['local'], 'tps'))} |"]
    for p in ["p50", "p99"]:
        vals = {t: (getattr(r[t], p) if r[t] and getattr(r[t], p) else None) for t in TARGETS}
        rows.append(f"| | {p} latency | " + " | ".join(spread(vals[t], " ms") if vals[t] else cell(r[t], "") for t in TARGETS)
                    + f" | {ratio(med(vals['conductor'] or []), med(vals['peer'] or []))} "
                    f"| {ratio(med(vals['conductor'] or []), med(vals['local'] or []))} |")
    c = r["conductor"]
    if w in ("W12", "W13", "W14") and c and c.requests_per_tx:
        rows.append(f"| | conductor's nodes, per transaction: requests; time waited for a write lock | "
                    f"{spread(c.requests_per_tx)}; {spread(c.lock_wait_ms_per_tx, ' ms')} | | | | |")
    if any(r[t] and r[t].failed for t in TARGETS):
        rows.append("| | transactions failed (pgbench goes on after a serialization failure or deadlock) | "
                    + " | ".join(str(len(r[t].failed)) if r[t] else "–" for t in TARGETS) + " | | |")
    return rows


def partial_section(out, meta, only):
    """A run of some workloads only (BENCH_ONLY): their figures in a section
    of their own, so the full run's section stays as it was."""
    L = []
    a = L.append
    begin, end = partial_markers(only)
    a(begin)
    a(f"## Partial run: {' '.join(only)}")
    a("")
    a(f"Generated by `{meta['command']}` on {meta['start_utc']} (finished {meta.get('end_utc', '?')}), "
      f"mode {meta.get('mode')}, {int(meta['rows']):,} rows in `items`; load average {meta['loadavg_start']} at "
      f"the start and {meta.get('loadavg_end', '?')} at the end on {meta['nproc']} cores; git {meta['git']}. "
      "Targets as in the full run above (conductor: 16 shards over "
      f"{meta.get('nodes', '4')} nodes; peer: 16 postgres_fdw hash partitions on 4 Postgres; local). "
      "Each cell: median (min–max); latency workloads: of every execution, one client"
      + (" (W15's 8-client rows: of the runs)" if "W15" in only else "")
      + (f"; throughput workloads ({', '.join(w for w in THROUGHPUT if w in only)}): {meta['runs']} pgbench "
         f"runs of {meta['seconds']} s per target with 8 clients, TPS median of the runs, p50/p99 "
         "per-transaction latencies from pgbench's `--log`, median over the runs" if set(THROUGHPUT) & set(only)
         else "")
      + ".")
    a("")
    if "W11" in only:
        a(f"W11 data: {int(meta.get('w11_customers', 0)):,} customers, "
          f"{int(meta.get('w11_customers', 0)) * 10:,} orders, {int(meta.get('w11_customers', 0)) * 40:,} order lines "
          "([`bench/workloads/w11_load.sql`](../bench/workloads/w11_load.sql)), both tables keyed by customer_id: "
          "conductor co-locates them (`colocate_with => 'orders'`); the peer hash-partitions both by customer_id "
          "(16 partitions each, partition p of both on the same server) with `enable_partitionwise_join` and "
          "`enable_partitionwise_aggregate` on.")
        a("")
    rows = []
    res = {}
    for w in sorted(os.listdir(os.path.join(out, "raw"))):
        if w == "W8" or w.startswith("W15") or not any(w == o or w.startswith(o + "-") for o in only):
            continue
        if w in THROUGHPUT:
            rows.extend(throughput_rows(w, w, {t: throughput(out, w, t) for t in TARGETS}))
            continue
        res[w] = {t: latency(out, w, t) for t in TARGETS}
        r = res[w]

        def v(x):
            return med(x.lat) if x and x.lat and not x.error else None
        cells = []
        for t in TARGETS:
            x = r[t]
            cells.append("not run" if x is None else ("**failed**" if x.error and not x.lat else spread(x.lat, " ms")))
        rows.append(f"| {W11_NAMES.get(w, w)} | latency | " + " | ".join(cells)
                    + f" | {ratio(v(r['conductor']), v(r['peer']))} | {ratio(v(r['conductor']), v(r['local']))} |")
    if rows:
        a("| workload | metric | conductor | peer | local | conductor/peer | conductor/local |")
        a("|---|---|---|---|---|---|---|")
        L.extend(rows)
        a("")
    if "W15" in only:
        L.extend(w15_table(out, meta))
        a("| target | stands at | |")
        a("|---|---|---|")
        for line in w15_goals(out):
            a(line)
        a("")
        L.extend(w15_spec(out))
        L.extend(explain_details(out, W15_EXPLAINS, "EXPLAIN "))
    if "W11" in only and all(w in res for w in W11):
        a("| target | stands at | |")
        a("|---|---|---|")
        for line in w11_goals(res, lambda x, _k: med(x.lat) if x and x.lat and not x.error else None):
            a(line)
        a("")
        for w, title, files in W11_SPECS:
            a(f"**{w}** — {title}. Client: `{client(out, w)}`")
            a("")
            a("```sql")
            for fn in files:
                a(workload_sql(fn))
            a("```")
            a("")
        L.extend(explain_details(out, W11_EXPLAINS, "EXPLAIN "))
    a(end)
    return "\n".join(L) + "\n"


def partial_markers(only):
    key = " ".join(only)
    return (f"<!-- bench/run.sh partial run ({key}): begin (generated; edit bench/report.py, not this section) -->",
            f"<!-- bench/run.sh partial run ({key}): end -->")


def main():
    out, doc_path, svg_path = sys.argv[1:4]
    meta = read_meta(out)
    only = meta.get("only", "").split()
    if only:
        begin, end = partial_markers(only)
        splice_section(doc_path, begin, end, partial_section(out, meta, only))
        return
    rows = int(meta["rows"])
    quick = meta.get("mode") == "quick"
    L = []
    a = L.append

    a(BEGIN)
    a("## conductor vs postgres_fdw hash partitioning vs a local table")
    a("")
    if quick:
        a(f"> **Quick-mode run** (`BENCH_QUICK=1`: {rows:,} rows, {meta['seconds']} s runs): a development "
          "check of the harness, not the figures to judge conductor by. Regenerate with `make bench` "
          "(1,000,000 rows) on an idle machine.")
        a("")
    a(f"Generated by `{meta['command']}` on {meta['start_utc']} (finished {meta.get('end_utc', '?')}). "
      "Every figure below comes from that run; rerun the command to refresh this section "
      "(the rest of this file is left alone).")
    a("")
    a(f"Load average {meta['loadavg_start']} at the start and {meta.get('loadavg_end', '?')} at the end "
      f"on {meta['nproc']} cores (the benchmark's own servers and pgbench share the machine; anything else "
      "running shows here). Absolute numbers drift between runs on shared machines; ratios between targets "
      "are steadier (runs are interleaved across targets).")
    a("")
    a("### Setup")
    a("")
    a("| | |")
    a("|---|---|")
    a(f"| machine | {meta['nproc']} cores ({meta['cpu']}), {meta['mem_total']} RAM, {meta['kernel']} |")
    a(f"| Postgres | {meta['postgres']} |")
    a(f"| client | {meta['pgbench']}, on the same machine over loopback TCP |")
    a(f"| conductor | extension {meta['conductor_ext']} (release build), {meta['node']} (release), git {meta['git']}; {meta['rustc']} |")
    threads = meta.get("node_threads")
    a(f"| node options | {meta.get('node_options', '(defaults)')} (W6 nodes also `--delay-ms {meta['delay_ms']}`)"
      + (f"; every node `--threads {threads}`, its share of the {meta['nproc']} cores (`bench/lib.sh` "
         f"`node_threads`)" if threads else "") + " |")
    a(f"| date | {meta['start_utc']} |")
    a(f"| command | `{meta['command']}` (`make bench` runs `bench/run.sh`) |")
    a(f"| data | `items`, {rows:,} rows, seed {meta['seed']}, generated in SQL by [`bench/workloads/load.sql`](../bench/workloads/load.sql); rows counted after the load: conductor {meta.get('count_conductor')}, peer {meta.get('count_peer')}, local {meta.get('count_local')} |")
    a("")
    a("Three targets, each a database in one \"router\" Postgres 15, all holding the same `items` "
      "(`id bigint` key, `customer_id int`, `name text`, `email text`, `amount numeric(12,2)`, "
      "`created timestamptz`, `flag bool`), so every workload runs the same SQL text on each:")
    a("")
    n_nodes = int(meta.get("nodes", "4"))
    a("- **conductor**: a foreign table, `create_distributed_table('items', 'id', shard_count => 16)` over "
      f"{n_nodes} `conductor-node` processes (SQLite, WAL; {16 // n_nodes if 16 % n_nodes == 0 else '16/' + str(n_nodes)} "
      "shards each, all shards of a node in its one database file).")
    a("- **peer**: `items` `PARTITION BY HASH (id)` with 16 partitions, each a postgres_fdw foreign table; "
      "partition *p* lives on shard Postgres *p* mod 4 (4 more Postgres 15 instances, 4 partitions each, each "
      "remote table with a primary key on `id`). Servers: `async_capable 'true'`, `use_remote_estimate 'false'` "
      "(it costs an extra remote EXPLAIN per partition at every planning; local statistics from `ANALYZE` "
      "instead), `fetch_size '1000'`, `batch_size '1000'`.")
    a("- **local**: a plain heap table with a primary key on `id`: the floor no remote design can pass.")
    a("")
    a(f"All 5 Postgres instances: `{meta['pg_settings']}`; jit={meta['jit']}, "
      f"max_parallel_workers_per_gather={meta['max_parallel_workers_per_gather']} (defaults). "
      "No secondary indexes, except those W4i and W15 create for their own runs and drop after. After the load: `VACUUM ANALYZE` of the local table and of the peer's "
      "remote tables, `ANALYZE` of the peer's partitioned table.")
    a("")
    a(f"W6 runs against copies with {int(meta['w6_rows']):,} rows behind {meta['delay_ms']} ms of extra latency per "
      f"round trip: 4 more nodes started with `--delay-ms {meta['delay_ms']}` for conductor, and for the peer "
      "[`bench/delay_proxy.py`](../bench/delay_proxy.py) in front of each shard Postgres (every chunk the "
      f"server sends reaches the router {meta['delay_ms']} ms late). Keys {meta.get('w6_keys', '?')} are on 4 "
      "different shards (and nodes) of conductor and on 4 partitions on 4 different servers of the peer (its best "
      "case: partitions of one server share one connection, so their scans don't overlap).")
    a("")

    # ---- results
    res = {}
    for w in THROUGHPUT:
        res[w] = {t: throughput(out, w, t) for t in TARGETS}
    for w in ["W4", "W4i", "W5-count", "W5-sum", "W5-group", "W9", "W10"] + W11:
        res[w] = {t: latency(out, w, t) for t in TARGETS}
    for w in ["W6-1", "W6-4", "W6-16"]:
        res[w] = {t: latency(out, w, t) for t in ["conductor", "peer"]}
    res["W7"] = {t: timed(out, "W7", t, rows) for t in TARGETS}
    res["W8"] = {t: timed(out, "W8", t, rows) for t in TARGETS}

    a("### Results")
    a("")
    a("Each cell: median (min–max). Throughput workloads (W1–W3, W12–W14): "
      f"{meta['runs']} pgbench runs of {meta['seconds']} s per target, interleaved, TPS median of the runs; "
      "p50/p99 are per-transaction latencies from pgbench's `--log`, median over the runs. Latency workloads: "
      "every execution is a sample. Ratios are conductor/peer and conductor/local of the medians: "
      "**for TPS and rows/s above 1× means conductor is faster; for latency below 1× means conductor is faster.**")
    a("")
    a("| workload | metric | conductor | peer | local | conductor/peer | conductor/local |")
    a("|---|---|---|---|---|---|---|")
    names = {
        "W1": "W1 point lookup", "W2": "W2 point lookup, prepared generic plan", "W3": "W3 IN list of 10 keys",
        "W12": "W12 UPDATE by key (autocommit)", "W13": "W13 INSERT of a new key (autocommit)",
        "W14": "W14 BEGIN; SELECT; UPDATE by key; COMMIT",
        "W4": "W4 non-key filter, ~1% of rows", "W4i": "W4i the same with an index on the column",
        "W5-count": "W5 count(*)", "W5-sum": "W5 sum(amount)",
        "W5-group": "W5 GROUP BY flag", "W9": "W9 ORDER BY created LIMIT 10",
        "W10": "W10 GROUP BY customer_id top 10 by count", "W7": "W7 whole-table scan", "W8": "W8 INSERT … SELECT",
        **W11_NAMES,
        "W6-1": "W6 1 shard (+delay)", "W6-4": "W6 4 shards (+delay)", "W6-16": "W6 16 shards (+delay)",
    }
    for w in THROUGHPUT:
        L.extend(throughput_rows(w, names[w], res[w]))
    for w in ["W4", "W4i", "W5-count", "W5-sum", "W5-group", "W9", "W10"] + W11:
        r = res[w]
        a(f"| {names[w]} | latency | " + " | ".join(cell(r[t], "lat") for t in TARGETS)
          + f" | {ratio(value(r['conductor'], 'lat'), value(r['peer'], 'lat'))} "
          f"| {ratio(value(r['conductor'], 'lat'), value(r['local'], 'lat'))} |")
    for w in ["W6-1", "W6-4", "W6-16"]:
        r = res[w]
        a(f"| {names[w]} | latency | {cell(r['conductor'], 'lat')} | {cell(r['peer'], 'lat')} | – "
          f"| {ratio(value(r['conductor'], 'lat'), value(r['peer'], 'lat'))} | – |")
    for w in ["W7", "W8"]:
        r = res[w]
        a(f"| {names[w]} | rows/s | " + " | ".join(cell(r[t], "rate") for t in TARGETS)
          + f" | {ratio(value(r['conductor'], 'rate'), value(r['peer'], 'rate'))} "
          f"| {ratio(value(r['conductor'], 'rate'), value(r['local'], 'rate'))} |")
    mem = {}
    for t in TARGETS:
        r = res["W7"][t]
        mem[t] = (r.hwm[1] - r.hwm[0]) / 1024.0 if r and r.hwm else None
    a("| W7 whole-table scan | backend peak memory growth (VmHWM) | "
      + " | ".join(fmt(mem[t], " MB") if mem[t] is not None else "–" for t in TARGETS) + " | | |")
    tck = float(meta.get("clk_tck", "100"))
    def cpu_per_m(r, attr):
        if r is None or getattr(r, attr) is None or not r.lat:
            return None
        return getattr(r, attr) / tck / (rows * len(r.lat)) * 1e6
    cpu = {t: cpu_per_m(res["W7"][t], "cpu_ticks") for t in TARGETS}
    sto = {t: cpu_per_m(res["W7"][t], "storage_ticks") for t in ["conductor", "peer"]}
    a("| W7 whole-table scan | router backend CPU, s per 1M rows | "
      + " | ".join(fmt(cpu[t], " s") if cpu[t] is not None else "–" for t in TARGETS)
      + f" | {ratio(cpu['conductor'], cpu['peer'])} | {ratio(cpu['conductor'], cpu['local'])} |")
    a("| W7 whole-table scan | storage CPU (nodes / shard Postgres), s per 1M rows | "
      + " | ".join(fmt(sto[t], " s") if sto[t] is not None else "–" for t in ["conductor", "peer"])
      + f" | – | {ratio(sto['conductor'], sto['peer'])} | |")
    a("")
    fails = [(w, t, r.error) for w, rt in res.items() for t, r in rt.items() if r is not None and r.error]
    if fails:
        a("**Failures** (the error as the client printed it):")
        a("")
        for w, t, e in fails:
            a(f"- {names.get(w, w)} on {t}: `{e}`")
        a("")

    # ---- plot
    pts = {}
    for t, label in [("conductor", "conductor"), ("peer", "peer (postgres_fdw)")]:
        series = []
        for w, n in [("W6-1", 1), ("W6-4", 4), ("W6-16", 16)]:
            r = res[w][t]
            if r and r.lat and not r.error:
                series.append((n, med(r.lat), min(r.lat), max(r.lat)))
            else:
                series.append(None)
        pts[label] = series
    svg_plot(pts, svg_path, float(meta["delay_ms"]))
    rel_svg = os.path.relpath(svg_path, os.path.dirname(os.path.abspath(doc_path)))
    a(f"![W6: latency vs shards touched]({rel_svg})")
    a("")
    w15 = w15_table(out, meta)
    if w15:
        a("### W15: lookup by a non-key column")
        a("")
        a("Each cell: median (min–max). 8 clients: TPS median of the runs, p50/p99 the medians of the runs'; one "
          "client: every transaction a sample. How the configurations are set up: W15 under Workloads below.")
        a("")
        L.extend(w15)

    # ---- targets
    a("### Against the benchmark's targets")
    a("")
    a("| target | stands at | |")
    a("|---|---|---|")
    for w in ["W1", "W2"]:
        c, p = value(res[w]["conductor"], "tps"), value(res[w]["peer"], "tps")
        if c is None or p is None:
            a(f"| {w} TPS ≥ 2× the peer's | no figure | **not measured** |")
        else:
            r = c / p
            verdict = "met" if r >= 2 else f"**behind**: {r:.2f}× instead of 2×, {(1 - r / 2) * 100:.0f}% short"
            a(f"| {w} TPS ≥ 2× the peer's | {fmt(c)} vs {fmt(p)} TPS = {r:.2f}× | {verdict} |")
    for w, goal in [("W12", 2.0), ("W13", 2.0), ("W14", 1.5)]:
        c, p = value(res[w]["conductor"], "tps"), value(res[w]["peer"], "tps")
        if c is None or p is None:
            a(f"| {w} TPS ≥ {goal:g}× the peer's | no figure | **not measured** |")
        else:
            r = c / p
            verdict = "met" if r >= goal else f"**behind**: {r:.2f}× instead of {goal:g}×"
            a(f"| {w} TPS ≥ {goal:g}× the peer's | {fmt(c)} vs {fmt(p)} TPS = {r:.2f}× | {verdict} |")
        c99 = med(res[w]["conductor"].p99) if res[w]["conductor"] and not res[w]["conductor"].error else None
        p99 = med(res[w]["peer"].p99) if res[w]["peer"] and not res[w]["peer"].error else None
        if c99 is None or p99 is None:
            a(f"| {w} p99 ≤ the peer's | no figure | **not measured** |")
        else:
            verdict = "met" if c99 <= p99 else f"**behind**: {c99 / p99:.2f}× the peer's p99"
            a(f"| {w} p99 ≤ the peer's | {fmt(c99, ' ms')} vs {fmt(p99, ' ms')} | {verdict} |")
    for line in w11_goals(res, value):
        a(line)
    for line in w15_goals(out):
        a(line)
    c1, c16 = value(res["W6-1"]["conductor"], "lat"), value(res["W6-16"]["conductor"], "lat")
    if c1 and c16:
        r = c16 / c1
        verdict = "met" if r <= 1.3 else f"**behind**: {r:.2f}× instead of ≤ 1.3×"
        a(f"| W6 16-shard latency ≤ 1.3× 1-shard | {fmt(c16)} ms vs {fmt(c1)} ms = {r:.2f}× | {verdict} |")
    else:
        a("| W6 16-shard latency ≤ 1.3× 1-shard | no figure | **not measured** |")
    m = mem["conductor"]
    if m is not None:
        verdict = "met" if m < 64 else f"**behind**: {m:.0f} MB, {m - 64:.0f} MB over"
        a(f"| W7 peak backend memory growth < 64 MB | {fmt(m, ' MB')} over {rows:,} rows | {verdict} |")
    else:
        a("| W7 peak backend memory growth < 64 MB | no figure | **not measured** |")
    c, p = value(res["W8"]["conductor"], "rate"), value(res["W8"]["peer"], "rate")
    if c is not None and p is not None:
        r = c / p
        verdict = "met" if r >= 1 else f"**behind**: {r:.2f}× the peer's rows/s, {(1 - r) * 100:.0f}% short"
        a(f"| W8 rows/s ≥ the peer's | {fmt(c)} vs {fmt(p)} rows/s = {r:.2f}× | {verdict} |")
    else:
        a("| W8 rows/s ≥ the peer's | no figure | **not measured** |")
    a("")
    stats_rows = []
    for w in ["W1", "W2"]:
        on, off = throughput(out, w + "-stats", "on"), throughput(out, w + "-stats", "off")
        if on is None or off is None or on.error or off.error:
            continue
        t_on, t_off = med(on.tps), med(off.tps)
        stats_rows.append(
            f"| {w} | {spread(on.tps)} | {spread(off.tps)} | {(t_on / t_off - 1) * 100:+.1f}% "
            f"| {fmt(med(on.p50))} / {fmt(med(off.p50))} | {fmt(med(on.p99))} / {fmt(med(off.p99))} |")
    if stats_rows:
        a("### Shared statistics: on against off")
        a("")
        a("conductor alone, `conductor.track_stats` on (the default: statements, node requests and shard "
          "accesses counted in shared memory) and off, runs interleaved; TPS median (min–max) of the runs, "
          "latency medians of the runs' p50 and p99 in ms.")
        a("")
        a("| workload | TPS on | TPS off | on vs off | p50 on / off | p99 on / off |")
        a("|---|---|---|---|---|---|")
        for row in stats_rows:
            a(row)
        a("")
    for note in why_notes(out, res, fails, meta, cpu, sto):
        a(note)
        a("")

    # ---- workloads
    a("### Workloads: exact SQL and client settings")
    a("")
    a("`<db>` is `conductor`, `peer` or `local` (W6: `conductor_w6`, `peer_w6`); pgbench connects to the "
      "router over TCP on 127.0.0.1 as a superuser. Each workload gets an unrecorded warm-up first "
      "(2 s of the same pgbench for W1–W3, W12–W14 and W15's 8-client runs, one execution for the others). W12–W14 run last "
      "on the main dataset, after every read workload, since they change and add rows.")
    a("")
    specs = [
        ("W1", "point lookup by key", ["w1_point.sql"]),
        ("W2", "the same, prepared, generic plan", ["w1_point.sql"]),
        ("W3", "IN list of 10 random keys", ["w3_in10.sql"]),
        ("W4", "filter on a non-key column, ~1% of rows (every shard)", ["w4_filter.sql"]),
        ("W4i", "W4 with an index on customer_id: conductor.create_shard_index on every shard, an index on every peer partition and on the local table (dropped after)", ["w4_filter.sql"]),
        ("W5-count", "count(*)", ["w5_count.sql"]),
        ("W5-sum", "sum", ["w5_sum.sql"]),
        ("W5-group", "GROUP BY", ["w5_group.sql"]),
        ("W9", "ORDER BY a non-key column, LIMIT 10", ["w9_topn.sql"]),
        ("W10", "GROUP BY a non-key column, top 10 groups by count", ["w10_group_topn.sql"]),
        ("W6-1", "1 shard, +delay", ["w6_1shard.sql"]),
        ("W6-4", "4 shards, +delay", ["w6_4shards.sql"]),
        ("W6-16", "16 shards (no key predicate), +delay", ["w6_16shards.sql"]),
        ("W7", "whole-table scan, rows/s and backend peak memory", ["w7_scan.sql"]),
        ("W8", "bulk load", ["load.sql"]),
        ("W12", "single-row UPDATE by key, each statement its own transaction", ["w12_update.sql"]),
        ("W13", "single-row INSERT of a random new key, each statement its own transaction", ["w13_insert.sql"]),
        ("W14", "a transaction that reads a row by key, then updates it", ["w14_read_update.sql"]),
    ] + W11_SPECS
    for w, title, files in specs:
        a(f"**{w}** — {title}. Client: `{client(out, w)}`")
        a("")
        a("```sql")
        for fn in files:
            a(workload_sql(fn))
        a("```")
        a("")
    L.extend(w15_spec(out))
    a("W7's memory figure is VmHWM (peak resident set) of the backend, read with "
      "`pg_read_file('/proc/self/status')` in the same session before the first scan (after a point lookup, so "
      "the extension and its I/O runtime are already loaded) and after the last one. Its CPU figures are "
      "utime + stime over the same interval: of the router backend (all its threads) from `/proc/self/stat`, "
      "and of the storage side (conductor's 4 nodes; the peer's 4 shard postmasters and their children, which "
      "include the backends serving postgres_fdw) from [`bench/cpu_ticks.sh`](../bench/cpu_ticks.sh) run by "
      "psql's `\\!` inside the session; divided by the rows scanned.")
    a("")

    # ---- EXPLAIN
    a("### EXPLAIN of the queries (from this run)")
    a("")
    L.extend(explain_details(out, [
        ("conductor", "explain-conductor.txt"), ("conductor, generic plan (W2)", "explain-conductor-generic.txt"),
        ("peer", "explain-peer.txt"), ("local", "explain-local.txt"),
        ("conductor W6, 16 shards (ANALYZE)", "explain-conductor-w6-16.txt"),
        ("peer W6, 16 shards (ANALYZE)", "explain-peer-w6-16.txt")] + W11_EXPLAINS + W15_EXPLAINS))
    a(END)
    section = "\n".join(L) + "\n"

    splice_section(doc_path, BEGIN, END, section)


def explain_details(out, explains, prefix=""):
    """A collapsed block per (label, file) of EXPLAIN output the run wrote."""
    lines = []
    for label, fn in explains:
        p = os.path.join(out, fn)
        if not os.path.exists(p):
            continue
        lines += [f"<details><summary>{prefix}{html.escape(label)}</summary>", "", "```",
                  read_text(p).rstrip(), "```", "", "</details>", ""]
    return lines


def splice_section(doc_path, begin, end, section):
    """Writes `section` (which starts with `begin` and ends with `end`) into
    the doc in place of its previous copy, keeping everything else."""
    existing = read_text(doc_path) if os.path.exists(doc_path) else ""
    if begin in existing and end in existing:
        head = existing[:existing.index(begin)]
        tail = existing[existing.index(end) + len(end):].lstrip("\n")
        new = head + section + ("\n" + tail if tail else "")
    elif existing.strip():
        new = existing.rstrip("\n") + "\n\n" + section
    else:
        new = "# Benchmarks\n\n" + section
    with open(doc_path, "w") as f:
        f.write(new)


if __name__ == "__main__":
    main()

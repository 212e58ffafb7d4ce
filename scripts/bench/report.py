#!/usr/bin/env python3
"""Turn a scripts/bench.sh results directory into docs/benchmarks.md and docs/benchmarks.png."""

import argparse
import json
import os
import platform
import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load(res, broker, name):
    p = res / broker / f"{name}.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def text(p):
    try:
        return Path(p).read_text().strip()
    except OSError:
        return None


def sh(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def meta_env(res):
    out = {}
    for line in (text(res / "meta.env") or "").splitlines():
        if "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


# ------------------------------------------------------------------ formatting

def fmt_rate(v):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f} M/s"
    if v >= 1e3:
        return f"{v / 1e3:.1f} k/s"
    return f"{v:.0f}/s"


def fmt_bytes_rate(v):
    return "—" if v is None else f"{v / 1e6:,.0f} MB/s"


def fmt_us(v):
    if v is None:
        return "—"
    return f"{v / 1000:.2f} ms" if v >= 1000 else f"{v:.0f} µs"


def fmt_mb(kb):
    return "—" if kb is None else f"{kb / 1024:,.1f} MB"


def fmt_kb(kb):
    return "—" if kb is None else f"{kb:,.1f} KB"


def fmt_size(b):
    if b is None:
        return "—"
    if b >= 1e9:
        return f"{b / 1e9:.2f} GB"
    if b >= 1e6:
        return f"{b / 1e6:.1f} MB"
    return f"{b / 1e3:.1f} kB"


def fmt_s(s):
    if s is None:
        return "—"
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s"


def fmt_cpu(d):
    if not d:
        return "—"
    f = (d.get("cpu") or {}).get("broker_core_fraction")
    return "—" if f is None else f"{f:.2f}"


def ratio_str(r):
    if r is None:
        return "—"
    # Two decimals below 10×, so a ratio just under a target (1.97× vs ≥ 2×) never reads as met.
    return f"{r:.1f}×" if r >= 10 else f"{r:.2f}×"


def g(d, *path):
    for k in path:
        if d is None:
            return None
        d = d.get(k) if isinstance(d, dict) else None
    return d


# ------------------------------------------------------------------ repeated runs

# The timed workloads scripts/bench.sh repeats (--repeat N): id -> (name on this page, the key
# metric scripts/bench/median.py picked the median run by, recorded in <id>.runs.json).
TIMED = {"transient": ("transient", "consume rate"), "persistent": ("persistent", "confirm rate"),
         "multi": ("4p4c", "consume rate"), "large": ("64 KiB", "bytes/s consumed"),
         "fanout": ("fanout", "deliveries/s"), "latency": ("latency", "p99 publish→deliver")}


def fmt_series(metric, values, chosen):
    """Every run's value in one unit (the chosen run's), that one in bold: "1.02 / **1.11** / 0.98 M/s"."""
    ref = values[chosen - 1] if chosen and values[chosen - 1] is not None else max(
        (v for v in values if v is not None), default=0)
    if metric == "consume_bytes_per_s":
        scale, digits, unit = 1e6, 0, " MB/s"
    elif metric.startswith("latency_us"):
        scale, digits, unit = (1000, 2, " ms") if ref >= 1000 else (1, 0, " µs")
    elif ref >= 1e6:
        scale, digits, unit = 1e6, 2, " M/s"
    elif ref >= 1e3:
        scale, digits, unit = 1e3, 1, " k/s"
    else:
        scale, digits, unit = 1, 0, " /s"
    parts = []
    for i, v in enumerate(values, 1):
        s = "failed" if v is None else f"{v / scale:,.{digits}f}"
        parts.append(f"**{s}**" if i == chosen else s)
    return " / ".join(parts) + unit


def runs_cell(res, broker, key):
    r = load(res, broker, f"{key}.runs")
    if not r or not r.get("values"):
        return "—"   # not a repeated workload, or results from before --repeat
    return fmt_series(r.get("metric", ""), r["values"], r.get("chosen"))


def repeats(res, meta):
    """How many times each timed workload ran: meta.env's REPEAT, else the longest
    <id>.runs.json; None for results from before --repeat (each ran once)."""
    if meta.get("REPEAT", "").isdigit():
        return int(meta["REPEAT"])
    n = [len(g(load(res, b, f"{k}.runs"), "values") or []) for b in ("warren", "rabbitmq") for k in TIMED]
    return max(n) if any(n) else None


# ------------------------------------------------------------------ the matrix

def matrix_rows(res):
    W = lambda n: load(res, "warren", n)  # noqa: E731
    R = lambda n: load(res, "rabbitmq", n)  # noqa: E731
    rows = []

    def add(name, metric, wv, rv, fmt, higher_better, target_ratio, target_text, extra_ok=True, extra_note="",
            wcpu="—", rcpu="—"):
        ratio = None
        if wv is not None and rv not in (None, 0):
            ratio = wv / rv
        if ratio is None:
            met = "not measured"
        elif higher_better:
            met = "met" if ratio >= target_ratio and extra_ok else "**not met**"
        else:
            met = "met" if ratio <= target_ratio and extra_ok else "**not met**"
        rows.append({
            "name": name, "metric": metric, "w": fmt(wv), "r": fmt(rv), "ratio": ratio_str(ratio), "target": target_text,
            "met": met + (f" ({extra_note})" if extra_note else ""), "wcpu": wcpu, "rcpu": rcpu,
            "wv": wv, "rv": rv, "ratio_v": ratio,
        })

    t_w, t_r = W("transient"), R("transient")
    wv = g(t_w, "consume_rate")
    add("Transient 1p → 1q → 1c, 16 B", "consume rate", wv, g(t_r, "consume_rate"), fmt_rate, True, 10,
        "≥ 10× and ≥ 1M msg/s", extra_ok=(wv or 0) >= 1e6,
        extra_note="" if (wv or 0) >= 1e6 else f"{(wv or 0) / 1e6:.2f}M < 1M msg/s",
        wcpu=fmt_cpu(t_w), rcpu=fmt_cpu(t_r))

    p_w, p_r = W("persistent"), R("persistent")
    cw, cr = g(p_w, "confirm_rate"), g(p_r, "confirm_rate")
    uw, ur = g(p_w, "consume_rate"), g(p_r, "consume_rate")
    cons_ok = uw is not None and ur and uw / ur >= 5
    add("Persistent, durable queue, 1000 confirms in flight, 16 B", "confirm rate", cw, cr, fmt_rate, True, 5,
        "≥ 5×", wcpu=fmt_cpu(p_w), rcpu=fmt_cpu(p_r))
    add("  (same run)", "consume rate", uw, ur, fmt_rate, True, 5, "≥ 5×", extra_ok=bool(cons_ok),
        wcpu=fmt_cpu(p_w), rcpu=fmt_cpu(p_r))

    m_w, m_r = W("multi"), R("multi")
    wcores = g(m_w, "cpu", "broker_core_fraction")
    add("4 producers, 4 consumers, 4 queues, 16 B", "consume rate", g(m_w, "consume_rate"), g(m_r, "consume_rate"),
        fmt_rate, True, 10, "≥ 10×, broker on both cores", extra_ok=(wcores or 0) >= 1.5,
        extra_note="" if (wcores or 0) >= 1.5 else f"Warren used {wcores or 0:.2f} cores",
        wcpu=fmt_cpu(m_w), rcpu=fmt_cpu(m_r))

    l_w, l_r = W("large"), R("large")
    add("64 KiB messages, 1p1c", "bytes/s consumed", g(l_w, "consume_bytes_per_s"), g(l_r, "consume_bytes_per_s"),
        fmt_bytes_rate, True, 2, "≥ 2×", wcpu=fmt_cpu(l_w), rcpu=fmt_cpu(l_r))

    f_w, f_r = W("fanout"), R("fanout")
    add("Fanout: 1 producer → 10 queues → 10 consumers", "deliveries/s", g(f_w, "consume_rate"),
        g(f_r, "consume_rate"), fmt_rate, True, 10, "≥ 10×", wcpu=fmt_cpu(f_w), rcpu=fmt_cpu(f_r))

    a_w, a_r = W("latency"), R("latency")
    add("Latency at 5,000 msg/s, 1p1c", "p99 publish→deliver", g(a_w, "latency_us", "p99"),
        g(a_r, "latency_us", "p99"), fmt_us, False, 0.5, "≤ 0.5×", wcpu=fmt_cpu(a_w), rcpu=fmt_cpu(a_r))

    s_w, s_r = W("rss"), R("rss")

    def growth(s):
        return None if not s else s["rss_after_kb"] - s["rss_before_kb"]

    add("1M queued 16 B transient messages, no consumer", "broker RSS growth", growth(s_w), growth(s_r), fmt_mb,
        False, 0.1, "≤ 0.1×", wcpu=fmt_cpu(W("rss_publish")), rcpu=fmt_cpu(R("rss_publish")))

    c_w, c_r = W("connections"), R("connections")
    n = g(c_w, "requested") or g(c_r, "requested") or 10000

    def cpu_conn(c):
        return "—" if not c else f"{c['broker_cpu_s']:.1f} s"

    add(f"{n:,} idle connections", "RSS per connection", g(c_w, "kb_per_connection"), g(c_r, "kb_per_connection"),
        fmt_kb, False, 0.2, "≤ 0.2×", wcpu=cpu_conn(c_w), rcpu=cpu_conn(c_r))
    return rows


def details_rows(res):
    names = [("transient", "Transient 1p1c"), ("persistent", "Persistent + confirms"), ("multi", "4p4c, 4 queues"),
             ("large", "64 KiB 1p1c"), ("fanout", "Fanout 1→10"), ("latency", "5,000 msg/s + latency"),
             ("rss_publish", "1M 16 B, no consumer")]
    out = []
    for key, label in names:
        for b, bn in (("warren", "Warren"), ("rabbitmq", "RabbitMQ")):
            d = load(res, b, key)
            if not d:
                continue
            lat = d.get("latency_us") or {}
            out.append(
                f"| {label} | {bn} | {fmt_rate(d.get('publish_rate'))} | {fmt_rate(d.get('confirm_rate'))} | "
                f"{fmt_rate(d.get('consume_rate'))} | {fmt_bytes_rate(d.get('consume_bytes_per_s'))} | "
                f"{fmt_us(lat.get('p50')) if lat else '—'} / {fmt_us(lat.get('p99')) if lat else '—'} / "
                f"{fmt_us(lat.get('max')) if lat else '—'} | "
                f"{fmt_cpu(d)} | {(d.get('cpu') or {}).get('perf_core_fraction', 0):.2f} | "
                f"{runs_cell(res, b, key)} | {'; '.join(d.get('errors') or []) or 'none'} |")
    return out


# ------------------------------------------------------------------ store

def store_section(res, meta):
    lines = []
    have = False
    for b, bn in (("warren", "Warren"), ("rabbitmq", "RabbitMQ")):
        if load(res, b, "store"):
            have = True
    if not have:
        return ["_Not run._"]
    cols = [(b, bn) for b, bn in (("warren", "Warren"), ("rabbitmq", "RabbitMQ")) if load(res, b, "store")]
    n = next(load(res, b, "store")["messages"] for b, _ in cols)
    lines.append(f"{n:,} persistent 1 KiB messages published with confirms (1000 in flight) into one durable "
                 "queue by `scripts/bench/amqp_tool.py publish-seq` (each body starts with its sequence number); "
                 "the broker is stopped (Warren: SIGTERM; RabbitMQ: `rabbitmqctl stop`) and restarted on the same "
                 "data; `amqp_tool.py recover-check` starts it and times until `basic.get` returns a message, then "
                 "consumes everything and checks each sequence number arrives exactly once, in order.")
    lines.append("")
    lines.append("| figure | " + " | ".join(bn for _, bn in cols) + " | target (Warren) | met |")
    lines.append("| --- | " + " | ".join("---" for _ in cols) + " | --- | --- |")
    S = {b: load(res, b, "store") or {} for b, _ in cols}
    P = {b: load(res, b, "store_publish") or {} for b, _ in cols}
    C = {b: load(res, b, "store_recover") or {} for b, _ in cols}
    w = S.get("warren", {})
    wc = C.get("warren", {})

    def row(label, vals, target="", met=""):
        lines.append(f"| {label} | " + " | ".join(vals) + f" | {target} | {met} |")

    row("publish rate (Python publisher, confirmed)", [fmt_rate(P[b].get("rate")) for b, _ in cols])
    row("broker CPU while publishing", [f"{P[b]['broker_cpu_s']:.1f} s" if P[b].get("broker_cpu_s") is not None
                                        else "—" for b, _ in cols])
    rss = w.get("rss_after_publish_kb")
    row("broker RSS after publishing", [fmt_mb(S[b].get("rss_after_publish_kb")) for b, _ in cols], "≤ 150 MB",
        "" if rss is None else ("met" if rss <= 150 * 1024 else f"**not met** ({rss / 1024:.0f} MB)"))
    row("broker peak RSS (VmHWM) while publishing", [fmt_mb(S[b].get("hwm_after_publish_kb")) for b, _ in cols])
    row("data dir after publishing (du -sb)", [fmt_size(S[b].get("du_after_publish")) for b, _ in cols])
    row("graceful stop", [fmt_s(S[b].get("stop_seconds")) for b, _ in cols])
    fg = wc.get("first_get_s")
    row("restart → first basic.get succeeds", [fmt_s(C[b].get("first_get_s")) for b, _ in cols], "≤ 1 s",
        "" if fg is None else ("met" if fg <= 1 else f"**not met** ({fg:.2f} s)"))
    ok = wc.get("exactly_once_in_order")

    def eo(c):
        if not c:
            return "—"
        s = f"{c.get('consumed', 0):,} of {c.get('expected', 0):,}"
        if c.get("exactly_once_in_order"):
            return s + ", exactly once, in order"
        return (s + f"; out of order {c.get('out_of_order')}, duplicates {c.get('duplicates')}, extra "
                f"{c.get('extra_after_n')}, left in queue {c.get('remaining_in_queue')}, first bad {c.get('first_bad')}")

    row("messages back after restart", [eo(C[b]) for b, _ in cols], "exactly once, in order",
        "" if ok is None else ("met" if ok else "**not met**"))
    row("drain rate after restart (Python consumer)", [fmt_rate(C[b].get("drain_rate")) for b, _ in cols])
    row("broker RSS after restart + drain", [fmt_mb(S[b].get("rss_after_drain_kb")) for b, _ in cols])
    row("broker peak RSS since restart", [fmt_mb(S[b].get("hwm_after_restart_kb")) for b, _ in cols])
    after, full = w.get("du_after_drain_5s"), w.get("du_after_publish")
    row("data dir right after draining", [fmt_size(S[b].get("du_after_drain")) for b, _ in cols])
    row("data dir 5 s after draining", [fmt_size(S[b].get("du_after_drain_5s")) for b, _ in cols],
        "shrinks back (≤ 5 % of full)",
        "" if after is None or not full else ("met" if after <= 0.05 * full else f"**not met** ({after / full:.0%})"))
    big = load(res, "warren", "big")
    lines.append("")
    if big and "skipped" not in big:
        r = big.get("rss_after_publish_kb")
        bp = load(res, "warren", "big_publish") or {}
        lines.append(f"`--big`: {big['messages']:,} persistent 1 KiB messages into Warren (warren-perf "
                     f"`-x 1 -y 0 -s 1024 -p --durable-queue -c 1000 -C {big['messages']}`): publish "
                     f"{fmt_rate(bp.get('confirm_rate'))} confirmed, broker RSS after {fmt_mb(r)} (peak "
                     f"{fmt_mb(big.get('hwm_kb'))}), data dir {fmt_size(big.get('du_after_publish'))}. Target RSS ≤ 200 MB: "
                     + ("met." if r is not None and r <= 200 * 1024 else "**not met**."))
    elif big:
        lines.append(f"`--big` (10M messages): skipped — {big['skipped']}.")
    else:
        lines.append("The 10,000,000-message figure (target RSS ≤ 200 MB) is measured with `scripts/bench.sh --big` "
                     "(writes ~11 GB; skipped when less than 25 GB is free); it was not part of this run.")
    return lines


# ------------------------------------------------------------------ machine

def machine(res, meta):
    cpu = ""
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kb = 0
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal"):
            mem_kb = int(line.split()[1])
    df = sh("df", "-h", "--output=source,fstype,size,avail", str(ROOT)).splitlines()
    disk = " ".join(df[-1].split()) if df else "?"
    dev = df[-1].split()[0] if df else ""
    rota = ""
    m = re.match(r"/dev/([a-z]+)", dev)
    if m:
        r = text(f"/sys/block/{m.group(1)}/queue/rotational")
        rota = {"0": ", non-rotational", "1": ", reported rotational (virtual disk)"}.get(r or "", "")
    rev = meta.get("WARREN_REV") or sh("git", "rev-parse", "--short=12", "HEAD")
    dirty = meta.get("WARREN_DIRTY", "0") != "0" if "WARREN_DIRTY" in meta else bool(
        sh("git", "status", "--porcelain", "--untracked-files=no"))
    rustc = sh("rustc", "--version")
    otp = sh("erl", "-noshell", "-eval", "io:put_chars(erlang:system_info(otp_release)), halt().")
    rabbit = None
    for b in ("transient", "persistent", "rss_publish", "latency"):
        d = load(res, "rabbitmq", b)
        if d and d.get("server"):
            rabbit = d["server"]
            break
    if not rabbit:
        rabbit = "RabbitMQ " + sh("dpkg-query", "-W", "-f=${Version}", "rabbitmq-server")
    return [
        f"- CPU: {cpu}, {os.cpu_count()} cores (`nproc` = {sh('nproc')})",
        f"- RAM: {mem_kb / 1024 / 1024:.1f} GiB",
        f"- Kernel: Linux {platform.release()}",
        f"- Disk: {disk} (source, fs, size, free){rota}",
        f"- Warren: git {rev}{' with uncommitted changes' if dirty else ''}, release build ({rustc})",
        f"- {rabbit} (Debian package {sh('dpkg-query', '-W', '-f=${Version}', 'rabbitmq-server')}), Erlang/OTP {otp}",
        f"- Run: {meta.get('STARTED', '?')}, {meta.get('DURATION', '?')} s per timed workload, "
        f"{int(meta.get('ELAPSED', 0)) // 60} min {int(meta.get('ELAPSED', 0)) % 60} s in all",
    ]


# ------------------------------------------------------------------ chart

def chart(res, png):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5.2), gridspec_kw={"width_ratios": [1.5, 1]})
    labels = ["transient\n1p1c", "persistent\nconfirmed", "4p4c\n4 queues", "64 KiB\n1p1c", "fanout\ndeliveries"]
    keys = [("transient", "consume_rate"), ("persistent", "confirm_rate"), ("multi", "consume_rate"),
            ("large", "consume_rate"), ("fanout", "consume_rate")]
    colors = {"warren": "#2b7bba", "rabbitmq": "#f28e2b"}
    width = 0.38
    for i, (b, bn) in enumerate((("warren", "Warren"), ("rabbitmq", "RabbitMQ 3.10"))):
        vals = [g(load(res, b, k), f) or 0 for k, f in keys]
        xs = [x + (i - 0.5) * width for x in range(len(keys))]
        bars = ax1.bar(xs, vals, width, label=bn, color=colors[b])
        for x, v in zip(xs, vals):
            if v:
                ax1.text(x, v * 1.08, fmt_rate(v).replace(" ", "\n", 0), ha="center", va="bottom", fontsize=7.5)
        del bars
    ax1.set_yscale("log")
    ax1.set_xticks(range(len(keys)))
    ax1.set_xticklabels(labels)
    ax1.set_ylabel("messages / s (log scale)")
    ax1.set_title("Throughput (16 B bodies unless noted)")
    ax1.legend(loc="upper right")
    ax1.grid(axis="y", which="both", alpha=0.25)
    top = max([g(load(res, b, k), f) or 1 for b in ("warren", "rabbitmq") for k, f in keys] + [1])
    ax1.set_ylim(top=top * 4)

    pct = ["p50", "p95", "p99", "p999"]
    for i, (b, bn) in enumerate((("warren", "Warren"), ("rabbitmq", "RabbitMQ 3.10"))):
        lat = g(load(res, b, "latency"), "latency_us") or {}
        vals = [lat.get(p) or 0 for p in pct]
        xs = [x + (i - 0.5) * width for x in range(len(pct))]
        ax2.bar(xs, vals, width, label=bn, color=colors[b])
        for x, v in zip(xs, vals):
            if v:
                ax2.text(x, v * 1.08, fmt_us(v), ha="center", va="bottom", fontsize=7.5)
    ax2.set_yscale("log")
    ax2.set_xticks(range(len(pct)))
    ax2.set_xticklabels(["p50", "p95", "p99", "p99.9"])
    ax2.set_ylabel("publish → deliver latency, µs (log scale)")
    ax2.set_title("Latency at a fixed 5,000 msg/s, 1p1c")
    ax2.legend(loc="upper left")
    ax2.grid(axis="y", which="both", alpha=0.25)
    fig.suptitle("Warren vs RabbitMQ on the same machine (one broker at a time)", fontsize=11)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png", required=True)
    a = ap.parse_args()
    res = Path(a.results)
    meta = meta_env(res)
    nrep = repeats(res, meta)
    rows = matrix_rows(res)
    cmds = []
    for key in ("transient", "persistent", "multi", "large", "fanout", "latency", "rss_publish", "connections"):
        c = text(res / "warren" / f"{key}.cmd") or text(res / "rabbitmq" / f"{key}.cmd")
        if c:
            cmds.append(f"{key:12} {c}")
    notmet = [r for r in rows if "not met" in r["met"]]
    md = []
    md.append("# Benchmarks: Warren vs RabbitMQ")
    md.append("")
    md.append("Generated by `scripts/bench.sh` (do not edit by hand: rerun it). Both brokers run on the same "
              "machine, one after the other and never at once, each workload on a freshly started broker "
              "with an empty data directory, driven by `warren-perf` (crates/perf) over 127.0.0.1.")
    md.append("")
    md.append("![throughput and latency](benchmarks.png)")
    md.append("")
    md.append("Where Warren's time goes, and microbenchmarks of the codec, routing and store: "
              "[profiling.md](profiling.md).")
    md.append("")
    md.append("Scale (issue 14): 100,000 queues, 1,000,000 bindings, 10,000-19,000 connections, consumers "
              "and churn side by side with RabbitMQ (`scripts/bench-scale.sh`), and the scale paths before and "
              "after making them linear: [benchmarks-scale.md](benchmarks-scale.md).")
    md.append("")
    md.append("## Machine and versions")
    md.append("")
    md += machine(res, meta)
    md.append("")
    md.append("## Results")
    md.append("")
    md.append("Ratio = Warren / RabbitMQ (for latency and memory, lower is better, so the target is a ratio "
              "below 1). Broker CPU = cores' worth of CPU time the broker used over the run (2 cores in all; "
              "warren-perf runs on the same cores); for the connection test, CPU seconds to accept them.")
    md.append("")
    md.append("| workload | metric | Warren | RabbitMQ | ratio | target | met? | broker CPU Warren | broker CPU RabbitMQ |")
    md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        md.append(f"| {r['name']} | {r['metric']} | {r['w']} | {r['r']} | {r['ratio']} | {r['target']} | {r['met']} "
                  f"| {r['wcpu']} | {r['rcpu']} |")
    md.append("")
    if notmet:
        md.append("Not met: " + "; ".join(
            f"{r['name'].strip()} ({r['metric']}): {r['ratio']} against {r['target']}" for r in notmet) + ".")
        md.append("")
    md.append("### Every run in detail")
    md.append("")
    md.append("| workload | broker | published | confirmed | consumed | consumed bytes | latency p50 / p99 / max "
              "| broker cores | warren-perf cores | runs (key metric) | errors |")
    md.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    md += details_rows(res)
    md.append("")
    for b, bn in (("warren", "Warren"), ("rabbitmq", "RabbitMQ")):
        s, c = load(res, b, "rss"), load(res, b, "connections")
        bits = []
        if s:
            bits.append(f"1M-message RSS test: {fmt_mb(s['rss_before_kb'])} → {fmt_mb(s['rss_after_kb'])} "
                        f"(peak {fmt_mb(s.get('hwm_kb'))})")
        if c:
            bits.append(f"idle connections: {c['opened']:,} of {c['requested']:,} opened in {c['open_seconds']:.1f} s "
                        f"({c['alive_after_settle']:,} still open after settling, {c['errors']} errors), RSS "
                        f"{fmt_mb(c['rss_before_kb'])} → {fmt_mb(c['rss_after_kb'])}")
        if bits:
            md.append(f"- {bn}: " + "; ".join(bits) + ".")
    md.append("")
    md.append("## Durable store")
    md.append("")
    md += store_section(res, meta)
    md.append("")
    md.append("## How it was run")
    md.append("")
    md.append("```sh")
    md.append(f"scripts/bench.sh --duration {meta.get('DURATION', 10)}"
              + (f" --repeat {nrep}" if nrep else "")
              + (" --big" if meta.get("BIG") == "1" else ""))
    md.append("```")
    md.append("")
    md.append("It builds `cargo build --release -p server --bin warren -p perf`, installs Debian's "
              "`rabbitmq-server` if it is missing, and for each broker and workload starts a fresh broker:")
    md.append("")
    md.append(f"- Warren: `target/release/warren --amqp-port {meta.get('WPORT', 5899)} --bind 127.0.0.1 "
              "--data-dir <fresh temp dir>` (defaults otherwise: one worker thread per core, 8 MiB per-queue RAM "
              "budget before paging to disk).")
    md.append(f"- RabbitMQ: `/usr/lib/rabbitmq/bin/rabbitmq-server` with RABBITMQ_NODENAME=bench@localhost, "
              f"RABBITMQ_NODE_PORT={meta.get('RPORT', 5898)} on 127.0.0.1, its own RABBITMQ_MNESIA_BASE / "
              "LOG_BASE / HOME (cookie) in a temp dir, no plugins (empty enabled_plugins file), "
              "`log.file.level = warning` (so logging every connection does not slow it), defaults otherwise "
              "(classic queues). Stopped with `rabbitmqctl stop`.")
    md.append(f"- `ulimit -n` {meta.get('NOFILE', '?')} for both brokers and the tools.")
    md.append("")
    md.append("Then (`$U` = the broker's amqp:// URI, `$PID` its pid: warren, or RabbitMQ's beam.smp):")
    md.append("")
    md.append("```")
    md += cmds
    md.append("```")
    md.append("")
    if nrep:
        md.append(f"- Each timed workload ({', '.join(n for n, _ in TIMED.values())}) ran "
                  + ("once" if nrep == 1 else f"{nrep} times") + ", each time on a freshly started broker"
                  + ("" if nrep == 1 else
                     "; the tables and the chart show its median run by the workload's key metric ("
                     + ", ".join(f"{n}: {m}" for n, m in TIMED.values())
                     + "; with an even number of usable runs, the lower of the two middle values). That is one "
                     "real run, so the other figures in its row come from the same run. "
                     "*runs (key metric)* under *Every run in detail* lists every run's value in run order, "
                     "the median in bold (\"failed\": that run left no usable result)") + ".")
    md.append("- Transient/persistent/4p4c/64 KiB/fanout: rates are averages over the whole run. Without `-c` "
              "producers publish as fast as the socket takes; the consume rate is the figure compared.")
    md.append("- RSS growth: VmRSS from /proc/$PID/status before publishing and 2 s after the last of 1,000,000 "
              "16 B transient messages is confirmed into a non-durable queue with no consumer. Warren pages "
              "a queue's ready messages beyond its RAM budget (8 MiB by default) to disk, so its figure is "
              "bounded by that budget; RabbitMQ 3.10 classic queues keep them in RAM.")
    md.append("- Idle connections: `scripts/bench/amqp_tool.py hold` opens the connections (full AMQP handshake "
              "up to connection.open-ok, heartbeats off, no channel), waits 3 s, and reads VmRSS; "
              "RSS per connection = growth / connections.")
    md.append("- Raw results (JSON per run) are kept under `target/bench/<timestamp>/`; "
              "`scripts/bench.sh --report-only DIR` regenerates this page from them.")
    md.append("")
    # Hand-written sections after the generated part (from "## Statistics overhead" on,
    # measured with scripts/bench/ab_transient.sh) are kept as they are.
    old = Path(a.md).read_text() if Path(a.md).exists() else ""
    kept = old.find("\n## Statistics overhead")
    if kept >= 0:
        md.append(old[kept + 1:].rstrip("\n"))
        md.append("")
    Path(a.md).write_text("\n".join(md) + "\n")
    chart(res, a.png)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Markdown table for scripts/bench/quorum.sh (standard library only).

    quorum_report.py DIR REPEAT PRODUCERS

Reads DIR/<kind>-x<P>.<r>.json (warren-perf --json) and .cpu (the brokers' CPU seconds over
the run, all nodes together) for kind in warren, rabbitmq, classic; per (kind, P) picks the
median run by confirm rate (with an even count, the lower middle one) and prints its
figures, every run's rate, and the Warren/RabbitMQ ratios: per producer count, and of each
cluster's peak (its best median over the producer counts: the throughput it can give).
"""

import json
import sys
from pathlib import Path

KINDS = {"warren": "Warren quorum, 3 nodes", "rabbitmq": "RabbitMQ 3.10.8 quorum, 3 nodes",
         "classic": "Warren classic durable, 1 node"}


def load(d, kind, x, r):
    try:
        j = json.loads((d / f"{kind}-x{x}.{r}.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        j["broker_cpu"] = float((d / f"{kind}-x{x}.{r}.cpu").read_text())
    except (OSError, ValueError):
        j["broker_cpu"] = None
    return j


def median_run(runs):
    ok = sorted((r for r in runs if r), key=lambda j: j["confirm_rate"])
    return ok[(len(ok) - 1) // 2] if ok else None


def rate(v):
    return f"{v / 1000:,.1f} k/s" if v >= 1000 else f"{v:,.0f}/s"


def us(v):
    if v is None:
        return "—"
    return f"{v / 1000:,.1f} ms" if v >= 1000 else f"{v:,.0f} µs"


def main():
    d, repeat, producers = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3].split(",")
    print("| producers | broker | confirmed msg/s (median) | confirm p50 | confirm p99 | publish→deliver p99 "
          "| broker CPU (cores) | runs (confirmed msg/s) | nacked | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    med = {}
    for x in producers:
        for kind, label in KINDS.items():
            runs = [load(d, kind, x, r) for r in range(1, repeat + 1)]
            if not any(runs):
                continue
            m = median_run(runs)
            med[(kind, x)] = m
            c = m.get("confirm_latency_us") or {}
            lat = m.get("latency_us") or {}
            cpu = m["broker_cpu"] / m["duration_s"] if m["broker_cpu"] is not None else None
            runs_s = " / ".join(rate(r["confirm_rate"]) if r else "failed" for r in runs)
            errors = "; ".join(m.get("errors") or []) or "none"
            print(f"| {x} | {label} | {rate(m['confirm_rate'])} | {us(c.get('p50'))} | {us(c.get('p99'))} "
                  f"| {us(lat.get('p99'))} | {'—' if cpu is None else f'{cpu:.2f}'} | {runs_s} | {m['nacked']} | {errors} |")
    print()
    for x in producers:
        w, r = med.get(("warren", x)), med.get(("rabbitmq", x))
        if not (w and r) or not r["confirm_rate"]:
            continue
        wp = (w.get("confirm_latency_us") or {}).get("p99")
        rp = (r.get("confirm_latency_us") or {}).get("p99")
        tput = w["confirm_rate"] / r["confirm_rate"]
        p99 = f"{wp / rp:.2f}×" if wp and rp else "—"
        met = "met" if tput >= 5 and wp is not None and rp is not None and wp <= rp else "**not met**"
        print(f"- {x} producer(s): Warren / RabbitMQ quorum = {tput:.2f}× confirmed msg/s, "
              f"p99 confirm latency {p99}; target ≥ 5× at equal or better p99: {met}")
    # Each cluster's throughput: its best median over the producer counts run.
    peaks = {}
    for kind in ("warren", "rabbitmq"):
        cands = [(m["confirm_rate"], x, m) for (k, x), m in med.items() if k == kind and m]
        if cands:
            peaks[kind] = max(cands, key=lambda c: c[0])
    if len(peaks) == 2 and peaks["rabbitmq"][0]:
        (wr, wx, w), (rr, rx, r) = peaks["warren"], peaks["rabbitmq"]
        wp = (w.get("confirm_latency_us") or {}).get("p99")
        rp = (r.get("confirm_latency_us") or {}).get("p99")
        p99 = f"{wp / rp:.2f}×" if wp and rp else "—"
        met = "met" if wr / rr >= 5 and wp is not None and rp is not None and wp <= rp else "**not met**"
        print(f"- peak (each cluster's best median): Warren {rate(wr)} with {wx} producer(s), RabbitMQ "
              f"{rate(rr)} with {rx}: {wr / rr:.2f}×, p99 confirm latency {p99}; target ≥ 5× at equal or "
              f"better p99: {met}")


if __name__ == "__main__":
    main()

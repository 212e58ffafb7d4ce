#!/usr/bin/env python3
"""Pick the median of a timed workload's repeated runs for scripts/bench.sh (standard library only).

    median.py DIR ID METRIC N

Reads DIR/ID.1.json ... DIR/ID.N.json (warren-perf --json output), takes METRIC from each
(a dotted path, e.g. consume_rate or latency_us.p99), copies the median run's JSON to
DIR/ID.json (and its .err to DIR/ID.err) so scripts/bench/report.py reads it as it would a
single run, and writes DIR/ID.runs.json:

    {"metric": "consume_rate", "values": [v1, v2, ...], "chosen": k}

values[i - 1] is run i's value, null if that run's JSON is missing or invalid or lacks the
metric (such a run is skipped); chosen is the run number k (1-based, ID.k.json) that was
copied. With an even number of usable runs the lower of the two middle values is chosen
(no averaging: ID.json must be one real run, so its other figures, CPU and errors belong
together). If no run is usable, ID.json is not written (the report then says "not
measured"), chosen is null and the exit status is 1.
"""

import json
import shutil
import sys
from pathlib import Path


def metric_of(path, metric):
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    for k in metric.split("."):
        d = d.get(k) if isinstance(d, dict) else None
    # bool is an int in Python; a finite number is all that counts
    if isinstance(d, bool) or not isinstance(d, (int, float)) or d != d or d in (float("inf"), float("-inf")):
        return None
    return d


def main():
    if len(sys.argv) != 5:
        sys.exit(__doc__)
    d, name, metric, n = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    values = [metric_of(d / f"{name}.{i}.json", metric) for i in range(1, n + 1)]
    # (value, run number): ties keep the earlier run
    good = sorted((v, i) for i, v in enumerate(values, 1) if v is not None)
    chosen = good[(len(good) - 1) // 2][1] if good else None
    for stale in (d / f"{name}.json", d / f"{name}.err"):
        stale.unlink(missing_ok=True)
    if chosen is not None:
        shutil.copyfile(d / f"{name}.{chosen}.json", d / f"{name}.json")
        err = d / f"{name}.{chosen}.err"
        if err.exists():
            shutil.copyfile(err, d / f"{name}.err")
    (d / f"{name}.runs.json").write_text(json.dumps({"metric": metric, "values": values, "chosen": chosen}) + "\n")
    shown = " / ".join("failed" if v is None else f"{v:,.0f}" for v in values)
    print(f"    {name}: {metric} {shown} -> " + (f"median: run {chosen}" if chosen else "no usable run"),
          file=sys.stderr)
    return 0 if chosen is not None else 1


if __name__ == "__main__":
    sys.exit(main())

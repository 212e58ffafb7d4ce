#!/usr/bin/env python3
"""Result handling for scripts/client-suites.sh (standard library only).

    results.py go-json  <go-test.json> <out.tsv> [out.txt]  # `go test -json` -> TSV
    results.py node-junit <junit.xml> <out.tsv>      # node --test junit -> TSV
    results.py compare <known-failures.txt> <run-dir> <suite>...

A TSV file holds ``OUTCOME<TAB>test id`` lines (PASS / FAIL / SKIP). `compare`
reads <run-dir>/<suite>/results.tsv for every suite that was run, prints the
per-suite counts and every failure, and exits 1 when a failure is not listed in
the known-failures file (lines ``suite::test id | reason``; ``#`` comments).
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def write_tsv(path: str, rows: dict[str, str]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for test_id, outcome in rows.items():
            f.write(f"{outcome}\t{test_id}\n")


def go_json(src: str, dst: str, text: str | None = None) -> None:
    """Top-level tests only (a failing subtest fails its parent as well).

    With `text`, also writes the tests' plain output there (what `go test -v` prints).
    """
    rows: dict[str, str] = {}
    out = open(text, "w", encoding="utf-8") if text else None
    build_failed = False
    package_failed = False
    with open(src, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("{"):
                # `go test -json` prints build errors as plain text
                if line.startswith("#") or "[build failed]" in line or "setup failed" in line:
                    build_failed = True
                continue
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            action, test = ev.get("Action"), ev.get("Test")
            if out is not None and action == "output":
                out.write(ev.get("Output", ""))
            if action not in ("pass", "fail", "skip"):
                continue
            if not test:
                if action == "fail":
                    package_failed = True
                continue
            if "/" in test:
                continue
            rows[test] = {"pass": "PASS", "fail": "FAIL", "skip": "SKIP"}[action]
    if build_failed and not rows:
        rows["<build failed>"] = "FAIL"
    elif package_failed and not any(v == "FAIL" for v in rows.values()):
        # e.g. goleak.VerifyTestMain found leaked goroutines, or a panic/timeout
        rows["<package: TestMain/leak check/timeout>"] = "FAIL"
    if out is not None:
        out.close()
    write_tsv(dst, rows)


def node_junit(src: str, dst: str) -> None:
    rows: dict[str, str] = {}

    def walk(el: ET.Element, path: list[str]) -> None:
        for child in el:
            if child.tag == "testsuite":
                walk(child, path + [child.get("name", "?")])
            elif child.tag == "testcase":
                test_id = " > ".join(path + [child.get("name", "?")])
                if child.find("failure") is not None or child.find("error") is not None:
                    outcome = "FAIL"
                elif child.find("skipped") is not None:
                    outcome = "SKIP"
                else:
                    outcome = "PASS"
                rows[test_id] = outcome

    try:
        root = ET.parse(src).getroot()
    except (OSError, ET.ParseError) as e:
        rows[f"<no junit report: {e}>"] = "FAIL"
    else:
        walk(root, [])
    write_tsv(dst, rows)


def load_known(path: str) -> dict[str, str]:
    known: dict[str, str] = {}
    for raw in Path(path).read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition(" | ")
        known[test_id.strip()] = reason.strip()
    return known


def compare(known_path: str, run_dir: str, suites: list[str]) -> int:
    known = load_known(known_path)
    unexpected: list[str] = []
    known_failed: list[str] = []
    now_passing: list[str] = []
    print()
    print(f"{'suite':<12} {'passed':>7} {'failed':>7} {'known':>6} {'skipped':>8} {'seconds':>8}")
    for suite in suites:
        sdir = Path(run_dir) / suite
        tsv = sdir / "results.tsv"
        secs = (sdir / "seconds").read_text().strip() if (sdir / "seconds").exists() else "?"
        rows: dict[str, str] = {}
        if tsv.exists():
            for line in tsv.read_text(encoding="utf-8").splitlines():
                outcome, _, test_id = line.partition("\t")
                if test_id:
                    rows[f"{suite}::{test_id}"] = outcome
        if (sdir / "broker-died").exists():
            rows[f"{suite}::<warren exited during the suite>"] = "FAIL"
        if not rows:
            rows[f"{suite}::<no results: the suite did not run, see {sdir}/output.log>"] = "FAIL"
        counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
        nknown = 0
        for test_id, outcome in sorted(rows.items()):
            counts[outcome] = counts.get(outcome, 0) + 1
            if outcome == "FAIL":
                if test_id in known:
                    nknown += 1
                    known_failed.append(test_id)
                else:
                    unexpected.append(test_id)
            elif outcome == "PASS" and test_id in known:
                now_passing.append(test_id)
        print(f"{suite:<12} {counts['PASS']:>7} {counts['FAIL']:>7} {nknown:>6} {counts['SKIP']:>8} {secs:>8}")
    print()
    if known_failed:
        print("known failures (tests/client-suites/known-failures.txt):")
        for t in known_failed:
            print(f"  {t}\n      {known[t]}")
    if now_passing:
        print("listed as known failures but PASSED now (remove them from the list):")
        for t in now_passing:
            print(f"  {t}")
    if unexpected:
        print("UNEXPECTED FAILURES:")
        for t in unexpected:
            print(f"  {t}")
        print(f"\nclient-suites: {len(unexpected)} unexpected failure(s); logs under {run_dir}")
        return 1
    print("client-suites: no unexpected failures")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[0] == "go-json":
        go_json(argv[1], argv[2], argv[3] if len(argv) > 3 else None)
        return 0
    if len(argv) >= 3 and argv[0] == "node-junit":
        node_junit(argv[1], argv[2])
        return 0
    if len(argv) >= 3 and argv[0] == "compare":
        return compare(argv[1], argv[2], argv[3:])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

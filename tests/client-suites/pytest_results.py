"""pytest plugin used by scripts/client-suites.sh: one line per test in a TSV file.

Loaded with ``-p pytest_results`` (this directory on PYTHONPATH). The file named
by ``CLIENT_SUITE_RESULTS`` receives ``OUTCOME<TAB>nodeid`` lines, OUTCOME being
PASS, FAIL or SKIP (an error in setup or teardown counts as FAIL, an expected
failure as SKIP). Collection errors are recorded as FAIL under the collected path.
"""

from __future__ import annotations

import os

_outcomes: dict[str, str] = {}


def _set(nodeid: str, outcome: str) -> None:
    # FAIL wins over anything recorded before it (e.g. a teardown error after a pass).
    if _outcomes.get(nodeid) == "FAIL":
        return
    _outcomes[nodeid] = outcome


def pytest_runtest_logreport(report):
    if report.when == "call":
        if hasattr(report, "wasxfail"):
            _set(report.nodeid, "SKIP")
        elif report.passed:
            _set(report.nodeid, "PASS")
        elif report.skipped:
            _set(report.nodeid, "SKIP")
        else:
            _set(report.nodeid, "FAIL")
    elif report.when == "setup":
        if report.failed:
            _set(report.nodeid, "FAIL")
        elif report.skipped:
            _set(report.nodeid, "SKIP")
    elif report.when == "teardown" and report.failed:
        _set(report.nodeid, "FAIL")


def pytest_collectreport(report):
    if report.failed:
        _set(f"{report.nodeid or '<collection>'} (collection error)", "FAIL")


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CLIENT_SUITE_RESULTS")
    if not path:
        return
    with open(path, "w", encoding="utf-8") as f:
        for nodeid, outcome in _outcomes.items():
            f.write(f"{outcome}\t{nodeid}\n")

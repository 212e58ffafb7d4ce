"""Shared fixtures for the Warren pika interop suite.

A single broker process is started for the whole session (tests isolate
themselves with unique queue/exchange names), so the suite stays fast.

Environment variables:

* ``WARREN_BIN``   path to the broker binary (default: ``<repo>/target/debug/warren``).
* ``AMQP_TEST_PORT`` (and optionally ``AMQP_TEST_HOST``): do not spawn Warren,
  run against an already running AMQP 0-9-1 broker instead (e.g. a RabbitMQ
  started by hand to validate the tests themselves). Tests that need to
  restart the broker are skipped in that mode.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Callable, Iterator, Optional

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HELPERS_DIR = Path(__file__).resolve().parent / "helpers"
STARTUP_TIMEOUT = 20.0


def find_free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_accepts(host: str, port: int, timeout: float = 0.25) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def own_broker(request, prefix: str, **kwargs) -> Iterator["BrokerProcess"]:
    """A broker of the test's own (a fresh data dir, free ports; `kwargs` go to
    BrokerProcess), stopped and removed afterwards. Skips when AMQP_TEST_PORT points the
    suite at an outside broker."""
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own broker")
    d = Path(tempfile.mkdtemp(prefix=prefix))
    p = BrokerProcess(warren_binary(), d / "data", d / "warren.log", **kwargs)
    request.node._extra_brokers = [p]
    p.start()
    try:
        yield p
    finally:
        p.stop()
        shutil.rmtree(d, ignore_errors=True)


def warren_binary() -> Path:
    env = os.environ.get("WARREN_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "warren"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


def warren_tasks_binary() -> Path:
    """The Rust Celery worker/client (`warren-tasks`, crate `tasks`)."""
    env = os.environ.get("WARREN_TASKS_BIN")
    path = Path(env) if env else REPO_ROOT / "target" / "debug" / "warren-tasks"
    if not path.is_absolute():
        path = REPO_ROOT / path
    return path


class BrokerProcess:
    """A warren process bound to 127.0.0.1 on a free port, logging to a file."""

    def __init__(self, binary: Path, data_dir: Path, log_path: Path, port: Optional[int] = None,
                 host: str = "127.0.0.1", extra_args: Optional[list[str]] = None, prometheus: bool = False):
        self.binary = binary
        self.data_dir = data_dir
        self.log_path = log_path
        self.host = host
        self.port = port or find_free_port(self.host)
        # The management API on a port of its own (parallel brokers must not share 15672).
        self.mgmt_port = find_free_port(self.host)
        # Prometheus only where a test reads it (0: off).
        self.prom_port = find_free_port(self.host) if prometheus else 0
        self.extra_args = list(extra_args or [])
        self.proc: Optional[subprocess.Popen] = None
        self._log_file = None

    def start(self, timeout: float = STARTUP_TIMEOUT) -> None:
        if not self.binary.exists():
            pytest.fail(
                f"broker binary not found at {self.binary}; build it with "
                "`cargo build -p server --bin warren` or set WARREN_BIN",
                pytrace=False,
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("RUST_LOG", "info")
        env.setdefault("RUST_BACKTRACE", "1")
        env.setdefault("NO_COLOR", "1")  # plain tracing output in the log file
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"=== starting {self.binary} on port {self.port}\n".encode())
        self._log_file.flush()
        cmd = [
            str(self.binary),
            "--amqp-port", str(self.port),
            "--bind", self.host,
            "--data-dir", str(self.data_dir),
            "--management-port", str(self.mgmt_port),
            "--prometheus-port", str(self.prom_port),
            *self.extra_args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=self._log_file,
            cwd=str(REPO_ROOT),
            env=env,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self._fail_startup(f"broker exited during startup with code {self.proc.returncode}")
            if port_accepts(self.host, self.port):
                return
            time.sleep(0.05)
        self._fail_startup(f"broker did not accept connections on {self.host}:{self.port} within {timeout}s")

    def _fail_startup(self, why: str) -> None:
        self.stop()
        pytest.fail(f"{why}\ncommand: {self.binary} --amqp-port {self.port} --bind {self.host} "
                    f"--data-dir {self.data_dir}\n--- broker log ---\n{self.log_tail(200)}",
                    pytrace=False)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, graceful: bool = True, timeout: float = 10.0) -> Optional[int]:
        """Stop the broker (SIGTERM then SIGKILL, or SIGKILL right away)."""
        rc = None
        if self.proc is not None:
            if self.proc.poll() is None:
                try:
                    self.proc.send_signal(signal.SIGTERM if graceful else signal.SIGKILL)
                    self.proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(timeout=timeout)
            rc = self.proc.returncode
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return rc

    def log_tail(self, lines: int = 100) -> str:
        try:
            data = self.log_path.read_bytes().decode("utf-8", errors="replace")
        except OSError:
            return "<no broker log>"
        return "\n".join(data.splitlines()[-lines:])


@dataclasses.dataclass
class BrokerInfo:
    host: str
    port: int
    process: Optional[BrokerProcess]  # None when running against an external broker

    @property
    def external(self) -> bool:
        return self.process is None

    def params(self, username: str = "guest", password: str = "guest", **kw) -> pika.ConnectionParameters:
        kw.setdefault("connection_attempts", 1)
        kw.setdefault("socket_timeout", 5)
        kw.setdefault("stack_timeout", 15)
        return pika.ConnectionParameters(
            host=self.host,
            port=self.port,
            virtual_host="/",
            credentials=pika.PlainCredentials(username, password),
            **kw,
        )


# Log of the session broker, kept after its tmpdir is removed so that the
# terminal summary can show it when something failed.
_SESSION_BROKER: Optional[BrokerProcess] = None
_SESSION_LOG_TAIL: Optional[str] = None


@pytest.fixture(scope="session")
def broker() -> Iterator[BrokerInfo]:
    global _SESSION_BROKER, _SESSION_LOG_TAIL
    ext_port = os.environ.get("AMQP_TEST_PORT")
    if ext_port:
        yield BrokerInfo(os.environ.get("AMQP_TEST_HOST", "127.0.0.1"), int(ext_port), None)
        return
    tmpdir = Path(tempfile.mkdtemp(prefix="warren-pytest-"))
    proc = BrokerProcess(warren_binary(), tmpdir / "data", tmpdir / "warren.log")
    _SESSION_BROKER = proc
    try:
        proc.start()
        yield BrokerInfo(proc.host, proc.port, proc)
    finally:
        proc.stop()
        _SESSION_LOG_TAIL = proc.log_tail(200)
        _SESSION_BROKER = None
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture
def fresh_broker_factory(request) -> Iterator[Callable[[], BrokerProcess]]:
    """Start extra, private broker processes (for restart tests).

    The factory returns a *started* BrokerProcess using a data dir that is
    shared by every process created by the same test, so a test can stop one
    broker and start another on the same data.
    """
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own broker (AMQP_TEST_PORT is set)")
    tmpdir = Path(tempfile.mkdtemp(prefix="warren-pytest-restart-"))
    procs: list[BrokerProcess] = []
    request.node._extra_brokers = procs  # their logs go into failure reports

    def make() -> BrokerProcess:
        p = BrokerProcess(warren_binary(), tmpdir / "data", tmpdir / "warren.log")
        procs.append(p)
        p.start()
        return p

    try:
        yield make
    finally:
        for p in procs:
            p.stop(graceful=False)
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(autouse=True)
def _broker_still_alive(request):
    """Turn a broker crash into a clear error on the test that caused it."""
    yield
    proc = _SESSION_BROKER
    if proc is not None and proc.proc is not None and not proc.alive():
        pytest.fail(
            f"the broker process died (exit code {proc.proc.returncode}) during {request.node.nodeid}\n"
            f"--- broker log ---\n{proc.log_tail(200)}",
            pytrace=False,
        )


@pytest.fixture
def params(broker: BrokerInfo) -> pika.ConnectionParameters:
    return broker.params()


@pytest.fixture
def connect(broker: BrokerInfo) -> Iterator[Callable[..., pika.BlockingConnection]]:
    """Factory for BlockingConnections that are closed after the test."""
    conns: list[pika.BlockingConnection] = []

    def _connect(**kw) -> pika.BlockingConnection:
        c = pika.BlockingConnection(broker.params(**kw))
        conns.append(c)
        return c

    yield _connect
    for c in conns:
        try:
            if c.is_open:
                c.close()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.fixture
def connection(connect) -> pika.BlockingConnection:
    return connect()


@pytest.fixture
def channel(connection: pika.BlockingConnection):
    return connection.channel()


@pytest.fixture
def names(request, broker: BrokerInfo) -> Iterator["Names"]:
    n = Names(request.node.name)
    yield n
    # Against a throw-away Warren data dir there is nothing to clean up; against
    # an external broker, delete what the test declared.
    if broker.external and (n.queues or n.exchanges):
        try:
            conn = pika.BlockingConnection(broker.params())
        except Exception:  # noqa: BLE001
            return
        try:
            for kind, items in (("queue", n.queues), ("exchange", n.exchanges)):
                for item in items:
                    try:
                        ch = conn.channel()
                        if kind == "queue":
                            ch.queue_delete(item)
                        else:
                            ch.exchange_delete(item)
                        ch.close()
                    except Exception:  # noqa: BLE001
                        pass
        finally:
            try:
                conn.close()
            except Exception:  # noqa: BLE001
                pass


class Names:
    """Unique, recognisable queue and exchange names for one test."""

    def __init__(self, test_name: str):
        base = "".join(c if c.isalnum() or c in "-_" else "-" for c in test_name)[:40]
        self._base = f"pytest.{base}.{uuid.uuid4().hex[:8]}"
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, suffix: str = "q") -> str:
        name = f"{self._base}.{suffix}"
        self.queues.append(name)
        return name

    def exchange(self, suffix: str = "x") -> str:
        name = f"{self._base}.{suffix}"
        self.exchanges.append(name)
        return name


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    proc = _SESSION_BROKER
    if rep.failed and proc is not None:
        rep.sections.append(("broker stderr (last 40 lines)", proc.log_tail(40)))
    if rep.failed:
        extra = getattr(item, "_extra_brokers", [])
        if extra:  # processes of one test share a log file
            rep.sections.append(("this test's own broker log (last 60 lines)", extra[-1].log_tail(60)))
        describe_programs = getattr(item, "_describe_programs", None)  # test_13_tutorials.py
        if describe_programs is not None:
            rep.sections.append(("output of the example programs", describe_programs()))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if exitstatus != 0 and _SESSION_LOG_TAIL:
        terminalreporter.section("warren broker log (last 200 lines)")
        terminalreporter.write_line(_SESSION_LOG_TAIL)

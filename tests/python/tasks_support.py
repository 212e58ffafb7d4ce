"""What the task-layer tests (test_18_tasks.py, test_20_canvas.py) share: a broker per test,
the Rust worker and client (`warren-tasks`), a Python `celery worker`, and the processes a
test started (stopped at its end, their logs printed when it failed).

Fixtures are used by name: a test module imports the ones it uses from here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest
from celery import Celery

from conftest import own_broker, BrokerProcess, warren_tasks_binary

READY_TIMEOUT = 20.0
RESULT_TIMEOUT = 20.0


@pytest.fixture(autouse=True)
def _tasks_binary():
    if not warren_tasks_binary().exists():
        pytest.fail(f"warren-tasks not found at {warren_tasks_binary()}; build it with "
                    "`cargo build -p tasks --bin warren-tasks` or set WARREN_TASKS_BIN", pytrace=False)


@pytest.fixture
def node(request):
    with own_broker(request, "warren-pytest-tasks-") as p:
        yield p


def broker_url(node: BrokerProcess) -> str:
    return f"amqp://guest:guest@127.0.0.1:{node.port}/%2f"


class Process:
    """A subprocess whose output (stdout and stderr) is collected by a thread."""

    def __init__(self, cmd: list[str], ready_text: str, cwd: Path | None = None, env: dict | None = None):
        self.cmd = cmd
        self.ready_text = ready_text
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.lines.append(line.rstrip("\n"))
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def wait_for(self, text: str, timeout: float = READY_TIMEOUT, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while sum(text in line for line in self.lines) < count:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no {text!r} from {self.cmd[:3]} (rc={self.proc.poll()}):\n{self.log()}")
                self._cond.wait(timeout=min(0.1, remaining))

    def wait_ready(self) -> None:
        self.wait_for(self.ready_text)

    def log(self, last: int = 80) -> str:
        with self._cond:
            return "\n".join(self.lines[-last:])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        return self.proc.returncode


def rust_worker(node: BrokerProcess, queue: str, concurrency: int = 4, *extra: str) -> Process:
    env = dict(os.environ, RUST_LOG="info", NO_COLOR="1")
    cmd = [str(warren_tasks_binary()), "worker", "--broker", broker_url(node), "-Q", queue, "-c", str(concurrency),
           "--demo", *extra]
    w = Process(cmd, "worker ready", env=env)
    w.wait_ready()
    return w


@pytest.fixture
def workers():
    """Processes started by a test; stopped at its end. Their logs are printed, which pytest
    shows only when the test failed."""
    started: list[Process] = []
    yield started
    for w in started:
        w.stop()
        print(f"--- {' '.join(w.cmd[:2])} log ---\n{w.log()}")


@pytest.fixture
def queue() -> str:
    return f"pytest.tasks.{uuid.uuid4().hex[:8]}"


@pytest.fixture
def celery_client(node, queue):
    app = Celery("pytest_tasks", broker=broker_url(node), backend="rpc://")
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=False,
                    broker_connection_max_retries=3)
    yield app
    app.close()


def python_worker(node: BrokerProcess | None, queue: str, tmp_path: Path, module: str, source: str,
                  workers: list[Process], broker: str | None = None, env_extra: dict | None = None) -> Process:
    """A `celery worker -P threads -c 2` for the tasks in `source` (a module named `module`,
    reading `TASKS_BROKER` and `TASKS_QUEUE` from its environment), consuming `queue`.
    `broker` replaces `node`'s URL (e.g. kombu's `;`-separated failover list); `env_extra`
    adds to the worker's environment."""
    (tmp_path / f"{module}.py").write_text(textwrap.dedent(source))
    if broker is None:
        assert node is not None
        broker = f"amqp://guest:guest@127.0.0.1:{node.port}//"
    env = dict(os.environ, TASKS_BROKER=broker, TASKS_QUEUE=queue, PYTHONUNBUFFERED="1", **(env_extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    cmd = [sys.executable, "-m", "celery", "-A", module, "worker", "-P", "threads", "-c", "2",
           "--without-gossip", "--without-mingle", "--without-heartbeat", "-Q", queue, "--loglevel=INFO"]
    py = Process(cmd, "ready.", cwd=tmp_path, env=env)
    workers.append(py)
    py.wait_ready()
    return py

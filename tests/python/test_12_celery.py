"""Celery end to end: a real ``celery worker`` subprocess (threads pool,
concurrency 2) and a client in the test process, both on Warren, with the
``rpc://`` result backend (results come back as AMQP messages to the
client's reply queue).

The worker is started once for this module and always terminated at the end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
from celery import chain, group

HERE = Path(__file__).resolve().parent
WORKER_READY_TIMEOUT = 15.0
RESULT_TIMEOUT = 10.0
# Every wait of this module together stays under this (the file must finish in < 60 s,
# worker shutdown included).
MODULE_BUDGET = 45.0
_deadline = time.monotonic() + MODULE_BUDGET


def result_timeout() -> float:
    """RESULT_TIMEOUT, cut to what is left of the module's budget."""
    return max(0.5, min(RESULT_TIMEOUT, _deadline - time.monotonic()))


class CeleryWorker:
    """``celery -A celery_app.tasks worker`` with its output collected by a thread."""

    def __init__(self, broker_url: str, queue: str):
        self.name = f"warren-{uuid.uuid4().hex[:8]}@localhost"
        env = dict(os.environ)
        env["WARREN_CELERY_BROKER"] = broker_url
        env["WARREN_CELERY_QUEUE"] = queue
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
        env["PYTHONUNBUFFERED"] = "1"
        cmd = [
            sys.executable, "-m", "celery", "-A", "celery_app.tasks", "worker",
            "--pool=threads", "--concurrency=2", "--loglevel=INFO",
            "--without-mingle", "--without-gossip",
            "-n", self.name, "-Q", queue,
        ]
        self.lines: list[str] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(cmd, cwd=str(HERE), env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     bufsize=1, start_new_session=True)
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

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not any(l.rstrip().endswith("ready.") for l in self.lines):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"celery worker not ready (rc={self.proc.poll()}):\n{self.log()}")
                self._cond.wait(timeout=min(0.1, remaining))

    def log(self, last: int = 80) -> str:
        with self._cond:
            return "\n".join(self.lines[-last:])

    def stop(self) -> None:
        """SIGTERM (warm shutdown), then SIGKILL the whole process group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self._reader.join(timeout=5)


@pytest.fixture(scope="module")
def celery_env(broker):
    global _deadline
    from celery_app import tasks

    _deadline = time.monotonic() + MODULE_BUDGET

    url = f"amqp://guest:guest@{broker.host}:{broker.port}//"
    queue = f"pytest.celery.{uuid.uuid4().hex[:8]}"
    tasks.app.conf.broker_url = url
    tasks.app.conf.task_default_queue = queue
    worker = CeleryWorker(url, queue)
    try:
        worker.wait_ready(WORKER_READY_TIMEOUT)
        yield tasks, worker
    finally:
        worker.stop()
        tasks.app.close()


def _worker_log_on_failure(celery_env, fn):
    _, worker = celery_env
    try:
        return fn()
    except BaseException:
        print(f"--- celery worker log ---\n{worker.log()}")
        raise


@pytest.mark.timeout(40)
def test_task_with_a_result(celery_env):
    tasks, _ = celery_env

    def run():
        r = tasks.add.delay(2, 3)
        assert r.get(timeout=result_timeout()) == 5
        assert r.successful()
        # and a second one on the same client connection
        assert tasks.mul.apply_async((6, 7)).get(timeout=result_timeout()) == 42

    _worker_log_on_failure(celery_env, run)


@pytest.mark.timeout(30)
def test_group(celery_env):
    tasks, _ = celery_env

    def run():
        res = group(tasks.add.s(i, i) for i in range(8))()
        assert res.get(timeout=result_timeout()) == [2 * i for i in range(8)]

    _worker_log_on_failure(celery_env, run)


@pytest.mark.timeout(30)
def test_chain(celery_env):
    tasks, _ = celery_env

    def run():
        res = chain(tasks.add.s(1, 2), tasks.add.s(3), tasks.mul.s(4))()
        assert res.get(timeout=result_timeout()) == 24
        assert res.parent.get(timeout=result_timeout()) == 6

    _worker_log_on_failure(celery_env, run)


@pytest.mark.timeout(30)
def test_countdown(celery_env):
    tasks, _ = celery_env

    def run():
        start = time.monotonic()
        r = tasks.add.apply_async((10, 5), countdown=1)
        assert r.get(timeout=result_timeout()) == 15
        elapsed = time.monotonic() - start
        assert elapsed >= 0.99, f"ran after {elapsed:.3f}s, before its countdown"

    _worker_log_on_failure(celery_env, run)


@pytest.mark.timeout(30)
def test_retrying_task(celery_env):
    tasks, _ = celery_env

    def run():
        r = tasks.flaky.delay("job")
        assert r.get(timeout=result_timeout()) == {"label": "job", "retries": 2}
        assert r.state == "SUCCESS"

    _worker_log_on_failure(celery_env, run)


@pytest.mark.timeout(30)
def test_remote_control_ping(celery_env):
    """Broadcast through the celery.pidbox fanout exchange, reply through reply.celery.pidbox."""
    tasks, worker = celery_env

    def run():
        replies = tasks.app.control.ping(destination=[worker.name], timeout=min(5.0, result_timeout()), limit=1)
        assert replies == [{worker.name: {"ok": "pong"}}]

    _worker_log_on_failure(celery_env, run)

"""Small helpers shared by the interop tests (not fixtures)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pika

HELPERS_DIR = Path(__file__).resolve().parent / "helpers"


def pump(connection: pika.BlockingConnection, until: Callable[[], bool], timeout: float) -> bool:
    """Run the connection's I/O loop until ``until()`` is true or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while not until():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return until()
        connection.process_data_events(time_limit=min(0.05, remaining))
    return True


def collect(
    connection: pika.BlockingConnection,
    channel,
    expected: Dict[str, int],
    timeout: float = 5.0,
    quiet: float = 0.3,
) -> Dict[str, List[Tuple[str, bytes]]]:
    """Consume (auto-ack) from every queue in ``expected`` until each has at
    least the expected number of messages, then keep listening for ``quiet``
    seconds so that wrongly routed extra messages are noticed too.

    Returns {queue: [(routing_key, body), ...]} in delivery order.
    """
    got: Dict[str, List[Tuple[str, bytes]]] = {q: [] for q in expected}
    tags = []
    for q in expected:
        def on_message(ch, method, props, body, q=q):
            got[q].append((method.routing_key, body))

        tags.append(channel.basic_consume(q, on_message, auto_ack=True))
    pump(connection, lambda: all(len(got[q]) >= n for q, n in expected.items()), timeout)
    end = time.monotonic() + quiet
    while time.monotonic() < end:
        connection.process_data_events(time_limit=0.05)
    for tag in tags:
        channel.basic_cancel(tag)
    return got


class WorkerProcess:
    """A helpers/worker.py subprocess whose stdout events are collected by a thread.

    Events are tuples: ("READY",), ("RECEIVED", body, redelivered), ("DONE", body).
    """

    def __init__(self, host: str, port: int, queue: str, name: str,
                 prefetch: int = 0, sleep: float = 0.0, dot_seconds: float = 0.0, quorum: bool = False):
        self.name = name
        cmd = [
            sys.executable, "-u", str(HELPERS_DIR / "worker.py"),
            "--host", host, "--port", str(port), "--queue", queue, "--name", name,
            "--prefetch", str(prefetch), "--sleep", str(sleep), "--dot-seconds", str(dot_seconds),
            *(["--quorum"] if quorum else []),
        ]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1)
        self.events: List[tuple] = []
        self._eof = False
        self.stderr_lines: List[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            parts = line.rstrip("\n").split(" ")
            if not parts or not parts[0]:
                continue
            kind = parts[0]
            if kind == "RECEIVED":
                ev = ("RECEIVED", parts[1], parts[2] == "redelivered=True")
            elif kind == "DONE":
                ev = ("DONE", parts[1])
            else:
                ev = tuple(parts)
            with self._cond:
                self.events.append(ev)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.stderr_lines.append(line.rstrip("\n"))

    def wait_for(self, predicate: Callable[["WorkerProcess"], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds; gives up early once stdout hit EOF."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return False
                self._cond.wait(timeout=min(0.1, remaining))
            return True

    def wait_ready(self, timeout: float = 15.0) -> None:
        if not self.wait_for(lambda w: ("READY",) in w.events, timeout):
            raise AssertionError(f"worker {self.name} did not become ready: {self.describe()}")

    def received(self) -> List[Tuple[str, bool]]:
        with self._cond:
            return [(e[1], e[2]) for e in self.events if e[0] == "RECEIVED"]

    def done(self) -> List[str]:
        with self._cond:
            return [e[1] for e in self.events if e[0] == "DONE"]

    def describe(self) -> str:
        return (f"rc={self.proc.poll()} events={self.events} "
                f"stderr={self.stderr_lines[-20:]}")

    def kill(self, sig: Optional[int] = None) -> None:
        if self.proc.poll() is None:
            if sig is None:
                self.proc.terminate()
            else:
                self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def message_count(channel, queue: str) -> int:
    return channel.queue_declare(queue=queue, passive=True).method.message_count


def wait_message_count(connection, channel, queue: str, expected: int, timeout: float = 5.0) -> int:
    """Poll the queue's ready-message count until it equals ``expected``.

    Publishing has no reply (without confirms), so a broker may enqueue
    asynchronously (RabbitMQ does); poll instead of asserting right away.
    Returns the last observed count.
    """
    last = [None]

    def check():
        last[0] = message_count(channel, queue)
        return last[0] == expected

    pump(connection, check, timeout)
    return last[0]


def get_next(connection, channel, queue: str, auto_ack: bool = False, timeout: float = 5.0):
    """basic_get, retried until a message is there (see wait_message_count)."""
    result = [(None, None, None)]

    def check():
        result[0] = channel.basic_get(queue=queue, auto_ack=auto_ack)
        return result[0][0] is not None

    pump(connection, check, timeout)
    return result[0]

"""The getting-started tutorials (examples/tutorials/, docs/tutorial.md) run as
real programs, the way a reader runs them in their terminals.

Every test gets a broker of its own on a free port with a fresh data dir (the
tutorials use fixed names such as "task_queue" and "logs", so tests must not
share a broker). The programs find it through AMQP_HOST / AMQP_PORT and run as
subprocesses of this venv's python; their stdout is what the tutorial tells the
reader to expect, and that is what is asserted here. Long-running programs
(workers, receivers, servers) are started in their own process group and always
killed at the end of the test. Work is shortened with SECONDS_PER_DOT.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, List, Optional, Tuple

import pika
import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
TUTORIALS = REPO_ROOT / "examples" / "tutorials"
DOCS = [REPO_ROOT / "docs" / "tutorial.md", REPO_ROOT / "docs" / "tutorial.zh-CN.md"]

# Every program in examples/tutorials/ and the test(s) that run it. A new example
# must be added here (test_every_example_is_documented_and_tested checks it).
EXAMPLES = {
    "send.py": "test_hello_world",
    "receive.py": "test_hello_world",
    "new_task.py": "test_work_queue_round_robin, test_fair_dispatch, test_durable_queue_survives_restart",
    "worker.py": "test_work_queue_round_robin, test_kill_9_worker_task_is_redelivered, "
                 "test_plain_worker_handles_one_task_at_a_time",
    "fair_worker.py": "test_fair_dispatch",
    "queue_stats.py": "test_kill_9_worker_task_is_redelivered, test_durable_queue_survives_restart",
    "emit_log.py": "test_publish_subscribe_fanout",
    "receive_logs.py": "test_publish_subscribe_fanout",
    "emit_log_direct.py": "test_routing_direct",
    "receive_logs_direct.py": "test_routing_direct",
    "emit_log_topic.py": "test_topics",
    "receive_logs_topic.py": "test_topics",
    "rpc_server.py": "test_rpc",
    "rpc_client.py": "test_rpc",
    "threaded_worker.py": "test_concurrent_workers",
    "process_pool_worker.py": "test_concurrent_workers",
    "gevent_worker.py": "test_concurrent_workers",
    "tasks.py": "test_celery",
    "call_tasks.py": "test_celery",
}

READY_TIMEOUT = 15.0


class Program:
    """A long-running example program; stdout+stderr lines are collected with
    the time they arrived."""

    def __init__(self, argv: List[str], env: dict, cwd: Path = TUTORIALS):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, cwd=str(cwd), env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
        self.timed: List[Tuple[float, str]] = []
        self._eof = False
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._cond:
                self.timed.append((time.monotonic(), line.rstrip("\n")))
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def lines(self) -> List[str]:
        with self._cond:
            return [line for _, line in self.timed]

    def matching(self, pattern: str) -> List[str]:
        """The first group of every line matching ``pattern`` (or the whole match)."""
        rx = re.compile(pattern)
        out = []
        for line in self.lines():
            m = rx.search(line)
            if m:
                out.append(m.group(1) if m.groups() else m.group(0))
        return out

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._eof:
                    return predicate()
                self._cond.wait(timeout=min(0.1, remaining))
            return True

    def wait_count(self, pattern: str, n: int, timeout: float = 10.0) -> List[str]:
        ok = self.wait_for(lambda: len(self.matching(pattern)) >= n, timeout)
        assert ok, f"expected {n} lines matching {pattern!r} within {timeout}s\n{self.describe()}"
        return self.matching(pattern)

    def wait_line(self, text: str, timeout: float = READY_TIMEOUT) -> None:
        self.wait_count(re.escape(text), 1, timeout)

    def describe(self) -> str:
        return (f"--- {' '.join(Path(a).name for a in self.argv[1:])} (rc={self.proc.poll()}) ---\n"
                + "\n".join(self.lines()[-40:]))

    def interrupt(self, timeout: float = 5.0) -> Optional[int]:
        """Ctrl+C: SIGINT to the program (not to its children), then wait for it."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.proc.poll()

    def kill9(self) -> None:
        """kill -9 of the program itself."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def kill_group(self) -> None:
        """SIGKILL to the program and anything it started (pool processes)."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        self._reader.join(timeout=5)


class Tutorial:
    """A private broker for one test plus the example programs run against it."""

    def __init__(self, make_broker):
        self._make_broker = make_broker
        self.broker = make_broker()
        self.programs: List[Program] = []

    def env(self, **extra: str) -> dict:
        env = dict(os.environ)
        env.update(AMQP_HOST=self.broker.host, AMQP_PORT=str(self.broker.port), PYTHONUNBUFFERED="1")
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def start(self, script: str, *args: str, ready: Optional[str] = " [*] Waiting for", **env) -> Program:
        """Start a long-running program and wait for its 'ready' line."""
        p = Program([sys.executable, str(TUTORIALS / script), *args], self.env(**env))
        self.programs.append(p)
        if ready:
            p.wait_line(ready)
        return p

    def start_argv(self, argv: List[str], **env) -> Program:
        p = Program(argv, self.env(**env))
        self.programs.append(p)
        return p

    def run(self, script: str, *args: str, timeout: float = 30.0, expect_rc: int = 0, **env) -> str:
        """Run a program to completion; returns its output."""
        r = subprocess.run([sys.executable, str(TUTORIALS / script), *args], cwd=str(TUTORIALS),
                           env=self.env(**env), stdin=subprocess.DEVNULL, capture_output=True,
                           text=True, timeout=timeout)
        assert r.returncode == expect_rc, (f"{script} {' '.join(args)} exited {r.returncode}\n"
                                           f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}")
        return r.stdout + r.stderr

    def run_parallel(self, script: str, arg_lists: List[List[str]], timeout: float = 30.0) -> List[str]:
        """Run several instances of a program at once (order of their work not defined)."""
        procs = [subprocess.Popen([sys.executable, str(TUTORIALS / script), *args], cwd=str(TUTORIALS),
                                  env=self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True) for args in arg_lists]
        outs = []
        try:
            for p in procs:
                out, _ = p.communicate(timeout=timeout)
                assert p.returncode == 0, f"{script} exited {p.returncode}:\n{out}"
                outs.append(out)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        return outs

    def restart(self, graceful: bool) -> None:
        """Stop the broker (Ctrl+C or kill -9) and start a new one on the same data dir."""
        rc = self.broker.stop(graceful=graceful)
        if graceful:
            assert rc == 0, f"broker exit code {rc}\n{self.broker.log_tail(40)}"
        self.broker = self._make_broker()

    def channel(self):
        conn = pika.BlockingConnection(pika.ConnectionParameters(
            host=self.broker.host, port=self.broker.port, connection_attempts=1, socket_timeout=5))
        return conn, conn.channel()

    def queue_counts(self, queue: str) -> Tuple[int, int]:
        """(ready messages, consumers) of a queue, by a passive declare."""
        conn, ch = self.channel()
        try:
            ok = ch.queue_declare(queue=queue, passive=True).method
            return ok.message_count, ok.consumer_count
        finally:
            conn.close()

    def wait_queue_counts(self, queue: str, expected: Tuple[int, int], timeout: float = 5.0) -> Tuple[int, int]:
        deadline = time.monotonic() + timeout
        while True:
            got = self.queue_counts(queue)
            if got == expected or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def stop_all(self) -> None:
        for p in self.programs:
            p.kill_group()


@pytest.fixture
def tut(fresh_broker_factory, request):
    t = Tutorial(fresh_broker_factory)
    # conftest.py adds this to the report of a failed test
    request.node._describe_programs = lambda: "\n".join(p.describe() for p in t.programs)
    try:
        yield t
    finally:
        t.stop_all()


def quiet(seconds: float = 0.4) -> None:
    """Give wrongly routed extra messages a chance to show up before asserting."""
    time.sleep(seconds)


RECEIVED = r"\[x\] Received b'([^']*)'"


# --------------------------------------------------------------------------- 1. hello world

@pytest.mark.timeout(40)
def test_hello_world(tut):
    # send first: the message waits in the queue until someone consumes it
    assert tut.run("send.py").strip() == "[x] Sent 'Hello World!'"
    receiver = tut.start("receive.py")
    receiver.wait_count(RECEIVED, 1)
    assert tut.run("send.py").strip() == "[x] Sent 'Hello World!'"
    got = receiver.wait_count(RECEIVED, 2)
    quiet(0.3)
    assert receiver.matching(RECEIVED) == ["Hello World!", "Hello World!"], receiver.describe()
    assert receiver.lines()[0] == " [*] Waiting for messages. To exit press CTRL+C"
    assert got == ["Hello World!", "Hello World!"]
    # auto_ack: nothing left in the queue, and Ctrl+C ends the receiver cleanly
    assert tut.queue_counts("hello") == (0, 1)
    assert receiver.interrupt() == 0, receiver.describe()


# --------------------------------------------------------------------------- 2. work queues

@pytest.mark.timeout(60)
def test_work_queue_round_robin(tut):
    """Without prefetch, tasks alternate between the workers whatever their speed."""
    slow = tut.start("worker.py", SECONDS_PER_DOT=0.15)
    fast = tut.start("worker.py", SECONDS_PER_DOT=0)
    tasks = [f"task {i}" + "." * i for i in range(1, 7)]
    for t in tasks:  # one after the other, as typed in a terminal
        assert tut.run("new_task.py", *t.split()).strip() == f"[x] Sent {t!r}"

    slow.wait_count(r"\[x\] Done", 3, timeout=15)
    fast.wait_count(r"\[x\] Done", 3, timeout=15)
    quiet(0.3)
    got_slow, got_fast = slow.matching(RECEIVED), fast.matching(RECEIVED)
    assert {tuple(got_slow), tuple(got_fast)} == {tuple(tasks[0::2]), tuple(tasks[1::2])}, (
        f"{slow.describe()}\n{fast.describe()}")
    assert tut.wait_queue_counts("task_queue", (0, 2)) == (0, 2)


@pytest.mark.timeout(60)
def test_fair_dispatch(tut):
    """prefetch_count=1: a busy worker gets no new task until it has acked."""
    slow = tut.start("fair_worker.py", SECONDS_PER_DOT=1.5)
    fast = tut.start("fair_worker.py", SECONDS_PER_DOT=0)
    tasks = [f"task-{i}." for i in range(10)]
    tut.run_parallel("new_task.py", [[t] for t in tasks])

    assert slow.wait_for(lambda: len(slow.matching(r"\[x\] Done")) + len(fast.matching(r"\[x\] Done")) == 10,
                         20), f"{slow.describe()}\n{fast.describe()}"
    got_slow, got_fast = slow.matching(RECEIVED), fast.matching(RECEIVED)
    assert sorted(got_slow + got_fast) == sorted(tasks), "every task exactly once"
    assert 1 <= len(got_slow) <= 2, f"the slow worker got {got_slow}"
    assert len(got_fast) >= 8, f"the fast worker got {got_fast}"
    assert tut.wait_queue_counts("task_queue", (0, 2)) == (0, 2)


@pytest.mark.timeout(60)
def test_kill_9_worker_task_is_redelivered(tut):
    """A worker killed with kill -9 half-way never acked: its task goes to another worker."""
    a = tut.start("worker.py", SECONDS_PER_DOT=1)
    tut.run("new_task.py", "A long task" + "." * 30)
    assert a.wait_count(RECEIVED, 1) == ["A long task" + "." * 30]
    b = tut.start("worker.py", SECONDS_PER_DOT=0)
    quiet(0.3)
    assert b.matching(RECEIVED) == [], "an unacked task must not go to another worker"
    # the task is unacked (held for A), not ready
    assert tut.run("queue_stats.py", "task_queue") == "task_queue: 0 ready, 2 consumers\n"

    a.kill9()
    b.wait_count(r"\[x\] Done", 1, timeout=10)
    assert " [x] Received b'A long task" + "." * 30 + "' (redelivered)" in b.lines(), b.describe()
    assert a.matching(r"\[x\] Done") == []
    assert tut.wait_queue_counts("task_queue", (0, 1)) == (0, 1)


@pytest.mark.timeout(60)
@pytest.mark.parametrize("graceful", [True, False], ids=["ctrl-c", "kill-9"])
def test_durable_queue_survives_restart(tut, graceful):
    """Durable queue + persistent messages (+ confirms in new_task.py): still there
    after the broker restarts; the non-durable queue "hello" is not."""
    tasks = ["durable 1.", "durable 2..", "durable 3..."]
    for t in tasks:
        tut.run("new_task.py", t)
    tut.run("send.py")
    assert tut.run("queue_stats.py", "task_queue", "hello").splitlines() == [
        "task_queue: 3 ready, 0 consumers",
        "hello: 1 ready, 0 consumers",
    ]

    tut.restart(graceful=graceful)

    assert tut.run("queue_stats.py", "task_queue", "hello").splitlines() == [
        "task_queue: 3 ready, 0 consumers",
        "hello: NOT_FOUND - no queue 'hello' in vhost '/'",
    ]
    w = tut.start("worker.py", SECONDS_PER_DOT=0)
    w.wait_count(r"\[x\] Done", 3)
    assert w.matching(RECEIVED) == tasks


# --------------------------------------------------------------------------- 3-5. exchanges

@pytest.mark.timeout(60)
def test_publish_subscribe_fanout(tut):
    """Every subscriber has its own server-named queue and gets every message."""
    r1 = tut.start("receive_logs.py")
    r2 = tut.start("receive_logs.py")
    assert tut.run("emit_log.py").strip() == "[x] Sent 'info: Hello World!'"
    assert tut.run("emit_log.py", "warning:", "disk", "almost", "full").strip() == \
        "[x] Sent 'warning: disk almost full'"
    expected = [" [x] b'info: Hello World!'", " [x] b'warning: disk almost full'"]
    for r in (r1, r2):
        r.wait_count(r"\[x\] b'", 2)
    # a subscriber that comes later only sees what is sent after it subscribed
    r3 = tut.start("receive_logs.py")
    tut.run("emit_log.py", "error: late")
    for r in (r1, r2, r3):
        r.wait_line("[x] b'error: late'", timeout=10)
    quiet()
    assert r1.lines()[1:] == r2.lines()[1:] == expected + [" [x] b'error: late'"], f"{r1.describe()}\n{r2.describe()}"
    assert r3.lines()[1:] == [" [x] b'error: late'"], r3.describe()
    # queue_declare(queue="") gets a broker-made name, as the tutorial says (amq.gen-...)
    conn, ch = tut.channel()
    names = {ch.queue_declare(queue="", exclusive=True).method.queue for _ in range(2)}
    assert all(n.startswith("amq.gen-") for n in names), names
    conn.close()


@pytest.mark.timeout(60)
def test_routing_direct(tut):
    errors = tut.start("receive_logs_direct.py", "warning", "error")
    everything = tut.start("receive_logs_direct.py", "info", "warning", "error")
    sent = [("error", "Run. Run. Or it will explode."), ("info", "all is fine"),
            ("warning", "disk 90% full"), ("debug", "nobody listens to debug")]
    for severity, message in sent:
        assert tut.run("emit_log_direct.py", severity, message).strip() == \
            f"[x] Sent {severity!r}:{message!r}"
    errors.wait_count(r"\[x\] '", 2)
    everything.wait_count(r"\[x\] '", 3)
    quiet()
    assert errors.lines()[1:] == [
        " [x] 'error':b'Run. Run. Or it will explode.'",
        " [x] 'warning':b'disk 90% full'",
    ], errors.describe()
    assert everything.lines()[1:] == [
        " [x] 'error':b'Run. Run. Or it will explode.'",
        " [x] 'info':b'all is fine'",
        " [x] 'warning':b'disk 90% full'",
    ], everything.describe()
    # no severities: a usage message and exit code 1
    out = tut.run("receive_logs_direct.py", expect_rc=1)
    assert "Usage:" in out and "[info] [warning] [error]" in out


@pytest.mark.timeout(60)
def test_topics(tut):
    receivers = {
        "#": tut.start("receive_logs_topic.py", "#"),
        "kern.*": tut.start("receive_logs_topic.py", "kern.*"),
        "*.critical": tut.start("receive_logs_topic.py", "*.critical"),
        "kern.* *.critical": tut.start("receive_logs_topic.py", "kern.*", "*.critical"),
    }
    keys = ["kern.critical", "kern.info", "app.critical", "kern.disk.critical", None]
    for key in keys:
        out = tut.run("emit_log_topic.py", *([key, f"msg for {key}"] if key else []))
        assert out.startswith(" [x] Sent ")
    expected = {
        "#": ["kern.critical", "kern.info", "app.critical", "kern.disk.critical", "anonymous.info"],
        "kern.*": ["kern.critical", "kern.info"],
        "*.critical": ["kern.critical", "app.critical"],
        # two matching bindings, still one copy of kern.critical
        "kern.* *.critical": ["kern.critical", "kern.info", "app.critical"],
    }
    for pattern, r in receivers.items():
        r.wait_count(r"\[x\] '", len(expected[pattern]))
    quiet()
    for pattern, r in receivers.items():
        assert r.matching(r"\[x\] '([^']*)'") == expected[pattern], r.describe()
    assert " [x] 'anonymous.info':b'Hello World!'" in receivers["#"].lines()
    assert " [x] 'kern.critical':b'msg for kern.critical'" in receivers["*.critical"].lines()


# --------------------------------------------------------------------------- 6. RPC

@pytest.mark.timeout(60)
def test_rpc(tut):
    server = tut.start("rpc_server.py", ready=" [x] Awaiting RPC requests")
    out = tut.run("rpc_client.py")
    assert out.splitlines() == [" [x] Requesting fib(30)", " [.] Got 832040"]
    # two clients at once: each gets its own answers (reply_to + correlation_id)
    outs = tut.run_parallel("rpc_client.py", [["0", "1", "10"], ["20", "2", "35"]])
    got = [re.findall(r"Got (\d+)", o) for o in outs]
    assert got == [["0", "1", "55"], ["6765", "1", "9227465"]], outs
    server.wait_count(r"\[\.\] fib\(", 7)
    assert sorted(server.matching(r"\[\.\] fib\((\d+)\)"), key=int) == ["0", "1", "2", "10", "20", "30", "35"]
    assert tut.wait_queue_counts("rpc_queue", (0, 1)) == (0, 1)


# --------------------------------------------------------------------------- 7. concurrency

@pytest.mark.timeout(60)
def test_plain_worker_handles_one_task_at_a_time(tut):
    """The premise of the concurrency chapter: start_consuming() runs one callback at a
    time, so worker.py works through queued tasks strictly one after the other."""
    tasks = [f"task-{i}." for i in range(3)]
    tut.run_parallel("new_task.py", [[t] for t in tasks])
    w = tut.start("worker.py", SECONDS_PER_DOT=0.3)
    w.wait_count(r"\[x\] Done", 3)
    steps = [l.split("]")[1].split()[0] for l in w.lines()[1:]]
    assert steps == ["Received", "Done"] * 3, w.describe()
    timed = [t for t, l in w.timed if "[x]" in l]
    assert timed[-1] - timed[0] >= 0.85, f"3 tasks of 0.3 s took {timed[-1] - timed[0]:.2f}s: not one at a time"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("script", ["threaded_worker.py", "process_pool_worker.py", "gevent_worker.py"])
def test_concurrent_workers(tut, script):
    """Six 1-second tasks with CONCURRENCY = prefetch_count = 4: four run at once,
    then the last two; about 2 s in all instead of 6, and every task is acked."""
    tasks = [f"task-{i}." for i in range(6)]
    tut.run_parallel("new_task.py", [[t] for t in tasks])
    assert tut.queue_counts("task_queue") == (6, 0)

    w = tut.start(script, SECONDS_PER_DOT=1)
    w.wait_count(r"\[x\] Finished", 6, timeout=15)
    timed = list(w.timed)
    received = [(t, l) for t, l in timed if "[x] Received" in l]
    finished = [(t, l) for t, l in timed if "[x] Finished" in l]
    first_finish = finished[0][0]
    running_at_once = sum(1 for t, _ in received if t < first_finish)
    assert running_at_once == 4, f"prefetch_count=4 should give 4 tasks at once\n{w.describe()}"
    elapsed = finished[-1][0] - received[0][0]
    assert 1.8 < elapsed < 3.5, f"6 tasks of 1 s in waves of 4 took {elapsed:.2f}s\n{w.describe()}"
    assert sorted(re.search(r"b'([^']*)'", l).group(1) for _, l in finished) == sorted(tasks)
    if script == "process_pool_worker.py":
        pids = {re.search(r"in process (\d+)", l).group(1) for _, l in finished}
        assert len(pids) == 4 and str(w.proc.pid) not in pids, w.describe()

    # every task was acked: after Ctrl+C nothing is requeued
    assert w.interrupt() == 0, w.describe()
    assert tut.wait_queue_counts("task_queue", (0, 0)) == (0, 0)


# --------------------------------------------------------------------------- 8. Celery

@pytest.mark.timeout(80)
def test_celery(tut):
    worker = tut.start_argv([sys.executable, "-m", "celery", "-A", "tasks", "worker",
                             "--loglevel=INFO", "--concurrency=4"])
    try:
        worker.wait_for(lambda: any(l.rstrip().endswith("ready.") for l in worker.lines()), 30)
        assert any(l.rstrip().endswith("ready.") for l in worker.lines()), worker.describe()
        out = tut.run("call_tasks.py", timeout=40)
        lines = out.splitlines()
        assert "add(4, 4) = 8" in lines, out
        m = re.search(r"^squares = \[0, 1, 4, 9\] in ([\d.]+) s$", out, re.M)
        assert m, out
        assert float(m.group(1)) < 2.5, f"four 1 s tasks on 4 processes took {m.group(1)} s"
        worker.wait_line("Task tasks.add[", timeout=5)
    finally:
        if worker.proc.poll() is None:
            worker.proc.send_signal(signal.SIGTERM)  # warm shutdown
            try:
                worker.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass


# --------------------------------------------------------------------------- the docs

def test_docs_are_up_to_date():
    """The code blocks of the docs are the example files (scripts/gen-docs.py)."""
    r = subprocess.run([sys.executable, str(REPO_ROOT / "scripts" / "gen-docs.py"), "--check"],
                       cwd=str(REPO_ROOT), capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"run scripts/gen-docs.py to refresh the docs:\n{r.stdout}{r.stderr}"


def test_every_example_is_documented_and_tested():
    on_disk = sorted(p.name for p in TUTORIALS.glob("*.py"))
    assert on_disk == sorted(EXAMPLES), "add the new example to EXAMPLES and give it a test"
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        included = set(re.findall(r"<!-- include: examples/tutorials/([\w.]+) -->", text))
        assert included == set(on_disk), f"{doc.name}: missing {set(on_disk) - included}"

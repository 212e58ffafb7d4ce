"""Rust workers and the Rust client (`warren-tasks`, crate `tasks`) with real Celery as the
witness, over Warren: a Python Celery client (`rpc://` results) sends to the Rust worker,
and the Rust client sends to a Python `celery worker`.

Each test has a broker of its own (the kill -9 test leaves unacked deliveries behind).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from celery import Celery

from conftest import BrokerProcess, warren_tasks_binary
from tasks_support import (  # noqa: F401  (fixtures are used by name)
    RESULT_TIMEOUT,
    Process,
    _tasks_binary,
    broker_url,
    celery_client,
    node,
    python_worker,
    queue,
    rust_worker,
    workers,
)


@pytest.mark.timeout(60)
def test_python_client_rust_worker(node, queue, celery_client, workers):
    workers.append(rust_worker(node, queue))
    app = celery_client
    assert app.send_task("demo.add", (2, 3)).get(timeout=RESULT_TIMEOUT) == 5
    nested = {"a": [1, 2.5, None, True, "ünï"], "b": {"c": {"d": []}}}
    assert app.send_task("demo.echo", kwargs={"value": nested}).get(timeout=RESULT_TIMEOUT) == nested
    assert app.send_task("demo.echo", ([1, {"x": None}],)).get(timeout=RESULT_TIMEOUT) == [1, {"x": None}]
    # Mixed positional and keyword arguments, as in Python.
    assert app.send_task("demo.add", (40,), {"y": 2}).get(timeout=RESULT_TIMEOUT) == 42
    assert app.send_task("demo.sleep", (0.1,)).get(timeout=RESULT_TIMEOUT) == 0.1

    # A failure comes back as the exception type the task chose (a Python builtin here),
    # rebuilt by Celery from {"exc_type", "exc_message", "exc_module"}.
    r = app.send_task("demo.fail", ("it broke on purpose",))
    with pytest.raises(ValueError) as info:
        r.get(timeout=RESULT_TIMEOUT)
    assert type(info.value) is ValueError
    assert str(info.value) == "it broke on purpose"
    assert r.state == "FAILURE"

    # Wrong arguments are a TypeError, as calling a Python function wrongly is.
    with pytest.raises(TypeError):
        app.send_task("demo.add", (1,)).get(timeout=RESULT_TIMEOUT)

    # An unknown name is rejected (not requeued) and answered with Celery's NotRegistered.
    from celery.exceptions import NotRegistered
    with pytest.raises(NotRegistered):
        app.send_task("demo.no_such_task", (1,)).get(timeout=RESULT_TIMEOUT)

    # demo.flaky fails its first `failures` calls for a key and is retried automatically.
    assert app.send_task("demo.flaky", ("k1", 1)).get(timeout=RESULT_TIMEOUT) == "ok after 1 retries"

    # ignore_result: the task runs, no result is published (the worker logs it).
    quiet = app.send_task("demo.echo", ("quiet",), ignore_result=True)
    workers[0].wait_for(f'id="{quiet.id}"', count=2)  # received, succeeded


def run_sleeps(app: Celery, n: int, seconds: float) -> float:
    start = time.monotonic()
    results = [app.send_task("demo.sleep", (seconds,)) for _ in range(n)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [seconds] * n
    return time.monotonic() - start


@pytest.mark.timeout(60)
def test_concurrency_is_bounded_by_c(node, queue, celery_client, workers):
    w = rust_worker(node, queue, 4)
    workers.append(w)
    elapsed = run_sleeps(celery_client, 4, 1.0)
    assert elapsed < 2.0, f"4 x sleep(1) with -c 4 took {elapsed:.2f} s"
    w.stop()
    workers.remove(w)

    w = rust_worker(node, queue, 2)
    workers.append(w)
    elapsed = run_sleeps(celery_client, 4, 1.0)
    assert elapsed >= 2.0, f"4 x sleep(1) with -c 2 took only {elapsed:.2f} s: more than 2 ran at once"
    assert elapsed < 4.0, f"4 x sleep(1) with -c 2 took {elapsed:.2f} s"
    # From the worker's own log: never more than 2 between "received" and "succeeded".
    w.wait_for("task succeeded", count=4)
    running = most = 0
    for line in w.log(400).splitlines():
        running += ("task received" in line) - ("task succeeded" in line)
        most = max(most, running)
    assert most == 2, w.log()


@pytest.mark.timeout(60)
def test_kill_9_during_a_task_another_worker_runs_it(node, queue, celery_client, workers):
    first = rust_worker(node, queue, 1)
    workers.append(first)
    r = celery_client.send_task("demo.sleep", (3,))
    first.wait_for("task received")
    first.stop(signal.SIGKILL)
    assert first.proc.returncode == -signal.SIGKILL
    second = rust_worker(node, queue, 1)
    workers.append(second)
    assert r.get(timeout=RESULT_TIMEOUT) == 3.0
    # The second worker got it as a redelivery of the unacked message.
    second.wait_for("redelivered=true")


@pytest.mark.timeout(60)
def test_sigterm_lets_running_tasks_finish(node, queue, celery_client, workers):
    w = rust_worker(node, queue, 2)
    workers.append(w)
    r = celery_client.send_task("demo.sleep", (1.5,))
    w.wait_for("task received")
    start = time.monotonic()
    assert w.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start >= 1.0, "the worker waited for its running task"
    assert r.get(timeout=RESULT_TIMEOUT) == 1.5


PY_TASKS = '''
import os
from celery import Celery

app = Celery("pyworker", broker=os.environ["TASKS_BROKER"], backend="rpc://")
app.conf.update(task_default_queue=os.environ["TASKS_QUEUE"], broker_connection_retry_on_startup=False)


@app.task(name="tasks.mul")
def mul(x, y):
    return x * y


@app.task(name="tasks.boom")
def boom(message):
    raise KeyError(message)


@app.task(name="tasks.retry_once", bind=True)
def retry_once(self, value):
    if self.request.retries < 1:
        raise self.retry(countdown=1)
    return {"value": value, "retries": self.request.retries}


@app.task(name="tasks.greet")
def greet(name, punctuation="!"):
    return {"greeting": "hello " + name + punctuation}
'''


@pytest.mark.timeout(90)
def test_rust_client_python_worker(node, queue, tmp_path, workers):
    py = python_worker(node, queue, tmp_path, "pyworker", PY_TASKS, workers)

    def call(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(warren_tasks_binary()), "call", name, *args, "--queue", queue, "--wait", "20",
                               "--broker", broker_url(node)], capture_output=True, text=True, timeout=40,
                              env=dict(os.environ, RUST_LOG="warn"))

    done = call("tasks.mul", "--args", "[3,4]")
    assert (done.returncode, done.stdout.strip()) == (0, "12"), done.stderr
    done = call("tasks.greet", "--args", '["ann"]', "--kwargs", '{"punctuation": "?"}')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == '{"greeting":"hello ann?"}'
    start = time.monotonic()
    done = call("tasks.mul", "--args", "[2,21]", "--countdown", "1.5")
    assert (done.returncode, done.stdout.strip()) == (0, "42"), done.stderr
    assert time.monotonic() - start >= 1.5, "the Python worker got it when due"
    # A Python task that retries itself once (self.retry(countdown=1)): the client skips the
    # RETRY state and gets the result of the second run.
    start = time.monotonic()
    done = call("tasks.retry_once", "--args", '["again"]')
    assert (done.returncode, done.stdout.strip()) == (0, '{"retries":1,"value":"again"}'), done.stderr
    assert time.monotonic() - start >= 1.0
    done = call("tasks.boom", "--args", '["the python task failed"]')
    assert done.returncode != 0
    assert "KeyError" in done.stderr and "the python task failed" in done.stderr, done.stderr
    assert done.stdout == ""

    # Without --wait: the task id, and the task still runs.
    sent = subprocess.run([str(warren_tasks_binary()), "call", "tasks.mul", "--args", "[5,6]", "--queue", queue,
                           "--broker", broker_url(node)], capture_output=True, text=True, timeout=40)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    assert len(task_id) == 36
    py.wait_for(f"Task tasks.mul[{task_id}] succeeded")


@pytest.mark.timeout(60)
def test_rust_client_rust_worker(node, queue, workers):
    workers.append(rust_worker(node, queue))

    def call(name: str, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(warren_tasks_binary()), "call", name, *args, "--queue", queue, "--wait", "20",
                               "--broker", broker_url(node)], capture_output=True, text=True, timeout=40)

    done = call("demo.echo", "--kwargs", '{"value": {"k": [1, null]}}')
    assert (done.returncode, done.stdout.strip()) == (0, '{"k":[1,null]}'), done.stderr
    done = call("demo.fail", "--args", '["nope"]')
    assert done.returncode == 1
    assert done.stderr.strip().endswith("ValueError: nope"), done.stderr
    # Nobody consumes this queue: the wait times out.
    done = subprocess.run([str(warren_tasks_binary()), "call", "demo.add", "--args", "[1, 1]", "--queue", queue + ".idle",
                           "--wait", "1", "--broker", broker_url(node)], capture_output=True, text=True, timeout=40)
    assert done.returncode == 1 and "no result within 1.0 s" in done.stderr, done.stderr
    assert done.stdout == ""
    done = call("demo.add", "--args", "not json")
    assert done.returncode == 2 and "--args must be a JSON array" in done.stderr, done.stderr


@pytest.mark.timeout(60)
def test_one_worker_consumes_several_queues(node, queue, workers):
    other = queue + ".b"
    workers.append(rust_worker(node, f"{queue},{other}", 2))
    for q, args, want in [(queue, "[1, 2]", "3"), (other, "[3, 4]", "7")]:
        done = subprocess.run([str(warren_tasks_binary()), "call", "demo.add", "--args", args, "--queue", q,
                               "--wait", "20", "--broker", broker_url(node)], capture_output=True, text=True, timeout=40)
        assert (done.returncode, done.stdout.strip()) == (0, want), done.stderr


@pytest.mark.timeout(60)
def test_grace_period_over_the_task_goes_back_to_the_queue(node, queue, celery_client, workers):
    first = rust_worker(node, queue, 1, "--grace", "0.5")
    workers.append(first)
    r = celery_client.send_task("demo.sleep", (4,))
    first.wait_for("task received")
    start = time.monotonic()
    assert first.stop(signal.SIGTERM) == 0
    assert time.monotonic() - start < 3.0, "the worker did not wait for the task past its grace period"
    assert "grace period over" in first.log()
    workers.append(rust_worker(node, queue, 1))
    assert r.get(timeout=RESULT_TIMEOUT) == 4.0


@pytest.mark.timeout(90)
def test_worker_reconnects_after_a_broker_restart(node, queue, workers):
    w = rust_worker(node, queue, 2)
    workers.append(w)
    # A task running when the connection drops: it was never acked, so the broker (durable
    # queue, persistent message) delivers it again, and the worker drops its first run.
    sent = subprocess.run([str(warren_tasks_binary()), "call", "demo.sleep", "--args", "[1.5]", "--queue", queue,
                           "--broker", broker_url(node)], capture_output=True, text=True, timeout=40)
    assert sent.returncode == 0, sent.stderr
    task_id = sent.stdout.strip()
    w.wait_for(f'id="{task_id}"')
    node.stop()
    # Down long enough for some failed connection attempts, with growing delays.
    w.wait_for("reconnecting in", count=3)
    node.start()
    w.wait_for("worker ready", count=2, timeout=30)
    w.wait_for(f'id="{task_id}" redelivered=true')
    w.wait_for("task succeeded", timeout=10)
    time.sleep(1.0)
    assert w.log(400).count("task succeeded") == 1, w.log()
    app = Celery("pytest_tasks_reconnect", broker=broker_url(node), backend="rpc://")
    app.conf.update(task_default_queue=queue, broker_connection_retry_on_startup=False)
    try:
        assert app.send_task("demo.add", (20, 22)).get(timeout=RESULT_TIMEOUT) == 42
    finally:
        app.close()


@pytest.mark.timeout(60)
def test_countdown_from_python_is_held_by_the_delayed_exchange(node, queue, celery_client, workers):
    w = rust_worker(node, queue, 2)
    workers.append(w)
    start = time.monotonic()
    r = celery_client.send_task("demo.add", (1, 2), countdown=2)
    now = celery_client.send_task("demo.add", (3, 4))
    assert now.get(timeout=RESULT_TIMEOUT) == 7
    assert time.monotonic() - start < 1.5, "a due task is not held up behind a delayed one"
    assert r.get(timeout=RESULT_TIMEOUT) == 3
    assert time.monotonic() - start >= 1.9
    # The worker parked it in the broker rather than holding it.
    w.wait_for("task delayed until its eta")


@pytest.mark.timeout(60)
def test_countdown_from_the_rust_client(node, queue, tmp_path, workers):
    workers.append(rust_worker(node, queue))
    start = time.monotonic()
    done = subprocess.run([str(warren_tasks_binary()), "call", "demo.add", "--args", "[5, 5]", "--countdown", "1.5",
                           "--queue", queue, "--wait", "20", "--broker", broker_url(node)],
                          capture_output=True, text=True, timeout=40)
    assert (done.returncode, done.stdout.strip()) == (0, "10"), done.stderr
    assert time.monotonic() - start >= 1.5
    # Held by the broker, not by the worker: it arrived when due.
    assert "task delayed until its eta" not in workers[0].log()


@pytest.mark.timeout(60)
def test_countdown_without_a_delayed_exchange_is_held_in_the_worker(node, queue, celery_client, workers):
    # As on RabbitMQ without the delayed-message plugin: the exchange name is taken by a plain
    # direct exchange, so declaring it as x-delayed-message fails (406) and both sides fall back.
    import pika
    conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    conn.channel().exchange_declare("warren.tasks.delayed", "direct", durable=True)
    conn.close()
    w = rust_worker(node, queue, 2)
    workers.append(w)
    assert "no delayed exchange" in w.log()
    start = time.monotonic()
    r = celery_client.send_task("demo.add", (1, 2), countdown=1.5)
    assert r.get(timeout=RESULT_TIMEOUT) == 3
    assert time.monotonic() - start >= 1.4
    w.wait_for("task held until its eta")
    start = time.monotonic()
    done = subprocess.run([str(warren_tasks_binary()), "call", "demo.add", "--args", "[5, 5]", "--countdown", "1.5",
                           "--queue", queue, "--wait", "20", "--broker", broker_url(node)],
                          capture_output=True, text=True, timeout=40)
    assert (done.returncode, done.stdout.strip()) == (0, "10"), done.stderr
    assert "no delayed exchange" in done.stderr
    assert time.monotonic() - start >= 1.4
    w.wait_for("task held until its eta", count=2)


@pytest.mark.timeout(60)
def test_retries_wait_in_the_broker_not_in_a_worker_slot(node, queue, celery_client, workers):
    w = rust_worker(node, queue, 1)
    workers.append(w)
    start = time.monotonic()
    flaky = celery_client.send_task("demo.flaky", ("slot", 2))
    w.wait_for("task retry in")
    # The only slot (-c 1) is free while the retry waits its countdown (1 s).
    other = celery_client.send_task("demo.add", (20, 22))
    assert other.get(timeout=RESULT_TIMEOUT) == 42
    assert time.monotonic() - start < 1.5, "a task ran while the retry waited"
    assert flaky.get(timeout=RESULT_TIMEOUT) == "ok after 2 retries"
    assert time.monotonic() - start >= 2.0, "two countdowns of 1 s"
    assert flaky.state == "SUCCESS"
    assert w.log(400).count("task retry in") == 2, w.log()
    assert "task delayed until its eta" not in w.log(400), "retries come back from the broker when due"


@pytest.mark.timeout(60)
def test_exhausted_retries_fail_and_go_to_the_dead_letter_queue(node, queue, celery_client, workers):
    import pika
    workers.append(rust_worker(node, queue, 2))
    start = time.monotonic()
    r = celery_client.send_task("demo.flaky", ("dead", 10))
    with pytest.raises(RuntimeError) as info:
        r.get(timeout=RESULT_TIMEOUT)
    assert str(info.value) == "flaky failure 4 of 10", "the first run and 3 retries (the maximum)"
    assert time.monotonic() - start >= 3.0
    assert r.state == "FAILURE"
    conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    try:
        ch = conn.channel()
        method, props, body = ch.basic_get(queue + ".dead", auto_ack=True)
        assert method is not None, "nothing in the dead-letter queue"
        h = props.headers
        assert h["id"] == r.id and h["task"] == "demo.flaky" and h["retries"] == 3
        assert h["x-exception-type"] == "RuntimeError"
        assert h["x-exception-message"] == "flaky failure 4 of 10"
        assert "RuntimeError: flaky failure 4 of 10" in h["x-exception-traceback"]
        assert h["x-original-queue"] == queue
        import json
        assert json.loads(body)[:2] == [["dead", 10], {}]
        assert ch.basic_get(queue + ".dead", auto_ack=True)[0] is None, "dead-lettered once"
    finally:
        conn.close()


@pytest.mark.timeout(60)
def test_expired_tasks_are_revoked_not_run(node, queue, celery_client, workers):
    from datetime import datetime, timedelta, timezone
    from celery.exceptions import TaskRevokedError
    w = rust_worker(node, queue, 1)
    workers.append(w)
    # Already past: Celery sends it with AMQP expiration 0, delivered at once to the idle worker.
    r = celery_client.send_task("demo.echo", ("late",), expires=datetime.now(timezone.utc) - timedelta(seconds=5))
    with pytest.raises(TaskRevokedError):
        r.get(timeout=RESULT_TIMEOUT)
    assert r.state == "REVOKED"
    w.wait_for("task expired")
    assert "demo.echo" not in "".join(line for line in w.log(400).splitlines() if "task succeeded" in line)


@pytest.mark.timeout(60)
def test_a_task_expiring_while_queued_behind_a_slow_one(node, queue, celery_client, workers):
    # Celery also sets the AMQP expiration (1 s here), so the broker drops the queued task
    # before the worker sees it; a policy dead-letters it to `<queue>.expired`, which the
    # worker consumes and reports REVOKED. Without the policy it would vanish (no result).
    import base64
    import json
    import urllib.request
    from celery.exceptions import TaskRevokedError
    policy = {"pattern": f"^{queue}$", "apply-to": "queues",
              "definition": {"dead-letter-exchange": "", "dead-letter-routing-key": f"{queue}.expired"}}
    req = urllib.request.Request(f"http://127.0.0.1:{node.mgmt_port}/api/policies/%2f/tasks-expired",
                                 data=json.dumps(policy).encode(), method="PUT",
                                 headers={"content-type": "application/json",
                                          "authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    assert urllib.request.urlopen(req, timeout=10).status in (201, 204)
    w = rust_worker(node, queue, 1)
    workers.append(w)
    slow = celery_client.send_task("demo.sleep", (2.5,))
    w.wait_for("task received")
    start = time.monotonic()
    r = celery_client.send_task("demo.echo", ("queued",), expires=1)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=RESULT_TIMEOUT)
    assert r.state == "REVOKED"
    assert time.monotonic() - start >= 1.0
    assert slow.get(timeout=RESULT_TIMEOUT) == 2.5
    w.wait_for("task expired in the broker")
    assert "demo.echo" not in "".join(line for line in w.log(400).splitlines() if "task succeeded" in line)


@pytest.mark.timeout(60)
def test_time_limits_from_the_message(node, queue, celery_client, workers):
    from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
    workers.append(rust_worker(node, queue, 2))
    start = time.monotonic()
    r = celery_client.send_task("demo.sleep", (5,), time_limit=1)
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=RESULT_TIMEOUT)
    assert 0.9 <= time.monotonic() - start < 3.0
    assert r.state == "FAILURE"
    # demo.sleep observes the soft limit and raises SoftTimeLimitExceeded.
    start = time.monotonic()
    r = celery_client.send_task("demo.sleep", (5,), soft_time_limit=1)
    with pytest.raises(SoftTimeLimitExceeded):
        r.get(timeout=RESULT_TIMEOUT)
    assert 0.9 <= time.monotonic() - start < 3.0
    # Within its limits a task is not disturbed.
    assert celery_client.send_task("demo.sleep", (0.2,), time_limit=5, soft_time_limit=3).get(
        timeout=RESULT_TIMEOUT) == 0.2


@pytest.mark.timeout(60)
def test_events_are_what_celery_monitors_read(node, queue, celery_client, workers):
    """`worker -E`: the events, fed to Celery's own event State (what Flower uses)."""
    import json
    import pika
    from celery.events.state import State
    conn = pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))
    ch = conn.channel()
    ch.exchange_declare("celeryev", "topic", durable=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, "celeryev", "#")
    w = rust_worker(node, queue, 2, "-E")
    workers.append(w)
    ok = celery_client.send_task("demo.add", (2, 3))
    bad = celery_client.send_task("demo.fail", ("no",))
    flaky = celery_client.send_task("demo.flaky", ("events", 1))
    assert ok.get(timeout=RESULT_TIMEOUT) == 5
    with pytest.raises(ValueError):
        bad.get(timeout=RESULT_TIMEOUT)
    assert flaky.get(timeout=RESULT_TIMEOUT) == "ok after 1 retries"
    time.sleep(2.5)  # a heartbeat
    events = []
    while True:
        method, props, body = ch.basic_get(q, auto_ack=True)
        if method is None:
            break
        event = json.loads(body)
        event["local_received"] = time.time()  # what Celery's EventReceiver adds on receipt
        assert method.routing_key == event["type"].replace("-", "."), (method.routing_key, event)
        events.append(event)
    conn.close()
    types = [e["type"] for e in events]
    assert types[0] == "worker-online", types
    assert "worker-heartbeat" in types
    for t in ["task-received", "task-started", "task-succeeded", "task-failed", "task-retried"]:
        assert t in types, types
    state = State()
    for e in events:
        state.event(e)
    hostname = events[0]["hostname"]
    assert state.workers[hostname].alive
    assert state.workers[hostname].sw_ident == "warren-tasks"
    assert state.tasks[ok.id].state == "SUCCESS" and state.tasks[ok.id].name == "demo.add"
    assert state.tasks[ok.id].result == "5"
    assert state.tasks[bad.id].state == "FAILURE" and "ValueError" in state.tasks[bad.id].exception
    assert state.tasks[flaky.id].state == "SUCCESS"
    assert [e["type"] for e in events if e.get("uuid") == flaky.id].count("task-retried") == 1


def put_policy(node: BrokerProcess, name: str, pattern: str, definition: dict) -> None:
    import base64
    import json
    import urllib.request
    policy = {"pattern": pattern, "apply-to": "queues", "definition": definition}
    req = urllib.request.Request(f"http://127.0.0.1:{node.mgmt_port}/api/policies/%2f/{name}",
                                 data=json.dumps(policy).encode(), method="PUT",
                                 headers={"content-type": "application/json",
                                          "authorization": "Basic " + base64.b64encode(b"guest:guest").decode()})
    assert urllib.request.urlopen(req, timeout=10).status in (201, 204)


@pytest.mark.timeout(60)
def test_a_long_task_extends_its_lease_past_the_consumer_timeout(node, queue, celery_client, workers):
    # A 2 s consumer timeout on the task queue (a policy: Celery declares the queue without
    # arguments); the task runs 5 s. The worker extends its lease every 0.5 s
    # (amq.warren.lease), so the broker never cancels it: it runs once, acked once.
    put_policy(node, "short-timeout", f"^{queue}$", {"consumer-timeout": 2000})
    w = rust_worker(node, queue, 2, "--lease-interval", "0.5")
    workers.append(w)
    start = time.monotonic()
    assert celery_client.send_task("demo.sleep", (5,)).get(timeout=RESULT_TIMEOUT) == 5.0
    assert time.monotonic() - start >= 5.0
    time.sleep(2.5)  # longer than the timeout: a cancel or a redelivery would show by now
    log = w.log(400)
    assert log.count("task received") == 1 and log.count("task succeeded") == 1, log
    assert "consumer cancelled" not in log and "redelivered=true" not in log, log
    assert "consumer timeout" not in node.log_path.read_text()
    # The worker still consumes.
    assert celery_client.send_task("demo.add", (1, 2)).get(timeout=RESULT_TIMEOUT) == 3


@pytest.mark.timeout(60)
def test_without_leases_the_consumer_timeout_cancels_and_the_worker_consumes_again(node, queue, celery_client,
                                                                                     workers):
    # The same 2 s timeout with lease extension off: Warren cancels the consumer at 2 s and
    # requeues the task; the worker consumes again and the task runs a second time while its
    # first run finishes (and answers). This is why long tasks need leases (or idempotence).
    put_policy(node, "short-timeout", f"^{queue}$", {"consumer-timeout": 2000})
    w = rust_worker(node, queue, 2, "--lease-interval", "0")
    workers.append(w)
    r = celery_client.send_task("demo.sleep", (3,))
    w.wait_for("consumer cancelled by the broker; consuming again", timeout=15)
    w.wait_for("redelivered=true", timeout=10)
    assert r.get(timeout=RESULT_TIMEOUT) == 3.0
    assert "consumer timeout" in node.log_path.read_text()
    assert w.proc.poll() is None
    # The first run's late ack (a batched `multiple` ack naming the requeued tag) is ignored:
    # the channel stays open, the worker never reconnects.
    time.sleep(1.5)
    assert "no broker connection" not in w.log(400) and "worker ready" in w.log(400), w.log(400)
    assert w.log(400).count("worker ready") == 1, w.log(400)


@pytest.mark.timeout(90)
def test_graceful_shutdown_loses_nothing_and_runs_nothing_twice(node, queue, celery_client, workers):
    # 6 tasks, -c 2: SIGTERM while the first two run. They finish and are acked (the batched
    # acks are sent before the connection closes); the four still queued were never
    # delivered. A second worker runs those four: every task ran exactly once.
    first = rust_worker(node, queue, 2)
    workers.append(first)
    results = [celery_client.send_task("demo.sleep", (1,)) for _ in range(6)]
    first.wait_for("task received", count=2)
    assert first.stop(signal.SIGTERM) == 0
    ran_first = first.log(400).count("task succeeded")
    assert ran_first == 2, first.log()
    second = rust_worker(node, queue, 2)
    workers.append(second)
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [1.0] * 6
    time.sleep(1.0)
    logs = first.log(400) + "\n" + second.log(400)
    for r in results:
        assert sum(f'id="{r.id}"' in line and "task succeeded" in line for line in logs.splitlines()) == 1, logs
    assert "redelivered=true" not in second.log(400), second.log()


def tutorial_worker(node: BrokerProcess) -> Process:
    """docs/tasks.md's tutorial worker (crates/tasks/examples/work_queue.rs)."""
    binary = warren_tasks_binary().parent / "examples" / "work_queue"
    if not binary.exists():
        pytest.fail(f"{binary} not found; build it with `cargo build -p tasks --example work_queue`", pytrace=False)
    return Process([str(binary), broker_url(node)], "Waiting for messages", env=dict(os.environ, NO_COLOR="1"))


def tutorial_call(node: BrokerProcess, message: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(warren_tasks_binary()), "call", "tutorial.work", "--args", f'["{message}"]', "--queue",
                           "task_queue", "--broker", broker_url(node), *extra], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done


def received(w: Process) -> list[str]:
    return [line.split("Received ", 1)[1].strip('"') for line in w.log(400).splitlines() if "Received" in line]


def wait_done(a: Process, b: Process, n: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while sum(w.log(400).count(" [x] Done") for w in (a, b)) < n:
        assert time.monotonic() < deadline, f"{n} tasks not done:\n{a.log()}\n---\n{b.log()}"
        time.sleep(0.1)


@pytest.mark.timeout(150)
def test_the_work_queue_tutorial_as_written(node, workers):
    # docs/tasks.md "Tutorial: a work queue", steps 1-4, with the outputs the doc shows.
    a, b = tutorial_worker(node), tutorial_worker(node)
    workers.extend([a, b])
    a.wait_ready()
    b.wait_ready()
    time.sleep(0.5)
    # 1. Round-robin between two workers, prefetch 1.
    for m in ["First message.", "Second message..", "Third message...", "Fourth message....", "Fifth message....."]:
        tutorial_call(node, m)
    wait_done(a, b, 5)
    first, second = (a, b) if "First message." in received(a) else (b, a)
    assert received(first) == ["First message.", "Third message...", "Fifth message....."], first.log()
    assert received(second) == ["Second message..", "Fourth message...."], second.log()
    # 2. Fair dispatch: the long task keeps one worker; the other does the four short ones.
    tutorial_call(node, "A long task..........")
    time.sleep(0.3)
    for i in range(1, 5):
        tutorial_call(node, f"Short task {i}.")
    time.sleep(6)
    long_w = a if "A long task.........." in received(a) else b
    short_w = b if long_w is a else a
    assert [m for m in received(long_w) if "task" in m] == ["A long task.........."], long_w.log()
    assert [m for m in received(short_w) if "task" in m] == [f"Short task {i}." for i in range(1, 5)], short_w.log()
    wait_done(a, b, 10)
    # 3. kill -9 mid-task: the other worker runs it, the caller gets its result (6 dots).
    n_a, n_b = len(received(a)), len(received(b))
    caller = subprocess.Popen([str(warren_tasks_binary()), "call", "tutorial.work", "--args", '["Slow task......"]',
                               "--queue", "task_queue", "--broker", broker_url(node), "--wait", "30"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while len(received(a)) == n_a and len(received(b)) == n_b:
        assert time.monotonic() < deadline, "nobody received the slow task"
        time.sleep(0.05)
    victim, survivor = (a, b) if len(received(a)) > n_a else (b, a)
    victim.stop(signal.SIGKILL)
    out, err = caller.communicate(timeout=40)
    assert (caller.returncode, out.strip()) == (0, "6"), err
    assert received(survivor)[-1] == "Slow task......", survivor.log()
    survivor.stop(signal.SIGINT)
    # 4. Durability: a task sent while no worker runs survives a broker restart.
    tutorial_call(node, "Survives a restart.")
    node.stop()
    node.start()
    c = tutorial_worker(node)
    workers.append(c)
    c.wait_ready()
    c.wait_for(" [x] Done", timeout=20)
    assert received(c) == ["Survives a restart."], c.log()

"""Canvas with the Rust worker and client (`warren-tasks`, crate `tasks`), real Celery as the
witness: chains, groups, link callbacks and errbacks from a Python Celery client to the Rust
worker, mixed Python/Rust chains, the Rust client's chain and group against a Python
`celery worker`, and the broker-native chord (no `celery.chord_unlock` polling task).

Fixtures and helpers are tasks_support.py's (one broker per test).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import time
import urllib.request
import uuid

import pytest
from celery import chain, group

from conftest import warren_tasks_binary
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

PY_TASKS = '''
import os
from celery import Celery

app = Celery("pycanvas", broker=os.environ["TASKS_BROKER"], backend="rpc://")
app.conf.update(task_default_queue=os.environ["TASKS_QUEUE"], broker_connection_retry_on_startup=False)


@app.task(name="py.mul")
def mul(x, y):
    return x * y


@app.task(name="py.record")
def record(value):
    """A link callback or an old-style errback (it gets the failed task's id)."""
    return "recorded " + str(value)
'''


@pytest.fixture
def py_queue(queue) -> str:
    return queue + ".py"


@pytest.fixture
def py_worker(node, py_queue, tmp_path, workers) -> Process:
    return python_worker(node, py_queue, tmp_path, "pycanvas", PY_TASKS, workers)


def cli(node, command: str, *args: str, wait: float | None = 20) -> subprocess.CompletedProcess:
    cmd = [str(warren_tasks_binary()), command, *args, "--broker", broker_url(node)]
    if wait is not None:
        cmd += ["--wait", str(wait)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=dict(os.environ, RUST_LOG="warn"))


def sig(task: str, *args, **options) -> str:
    return json.dumps({"task": task, "args": list(args), "options": options})


def mgmt_queues(node) -> list[str]:
    req = urllib.request.Request(f"http://127.0.0.1:{node.mgmt_port}/api/queues")
    req.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        return [q["name"] for q in json.load(resp)]


def chord_queues_left(node, timeout: float = 5.0) -> list[str]:
    """The `warren.chord.*` queues, once they are gone or after `timeout` (the completing
    worker deletes them just after it sent the body or its failure)."""
    deadline = time.monotonic() + timeout
    while True:
        left = [q for q in mgmt_queues(node) if q.startswith("warren.chord.")]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def received(worker: Process, task: str) -> int:
    return sum("task received" in line and (f'task="{task}"' in line or f"task={task} " in line)
               for line in worker.lines)


@pytest.mark.timeout(60)
def test_chain_python_client_rust_worker(node, queue, celery_client, workers):
    w = rust_worker(node, queue)
    workers.append(w)
    app = celery_client
    add = lambda *a: app.signature("demo.add", a)  # noqa: E731
    r = chain(add(1, 2), add(3), add(4))()
    assert r.get(timeout=RESULT_TIMEOUT) == 10
    first, second = r.parent.parent, r.parent
    assert second.get(timeout=RESULT_TIMEOUT) == 6
    assert first.get(timeout=RESULT_TIMEOUT) == 3
    # Each step's result lists the next step it sent (Celery's children format).
    assert [c.id for c in first.children] == [second.id]
    assert [c.id for c in second.children] == [r.id]
    assert r.children in (None, [])
    # parent_id/root_id as Celery sets them: the worker log shows each step sent.
    assert received(w, "demo.add") == 3
    # Immutable steps (.si) do not get the previous result.
    r = chain(add(1, 1), app.signature("demo.add", (5, 5), immutable=True))()
    assert r.get(timeout=RESULT_TIMEOUT) == 10
    # A step with a countdown waits in the broker's delayed exchange, not in the worker.
    start = time.monotonic()
    r = chain(add(1, 2), add(3).set(countdown=1.5))()
    assert r.get(timeout=RESULT_TIMEOUT) == 6
    assert time.monotonic() - start >= 1.4
    w.wait_for("task delayed until its eta")
    # A step fails: the steps after it are not run, and fail with its error (Celery's
    # _fail_chain), so waiting on the chain raises it.
    r = chain(add(1, 1), app.signature("demo.fail", ("mid-chain",), immutable=True), add(100))()
    with pytest.raises(ValueError, match="mid-chain"):
        r.get(timeout=RESULT_TIMEOUT)
    assert received(w, "demo.add") == 3 + 2 + 2 + 1, w.log()


@pytest.mark.timeout(60)
def test_group_python_client_rust_worker(node, queue, celery_client, workers):
    w = rust_worker(node, queue)
    workers.append(w)
    app = celery_client
    res = group(app.signature("demo.add", (i, i)) for i in range(10))()
    assert res.get(timeout=RESULT_TIMEOUT) == [2 * i for i in range(10)]
    # A chain ending in a group: the Rust worker sends the group with the result.
    add = lambda *a: app.signature("demo.add", a)  # noqa: E731
    res = chain(add(1, 2), group(add(10), add(20), add(30)))()
    assert res.get(timeout=RESULT_TIMEOUT) == [13, 23, 33]
    # A group as a link: sent with the result, one GroupResult in the parent's children.
    # (Link signatures carry no reply_to, so their results reach no caller, as in Celery.)
    parent = app.send_task("demo.add", (2, 2), link=group(add(1), add(2)))
    assert parent.get(timeout=RESULT_TIMEOUT) == 4
    (linked,) = parent.children
    for r in linked.results:
        w.wait_for(f'id="{r.id}"')
    assert received(w, "demo.add") == 10 + 1 + 3 + 1 + 2, w.log()


@pytest.mark.timeout(90)
def test_link_and_link_error_to_a_python_worker(node, queue, py_queue, celery_client, py_worker, workers):
    workers.append(rust_worker(node, queue))
    app = celery_client
    record = app.signature("py.record", queue=py_queue)
    # link_error: the Python errback gets the failed Rust task's id (Celery 5's old-style
    # errback call for a task the failing worker does not have).
    failed = app.send_task("demo.fail", ("no luck",), link_error=record)
    with pytest.raises(ValueError, match="no luck"):
        failed.get(timeout=RESULT_TIMEOUT)
    py_worker.wait_for(f"'recorded {failed.id}'")
    # link: the callback gets the result.
    ok = app.send_task("demo.add", (20, 22), link=record)
    assert ok.get(timeout=RESULT_TIMEOUT) == 42
    py_worker.wait_for("'recorded 42'")
    assert len(ok.children) == 1
    # An errback on a success and a callback on a failure are not sent.
    app.send_task("demo.add", (1, 1), link_error=record).get(timeout=RESULT_TIMEOUT)
    with pytest.raises(ValueError):
        app.send_task("demo.fail", ("x",), link=record).get(timeout=RESULT_TIMEOUT)
    time.sleep(1)
    assert sum("recorded" in line and "succeeded" in line for line in py_worker.lines) == 2, py_worker.log()
    # Several callbacks: sent as a group, which is one GroupResult in `children`.
    multi = app.send_task("demo.add", (2, 2), link=[record, record])
    assert multi.get(timeout=RESULT_TIMEOUT) == 4
    py_worker.wait_for("'recorded 4'", count=2)
    (grouped,) = multi.children
    assert len(grouped.results) == 2 and grouped.id not in (None, multi.id)
    # chain(...).on_error(): the errback travels in every step's options; the step that
    # fails (sent by the Rust worker, not by the caller) sends it.
    r = chain(app.signature("demo.add", (1, 1)), app.signature("demo.fail", ("step 2",), immutable=True),
              app.signature("demo.add", (3,))).on_error(record)()
    with pytest.raises(ValueError, match="step 2"):
        r.get(timeout=RESULT_TIMEOUT)
    py_worker.wait_for(f"'recorded {r.parent.id}'")


@pytest.mark.timeout(90)
def test_mixed_python_rust_chain(node, queue, py_queue, celery_client, py_worker, workers):
    workers.append(rust_worker(node, queue))
    app = celery_client
    r = chain(
        app.signature("demo.add", (1, 2), queue=queue),
        app.signature("py.mul", (10,), queue=py_queue),
        app.signature("demo.add", (5,), queue=queue),
        app.signature("py.mul", (2,), queue=py_queue),
    )()
    assert r.get(timeout=RESULT_TIMEOUT) == 70


@pytest.mark.timeout(90)
def test_rust_client_python_worker_chain_and_group(node, py_queue, py_worker):
    done = cli(node, "chain", sig("py.mul", 2, 3), sig("py.mul", 4), sig("py.mul", 5), "--queue", py_queue)
    assert (done.returncode, done.stdout.strip()) == (0, "120"), done.stderr
    done = cli(node, "group", *(sig("py.mul", i, i) for i in range(6)), "--queue", py_queue)
    assert (done.returncode, done.stdout.strip()) == (0, "[0,1,4,9,16,25]"), done.stderr
    # Without --wait: the ids of every step, one a line.
    done = cli(node, "chain", sig("py.mul", 1, 1), sig("py.mul", 2), "--queue", py_queue, wait=None)
    ids = done.stdout.split()
    assert done.returncode == 0 and len(ids) == 2, done
    py_worker.wait_for(f"Task py.mul[{ids[1]}] succeeded")


@pytest.mark.timeout(90)
def test_rust_client_rust_worker_chain_and_group(node, queue, workers):
    workers.append(rust_worker(node, queue))
    done = cli(node, "chain", sig("demo.add", 1, 2), sig("demo.add", 3), sig("demo.add", 4), "--queue", queue)
    assert (done.returncode, done.stdout.strip()) == (0, "10"), done.stderr
    done = cli(node, "group", *(sig("demo.add", i, 1) for i in range(5)), "--queue", queue)
    assert (done.returncode, done.stdout.strip()) == (0, "[1,2,3,4,5]"), done.stderr
    failing = json.dumps({"task": "demo.fail", "args": ["in a chain"], "immutable": True})
    done = cli(node, "chain", sig("demo.add", 1, 2), failing, sig("demo.add", 3), "--queue", queue)
    assert done.returncode == 1 and "ValueError: in a chain" in done.stderr, done.stderr
    done = cli(node, "group", sig("demo.add", 1, 1), sig("demo.fail", "in a group"), "--queue", queue)
    assert done.returncode == 1 and "ValueError: in a group" in done.stderr, done.stderr


@pytest.mark.timeout(90)
def test_chord_without_polling(node, queue, workers):
    # Two workers: the header tasks finish on both, and the broker picks the one that
    # completes the chord.
    ws = [rust_worker(node, queue, 4), rust_worker(node, queue, 4)]
    workers.extend(ws)
    header = [sig("demo.add", i, i) for i in range(10)]
    done = cli(node, "chord", *header, "--body", sig("demo.sum"), "--queue", queue)
    assert (done.returncode, done.stdout.strip()) == (0, "90"), done.stderr
    assert sum(received(w, "demo.add") for w in ws) == 10
    assert sum(received(w, "demo.sum") for w in ws) == 1
    assert not any("chord_unlock" in line for w in ws for line in w.lines)
    assert sum("completing the chord" in line for w in ws for line in w.lines) == 1
    # The chord's queues are gone; only the task queue (and the worker's own) remain.
    assert chord_queues_left(node) == []
    # A chord of one: its only header task is the last one.
    done = cli(node, "chord", sig("demo.add", 2, 3), "--body", sig("demo.echo"), "--queue", queue)
    assert (done.returncode, done.stdout.strip()) == (0, "[5]"), done.stderr
    # A bigger one, finishing on both workers at once; the body's own arguments follow the
    # list of results.
    header = [sig("demo.add", i, 0) for i in range(200)]
    done = cli(node, "chord", *header, "--body", sig("demo.add", 50), "--queue", queue)
    assert done.returncode == 1 and "TypeError" in done.stderr, "demo.add(list, 50) is a TypeError"
    done = cli(node, "chord", *header, "--body", sig("demo.sum"), "--queue", queue)
    assert (done.returncode, done.stdout.strip()) == (0, str(sum(range(200)))), done.stderr
    assert chord_queues_left(node) == []


@pytest.mark.timeout(90)
def test_chord_with_a_failing_header_does_not_run_its_body(node, queue, workers):
    ws = [rust_worker(node, queue, 4)]
    workers.extend(ws)
    header = [sig("demo.add", 1, 1), sig("demo.fail", "header broke"), sig("demo.add", 2, 2)]
    done = cli(node, "chord", *header, "--body", sig("demo.sum"), "--queue", queue)
    assert done.returncode == 1, done
    assert "ChordError: Dependency" in done.stderr and "ValueError('header broke')" in done.stderr, done.stderr
    assert received(ws[0], "demo.sum") == 0
    assert chord_queues_left(node) == []
    # An expired header task is not run but still counts, as a failure (TaskRevokedError).
    expired = sig("demo.add", 2, 2, expires="2000-01-01T00:00:00+00:00")
    done = cli(node, "chord", sig("demo.add", 1, 1), expired, "--body", sig("demo.sum"), "--queue", queue)
    assert done.returncode == 1 and "TaskRevokedError('expired')" in done.stderr, done.stderr
    assert received(ws[0], "demo.sum") == 0


@pytest.mark.timeout(90)
def test_chord_counts_a_header_task_that_ran_twice_once(node, queue, celery_client, workers):
    """A header task that runs twice (its worker crashed after publishing its chord token,
    before its ack) publishes its result and its token twice. The worker whose token is
    refused then sees a duplicate index and a missing one: it leaves the results in place,
    and the missing task's own token (refused too) completes the chord with each index once.

    The header messages are sent as our client sends them (Celery's `send_task` with
    `chord=` the body carrying `chord_size`, `group_id`, `group_index`); the duplicate
    delivery is the same message (same task id) sent twice."""
    w = rust_worker(node, queue, 1)
    workers.append(w)
    app = celery_client
    group_id, body_id = str(uuid.uuid4()), str(uuid.uuid4())
    body = {"task": "demo.sum", "args": [], "kwargs": {}, "subtask_type": None, "immutable": False,
            "options": {"task_id": body_id, "reply_to": app.thread_oid, "group_id": group_id, "queue": queue},
            "chord_size": 3}

    def header(i: int, task_id: str):
        return app.send_task("demo.add", (i, 10), task_id=task_id, chord=body, group_id=group_id, group_index=i)

    first = str(uuid.uuid4())
    assert header(0, first).get(timeout=RESULT_TIMEOUT) == 10
    assert header(0, first).get(timeout=RESULT_TIMEOUT) == 10  # the re-run
    assert header(1, str(uuid.uuid4())).get(timeout=RESULT_TIMEOUT) == 11
    w.wait_for("chord: a duplicate result")
    assert received(w, "demo.sum") == 0
    assert header(2, str(uuid.uuid4())).get(timeout=RESULT_TIMEOUT) == 12
    assert app.AsyncResult(body_id).get(timeout=RESULT_TIMEOUT) == 33
    assert received(w, "demo.sum") == 1
    assert chord_queues_left(node) == []


@pytest.mark.timeout(60)
def test_a_step_to_a_queue_declared_with_other_arguments(node, queue, celery_client, workers):
    """The next step goes to a queue that exists with arguments Celery's declaration does
    not have (x-max-priority here): the broker refuses the worker's declaration and closes
    its canvas channel, and the worker still routes the step there, and goes on sending the
    next steps of later tasks on a new channel."""
    import pika

    other = queue + ".prio"
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{node.port}/%2f"))
    ch = conn.channel()
    ch.queue_declare(other, durable=True, arguments={"x-max-priority": 10})
    w = rust_worker(node, queue)
    workers.append(w)
    app = celery_client
    first = chain(app.signature("demo.add", (1, 2)), app.signature("demo.add", (3,), queue=other))()
    assert first.parent.get(timeout=RESULT_TIMEOUT) == 3
    deadline = time.monotonic() + 10
    while (got := ch.basic_get(other, auto_ack=True))[0] is None:
        assert time.monotonic() < deadline, w.log()
        time.sleep(0.1)
    assert json.loads(got[2])[0] == [3, 3]
    assert got[1].headers["task"] == "demo.add" and got[1].headers["parent_id"] == first.parent.id
    conn.close()
    r = chain(app.signature("demo.add", (1, 1)), app.signature("demo.add", (1,)))()
    assert r.get(timeout=RESULT_TIMEOUT) == 3
    assert any("could not declare the queue of a canvas task" in line for line in w.lines), w.log()
    assert any("canvas channel closed by the broker" in line for line in w.lines), w.log()

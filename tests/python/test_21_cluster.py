"""pika and Celery against a three-node cluster (issue 15): with quorum queues, clients given
every node (pika's multi-host connect, kombu's `;`-separated failover URLs) move to another
node when theirs is killed -9 and keep working; no confirmed message and no task confirmed
as sent is lost. With Celery's defaults (classic queues, rpc:// results), a worker and a
client on different nodes reach each other's queues.

Quorum queues exist on every node, and the default exchange routes to them everywhere;
classic queues live on the node that declared them and are reachable from the others
(docs/cluster.md).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid

import pika
import pytest
import requests
from celery import Celery

from amqp_util import WorkerProcess
from cluster_support import Cluster, cluster  # noqa: F401 - fixture
from tasks_support import python_worker, workers  # noqa: F401 - fixture

QUORUM = {"x-queue-type": "quorum"}
PERSISTENT = pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)
# Reconnecting: the pause between two rounds of the multi-host connect, and the ceiling.
RECONNECT_PAUSE_S = 0.2
RECONNECT_LIMIT_S = 20.0


def connect_any(c: Cluster, order: list[int], name: str) -> pika.BlockingConnection:
    """pika's multi-host connect (it tries the nodes in `order`, one attempt each) in the retry
    loop pika's docs recommend around it: a node that is down refuses at once and the next one
    is tried; a round where none answers is retried after a pause."""
    params = [c.params(i, client_properties={"connection_name": name}) for i in order]
    deadline = time.monotonic() + RECONNECT_LIMIT_S
    while True:
        try:
            return pika.BlockingConnection(params)
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(RECONNECT_PAUSE_S)


def open_publisher(c: Cluster, order: list[int], name: str, queue: str):
    conn = connect_any(c, order, name)
    ch = conn.channel()
    # Idempotent on every node: the queue was replicated to all of them.
    ch.queue_declare(queue, durable=True, arguments=QUORUM)
    ch.confirm_delivery()
    return conn, ch


def wait_node_of(c: Cluster, name: str, timeout: float = 10.0) -> int:
    """The node listing connection `name` (the management API's listing is not instant)."""
    deadline = time.monotonic() + timeout
    while (i := c.node_of_connection(name)) is None:
        assert time.monotonic() < deadline, f"no node lists connection {name}"
        time.sleep(0.1)
    return i


class FailoverConsumer(threading.Thread):
    """A pika consumer (manual acks, prefetch 20) given every node, reconnecting the way the
    publisher does when its connection is lost; records every delivery as (body, redelivered).
    Runs in a thread of its own with a connection of its own (pika is not thread-safe)."""

    def __init__(self, c: Cluster, order: list[int], queue: str, name: str):
        super().__init__(daemon=True)
        self.c, self.order, self.queue, self.name = c, order, queue, name
        self.got: list[tuple[str, bool]] = []
        self.reconnects = 0
        self.stop = threading.Event()
        self.consuming = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                try:
                    self._consume()
                except pika.exceptions.AMQPError:
                    self.reconnects += 1  # its node died: connect to another one
        except BaseException as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _consume(self) -> None:
        conn = connect_any(self.c, self.order, self.name)
        try:
            ch = conn.channel()
            ch.queue_declare(self.queue, durable=True, arguments=QUORUM)
            ch.basic_qos(prefetch_count=20)
            for method, _props, body in ch.consume(self.queue, inactivity_timeout=0.2):
                self.consuming.set()
                if self.stop.is_set():
                    return
                if method is not None:
                    self.got.append((body.decode(), method.redelivered))
                    ch.basic_ack(method.delivery_tag)
        finally:
            if conn.is_open:
                conn.close()


@pytest.mark.timeout(60)
def test_pika_multi_host_publisher_and_consumer_survive_their_node_kill_and_no_confirmed_message_is_lost(cluster):
    c = cluster
    leader = c.leader()
    # The clients' node is the leader: its kill moves both clients and elects a new leader.
    # The lists name it first, so a reconnect tries the dead node first and pika moves on.
    order = [leader] + [i for i in range(3) if i != leader]
    queue = f"pytest.qq.failover.{uuid.uuid4().hex[:8]}"
    name = f"publisher-{uuid.uuid4().hex[:6]}"
    conn, ch = open_publisher(c, order, name, queue)
    assert wait_node_of(c, name) == leader
    consumer = FailoverConsumer(c, order, queue, f"consumer-{name}")
    consumer.start()
    assert consumer.consuming.wait(10)
    assert wait_node_of(c, consumer.name) == leader

    total, kill_after = 150, 50
    confirmed: list[str] = []
    failed_publishes = 0  # publishes that got no confirm (connection lost): retried
    killed = threading.Event()

    def kill_when_due() -> None:
        while len(confirmed) < kill_after:
            time.sleep(0.005)
        c.kill(leader)
        killed.set()

    killer = threading.Thread(target=kill_when_due, daemon=True)
    killer.start()
    i = 0
    try:
        while i < total:
            body = f"m{i}"
            try:
                ch.basic_publish("", queue, body, properties=PERSISTENT, mandatory=True)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError,
                    pika.exceptions.NackError):
                # Not confirmed: it may or may not be in the queue (at least once); send it again
                # on a connection to a live node.
                failed_publishes += 1
                assert killed.wait(10), "a publish failed before the node was killed"
                try:
                    conn.close()
                except Exception:  # noqa: BLE001 - the connection is already dead
                    pass
                conn, ch = open_publisher(c, order, name, queue)
                continue
            confirmed.append(body)
            i += 1
    finally:
        killer.join(timeout=10)
    assert killed.is_set()
    assert failed_publishes >= 1, "the kill happened while publishing: one publish must have failed"
    now_on = wait_node_of(c, name)
    assert now_on != leader and c.nodes[now_on].alive()
    new_leader = c.wait_for_leader()
    assert new_leader != leader
    conn.close()

    deadline = time.monotonic() + 20
    while not set(confirmed) <= {b for b, _ in consumer.got} and time.monotonic() < deadline:
        time.sleep(0.1)
    consumer.stop.set()
    consumer.join(timeout=10)
    assert consumer.error is None, repr(consumer.error)
    assert consumer.reconnects >= 1
    got = [b for b, _ in consumer.got]
    missing = [m for m in confirmed if m not in set(got)]
    assert not missing, f"{len(missing)} confirmed messages lost: {missing[:10]}"
    assert set(got) <= {f"m{k}" for k in range(total)}
    # A second copy is either a redelivery (delivered to the dead connection, not acked) or a
    # retried publish.
    seen: set[str] = set()
    fresh_copies = 0
    for b, redelivered in consumer.got:
        if b in seen and not redelivered:
            fresh_copies += 1
        seen.add(b)
    assert fresh_copies <= failed_publishes, consumer.got
    # Fresh deliveries come in publish order, and so do redeliveries; not the two together:
    # until the new leader declares the dead node's consumer down (its member check runs every
    # second), it still hands that consumer every other message, which come back redelivered.
    for redelivered in (False, True):
        part = list(dict.fromkeys(b for b, r in consumer.got if r == redelivered))
        assert part == sorted(part, key=lambda m: int(m[1:])), (redelivered, consumer.got)


@pytest.mark.timeout(60)
def test_work_queue_prefetch_one_with_two_workers_on_two_nodes(cluster):
    """The seeds' work queue (tutorial 2: durable queue, persistent messages, manual acks,
    prefetch_count=1 fair dispatch) on a quorum queue: the publisher on one node, a slow and a
    fast worker (helpers/worker.py processes) on the two others. The workers declare the queue
    with `x-queue-type: quorum` (`--quorum`): a plain durable declare on a node that has not
    applied the quorum declare yet would make a classic queue there (docs/cluster.md, Clients)."""
    c = cluster
    queue = f"pytest.qq.work.{uuid.uuid4().hex[:8]}"
    conn = connect_any(c, [0], "work-publisher")
    ch = conn.channel()
    ch.queue_declare(queue, durable=True, arguments=QUORUM)
    ch.confirm_delivery()
    slow = WorkerProcess("127.0.0.1", c.nodes[1].port, queue, "slow", prefetch=1, sleep=1.0, quorum=True)
    fast = WorkerProcess("127.0.0.1", c.nodes[2].port, queue, "fast", prefetch=1, sleep=0.0, quorum=True)
    try:
        slow.wait_ready()
        fast.wait_ready()
        # Both consumers are in the replicated queue (node 0's replica counts them).
        deadline = time.monotonic() + 10
        while ch.queue_declare(queue, passive=True).method.consumer_count != 2:
            assert time.monotonic() < deadline, "the two workers' consumers never reached node 0"
            time.sleep(0.05)

        tasks = [f"task-{i}" for i in range(20)]
        for t in tasks:
            ch.basic_publish("", queue, t, properties=PERSISTENT)
        assert fast.wait_for(lambda _: len(slow.done()) + len(fast.done()) == 20, 30), (
            f"slow: {slow.describe()}\nfast: {fast.describe()}")
        got_slow = [b for b, _ in slow.received()]
        got_fast = [b for b, _ in fast.received()]
        # The slow worker takes 1 s a task: the fast one does the rest meanwhile (each of its
        # tasks is an ack and a delivery through the log, well under 0.2 s even on a loaded
        # machine).
        assert 1 <= len(got_slow) <= 5, f"slow worker got {got_slow}"
        assert len(got_fast) >= 15
        assert sorted(got_slow + got_fast) == sorted(tasks), "every task exactly once"
        assert not any(r for _, r in slow.received() + fast.received()), "nothing redelivered"
        ok = ch.queue_declare(queue, passive=True).method
        assert (ok.message_count, ok.consumer_count) == (0, 2)
    finally:
        slow.kill()
        fast.kill()
        conn.close()


TASKS = """
    import os
    import time

    from celery import Celery
    from celery.worker.consumer import Consumer


    # Celery's consumer without its native delayed delivery step (countdown/eta on quorum
    # queues, Celery >= 5.5): at every (re)connection that step connects to every URL of the
    # failover list and retries a dead one for about 17 s before the worker consumes again
    # (docs/cluster.md, Clients).
    class Consumer(Consumer):

        class Blueprint(Consumer.Blueprint):
            default_steps = [s for s in Consumer.Blueprint.default_steps if "DelayedDelivery" not in s]


    app = Celery("qq_tasks", broker=os.environ["TASKS_BROKER"], backend=os.environ["TASKS_BACKEND"])
    app.conf.update(
        task_default_queue=os.environ["TASKS_QUEUE"],
        task_default_queue_type="quorum",
        task_create_missing_queue_type="quorum",
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_transport_options={"confirm_publish": True},
        worker_consumer="qq_tasks:Consumer",
    )


    @app.task
    def add(x, y, delay=0.0):
        time.sleep(delay)
        return x + y
"""


def celery_urls(c: Cluster, order: list[int]) -> str:
    """kombu's failover URL: the nodes in `order`, `;`-separated (round-robin on failure)."""
    return ";".join(f"amqp://guest:guest@127.0.0.1:{c.nodes[i].port}//" for i in order)


@pytest.mark.timeout(60)
def test_celery_worker_fails_over_with_kombu_and_no_sent_task_is_lost(cluster, workers, tmp_path):
    c = cluster
    leader = c.leader()
    # The worker starts on the leader and fails over to a third node; the client stays on
    # another node all along.
    w_node, client_node, spare = leader, (leader + 1) % 3, (leader + 2) % 3
    queue = f"pytest.qq.celery.{uuid.uuid4().hex[:8]}"
    # Results through the filesystem backend: rpc://'s reply queue would be a classic queue
    # on the client's node, which a worker on another node cannot reach.
    results = tmp_path / "results"
    results.mkdir()
    backend = f"file://{results}"
    worker = python_worker(None, queue, tmp_path, "qq_tasks", TASKS, workers,
                           broker=celery_urls(c, [w_node, spare, client_node]),
                           env_extra={"TASKS_BACKEND": backend})
    assert any(f":{c.nodes[w_node].port}//" in line for line in worker.lines if "Connected to" in line), worker.log()

    app = Celery("qq_client", broker=celery_urls(c, [client_node, spare, w_node]), backend=backend)
    app.conf.update(task_default_queue=queue, task_default_queue_type="quorum", task_acks_late=True,
                    broker_transport_options={"confirm_publish": True}, broker_connection_max_retries=3)
    try:
        def send(x: int, delay: float = 0.0):
            return app.send_task("qq_tasks.add", args=(x, 1000), kwargs={"delay": delay})

        before = [send(i) for i in range(10)]
        assert [r.get(timeout=20) for r in before] == [i + 1000 for i in range(10)]

        # Tasks the worker holds unacked (acks_late, each takes 0.3 s) when its node dies.
        in_flight = [send(100 + i, 0.3) for i in range(6)]
        worker.wait_for("] received", count=11)  # the first of them started
        c.kill(w_node)
        worker.wait_for("Connection to broker lost", timeout=10)
        # kombu's failover: the dead node refuses, the next URL of the list is the spare node.
        worker.wait_for(f"Connected to amqp://guest:**@127.0.0.1:{c.nodes[spare].port}//", timeout=20)

        after = [send(200 + i) for i in range(10)]
        assert [r.get(timeout=30) for r in in_flight] == [100 + i + 1000 for i in range(6)]
        assert [r.get(timeout=30) for r in after] == [200 + i + 1000 for i in range(10)]
        assert c.nodes[spare].alive() and not c.nodes[w_node].alive()
        # The task running at the kill could not be acked on the dead connection (acks_late):
        # the cluster gave it back and the reconnected worker ran it again.
        received = [line for line in worker.lines if "] received" in line]
        again = [r.id for r in in_flight if sum(r.id in line for line in received) >= 2]
        assert again, worker.log(200)
    finally:
        app.close()


CLASSIC_TASKS = """
    import os

    from celery import Celery

    app = Celery("cq_tasks", broker=os.environ["TASKS_BROKER"], backend="rpc://")
    app.conf.update(
        task_default_queue=os.environ["TASKS_QUEUE"],
        task_acks_late=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"confirm_publish": True},
    )


    @app.task
    def mul(x, y):
        return x * y
"""


@pytest.mark.timeout(60)
def test_celery_with_classic_queues_and_rpc_results_across_nodes(cluster, workers, tmp_path):
    """Celery's defaults (classic queues, the rpc:// result backend) with the worker and the
    client on different nodes: the task queue lives on the node that declared it first, the
    client's reply queue on the client's node, and each side reaches the other's queue
    through the cluster (docs/cluster.md, classic queues across the cluster)."""
    c = cluster
    w_node, client_node = 0, 1
    queue = f"pytest.cq.celery.{uuid.uuid4().hex[:8]}"
    worker = python_worker(c.nodes[w_node], queue, tmp_path, "cq_tasks", CLASSIC_TASKS, workers)
    app = Celery("cq_client", broker=c.url(client_node).replace("/%2f", "//"), backend="rpc://")
    app.conf.update(task_default_queue=queue, broker_transport_options={"confirm_publish": True})
    try:
        results = [app.send_task("cq_tasks.mul", args=(i, 7)) for i in range(20)]
        assert [r.get(timeout=20) for r in results] == [i * 7 for i in range(20)]
        # The task queue is a classic queue on the worker's node, listed by both nodes.
        for i in (w_node, client_node):
            q = c.api(i, f"/queues/%2f/{queue}").json()
            assert (q["type"], q["node"]) == ("classic", c.names[w_node]), q
        # The client's reply queue is on the client's node, and the worker's node has it too
        # (that is how its results reached the client).
        replies = [q for q in c.api(w_node, "/queues").json() if q["name"] != queue and not q["name"].startswith("pytest.")
                   and q.get("node") == c.names[client_node]]
        assert replies, c.api(w_node, "/queues").json()
        assert len([line for line in worker.lines if "succeeded" in line]) == 20, worker.log(60)
    finally:
        app.close()


def test_rabbitmqadmin_rebalance_queues_spreads_quorum_leaders_and_pika_loses_nothing(cluster, tmp_path):
    """rabbitmqadmin v2's `rebalance queues` (POST /api/rebalance/queues) on three quorum
    queues declared through node 0 (which leads them, as a rule): afterwards each node leads
    one; every message pika had confirmed before is consumed, from another node, after."""
    binary = os.environ.get("RABBITMQADMIN")
    if not binary:
        pytest.skip("RABBITMQADMIN is not set (run through scripts/test-python.sh)")
    c = cluster
    tag = uuid.uuid4().hex[:8]
    queues = [f"pytest.qq.rebalance.{tag}.{i}" for i in range(3)]
    conn = connect_any(c, [0], "rebalance-publisher")
    ch = conn.channel()
    ch.confirm_delivery()
    sent = {}
    for q in queues:
        ch.queue_declare(q, durable=True, arguments=QUORUM)
        sent[q] = [f"{q}-{i}" for i in range(10)]
        for body in sent[q]:
            ch.basic_publish("", q, body, properties=PERSISTENT)
    conn.close()

    def leaders() -> list[str]:
        out = []
        for q in queues:
            r = c.api(1, f"/queues/%2F/{q}")
            assert r.status_code == 200, r.text
            out.append(r.json().get("leader"))
        return out

    deadline = time.monotonic() + 20
    while None in leaders():
        assert time.monotonic() < deadline, f"leaders {leaders()}"
        time.sleep(0.1)
    r = subprocess.run([binary, "--host", "127.0.0.1", "--port", str(c.nodes[1].mgmt_port), "--username", "guest",
                        "--password", "guest", "--non-interactive", "rebalance", "queues"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)})
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert sorted(leaders()) == sorted(c.names), f"one leader per node: {leaders()}"
    # Warren's report agrees: one quorum queue leader per node.
    rows = requests_post_json(c, 2, "/warren/rebalance", {"queue_pattern": f"^pytest\\.qq\\.rebalance\\.{tag}\\."})
    assert sorted(r["quorum_leaders"] for r in rows) == [1, 1, 1], rows

    conn = connect_any(c, [2], "rebalance-consumer")
    ch = conn.channel()
    for q in queues:
        got = []
        for method, _props, body in ch.consume(q, inactivity_timeout=5):
            if method is None:
                break
            got.append(body.decode())
            ch.basic_ack(method.delivery_tag)
            if len(got) == len(sent[q]):
                break
        ch.cancel()
        assert got == sent[q], f"{q}: every confirmed message, in order"
    conn.close()


def requests_post_json(c: Cluster, i: int, path: str, body: dict):
    r = requests.post(f"http://127.0.0.1:{c.nodes[i].mgmt_port}/api{path}", json=body, auth=("guest", "guest"),
                      timeout=120)
    assert r.status_code == 200, r.text
    return r.json()

"""Tutorial 2: work queues - round-robin dispatch between worker processes,
message acknowledgement (a worker killed with SIGKILL loses nothing), and
fair dispatch with basic_qos(prefetch_count=1).

Workers are real processes (helpers/worker.py) with their own connections,
as in the seed posts where each worker ran in its own terminal.
"""

import signal
import time

import pika
import pytest

from amqp_util import WorkerProcess, pump


def persistent():
    return pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent)


def queue_counts(channel, queue):
    ok = channel.queue_declare(queue=queue, passive=True)
    return ok.method.message_count, ok.method.consumer_count


def wait_counts(connection, channel, queue, expected, timeout=5.0):
    """Poll passive declares until (message_count, consumer_count) == expected."""
    last = [None]

    def check():
        last[0] = queue_counts(channel, queue)
        return last[0] == expected

    pump(connection, check, timeout)
    return last[0]


@pytest.fixture
def workers():
    started = []
    yield started
    for w in started:
        w.kill()


@pytest.mark.timeout(60)
def test_round_robin_two_workers(broker, connection, channel, names, workers):
    queue = names.queue("task_queue")
    channel.queue_declare(queue=queue, durable=True)
    # worker 1 is slower than worker 2: plain round-robin ignores that.
    w1 = WorkerProcess(broker.host, broker.port, queue, "w1", dot_seconds=0.05)
    w2 = WorkerProcess(broker.host, broker.port, queue, "w2")
    workers += [w1, w2]
    w1.wait_ready()
    w2.wait_ready()
    assert queue_counts(channel, queue) == (0, 2)

    tasks = [f"task-{i}" + "." * (i % 3 + 1) for i in range(10)]
    for t in tasks:
        channel.basic_publish(exchange="", routing_key=queue, body=t, properties=persistent())

    total_done = lambda _w=None: len(w1.done()) + len(w2.done())  # noqa: E731
    assert w1.wait_for(lambda _: total_done() == 10, 20), f"w1: {w1.describe()}\nw2: {w2.describe()}"

    got1 = [b for b, _ in w1.received()]
    got2 = [b for b, _ in w2.received()]
    assert len(got1) == 5 and len(got2) == 5, (got1, got2)
    assert sorted(got1 + got2) == sorted(tasks)
    # strict alternation: one worker gets the even tasks, the other the odd ones
    evens, odds = tasks[0::2], tasks[1::2]
    assert {tuple(got1), tuple(got2)} == {tuple(evens), tuple(odds)}, (got1, got2)
    assert not any(r for _, r in w1.received() + w2.received())
    assert wait_counts(connection, channel, queue, (0, 2)) == (0, 2)


@pytest.mark.timeout(60)
def test_killed_worker_message_is_redelivered(broker, connection, channel, names, workers):
    queue = names.queue("task_queue")
    channel.queue_declare(queue=queue, durable=True)

    # worker A takes the task and would need a minute to finish it
    a = WorkerProcess(broker.host, broker.port, queue, "A", sleep=60)
    workers.append(a)
    a.wait_ready()
    channel.basic_publish(exchange="", routing_key=queue, body="long-task", properties=persistent())
    assert a.wait_for(lambda w: len(w.received()) == 1, 10), a.describe()
    assert a.received() == [("long-task", False)]

    b = WorkerProcess(broker.host, broker.port, queue, "B")
    workers.append(b)
    b.wait_ready()
    time.sleep(0.3)
    assert b.received() == [], "an unacked message must not be given to another consumer"
    # the message is unacked (not ready) while A holds it
    assert queue_counts(channel, queue) == (0, 2)

    a.kill(signal.SIGKILL)
    assert a.proc.returncode == -signal.SIGKILL

    assert b.wait_for(lambda w: len(w.done()) == 1, 15), b.describe()
    assert b.received() == [("long-task", True)], "redelivered flag must be set"
    assert wait_counts(connection, channel, queue, (0, 1)) == (0, 1)


@pytest.mark.timeout(60)
def test_fair_dispatch_with_prefetch_one(broker, connection, channel, names, workers):
    queue = names.queue("task_queue")
    channel.queue_declare(queue=queue, durable=True)
    slow = WorkerProcess(broker.host, broker.port, queue, "slow", prefetch=1, sleep=0.5)
    fast = WorkerProcess(broker.host, broker.port, queue, "fast", prefetch=1, sleep=0.0)
    workers += [slow, fast]
    slow.wait_ready()
    fast.wait_ready()

    tasks = [f"task-{i}" for i in range(20)]
    for t in tasks:
        channel.basic_publish(exchange="", routing_key=queue, body=t, properties=persistent())

    assert fast.wait_for(lambda _: len(slow.done()) + len(fast.done()) == 20, 30), (
        f"slow: {slow.describe()}\nfast: {fast.describe()}")
    got_slow = [b for b, _ in slow.received()]
    got_fast = [b for b, _ in fast.received()]
    assert len(got_slow) <= 5, f"slow worker got {len(got_slow)} tasks: {got_slow}"
    assert len(got_fast) >= 15
    assert sorted(got_slow + got_fast) == sorted(tasks), "every task exactly once"
    assert wait_counts(connection, channel, queue, (0, 2)) == (0, 2)


@pytest.mark.timeout(30)
def test_unacked_messages_return_to_queue_when_channel_closes(connection, channel, names):
    """The 'forgotten basic_ack' case from the seeds: messages stay unacked
    (not ready) while the consumer lives and are requeued when it goes away."""
    queue = names.queue("forgot_ack")
    channel.queue_declare(queue=queue, durable=True)
    for i in range(3):
        channel.basic_publish(exchange="", routing_key=queue, body=f"m{i}", properties=persistent())

    consumer_ch = connection.channel()
    got = []
    consumer_ch.basic_consume(queue, lambda ch, m, p, b: got.append(b))  # never acks
    assert pump(connection, lambda: len(got) == 3, 10)
    assert got == [b"m0", b"m1", b"m2"]
    assert queue_counts(channel, queue) == (0, 1)

    consumer_ch.close()
    assert wait_counts(connection, channel, queue, (3, 0)) == (3, 0)

    method, _, body = channel.basic_get(queue)
    assert body == b"m0"
    assert method.redelivered is True
    channel.basic_ack(method.delivery_tag)
    assert queue_counts(channel, queue) == (2, 0)

"""Seed 000 ("concurrent scheduling"): a consumer with basic_qos(prefetch_count=N)
hands each delivery to a thread that 'works' for 1 s and acks through
connection.add_callback_threadsafe. With N deliveries outstanding at once the
handlers overlap, so N tasks take about 1 s, not N seconds; the broker never
has more than N unacked deliveries in flight on the consumer."""

import functools
import threading
import time

import pytest

from amqp_util import pump


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "prefetch,tasks,min_s,max_s",
    [
        (4, 4, 0.9, 2.5),  # all four overlap
        (2, 4, 1.9, 3.5),  # two waves of two: prefetch caps the concurrency
    ],
)
def test_threaded_handlers_overlap(connect, names, prefetch, tasks, min_s, max_s):
    exchange = names.exchange("topic_logs")
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    queue = ch.queue_declare(queue="", exclusive=True).method.queue
    for key in ["disk.error", "disk.warning"]:
        ch.queue_bind(exchange=exchange, queue=queue, routing_key=key)

    pub = connect().channel()
    for i in range(tasks):
        rk = "disk.error" if i % 2 == 0 else "disk.warning"
        pub.basic_publish(exchange=exchange, routing_key=rk, body=f"[{rk}] Hello World! {i}")
    pump(conn, lambda: ch.queue_declare(queue=queue, passive=True).method.message_count == tasks, 5)

    lock = threading.Lock()
    state = {"in_flight": 0, "max_in_flight": 0}
    received, acked, threads = [], [], []

    def ack(delivery_tag):  # runs on the connection's thread
        ch.basic_ack(delivery_tag=delivery_tag)
        with lock:
            state["in_flight"] -= 1
            acked.append(delivery_tag)

    def work(delivery_tag, body):
        time.sleep(1)
        conn.add_callback_threadsafe(functools.partial(ack, delivery_tag))

    def callback(channel, method, properties, body):
        with lock:
            state["in_flight"] += 1
            state["max_in_flight"] = max(state["max_in_flight"], state["in_flight"])
            received.append(body)
        t = threading.Thread(target=work, args=(method.delivery_tag, body), daemon=True)
        threads.append(t)
        t.start()

    ch.basic_qos(prefetch_count=prefetch)
    start = time.monotonic()
    ch.basic_consume(queue=queue, on_message_callback=callback)
    assert pump(conn, lambda: len(acked) == tasks, 15), f"acked {len(acked)}/{tasks}"
    elapsed = time.monotonic() - start
    for t in threads:
        t.join(5)

    assert sorted(received) == sorted(f"[{'disk.error' if i % 2 == 0 else 'disk.warning'}] Hello World! {i}".encode()
                                      for i in range(tasks))
    assert state["max_in_flight"] == prefetch, state
    assert min_s <= elapsed < max_s, f"{tasks} x 1 s tasks with prefetch {prefetch} took {elapsed:.2f}s"

    # every message was acked: closing the consumer channel requeues nothing
    ch.close()
    ok = conn.channel().queue_declare(queue=queue, passive=True)
    assert ok.method.message_count == 0
    assert ok.method.consumer_count == 0

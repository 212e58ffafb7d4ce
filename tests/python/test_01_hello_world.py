"""Tutorial 1: "Hello World!" - declare a queue, publish through the default
exchange, consume and compare bodies (pika 1.x rewrite of the seed posts)."""

import datetime
import decimal

import pika
import pytest

from amqp_util import pump, wait_message_count


@pytest.mark.timeout(30)
def test_hello_world_send_then_receive(connect, names):
    queue = names.queue("hello")

    # send.py
    producer = connect()
    ch = producer.channel()
    declare_ok = ch.queue_declare(queue=queue)
    assert declare_ok.method.queue == queue
    assert declare_ok.method.message_count == 0
    assert declare_ok.method.consumer_count == 0
    ch.basic_publish(exchange="", routing_key=queue, body="Hello World!")
    producer.close()

    # receive.py (separate connection, after the producer is gone)
    consumer = connect()
    ch = consumer.channel()
    ch.queue_declare(queue=queue)  # idempotent redeclare
    received = []

    def callback(ch, method, properties, body):
        received.append((method, body))
        ch.stop_consuming()

    ch.basic_consume(queue=queue, on_message_callback=callback, auto_ack=True)
    consumer.call_later(10, ch.stop_consuming)  # safety net: never hang
    ch.start_consuming()

    assert len(received) == 1
    method, body = received[0]
    assert body == b"Hello World!"
    assert method.exchange == ""
    assert method.routing_key == queue
    assert method.redelivered is False

    # auto_ack: nothing left behind
    assert ch.queue_declare(queue=queue, passive=True).method.message_count == 0


@pytest.mark.timeout(30)
def test_message_count_and_order(connection, channel, names):
    queue = names.queue("order")
    channel.queue_declare(queue=queue)
    bodies = [f"msg-{i}".encode() for i in range(50)]
    for b in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=b)
    assert wait_message_count(connection, channel, queue, 50) == 50

    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append(b), auto_ack=True)
    assert pump(connection, lambda: len(got) == 50, 10), got
    assert got == bodies  # FIFO


@pytest.mark.timeout(30)
def test_binary_and_large_bodies_roundtrip(connection, channel, names):
    """Bodies are opaque bytes; bodies larger than frame_max are split into
    several body frames and must be reassembled exactly."""
    queue = names.queue("bodies")
    channel.queue_declare(queue=queue)
    bodies = [
        b"",
        bytes(range(256)),
        "héllo wörld ✓".encode("utf-8"),
        bytes((i * 7 + 3) % 256 for i in range(300_000)),  # > 131072 frame_max
        b"x" * (1024 * 1024 + 17),
    ]
    for b in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=b)
    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append(b), auto_ack=True)
    assert pump(connection, lambda: len(got) == len(bodies), 15)
    assert [len(b) for b in got] == [len(b) for b in bodies]
    assert got == bodies


@pytest.mark.timeout(30)
def test_basic_properties_roundtrip(connection, channel, names):
    queue = names.queue("props")
    channel.queue_declare(queue=queue)
    ts = 1_700_000_000
    headers = {
        "str": "value",
        "int": 42,
        "neg": -7,
        "big": 2**40,
        "bool": True,
        "decimal": decimal.Decimal("3.14"),
        "nested": {"a": 1, "b": "two"},
        "list": [1, "two", False],
        "bytes": b"\x00\x01binary",
        "time": datetime.datetime(2020, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc),
        "none": None,
    }
    props = pika.BasicProperties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=headers,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-1",
        reply_to="reply.queue",
        expiration="60000",
        message_id="msg-1",
        timestamp=ts,
        type="test.type",
        user_id="guest",  # must equal the authenticated user
        app_id="pytest",
    )
    channel.basic_publish(exchange="", routing_key=queue, body=b"{}", properties=props)
    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append((p, b)), auto_ack=True)
    assert pump(connection, lambda: len(got) == 1, 10)
    p, body = got[0]
    assert body == b"{}"
    assert p.content_type == "application/json"
    assert p.content_encoding == "utf-8"
    assert p.delivery_mode == 2
    assert p.priority == 5
    assert p.correlation_id == "corr-1"
    assert p.reply_to == "reply.queue"
    assert p.expiration == "60000"
    assert p.message_id == "msg-1"
    assert p.timestamp == ts
    assert p.type == "test.type"
    assert p.user_id == "guest"
    assert p.app_id == "pytest"
    assert p.headers == headers

"""Tutorial 3: publish/subscribe - a fanout exchange copies every message to
each bound, exclusive, server-named subscriber queue."""

import pika
import pytest

from amqp_util import collect


@pytest.mark.timeout(30)
def test_fanout_to_exclusive_server_named_queues(connect, names):
    exchange = names.exchange("logs")

    subscribers = []
    for _ in range(2):
        conn = connect()
        ch = conn.channel()
        ch.exchange_declare(exchange=exchange, exchange_type="fanout")
        result = ch.queue_declare(queue="", exclusive=True)
        queue = result.method.queue
        assert queue.startswith("amq.gen-"), queue
        ch.queue_bind(exchange=exchange, queue=queue)
        subscribers.append((conn, ch, queue))
    assert subscribers[0][2] != subscribers[1][2], "server-named queues must be unique"

    publisher = connect()
    pch = publisher.channel()
    pch.exchange_declare(exchange=exchange, exchange_type="fanout")  # idempotent
    messages = [f"info: Hello World! {i}".encode() for i in range(5)]
    for i, m in enumerate(messages):
        # the routing key is ignored by fanout exchanges
        pch.basic_publish(exchange=exchange, routing_key=f"ignored.{i}", body=m)

    for conn, ch, queue in subscribers:
        got = collect(conn, ch, {queue: len(messages)})
        assert [b for _, b in got[queue]] == messages
        assert [rk for rk, _ in got[queue]] == [f"ignored.{i}" for i in range(5)]


@pytest.mark.timeout(30)
def test_fanout_without_bindings_drops_messages(connection, channel, names):
    exchange = names.exchange("lonely")
    channel.exchange_declare(exchange=exchange, exchange_type="fanout")
    channel.basic_publish(exchange=exchange, routing_key="", body=b"nobody listens")
    # a queue bound afterwards does not see earlier messages
    queue = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(exchange=exchange, queue=queue)
    channel.basic_publish(exchange=exchange, routing_key="", body=b"late")
    got = collect(connection, channel, {queue: 1})
    assert got[queue] == [("", b"late")]


@pytest.mark.timeout(30)
def test_exclusive_queue_is_private_and_deleted_with_its_connection(connect):
    owner = connect()
    och = owner.channel()
    queue = och.queue_declare(queue="", exclusive=True).method.queue

    other = connect()
    ch = other.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue=queue, passive=True)
    assert exc.value.reply_code == 405  # RESOURCE_LOCKED

    owner.close()
    ch = other.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue=queue, passive=True)
    assert exc.value.reply_code == 404  # NOT_FOUND: gone with its owner

"""Durable queues and persistent messages, and the errors RabbitMQ reports:
404 NOT_FOUND, 406 PRECONDITION_FAILED, 403 ACCESS_REFUSED on bad login."""

import pika
import pytest

from amqp_util import get_next, wait_message_count


@pytest.mark.timeout(30)
def test_durable_queue_and_persistent_message(connection, channel, names):
    queue = names.queue("task_queue")
    ok = channel.queue_declare(queue=queue, durable=True)
    assert ok.method.queue == queue
    channel.basic_publish(
        exchange="", routing_key=queue, body=b"persist me",
        properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent),
    )
    assert wait_message_count(connection, channel, queue, 1) == 1
    # redeclaring with identical arguments is fine and reports the message
    assert channel.queue_declare(queue=queue, durable=True).method.message_count == 1
    method, props, body = channel.basic_get(queue=queue, auto_ack=True)
    assert body == b"persist me"
    assert props.delivery_mode == 2


@pytest.mark.timeout(30)
def test_passive_declare_of_unknown_queue_is_404(connection, names):
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue=names.queue("does-not-exist"), passive=True)
    assert exc.value.reply_code == 404
    assert exc.value.reply_text.startswith("NOT_FOUND")
    assert ch.is_closed
    # only the channel is closed; the connection keeps working
    assert connection.is_open
    ch2 = connection.channel()
    assert ch2.queue_declare(queue="", exclusive=True).method.queue.startswith("amq.gen-")


@pytest.mark.timeout(30)
def test_passive_declare_of_unknown_exchange_is_404(connection, names):
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.exchange_declare(exchange=names.exchange("nope"), exchange_type="direct", passive=True)
    assert exc.value.reply_code == 404


@pytest.mark.timeout(30)
def test_redeclare_queue_with_different_durable_flag_is_406(connection, names):
    queue = names.queue("hello")
    connection.channel().queue_declare(queue=queue)  # non-durable
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue=queue, durable=True)
    assert exc.value.reply_code == 406
    assert exc.value.reply_text.startswith("PRECONDITION_FAILED")
    # the original queue is untouched
    ok = connection.channel().queue_declare(queue=queue, passive=True)
    assert ok.method.queue == queue


@pytest.mark.timeout(30)
def test_redeclare_exchange_with_different_type_is_406(connection, names):
    exchange = names.exchange("logs")
    connection.channel().exchange_declare(exchange=exchange, exchange_type="fanout")
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.exchange_declare(exchange=exchange, exchange_type="direct")
    assert exc.value.reply_code == 406


@pytest.mark.timeout(30)
def test_publish_to_unknown_exchange_closes_channel_with_404(connection, names):
    ch = connection.channel()
    ch.basic_publish(exchange=names.exchange("missing"), routing_key="x", body=b"lost")
    # basic.publish has no reply; the channel close arrives before the next reply
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue="", exclusive=True)
    assert exc.value.reply_code == 404
    assert connection.is_open


@pytest.mark.timeout(30)
def test_queue_purge_and_delete(connection, channel, names):
    queue = names.queue("purge")
    channel.queue_declare(queue=queue)
    for i in range(3):
        channel.basic_publish(exchange="", routing_key=queue, body=str(i))
    assert wait_message_count(connection, channel, queue, 3) == 3
    assert channel.queue_purge(queue=queue).method.message_count == 3
    assert channel.queue_declare(queue=queue, passive=True).method.message_count == 0
    channel.basic_publish(exchange="", routing_key=queue, body=b"one more")
    assert wait_message_count(connection, channel, queue, 1) == 1
    assert channel.queue_delete(queue=queue).method.message_count == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        channel.queue_declare(queue=queue, passive=True)
    assert exc.value.reply_code == 404


@pytest.mark.timeout(30)
def test_queue_delete_if_empty_refuses_non_empty_queue(connection, names):
    queue = names.queue("if_empty")
    ch = connection.channel()
    ch.queue_declare(queue=queue)
    ch.basic_publish(exchange="", routing_key=queue, body=b"x")
    assert wait_message_count(connection, ch, queue, 1) == 1
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_delete(queue=queue, if_empty=True)
    assert exc.value.reply_code == 406
    ok = connection.channel().queue_declare(queue=queue, passive=True)
    assert ok.method.message_count == 1


@pytest.mark.timeout(30)
def test_wrong_password_is_refused_and_broker_stays_up(broker):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as exc:
        pika.BlockingConnection(broker.params(password="not-the-password"))
    assert "403" in str(exc.value) and "ACCESS_REFUSED" in str(exc.value), str(exc.value)

    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(broker.params(username="nobody", password="guest"))

    conn = pika.BlockingConnection(broker.params())
    try:
        ch = conn.channel()
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        ch.basic_publish(exchange="", routing_key=q, body=b"still alive")
        _, _, body = get_next(conn, ch, q, auto_ack=True)
        assert body == b"still alive"
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_unknown_vhost_is_refused(broker):
    params = broker.params()
    params.virtual_host = "no-such-vhost"
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as exc:
        pika.BlockingConnection(params)
    assert "530" in str(exc.value), str(exc.value)  # NOT_ALLOWED

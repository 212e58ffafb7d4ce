"""Publisher confirms, mandatory returns, basic.get and reject/nack."""

import pika
import pytest

from amqp_util import get_next, message_count, pump, wait_message_count


@pytest.mark.timeout(30)
def test_publisher_confirms_ack_routable_publish(channel, names):
    queue = names.queue("confirmed")
    channel.queue_declare(queue=queue)
    channel.confirm_delivery()
    for i in range(10):
        # raises NackError/UnroutableError on failure, returns None when acked
        assert channel.basic_publish(exchange="", routing_key=queue, body=f"c{i}") is None
    assert channel.queue_declare(queue=queue, passive=True).method.message_count == 10


@pytest.mark.timeout(30)
def test_mandatory_unroutable_publish_raises_unroutable_error(channel, names):
    channel.confirm_delivery()
    missing = names.queue("nobody-home")
    with pytest.raises(pika.exceptions.UnroutableError) as exc:
        channel.basic_publish(exchange="", routing_key=missing, body=b"return me", mandatory=True)
    [returned] = exc.value.messages
    assert returned.method.reply_code == 312
    assert returned.method.reply_text == "NO_ROUTE"
    assert returned.method.exchange == ""
    assert returned.method.routing_key == missing
    assert returned.body == b"return me"

    # not mandatory: silently dropped, still confirmed
    channel.basic_publish(exchange="", routing_key=missing, body=b"drop me")
    # and the channel is still usable
    queue = names.queue("exists")
    channel.queue_declare(queue=queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"ok", mandatory=True)
    assert channel.queue_declare(queue=queue, passive=True).method.message_count == 1


@pytest.mark.timeout(30)
def test_mandatory_return_without_confirms_invokes_return_callback(connection, channel, names):
    exchange = names.exchange("direct")
    channel.exchange_declare(exchange=exchange, exchange_type="direct")
    returned = []
    channel.add_on_return_callback(lambda ch, method, props, body: returned.append((method, props, body)))
    channel.basic_publish(exchange=exchange, routing_key="unbound", body=b"back",
                          properties=pika.BasicProperties(message_id="m-1"), mandatory=True)
    assert pump(connection, lambda: len(returned) == 1, 5)
    method, props, body = returned[0]
    assert (method.reply_code, method.reply_text) == (312, "NO_ROUTE")
    assert (method.exchange, method.routing_key) == (exchange, "unbound")
    assert props.message_id == "m-1"
    assert body == b"back"


@pytest.mark.timeout(30)
def test_basic_get_and_get_empty(connection, channel, names):
    queue = names.queue("get")
    channel.queue_declare(queue=queue)
    assert channel.basic_get(queue=queue) == (None, None, None)  # Basic.GetEmpty

    for body in [b"first", b"second"]:
        channel.basic_publish(exchange="", routing_key=queue, body=body)
    assert wait_message_count(connection, channel, queue, 2) == 2
    method, props, body = channel.basic_get(queue=queue)
    assert body == b"first"
    assert method.message_count == 1  # messages left after this one
    assert method.redelivered is False
    assert method.routing_key == queue
    channel.basic_ack(delivery_tag=method.delivery_tag)

    method, props, body = channel.basic_get(queue=queue, auto_ack=True)
    assert body == b"second"
    assert method.message_count == 0
    assert channel.basic_get(queue=queue) == (None, None, None)


@pytest.mark.timeout(30)
def test_basic_reject_requeue_sets_redelivered(connection, channel, names):
    queue = names.queue("reject")
    channel.queue_declare(queue=queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"try again")

    method, _, body = get_next(connection, channel, queue)
    assert body == b"try again" and method.redelivered is False
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=True)

    method, _, body = get_next(connection, channel, queue)
    assert body == b"try again"
    assert method.redelivered is True
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)  # discard
    assert channel.basic_get(queue=queue) == (None, None, None)
    assert channel.queue_declare(queue=queue, passive=True).method.message_count == 0


@pytest.mark.timeout(30)
def test_basic_nack_multiple_and_ack_multiple(connection, channel, names):
    queue = names.queue("nack")
    channel.queue_declare(queue=queue)
    for i in range(4):
        channel.basic_publish(exchange="", routing_key=queue, body=f"n{i}")
    got = []
    tag = channel.basic_consume(queue, lambda ch, m, p, b: got.append((m, b)))
    assert pump(connection, lambda: len(got) == 4, 5)
    channel.basic_cancel(tag)
    assert [b for _, b in got] == [b"n0", b"n1", b"n2", b"n3"]

    # nack the first three at once (multiple=True) back onto the queue; ack the last
    channel.basic_nack(delivery_tag=got[2][0].delivery_tag, multiple=True, requeue=True)
    channel.basic_ack(delivery_tag=got[3][0].delivery_tag)
    assert wait_message_count(connection, channel, queue, 3) == 3

    again = [get_next(connection, channel, queue) for _ in range(3)]
    assert sorted(b for _, _, b in again) == [b"n0", b"n1", b"n2"]
    assert all(m.redelivered for m, _, _ in again)
    channel.basic_ack(delivery_tag=again[-1][0].delivery_tag, multiple=True)
    assert channel.basic_get(queue=queue) == (None, None, None)
    # all acked: closing the channel requeues nothing
    channel.close()
    assert message_count(connection.channel(), queue) == 0


@pytest.mark.timeout(30)
def test_ack_of_unknown_delivery_tag_is_406(connection, names):
    ch = connection.channel()
    ch.basic_ack(delivery_tag=999)
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        ch.queue_declare(queue="", exclusive=True)
    assert exc.value.reply_code == 406  # PRECONDITION_FAILED - unknown delivery tag

"""RabbitMQ's AMQP 0-9-1 extensions, as RabbitMQ documents them.

Dead-lettering (dlx.md) with the x-death header, TTLs (ttl.md), queue length
limits (maxlength.md), priority queues (priority.md), consumer priorities
(consumer-priority.md), single active consumer and exclusive consumers
(consumers.md), alternate exchanges (ae.md), the quorum-queue delivery limit,
x-queue-type, argument validation (406 naming the argument) and
exchange-to-exchange bindings (e2e.md).

At the end, extensions Warren does not implement yet (they fail until it
does): direct reply-to (direct-reply-to.md), the per-queue consumer timeout
(consumers.md, RabbitMQ 4.x notify_consumer: basic.cancel, channel kept) and
the delayed message exchange (rabbitmq-delayed-message-exchange README).
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pika
import pytest

from amqp_util import get_next, message_count, pump, wait_message_count

# The keys of one x-death entry (dlx.md, "Dead-Lettered Effects on Messages").
X_DEATH_KEYS = {"count", "reason", "queue", "time", "exchange", "routing-keys"}


# --------------------------------------------------------------- helpers


def dead_letter_target(channel, names, kind: str = "fanout", key: str = ""):
    """A dead-letter exchange with one queue bound to it: (dlx, dlq)."""
    dlx = names.exchange("dlx")
    dlq = names.queue("dlq")
    channel.exchange_declare(exchange=dlx, exchange_type=kind)
    channel.queue_declare(queue=dlq)
    channel.queue_bind(queue=dlq, exchange=dlx, routing_key=key)
    return dlx, dlq


def assert_death(entry: dict, *, queue: str, reason: str, exchange: str, routing_keys: list,
                 count: int = 1, original_expiration: str | None = None) -> None:
    keys = set(X_DEATH_KEYS)
    if original_expiration is not None:
        keys.add("original-expiration")
    assert set(entry) == keys, entry
    assert entry["queue"] == queue, entry
    assert entry["reason"] == reason, entry
    assert entry["exchange"] == exchange, entry
    assert entry["routing-keys"] == routing_keys, entry
    # 'long' in AMQP (signed 64-bit): pika decodes it as an int
    assert entry["count"] == count and isinstance(entry["count"], int), entry
    if original_expiration is not None:
        assert entry["original-expiration"] == original_expiration, entry
    # an AMQP timestamp (seconds), close to now
    assert isinstance(entry["time"], datetime), entry
    assert abs(entry["time"].timestamp() - time.time()) < 60, entry


def first_death(headers: dict) -> tuple:
    return (headers.get("x-first-death-reason"), headers.get("x-first-death-queue"),
            headers.get("x-first-death-exchange"))


def last_death(headers: dict) -> tuple:
    return (headers.get("x-last-death-reason"), headers.get("x-last-death-queue"),
            headers.get("x-last-death-exchange"))


def publish_confirmed(channel, queue: str, bodies, **props) -> None:
    """Publish to the default exchange on a confirm channel (each publish is
    enqueued before basic_publish returns)."""
    for b in bodies:
        channel.basic_publish(exchange="", routing_key=queue, body=b,
                              properties=pika.BasicProperties(**props) if props else None)


def get_all(channel, queue: str) -> list:
    out = []
    while True:
        method, _props, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def expect_channel_error(connection, code: int, action) -> str:
    """Run ``action(ch)`` on a fresh channel: it must close that channel with
    ``code``, and the connection must stay usable. Returns the reply text."""
    ch = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as exc:
        action(ch)
        # an asynchronous failure (basic.publish) surfaces on the next sync call
        ch.queue_declare(queue="", exclusive=True)
    assert exc.value.reply_code == code, exc.value
    assert ch.is_closed
    assert connection.is_open
    assert connection.channel().queue_declare(queue="", exclusive=True).method.queue
    return exc.value.reply_text


# --------------------------------------------------------------- dead-lettering


@pytest.mark.timeout(30)
def test_reject_without_requeue_dead_letters_with_x_death(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("work")
    channel.queue_declare(queue=queue, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish(exchange="", routing_key=queue, body=b"bad",
                          properties=pika.BasicProperties(headers={"app": "kept"}, message_id="m1"))
    method, _, body = get_next(connection, channel, queue)
    assert body == b"bad"
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)

    method, props, body = get_next(connection, channel, dlq, auto_ack=True)
    assert body == b"bad"
    # republished to the DLX with the original routing key
    assert (method.exchange, method.routing_key) == (dlx, queue)
    assert props.message_id == "m1"
    h = props.headers
    assert h["app"] == "kept"
    [death] = h["x-death"]
    assert_death(death, queue=queue, reason="rejected", exchange="", routing_keys=[queue])
    assert first_death(h) == ("rejected", queue, "")
    assert last_death(h) == ("rejected", queue, "")
    assert message_count(channel, queue) == 0


@pytest.mark.timeout(30)
def test_nack_multiple_without_requeue_dead_letters_each(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("work")
    channel.queue_declare(queue=queue, arguments={"x-dead-letter-exchange": dlx})
    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append((m.delivery_tag, b)))
    for b in (b"n1", b"n2", b"n3"):
        channel.basic_publish(exchange="", routing_key=queue, body=b)
    assert pump(connection, lambda: len(got) == 3, 5), got
    channel.basic_nack(delivery_tag=got[-1][0], multiple=True, requeue=False)
    assert wait_message_count(connection, channel, dlq, 3) == 3
    for expected in (b"n1", b"n2", b"n3"):
        _, props, body = channel.basic_get(queue=dlq, auto_ack=True)
        assert body == expected
        assert props.headers["x-death"][0]["reason"] == "rejected"


@pytest.mark.timeout(30)
def test_dead_letter_routing_key_replaces_the_routing_key(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names, kind="direct", key="dead")
    source = names.exchange("src")
    channel.exchange_declare(exchange=source, exchange_type="direct")
    queue = names.queue("work")
    channel.queue_declare(queue=queue, arguments={"x-dead-letter-exchange": dlx,
                                                   "x-dead-letter-routing-key": "dead"})
    channel.queue_bind(queue=queue, exchange=source, routing_key="orig")
    channel.basic_publish(exchange=source, routing_key="orig", body=b"rk")
    method, _, _ = get_next(connection, channel, queue)
    channel.basic_nack(delivery_tag=method.delivery_tag, requeue=False)

    method, props, body = get_next(connection, channel, dlq, auto_ack=True)
    assert body == b"rk"
    assert (method.exchange, method.routing_key) == (dlx, "dead")
    # x-death records where the message was published, with its original key
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="rejected", exchange=source, routing_keys=["orig"])
    assert first_death(props.headers) == ("rejected", queue, source)


@pytest.mark.timeout(30)
def test_queue_ttl_expiry_dead_letters(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("ttl")
    channel.queue_declare(queue=queue, arguments={"x-message-ttl": 100, "x-dead-letter-exchange": dlx})
    channel.basic_publish(exchange="", routing_key=queue, body=b"stale")
    method, props, body = get_next(connection, channel, dlq, auto_ack=True, timeout=5)
    assert body == b"stale"
    assert props.expiration is None
    [death] = props.headers["x-death"]
    # queue TTL: no per-message expiration to record
    assert_death(death, queue=queue, reason="expired", exchange="", routing_keys=[queue])
    assert first_death(props.headers) == ("expired", queue, "")
    assert message_count(channel, queue) == 0


@pytest.mark.timeout(30)
def test_per_message_expiry_dead_letters_with_original_expiration(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("msg-ttl")
    channel.queue_declare(queue=queue, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish(exchange="", routing_key=queue, body=b"short-lived",
                          properties=pika.BasicProperties(expiration="150"))
    method, props, body = get_next(connection, channel, dlq, auto_ack=True, timeout=5)
    assert body == b"short-lived"
    # the expiration is removed so the copy does not expire again...
    assert props.expiration is None
    # ...and recorded in the x-death entry
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="expired", exchange="", routing_keys=[queue],
                 original_expiration="150")


@pytest.mark.timeout(30)
def test_rejected_message_with_expiration_keeps_original_expiration(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("work")
    channel.queue_declare(queue=queue, arguments={"x-dead-letter-exchange": dlx})
    channel.basic_publish(exchange="", routing_key=queue, body=b"e",
                          properties=pika.BasicProperties(expiration="60000"))
    method, props, _ = get_next(connection, channel, queue)
    assert props.expiration == "60000"
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    _, props, _ = get_next(connection, channel, dlq, auto_ack=True)
    assert props.expiration is None
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="rejected", exchange="", routing_keys=[queue],
                 original_expiration="60000")


@pytest.mark.timeout(30)
def test_max_length_overflow_dead_letters_the_head(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("bounded")
    channel.queue_declare(queue=queue, arguments={"x-max-length": 2, "x-dead-letter-exchange": dlx})
    channel.confirm_delivery()
    publish_confirmed(channel, queue, [b"m1", b"m2", b"m3"])
    assert get_all(channel, queue) == [b"m2", b"m3"]
    _, props, body = get_next(connection, channel, dlq, auto_ack=True)
    assert body == b"m1"
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="maxlen", exchange="", routing_keys=[queue])


@pytest.mark.timeout(30)
def test_retry_loop_increments_x_death_count(connection, channel, names):
    """work -(reject)-> retry exchange -> wait queue -(TTL)-> default exchange -> work."""
    work = names.queue("work")
    wait = names.queue("wait")
    retry = names.exchange("retry")
    channel.exchange_declare(exchange=retry, exchange_type="fanout")
    channel.queue_declare(queue=work, arguments={"x-dead-letter-exchange": retry})
    channel.queue_declare(queue=wait, arguments={"x-message-ttl": 50, "x-dead-letter-exchange": "",
                                                 "x-dead-letter-routing-key": work})
    channel.queue_bind(queue=wait, exchange=retry)
    channel.basic_publish(exchange="", routing_key=work, body=b"job",
                          properties=pika.BasicProperties(headers={"job-id": 7}))

    deliveries = []
    for _ in range(4):
        method, props, body = get_next(connection, channel, work, timeout=5)
        assert body == b"job", f"attempt {len(deliveries) + 1}: {body!r}"
        deliveries.append((method, props))
        channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)

    first_method, first_props = deliveries[0]
    assert "x-death" not in (first_props.headers or {}) and first_props.headers["job-id"] == 7
    for attempt, (method, props) in enumerate(deliveries[1:], start=1):
        h = props.headers
        assert h["job-id"] == 7
        # back through the wait queue's DLX (the default exchange)
        assert (method.exchange, method.routing_key) == ("", work)
        deaths = h["x-death"]
        assert len(deaths) == 2, deaths
        # most recent first; one entry per (queue, reason), counted
        assert_death(deaths[0], queue=wait, reason="expired", exchange=retry, routing_keys=[work], count=attempt)
        assert_death(deaths[1], queue=work, reason="rejected", exchange="", routing_keys=[work], count=attempt)
        assert first_death(h) == ("rejected", work, "")
        assert last_death(h) == ("expired", wait, retry)


@pytest.mark.timeout(30)
def test_x_death_time_is_the_first_death_of_its_entry(connection, channel, names):
    """dlx.md: an entry's 'time' is when the message was first dead-lettered
    from that queue for that reason; later deaths only increase 'count'."""
    a = names.queue("a")
    b = names.queue("b")
    channel.queue_declare(queue=a, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": b})
    channel.queue_declare(queue=b, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": a})
    channel.basic_publish(exchange="", routing_key=a, body=b"ping-pong")
    method, _, _ = get_next(connection, channel, a)
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    method, props, _ = get_next(connection, channel, b)
    [death_a] = props.headers["x-death"]
    first_time = death_a["time"]
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    method, _, _ = get_next(connection, channel, a)
    time.sleep(1.1)  # timestamps have a resolution of one second
    channel.basic_reject(delivery_tag=method.delivery_tag, requeue=False)
    _, props, _ = get_next(connection, channel, b, auto_ack=True)
    entries = {d["queue"]: d for d in props.headers["x-death"]}
    assert props.headers["x-death"][0]["queue"] == a
    assert entries[a]["count"] == 2
    assert entries[b]["count"] == 1
    assert entries[a]["time"] == first_time, (entries[a]["time"], first_time)


# --------------------------------------------------------------- TTL and expiry


@pytest.mark.timeout(30)
def test_queue_message_ttl_discards_old_messages(connection, channel, names):
    queue = names.queue("ttl")
    channel.queue_declare(queue=queue, arguments={"x-message-ttl": 150})
    channel.basic_publish(exchange="", routing_key=queue, body=b"old")
    time.sleep(0.4)
    channel.basic_publish(exchange="", routing_key=queue, body=b"new")
    assert wait_message_count(connection, channel, queue, 1) == 1
    assert get_all(channel, queue) == [b"new"]


@pytest.mark.timeout(30)
def test_per_message_expiration(connection, channel, names):
    queue = names.queue("exp")
    channel.queue_declare(queue=queue)
    channel.basic_publish(exchange="", routing_key=queue, body=b"short",
                          properties=pika.BasicProperties(expiration="100"))
    channel.basic_publish(exchange="", routing_key=queue, body=b"long",
                          properties=pika.BasicProperties(expiration="60000"))
    time.sleep(0.35)
    method, props, body = get_next(connection, channel, queue, auto_ack=True)
    assert body == b"long"
    # a live message keeps its expiration property
    assert props.expiration == "60000"
    assert channel.basic_get(queue=queue, auto_ack=True) == (None, None, None)


@pytest.mark.timeout(30)
def test_per_message_expiration_shorter_than_queue_ttl_wins(connection, channel, names):
    queue = names.queue("both")
    channel.queue_declare(queue=queue, arguments={"x-message-ttl": 60000})
    channel.basic_publish(exchange="", routing_key=queue, body=b"short",
                          properties=pika.BasicProperties(expiration="50"))
    channel.basic_publish(exchange="", routing_key=queue, body=b"queue-ttl")
    time.sleep(0.3)
    assert get_all(channel, queue) == [b"queue-ttl"]


@pytest.mark.timeout(30)
@pytest.mark.parametrize("expiration", ["soon", "-5", "1.5"])
def test_invalid_expiration_is_406(connection, names, expiration):
    queue = names.queue("bad-exp")

    def action(ch):
        ch.queue_declare(queue=queue)
        ch.basic_publish(exchange="", routing_key=queue, body=b"x",
                         properties=pika.BasicProperties(expiration=expiration))

    text = expect_channel_error(connection, 406, action)
    assert text.startswith("PRECONDITION_FAILED"), text
    assert "expiration" in text, text
    ch = connection.channel()
    assert message_count(ch, queue) == 0


@pytest.mark.timeout(30)
def test_queue_expires_after_being_unused(connection, channel, names):
    queue = names.queue("expiring")
    channel.queue_declare(queue=queue, arguments={"x-expires": 300})
    time.sleep(0.9)

    def passive(ch):
        ch.queue_declare(queue=queue, passive=True)

    text = expect_channel_error(connection, 404, passive)
    assert text.startswith("NOT_FOUND"), text


@pytest.mark.timeout(30)
def test_queue_with_a_consumer_does_not_expire(connection, channel, names):
    queue = names.queue("in-use")
    channel.queue_declare(queue=queue, arguments={"x-expires": 200})
    channel.basic_consume(queue, lambda *a: None, auto_ack=True)
    time.sleep(0.6)
    other = connection.channel()
    assert other.queue_declare(queue=queue, passive=True).method.consumer_count == 1


# --------------------------------------------------------------- length limits


@pytest.mark.timeout(30)
def test_max_length_drops_from_the_head(channel, names):
    queue = names.queue("max-len")
    channel.queue_declare(queue=queue, arguments={"x-max-length": 3})
    channel.confirm_delivery()
    publish_confirmed(channel, queue, [f"m{i}".encode() for i in range(1, 6)])
    assert message_count(channel, queue) == 3
    assert get_all(channel, queue) == [b"m3", b"m4", b"m5"]


@pytest.mark.timeout(30)
def test_max_length_bytes_counts_body_bytes(channel, names):
    queue = names.queue("max-bytes")
    channel.queue_declare(queue=queue, arguments={"x-max-length-bytes": 10})
    channel.confirm_delivery()
    publish_confirmed(channel, queue, [b"aaaa", b"bbbb", b"cccc"])
    assert get_all(channel, queue) == [b"bbbb", b"cccc"]


@pytest.mark.timeout(30)
def test_overflow_reject_publish_nacks_the_publisher(channel, names):
    queue = names.queue("reject-publish")
    channel.queue_declare(queue=queue, arguments={"x-max-length": 2, "x-overflow": "reject-publish"})
    channel.confirm_delivery()
    publish_confirmed(channel, queue, [b"1", b"2"])
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish(exchange="", routing_key=queue, body=b"3")
    # the queue kept the old messages; once there is room, publishing works again
    method, _, body = channel.basic_get(queue=queue, auto_ack=True)
    assert body == b"1"
    channel.basic_publish(exchange="", routing_key=queue, body=b"4")
    assert get_all(channel, queue) == [b"2", b"4"]


@pytest.mark.timeout(30)
def test_overflow_reject_publish_dlx_nacks_and_dead_letters(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("reject-dlx")
    channel.queue_declare(queue=queue, arguments={"x-max-length": 1, "x-overflow": "reject-publish-dlx",
                                                   "x-dead-letter-exchange": dlx})
    channel.confirm_delivery()
    publish_confirmed(channel, queue, [b"kept"])
    with pytest.raises(pika.exceptions.NackError):
        channel.basic_publish(exchange="", routing_key=queue, body=b"refused")
    assert get_all(channel, queue) == [b"kept"]
    _, props, body = get_next(connection, channel, dlq, auto_ack=True)
    assert body == b"refused"
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="maxlen", exchange="", routing_keys=[queue])


# --------------------------------------------------------------- priorities


@pytest.mark.timeout(30)
def test_priority_queue_delivers_higher_priorities_first(channel, names):
    queue = names.queue("prio")
    channel.queue_declare(queue=queue, arguments={"x-max-priority": 5})
    channel.confirm_delivery()
    for body, prio in [(b"p1", 1), (b"none", None), (b"p5", 5), (b"p9", 9), (b"p3", 3), (b"p5b", 5),
                       (b"p0", 0)]:
        props = pika.BasicProperties(priority=prio) if prio is not None else None
        channel.basic_publish(exchange="", routing_key=queue, body=body, properties=props)
    # 9 > max: treated as 5 (FIFO among the 5s); no priority = 0
    assert get_all(channel, queue) == [b"p5", b"p9", b"p5b", b"p3", b"p1", b"none", b"p0"]


@pytest.mark.timeout(30)
def test_priority_queue_with_a_consumer(connection, channel, names):
    queue = names.queue("prio-consumed")
    channel.queue_declare(queue=queue, arguments={"x-max-priority": 10})
    channel.confirm_delivery()
    for prio in [0, 3, 10, 7]:
        channel.basic_publish(exchange="", routing_key=queue, body=f"m{prio}".encode(),
                              properties=pika.BasicProperties(priority=prio))
    consumer_ch = connection.channel()
    consumer_ch.basic_qos(prefetch_count=1)
    got = []

    def on_message(ch, method, props, body):
        got.append(body)
        ch.basic_ack(method.delivery_tag)

    consumer_ch.basic_consume(queue, on_message)
    assert pump(connection, lambda: len(got) == 4, 5), got
    assert got == [b"m10", b"m7", b"m3", b"m0"]


@pytest.mark.timeout(30)
def test_consumer_priority_serves_the_higher_priority_consumer_first(connection, channel, names):
    queue = names.queue("cprio")
    channel.queue_declare(queue=queue)
    low_ch, high_ch = connection.channel(), connection.channel()
    low_ch.basic_qos(prefetch_count=10)
    high_ch.basic_qos(prefetch_count=2)
    low, high = [], []
    low_ch.basic_consume(queue, lambda ch, m, p, b: low.append((m.delivery_tag, b)))
    high_ch.basic_consume(queue, lambda ch, m, p, b: high.append((m.delivery_tag, b)),
                          arguments={"x-priority": 10})
    # While the high-priority consumer has credit it gets everything...
    for i in range(2):
        channel.basic_publish(exchange="", routing_key=queue, body=f"a{i}".encode())
    assert pump(connection, lambda: len(high) == 2, 5)
    assert low == []
    # ...and only when it is blocked by its prefetch do messages go to the low one.
    for i in range(3):
        channel.basic_publish(exchange="", routing_key=queue, body=f"b{i}".encode())
    assert pump(connection, lambda: len(low) == 3, 5), (high, low)
    assert [b for _, b in high] == [b"a0", b"a1"]
    assert [b for _, b in low] == [b"b0", b"b1", b"b2"]
    # Credit again: the high-priority consumer is preferred again.
    high_ch.basic_ack(delivery_tag=high[-1][0], multiple=True)
    channel.basic_publish(exchange="", routing_key=queue, body=b"c0")
    assert pump(connection, lambda: len(high) == 3, 5), (high, low)
    assert high[-1][1] == b"c0" and len(low) == 3


@pytest.mark.timeout(30)
def test_single_active_consumer_fails_over_on_cancel(connection, channel, names):
    queue = names.queue("sac")
    channel.queue_declare(queue=queue, arguments={"x-single-active-consumer": True})
    ch_a, ch_b = connection.channel(), connection.channel()
    got_a, got_b = [], []
    tag_a = ch_a.basic_consume(queue, lambda ch, m, p, b: got_a.append(b), auto_ack=True)
    ch_b.basic_consume(queue, lambda ch, m, p, b: got_b.append(b), auto_ack=True)
    assert channel.queue_declare(queue=queue, passive=True).method.consumer_count == 2
    for i in range(4):
        channel.basic_publish(exchange="", routing_key=queue, body=f"m{i}".encode())
    assert pump(connection, lambda: len(got_a) == 4, 5), (got_a, got_b)
    pump(connection, lambda: False, 0.3)
    assert got_b == []
    # the active consumer goes away: the next one takes over, in order
    ch_a.basic_cancel(tag_a)
    for i in range(4, 7):
        channel.basic_publish(exchange="", routing_key=queue, body=f"m{i}".encode())
    assert pump(connection, lambda: len(got_b) == 3, 5), (got_a, got_b)
    assert got_b == [b"m4", b"m5", b"m6"]
    assert len(got_a) == 4


@pytest.mark.timeout(30)
def test_single_active_consumer_takes_over_waiting_messages(connection, channel, names):
    queue = names.queue("sac-backlog")
    channel.queue_declare(queue=queue, arguments={"x-single-active-consumer": True})
    ch_a, ch_b = connection.channel(), connection.channel()
    ch_a.basic_qos(prefetch_count=1)
    got_a, got_b = [], []
    tag_a = ch_a.basic_consume(queue, lambda ch, m, p, b: got_a.append((m.delivery_tag, b)))
    ch_b.basic_consume(queue, lambda ch, m, p, b: got_b.append(b), auto_ack=True)
    for i in range(3):
        channel.basic_publish(exchange="", routing_key=queue, body=f"m{i}".encode())
    assert pump(connection, lambda: len(got_a) == 1, 5)
    # the active consumer is at its prefetch: the others are still not used
    pump(connection, lambda: False, 0.3)
    assert got_b == [] and message_count(channel, queue) == 2
    # cancelling does not requeue its unacked delivery; closing its channel does
    ch_a.basic_cancel(tag_a)
    assert pump(connection, lambda: len(got_b) == 2, 5), got_b
    assert got_b == [b"m1", b"m2"]
    ch_a.close()
    assert pump(connection, lambda: len(got_b) == 3, 5), got_b
    assert got_b[-1] == b"m0"


@pytest.mark.timeout(30)
def test_exclusive_consumer_on_single_active_consumer_queue_is_403(connection, channel, names):
    """consumers.md: an exclusive consumer on a SAC queue is an error."""
    queue = names.queue("sac-excl")
    channel.queue_declare(queue=queue, arguments={"x-single-active-consumer": True})

    def consume(ch):
        ch.basic_consume(queue, lambda *a: None, exclusive=True)

    text = expect_channel_error(connection, 403, consume)
    assert text.startswith("ACCESS_REFUSED"), text


@pytest.mark.timeout(30)
def test_exclusive_consumer_conflicts_are_403(connection, channel, names):
    queue = names.queue("excl")
    channel.queue_declare(queue=queue)
    owner = connection.channel()
    owner.basic_consume(queue, lambda *a: None, exclusive=True)

    def second(ch):
        ch.basic_consume(queue, lambda *a: None)

    text = expect_channel_error(connection, 403, second)
    assert text.startswith("ACCESS_REFUSED") and "exclusive" in text, text

    other = names.queue("shared")
    channel.queue_declare(queue=other)
    channel.basic_consume(other, lambda *a: None)

    def exclusive(ch):
        ch.basic_consume(other, lambda *a: None, exclusive=True)

    expect_channel_error(connection, 403, exclusive)


# --------------------------------------------------------------- alternate exchange


@pytest.mark.timeout(30)
def test_alternate_exchange_receives_unroutable_messages(connection, channel, names):
    ae = names.exchange("ae")
    main = names.exchange("main")
    unrouted = names.queue("unrouted")
    routed = names.queue("routed")
    channel.exchange_declare(exchange=ae, exchange_type="fanout")
    channel.queue_declare(queue=unrouted)
    channel.queue_bind(queue=unrouted, exchange=ae)
    channel.exchange_declare(exchange=main, exchange_type="direct", arguments={"alternate-exchange": ae})
    channel.queue_declare(queue=routed)
    channel.queue_bind(queue=routed, exchange=main, routing_key="known")
    channel.confirm_delivery()
    returned = []
    channel.add_on_return_callback(lambda *a: returned.append(a))
    # mandatory: routed via the AE, so no basic.return (pika would raise UnroutableError)
    channel.basic_publish(exchange=main, routing_key="unknown", body=b"to-ae", mandatory=True)
    channel.basic_publish(exchange=main, routing_key="known", body=b"direct", mandatory=True)
    assert returned == []
    method, _, body = get_next(connection, channel, unrouted, auto_ack=True)
    assert body == b"to-ae"
    # it keeps its exchange and routing key
    assert (method.exchange, method.routing_key) == (main, "unknown")
    assert get_all(channel, routed) == [b"direct"]
    assert get_all(channel, unrouted) == []


@pytest.mark.timeout(30)
def test_alternate_exchange_that_cannot_route_either_returns_mandatory(channel, names):
    ae = names.exchange("ae-empty")
    main = names.exchange("main")
    channel.exchange_declare(exchange=ae, exchange_type="direct")
    channel.exchange_declare(exchange=main, exchange_type="direct", arguments={"alternate-exchange": ae})
    channel.confirm_delivery()
    with pytest.raises(pika.exceptions.UnroutableError):
        channel.basic_publish(exchange=main, routing_key="nowhere", body=b"lost", mandatory=True)


# --------------------------------------------------------------- delivery limit, queue types


@pytest.mark.timeout(30)
def test_delivery_limit_dead_letters_poison_message(connection, channel, names):
    dlx, dlq = dead_letter_target(channel, names)
    queue = names.queue("poison")
    channel.queue_declare(queue=queue, durable=True, arguments={
        "x-queue-type": "quorum", "x-delivery-limit": 2, "x-dead-letter-exchange": dlx})
    channel.basic_publish(exchange="", routing_key=queue, body=b"poison")
    redelivered = []
    for _ in range(3):
        method, _, body = get_next(connection, channel, queue)
        assert body == b"poison"
        redelivered.append(method.redelivered)
        channel.basic_reject(delivery_tag=method.delivery_tag, requeue=True)
    assert redelivered == [False, True, True]
    # returned more times than the limit: dead-lettered, not redelivered
    _, props, body = get_next(connection, channel, dlq, auto_ack=True)
    assert body == b"poison"
    [death] = props.headers["x-death"]
    assert_death(death, queue=queue, reason="delivery_limit", exchange="", routing_keys=[queue])
    assert first_death(props.headers) == ("delivery_limit", queue, "")
    assert channel.basic_get(queue=queue) == (None, None, None)


@pytest.mark.timeout(30)
def test_classic_and_quorum_queue_types_are_accepted(connection, channel, names):
    classic = names.queue("classic")
    channel.queue_declare(queue=classic, arguments={"x-queue-type": "classic"})
    # the RabbitMQ tutorial's new_task.py
    quorum = names.queue("task_queue")
    channel.queue_declare(queue=quorum, durable=True, arguments={"x-queue-type": "quorum"})
    channel.basic_publish(exchange="", routing_key=quorum, body=b"Hello World!",
                          properties=pika.BasicProperties(delivery_mode=pika.DeliveryMode.Persistent))
    # an equivalent redeclare is fine
    ok = channel.queue_declare(queue=quorum, durable=True, arguments={"x-queue-type": "quorum"})
    assert ok.method.queue == quorum
    method, props, body = get_next(connection, channel, quorum)
    assert body == b"Hello World!"
    channel.basic_ack(delivery_tag=method.delivery_tag)
    assert message_count(channel, quorum) == 0


@pytest.mark.timeout(30)
@pytest.mark.parametrize("flags", [{"durable": False}, {"durable": True, "exclusive": True},
                                   {"durable": True, "auto_delete": True}])
def test_quorum_queue_must_be_durable_and_shared(connection, names, flags):
    queue = names.queue("qq")
    text = expect_channel_error(
        connection, 406, lambda ch: ch.queue_declare(queue=queue, arguments={"x-queue-type": "quorum"}, **flags))
    assert text.startswith("PRECONDITION_FAILED - invalid property"), text


@pytest.mark.timeout(30)
def test_unknown_queue_type_is_406(connection, names):
    queue = names.queue("bogus-type")
    text = expect_channel_error(
        connection, 406, lambda ch: ch.queue_declare(queue=queue, arguments={"x-queue-type": "bogus"}))
    assert "x-queue-type" in text, text


@pytest.mark.timeout(30)
@pytest.mark.parametrize("arg,value", [
    ("x-message-ttl", "soon"),
    ("x-max-length", -1),
    ("x-max-priority", 300),
    ("x-overflow", "bogus"),
    ("x-expires", 0),
])
def test_invalid_queue_argument_is_406_naming_it(connection, names, arg, value):
    queue = names.queue("bad-arg")
    text = expect_channel_error(
        connection, 406, lambda ch: ch.queue_declare(queue=queue, arguments={arg: value}))
    assert text.startswith("PRECONDITION_FAILED"), text
    assert f"'{arg}'" in text, text
    # nothing was declared
    expect_channel_error(connection, 404, lambda ch: ch.queue_declare(queue=queue, passive=True))


# --------------------------------------------------------------- exchange-to-exchange bindings


E2E_CASES = {
    # kind: (binding key, binding args, (matching key, headers), (other key, headers))
    "direct": ("k", None, ("k", None), ("other", None)),
    "fanout": ("", None, ("any", None), None),
    "topic": ("a.*", None, ("a.b", None), ("b.a", None)),
    "headers": ("", {"x-match": "all", "h": "1"}, ("", {"h": "1"}), ("", {"h": "2"})),
}


@pytest.mark.timeout(30)
@pytest.mark.parametrize("kind", sorted(E2E_CASES))
def test_exchange_to_exchange_binding(connection, channel, names, kind):
    key, args, match, other = E2E_CASES[kind]
    source = names.exchange("source")
    dest = names.exchange("dest")
    queue = names.queue("q")
    channel.exchange_declare(exchange=source, exchange_type=kind)
    channel.exchange_declare(exchange=dest, exchange_type=kind)
    channel.queue_declare(queue=queue)
    # source -> dest -> queue, both bindings of the same kind
    channel.exchange_bind(destination=dest, source=source, routing_key=key, arguments=args)
    channel.queue_bind(queue=queue, exchange=dest, routing_key=key, arguments=args)
    channel.confirm_delivery()
    rk, headers = match
    channel.basic_publish(exchange=source, routing_key=rk, body=b"match",
                          properties=pika.BasicProperties(headers=headers))
    if other is not None:
        rk2, headers2 = other
        channel.basic_publish(exchange=source, routing_key=rk2, body=b"other",
                              properties=pika.BasicProperties(headers=headers2))
    method, _, body = get_next(connection, channel, queue, auto_ack=True)
    assert body == b"match"
    assert (method.exchange, method.routing_key) == (source, rk)
    assert get_all(channel, queue) == []
    # unbinding stops the flow
    channel.exchange_unbind(destination=dest, source=source, routing_key=key, arguments=args)
    channel.basic_publish(exchange=source, routing_key=rk, body=b"after-unbind",
                          properties=pika.BasicProperties(headers=headers))
    assert get_all(channel, queue) == []


# --------------------------------------------------------------- not implemented yet


@pytest.mark.timeout(30)
def test_direct_reply_to(connection, channel, names, params):
    """direct-reply-to.md: consume the pseudo-queue with no-ack, publish with
    reply_to on the same channel; the responder replies to the rewritten name."""
    service = names.queue("rpc")
    channel.queue_declare(queue=service)
    replies = []
    channel.basic_consume("amq.rabbitmq.reply-to", lambda ch, m, p, b: replies.append((m, p, b)),
                          auto_ack=True)
    channel.basic_publish(exchange="", routing_key=service, body=b"question",
                          properties=pika.BasicProperties(reply_to="amq.rabbitmq.reply-to",
                                                          correlation_id="c-1"))
    server = pika.BlockingConnection(params)
    try:
        sch = server.channel()
        method, props, body = get_next(server, sch, service, auto_ack=True)
        assert body == b"question"
        assert props.reply_to.startswith("amq.rabbitmq.reply-to."), props.reply_to
        assert len(props.reply_to) > len("amq.rabbitmq.reply-to.")
        sch.basic_publish(exchange="", routing_key=props.reply_to, body=b"answer",
                          properties=pika.BasicProperties(correlation_id=props.correlation_id))
        assert pump(connection, lambda: len(replies) == 1, 5), replies
        method, props, body = replies[0]
        assert body == b"answer"
        assert props.correlation_id == "c-1"
    finally:
        server.close()


@pytest.mark.timeout(30)
def test_consumer_timeout_cancels_the_consumer_and_requeues(connection, channel, names):
    """x-consumer-timeout (ms): a delivery held unacked for longer cancels its
    consumer with basic.cancel (RabbitMQ 4.x consumer_timeout_response =
    notify_consumer); the message is requeued; the channel stays open."""
    queue = names.queue("timeout")
    channel.queue_declare(queue=queue, arguments={"x-consumer-timeout": 500})
    slow = connection.channel()
    held, cancelled = [], []
    slow.add_on_cancel_callback(lambda frame: cancelled.append(frame.method.consumer_tag))
    tag = slow.basic_consume(queue, lambda ch, m, p, b: held.append((m, b)))
    channel.basic_publish(exchange="", routing_key=queue, body=b"slow-job")
    assert pump(connection, lambda: len(held) == 1, 5)
    assert pump(connection, lambda: cancelled == [tag], 10), "no basic.cancel from the broker"
    assert slow.is_open
    slow.queue_declare(queue=queue, passive=True)  # the channel still works
    method, _, body = get_next(connection, channel, queue, auto_ack=True)
    assert body == b"slow-job"
    assert method.redelivered is True


@pytest.mark.timeout(30)
def test_delayed_message_exchange(connection, channel, names):
    """rabbitmq-delayed-message-exchange: type x-delayed-message, argument
    x-delayed-type, header x-delay (ms)."""
    exchange = names.exchange("delayed")
    queue = names.queue("delayed")
    channel.exchange_declare(exchange=exchange, exchange_type="x-delayed-message",
                             arguments={"x-delayed-type": "direct"})
    channel.queue_declare(queue=queue)
    channel.queue_bind(queue=queue, exchange=exchange, routing_key="k")
    got = []
    channel.basic_consume(queue, lambda ch, m, p, b: got.append((time.monotonic(), b, m.routing_key)),
                          auto_ack=True)
    start = time.monotonic()
    channel.basic_publish(exchange=exchange, routing_key="k", body=b"later",
                          properties=pika.BasicProperties(headers={"x-delay": 300}))
    channel.basic_publish(exchange=exchange, routing_key="k", body=b"now")
    channel.basic_publish(exchange=exchange, routing_key="other", body=b"unrouted",
                          properties=pika.BasicProperties(headers={"x-delay": 100}))
    assert pump(connection, lambda: len(got) == 2, 5), got
    pump(connection, lambda: False, 0.3)
    assert [b for _, b, _ in got] == [b"now", b"later"]
    assert got[1][0] - start >= 0.28, got[1][0] - start
    assert got[1][2] == "k"
    assert got[0][0] - start < 0.28

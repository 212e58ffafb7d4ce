"""Tutorial 4: routing - a direct exchange routes by exact routing key
(log severity); a queue may have several bindings and several queues may
share a binding key."""

import pytest

from amqp_util import collect


@pytest.mark.timeout(30)
def test_direct_routing_by_severity(connect, names):
    exchange = names.exchange("direct_logs")
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="direct")

    bindings = {
        "all": ["info", "warning", "error"],
        "errors": ["error"],
        "problems": ["warning", "error"],
        "info_only": ["info"],
    }
    queues = {}
    for label, severities in bindings.items():
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        for severity in severities:
            ch.queue_bind(exchange=exchange, queue=q, routing_key=severity)
        queues[label] = q

    pub = connect().channel()
    sent = [
        ("info", b"info: disk 40% full"),
        ("warning", b"warning: disk 85% full"),
        ("error", b"error: disk full"),
        ("debug", b"debug: nobody binds this"),
        ("ERROR", b"routing keys are case sensitive"),
        ("info", b"info: second"),
    ]
    for severity, body in sent:
        pub.basic_publish(exchange=exchange, routing_key=severity, body=body)

    expected = {
        label: [(rk, b) for rk, b in sent if rk in bindings[label]] for label in bindings
    }
    got = collect(conn, ch, {queues[label]: len(msgs) for label, msgs in expected.items()})
    for label, msgs in expected.items():
        assert got[queues[label]] == msgs, label


@pytest.mark.timeout(30)
def test_unbind_stops_routing(connection, channel, names):
    exchange = names.exchange("direct_logs")
    channel.exchange_declare(exchange=exchange, exchange_type="direct")
    q = channel.queue_declare(queue="", exclusive=True).method.queue
    channel.queue_bind(exchange=exchange, queue=q, routing_key="info")
    channel.queue_bind(exchange=exchange, queue=q, routing_key="error")
    channel.basic_publish(exchange=exchange, routing_key="info", body=b"1")
    channel.queue_unbind(queue=q, exchange=exchange, routing_key="info")
    channel.basic_publish(exchange=exchange, routing_key="info", body=b"2")
    channel.basic_publish(exchange=exchange, routing_key="error", body=b"3")
    got = collect(connection, channel, {q: 2})
    assert got[q] == [("info", b"1"), ("error", b"3")]


@pytest.mark.timeout(30)
def test_default_exchange_routes_to_queue_by_name(connection, channel, names):
    a, b = names.queue("a"), names.queue("b")
    channel.queue_declare(queue=a)
    channel.queue_declare(queue=b)
    channel.basic_publish(exchange="", routing_key=a, body=b"for a")
    channel.basic_publish(exchange="", routing_key=b, body=b"for b")
    channel.basic_publish(exchange="", routing_key=names.queue("missing"), body=b"dropped")
    got = collect(connection, channel, {a: 1, b: 1})
    assert got == {a: [(a, b"for a")], b: [(b, b"for b")]}

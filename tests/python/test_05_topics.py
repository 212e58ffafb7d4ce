"""Tutorial 5: topics - '*' matches exactly one word, '#' zero or more."""

import pytest

from amqp_util import collect

BINDINGS = {
    "kern_any": ["kern.*"],
    "critical": ["*.critical"],
    "everything": ["#"],
    "a_to_b": ["a.#.b"],
    "lazy_or_rabbit": ["lazy.#", "*.*.rabbit"],
    "exact": ["quick.orange.fox"],
}

# routing key -> set of queue labels that must receive it (exactly once each)
CASES = {
    "kern.critical": {"kern_any", "critical", "everything"},
    "kern.info": {"kern_any", "everything"},
    "kern": {"everything"},  # '*' needs exactly one word after "kern."
    "kern.info.extra": {"everything"},
    "user.critical": {"critical", "everything"},
    "a.critical.extra": {"everything"},
    "a.b": {"a_to_b", "everything"},  # '#' may match zero words
    "a.x.b": {"a_to_b", "everything"},
    "a.x.y.z.b": {"a_to_b", "everything"},
    "a.b.c": {"everything"},
    "b.a.b": {"everything"},
    "quick.orange.rabbit": {"lazy_or_rabbit", "everything"},
    "lazy": {"lazy_or_rabbit", "everything"},
    "lazy.orange.male.rabbit": {"lazy_or_rabbit", "everything"},
    "lazy.brown.rabbit": {"lazy_or_rabbit", "everything"},  # two bindings match: still one copy
    "quick.orange.fox": {"exact", "everything"},
    "quick.orange.fox.jumps": {"everything"},
    "orange": {"everything"},
}


@pytest.mark.timeout(30)
def test_topic_wildcards(connect, names):
    exchange = names.exchange("topic_logs")
    conn = connect()
    ch = conn.channel()
    ch.exchange_declare(exchange=exchange, exchange_type="topic")
    queues = {}
    for label, keys in BINDINGS.items():
        q = ch.queue_declare(queue="", exclusive=True).method.queue
        for key in keys:
            ch.queue_bind(exchange=exchange, queue=q, routing_key=key)
        queues[label] = q

    pub = connect().channel()
    for rk in CASES:
        pub.basic_publish(exchange=exchange, routing_key=rk, body=f"msg for {rk}".encode())

    expected = {label: [rk for rk, labels in CASES.items() if label in labels] for label in BINDINGS}
    got = collect(conn, ch, {queues[label]: len(rks) for label, rks in expected.items()})
    for label, rks in expected.items():
        assert [rk for rk, _ in got[queues[label]]] == rks, label
        assert [b for _, b in got[queues[label]]] == [f"msg for {rk}".encode() for rk in rks]


@pytest.mark.timeout(30)
def test_topic_seed_disk_bindings(connection, channel, names):
    """The seed's consumer binds 'disk.error' and 'disk.warning' on topic_logs."""
    exchange = names.exchange("topic_logs")
    channel.exchange_declare(exchange=exchange, exchange_type="topic")
    q = channel.queue_declare(queue="", exclusive=True).method.queue
    for key in ["disk.error", "disk.warning"]:
        channel.queue_bind(exchange=exchange, queue=q, routing_key=key)
    sent = [
        ("disk.error", b"[disk.error] Hello World! 111111"),
        ("disk.error", b"[disk.error] Hello World! 222222"),
        ("disk.warning", b"[disk.warning] Hello World! 333333"),
        ("disk.info", b"[disk.info] not bound"),
    ]
    for rk, body in sent:
        channel.basic_publish(exchange=exchange, routing_key=rk, body=body)
    got = collect(connection, channel, {q: 3})
    assert got[q] == sent[:3]

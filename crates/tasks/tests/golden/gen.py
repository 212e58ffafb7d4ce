"""Regenerate the golden Celery messages the `tasks` crate's protocol tests read.

Real Celery builds every message here: task messages go through `app.send_task` into kombu's
in-memory transport and are read back as the broker would see them (headers, AMQP properties,
raw body); result messages are what the `rpc://` backend publishes (`RPCBackend._to_result`,
serialized with kombu's JSON). Run from the repository root with the project venv:

    .venv/bin/python crates/tasks/tests/golden/gen.py

Ids, hostnames and times are pinned so that the files only change when Celery changes.
"""

import datetime
import decimal
import json
import os
import re
import types
import uuid

from celery import Celery, chain, chord, group
from kombu.utils.json import dumps

OUT = os.path.dirname(os.path.abspath(__file__))
# The AMQP basic properties; kombu's memory transport adds bookkeeping keys we drop.
AMQP_PROPERTIES = ("correlation_id", "reply_to", "delivery_mode", "priority", "expiration", "message_id")
NOW = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)


def write(name, doc):
    with open(os.path.join(OUT, name + ".json"), "w") as f:
        json.dump(doc, f, indent=2, sort_keys=True)
        f.write("\n")


def task_messages():
    app = Celery("golden", broker="memory://", backend="rpc://")
    app.conf.update(task_default_queue="celery")
    cases = [
        ("task_add_args", "demo.add", dict(args=(2, 3))),
        (
            "task_echo_kwargs",
            "demo.echo",
            dict(kwargs={"value": {"a": [1, 2.5, None, True], "b": {"c": "ünï"}}}),
        ),
        (
            "task_options",
            "demo.sleep",
            dict(
                args=(1.5,),
                eta=NOW + datetime.timedelta(seconds=30),
                expires=NOW + datetime.timedelta(hours=1),
                time_limit=60,
                soft_time_limit=50,
                priority=5,
                shadow="sleepy",
                ignore_result=True,
                retries=2,
                parent_id="11111111-1111-4111-8111-111111111111",
                root_id="22222222-2222-4222-8222-222222222222",
            ),
        ),
        (
            "task_chain",
            "demo.add",
            dict(args=(1, 2), chain=[app.signature("demo.add", args=(10,)), app.signature("demo.echo")]),
        ),
    ]
    for i, (name, task, options) in enumerate(cases):
        task_id = f"00000000-0000-4000-8000-{i:012d}"
        app.send_task(task, task_id=task_id, **options)
        with app.connection_for_read() as conn:
            message = conn.default_channel.basic_get("celery", no_ack=True)
            message = conn.default_channel.message_to_python(message)
        headers = dict(message.headers)
        headers["origin"] = "1234@golden-host"  # pid@host of the sender
        props = {k: v for k, v in message.properties.items() if k in AMQP_PROPERTIES}
        # The rpc backend's reply queue is named after the sending thread (app.thread_oid).
        props["reply_to"] = "golden-reply-queue"
        write(
            name,
            {
                "headers": headers,
                "properties": dict(
                    props,
                    content_type=message.content_type,
                    content_encoding=message.content_encoding,
                ),
                "body": message.body.decode("utf-8") if isinstance(message.body, bytes) else message.body,
            },
        )


def read_message(app, queue="celery"):
    """The next message of `queue` as a golden document (headers, properties, body)."""
    with app.connection_for_read() as conn:
        message = conn.default_channel.basic_get(queue, no_ack=True)
        if message is None:
            return None
        message = conn.default_channel.message_to_python(message)
    headers = dict(message.headers)
    headers["origin"] = "1234@golden-host"
    props = {k: v for k, v in message.properties.items() if k in AMQP_PROPERTIES}
    body = message.body.decode("utf-8") if isinstance(message.body, bytes) else message.body
    return {"headers": headers, "properties": dict(props, content_type=message.content_type,
                                                   content_encoding=message.content_encoding), "body": body}


UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pin(docs, oid, base):
    """Celery makes up the ids of a canvas (chain steps, group ids) and names the reply queue
    after the thread: replace them, in order of appearance, by fixed ones."""
    text = json.dumps(docs).replace(oid, "golden-reply-queue")
    ids = {}
    for found in UUID_RE.findall(text):
        ids.setdefault(found, f"00000000-0000-4000-8000-{base + len(ids):012d}")
    for old, new in ids.items():
        text = text.replace(old, new)
    return json.loads(text)


def canvas_messages():
    """What Celery sends for a canvas (canvas.py): the first message of a chain (the rest
    reversed in `chain`, ids and reply_to in each step's options), link/link_error (embed
    `callbacks`/`errbacks`), a group's tasks (`group`, `group_index` headers), a chord's
    header tasks (the body in embed `chord`; needs a backend that allows chords: the rpc
    backend refuses them, so a cache backend here)."""
    app = Celery("golden", broker="memory://", backend="rpc://")
    app.conf.update(task_default_queue="celery")
    oid = app.thread_oid
    add = lambda *a, **o: app.signature("demo.add", a, **o)  # noqa: E731
    chain(add(1, 2), add(3), add(4, queue="other"))()
    write("canvas_chain", pin(read_message(app), oid, 100))
    app.send_task("demo.fail", ("x",), task_id="00000000-0000-4000-8000-000000000200",
                  link=app.signature("demo.echo", queue="py"),
                  link_error=[app.signature("demo.echo"), app.signature("demo.add", (1,), immutable=True)])
    write("canvas_link", pin(read_message(app), oid, 200))
    group(add(i, i) for i in range(2))()
    write("canvas_group", pin([read_message(app), read_message(app)], oid, 300))
    # A chain ending in a group: the group travels as one signature (subtask_type "group",
    # its tasks in kwargs, ids frozen).
    chain(add(1, 2), group(add(10), add(20)))()
    write("canvas_chain_group", pin(read_message(app), oid, 500))

    chord_app = Celery("golden", broker="memory://", backend="cache+memory://")
    chord_app.conf.update(task_default_queue="celery")
    chord([chord_app.signature("demo.add", (i, i)) for i in range(2)], chord_app.signature("demo.sum"))()
    docs = [read_message(chord_app), read_message(chord_app)]
    write("canvas_chord", pin(docs, chord_app.thread_oid, 400))


def result_messages():
    app = Celery("golden", broker="memory://", backend="rpc://")
    app.now = lambda: NOW
    backend = app.backend
    request = types.SimpleNamespace(
        group=None, parent_id=None, children=[], reply_to="reply-q", correlation_id="t"
    )
    backend.current_task_children = lambda request=None: []

    def result(name, state, value, traceback=None):
        task_id = "33333333-3333-4333-8333-" + f"{len(name):012d}"
        meta = backend._to_result(task_id, state, value, traceback, request)
        write(name, {"properties": {"correlation_id": task_id, "content_type": "application/json",
                                    "content_encoding": "utf-8", "delivery_mode": backend.delivery_mode},
                     "body": dumps(meta)})

    result("result_success", "SUCCESS", 5)
    # A chain step's result: what it sent, as `children` (AsyncResult.as_tuple(),
    # GroupResult.as_tuple()).
    # Several link callbacks are sent as a group: one GroupResult child.
    request.children = [
        app.AsyncResult("55555555-5555-4555-8555-555555555555"),
        app.GroupResult("66666666-6666-4666-8666-666666666666", [
            app.AsyncResult("77777777-7777-4777-8777-777777777777"),
            app.AsyncResult("88888888-8888-4888-8888-888888888888"),
        ]),
    ]
    backend.current_task_children = lambda request=None: [r.as_tuple() for r in request.children]
    result("result_children", "SUCCESS", 3)
    request.children = []
    backend.current_task_children = lambda request=None: []
    result(
        "result_success_tagged",
        "SUCCESS",
        {
            "when": NOW,
            "day": NOW.date(),
            "amount": decimal.Decimal("12.50"),
            "id": uuid.UUID("44444444-4444-4444-8444-444444444444"),
            "raw": b"bytes",
        },
    )
    try:
        raise ValueError("boom", 42)
    except ValueError as exc:
        result("result_failure", "FAILURE", exc, "Traceback (most recent call last):\n  ...\nValueError: boom\n")


if __name__ == "__main__":
    task_messages()
    canvas_messages()
    result_messages()

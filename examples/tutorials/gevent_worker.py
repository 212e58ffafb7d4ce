#!/usr/bin/env python3
"""Concurrency with gevent: one thread, one greenlet per task.

monkey.patch_all() must come first, before pika is imported: it makes
sockets, select and time.sleep cooperative, so a greenlet that sleeps lets
the others (and the connection) run.
"""
from gevent import monkey

monkey.patch_all()

import datetime  # noqa: E402
import functools  # noqa: E402
import os  # noqa: E402
import time  # noqa: E402

import gevent  # noqa: E402
import pika  # noqa: E402

CONCURRENCY = 4
SECONDS_PER_DOT = float(os.environ.get("SECONDS_PER_DOT", "1"))


def now():
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get("AMQP_HOST", "localhost"),
    port=int(os.environ.get("AMQP_PORT", "5672")),
))
channel = connection.channel()

channel.queue_declare(queue="task_queue", durable=True)
channel.basic_qos(prefetch_count=CONCURRENCY)


def done(delivery_tag, body):
    """Runs in the greenlet that runs the connection."""
    channel.basic_ack(delivery_tag=delivery_tag)
    print(f"{now()} [x] Finished {body!r}")


def work(delivery_tag, body):
    """Runs in its own greenlet."""
    time.sleep(body.count(b".") * SECONDS_PER_DOT)  # patched: lets the other greenlets run
    # All greenlets share one thread, so ch.basic_ack would also work here; going
    # through the connection keeps the code right if you switch to threads.
    connection.add_callback_threadsafe(functools.partial(done, delivery_tag, body))


def callback(ch, method, properties, body):
    print(f"{now()} [x] Received {body!r}")
    gevent.spawn(work, method.delivery_tag, body)


channel.basic_consume(queue="task_queue", on_message_callback=callback)
print(" [*] Waiting for messages. To exit press CTRL+C")
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()

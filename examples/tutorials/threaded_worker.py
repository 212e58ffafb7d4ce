#!/usr/bin/env python3
"""Concurrency with threads: up to CONCURRENCY tasks at once, one thread each.

pika is not thread-safe: only the thread that runs the connection (here the
main thread, inside start_consuming) may use the connection or its channels.
So a worker thread never calls ch.basic_ack itself: it hands the ack to the
connection's thread with connection.add_callback_threadsafe.
"""
import datetime
import functools
import os
import threading
import time

import pika

CONCURRENCY = 4  # = prefetch_count: the broker sends at most this many unacked tasks
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
    """Runs in the connection's thread, which alone may use the channel."""
    channel.basic_ack(delivery_tag=delivery_tag)
    print(f"{now()} [x] Finished {body!r}")


def work(delivery_tag, body):
    """Runs in a worker thread: must not touch the channel or the connection..."""
    time.sleep(body.count(b".") * SECONDS_PER_DOT)
    # ...except for this one method, made to be called from other threads
    connection.add_callback_threadsafe(functools.partial(done, delivery_tag, body))


def callback(ch, method, properties, body):
    """Runs in the connection's thread: start the work and return at once."""
    print(f"{now()} [x] Received {body!r}")
    threading.Thread(target=work, args=(method.delivery_tag, body), daemon=True).start()


channel.basic_consume(queue="task_queue", on_message_callback=callback)
print(" [*] Waiting for messages. To exit press CTRL+C")
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()  # unfinished tasks were not acked: the broker redelivers them

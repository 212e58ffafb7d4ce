#!/usr/bin/env python3
"""Fair dispatch: worker.py plus basic_qos(prefetch_count=1). The broker gives
this worker a new task only once it has acked the previous one, so busy
workers get fewer tasks and idle ones more."""
import os
import time

import pika

SECONDS_PER_DOT = float(os.environ.get("SECONDS_PER_DOT", "1"))

connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get("AMQP_HOST", "localhost"),
    port=int(os.environ.get("AMQP_PORT", "5672")),
))
channel = connection.channel()

channel.queue_declare(queue="task_queue", durable=True)
channel.basic_qos(prefetch_count=1)  # at most one unacked task at a time


def callback(ch, method, properties, body):
    print(f" [x] Received {body!r}")
    time.sleep(body.count(b".") * SECONDS_PER_DOT)
    print(" [x] Done")
    ch.basic_ack(delivery_tag=method.delivery_tag)


channel.basic_consume(queue="task_queue", on_message_callback=callback)
print(" [*] Waiting for messages. To exit press CTRL+C")
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()

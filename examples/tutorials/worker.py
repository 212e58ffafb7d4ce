#!/usr/bin/env python3
"""Work queues: a worker. It acks a task only once the task is done, so the
task of a worker that dies half-way is given to another worker."""
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


def callback(ch, method, properties, body):
    again = " (redelivered)" if method.redelivered else ""
    print(f" [x] Received {body!r}{again}")
    time.sleep(body.count(b".") * SECONDS_PER_DOT)
    print(" [x] Done")
    ch.basic_ack(delivery_tag=method.delivery_tag)


channel.basic_consume(queue="task_queue", on_message_callback=callback)
print(" [*] Waiting for messages. To exit press CTRL+C")
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()

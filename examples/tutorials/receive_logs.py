#!/usr/bin/env python3
"""Publish/subscribe: print every log message sent to the fanout exchange "logs"."""
import os

import pika

connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get("AMQP_HOST", "localhost"),
    port=int(os.environ.get("AMQP_PORT", "5672")),
))
channel = connection.channel()

channel.exchange_declare(exchange="logs", exchange_type="fanout")

# queue="" : the broker picks a name (amq.gen-...); exclusive: the queue is
# this connection's own and is deleted when the connection closes.
result = channel.queue_declare(queue="", exclusive=True)
queue_name = result.method.queue
channel.queue_bind(exchange="logs", queue=queue_name)


def callback(ch, method, properties, body):
    print(f" [x] {body!r}")


channel.basic_consume(queue=queue_name, on_message_callback=callback, auto_ack=True)
print(" [*] Waiting for logs. To exit press CTRL+C")
try:
    channel.start_consuming()
except KeyboardInterrupt:
    connection.close()

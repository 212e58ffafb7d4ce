#!/usr/bin/env python3
"""Work queues: send one task. Each '.' in it stands for one second of work."""
import os
import sys

import pika

connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get("AMQP_HOST", "localhost"),
    port=int(os.environ.get("AMQP_PORT", "5672")),
))
channel = connection.channel()

channel.queue_declare(queue="task_queue", durable=True)  # the queue survives a restart...
channel.confirm_delivery()  # basic_publish returns once the broker has the message safe

message = " ".join(sys.argv[1:]) or "Hello World!"
channel.basic_publish(
    exchange="",
    routing_key="task_queue",
    body=message,
    properties=pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,  # ...and so does the message
    ),
)
print(f" [x] Sent {message!r}")
connection.close()

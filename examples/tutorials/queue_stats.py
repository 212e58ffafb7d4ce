#!/usr/bin/env python3
"""Show how many messages are ready in some queues and how many consumers they
have (what `rabbitmqctl list_queues` shows; Warren has no such tool yet).
Usage: queue_stats.py QUEUE..."""
import os
import sys

import pika

connection = pika.BlockingConnection(pika.ConnectionParameters(
    host=os.environ.get("AMQP_HOST", "localhost"),
    port=int(os.environ.get("AMQP_PORT", "5672")),
))
for queue in sys.argv[1:]:
    channel = connection.channel()
    try:
        # passive: only look, never create; a missing queue closes the channel with 404
        ok = channel.queue_declare(queue=queue, passive=True).method
        print(f"{queue}: {ok.message_count} ready, {ok.consumer_count} consumers")
        channel.close()
    except pika.exceptions.ChannelClosedByBroker as e:
        print(f"{queue}: {e.reply_text}")
connection.close()

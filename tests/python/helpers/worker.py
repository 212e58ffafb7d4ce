#!/usr/bin/env python3
"""Work-queue worker from the "work queues" tutorial, rewritten for pika 1.x.

Consumes ``--queue`` with manual acks, simulates work by sleeping
``--sleep`` seconds plus ``--dot-seconds`` per '.' in the body, then acks.

Protocol on stdout (one event per line, flushed), read by the tests:
    READY
    RECEIVED <body> redelivered=<True|False>
    DONE <body>
"""

import argparse
import sys
import time

import pika


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--queue", required=True)
    ap.add_argument("--name", default="worker")
    ap.add_argument("--prefetch", type=int, default=0, help="basic_qos prefetch_count (0 = unlimited)")
    ap.add_argument("--sleep", type=float, default=0.0, help="seconds of 'work' per task")
    ap.add_argument("--dot-seconds", type=float, default=0.0, help="extra seconds per '.' in the body")
    ap.add_argument("--quorum", action="store_true", help="declare the queue with x-queue-type: quorum")
    args = ap.parse_args()

    connection = pika.BlockingConnection(
        pika.ConnectionParameters(host=args.host, port=args.port, connection_attempts=1)
    )
    channel = connection.channel()
    channel.queue_declare(queue=args.queue, durable=True,
                          arguments={"x-queue-type": "quorum"} if args.quorum else None)
    if args.prefetch:
        channel.basic_qos(prefetch_count=args.prefetch)

    def callback(ch, method, properties, body):
        text = body.decode("utf-8")
        print(f"RECEIVED {text} redelivered={method.redelivered}", flush=True)
        time.sleep(args.sleep + text.count(".") * args.dot_seconds)
        ch.basic_ack(delivery_tag=method.delivery_tag)
        print(f"DONE {text}", flush=True)

    channel.basic_consume(queue=args.queue, on_message_callback=callback)
    print("READY", flush=True)
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())

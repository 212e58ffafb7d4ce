#!/usr/bin/env python3
"""Concurrency with processes: the work runs in a pool of CONCURRENCY processes.

The pool's processes only do the work. Receiving and acking stay in the main
process, which owns the connection: a connection (socket, channel state) cannot
be shared with another process, so never pass ch or method to one.
"""
import datetime
import functools
import multiprocessing
import os
import signal
import time

import pika

CONCURRENCY = 4
SECONDS_PER_DOT = float(os.environ.get("SECONDS_PER_DOT", "1"))


def now():
    return datetime.datetime.now().strftime("%H:%M:%S.%f")[:-3]


def init_process():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the main process


def work(body):
    """Runs in a pool process: gets the body, returns a result (here: its pid)."""
    time.sleep(body.count(b".") * SECONDS_PER_DOT)
    return os.getpid()


def main():
    # start the processes first, so that they do not inherit the connection
    pool = multiprocessing.Pool(CONCURRENCY, initializer=init_process)

    connection = pika.BlockingConnection(pika.ConnectionParameters(
        host=os.environ.get("AMQP_HOST", "localhost"),
        port=int(os.environ.get("AMQP_PORT", "5672")),
    ))
    channel = connection.channel()
    channel.queue_declare(queue="task_queue", durable=True)
    channel.basic_qos(prefetch_count=CONCURRENCY)

    def done(delivery_tag, body, pid):
        """Runs in the connection's thread."""
        channel.basic_ack(delivery_tag=delivery_tag)
        print(f"{now()} [x] Finished {body!r} in process {pid}")

    def callback(ch, method, properties, body):
        print(f"{now()} [x] Received {body!r}")

        def on_result(pid):  # the pool calls this in a thread of its own: hand over
            connection.add_callback_threadsafe(functools.partial(done, method.delivery_tag, body, pid))

        pool.apply_async(work, (body,), callback=on_result)

    channel.basic_consume(queue="task_queue", on_message_callback=callback)
    print(" [*] Waiting for messages. To exit press CTRL+C")
    try:
        channel.start_consuming()
    except KeyboardInterrupt:
        connection.close()
    pool.terminate()


if __name__ == "__main__":
    main()

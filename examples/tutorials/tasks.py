"""Celery on Warren: an ordinary amqp:// broker URL, results back over AMQP (rpc://).

Start a worker in this directory:   celery -A tasks worker --loglevel=INFO
then call the tasks:                python call_tasks.py
"""
import os
import time

from celery import Celery

host = os.environ.get("AMQP_HOST", "localhost")
port = os.environ.get("AMQP_PORT", "5672")

app = Celery("tasks", broker=f"amqp://guest:guest@{host}:{port}//", backend="rpc://")


@app.task
def add(x, y):
    return x + y


@app.task
def slow_square(x, seconds=1.0):
    time.sleep(seconds)
    return x * x

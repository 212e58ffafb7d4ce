#!/usr/bin/env python3
"""Celery client: send tasks to the worker started with `celery -A tasks worker`."""
import time

from celery import group

from tasks import add, slow_square

result = add.delay(4, 4)
print(f"add(4, 4) = {result.get(timeout=10)}")

# four 1-second tasks at once: with a worker of concurrency >= 4 this takes about 1 s
start = time.monotonic()
squares = group(slow_square.s(i) for i in range(4))().get(timeout=20)
print(f"squares = {squares} in {time.monotonic() - start:.1f} s")

"""Celery tasks for the end-to-end test (tests/python/test_12_celery.py).

The worker subprocess imports this module with ``celery -A celery_app.tasks``;
its broker URL and queue come from the environment, which the test sets:

* ``WARREN_CELERY_BROKER``  amqp://guest:guest@127.0.0.1:<port>//
* ``WARREN_CELERY_QUEUE``   the task queue (unique per test session)
"""

from __future__ import annotations

import os

from celery import Celery

app = Celery("warren_celery_test")
app.conf.update(
    broker_url=os.environ.get("WARREN_CELERY_BROKER", "amqp://guest:guest@127.0.0.1:5672//"),
    result_backend="rpc://",
    task_default_queue=os.environ.get("WARREN_CELERY_QUEUE", "celery"),
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # fail fast instead of retrying forever when the broker is not there
    broker_connection_retry_on_startup=False,
    broker_connection_max_retries=3,
    worker_prefetch_multiplier=4,
)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def mul(x: int, y: int) -> int:
    return x * y


@app.task(bind=True, max_retries=5)
def flaky(self, label: str) -> dict:
    """Fails on its first two runs, then succeeds (retried with a short countdown)."""
    if self.request.retries < 2:
        raise self.retry(exc=RuntimeError(f"{label}: failure #{self.request.retries + 1}"), countdown=0.2)
    return {"label": label, "retries": self.request.retries}

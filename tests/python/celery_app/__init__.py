"""A small Celery application run against Warren by test_12_celery.py."""

"""The management HTTP API and Prometheus metrics with Python's tools as the witnesses:
`requests` (what scripts use), Celery Flower's broker view (which reads `/api/queues/`),
and prometheus_client's text parser.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pika
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from conftest import own_broker, BrokerProcess, find_free_port


@pytest.fixture
def node(request):
    with own_broker(request, "warren-pytest-mgmt-", prometheus=True) as p:
        yield p


def api(node: BrokerProcess, path: str) -> str:
    return f"http://127.0.0.1:{node.mgmt_port}/api{path}"


def amqp(node: BrokerProcess) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters(host="127.0.0.1", port=node.port))


def test_everyday_operations_with_requests(node):
    auth = ("guest", "guest")
    o = requests.get(api(node, "/overview"), auth=auth, timeout=5).json()
    assert o["product_name"] == "Warren" and o["rabbitmq_version"]
    # A user and a vhost over HTTP, then that user over AMQP.
    assert requests.put(api(node, "/vhosts/jobs"), auth=auth, timeout=5).status_code == 201
    # As RabbitMQ's API: the creator gets full permissions in the new vhost.
    p = requests.get(api(node, "/permissions/jobs/guest"), auth=auth, timeout=5).json()
    assert (p["configure"], p["write"], p["read"]) == (".*", ".*", ".*")
    r = requests.put(api(node, "/users/ops"), json={"password": "pw", "tags": "monitoring"}, auth=auth, timeout=5)
    assert r.status_code == 201
    r = requests.put(api(node, "/permissions/jobs/ops"), json={"configure": ".*", "write": ".*", "read": ".*"},
                     auth=auth, timeout=5)
    assert r.status_code in (201, 204)
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=node.port, virtual_host="jobs", credentials=pika.PlainCredentials("ops", "pw")))
    ch = conn.channel()
    ch.queue_declare("reports", durable=True)
    for i in range(5):
        ch.basic_publish("", "reports", f"r{i}".encode())
    conn.close()
    q = requests.get(api(node, "/queues/jobs/reports"), auth=("ops", "pw"), timeout=5).json()
    assert (q["name"], q["vhost"], q["messages"], q["durable"]) == ("reports", "jobs", 5, True)
    # Wrong password: 401 with RabbitMQ's body; unknown queue: RabbitMQ's 404 body.
    r = requests.get(api(node, "/overview"), auth=("ops", "nope"), timeout=5)
    assert r.status_code == 401 and r.json()["error"] == "not_authorized"
    r = requests.get(api(node, "/queues/jobs/nope"), auth=auth, timeout=5)
    assert r.status_code == 404 and r.json() == {"error": "Object Not Found", "reason": "Not Found"}
    # Purge and get, as the UI does them.
    r = requests.post(api(node, "/queues/jobs/reports/get"), auth=auth, timeout=5,
                      json={"count": 2, "ackmode": "ack_requeue_false", "encoding": "auto"})
    assert r.status_code == 200, r.text
    assert [m["payload"] for m in r.json()] == ["r0", "r1"]
    assert requests.delete(api(node, "/queues/jobs/reports/contents"), auth=auth, timeout=5).status_code == 204
    assert requests.get(api(node, "/queues/jobs/reports"), auth=auth, timeout=5).json()["messages"] == 0
    # Definitions round trip.
    defs = requests.get(api(node, "/definitions"), auth=auth, timeout=5).json()
    assert any(u["name"] == "ops" for u in defs["users"])
    assert requests.post(api(node, "/definitions"), json=defs, auth=auth, timeout=5).status_code in (200, 201, 204)


def test_prometheus_text_parses_with_prometheus_client(node):
    conn = amqp(node)
    ch = conn.channel()
    ch.queue_declare("prom.q")
    # Confirmed, so the message is in the queue before the scrape (a bare publish may
    # still be on its way when /metrics answers).
    ch.confirm_delivery()
    ch.basic_publish("", "prom.q", b"x")
    text = requests.get(f"http://127.0.0.1:{node.prom_port}/metrics", timeout=5).text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert "rabbitmq_identity_info" in families
    # Dashboard 10991's core panels.
    for name in ("rabbitmq_queue_messages_ready", "rabbitmq_connections", "rabbitmq_channels",
                 "rabbitmq_queues", "rabbitmq_consumers"):
        assert name in families, name
    ready = sum(s.value for s in families["rabbitmq_queue_messages_ready"].samples)
    assert ready >= 1
    per_object = requests.get(f"http://127.0.0.1:{node.prom_port}/metrics/per-object", timeout=5).text
    samples = [s for f in text_string_to_metric_families(per_object) for s in f.samples]
    assert any(s.name == "rabbitmq_queue_messages_ready" and s.labels.get("queue") == "prom.q" for s in samples)
    conn.close()


def test_flower_broker_view_shows_queue_lengths(node, tmp_path):
    """Celery Flower, pointed at Warren's API as at RabbitMQ's (`broker_api` with the
    trailing slash), shows the default queue's length."""
    conn = amqp(node)
    ch = conn.channel()
    ch.queue_declare("celery", durable=True)
    for _ in range(3):
        ch.basic_publish("", "celery", b"{}")
    conn.close()
    port = find_free_port()
    broker = f"amqp://guest:guest@127.0.0.1:{node.port}//"
    broker_api = f"http://guest:guest@127.0.0.1:{node.mgmt_port}/api/"
    log = open(tmp_path / "flower.log", "wb")
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "--broker", broker, "flower", f"--port={port}", "--address=127.0.0.1",
         f"--broker_api={broker_api}", "--persistent=False"],
        stdout=log, stderr=subprocess.STDOUT, cwd=str(tmp_path),
        # Flower's own API answers without a login only when told to.
        env={**os.environ, "FLOWER_UNAUTHENTICATED_API": "1"})
    try:
        deadline = time.monotonic() + 60
        lengths = None
        while time.monotonic() < deadline:
            try:
                r = requests.get(f"http://127.0.0.1:{port}/api/queues/length", timeout=5)
                if r.status_code == 200:
                    lengths = r.json()
                    if any(q.get("name") == "celery" and q.get("messages") == 3
                           for q in lengths.get("active_queues", [])):
                        break
            except requests.ConnectionError:
                pass
            time.sleep(0.5)
        assert lengths is not None, (tmp_path / "flower.log").read_text()
        celery = [q for q in lengths["active_queues"] if q.get("name") == "celery"]
        assert celery and celery[0]["messages"] == 3, (lengths, (tmp_path / "flower.log").read_text()[-3000:])
        assert celery[0]["messages_ready"] == 3 and celery[0]["messages_unacknowledged"] == 0
    finally:
        flower.terminate()
        try:
            flower.wait(timeout=10)
        except subprocess.TimeoutExpired:
            flower.kill()
        log.close()


def test_tags_pagination_rates_and_health_with_requests(node):
    auth = ("guest", "guest")
    # Tags decide what a user may do: monitoring reads everything, changes nothing; a user
    # without a management tag cannot use the API at all (RabbitMQ's 401 bodies).
    for user, tags in (("watcher", "monitoring"), ("plain", "")):
        r = requests.put(api(node, f"/users/{user}"), json={"password": "pw", "tags": tags}, auth=auth, timeout=5)
        assert r.status_code == 201
    assert requests.get(api(node, "/overview"), auth=("watcher", "pw"), timeout=5).status_code == 200
    assert requests.get(api(node, "/users"), auth=("watcher", "pw"), timeout=5).status_code == 401
    r = requests.put(api(node, "/users/x"), json={"password": "pw", "tags": ""}, auth=("watcher", "pw"), timeout=5)
    assert r.status_code == 401 and r.json() == {"error": "not_authorised", "reason": "Not administrator user"}
    r = requests.get(api(node, "/overview"), auth=("plain", "pw"), timeout=5)
    assert r.status_code == 401 and r.json()["reason"] == "Not management user"
    # No credentials at all: 401 with a Basic challenge, JSON whatever Accept says.
    r = requests.get(api(node, "/overview"), headers={"Accept": "text/html"}, timeout=5)
    assert r.status_code == 401 and "Basic" in r.headers.get("WWW-Authenticate", "")
    assert r.headers["Content-Type"].startswith("application/json")

    # Pagination, sorting and name filters on 23 queues.
    conn = amqp(node)
    ch = conn.channel()
    for i in range(23):
        ch.queue_declare(f"page.{i:02}")
    filt = {"page_size": 4, "sort": "name", "name": "page\\.1", "use_regex": "true"}
    r = requests.get(api(node, "/queues/%2F"), params={"page": 3, **filt}, auth=auth, timeout=5).json()
    assert (r["page"], r["page_size"], r["page_count"], r["filtered_count"], r["total_count"]) == (3, 4, 3, 10, 23)
    assert r["item_count"] == 2 and [q["name"] for q in r["items"]] == ["page.18", "page.19"]
    # Past the last page: RabbitMQ's 400.
    r = requests.get(api(node, "/queues/%2F"), params={"page": 4, **filt}, auth=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"
    r = requests.get(api(node, "/queues/%2F"), params={"page": 1, "page_size": 5, "sort": "name",
                                                       "sort_reverse": "true", "columns": "name,messages"},
                     auth=auth, timeout=5).json()
    assert [q["name"] for q in r["items"]] == ["page.22", "page.21", "page.20", "page.19", "page.18"]
    assert set(r["items"][0]) == {"name", "messages"} and r["page_count"] == 5
    r = requests.get(api(node, "/queues/%2F"), params={"page": 1, "page_size": 501}, auth=auth, timeout=5)
    assert r.status_code == 400 and r.json()["error"] == "bad_request"

    # A consumer that holds its one prefetch credit and never acks: the messages behind
    # it wait, so the queue's consumer utilisation falls from 1.0 towards 0.
    slow = amqp(node)
    sch = slow.channel()
    sch.queue_declare("slow")
    sch.basic_qos(prefetch_count=1)
    sch.basic_consume("slow", lambda *a: None, auto_ack=False)
    for _ in range(5):
        ch.basic_publish("", "slow", b"x")
    # Rates become non-zero while a publisher runs (the sampler ticks every 5 s).
    ch.queue_declare("busy")
    rate = 0.0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and rate <= 0:
        for _ in range(200):
            ch.basic_publish("", "busy", b"x")
        conn.process_data_events(0)
        q = requests.get(api(node, "/queues/%2F/busy"), auth=auth, timeout=5).json()
        rate = q.get("message_stats", {}).get("publish_details", {}).get("rate", 0.0)
        time.sleep(0.2)
    assert rate > 0, q
    deadline = time.monotonic() + 20
    util = 1.0
    while time.monotonic() < deadline and util > 0.5:
        sq = requests.get(api(node, "/queues/%2F/slow"), auth=auth, timeout=5).json()
        util = sq["consumer_utilisation"]
        slow.process_data_events(0.2)
    assert util <= 0.5 and sq["consumers"] == 1 and sq["messages_ready"] == 4, sq
    # The queue's own page: its consumers, and samples of its lengths and rates.
    sq = requests.get(api(node, "/queues/%2F/slow"), auth=auth, timeout=5,
                      params={"lengths_age": 60, "lengths_incr": 5, "msg_rates_age": 60, "msg_rates_incr": 5}).json()
    assert [(c["queue"]["name"], c["prefetch_count"], c["ack_required"]) for c in sq["consumer_details"]] == \
        [("slow", 1, True)], sq["consumer_details"]
    assert sq["messages_ready_details"]["samples"] and sq["messages_ready_details"]["samples"][0]["sample"] == 4, sq
    assert "samples" in sq["message_stats"]["publish_details"], sq["message_stats"]
    slow.close()
    o = requests.get(api(node, "/overview"), auth=auth, timeout=5).json()
    assert o["message_stats"]["publish"] >= 200 and o["message_stats"]["publish_details"]["rate"] > 0
    conn.close()

    # Health: the unauthenticated probes and RabbitMQ's checks.
    assert requests.get(f"http://127.0.0.1:{node.mgmt_port}/healthz", timeout=5).status_code == 200
    assert requests.get(f"http://127.0.0.1:{node.mgmt_port}/readyz", timeout=5).status_code == 200
    for check in ("alarms", "local-alarms", "virtual-hosts", "node-is-quorum-critical",
                  f"port-listener/{node.port}", "protocol-listener/amqp"):
        r = requests.get(api(node, f"/health/checks/{check}"), auth=auth, timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "ok", (check, r.text)
    r = requests.get(api(node, "/health/checks/port-listener/1"), auth=auth, timeout=5)
    assert r.status_code == 503 and r.json()["status"] == "failed"
    assert requests.get(api(node, "/aliveness-test/%2F"), auth=auth, timeout=5).json() == {"status": "ok"}

"""rabbitmqadmin v2 (RabbitMQ's CLI for the management HTTP API, `cargo install
rabbitmqadmin`, installed and cached by scripts/test-python.sh) doing a user's everyday
commands against Warren; each effect is checked through AMQP (pika) or plain HTTP.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pika
import pytest
import requests

from conftest import own_broker, BrokerProcess


@pytest.fixture
def node(request):
    with own_broker(request, "warren-pytest-rqa-") as p:
        yield p


@pytest.fixture
def admin(node, tmp_path):
    binary = os.environ.get("RABBITMQADMIN")
    if not binary:
        # scripts/test-python.sh always sets it; only a bare `pytest` lacks it.
        pytest.skip("RABBITMQADMIN is not set (run through scripts/test-python.sh)")

    def run(*args: str, user: str = "guest", password: str = "guest", vhost: str | None = None,
            ok: bool = True) -> str:
        cmd = [binary, "--host", "127.0.0.1", "--port", str(node.mgmt_port), "--username", user,
               "--password", password, "--non-interactive"]
        if vhost:
            cmd += ["--vhost", vhost]
        # HOME: no ~/.rabbitmqadmin.conf of the machine's user is read.
        r = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=60,
                           env={**os.environ, "HOME": str(tmp_path)})
        if ok:
            assert r.returncode == 0, (args, r.stdout, r.stderr)
        else:
            assert r.returncode != 0, (args, r.stdout, r.stderr)
        return r.stdout + r.stderr

    return run


def http(node: BrokerProcess, path: str):
    r = requests.get(f"http://127.0.0.1:{node.mgmt_port}/api{path}", auth=("guest", "guest"), timeout=5)
    return r.status_code, (r.json() if r.content else None)


def test_everyday_commands(node, admin, tmp_path):
    out = admin("show", "overview")
    assert "Warren" in out
    # The memory breakdown (GET /api/nodes/{node}/memory) parses and shows Warren's figures.
    node_name = http(node, "/overview")[1]["node"]
    out = admin("show", "memory_breakdown_in_bytes", "--node", node_name)
    assert "Binary" in out or "binary" in out, out
    status, mem = http(node, f"/nodes/{node_name}/memory")
    assert status == 200 and mem["memory"]["strategy"] == "rss"
    # The real binary counts its allocations: allocated is its own figure, below RSS.
    assert 0 < mem["memory"]["total"]["allocated"] <= mem["memory"]["total"]["rss"], mem
    # Vhost, user, permissions; the user then works over AMQP.
    admin("declare", "vhost", "--name", "shop")
    admin("declare", "user", "--name", "clerk", "--password", "s3cret", "--tags", "management")
    admin("declare", "permissions", "--username", "clerk", "--configure", "^orders", "--write", ".*",
          "--read", ".*", vhost="shop")
    assert "shop" in admin("list", "vhosts")
    assert "clerk" in admin("list", "users")
    perms = admin("list", "permissions")
    assert "clerk" in perms and "^orders" in perms
    # Queues, exchanges, bindings.
    admin("declare", "queue", "--name", "orders", "--durable", "true", vhost="shop")
    admin("declare", "exchange", "--name", "orders.x", "--type", "direct", vhost="shop")
    admin("declare", "binding", "--source", "orders.x", "--destination-type", "queue", "--destination",
          "orders", "--routing-key", "new", vhost="shop")
    assert "orders" in admin("list", "queues", vhost="shop")
    assert "orders.x" in admin("list", "exchanges", vhost="shop")
    assert "new" in admin("list", "bindings", vhost="shop")
    status, q = http(node, "/queues/shop/orders")
    assert status == 200 and q["durable"] is True
    status, b = http(node, "/exchanges/shop/orders.x/bindings/source")
    assert [(x["destination"], x["routing_key"]) for x in b] == [("orders", "new")]
    # Publish through the exchange, get (requeue), then consume over AMQP as clerk.
    assert "routed" in admin("publish", "message", "--exchange", "orders.x", "--routing-key", "new",
                             "--payload", "order-1", vhost="shop")
    assert "order-1" in admin("get", "messages", "--queue", "orders", "--ack-mode", "ack_requeue_true",
                              vhost="shop")
    conn = pika.BlockingConnection(pika.ConnectionParameters(
        host="127.0.0.1", port=node.port, virtual_host="shop", credentials=pika.PlainCredentials("clerk", "s3cret")))
    ch = conn.channel()
    method, _, body = ch.basic_get("orders", auto_ack=True)
    assert body == b"order-1" and method.redelivered
    # clerk's configure pattern is ^orders: other names are refused over AMQP.
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("other")
    assert e.value.reply_code == 403
    conn.close()
    # Purge.
    for i in range(3):
        admin("publish", "message", "--exchange", "", "--routing-key", "orders", "--payload", f"m{i}",
              vhost="shop")
    assert http(node, "/queues/shop/orders")[1]["messages"] == 3
    admin("purge", "queue", "--name", "orders", vhost="shop")
    assert http(node, "/queues/shop/orders")[1]["messages"] == 0
    # Over HTTP too, clerk may configure only ^orders: rabbitmqadmin reports the refusal.
    admin("declare", "queue", "--name", "orders.2", user="clerk", password="s3cret", vhost="shop")
    out = admin("declare", "queue", "--name", "invoices", user="clerk", password="s3cret", vhost="shop", ok=False)
    assert "401" in out or "refused" in out, out
    assert http(node, "/queues/shop/invoices")[0] == 404
    # Definitions: export, delete, import back.
    f = tmp_path / "defs.json"
    admin("definitions", "export", "--file", str(f))
    defs = json.loads(f.read_text())
    assert any(q["name"] == "orders" and q["vhost"] == "shop" for q in defs["queues"])
    assert any(u["name"] == "clerk" for u in defs["users"])
    admin("delete", "queue", "--name", "orders", vhost="shop")
    admin("delete", "exchange", "--name", "orders.x", vhost="shop")
    assert http(node, "/queues/shop/orders")[0] == 404
    admin("definitions", "import", "--file", str(f))
    assert http(node, "/queues/shop/orders")[0] == 200
    status, b = http(node, "/exchanges/shop/orders.x/bindings/source")
    assert status == 200 and [x["routing_key"] for x in b] == ["new"]
    # Deletes.
    admin("delete", "user", "--name", "clerk")
    admin("delete", "vhost", "--name", "shop")
    assert http(node, "/vhosts/shop")[0] == 404
    assert "clerk" not in admin("list", "users")

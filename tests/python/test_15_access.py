"""Users, vhosts and permissions as a pika user meets them (RabbitMQ's access-control guide).

The broker is started with a config file (`--config`) whose `load_definitions` names a
RabbitMQ definitions file written here, with password hashes computed here with hashlib
(RabbitMQ's rabbit_password_hashing_sha256: base64(salt + sha256(salt + password))).

The remote-host case runs a pika client inside a network namespace that the test creates
(a veth pair, 10.231.x.0/30): `guest` is refused from there (loopback only, as in RabbitMQ)
and a defined user is accepted. It needs root and `ip`; it is skipped otherwise.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pika
import pika.exceptions
import pytest

from conftest import BrokerProcess, warren_binary


def rabbit_sha256(password: str, salt: bytes | None = None) -> str:
    salt = salt if salt is not None else os.urandom(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def definitions() -> dict:
    return {
        "rabbit_version": "3.12.13",
        "users": [
            {"name": "guest", "password_hash": rabbit_sha256("guest"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": "administrator"},
            {"name": "worker", "password_hash": rabbit_sha256("w0rker"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": []},
            {"name": "reader", "password_hash": rabbit_sha256("r3ader"),
             "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": ["monitoring"]},
        ],
        "vhosts": [{"name": "/"}, {"name": "jobs"}],
        "permissions": [
            {"user": "guest", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"},
            {"user": "worker", "vhost": "jobs", "configure": "^task", "write": ".*", "read": ".*"},
            {"user": "reader", "vhost": "jobs", "configure": "^$", "write": "^$", "read": "^task"},
        ],
        "topic_permissions": [
            {"user": "worker", "vhost": "jobs", "exchange": "amq.topic", "write": "^jobs\\.", "read": ".*"},
        ],
        "queues": [{"name": "tasks", "vhost": "jobs", "durable": True, "auto_delete": False, "arguments": {}}],
        "exchanges": [], "bindings": [], "policies": [], "parameters": [], "global_parameters": [],
    }


class Node:
    def __init__(self, host: str = "127.0.0.1", conf_lines: tuple[str, ...] = (), load: bool = True):
        self.dir = Path(tempfile.mkdtemp(prefix="warren-pytest-access-"))
        defs = self.dir / "definitions.json"
        defs.write_text(json.dumps(definitions()))
        conf = self.dir / "warren.conf"
        lines = [f"load_definitions = {defs}"] if load else []
        conf.write_text("\n".join([*lines, *conf_lines]) + "\n")
        self.proc = BrokerProcess(warren_binary(), self.dir / "data", self.dir / "warren.log",
                                  host=host, extra_args=["--config", str(conf)])

    def params(self, user: str, password: str, vhost: str = "/") -> pika.ConnectionParameters:
        return pika.ConnectionParameters(host=self.proc.host, port=self.proc.port, virtual_host=vhost,
                                         credentials=pika.PlainCredentials(user, password),
                                         connection_attempts=1, socket_timeout=5, blocked_connection_timeout=10)

    def close(self):
        self.proc.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def node(request):
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own broker")
    n = Node()
    request.node._extra_brokers = [n.proc]
    n.proc.start()
    yield n
    n.close()


def test_defined_user_works_in_its_vhost(node):
    conn = pika.BlockingConnection(node.params("worker", "w0rker", "jobs"))
    ch = conn.channel()
    ch.queue_declare("task.extra", durable=True)
    ch.basic_publish("", "tasks", b"job-1")
    ch.basic_publish("amq.topic", "jobs.resize", b"job-2")
    method, _, body = ch.basic_get("tasks", auto_ack=True)
    assert body == b"job-1"
    conn.close()


def test_wrong_password_unknown_vhost_and_no_permission(node):
    with pytest.raises(pika.exceptions.ProbableAuthenticationError):
        pika.BlockingConnection(node.params("worker", "nope", "jobs"))
    # pika reports a close at connection.open as a probable access denial, with the
    # broker's code and text inside.
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(node.params("worker", "w0rker", "nosuch"))
    assert "(530) 'NOT_ALLOWED - vhost nosuch not found'" in str(e.value)
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(node.params("worker", "w0rker", "/"))
    assert "(530)" in str(e.value)
    text = str(e.value).replace("\\", "")  # the text comes quoted inside pika's message
    assert "NOT_ALLOWED - access to vhost '/' refused for user 'worker'" in text, text


def test_refusals_are_channel_errors_with_rabbitmq_texts(node):
    conn = pika.BlockingConnection(node.params("reader", "r3ader", "jobs"))
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.queue_declare("task.mine")
    assert e.value.reply_code == 403
    assert "access to queue 'task.mine' in vhost 'jobs' refused for user 'reader'" in e.value.reply_text
    ch = conn.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("", "tasks", b"x")
        ch.basic_get("tasks")  # the publish has no reply: the next call sees the close
    assert e.value.reply_code == 403
    assert "access to exchange 'amq.default' in vhost 'jobs' refused for user 'reader'" in e.value.reply_text
    # read is granted on task*
    ch = conn.channel()
    assert ch.basic_get("tasks", auto_ack=True) == (None, None, None)
    conn.close()


def test_topic_permission_on_publish(node):
    conn = pika.BlockingConnection(node.params("worker", "w0rker", "jobs"))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "jobs.ok", b"x")
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
        ch.basic_publish("amq.topic", "other.key", b"x")
    assert e.value.reply_code == 403
    assert "access to topic 'other.key' in exchange 'amq.topic' in vhost 'jobs'" in e.value.reply_text
    conn.close()


def test_default_user_from_rabbitmq_environment(monkeypatch, request):
    """RABBITMQ_DEFAULT_USER/PASS/VHOST (container recipes) make a fresh node's user."""
    if os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs to spawn its own broker")
    monkeypatch.setenv("RABBITMQ_DEFAULT_USER", "admin")
    monkeypatch.setenv("RABBITMQ_DEFAULT_PASS", "s3cret")
    monkeypatch.setenv("RABBITMQ_DEFAULT_VHOST", "prod")
    n = Node(load=False)
    request.node._extra_brokers = [n.proc]
    n.proc.start()
    try:
        conn = pika.BlockingConnection(n.params("admin", "s3cret", "prod"))
        conn.channel().queue_declare("anything")
        conn.close()
        with pytest.raises(pika.exceptions.ProbableAuthenticationError):
            pika.BlockingConnection(n.params("guest", "guest", "/"))
    finally:
        n.close()


def test_users_and_data_survive_restart(node):
    conn = pika.BlockingConnection(node.params("worker", "w0rker", "jobs"))
    ch = conn.channel()
    ch.confirm_delivery()
    ch.basic_publish("", "tasks", b"persisted", pika.BasicProperties(delivery_mode=2))
    conn.close()
    node.proc.stop()
    node.proc.start()
    conn = pika.BlockingConnection(node.params("worker", "w0rker", "jobs"))
    _, _, body = conn.channel().basic_get("tasks", auto_ack=True)
    assert body == b"persisted"
    conn.close()


# --- from another host: a network namespace with a veth pair -------------------------

CLIENT = textwrap.dedent("""
    import sys, pika, pika.exceptions
    host, port, user, password, vhost = sys.argv[1:6]
    params = pika.ConnectionParameters(host=host, port=int(port), virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password), connection_attempts=1, socket_timeout=5)
    try:
        conn = pika.BlockingConnection(params)
    except pika.exceptions.ProbableAccessDeniedError as e:
        print("refused", e); sys.exit(0)
    except pika.exceptions.ProbableAuthenticationError as e:
        print("refused", e); sys.exit(0)
    ch = conn.channel()
    ch.queue_declare("tasks", durable=True)
    ch.basic_publish("", "tasks", b"from-" + user.encode())
    print("ok", ch.basic_get("tasks", auto_ack=True)[2].decode())
    conn.close()
""")


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture
def netns():
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and iproute2 to create a network namespace")
    tag = uuid.uuid4().hex[:6]
    ns, host_if, ns_if = f"warren-t{tag}", f"wvh{tag}", f"wvn{tag}"
    net = 1 + int(tag[:2], 16) % 250
    host_ip, ns_ip = f"10.231.{net}.1", f"10.231.{net}.2"
    _ip("netns", "add", ns)
    try:
        _ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _ip("link", "set", ns_if, "netns", ns)
        _ip("addr", "add", f"{host_ip}/30", "dev", host_if)
        _ip("link", "set", host_if, "up")
        _ip("netns", "exec", ns, "ip", "addr", "add", f"{ns_ip}/30", "dev", ns_if)
        _ip("netns", "exec", ns, "ip", "link", "set", ns_if, "up")
        _ip("netns", "exec", ns, "ip", "link", "set", "lo", "up")
        yield ns, host_ip
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_remote_host_guest_refused_defined_user_accepted(netns, request):
    ns, host_ip = netns
    n = Node(host=host_ip)
    request.node._extra_brokers = [n.proc]
    n.proc.start()
    try:
        def client(user, password, vhost):
            r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
                                host_ip, str(n.proc.port), user, password, vhost],
                               capture_output=True, text=True, timeout=30)
            assert r.returncode == 0, r.stderr
            return r.stdout.strip()
        # guest may only connect via localhost (RabbitMQ's loopback_users default)...
        out = client("guest", "guest", "/")
        assert out.startswith("refused"), out
        assert "can only connect via localhost" in n.proc.log_tail(50)
        # ...a defined user may connect from anywhere.
        assert client("worker", "w0rker", "jobs") == "ok from-worker"
    finally:
        n.close()
    # loopback_users.guest = false (as RabbitMQ's Docker image sets it) lets guest in.
    n = Node(host=host_ip, conf_lines=("loopback_users.guest = false",))
    request.node._extra_brokers = [n.proc]
    n.proc.start()
    try:
        r = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT,
                            host_ip, str(n.proc.port), "guest", "guest", "/"],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and r.stdout.strip() == "ok from-guest", (r.stdout, r.stderr)
    finally:
        n.close()

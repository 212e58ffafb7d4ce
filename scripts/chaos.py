#!/usr/bin/env python3
"""Seeded chaos run for quorum queues across three warren processes (issue 15).

Driven by scripts/chaos.sh (which picks the binary and the virtualenv). What it does:

- three nodes on 127.0.0.1, each behind a TCP fault proxy on its inter-node port: node i
  listens on warren.cluster_listen = 127.0.0.1:Qi, the others dial its classic_config
  entry ni@127.0.0.1:Pi where a proxy (in this process, asyncio) forwards to Qi; node i
  binds its outbound inter-node connections to 127.0.0.(i+2) (warren.cluster_source_ip),
  so a proxy can drop one node's connections. Partition X = X's proxy drops everything
  and the others' proxies drop X's source address (established links are aborted);
- three durable quorum queues `chaos-0..2`, declared on node 1 (which leads them at
  first); 2 publishers (pika, publisher confirms, one message in flight each, each message
  to a random queue) and 2 consumers (manual ack, prefetch 50, all three queues) on random
  live nodes, reconnecting to another random node after any error;
- every 3-8 s one fault on a random node, never more than one node (a minority) faulty at
  a time: kill -9 and restart after 1-4 s, SIGTERM and restart, a partition of 3-8 s then
  heal, or `warrenctl rebalance quorum` run on it (leaders handed over to even them out,
  while the clients go on); after each, wait until the node serves AMQP again;
- at the end: heal, restart anything down, stop publishing, drain (consumers keep going)
  until every confirmed body has been delivered or 90 s pass; then check.

Checks (exit 1 on a violation): every confirmed body delivered at least once; nothing
delivered that was never published. Duplicates (redeliveries after a kill) are counted,
not errors: quorum queues are at-least-once. The schedule of faults and the clients'
choice of nodes come from --seed; the interleaving with the brokers does not.
"""

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pika

QUEUES = ["chaos-0", "chaos-1", "chaos-2"]
NODES = 3
# A publish waits at most this long for its confirm (a cut-off node nacks after the write
# timeout, 2 s here).
CONFIRM_WAIT_S = 10


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Proxy:
    """Forwards 127.0.0.1:port to 127.0.0.1:target; drops all, or connections from some IPs."""

    def __init__(self, target):
        self.target = target
        self.port = None
        self.cut_all = False
        self.cut_from = set()
        self.links = set()

    def drops(self, ip):
        return self.cut_all or ip in self.cut_from

    async def start(self):
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def handle(self, reader, writer):
        ip = writer.get_extra_info("peername")[0]
        if self.drops(ip):
            writer.transport.abort()
            return
        try:
            r2, w2 = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        link = (ip, writer, w2)
        self.links.add(link)

        async def pipe(r, w):
            try:
                while True:
                    data = await r.read(65536)
                    if not data:
                        break
                    w.write(data)
                    await w.drain()
            except (OSError, ConnectionError):
                pass
            finally:
                w.transport.abort()

        await asyncio.gather(pipe(reader, w2), pipe(r2, writer))
        self.links.discard(link)

    def set(self, cut_all, cut_from):
        self.cut_all = cut_all
        self.cut_from = set(cut_from)
        for ip, w1, w2 in list(self.links):
            if self.drops(ip):
                w1.transport.abort()
                w2.transport.abort()


class Proxies:
    """The three proxies, on an asyncio loop in a thread of their own."""

    def __init__(self, targets):
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.proxies = [Proxy(t) for t in targets]
        for p in self.proxies:
            asyncio.run_coroutine_threadsafe(p.start(), self.loop).result()

    def partition(self, x):
        """Cut node x off (None: heal)."""

        async def apply():
            for i, p in enumerate(self.proxies):
                if x is None:
                    p.set(False, [])
                elif i == x:
                    p.set(True, [])
                else:
                    p.set(False, [source_ip(x)])

        asyncio.run_coroutine_threadsafe(apply(), self.loop).result()


def source_ip(i):
    return f"127.0.0.{i + 2}"


class Node:
    def __init__(self, i, work, bin_, conf):
        self.i = i
        self.name = f"n{i + 1}@127.0.0.1"
        self.data = os.path.join(work, f"n{i + 1}")
        self.conf = conf
        self.bin = bin_
        self.port = free_port()
        self.log = open(os.path.join(work, f"n{i + 1}.log"), "ab")
        self.proc = None

    def start(self):
        self.log.write(f"==== start {time.time():.3f}\n".encode())
        self.log.flush()
        self.proc = subprocess.Popen(
            [self.bin, "--config", self.conf, "--node-name", self.name, "--data-dir", self.data,
             "--amqp-port", str(self.port), "--bind", "127.0.0.1", "--management-port", "0",
             "--prometheus-port", "0", "--heartbeat", "0"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            env={**os.environ, "WARREN_LOG": os.environ.get("WARREN_LOG", "warn"), "HOME": os.path.dirname(self.data)},
        )
        # For chaos.sh's cleanup if this driver dies without stopping its nodes.
        with open(self.data + ".pid", "w") as f:
            f.write(str(self.proc.pid))

    def serving(self):
        try:
            socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
            return True
        except OSError:
            return False

    def wait_serving(self, limit=30):
        deadline = time.time() + limit
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}); see its log")
            if self.serving():
                return time.time()
            time.sleep(0.05)
        raise RuntimeError(f"{self.name} does not serve within {limit} s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def sigterm(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "hung"


class Shared:
    def __init__(self, seed):
        self.lock = threading.Lock()
        self.up = set(range(NODES))  # nodes a client may try
        self.stop_publishing = threading.Event()
        self.stop_consuming = threading.Event()
        self.published = set()
        self.confirmed = set()
        self.nacked = 0
        self.delivered = {}  # body -> times
        self.errors = {}
        self.seed = seed

    def pick(self, rng):
        with self.lock:
            up = sorted(self.up)
        return rng.choice(up) if up else None

    def error(self, what, e):
        key = f"{what}: {type(e).__name__}"
        with self.lock:
            self.errors[key] = self.errors.get(key, 0) + 1


def params(port):
    return pika.ConnectionParameters("127.0.0.1", port, heartbeat=0, blocked_connection_timeout=30,
                                     socket_timeout=5, connection_attempts=1)


def publisher(k, nodes, sh):
    rng = random.Random(f"{sh.seed}-pub{k}")
    seq = 0
    while not sh.stop_publishing.is_set():
        i = sh.pick(rng)
        if i is None:
            time.sleep(0.2)
            continue
        try:
            conn = pika.BlockingConnection(params(nodes[i].port))
            ch = conn.channel()
            ch.confirm_delivery()
            while not sh.stop_publishing.is_set():
                body = f"p{k}-{seq}"
                seq += 1
                with sh.lock:
                    sh.published.add(body)
                try:
                    ch.basic_publish("", rng.choice(QUEUES), body.encode(), pika.BasicProperties(delivery_mode=2))
                except pika.exceptions.NackError:
                    # E.g. this node is cut off (no quorum): try another one.
                    with sh.lock:
                        sh.nacked += 1
                    break
                with sh.lock:
                    sh.confirmed.add(body)
            conn.close()
        except Exception as e:  # any failure: unconfirmed, try another node
            sh.error(f"publisher on n{i + 1}", e)
            time.sleep(0.2)


def consumer(k, nodes, sh):
    rng = random.Random(f"{sh.seed}-con{k}")
    while not sh.stop_consuming.is_set():
        i = sh.pick(rng)
        if i is None:
            time.sleep(0.2)
            continue
        try:
            conn = pika.BlockingConnection(params(nodes[i].port))
            ch = conn.channel()
            ch.basic_qos(prefetch_count=50)

            def got(ch, method, _props, body):
                b = body.decode()
                with sh.lock:
                    sh.delivered[b] = sh.delivered.get(b, 0) + 1
                ch.basic_ack(method.delivery_tag)

            for q in QUEUES:
                ch.basic_consume(q, got)
            while not sh.stop_consuming.is_set():
                conn.process_data_events(time_limit=0.5)
            conn.close()
        except Exception as e:
            sh.error(f"consumer on n{i + 1}", e)
            time.sleep(0.2)


def declare(nodes):
    deadline = time.time() + 60
    while True:
        try:
            conn = pika.BlockingConnection(params(nodes[0].port))
            for q in QUEUES:
                conn.channel().queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
            conn.close()
            return
        except Exception:
            if time.time() > deadline:
                raise
            time.sleep(0.5)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--smoke", action="store_true", help="45 s of faults (about 60 s in all)")
    ap.add_argument("--warren-bin", required=True)
    ap.add_argument("--warrenctl-bin", default=None, help="default: warrenctl beside --warren-bin")
    ap.add_argument("--work", required=True)
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.randrange(1 << 31)
    load_s = 45 if a.smoke else a.minutes * 60
    rng = random.Random(seed)
    ctl = a.warrenctl_bin or os.path.join(os.path.dirname(a.warren_bin), "warrenctl")
    log(f"chaos: seed {seed}, {load_s:.0f} s of faults, binary {a.warren_bin}, work dir {a.work}")

    listen = [free_port() for _ in range(NODES)]
    proxies = Proxies(listen)
    members = "".join(
        f"cluster_formation.classic_config.nodes.{i + 1} = n{i + 1}@127.0.0.1:{p.port}\n"
        for i, p in enumerate(proxies.proxies))
    nodes = []
    for i in range(NODES):
        conf = os.path.join(a.work, f"n{i + 1}.conf")
        with open(conf, "w") as f:
            f.write("cluster_formation.peer_discovery_backend = classic_config\n" + members
                    + f"warren.cluster_listen = 127.0.0.1:{listen[i]}\n"
                    + f"warren.cluster_source_ip = {source_ip(i)}\n"
                    + "warren.cluster_write_timeout_ms = 2000\n"
                    + "warren.cluster_cookie = chaos-cookie\n")
        nodes.append(Node(i, a.work, a.warren_bin, conf))
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_serving(60)
    declare(nodes)
    sh = Shared(seed)
    threads = [threading.Thread(target=publisher, args=(k, nodes, sh), daemon=True) for k in range(2)]
    threads += [threading.Thread(target=consumer, args=(k, nodes, sh), daemon=True) for k in range(2)]
    for t in threads:
        t.start()

    events = []
    started = time.time()
    try:
        while time.time() - started < load_s:
            time.sleep(rng.uniform(3, 8))
            x = rng.randrange(NODES)
            kind = rng.choice(["kill9", "kill9", "sigterm", "partition", "partition", "rebalance"])
            t0 = time.time()
            with sh.lock:
                confirmed_before = len(sh.confirmed)
            if kind == "rebalance":
                r = subprocess.run([ctl, "-q", "--formatter", "json", "rebalance", "quorum"],
                                   env={**os.environ, "WARREN_DATA_DIR": nodes[x].data},
                                   capture_output=True, text=True, timeout=120)
                try:
                    leaders = {row["Node name"].split("@")[0]: row["Number of quorum queues"]
                               for row in json.loads(r.stdout)}
                except ValueError:
                    leaders = r.stdout.strip()
                detail = f"exit {r.returncode}, leaders {leaders}" + (f", {r.stderr.strip()}" if r.returncode else "")
            elif kind == "partition":
                hold = rng.uniform(3, 8)
                proxies.partition(x)
                time.sleep(hold)
                proxies.partition(None)
                detail = f"held {hold:.1f} s"
            else:
                with sh.lock:
                    sh.up.discard(x)
                if kind == "kill9":
                    nodes[x].kill9()
                    down = rng.uniform(1, 4)
                    time.sleep(down)
                    detail = f"down {down:.1f} s"
                else:
                    rc = nodes[x].sigterm()
                    detail = f"exit {rc}"
                nodes[x].start()
                back = nodes[x].wait_serving(60)
                detail += f", serving {back - t0:.1f} s after the fault"
                with sh.lock:
                    sh.up.add(x)
            with sh.lock:
                gained = len(sh.confirmed) - confirmed_before
            events.append({"at_s": round(t0 - started, 1), "kind": kind, "node": f"n{x + 1}", "detail": detail,
                           "confirmed_meanwhile": gained})
            log(f"{kind} n{x + 1}: {detail}; {gained} confirmed meanwhile")
    finally:
        proxies.partition(None)
    # Drain: stop publishing, let the consumers take everything confirmed.
    sh.stop_publishing.set()
    for t in threads[:2]:
        t.join(CONFIRM_WAIT_S + 10)
    drain_start = time.time()
    while time.time() - drain_start < 90:
        with sh.lock:
            missing = sh.confirmed - sh.delivered.keys()
        if not missing:
            break
        time.sleep(0.5)
    time.sleep(2)  # stragglers (duplicates) after the last one
    sh.stop_consuming.set()
    for t in threads[2:]:
        t.join(10)
    with sh.lock:
        missing = sorted(sh.confirmed - sh.delivered.keys())
        unknown = sorted(set(sh.delivered) - sh.published)
        dups = sum(c - 1 for c in sh.delivered.values())
        summary = {
            "seed": seed,
            "faults_s": round(load_s),
            "drain_s": round(time.time() - drain_start, 1),
            "events": {k: sum(1 for e in events if e["kind"] == k)
                       for k in ("kill9", "sigterm", "partition", "rebalance")},
            "published": len(sh.published),
            "confirmed": len(sh.confirmed),
            "nacked": sh.nacked,
            "delivered_distinct": len(sh.delivered),
            "duplicates": dups,
            "lost": len(missing),
            "lost_examples": missing[:10],
            "unknown_delivered": len(unknown),
            "client_errors": sh.errors,
        }
    with open(os.path.join(a.work, "summary.json"), "w") as f:
        json.dump({**summary, "event_log": events}, f, indent=1)
    for n in nodes:
        if n.proc and n.proc.poll() is None:
            n.sigterm()
    print(json.dumps(summary, indent=1))
    ok = not missing and not unknown and len(sh.confirmed) > 0
    log("chaos: PASS" if ok else "chaos: FAIL (lost or unknown messages, or nothing confirmed)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

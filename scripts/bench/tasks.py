"""Task-layer benchmarks (issue 13): the Rust worker (`warren-tasks`) against Celery's own
workers, the same messages on the same broker, and Celery on Warren against Celery on
RabbitMQ.

    .venv/bin/python scripts/bench/tasks.py [--mode throughput|latency|both]
        [--kinds rust,celery-threads,celery-prefork] [--brokers warren,rabbitmq]
        [--tasks 20000] [--concurrency 8] [--reps 3] [--rate 200] [--seconds 15]

Brokers, each on free ports of 127.0.0.1 with a fresh data directory, removed afterwards:
`warren` is target/release/warren (build it and warren-tasks with `cargo build --release -p
server --bin warren -p tasks --bin warren-tasks`); `rabbitmq` is Debian's rabbitmq-server
(`apt-get install rabbitmq-server`, as scripts/bench.sh does), started as its own node (no
plugins), stopped with rabbitmqctl.

**throughput** (no-op tasks per second): for each worker kind and repetition the queue
`celery` is filled with N `demo.add(1, 2)` tasks sent by Celery's own client (`send_task`,
ignore_result), then the worker starts and the time from its start until no task is ready in the queue
(a passive `queue.declare` every 20 ms, the same on both brokers: RabbitMQ's management
API lags by its 5 s statistics interval; the last <= C tasks, in flight, are not waited
for) is measured, so the figure includes the worker's start-up (a fraction of a second). Also printed: the worker's CPU
time per task (user + system of the worker and its child processes, from /proc), which the
other processes sharing the machine disturb much less than the rate.

**latency** (end-to-end, send -> result received): the worker runs first; a client sends
`demo.add(1, 2)` at a fixed rate (`--rate`, below every worker's saturation) for
`--seconds`, each with `reply_to` = a queue of its own, and a second connection consumes the
results (Celery's rpc backend format: the worker publishes to `reply_to`, correlation id =
task id); latency = result received - just before `send_task`, both `time.monotonic()` in
the one client process. The first second is warm-up and not counted. p50 / p99 / max are
printed.

Workers: `warren-tasks worker --demo -c C` (`$WARREN_TASKS_BIN` picks another binary, e.g. an
older build to compare with); `celery worker -P threads -c C`; `celery
worker -P prefork -c C` (a Python module defining `demo.add` is written to a temp dir).
Late ack for all (Celery: `task_acks_late`), prefetch = C (Celery:
`worker_prefetch_multiplier=1`); Celery runs with `--without-gossip --without-mingle
--without-heartbeat -l warning` and the Rust worker with `RUST_LOG=warn` (neither logs a
line per task).
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, threading, time, uuid
from pathlib import Path

import amqp
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]
RMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
RMQ_CTL = "/usr/lib/rabbitmq/bin/rabbitmqctl"

APP = """
from celery import Celery
app = Celery("bench", broker="{broker}", backend="rpc://")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1
app.conf.task_ignore_result = {ignore}

@app.task(name="demo.add")
def add(x, y):
    return x + y
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port} after {timeout} s")


class Broker:
    """A broker of the benchmark's own: `warren` or `rabbitmq`."""

    def __init__(self, kind, d: Path):
        self.kind, self.d = kind, d
        self.port, self.mport = free_port(), free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.log = open(d / f"{kind}.log", "ab")
        if kind == "warren":
            self.proc = subprocess.Popen(
                [str(ROOT / "target/release/warren"), "--amqp-port", str(self.port), "--bind", "127.0.0.1",
                 "--management-port", str(self.mport), "--prometheus-port", "0", "--data-dir", str(d / "wdata")],
                stdout=self.log, stderr=subprocess.STDOUT)
            wait_port(self.port)
        else:
            if not Path(RMQ_SERVER).exists():
                raise SystemExit("rabbitmq-server is not installed (apt-get install rabbitmq-server)")
            home = d / "rabbit-home"
            home.mkdir()
            (d / "rabbitmq.conf").write_text(
                f"listeners.tcp.1 = 127.0.0.1:{self.port}\nlog.file.level = warning\nlog.console = false\n")
            (d / "enabled_plugins").write_text("[].\n")
            self.env = dict(os.environ, HOME=str(home), RABBITMQ_NODENAME="taskbench@localhost",
                            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1", RABBITMQ_NODE_PORT=str(self.port),
                            RABBITMQ_DIST_PORT=str(free_port()), RABBITMQ_MNESIA_BASE=str(d / "mnesia"),
                            RABBITMQ_LOG_BASE=str(d / "rlog"), RABBITMQ_CONFIG_FILE=str(d / "rabbitmq.conf"),
                            RABBITMQ_ENABLED_PLUGINS_FILE=str(d / "enabled_plugins"),
                            RABBITMQ_PID_FILE=str(d / "rabbit.pid"))
            self.proc = subprocess.Popen([RMQ_SERVER], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
            wait_port(self.port)
        deadline = time.monotonic() + 60
        while True:
            try:
                self.conn = amqp.Connection(f"127.0.0.1:{self.port}", userid="guest", password="guest")
                self.conn.connect()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        self.ch = self.conn.channel()

    def depth(self, queue="celery"):
        """Tasks ready in the queue (None while it does not exist)."""
        try:
            return self.ch.queue_declare(queue, passive=True).message_count
        except amqp.exceptions.NotFound:
            self.ch = self.conn.channel()
            return None

    def stop(self):
        self.conn.close()
        if self.kind == "rabbitmq":
            subprocess.run([RMQ_CTL, "-n", "taskbench@localhost", "stop", str(self.d / "rabbit.pid")], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
        else:
            self.proc.terminate()
        self.proc.wait(timeout=120)


def tree_cpu(pid):
    """CPU seconds (user + system) of `pid` and its live descendants."""
    hz = os.sysconf("SC_CLK_TCK")
    stats = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                f = (p / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(p.name)] = (int(f[1]), int(f[11]) + int(f[12]))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += stats.get(p, (0, 0))[1]
        todo.extend(c for c, (ppid, _) in stats.items() if ppid == p)
    return total / hz


RUST_WORKER = os.environ.get("WARREN_TASKS_BIN", str(ROOT / "target/release/warren-tasks"))


def worker_cmd(kind, broker, c):
    if kind == "rust":
        return [RUST_WORKER, "worker", "--broker", broker, "--demo", "-c", str(c)]
    pool = kind.split("-")[1]
    return [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-P", pool, "-c", str(c), "--without-gossip",
            "--without-mingle", "--without-heartbeat", "-l", "warning"]


def start_worker(kind, broker, c, d, ignore):
    (d / "benchapp.py").write_text(APP.format(broker=broker, ignore=ignore))
    env = dict(os.environ, RUST_LOG="warn")
    return subprocess.Popen(worker_cmd(kind, broker, c), cwd=d, env=env, stdout=open(d / f"{kind}.log", "ab"),
                            stderr=subprocess.STDOUT)


def stop_worker(p):
    p.terminate()
    try:
        p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def throughput(b: Broker, kind, a, d):
    client = Celery("client", broker=b.url)
    rates, cpus = [], []
    for _ in range(a.reps):
        with client.connection_for_write() as conn:
            producer = client.amqp.Producer(conn)
            for _ in range(a.tasks):
                client.send_task("demo.add", (1, 2), ignore_result=True, producer=producer)
        # Publishes without confirms: a broker may still be taking them in after the client
        # closed, and RabbitMQ has been seen to keep fewer than were sent (58,706 of
        # 60,000). Wait until the depth is the count sent or has stopped changing for 2 s,
        # and count what arrived.
        n, since = b.depth(), time.monotonic()
        while n != a.tasks and time.monotonic() - since < 2:
            time.sleep(0.05)
            m = b.depth()
            if m != n:
                n, since = m, time.monotonic()
        if n != a.tasks:
            print(f"  ({b.kind}: {n} of {a.tasks} tasks sent without confirms are in the queue; counting {n})",
                  flush=True)
        t0 = time.monotonic()
        p = start_worker(kind, b.url, a.concurrency, d, True)
        try:
            cpu = 0.0
            while b.depth() != 0:
                if p.poll() is not None:
                    raise RuntimeError(f"{kind} worker exited ({p.returncode}); see {d / (kind + '.log')}")
                cpu = tree_cpu(p.pid)
                time.sleep(0.02)
            dt = time.monotonic() - t0
            cpu = max(cpu, tree_cpu(p.pid))
        finally:
            stop_worker(p)
        rates.append(n / dt)
        cpus.append(cpu / n * 1e6)
    order = sorted(range(len(rates)), key=rates.__getitem__)
    mid = order[len(order) // 2]
    print(f"{b.kind:8} {kind:15} -c {a.concurrency}: median {rates[mid]:9.0f} tasks/s  runs "
          f"{sorted(round(r) for r in rates)}  worker CPU {statistics.median(cpus):7.1f} us/task "
          f"(runs {[round(c, 1) for c in cpus]})", flush=True)


def latency(b: Broker, kind, a, d):
    p = start_worker(kind, b.url, a.concurrency, d, False)
    client = Celery("client", broker=b.url)
    reply = f"bench.reply.{uuid.uuid4().hex[:8]}"
    got, sent = {}, {}
    done = threading.Event()
    rconn = amqp.Connection(f"127.0.0.1:{b.port}", userid="guest", password="guest")
    rconn.connect()
    rch = rconn.channel()
    rch.queue_declare(reply, exclusive=True, auto_delete=True)

    def on_result(m):
        got[m.properties["correlation_id"]] = time.monotonic()

    rch.basic_consume(reply, callback=on_result, no_ack=True)

    def drain():
        while not done.is_set():
            try:
                rconn.drain_events(timeout=0.1)
            except socket.timeout:
                pass

    t = threading.Thread(target=drain, daemon=True)
    t.start()
    try:
        # The worker is up once a first task comes back.
        with client.connection_for_write() as conn:
            producer = client.amqp.Producer(conn)
            probe = str(uuid.uuid4())
            client.send_task("demo.add", (0, 0), task_id=probe, reply_to=reply, producer=producer)
            deadline = time.monotonic() + 60
            while probe not in got:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{kind} on {b.kind}: worker did not answer")
                time.sleep(0.05)
            n = int(a.rate * a.seconds)
            t0 = time.monotonic()
            for i in range(n):
                due = t0 + i / a.rate
                now = time.monotonic()
                if due > now:
                    time.sleep(due - now)
                tid = str(uuid.uuid4())
                sent[tid] = (time.monotonic(), i)
                client.send_task("demo.add", (1, 2), task_id=tid, reply_to=reply, producer=producer)
        deadline = time.monotonic() + 60
        while len([k for k in sent if k in got]) < len(sent) and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        done.set()
        t.join()
        rconn.close()
        stop_worker(p)
    lat = sorted((got[k] - s) * 1e3 for k, (s, i) in sent.items() if k in got and i >= a.rate)
    lost = sum(1 for k in sent if k not in got)
    q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
    print(f"{b.kind:8} {kind:15} -c {a.concurrency}: {a.rate}/s for {a.seconds} s: p50 {q(0.5):7.2f} ms  "
          f"p99 {q(0.99):7.2f} ms  max {lat[-1]:7.2f} ms  ({len(lat)} counted, {lost} without result)", flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", default="throughput", choices=["throughput", "latency", "both"])
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--rate", type=float, default=200)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--kinds", default="rust,celery-threads,celery-prefork")
    ap.add_argument("--brokers", default="warren")
    a = ap.parse_args()
    for bk in a.brokers.split(","):
        d = Path(tempfile.mkdtemp(prefix="warren-tasks-bench-"))
        b = Broker(bk, d)
        try:
            for kind in a.kinds.split(","):
                if a.mode in ("throughput", "both"):
                    throughput(b, kind, a, d)
                if a.mode in ("latency", "both"):
                    latency(b, kind, a, d)
        finally:
            b.stop()
            shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

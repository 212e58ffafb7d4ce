"""No-op task throughput: the Rust worker (`warren-tasks`) against Celery's own workers,
the same messages on the same broker (issue 13's benchmark).

    .venv/bin/python scripts/bench/tasks.py [--tasks 20000] [--concurrency 8] [--reps 3]

Starts a release `warren` on free ports of 127.0.0.1 (target/release/warren; build it and
warren-tasks with `cargo build --release -p server --bin warren -p tasks --bin warren-tasks`).
For each worker kind and repetition: the queue `celery` is filled with N `demo.add(1, 2)`
tasks sent by Celery's own client (`send_task`, ignore_result), then the worker starts and
the time from its start until the queue is empty (ready and unacked 0, read from the
management API every 20 ms) is measured, so the figure includes the worker's start-up (a
fraction of a second). Workers: `warren-tasks worker --demo -c C`; `celery worker -P
threads -c C`; `celery worker -P prefork -c C` (a Python module defining `demo.add` is
written to a temp dir). Late ack for all (Celery: `task_acks_late`), prefetch = C
(Celery: `worker_prefetch_multiplier=1`).
"""
import argparse, os, shutil, socket, subprocess, sys, tempfile, time
from pathlib import Path

import requests
from celery import Celery

ROOT = Path(__file__).resolve().parents[2]

APP = """
from celery import Celery
app = Celery("bench", broker="{broker}")
app.conf.task_acks_late = True
app.conf.worker_prefetch_multiplier = 1
app.conf.task_ignore_result = True

@app.task(name="demo.add")
def add(x, y):
    return x + y
"""


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def depth(mport):
    r = requests.get(f"http://127.0.0.1:{mport}/api/queues/%2F/celery", auth=("guest", "guest"), timeout=5)
    if r.status_code != 200:
        return None
    q = r.json()
    return q["messages_ready"] + q["messages_unacknowledged"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20_000)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--kinds", default="rust,celery-threads,celery-prefork")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="warren-tasks-bench-"))
    port, mport = free_port(), free_port()
    broker = f"amqp://guest:guest@127.0.0.1:{port}//"
    (d / "benchapp.py").write_text(APP.format(broker=broker))
    w = subprocess.Popen([str(ROOT / "target/release/warren"), "--amqp-port", str(port), "--bind", "127.0.0.1",
                          "--management-port", str(mport), "--prometheus-port", "0", "--data-dir", str(d / "data")],
                         stdout=open(d / "warren.log", "wb"), stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        client = Celery("client", broker=broker)
        c = str(a.concurrency)
        cmds = {
            "rust": [str(ROOT / "target/release/warren-tasks"), "worker", "--broker", broker, "--demo", "-c", c],
            "celery-threads": [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-P", "threads", "-c", c,
                               "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
            "celery-prefork": [sys.executable, "-m", "celery", "-A", "benchapp", "worker", "-P", "prefork", "-c", c,
                               "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "warning"],
        }
        for kind in a.kinds.split(","):
            rates = []
            for _ in range(a.reps):
                with client.connection_for_write() as conn:
                    producer = client.amqp.Producer(conn)
                    for _ in range(a.tasks):
                        client.send_task("demo.add", (1, 2), ignore_result=True, producer=producer)
                while depth(mport) != a.tasks:
                    time.sleep(0.05)
                t0 = time.monotonic()
                p = subprocess.Popen(cmds[kind], cwd=d, stdout=open(d / f"{kind}.log", "ab"), stderr=subprocess.STDOUT)
                while depth(mport) != 0:
                    time.sleep(0.02)
                dt = time.monotonic() - t0
                p.terminate()
                p.wait(timeout=60)
                rates.append(a.tasks / dt)
            rates.sort()
            print(f"{kind:15} -c {c}: median {rates[len(rates) // 2]:9.0f} tasks/s  runs {[round(r) for r in rates]}",
                  flush=True)
    finally:
        w.terminate()
        w.wait()
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())

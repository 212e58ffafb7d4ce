#!/usr/bin/env python3
"""Soak and chaos run for Warren (issue 9). Start it through scripts/soak.sh, which
prepares the venv, the broker binary and the tmpfs, and cleans up; see that file for
usage. This file is the driver:

* one `warren` child on a free 127.0.0.1 port, its data dir on a small tmpfs, with
  `--disk-free-limit` at a quarter of the tmpfs;
* client processes (forked, each with its own seeded RNG, each reconnecting with
  backoff after every kill):
  - publishers (pika SelectConnection, publisher confirms, a window of messages in
    flight, a steady rate): persistent messages `p<publisher>-<seq>` through the durable
    direct exchange `soak.x` into the durable queues `soak.q0` / `soak.q1`, mandatory;
    bodies are 16 B .. 1.5 KiB, one in ~500 is 100-150 KiB (several frames), all derived
    from the id, so a consumer can check every byte;
  - fast consumers (BlockingConnection, prefetch 200, ack after recording the id);
  - a slow consumer (prefetch 2, sleeps 50-250 ms per message);
  - a non-reading client: raw socket, AMQP handshake, basic.qos 20000, basic.consume on
    both queues, then it never reads its socket again (it only writes a heartbeat frame
    now and then to notice a dead broker); it drops its socket and comes back every
    20-60 s (15-25 s in the smoke) and after every kill, so the broker must notice the
    close of a connection it cannot write to and requeue what it held;
* chaos, on a schedule drawn from the seed (printed; `--seed` replays it): `kill -9` of
  the broker (sometimes twice: again while it recovers), restart on the same data dir;
  disk-alarm episodes: a filler file in the same tmpfs leaves half the free-space limit
  free, the broker must raise its disk alarm (publishers blocked), then the file is
  deleted and the alarm must clear and publishing resume;
* every second: the broker's VmRSS from /proc/<pid>/status.

At the end: publishers stop (waiting for their last confirms), the filler is gone, the
non-reading client closes, consumers drain the queues, whatever is left is fetched with
basic.get, and then:

* every id whose publisher confirm was basic.ack was delivered at least once (nacks are
  allowed and counted; publishes in flight at a kill count as neither);
* nothing was delivered that was never published, no body was damaged, no confirmed
  message was returned as unroutable;
* the broker's RSS stayed under `--rss-limit-mb`;
* each disk alarm was raised and cleared, publishers were blocked while it was on and
  published again after it cleared; the broker restarted after every kill;
* the broker still serves (declare, confirmed publish, basic.get) and stops cleanly on
  SIGTERM.

A summary is printed (and written to <work>/summary.json); the exit status is 1 on any
violation, 2 when the run could not be set up.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import json
import multiprocessing as mp
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
import traceback
import zlib
from pathlib import Path

import pika
import pika.frame
import pika.spec as spec

HOST = "127.0.0.1"
EXCHANGE = "soak.x"
QUEUES = ["soak.q0", "soak.q1"]
FINAL_QUEUE = "soak.final"
PATTERN = bytes((i * 31 + 7) % 251 for i in range(160_000))


# --------------------------------------------------------------------------- messages


def body_for(pub: int, seq: int) -> bytes:
    """The body of message `p<pub>-<seq>`: its id, then bytes derived from it."""
    mid = f"p{pub}-{seq}"
    h = zlib.crc32(mid.encode())
    size = 16 + h % 1500
    if h % 509 == 0:
        size = 100_000 + h % 50_000  # more than one frame (frame_max 128 KiB)
    start = h % 251
    return mid.encode() + b"|" + PATTERN[start:start + size]


def parse_id(mid: str):
    m = re.fullmatch(r"p(\d+)-(\d+)", mid or "")
    return (int(m.group(1)), int(m.group(2))) if m else None


# --------------------------------------------------------------------------- shared state

# Per-client counters (one writer each), read by the driver for progress and checks.
STAT_FIELDS = ["published", "confirmed", "nacked", "returned", "connects", "blocked", "delivered", "errors",
               "unread_max"]
NSTAT = len(STAT_FIELDS)


class Shared:
    def __init__(self, nclients: int, port: int):
        ctx = mp.get_context("fork")
        self.port = ctx.Value("i", port, lock=False)
        self.gen = ctx.Value("i", 0, lock=False)  # broker incarnation, +1 at every kill
        self.stop_publishers = ctx.Event()
        self.stop_nonreader = ctx.Event()
        self.stop_consumers = ctx.Event()
        self.stats = ctx.Array("q", nclients * NSTAT, lock=False)

    def stat(self, slot: int, field: str) -> int:
        return self.stats[slot * NSTAT + STAT_FIELDS.index(field)]

    def add(self, slot: int, field: str, n: int = 1) -> None:
        self.stats[slot * NSTAT + STAT_FIELDS.index(field)] += n

    def total(self, field: str, slots) -> int:
        return sum(self.stat(s, field) for s in slots)


def conn_params(shared: Shared, **kw) -> pika.ConnectionParameters:
    kw.setdefault("heartbeat", 30)
    kw.setdefault("connection_attempts", 1)
    kw.setdefault("socket_timeout", 10)
    kw.setdefault("stack_timeout", 30)
    kw.setdefault("blocked_connection_timeout", None)
    return pika.ConnectionParameters(host=HOST, port=shared.port.value, virtual_host="/",
                                     credentials=pika.PlainCredentials("guest", "guest"), **kw)


def child_setup(name: str, work: Path):
    """Common start of a client process: ignore ^C (the driver stops us), stderr to a file."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    err = open(work / f"{name}.err", "a", buffering=1)
    os.dup2(err.fileno(), 2)
    sys.stderr = err
    return err


def note(err, what: str) -> None:
    err.write(f"{time.strftime('%H:%M:%S')} {what}\n")


# --------------------------------------------------------------------------- publisher


class Publisher:
    """Publishes `p<idx>-<seq>` with confirms; writes its ledger to pub<idx>.log:
    `a <seq>` ack, `n <seq>` nack, `r <seq>` returned, `F <unix time> <gen>` first ack of a
    connection, `E <text>` channel/connection error, `P <next seq>` at the end."""

    def __init__(self, idx: int, slot: int, cfg: dict, shared: Shared):
        self.idx, self.slot, self.cfg, self.shared = idx, slot, cfg, shared
        self.rng = random.Random(f"{cfg['seed']}-pub{idx}")
        self.next_seq = 0
        self.window = cfg["window"]
        self.rate = cfg["rate"]

    def run(self) -> None:
        work = Path(self.cfg["work"])
        self.err = child_setup(f"pub{self.idx}", work)
        self.log = open(work / f"pub{self.idx}.log", "w", buffering=1 << 16)
        backoff = 0.1
        try:
            while not self.shared.stop_publishers.is_set():
                self.got_ack = False
                try:
                    self.session()
                except Exception as e:  # noqa: BLE001 - reconnect whatever happened
                    note(self.err, f"session: {e!r}")
                if self.got_ack:
                    backoff = 0.1
                if self.shared.stop_publishers.is_set():
                    break
                time.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 2.0)
        finally:
            self.log.write(f"P {self.next_seq}\n")
            self.log.close()

    def session(self) -> None:
        self.inflight: collections.OrderedDict[int, int] = collections.OrderedDict()
        self.tag = 0
        self.ch = None
        self.gen_at_connect = self.shared.gen.value
        self.tokens = 0.0
        self.last = time.monotonic()
        self.stop_deadline = None
        self.conn = pika.SelectConnection(
            conn_params(self.shared),
            on_open_callback=self.on_open,
            on_open_error_callback=lambda c, e: (note(self.err, f"connect: {e!r}"), c.ioloop.stop()),
            on_close_callback=self.on_closed,
        )
        self.conn.add_on_connection_blocked_callback(self.on_blocked)
        self.conn.add_on_connection_unblocked_callback(lambda c, f: self.log.write(f"U {time.time():.3f}\n"))
        try:
            self.conn.ioloop.start()
        finally:
            # Whatever was in flight is in doubt: neither confirmed nor nacked.
            try:
                if not self.conn.is_closed:
                    self.conn.close()
                    self.conn.ioloop.start()
            except Exception:  # noqa: BLE001
                pass

    def on_blocked(self, conn, frame) -> None:
        self.shared.add(self.slot, "blocked")
        self.log.write(f"B {time.time():.3f}\n")

    def on_open(self, conn) -> None:
        self.shared.add(self.slot, "connects")
        conn.channel(on_open_callback=self.on_channel)

    def on_closed(self, conn, reason) -> None:
        if not self.shared.stop_publishers.is_set():
            note(self.err, f"connection closed: {reason!r}")
        conn.ioloop.stop()

    def on_channel(self, ch) -> None:
        self.ch = ch
        ch.add_on_close_callback(self.on_channel_closed)
        ch.add_on_return_callback(self.on_return)
        ch.confirm_delivery(self.on_confirm, callback=lambda f: self.pump())

    def on_channel_closed(self, ch, reason) -> None:
        if isinstance(reason, pika.exceptions.ChannelClosedByBroker):
            self.log.write(f"E channel closed by the broker: {reason.reply_code} {reason.reply_text}\n")
            self.shared.add(self.slot, "errors")
        self.ch = None
        if self.conn.is_open:
            self.conn.close()

    def on_return(self, ch, method, props, body) -> None:
        ids = parse_id(props.message_id)
        if ids:
            self.log.write(f"r {ids[1]}\n")
        self.shared.add(self.slot, "returned")

    def on_confirm(self, frame) -> None:
        m = frame.method
        kind = "a" if isinstance(m, spec.Basic.Ack) else "n"
        done = []
        if m.multiple or m.delivery_tag == 0:
            while self.inflight:
                tag = next(iter(self.inflight))
                if m.delivery_tag != 0 and tag > m.delivery_tag:
                    break
                done.append(self.inflight.pop(tag))
        elif m.delivery_tag in self.inflight:
            done.append(self.inflight.pop(m.delivery_tag))
        else:
            self.log.write(f"E confirm for an unknown delivery tag {m.delivery_tag}\n")
            self.shared.add(self.slot, "errors")
        for seq in done:
            self.log.write(f"{kind} {seq}\n")
        if kind == "a":
            self.shared.add(self.slot, "confirmed", len(done))
            if done and not self.got_ack:
                self.got_ack = True
            if done and self.gen_at_connect is not None:
                self.log.write(f"F {time.time():.3f} {self.gen_at_connect}\n")
                self.gen_at_connect = None
        else:
            self.shared.add(self.slot, "nacked", len(done))

    def pump(self) -> None:
        if self.ch is None or not self.ch.is_open:
            return
        now = time.monotonic()
        if self.shared.stop_publishers.is_set():
            if self.stop_deadline is None:
                self.stop_deadline = now + self.cfg["stop_wait"]
            if not self.inflight or now > self.stop_deadline:
                self.ch = None
                self.conn.close()
                # A broker that does not read us (blocked) never answers the close.
                self.conn.ioloop.call_later(10, self.conn.ioloop.stop)
                return
            self.conn.ioloop.call_later(0.05, self.pump)
            return
        self.tokens = min(self.tokens + (now - self.last) * self.rate, self.window)
        self.last = now
        n = min(int(self.tokens), self.window - len(self.inflight))
        for _ in range(max(n, 0)):
            seq = self.next_seq
            mid = f"p{self.idx}-{seq}"
            props = spec.BasicProperties(delivery_mode=2, message_id=mid, content_type="application/octet-stream")
            try:
                self.ch.basic_publish(EXCHANGE, f"k{seq % len(QUEUES)}", body_for(self.idx, seq), props, mandatory=True)
            except Exception as e:  # noqa: BLE001 - the connection is going away
                note(self.err, f"publish: {e!r}")
                return
            self.next_seq += 1
            self.tag += 1
            self.inflight[self.tag] = seq
            self.tokens -= 1
            self.shared.add(self.slot, "published")
        self.conn.ioloop.call_later(0.01, self.pump)


# --------------------------------------------------------------------------- consumers


class Consumer:
    """Consumes both queues, records every delivery (`<pub> <seq> <redelivered>`, or
    `X <what>` for a damaged one) in con<idx>.log before acking it."""

    def __init__(self, idx: int, slot: int, cfg: dict, shared: Shared, slow: bool):
        self.idx, self.slot, self.cfg, self.shared, self.slow = idx, slot, cfg, shared, slow
        self.rng = random.Random(f"{cfg['seed']}-con{idx}")
        self.name = f"con{idx}" + ("-slow" if slow else "")

    def run(self) -> None:
        work = Path(self.cfg["work"])
        self.err = child_setup(self.name, work)
        self.log = open(work / f"{self.name}.log", "w", buffering=1 << 16)
        backoff = 0.1
        try:
            while not self.shared.stop_consumers.is_set():
                try:
                    self.session()
                    backoff = 0.1
                except Exception as e:  # noqa: BLE001 - reconnect whatever happened
                    note(self.err, f"session: {e!r}")
                    if isinstance(e, pika.exceptions.ChannelClosedByBroker):
                        self.log.write(f"E channel closed by the broker: {e.reply_code} {e.reply_text}\n")
                        self.shared.add(self.slot, "errors")
                if self.shared.stop_consumers.is_set():
                    break
                time.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 2.0)
        finally:
            self.log.close()

    def session(self) -> None:
        conn = pika.BlockingConnection(conn_params(self.shared))
        try:
            self.shared.add(self.slot, "connects")
            ch = conn.channel()
            ch.basic_qos(prefetch_count=2 if self.slow else 200)
            tags = [ch.basic_consume(q, self.on_message) for q in QUEUES]
            while not self.shared.stop_consumers.is_set():
                conn.process_data_events(time_limit=0.5)
            # Stopping: cancel, ack what already arrived, close (the rest is requeued).
            for t in tags:
                ch.basic_cancel(t)
            conn.process_data_events(time_limit=0.5)
            conn.close()
        finally:
            if conn.is_open:
                try:
                    conn.close()
                except Exception:  # noqa: BLE001
                    pass

    def on_message(self, ch, method, props, body) -> None:
        ids = parse_id(props.message_id)
        if ids is None or body != body_for(*ids):
            self.log.write(f"X {props.message_id!r} {body[:40]!r} len={len(body)}\n")
        else:
            self.log.write(f"{ids[0]} {ids[1]} {int(method.redelivered)}\n")
        self.shared.add(self.slot, "delivered")
        if self.slow:
            time.sleep(self.rng.uniform(0.05, 0.25))
        ch.basic_ack(method.delivery_tag)


# --------------------------------------------------------------------------- non-reading client


class NonReader:
    """Connects with a raw socket, consumes both queues with prefetch 20000 and never
    reads its socket again. It only writes (a heartbeat frame every 2 s) to notice a dead
    broker, and drops its socket now and then (and after each kill) to come back."""

    def __init__(self, slot: int, cfg: dict, shared: Shared):
        self.slot, self.cfg, self.shared = slot, cfg, shared
        self.rng = random.Random(f"{cfg['seed']}-nonreader")
        self.heartbeat = pika.frame.Heartbeat().marshal()

    def run(self) -> None:
        work = Path(self.cfg["work"])
        self.err = child_setup("nonreader", work)
        lo, hi = self.cfg["nonreader_drop"]
        backoff = 0.1
        while not self.shared.stop_nonreader.is_set():
            gen = self.shared.gen.value
            try:
                s = self.connect()
            except Exception as e:  # noqa: BLE001
                note(self.err, f"connect: {e!r}")
                time.sleep(backoff * (0.5 + self.rng.random()))
                backoff = min(backoff * 2, 2.0)
                continue
            backoff = 0.1
            self.shared.add(self.slot, "connects")
            drop_at = time.monotonic() + self.rng.uniform(lo, hi)
            next_beat = time.monotonic() + 2
            try:
                while (not self.shared.stop_nonreader.is_set() and self.shared.gen.value == gen
                       and time.monotonic() < drop_at):
                    if time.monotonic() >= next_beat:
                        next_beat += 2
                        s.send(self.heartbeat)  # never blocks: the broker reads this socket
                        unread = struct.unpack("i", fcntl.ioctl(s.fileno(), termios.FIONREAD, b"\0" * 4))[0]
                        i = self.slot * NSTAT + STAT_FIELDS.index("unread_max")
                        self.shared.stats[i] = max(self.shared.stats[i], unread)
                    time.sleep(0.1)
            except OSError as e:
                note(self.err, f"socket: {e!r}")
            finally:
                s.close()  # with unread data: a reset

    def connect(self) -> socket.socket:
        s = socket.create_connection((HOST, self.shared.port.value), timeout=10)
        buf = bytearray()

        def send(channel: int, method) -> None:
            s.sendall(pika.frame.Method(channel, method).marshal())

        def expect(cls):
            nonlocal buf
            while True:
                used, frame = pika.frame.decode_frame(bytes(buf))
                if frame is None:
                    data = s.recv(65536)
                    if not data:
                        raise ConnectionError("closed during the handshake")
                    buf += data
                    continue
                del buf[:used]
                if isinstance(frame, pika.frame.Method):
                    if isinstance(frame.method, cls):
                        return frame.method
                    if isinstance(frame.method, (spec.Connection.Close, spec.Channel.Close)):
                        raise ConnectionError(f"closed by the broker: {frame.method}")

        try:
            s.sendall(b"AMQP\x00\x00\x09\x01")
            expect(spec.Connection.Start)
            send(0, spec.Connection.StartOk(
                client_properties={"product": "warren-soak non-reading client",
                                   "capabilities": {"consumer_cancel_notify": True}},
                mechanism="PLAIN", response=b"\0guest\0guest", locale="en_US"))
            tune = expect(spec.Connection.Tune)
            send(0, spec.Connection.TuneOk(channel_max=tune.channel_max, frame_max=tune.frame_max, heartbeat=0))
            send(0, spec.Connection.Open(virtual_host="/"))
            expect(spec.Connection.OpenOk)
            send(1, spec.Channel.Open())
            expect(spec.Channel.OpenOk)
            send(1, spec.Basic.Qos(prefetch_count=20000))
            expect(spec.Basic.QosOk)
            for q in QUEUES:
                send(1, spec.Basic.Consume(queue=q, consumer_tag=f"nonreader.{q}"))
                expect(spec.Basic.ConsumeOk)
        except BaseException:
            s.close()
            raise
        return s


def run_child(obj) -> None:
    try:
        obj.run()
    except Exception:  # noqa: BLE001
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(3)
    os._exit(0)


# --------------------------------------------------------------------------- broker


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((HOST, port), timeout=0.5):
            return True
    except OSError:
        return False


class Broker:
    def __init__(self, binary: str, data_dir: Path, log: Path, pidfile: Path, disk_free_limit: int):
        self.binary, self.data_dir, self.log, self.pidfile = binary, data_dir, log, pidfile
        self.disk_free_limit = disk_free_limit
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.lock = threading.Lock()

    @property
    def pid(self):
        p = self.proc
        return p.pid if p is not None and p.poll() is None else None

    def spawn(self) -> None:
        with open(self.log, "ab") as f:
            f.write(f"=== soak: starting {self.binary} on port {self.port} at {time.strftime('%H:%M:%S')}\n".encode())
            f.flush()
            env = dict(os.environ, NO_COLOR="1", RUST_BACKTRACE="1")
            env.setdefault("WARREN_LOG", "info")
            with self.lock:
                self.proc = subprocess.Popen(
                    [self.binary, "--amqp-port", str(self.port), "--bind", HOST, "--management-port", "0", "--prometheus-port", "0",
                     "--data-dir", str(self.data_dir),
                     "--disk-free-limit", str(self.disk_free_limit)],
                    stdin=subprocess.DEVNULL, stdout=f, stderr=f, env=env, start_new_session=True)
        self.pidfile.write_text(str(self.proc.pid))

    def wait_ready(self, timeout: float) -> str | None:
        """None when it accepts connections, else why not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with {self.proc.returncode} during start"
            if port_accepts(self.port):
                return None
            time.sleep(0.05)
        return f"did not accept connections within {timeout:.0f}s"

    def kill9(self) -> None:
        with self.lock:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
            if self.proc is not None:
                self.proc.wait()

    def rss_kb(self):
        pid = self.pid
        if pid is None:
            return None
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])
        except OSError:
            return None
        return None


class LogWatch:
    """Follows the broker log: disk alarm transitions, panics, errors."""

    def __init__(self, path: Path):
        self.path = path
        self.pos = 0
        self.alarm = False
        self.transitions: list[tuple[float, bool]] = []
        self.panics: list[str] = []
        self.errors: collections.Counter = collections.Counter()
        self.error_examples: dict[str, str] = {}

    def restarting(self) -> None:
        """The old process is gone and the new one not started yet: it starts without alarms."""
        self.poll()
        self.alarm = False

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.pos)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n")
        if end < 0:
            return
        self.pos += end + 1
        now = time.time()
        for raw in data[:end].split(b"\n"):
            line = raw.decode("utf-8", "replace")
            if "disk resource alarm" in line:
                on = "on=true" in line
                self.alarm = on
                self.transitions.append((now, on))
            if "panicked" in line:
                self.panics.append(line)
            if " ERROR " in line:
                key = re.sub(r"\d+", "N", line.split(" ERROR ", 1)[1])[:120]
                self.errors[key] += 1
                self.error_examples.setdefault(key, line)


# --------------------------------------------------------------------------- driver


class Run:
    def __init__(self, args):
        self.args = args
        self.work = Path(args.work)
        self.mount = Path(args.mount)
        self.seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 2**31)
        self.rng = random.Random(self.seed)
        self.violations: list[str] = []
        self.smoke = args.smoke
        st = os.statvfs(self.mount)
        self.tmpfs_bytes = st.f_blocks * st.f_frsize
        self.disk_free_limit = self.tmpfs_bytes // 4
        self.data_dir = self.mount / "data"
        self.filler = self.mount / "filler"
        self.load_seconds = args.load_seconds or (55 if self.smoke else args.minutes * 60)
        self.cfg = dict(
            seed=self.seed, work=str(self.work),
            window=32 if self.smoke else 64,
            rate=args.rate or (150 if self.smoke else 300),
            stop_wait=30.0,
            nonreader_drop=(15, 25) if self.smoke else (20, 60),
        )
        self.kills: list[dict] = []
        self.episodes: list[dict] = []
        self.max_rss_kb = 0
        self.rss_samples = 0
        self.alarm_on_samples = 0
        self.max_data_bytes = 0
        self.blocking = {"on_since": None, "periods": 0, "confirmed": 0, "connects": 0, "seconds": 0.0, "last": None}
        self.unexpected_exits: list[str] = []
        self.child_deaths: list[str] = []
        self.stop_sampler = threading.Event()
        self.started = time.time()

    def violation(self, text: str) -> None:
        print(f"!! VIOLATION: {text}", flush=True)
        self.violations.append(text)

    # ---- schedule

    def schedule(self):
        rng, load = self.rng, self.load_seconds
        kills, fills = [], []
        if self.smoke:
            kills = [(rng.uniform(9, 13), False), (rng.uniform(32, 36), True)]
            fills = [(rng.uniform(17, 20), rng.uniform(5, 7))]
        else:
            t = 10.0
            while True:
                t += rng.uniform(20, 70)
                if t > load - 20:
                    break
                kills.append((t, rng.random() < 0.2))
            t = 20.0
            while True:
                t += rng.uniform(40, 110)
                hold = rng.uniform(5, 25)
                if t + hold > load - 20:
                    break
                fills.append((t, hold))
                t += hold
        events = [(t, "kill", double) for t, double in kills]
        for t, hold in fills:
            events += [(t, "fill", hold), (t + hold, "unfill", None)]
        return sorted(events, key=lambda e: e[0])

    # ---- processes

    def start_clients(self, shared: Shared) -> None:
        ctx = mp.get_context("fork")
        self.clients = []
        self.pub_slots, self.con_slots = [], []
        slot = 0
        for i in range(self.args.publishers):
            self.clients.append((f"pub{i}", ctx.Process(target=run_child, args=(Publisher(i, slot, self.cfg, shared),),
                                                        daemon=True)))
            self.pub_slots.append(slot)
            slot += 1
        for i in range(self.args.consumers + 1):
            slow = i == self.args.consumers
            self.clients.append((f"con{i}" + ("-slow" if slow else ""),
                                 ctx.Process(target=run_child, args=(Consumer(i, slot, self.cfg, shared, slow),),
                                             daemon=True)))
            self.con_slots.append(slot)
            slot += 1
        self.nonreader_slot = slot
        self.nonreader = ctx.Process(target=run_child, args=(NonReader(slot, self.cfg, shared),), daemon=True)
        self.clients.append(("nonreader", self.nonreader))
        for _, p in self.clients:
            p.start()

    def check_children(self) -> None:
        for name, p in self.clients:
            if p.exitcode not in (None, 0) and name not in self.child_deaths:
                self.child_deaths.append(name)
                err = (self.work / f"{name}.err").read_text(errors="replace")[-2000:]
                self.violation(f"client process {name} died (exit {p.exitcode}):\n{err}")

    # ---- broker lifecycle

    def start_broker(self, timeout: float = 90.0) -> float | None:
        """Start and wait until it accepts; seconds it took, None on failure."""
        t = time.monotonic()
        for attempt in range(3):
            self.logwatch.restarting()
            self.broker.spawn()
            why = self.broker.wait_ready(timeout)
            if why is None:
                return time.monotonic() - t
            self.broker.kill9()
            tail = "\n".join(self.broker.log.read_text(errors="replace").splitlines()[-30:])
            if "in use" in tail and attempt < 2:  # port taken meanwhile: take another
                self.broker.port = free_port()
                self.shared.port.value = self.broker.port
                continue
            self.violation(f"the broker did not start: {why}\n{tail}")
            return None
        return None

    def probe(self, timeout: float = 60.0) -> str | None:
        """The broker answers and its durable topology is there. None when fine."""
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                conn = pika.BlockingConnection(conn_params(self.shared, heartbeat=0))
                try:
                    ch = conn.channel()
                    for q in QUEUES:
                        ch.queue_declare(q, passive=True)
                    ch.exchange_declare(EXCHANGE, passive=True)
                    return None
                finally:
                    if conn.is_open:
                        conn.close()
            except pika.exceptions.ChannelClosedByBroker as e:
                return f"durable topology missing after a restart: {e.reply_code} {e.reply_text}"
            except Exception as e:  # noqa: BLE001
                last = e
                time.sleep(0.2)
        return f"no answer within {timeout:.0f}s: {last!r}"

    def declare_topology(self) -> None:
        conn = pika.BlockingConnection(conn_params(self.shared, heartbeat=0))
        ch = conn.channel()
        ch.exchange_declare(EXCHANGE, "direct", durable=True)
        for i, q in enumerate(QUEUES):
            ch.queue_declare(q, durable=True)
            ch.queue_bind(q, EXCHANGE, f"k{i}")
        conn.close()

    def sampler(self) -> None:
        with open(self.work / "rss.csv", "w") as out:
            out.write("t_seconds,vmrss_kb\n")
            while not self.stop_sampler.wait(1.0):
                kb = self.broker.rss_kb()
                if kb is None:
                    continue
                self.rss_samples += 1
                self.alarm_on_samples += int(self.logwatch.alarm)
                try:  # the broker's files on the tmpfs: all used space but the filler
                    st = os.statvfs(self.mount)
                    used = (st.f_blocks - st.f_bfree) * st.f_frsize
                    filler = self.filler.stat().st_blocks * 512 if self.filler.exists() else 0
                    self.max_data_bytes = max(self.max_data_bytes, used - filler)
                except OSError:
                    pass
                self.max_rss_kb = max(self.max_rss_kb, kb)
                out.write(f"{time.time() - self.started:.1f},{kb}\n")
                out.flush()

    def check_broker_alive(self) -> None:
        p = self.broker.proc
        if p is not None and p.poll() is not None:
            self.logwatch.poll()
            tail = "\n".join(self.broker.log.read_text(errors="replace").splitlines()[-40:])
            self.unexpected_exits.append(f"exit {p.returncode}")
            self.violation(f"the broker exited by itself (code {p.returncode}):\n{tail}")
            self.shared.gen.value += 1
            self.start_broker()

    # ---- chaos

    def kill(self, double: bool) -> None:
        k = {"t": round(time.time() - self.started, 1), "double": double, "alarm_on": self.logwatch.alarm}
        self.broker.kill9()
        self.shared.gen.value += 1
        if double:
            # Again while it starts (recovery under way or just done): recovery must be
            # repeatable.
            self.broker.spawn()
            time.sleep(self.rng.uniform(0.02, 0.4))
            self.broker.kill9()
            self.shared.gen.value += 1
        k["at"] = time.time()
        k["gen"] = self.shared.gen.value
        up = self.start_broker()
        if up is None:
            raise SystemExit(self.finish_early("the broker could not be restarted"))
        why = self.probe()
        k["ready_s"] = round(time.time() - k["at"], 2)
        if why is not None:
            self.violation(f"after the kill at {k['t']}s: {why}")
        self.kills.append(k)
        print(f"[{k['t']:7.1f}s] kill -9{' (twice)' if double else ''}; back and serving after {k['ready_s']}s",
              flush=True)

    def fill(self, hold: float) -> None:
        st = os.statvfs(self.mount)
        free = st.f_bavail * st.f_frsize
        want = free if self.args.enospc else free - self.disk_free_limit // 2
        ep = {"t": round(time.time() - self.started, 1), "hold_s": round(hold, 1), "fill_at": time.time(),
              "filled_bytes": 0, "free_before": free, "raised_at": None, "unfill_at": None, "cleared_at": None,
              "resumed_at": None, "kills_during": 0}
        if want > 0:
            chunk = b"\0" * (1 << 20)
            with open(self.filler, "wb", buffering=0) as f:
                left = want
                try:
                    while left > 0:
                        left -= f.write(chunk[:min(left, len(chunk))])
                    os.fsync(f.fileno())
                except OSError:  # ENOSPC (--enospc, or the broker wrote meanwhile)
                    pass
            ep["filled_bytes"] = want - max(left, 0)
        ep["confirmed_at_fill"] = self.confirmed_total()
        ep["connects_at_fill"] = self.shared.total("connects", self.pub_slots)
        self.episodes.append(ep)
        print(f"[{ep['t']:7.1f}s] disk: filler of {ep['filled_bytes'] / 2**20:.0f} MiB written, "
              f"{(free - ep['filled_bytes']) / 2**20:.0f} MiB free (limit {self.disk_free_limit / 2**20:.0f} MiB), "
              f"holding {hold:.0f}s", flush=True)

    def unfill(self) -> None:
        ep = self.episodes[-1]
        ep["confirmed_at_unfill"] = self.confirmed_total()
        ep["connects_at_unfill"] = self.shared.total("connects", self.pub_slots)
        try:
            self.filler.unlink()
        except FileNotFoundError:
            pass
        ep["unfill_at"] = time.time()
        print(f"[{time.time() - self.started:7.1f}s] disk: filler deleted", flush=True)

    def track_blocking(self) -> None:
        """Confirms (and publisher connects) while the alarm has been on for 2 s or more."""
        b, now = self.blocking, time.monotonic()
        confirmed, connects = self.confirmed_total(), self.shared.total("connects", self.pub_slots)
        if not self.logwatch.alarm:
            b["on_since"] = None
        elif b["on_since"] is None:
            b["on_since"] = now
            b["periods"] += 1
        elif now - b["on_since"] >= 2 and b["last"] is not None:
            b["confirmed"] += confirmed - b["last"][0]
            b["connects"] += connects - b["last"][1]
            b["seconds"] += now - b["last"][2]
        b["last"] = (confirmed, connects, now)

    def track_episodes(self) -> None:
        """Alarm raised after each fill, cleared after each unfill, publishing resumed."""
        self.track_blocking()
        now = time.time()
        limit = 30.0
        for ep in self.episodes:
            if ep["raised_at"] is None and self.logwatch.alarm:
                ep["raised_at"] = now
                ep["confirmed_at_raise"] = self.confirmed_total()
                ep["connects_at_raise"] = self.shared.total("connects", self.pub_slots)
                print(f"[{now - self.started:7.1f}s] disk alarm raised after {now - ep['fill_at']:.1f}s", flush=True)
            if ep["unfill_at"] is not None and ep["cleared_at"] is None and not self.logwatch.alarm \
                    and self.broker.pid is not None:
                ep["cleared_at"] = now
                ep["confirmed_at_clear"] = self.confirmed_total()
                ep["nacked_at_clear"] = self.shared.total("nacked", self.pub_slots)
                print(f"[{now - self.started:7.1f}s] disk alarm cleared {now - ep['unfill_at']:.1f}s after the space"
                      " returned", flush=True)
            if ep["cleared_at"] is not None and ep["resumed_at"] is None \
                    and self.confirmed_total() > ep["confirmed_at_clear"]:
                ep["resumed_at"] = now
                ep["nacked_before_resume"] = self.shared.total("nacked", self.pub_slots) - ep["nacked_at_clear"]
                kills = [k["at"] for k in self.kills if ep["cleared_at"] < k["at"] < now]
                if kills and kills[0] - ep["cleared_at"] > 5:
                    self.violation(f"publishing did not resume after the disk alarm cleared (episode at {ep['t']}s) "
                                   f"until the broker was restarted {kills[0] - ep['cleared_at']:.0f}s later "
                                   f"({ep['nacked_before_resume']} publishes nacked meanwhile)")
            if ep["raised_at"] is None and not ep.get("late_raise") and now - ep["fill_at"] > limit:
                ep["late_raise"] = True
                self.violation(f"disk alarm not raised {limit:.0f}s after the filler (episode at {ep['t']}s)")
            if ep["unfill_at"] and ep["cleared_at"] is None and not ep.get("late_clear") \
                    and now - ep["unfill_at"] > limit:
                ep["late_clear"] = True
                self.violation(f"disk alarm still on {limit:.0f}s after the space returned (episode at {ep['t']}s)")
            if ep["cleared_at"] and ep["resumed_at"] is None and not ep.get("late_resume") \
                    and now - ep["cleared_at"] > 30 and not self.shared.stop_publishers.is_set():
                ep["late_resume"] = True
                self.violation(f"no publish confirmed within 30s after the disk alarm cleared (episode at {ep['t']}s)")

    def confirmed_total(self) -> int:
        return self.shared.total("confirmed", self.pub_slots)

    # ---- main

    def progress(self) -> None:
        s = self.shared
        t = time.time() - self.started
        rss = self.broker.rss_kb()
        print(f"[{t:7.1f}s] published {s.total('published', self.pub_slots)} confirmed {self.confirmed_total()}"
              f" nacked {s.total('nacked', self.pub_slots)} delivered {s.total('delivered', self.con_slots)}"
              f" | kills {self.kill_count()} | rss {(rss or 0) / 1024:.0f} MiB"
              f" (max {max(self.max_rss_kb, rss or 0) / 1024:.0f})"
              f" | disk alarm {'ON' if self.logwatch.alarm else 'off'}"
              f" | non-reader connects {s.stat(self.nonreader_slot, 'connects')}", flush=True)

    def kill_count(self) -> int:
        return sum(2 if k["double"] else 1 for k in self.kills)

    def finish_early(self, why: str) -> int:
        self.violation(why)
        return 1

    def main(self) -> int:
        print(f"soak: seed {self.seed} (replay with --seed {self.seed}); "
              f"{'smoke' if self.smoke else f'{self.load_seconds / 60:g} min'} load; work dir {self.work}", flush=True)
        print(f"soak: tmpfs {self.tmpfs_bytes / 2**20:.0f} MiB at {self.mount}, --disk-free-limit "
              f"{self.disk_free_limit}, RSS bound {self.args.rss_limit_mb} MiB, {self.args.publishers} publishers x "
              f"{self.cfg['rate']} msg/s (window {self.cfg['window']}), {self.args.consumers} consumers + 1 slow + "
              f"1 non-reading", flush=True)
        events = self.schedule()
        print("soak: schedule: " + ", ".join(
            f"{t:.1f}s {kind}" + (f" {arg:.0f}s" if kind == "fill" else "") + (" twice" if kind == "kill" and arg else "")
            for t, kind, arg in events), flush=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.broker = Broker(self.args.warren_bin, self.data_dir, self.work / "warren.log", self.work / "broker.pid",
                             self.disk_free_limit)
        self.logwatch = LogWatch(self.broker.log)
        nclients = self.args.publishers + self.args.consumers + 2
        self.shared = Shared(nclients, self.broker.port)
        if self.start_broker() is None:
            return 2
        self.declare_topology()
        # Forked while this process has no thread and no open connection.
        self.start_clients(self.shared)
        threading.Thread(target=self.sampler, daemon=True).start()

        t0 = time.monotonic()
        next_progress = t0 + (10 if self.smoke else 30)
        while True:
            now = time.monotonic()
            if now - t0 >= self.load_seconds:
                break
            self.logwatch.poll()
            self.check_broker_alive()
            self.check_children()
            while events and now - t0 >= events[0][0]:
                _, kind, arg = events.pop(0)
                if kind == "kill":
                    for ep in self.episodes:
                        if ep["unfill_at"] is None:
                            ep["kills_during"] += 1
                    self.kill(arg)
                elif kind == "fill":
                    self.fill(arg)
                else:
                    self.unfill()
            self.track_episodes()
            if now >= next_progress:
                self.progress()
                next_progress += 10 if self.smoke else 30
            time.sleep(0.1)
        return self.finish()

    def finish(self) -> int:
        shared = self.shared
        print(f"[{time.time() - self.started:7.1f}s] load over: stopping publishers (waiting for their last confirms)",
              flush=True)
        if self.filler.exists():
            self.unfill()
        shared.stop_publishers.set()
        deadline = time.monotonic() + 90
        for name, p in self.clients:
            if name.startswith("pub"):
                p.join(max(1.0, deadline - time.monotonic()))
                if p.is_alive():
                    self.violation(f"{name} did not stop within 90s")
        t_end = time.monotonic() + 40
        while time.monotonic() < t_end and any(ep["cleared_at"] is None for ep in self.episodes):
            self.logwatch.poll()
            self.track_episodes()
            time.sleep(0.2)
        self.logwatch.poll()
        self.track_episodes()
        shared.stop_nonreader.set()
        self.nonreader.join(30)
        print(f"[{time.time() - self.started:7.1f}s] draining the queues", flush=True)
        drain_timeout = 180 if self.smoke else 600
        deadline = time.monotonic() + drain_timeout
        empty_polls = 0
        last_delivered = -1
        while time.monotonic() < deadline:
            self.check_children()
            counts = self.queue_counts()
            delivered = shared.total("delivered", self.con_slots)
            if counts is not None and sum(counts) == 0 and delivered == last_delivered:
                empty_polls += 1
                if empty_polls >= 3:
                    break
            else:
                empty_polls = 0
            last_delivered = delivered
            time.sleep(1)
        else:
            self.violation(f"the queues were not drained by the consumers within {drain_timeout}s "
                           f"(ready: {self.queue_counts()})")
        shared.stop_consumers.set()
        for name, p in self.clients:
            p.join(30)
            if p.is_alive():
                self.violation(f"{name} did not stop within 30s")
                p.kill()
        self.check_children()
        swept = self.sweep()
        rt = self.round_trip()
        if rt is not None:
            self.violation(f"final publish/get round trip: {rt}")
        self.stop_sampler.set()
        self.logwatch.poll()
        # A clean stop.
        p = self.broker.proc
        p.send_signal(signal.SIGTERM)
        try:
            rc = p.wait(30)
            if rc != 0:
                self.violation(f"the broker exited with {rc} on SIGTERM")
        except subprocess.TimeoutExpired:
            self.violation("the broker did not stop within 30s of SIGTERM")
            self.broker.kill9()
        return self.verify(swept)

    def queue_counts(self):
        try:
            conn = pika.BlockingConnection(conn_params(self.shared, heartbeat=0))
            try:
                ch = conn.channel()
                return [ch.queue_declare(q, passive=True).method.message_count for q in QUEUES]
            finally:
                if conn.is_open:
                    conn.close()
        except Exception as e:  # noqa: BLE001
            print(f"   queue counts: {e!r}", flush=True)
            return None

    def sweep(self) -> list[str]:
        """basic.get whatever is still in the queues once every consumer is gone."""
        got = []
        try:
            conn = pika.BlockingConnection(conn_params(self.shared, heartbeat=0))
            ch = conn.channel()
            for q in QUEUES:
                while True:
                    m, props, body = ch.basic_get(q, auto_ack=True)
                    if m is None:
                        break
                    ids = parse_id(props.message_id)
                    if ids is None or body != body_for(*ids):
                        got.append(f"X {props.message_id!r} {body[:40]!r} len={len(body)}")
                    else:
                        got.append(f"{ids[0]} {ids[1]} {int(m.redelivered)}")
            conn.close()
        except Exception as e:  # noqa: BLE001
            self.violation(f"the final basic.get sweep failed: {e!r}")
        if got:
            print(f"   {len(got)} messages were still in the queues after the consumers stopped (fetched)", flush=True)
        return got

    def round_trip(self) -> str | None:
        try:
            conn = pika.BlockingConnection(conn_params(self.shared, heartbeat=0))
            ch = conn.channel()
            ch.queue_declare(FINAL_QUEUE, durable=True)
            ch.confirm_delivery()
            body = f"final round trip, seed {self.seed}".encode()
            ch.basic_publish("", FINAL_QUEUE, body, spec.BasicProperties(delivery_mode=2))
            m, _, got = ch.basic_get(FINAL_QUEUE, auto_ack=True)
            conn.close()
            if m is None or got != body:
                return f"published and confirmed, but basic.get returned {got!r}"
            return None
        except Exception as e:  # noqa: BLE001
            return repr(e)

    # ---- verification

    def verify(self, swept: list[str]) -> int:
        npub = self.args.publishers
        next_seq = [0] * npub
        state = [None] * npub  # bytearray per publisher: 1 ack, 2 nack, 4 returned
        first_acks: list[tuple[float, int]] = []
        errors: list[str] = []
        blocked_notes = 0
        for i in range(npub):
            lines = (self.work / f"pub{i}.log").read_text().splitlines()
            for line in lines:
                if line.startswith("P "):
                    next_seq[i] = int(line[2:])
            st = bytearray(next_seq[i])
            for line in lines:
                k, _, v = line.partition(" ")
                if k == "a":
                    st[int(v)] |= 1
                elif k == "n":
                    st[int(v)] |= 2
                elif k == "r":
                    st[int(v)] |= 4
                elif k == "F":
                    t, g = v.split()
                    first_acks.append((float(t), int(g)))
                elif k == "E":
                    errors.append(f"pub{i}: {v}")
                elif k == "B":
                    blocked_notes += 1
            state[i] = st
        delivered = [collections.Counter() for _ in range(npub)]
        phantom, corrupt = [], []
        total_deliveries = redelivered_flags = 0
        sources = [p for p in self.work.glob("con*.log")]
        lines_iter = [(p.name, p.read_text().splitlines()) for p in sources] + [("sweep", swept)]
        for src, lines in lines_iter:
            for line in lines:
                if line.startswith("X "):
                    corrupt.append(f"{src}: {line}")
                    continue
                if line.startswith("E "):
                    errors.append(f"{src}: {line[2:]}")
                    continue
                a, b, r = line.split()
                pub, seq = int(a), int(b)
                total_deliveries += 1
                redelivered_flags += int(r)
                if pub >= npub or seq >= next_seq[pub]:
                    phantom.append(f"p{pub}-{seq}")
                    continue
                delivered[pub][seq] += 1
        confirmed = sum(sum(st.count(x) for x in range(8) if x & 1) for st in state)
        nacked = sum(sum(st.count(x) for x in range(8) if x & 2) for st in state)
        returned = sum(sum(st.count(x) for x in range(8) if x & 4) for st in state)
        lost, both, returned_confirmed = [], [], []
        for i, st in enumerate(state):
            for seq, x in enumerate(st):
                if x & 1 and delivered[i][seq] == 0:
                    lost.append(f"p{i}-{seq}")
                if x & 3 == 3:
                    both.append(f"p{i}-{seq}")
                if x & 5 == 5:
                    returned_confirmed.append(f"p{i}-{seq}")
        unique = sum(len(c) for c in delivered)
        duplicates = total_deliveries - len(phantom) - unique
        published = sum(next_seq)
        in_doubt = sum(st.count(0) for st in state)

        if lost:
            self.violation(f"{len(lost)} confirmed messages were never delivered, e.g. {lost[:20]}")
            # Gone for good, or only stuck in the running broker? Restart it and look again.
            print("   diagnostic: restarting the broker on the same data dir and fetching again", flush=True)
            self.broker.kill9()
            if self.start_broker() is not None:
                again = {tuple(line.split()[:2]) for line in self.sweep() if not line.startswith("X ")}
                back = [m for m in lost if tuple(m[1:].split("-")) in again]
                self.violation(f"diagnostic: {len(back)} of the {len(lost)} lost messages came back after a "
                               f"restart (in the segment files, but not delivered by the running broker), "
                               f"e.g. {back[:10]}")
                self.broker.kill9()
        if phantom:
            self.violation(f"{len(phantom)} deliveries of ids that were never published, e.g. {phantom[:20]}")
        if corrupt:
            self.violation(f"{len(corrupt)} damaged deliveries, e.g. {corrupt[:5]}")
        if both:
            self.violation(f"{len(both)} publishes were both acked and nacked, e.g. {both[:10]}")
        if returned_confirmed:
            self.violation(f"{len(returned_confirmed)} confirmed messages were returned unroutable (durable binding "
                           f"lost?), e.g. {returned_confirmed[:10]}")
        if errors:
            self.violation(f"{len(errors)} channel errors from the broker, e.g. {errors[:5]}")
        if confirmed < (200 if self.smoke else 10_000):
            self.violation(f"only {confirmed} publishes were confirmed: the run did not make progress")
        if self.rss_samples == 0:
            self.violation("no RSS sample was taken")
        if self.max_rss_kb > self.args.rss_limit_mb * 1024:
            self.violation(f"broker RSS reached {self.max_rss_kb / 1024:.0f} MiB, over the bound of "
                           f"{self.args.rss_limit_mb} MiB")
        if self.logwatch.panics:
            self.violation(f"the broker panicked: {self.logwatch.panics[:3]}")
        if not self.smoke and len(self.kills) == 0:
            self.violation("no kill happened (run too short?)")
        if self.smoke and (self.kill_count() < 2 or len(self.episodes) < 1):
            self.violation("the smoke run needs 2 kills and a disk-alarm episode")
        # Blocked while the alarm was on: 2 s after it is raised, a blocked connection
        # confirms nothing more; one that (re)connects meanwhile may get its first window
        # through before the broker stops reading it.
        b = self.blocking
        allowed = self.cfg["window"] * 2 * (b["connects"] + self.args.publishers * max(b["periods"], 1))
        if b["confirmed"] > allowed:
            self.violation(f"{b['confirmed']} publishes were confirmed while the disk alarm had been on for 2 s "
                           f"(at most {allowed} expected): publishers were not blocked")
        # Publishing back after each kill.
        for k in self.kills:
            later = [t for t, g in first_acks if g >= k["gen"]]
            k["first_confirm_s"] = round(min(later) - k["at"], 2) if later else None
            if k["first_confirm_s"] is None:
                self.violation(f"no publish was confirmed after the kill at {k['t']}s")
        blocked_connections = self.shared.total("blocked", self.pub_slots)

        duration = time.time() - self.started
        summary = {
            "duration_s": round(duration, 1),
            "load_s": self.load_seconds,
            "seed": self.seed,
            "smoke": self.smoke,
            "warren_bin": self.args.warren_bin,
            "kills": self.kill_count(),
            "kill_events": [{k2: v for k2, v in k.items() if k2 not in ("at", "gen")} for k in self.kills],
            "published": published,
            "confirmed": confirmed,
            "nacked": nacked,
            "returned": returned,
            "in_doubt": in_doubt,
            "deliveries": total_deliveries,
            "delivered_unique": unique,
            "duplicates": duplicates,
            "redelivered_flags": redelivered_flags,
            "swept_at_end": len(swept),
            "lost": len(lost),
            "phantom": len(phantom),
            "corrupt": len(corrupt),
            "max_rss_mib": round(self.max_rss_kb / 1024, 1),
            "rss_bound_mib": self.args.rss_limit_mb,
            "rss_samples": self.rss_samples,
            "disk_alarm_episodes": len(self.episodes),
            "disk_alarm_transitions_in_log": sum(1 for _, on in self.logwatch.transitions if on),
            "disk_alarm_raised_without_filler": sum(
                1 for t, on in self.logwatch.transitions
                if on and not any(ep["fill_at"] <= t <= (ep["unfill_at"] or time.time()) + 1 for ep in self.episodes)),
            "disk_alarm_on_s": self.alarm_on_samples,
            "max_data_dir_mib": round(self.max_data_bytes / 2**20, 1),
            "confirmed_while_blocked": self.blocking["confirmed"],
            "connects_while_blocked": self.blocking["connects"],
            "blocked_s": round(self.blocking["seconds"]),
            "episodes": [{
                "t": ep["t"], "hold_s": ep["hold_s"], "filler_mib": round(ep["filled_bytes"] / 2**20, 1),
                "raised_after_s": round(ep["raised_at"] - ep["fill_at"], 1) if ep["raised_at"] else None,
                "cleared_after_s": round(ep["cleared_at"] - ep["unfill_at"], 1) if ep["cleared_at"] else None,
                "publishing_back_after_s": round(ep["resumed_at"] - ep["unfill_at"], 1) if ep["resumed_at"] else None,
                "kills_during": ep["kills_during"], "nacked_after_clear": ep.get("nacked_before_resume"),
            } for ep in self.episodes],
            "blocked_notifications": blocked_connections,
            "client_connects": {name: self.shared.stat(slot, "connects") for slot, (name, _) in
                                enumerate(self.clients)},
            "consumer_deliveries": {self.clients[slot][0]: self.shared.stat(slot, "delivered")
                                    for slot in self.con_slots},
            "nonreader_max_unread_kib": self.shared.stat(self.nonreader_slot, "unread_max") // 1024,
            "broker_errors": dict(self.logwatch.errors.most_common(10)),
            "violations": self.violations,
        }
        (self.work / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.print_summary(summary)
        return 1 if self.violations else 0

    def print_summary(self, s: dict) -> None:
        p = print
        p("\n==================== soak summary ====================")
        p(f"duration        {s['duration_s']:.0f} s ({s['load_s']:.0f} s of load), seed {s['seed']}"
          f"{' (smoke)' if s['smoke'] else ''}")
        p(f"broker          {s['warren_bin']}")
        p(f"messages        published {s['published']}, confirmed {s['confirmed']}, nacked {s['nacked']}, "
          f"returned {s['returned']}, in doubt at a kill {s['in_doubt']}")
        p(f"delivered       {s['deliveries']} deliveries, {s['delivered_unique']} distinct ids, duplicates "
          f"{s['duplicates']}, redelivered flag {s['redelivered_flags']}, fetched at the end {s['swept_at_end']}")
        p(f"checks          lost {s['lost']}, never published {s['phantom']}, damaged {s['corrupt']}")
        p(f"memory          max RSS {s['max_rss_mib']} MiB (bound {s['rss_bound_mib']} MiB, {s['rss_samples']} "
          "samples)")
        p(f"kills           {s['kills']}")
        for k in s["kill_events"]:
            p(f"   at {k['t']:7.1f}s{' twice' if k['double'] else '      '}: serving again after {k['ready_s']}s, "
              f"first confirm after {k['first_confirm_s']}s{' (disk alarm on)' if k['alarm_on'] else ''}")
        p(f"disk alarms     {s['disk_alarm_episodes']} filler episodes; {s['disk_alarm_transitions_in_log']} 'alarm on' "
          f"log lines ({s['disk_alarm_raised_without_filler']} without a filler: the queues' own files); alarm on "
          f"for {s['disk_alarm_on_s']} s in all; {s['blocked_notifications']} connection.blocked received by "
          f"publishers; the data dir took up to {s['max_data_dir_mib']} MiB of the tmpfs")
        for e in s["episodes"]:
            p(f"   at {e['t']:7.1f}s: filler {e['filler_mib']} MiB for {e['hold_s']}s; raised after "
              f"{e['raised_after_s']}s, cleared {e['cleared_after_s']}s after the space returned, publishing back "
              f"after {e['publishing_back_after_s']}s ({e['nacked_after_clear']} nacked before); kills during: "
              f"{e['kills_during']}")
        p(f"   publishes confirmed while the alarm had been on for 2 s: {s['confirmed_while_blocked']} (in "
          f"{s['blocked_s']} s; {s['connects_while_blocked']} publisher connects meanwhile)")
        p(f"connections     {s['client_connects']}")
        p(f"consumers       deliveries {s['consumer_deliveries']}; the non-reading client left up to "
          f"{s['nonreader_max_unread_kib']} KiB unread in its socket")
        if s["broker_errors"]:
            p("broker ERROR lines:")
            for k, n in s["broker_errors"].items():
                p(f"   {n} x {k}")
        if s["violations"]:
            p(f"RESULT          FAILED: {len(s['violations'])} violation(s)")
            for v in s["violations"]:
                p(f"   - {v.splitlines()[0]}")
            p(f"work dir        {self.work} (broker log warren.log, ledgers, rss.csv, summary.json)")
        else:
            p("RESULT          passed")
        sys.stdout.flush()

    def cleanup(self) -> None:
        self.stop_sampler.set()
        shared = getattr(self, "shared", None)
        if shared is not None:
            shared.stop_publishers.set()
            shared.stop_nonreader.set()
            shared.stop_consumers.set()
        for _, p in getattr(self, "clients", []):
            if p.is_alive():
                p.join(0.5)
            if p.is_alive():
                p.kill()
                p.join(5)
        if getattr(self, "broker", None) is not None:
            self.broker.kill9()
        try:
            self.filler.unlink()
        except OSError:
            pass


def main() -> int:
    ap = argparse.ArgumentParser(description="Warren soak and chaos run (use scripts/soak.sh)")
    ap.add_argument("--minutes", type=float, default=10, help="minutes of load (default 10)")
    ap.add_argument("--seed", type=int, help="seed of the schedule and the clients' choices (default: random)")
    ap.add_argument("--smoke", action="store_true", help="short run for CI: 55 s of load, 2 kills, 1 disk alarm")
    ap.add_argument("--publishers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=2, help="fast consumers (plus one slow one)")
    ap.add_argument("--rate", type=int, help="messages/s per publisher (default 300; smoke 150)")
    ap.add_argument("--rss-limit-mb", type=int, default=256, help="bound on the broker's VmRSS (default 256)")
    ap.add_argument("--enospc", action="store_true",
                    help="disk episodes fill the tmpfs completely (writes fail with ENOSPC before the alarm is "
                         "raised) instead of leaving half the free-space limit free")
    ap.add_argument("--load-seconds", type=float, help=argparse.SUPPRESS)
    ap.add_argument("--keep", action="store_true", help="keep the work dir (soak.sh)")
    ap.add_argument("--work", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--mount", required=True, help=argparse.SUPPRESS)
    ap.add_argument("--warren-bin", required=True, help=argparse.SUPPRESS)
    args = ap.parse_args()
    run = Run(args)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return run.main()
    except KeyboardInterrupt:
        print("soak: interrupted", flush=True)
        return 130
    finally:
        run.cleanup()


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Minimal raw-socket AMQP 0-9-1 helper for scripts/bench.sh (standard library only).

Subcommands (all print one JSON object on stdout; only 127.0.0.1 is ever contacted):
  wait           retry until the broker completes a connection handshake
  hold           open N idle connections, measure the broker's RSS growth per connection
  publish-seq    publish N messages whose body starts with an 8-byte big-endian sequence
                 number, with publisher confirms (persistent, durable queue by default)
  recover-check  time until basic.get on the queue succeeds (since --since-ns), then
                 consume everything and check each sequence number arrives exactly once,
                 in order
"""

import argparse
import asyncio
import json
import os
import select
import socket
import struct
import sys
import time

HOST = "127.0.0.1"
FRAME_END = b"\xce"
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


# ---------------------------------------------------------------- encoding helpers

def shortstr(s):
    b = s.encode()
    return struct.pack(">B", len(b)) + b


def longstr(b):
    return struct.pack(">I", len(b)) + b


def frame(ftype, channel, payload):
    return struct.pack(">BHI", ftype, channel, len(payload)) + payload + FRAME_END


def method(channel, class_id, method_id, args=b""):
    return frame(1, channel, struct.pack(">HH", class_id, method_id) + args)


START_OK = struct.pack(">I", 0) + shortstr("PLAIN") + longstr(b"\x00guest\x00guest") + shortstr("en_US")


def tune_ok(channel_max, frame_max):
    return method(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0))


CONNECTION_OPEN = method(0, 10, 40, shortstr("/") + shortstr("") + b"\x00")


def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- blocking client

class Closed(Exception):
    pass


class Conn:
    """A blocking connection with a frame reader; channel 1 is opened by open_channel()."""

    def __init__(self, port, timeout=30.0):
        self.sock = socket.create_connection((HOST, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = bytearray()
        self.pos = 0
        self.sock.sendall(PROTOCOL_HEADER)
        self.expect(0, 10, 10)  # connection.start
        self.sock.sendall(method(0, 10, 11, START_OK))
        _, _, args = self.expect(0, 10, 30)  # connection.tune
        channel_max, frame_max, _hb = struct.unpack_from(">HIH", args)
        self.frame_max = min(frame_max or 131072, 131072)
        self.sock.sendall(tune_ok(channel_max, self.frame_max) + CONNECTION_OPEN)
        self.expect(0, 10, 41)  # connection.open-ok
        self.channel = 0

    def fill(self, block=True):
        if self.pos > 1 << 20:
            del self.buf[: self.pos]
            self.pos = 0
        if not block:
            r, _, _ = select.select([self.sock], [], [], 0)
            if not r:
                return False
        data = self.sock.recv(1 << 18)
        if not data:
            raise Closed("broker closed the socket")
        self.buf += data
        return True

    def next_frame(self, block=True):
        """Returns (type, channel, payload memoryview) or None if not block and none ready."""
        while True:
            avail = len(self.buf) - self.pos
            if avail >= 7:
                ftype, ch, size = struct.unpack_from(">BHI", self.buf, self.pos)
                if avail >= size + 8:
                    start = self.pos + 7
                    payload = bytes(self.buf[start : start + size])
                    self.pos = start + size + 1
                    return ftype, ch, payload
            if not self.fill(block):
                return None

    def next_method(self):
        while True:
            ftype, ch, payload = self.next_frame()
            if ftype == 1:
                cid, mid = struct.unpack_from(">HH", payload)
                if (cid, mid) == (10, 50):
                    code, = struct.unpack_from(">H", payload, 4)
                    text = payload[7 : 7 + payload[6]].decode(errors="replace")
                    raise Closed(f"connection.close {code} {text}")
                return ch, (cid, mid), payload[4:]

    def expect(self, channel, class_id, method_id):
        ch, cm, args = self.next_method()
        if cm == (20, 40):
            code, = struct.unpack_from(">H", args)
            text = args[3 : 3 + args[2]].decode(errors="replace")
            raise ChannelClosed(code, text)
        if cm != (class_id, method_id):
            raise Closed(f"expected {class_id}.{method_id}, got {cm[0]}.{cm[1]}")
        return ch, cm, args

    def open_channel(self):
        self.channel += 1
        self.sock.sendall(method(self.channel, 20, 10, shortstr("")))
        self.expect(self.channel, 20, 11)
        return self.channel

    def close(self):
        try:
            self.sock.sendall(method(0, 10, 50, struct.pack(">H", 200) + shortstr("bye") + struct.pack(">HH", 0, 0)))
            self.sock.settimeout(2)
            while True:
                ch, cm, _ = self.next_method()
                if cm == (10, 51):
                    break
        except Exception:
            pass
        self.sock.close()


class ChannelClosed(Exception):
    def __init__(self, code, text):
        super().__init__(f"channel.close {code} {text}")
        self.code = code


def queue_declare(conn, ch, queue, durable=True, passive=False):
    bits = (1 if passive else 0) | (2 if durable else 0)
    conn.sock.sendall(method(ch, 50, 10, struct.pack(">H", 0) + shortstr(queue) + bytes([bits]) + struct.pack(">I", 0)))
    _, _, args = conn.expect(ch, 50, 11)
    qlen = args[0]
    message_count, consumer_count = struct.unpack_from(">II", args, 1 + qlen)
    return message_count, consumer_count


# ---------------------------------------------------------------- wait

def cmd_wait(a):
    deadline = time.monotonic() + a.timeout
    last = None
    while time.monotonic() < deadline:
        try:
            c = Conn(a.port, timeout=5)
            c.close()
            return {"ok": True}
        except Exception as e:  # noqa: BLE001 - any failure means "not yet"
            last = str(e)
            time.sleep(0.1)
    print(json.dumps({"ok": False, "error": last}))
    sys.exit(1)


# ---------------------------------------------------------------- hold (idle connections)

async def open_idle(port, sem):
    async with sem:
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(PROTOCOL_HEADER)

        async def read_method():
            hdr = await reader.readexactly(7)
            ftype, ch, size = struct.unpack(">BHI", hdr)
            payload = await reader.readexactly(size + 1)
            return ftype, payload[:-1]

        ftype, p = await read_method()  # start
        writer.write(method(0, 10, 11, START_OK))
        ftype, p = await read_method()  # tune
        channel_max, frame_max, _ = struct.unpack_from(">HIH", p, 4)
        writer.write(tune_ok(channel_max, min(frame_max or 131072, 131072)) + CONNECTION_OPEN)
        ftype, p = await read_method()  # open-ok
        if struct.unpack_from(">HH", p) != (10, 41):
            raise Closed(f"open failed: {struct.unpack_from('>HH', p)}")
        return reader, writer


async def hold_main(a):
    sem = asyncio.Semaphore(a.concurrency)
    before = rss_kb(a.broker_pid)
    cpu0 = cpu_s(a.broker_pid)
    t0 = time.monotonic()
    results = await asyncio.gather(*(open_idle(a.port, sem) for _ in range(a.n)), return_exceptions=True)
    opened = [r for r in results if not isinstance(r, BaseException)]
    errors = [repr(r) for r in results if isinstance(r, BaseException)]
    open_s = time.monotonic() - t0
    await asyncio.sleep(a.settle)
    after = rss_kb(a.broker_pid)
    cpu1 = cpu_s(a.broker_pid)
    # Check they are still alive: none should have been closed by the broker.
    alive = sum(1 for r, _ in opened if not r.at_eof())
    for _, w in opened:
        w.close()
    n = max(len(opened), 1)
    return {
        "requested": a.n,
        "opened": len(opened),
        "alive_after_settle": alive,
        "errors": len(errors),
        "first_errors": errors[:3],
        "open_seconds": open_s,
        "rss_before_kb": before,
        "rss_after_kb": after,
        "kb_per_connection": (after - before) / n,
        "broker_cpu_s": cpu1 - cpu0,
    }


def cmd_hold(a):
    return asyncio.run(hold_main(a))


# ---------------------------------------------------------------- publish-seq

def cmd_publish_seq(a):
    c = Conn(a.port)
    ch = c.open_channel()
    queue_declare(c, ch, a.queue, durable=True)
    c.sock.sendall(method(ch, 85, 10, b"\x00"))  # confirm.select
    c.expect(ch, 85, 11)
    assert a.size >= 8 and a.size + 8 <= c.frame_max
    props = struct.pack(">HB", 0x1000, 2 if a.persistent else 1)  # delivery-mode
    head = method(ch, 60, 40, struct.pack(">H", 0) + shortstr("") + shortstr(a.queue) + b"\x00")
    head += frame(2, ch, struct.pack(">HHQ", 60, 0, a.size) + props)
    head += struct.pack(">BHI", 3, ch, a.size)
    pad = b"\x00" * (a.size - 8) + FRAME_END
    pack_q = struct.Struct(">Q").pack
    sent = 0
    acked_upto = 0  # all tags <= acked_upto are settled
    singles = set()  # settled tags above acked_upto
    nacked = 0
    t0 = time.monotonic()
    cpu0 = cpu_s(a.broker_pid) if a.broker_pid else None
    while True:
        outstanding = sent - acked_upto - len(singles)
        if sent >= a.n and outstanding == 0:
            break
        room = min(a.confirm - outstanding, a.n - sent, 200)
        if room > 0:
            parts = []
            for seq in range(sent, sent + room):
                parts.append(head)
                parts.append(pack_q(seq))
                parts.append(pad)
            c.sock.sendall(b"".join(parts))
            sent += room
        # Read confirms: block only when the window is full or everything is sent.
        block = room <= 0
        while True:
            f = c.next_frame(block=block)
            if f is None:
                break
            block = False
            ftype, fch, payload = f
            if ftype != 1:
                continue
            cm = struct.unpack_from(">HH", payload)
            if cm in ((60, 80), (60, 120)):  # basic.ack / basic.nack
                tag, bits = struct.unpack_from(">QB", payload, 4)
                if cm == (60, 120):
                    nacked += 1
                if bits & 1:
                    if tag > acked_upto:
                        acked_upto = tag
                        singles = {t for t in singles if t > tag}
                elif tag > acked_upto:
                    singles.add(tag)
                    while acked_upto + 1 in singles:
                        acked_upto += 1
                        singles.discard(acked_upto)
            elif cm == (20, 40):
                raise Closed(f"channel closed: {payload!r}")
    secs = time.monotonic() - t0
    cpu1 = cpu_s(a.broker_pid) if a.broker_pid else None
    c.close()
    return {
        "published": sent,
        "confirmed": acked_upto,
        "nacked": nacked,
        "seconds": secs,
        "rate": sent / secs,
        "broker_cpu_s": (cpu1 - cpu0) if cpu0 is not None else None,
    }


# ---------------------------------------------------------------- recover-check

def first_get(a, deadline):
    """Connect (retrying) and basic.get until a message arrives. Returns (conn, ch, seq, tag, attempts)."""
    attempts = 0
    while True:
        attempts += 1
        if time.monotonic() > deadline:
            raise Closed(f"no message from basic.get before the timeout ({attempts} attempts)")
        try:
            c = Conn(a.port, timeout=30)
        except (OSError, Closed):
            time.sleep(0.002)
            continue
        try:
            while time.monotonic() < deadline:
                ch = c.open_channel()
                try:
                    while time.monotonic() < deadline:
                        attempts += 1
                        c.sock.sendall(method(ch, 60, 70, struct.pack(">H", 0) + shortstr(a.queue) + b"\x00"))
                        _, cm, args = c.next_method()
                        if cm == (60, 72):  # get-empty: not recovered yet?
                            time.sleep(0.002)
                            continue
                        if cm == (20, 40):
                            c.sock.sendall(method(ch, 20, 41))
                            raise ChannelClosed(struct.unpack_from(">H", args)[0], "")
                        if cm != (60, 71):
                            raise Closed(f"unexpected {cm}")
                        tag, = struct.unpack_from(">Q", args)
                        _, _, hdr = c.next_frame()
                        body_size, = struct.unpack_from(">Q", hdr, 4)
                        body = b""
                        while len(body) < body_size:
                            _, _, part = c.next_frame()
                            body += part
                        seq, = struct.unpack_from(">Q", body)
                        return c, ch, seq, tag, attempts
                except ChannelClosed:
                    time.sleep(0.002)
                    continue
        except (OSError, Closed):
            try:
                c.sock.close()
            except OSError:
                pass
            time.sleep(0.002)


def cmd_recover_check(a):
    since = a.since_ns / 1e9 if a.since_ns else time.time()
    if a.launch:
        # Start the broker ourselves, so the clock starts at its exec, not at our own
        # interpreter's start-up. It is not waited for: the caller stops it by pid.
        import subprocess
        cmd = a.launch[1:] if a.launch[0] == "--" else a.launch
        log = open(a.launch_log, "ab") if a.launch_log else subprocess.DEVNULL
        since = time.time()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        if a.pid_file:
            with open(a.pid_file, "w") as f:
                f.write(f"{proc.pid}\n")
    deadline = time.monotonic() + a.timeout
    c, ch, seq0, tag, attempts = first_get(a, deadline)
    first_get_s = time.time() - since
    c.sock.sendall(method(ch, 60, 80, struct.pack(">QB", tag, 0)))
    expected = 0
    count = 0
    out_of_order = 0
    duplicates = 0
    first_bad = None
    seen_max = -1

    def check(seq):
        nonlocal expected, count, out_of_order, duplicates, first_bad, seen_max
        count += 1
        if seq != expected:
            if seq <= seen_max:
                duplicates += 1
            else:
                out_of_order += 1
            if first_bad is None:
                first_bad = {"index": count - 1, "expected": expected, "got": seq}
        seen_max = max(seen_max, seq)
        expected = seq + 1

    check(seq0)
    t0 = time.monotonic()
    c.sock.sendall(method(ch, 60, 10, struct.pack(">IHB", 0, a.prefetch, 0)))
    c.expect(ch, 60, 11)
    c.sock.sendall(method(ch, 60, 20, struct.pack(">H", 0) + shortstr(a.queue) + shortstr("chk") + b"\x00" + struct.pack(">I", 0)))
    c.expect(ch, 60, 21)
    c.sock.settimeout(a.idle)
    ack_every = max(1, a.prefetch // 4)
    last_tag = 0
    unacked = 0
    want_body = 0  # bytes of body still to come for the current delivery
    body_first = False
    buf = c.buf
    unpack_hdr = struct.Struct(">BHI").unpack_from
    unpack_q = struct.Struct(">Q").unpack_from
    timed_out = False
    try:
        while count < a.n:
            # Parse every complete frame in the buffer.
            pos = c.pos
            end = len(buf)
            while end - pos >= 7:
                ftype, fch, size = unpack_hdr(buf, pos)
                if end - pos < size + 8:
                    break
                p = pos + 7
                if ftype == 3:
                    if body_first:
                        check(unpack_q(buf, p)[0])
                        body_first = False
                elif ftype == 1:
                    cid_mid = buf[p : p + 4]
                    if cid_mid == b"\x00\x3c\x00\x3c":  # basic.deliver
                        tl = buf[p + 4]
                        last_tag = unpack_q(buf, p + 5 + tl)[0]
                        body_first = True
                        unacked += 1
                    elif cid_mid[:2] == b"\x00\x14" or cid_mid[:2] == b"\x00\x0a":
                        raise Closed(f"channel/connection method {bytes(cid_mid)!r} during drain")
                pos = p + size + 1
            c.pos = pos
            if unacked >= ack_every:
                c.sock.sendall(method(ch, 60, 80, struct.pack(">QB", last_tag, 1)))
                unacked = 0
            if count >= a.n:
                break
            c.fill()
            buf = c.buf
    except socket.timeout:
        timed_out = True
    if unacked:
        c.sock.sendall(method(ch, 60, 80, struct.pack(">QB", last_tag, 1)))
    drain_s = time.monotonic() - t0
    # Anything delivered beyond N shows up as extra frames within a short wait.
    extra = 0
    c.sock.settimeout(1.0)
    try:
        while True:
            c.fill()
    except (socket.timeout, Closed):
        pass
    pos = c.pos
    while len(c.buf) - pos >= 7:
        ftype, fch, size = struct.unpack_from(">BHI", c.buf, pos)
        if ftype == 1 and c.buf[pos + 7 : pos + 11] == b"\x00\x3c\x00\x3c":
            extra += 1
        pos += 8 + size
    c.sock.settimeout(10)
    # Cancel the consumer, then check the queue is empty.
    c.sock.sendall(method(ch, 60, 30, shortstr("chk") + b"\x00"))
    remaining = None
    try:
        while True:
            _, cm, _ = c.next_method()
            if cm == (60, 31):
                break
        ch2 = c.open_channel()
        remaining, _ = queue_declare(c, ch2, a.queue, durable=True, passive=True)
    except Exception as e:  # noqa: BLE001
        remaining = f"error: {e}"
    c.close()
    ok = count == a.n and out_of_order == 0 and duplicates == 0 and extra == 0 and expected == a.n
    return {
        "first_get_s": first_get_s,
        "first_get_attempts": attempts,
        "first_seq": seq0,
        "expected": a.n,
        "consumed": count,
        "out_of_order": out_of_order,
        "duplicates": duplicates,
        "extra_after_n": extra,
        "first_bad": first_bad,
        "timed_out": timed_out,
        "remaining_in_queue": remaining,
        "drain_seconds": drain_s,
        "drain_rate": count / drain_s if drain_s > 0 else None,
        "exactly_once_in_order": ok,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wait")
    w.add_argument("--port", type=int, required=True)
    w.add_argument("--timeout", type=float, default=60)
    h = sub.add_parser("hold")
    h.add_argument("--port", type=int, required=True)
    h.add_argument("--n", type=int, default=10000)
    h.add_argument("--broker-pid", type=int, required=True)
    h.add_argument("--concurrency", type=int, default=200)
    h.add_argument("--settle", type=float, default=3.0)
    p = sub.add_parser("publish-seq")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue", required=True)
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--confirm", type=int, default=1000)
    p.add_argument("--persistent", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--broker-pid", type=int)
    r = sub.add_parser("recover-check")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--queue", required=True)
    r.add_argument("--n", type=int, default=1_000_000)
    r.add_argument("--since-ns", type=int, help="time.time_ns() when the broker was started")
    r.add_argument("--timeout", type=float, default=120)
    r.add_argument("--idle", type=float, default=15, help="give up when nothing arrives for this long")
    r.add_argument("--prefetch", type=int, default=2000)
    r.add_argument("--pid-file", help="with a launch command: write the broker's pid here")
    r.add_argument("--launch-log", help="with a launch command: append its output here")
    r.add_argument("launch", nargs=argparse.REMAINDER, help="-- COMMAND...: start the broker, timing from its exec")
    a = ap.parse_args()
    fn = {"wait": cmd_wait, "hold": cmd_hold, "publish-seq": cmd_publish_seq, "recover-check": cmd_recover_check}[a.cmd]
    print(json.dumps(fn(a)))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Traffic for cgdrop's end-to-end tests: sends and receives real packets on
loopback and reports, as one JSON line on stdout, what actually happened.

  udp-recv ADDR PORT SECS [MAX]    bind, print {"port": P}, count datagrams for SECS
                                   (or until MAX have arrived)
  udp-send ADDR PORT COUNT SIZE    send COUNT datagrams of SIZE bytes
  tcp-serve ADDR PORT SECS         listen, print {"port": P}, accept for SECS
  tcp-connect ADDR PORT SECS       one connect() with a timeout, and its time
  ping ADDR SECS                   one ICMP echo over a raw socket (root), and its time
  udp-flood ADDR PORT SECS GAP_US  send 64-byte datagrams for SECS, GAP_US apart
  tcp-connects ADDR PORT SECS      connect/close in a loop for SECS; counts results
  tcp-sink ADDR PORT SECS          listen, print {"port": P}, count bytes received for SECS
  tcp-stream ADDR PORT SECS        one connection, send as fast as possible for SECS, then
                                   close it cleanly; reports the segments it sent (TCP_INFO)

The test process spawns this script (inside or outside a test cgroup) and reads
its output; it never joins a test cgroup itself.
"""
import errno
import json
import os
import signal
import socket
import struct
import sys
import time


# SIGTERM: a listener stops early, after reading what already arrived, and reports.
STOP = []
signal.signal(signal.SIGTERM, lambda *_: STOP.append(True))


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def say(obj):
    print(json.dumps(obj), flush=True)


def udp_recv(addr, port, secs, most=None):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    # A large buffer: the count must not depend on how fast this loop reads.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((addr, int(port)))
    say({"port": s.getsockname()[1]})
    deadline = time.monotonic() + float(secs)
    count = 0
    while (most is None or count < int(most)) and not STOP:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        # Short waits, so that SIGTERM (which only sets a flag) is seen soon.
        s.settimeout(min(left, 0.05))
        try:
            s.recv(65535)
            count += 1
        except socket.timeout:
            continue
    # Whatever was delivered before the stop is counted.
    s.setblocking(False)
    while most is None or count < int(most):
        try:
            s.recv(65535)
            count += 1
        except BlockingIOError:
            break
    say({"received": count})


def send_counted(s, payload, dest, errors):
    """sendto once: 1 if sent, else 0 with the errno name counted in errors."""
    try:
        s.sendto(payload, dest)
        return 1
    except OSError as e:
        name = errno.errorcode.get(e.errno, str(e.errno))
        errors[name] = errors.get(name, 0) + 1
        return 0


def udp_send(addr, port, count, size):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    payload = b"x" * int(size)
    sent, errors = 0, {}
    for _ in range(int(count)):
        sent += send_counted(s, payload, (addr, int(port)), errors)
        time.sleep(0.001)
    say({"sent": sent, "errors": errors})


def tcp_serve(addr, port, secs):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(16)
    say({"port": s.getsockname()[1]})
    deadline = time.monotonic() + float(secs)
    accepted = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            conn, _ = s.accept()
            accepted += 1
            conn.close()
        except socket.timeout:
            break
    say({"accepted": accepted})


def connect_once(addr, port, timeout):
    """One TCP connect(): "ok", "timeout" or the errno's name."""
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((addr, int(port)))
        return "ok"
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()


def tcp_connect(addr, port, secs):
    start = time.monotonic()
    result = connect_once(addr, port, float(secs))
    ms = (time.monotonic() - start) * 1000
    say({"result": result, "ms": round(ms, 3)})


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def ping(addr, secs):
    v6 = ":" in addr
    if v6:
        # The kernel computes ICMPv6 checksums on raw ICMPv6 sockets.
        s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
        request, reply = 128, 129
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        request, reply = 8, 0
    ident = os.getpid() & 0xFFFF
    body = struct.pack("!HH", ident, 1) + b"cgdrop-test"
    csum = 0 if v6 else checksum(struct.pack("!BBH", request, 0, 0) + body)
    packet = struct.pack("!BBH", request, 0, csum) + body
    start = time.monotonic()
    try:
        s.sendto(packet, (addr, 0))
    except OSError as e:
        say({"result": errno.errorcode.get(e.errno, str(e.errno)), "ms": 0})
        return
    deadline = start + float(secs)
    result = "timeout"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        s.settimeout(left)
        try:
            data = s.recv(65535)
        except socket.timeout:
            break
        icmp = data if v6 else data[(data[0] & 0x0F) * 4:]
        if len(icmp) >= 8 and icmp[0] == reply and struct.unpack("!H", icmp[4:6])[0] == ident:
            result = "ok"
            break
    say({"result": result, "ms": round((time.monotonic() - start) * 1000, 3)})


def udp_flood(addr, port, secs, gap_us):
    s = socket.socket(family(addr), socket.SOCK_DGRAM)
    payload = b"x" * 64
    gap = int(gap_us) / 1e6
    deadline = time.monotonic() + float(secs)
    sent, errors = 0, {}
    while time.monotonic() < deadline:
        sent += send_counted(s, payload, (addr, int(port)), errors)
        time.sleep(gap)
    say({"sent": sent, "errors": errors})


def tcp_connects(addr, port, secs):
    deadline = time.monotonic() + float(secs)
    results = {}
    while time.monotonic() < deadline:
        result = connect_once(addr, port, 2)
        results[result] = results.get(result, 0) + 1
        time.sleep(0.002)
    say({"attempts": sum(results.values()), "results": results})


def tcp_sink(addr, port, secs):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(4)
    say({"port": s.getsockname()[1]})
    s.settimeout(float(secs))
    total = 0
    try:
        conn, _ = s.accept()
        conn.settimeout(float(secs))
        while True:
            data = conn.recv(1 << 16)
            if not data:
                break
            total += len(data)
    except socket.timeout:
        pass
    say({"received_bytes": total})


def tcp_stream(addr, port, secs):
    s = socket.socket(family(addr), socket.SOCK_STREAM)
    s.connect((addr, int(port)))
    chunk = b"y" * (1 << 16)
    deadline = time.monotonic() + float(secs)
    sent = 0
    while time.monotonic() < deadline:
        sent += s.send(chunk)
    # Close in order, so that no segment of this connection is still to come:
    # our FIN, the peer's FIN (recv returns b""), and the ACK of it, sent
    # before recv returns.
    s.shutdown(socket.SHUT_WR)
    s.settimeout(float(secs) + 10)
    while s.recv(1 << 16):
        pass
    # struct tcp_info: tcpi_segs_out (every segment sent, retransmissions and
    # pure ACKs included, a GSO packet as its segments) is the u32 at 136.
    info = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 144)
    segs_out = struct.unpack_from("I", info, 136)[0]
    s.close()
    say({"sent_bytes": sent, "segs_out": segs_out})


COMMANDS = {
    "udp-recv": udp_recv,
    "udp-send": udp_send,
    "tcp-serve": tcp_serve,
    "tcp-connect": tcp_connect,
    "ping": ping,
    "udp-flood": udp_flood,
    "tcp-connects": tcp_connects,
    "tcp-sink": tcp_sink,
    "tcp-stream": tcp_stream,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    COMMANDS[sys.argv[1]](*sys.argv[2:])

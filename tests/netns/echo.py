#!/usr/bin/env python3
"""Test peers for network-namespace tests; every operation has a timeout.

  echo.py serve ADDR TCP_PORTS UDP_PORTS [TAG]
                                           answer "[TAG ]tcp|udp PORT from PEER_IP" per request;
                                           a TCP request "BULK N" reads N bytes, answers
                                           "got N SHA256" of what it read
  echo.py tcp HOST PORT                    one TCP request, print the answer
  echo.py udp HOST PORT                    one UDP request, print the answer
  echo.py bulk HOST PORT N                 send N pseudo-random bytes over TCP; print "got N"
                                           when the server's digest matches what was sent
  echo.py rr HOST PORT N                   N one-byte request/response round trips over one
                                           TCP flow; print "p50_us p99_us"
  echo.py udpburst HOST PORT N SIZE        N datagrams of SIZE bytes in one UDP_SEGMENT send
                                           (one super-packet through the stack), each asking
                                           for its digest; print "got K of N intact" for the
                                           answers that match a datagram sent
  echo.py udpflood HOST PORT SECONDS SIZE   send SIZE-byte datagrams as fast as possible for
                                           SECONDS, 48 per UDP_SEGMENT send (as QUIC stacks
                                           send); print the bytes sent
  echo.py udpsink ADDR PORT SECONDS        receive datagrams (UDP_GRO on) until 1 s passes
                                           without one or SECONDS after the first; print the
                                           Gbit/s of payload between the first and the last
  echo.py slow HOST PORT SECONDS [MARKER]  one TCP flow kept open SECONDS, trickling data;
                                           print the answer (proves the flow survived);
                                           creates the file MARKER once the flow is open
"""
import hashlib
import random
import socket
import sys
import threading
import time

TAG = b""


def serve_tcp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(64)
    while True:
        conn, peer = s.accept()
        threading.Thread(target=handle_tcp, args=(conn, peer, port), daemon=True).start()


def handle_tcp(conn, peer, port):
    conn.settimeout(120)
    try:
        line = b""
        while not line.endswith(b"\n"):
            chunk = conn.recv(1)
            if not chunk:
                return
            line += chunk
        words = line.split()
        if words and words[0] == b"PING":
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for _ in range(int(words[1])):
                b = conn.recv(1)
                if not b:
                    break
                conn.sendall(b)
        elif words and words[0] == b"BULK":
            want, got, digest = int(words[1]), 0, hashlib.sha256()
            while got < want:
                chunk = conn.recv(1 << 16)
                if not chunk:
                    break
                got += len(chunk)
                digest.update(chunk)
            conn.sendall(b"got %d %s\n" % (got, digest.hexdigest().encode()))
        else:
            conn.sendall(TAG + b"tcp %d from %s\n" % (port, peer[0].encode()))
    finally:
        conn.close()


def serve_udp(addr, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    s.bind((addr, port))
    while True:
        data, peer = s.recvfrom(65536)
        if data.startswith(b"SUM "):
            # Answers of one size, so a burst of them can travel back coalesced too.
            s.sendto(b"sum " + hashlib.sha256(data).hexdigest().encode(), peer)
        else:
            s.sendto(TAG + b"udp %d from %s\n" % (port, peer[0].encode()), peer)


def checked(answer, digest):
    """The server's "got N SHA256" as "got N" when the digest matches what was sent."""
    words = answer.decode().split()
    if len(words) == 3 and words[2] == digest.hexdigest():
        return "got " + words[1]
    return "corrupted: " + answer.decode().strip()


def ports(arg):
    return [int(p) for p in arg.split(",") if p]


def main():
    mode = sys.argv[1]
    if mode == "serve":
        global TAG
        addr = sys.argv[2]
        if len(sys.argv) > 5:
            TAG = sys.argv[5].encode() + b" "
        threads = [threading.Thread(target=serve_tcp, args=(addr, p), daemon=True) for p in ports(sys.argv[3])]
        threads += [threading.Thread(target=serve_udp, args=(addr, p), daemon=True) for p in ports(sys.argv[4])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    elif mode == "tcp":
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=3) as c:
            c.sendall(b"hello\n")
            print(c.recv(256).decode().strip())
    elif mode == "udp":
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.settimeout(2)
        c.sendto(b"hello\n", (sys.argv[2], int(sys.argv[3])))
        print(c.recvfrom(256)[0].decode().strip())
    elif mode == "bulk":
        n = int(sys.argv[4])
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=60) as c:
            c.sendall(b"BULK %d\n" % n)
            # A prime period, so no two segments of a flow carry the same bytes and a
            # reordered or misplaced segment changes the digest.
            period = 1048573
            data = random.Random(n).randbytes(period)
            data += data[: 1 << 16]
            sent, digest = 0, hashlib.sha256()
            while sent < n:
                k = min(1 << 16, n - sent)
                chunk = data[sent % period : sent % period + k]
                c.sendall(chunk)
                digest.update(chunk)
                sent += k
            print(checked(c.recv(256), digest))
    elif mode == "rr":
        n = int(sys.argv[4])
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=10) as c:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            c.sendall(b"PING %d\n" % n)
            rtts = []
            for _ in range(n):
                t = time.perf_counter_ns()
                c.sendall(b"x")
                if c.recv(1) != b"x":
                    sys.exit("short answer")
                rtts.append((time.perf_counter_ns() - t) / 1000)
            rtts.sort()
            print("%.1f %.1f" % (rtts[len(rtts) // 2], rtts[min(len(rtts) - 1, len(rtts) * 99 // 100)]))
    elif mode == "udpburst":
        n, size = int(sys.argv[4]), int(sys.argv[5])
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        c.settimeout(3)
        # Distinct datagrams: a misplaced or corrupted byte changes the digest.
        rng = random.Random(size)
        grams = [b"SUM %06d " % i + rng.randbytes(size - 11) for i in range(n)]
        want = {b"sum " + hashlib.sha256(g).hexdigest().encode() for g in grams}
        c.setsockopt(socket.IPPROTO_UDP, 103, size)  # UDP_SEGMENT
        c.sendto(b"".join(grams), (sys.argv[2], int(sys.argv[3])))
        got = set()
        try:
            while len(got) < n:
                answer = c.recvfrom(2048)[0]
                if answer in want:
                    got.add(answer)
        except socket.timeout:
            pass
        print("got %d of %d intact" % (len(got), n))
    elif mode == "udpflood":
        seconds, size = float(sys.argv[4]), int(sys.argv[5])
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setsockopt(socket.IPPROTO_UDP, 103, size)  # UDP_SEGMENT
        c.connect((sys.argv[2], int(sys.argv[3])))
        burst = random.Random(size).randbytes(48 * size)
        sent, end = 0, time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                sent += c.send(burst)
            except OSError:
                pass  # a full queue (ENOBUFS) or an ICMP error: UDP drops, and so do we
        print(sent)
    elif mode == "udpsink":
        seconds = float(sys.argv[4])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        s.setsockopt(socket.IPPROTO_UDP, 104, 1)  # UDP_GRO: bursts arrive as one buffer
        s.bind((sys.argv[2], int(sys.argv[3])))
        s.settimeout(seconds + 30)
        got, first, last = 0, None, None
        buf = bytearray(1 << 16)
        try:
            while True:
                n = s.recv_into(buf)
                last = time.monotonic()
                if first is None:
                    first = last
                    s.settimeout(1)
                elif last - first > seconds:
                    break
                got += n
        except socket.timeout:
            pass
        span = (last - first) if first is not None and last > first else 0
        print("%.3f" % (got * 8 / span / 1e9 if span else 0))
    elif mode == "slow":
        seconds = float(sys.argv[4])
        steps = max(1, int(seconds * 10))
        with socket.create_connection((sys.argv[2], int(sys.argv[3])), timeout=30) as c:
            c.sendall(b"BULK %d\n" % steps)
            if len(sys.argv) > 5:
                open(sys.argv[5], "w").close()
            for _ in range(steps):
                c.sendall(b"x")
                time.sleep(seconds / steps)
            print(checked(c.recv(256), hashlib.sha256(b"x" * steps)))
    else:
        sys.exit("unknown mode " + mode)


if __name__ == "__main__":
    main()

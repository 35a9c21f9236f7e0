#!/usr/bin/env python3
"""A UDP relay that holds every datagram for a fixed delay each way (a far-away peer).

usage: udp_delay.py LISTEN_IP LISTEN_PORT TARGET_IP TARGET_PORT DELAY_MS

Datagrams from the first client go to the target after DELAY_MS; the target's answers go
back to that client after DELAY_MS. It serves one client, which is all the tests need.
"""
import heapq
import select
import socket
import sys
import time


def main():
    lip, lport, tip, tport, delay_ms = sys.argv[1:6]
    delay = int(delay_ms) / 1000.0
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind((lip, int(lport)))
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.connect((tip, int(tport)))
    client = None
    due = []  # (when, seq, socket, payload, address or None)
    seq = 0
    while True:
        timeout = max(0.0, due[0][0] - time.monotonic()) if due else 1.0
        ready, _, _ = select.select([front, back], [], [], timeout)
        now = time.monotonic()
        for s in ready:
            data, addr = s.recvfrom(65535)
            seq += 1
            if s is front:
                client = addr
                heapq.heappush(due, (now + delay, seq, back, data, None))
            elif client is not None:
                heapq.heappush(due, (now + delay, seq, front, data, client))
        while due and due[0][0] <= time.monotonic():
            _, _, s, data, addr = heapq.heappop(due)
            if addr is None:
                s.send(data)
            else:
                s.sendto(data, addr)


if __name__ == "__main__":
    main()

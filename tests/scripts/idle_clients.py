#!/usr/bin/env python3
"""Opens TLS connections to a server from one source address and goes quiet: each finishes its
handshake and then sends nothing (HTTP/1.1), or only HTTP/2's preface and an empty SETTINGS
frame (h2). Then waits for the server to close each one, and prints what happened as JSON:

  idle_clients.py HOST PORT SOURCE_ADDRESS COUNT ALPN WAIT_SECONDS
"""
import json
import select
import socket
import ssl
import sys
import time

host, port, source, count, alpn, wait = sys.argv[1:7]
port, count, wait = int(port), int(count), float(wait)

ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
ctx.set_alpn_protocols([alpn])

opened, refused, started = [], 0, time.monotonic()
for _ in range(count):
    try:
        raw = socket.create_connection((host, port), timeout=5, source_address=(source, 0))
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        if alpn == "h2":
            s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0]))
        s.setblocking(False)
        opened.append(s)
    except (OSError, ssl.SSLError):
        refused += 1

open_now = {s: True for s in opened}
closed_after = []
deadline = time.monotonic() + wait
while any(open_now.values()) and time.monotonic() < deadline:
    live = [s for s, o in open_now.items() if o]
    ready, _, _ = select.select(live, [], [], 0.2)
    for s in ready:
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    raise ConnectionResetError
        except (ssl.SSLWantReadError, BlockingIOError):
            continue
        except (OSError, ssl.SSLError):
            open_now[s] = False
            closed_after.append(round(time.monotonic() - started, 1))

print(json.dumps({
    "opened": len(opened),
    "refused": refused,
    "closed_by_server": len(closed_after),
    "last_closed_after_s": max(closed_after) if closed_after else None,
}))

#!/usr/bin/env python3
"""One HTTPS connection to musterd, kept open, as Python's standard library makes it: each
line on stdin is a request, {"path": "/api/v1/node/join", "body": {...}}, POSTed as JSON on
that connection and answered by a line on stdout, {"status": 200, "body": {...}, "port": P},
P being the connection's local port. It never opens a second connection: if the server
closed this one, the script fails.

  one_connection.py HOST PORT CA_PEM
"""
import http.client
import json
import ssl
import sys

host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conn = http.client.HTTPSConnection(host, port, timeout=60,
                                   context=ssl.create_default_context(cafile=ca))
conn.auto_open = 0  # raise rather than reconnect quietly
conn.connect()
for line in sys.stdin:
    req = json.loads(line)
    conn.request("POST", req["path"], body=json.dumps(req["body"]),
                 headers={"Content-Type": "application/json"})
    r = conn.getresponse()
    body = r.read()
    if conn.sock is None:
        sys.exit("the server closed the connection")
    print(json.dumps({
        "status": r.status,
        "body": json.loads(body) if body else None,
        "port": conn.sock.getsockname()[1],
    }), flush=True)

"""Closes client connections through RabbitMQ's management API, as `rabbitmqctl
close_connection` does (the client gets connection.close 320 CONNECTION_FORCED with the
reason): COUNT of those on NODE (all nodes if none given; COUNT 0 means all of them), the
oldest first. The management API lists a new connection only after its statistics interval
(5 s): with --at-least N it waits (30 s at most) until N are listed. Asks the first node that
answers. Prints one JSON line: closed (their names), errors.
"""
import argparse
import base64
import json
import time
import urllib.parse
import urllib.request

TOKEN = base64.b64encode(b"guest:guest").decode()


def call(port, path, method="GET"):
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    request.add_header("Authorization", f"Basic {TOKEN}")
    request.add_header("X-Reason", "tether test: close_connection")
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
        return json.loads(body) if body else None


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--node", default="")
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--at-least", type=int, default=1)
    args = parser.parse_args()
    errors = []
    for port in (15681, 15682, 15683):
        deadline = time.monotonic() + 30
        try:
            while True:
                listed = call(port, "/api/connections?columns=name,node,connected_at")
                chosen = sorted((c for c in listed
                                 if not args.node or c["node"].split("@")[0] == args.node),
                                key=lambda c: c.get("connected_at", 0))
                if len(chosen) >= args.at_least or time.monotonic() > deadline:
                    break
                time.sleep(0.5)
        except Exception as e:
            errors.append(f"port {port}: {type(e).__name__}: {e}")
            continue
        if args.count:
            chosen = chosen[:args.count]
        closed = []
        for connection in chosen:
            name = urllib.parse.quote(connection["name"], safe="")
            try:
                call(port, f"/api/connections/{name}", method="DELETE")
                closed.append(connection["name"])
            except Exception as e:
                errors.append(f"{connection['name']}: {type(e).__name__}: {e}")
        print(json.dumps({"closed": closed, "errors": errors}))
        return
    print(json.dumps({"closed": [], "errors": errors}))


if __name__ == "__main__":
    main()

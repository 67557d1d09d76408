"""Counts the client connections RabbitMQ's management API lists for the whole cluster, asking
the first node that answers. Prints one JSON line: connections, by_node, names (each
connection's "peer -> node" name), errors.
"""
import base64
import collections
import json
import urllib.request


def main():
    errors = []
    for port in (15681, 15682, 15683):
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/connections?columns=node,name")
        token = base64.b64encode(b"guest:guest").decode()
        request.add_header("Authorization", f"Basic {token}")
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                listed = json.load(response)
        except Exception as e:
            errors.append(f"port {port}: {type(e).__name__}: {e}")
            continue
        by_node = collections.Counter(c["node"].split("@")[0] for c in listed)
        names = sorted(c["name"] for c in listed)
        print(json.dumps({"connections": len(listed), "by_node": by_node, "names": names,
                          "errors": []}))
        return
    print(json.dumps({"connections": -1, "by_node": {}, "names": [], "errors": errors}))


if __name__ == "__main__":
    main()

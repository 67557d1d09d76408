"""The connect-per-request pattern with stomp.py: for every message, connect, SEND with a
receipt, DISCONNECT with a receipt. No reconnect logic: an exception, an ERROR frame or a
receipt that does not come is an error. Runs COUNT times, or until stdin closes, at RATE per
second.

Other checks, one connection each, instead of sending:
  --expect-refused   connect with --passcode and count the refusals (an ERROR frame, as the
                     broker sends it); a login that works is an error
  --subscribe DEST   subscribe to DEST (ack auto), then disconnect without waiting for anything

Prints "ready" first, then one JSON line: sent, receipted, refused, refusals, errors.
"""
import argparse
import json
import sys
import threading
import time

import stomp


class Watcher(stomp.ConnectionListener):
    def __init__(self):
        self.receipts = set()
        self.errors = []
        self.lock = threading.Lock()

    def on_receipt(self, frame):
        with self.lock:
            self.receipts.add(frame.headers.get("receipt-id"))

    def on_error(self, frame):
        with self.lock:
            self.errors.append(frame.headers.get("message", "ERROR"))


def connect(args, passcode):
    # stomp.py would send the address as `host`, which RabbitMQ takes for the vhost.
    conn = stomp.Connection12([("127.0.0.1", args.port)], heartbeats=(0, 0),
                              reconnect_attempts_max=1, vhost="/")
    watcher = Watcher()
    conn.set_listener("watcher", watcher)
    conn.connect("guest", passcode, wait=True)
    return conn, watcher


def wait_receipt(watcher, receipt, limit=30):
    # 30 s: a receipt may wait for a failover on two shared cores.
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with watcher.lock:
            if receipt in watcher.receipts:
                return True
        time.sleep(0.002)
    return False


def send_one(args, i, summary):
    conn, watcher = connect(args, args.passcode)
    receipt = f"send-{i}"
    conn.send(args.dest, f"{args.tag}-{i}", receipt=receipt, headers={"persistent": "true"})
    summary["sent"] += 1
    if not wait_receipt(watcher, receipt):
        raise RuntimeError(f"no receipt for message {i}")
    summary["receipted"] += 1
    conn.disconnect(receipt=f"bye-{i}")
    if watcher.errors:
        raise RuntimeError(f"ERROR frames: {watcher.errors}")


def refused_once(args, summary):
    try:
        conn, watcher = connect(args, args.passcode)
    except stomp.exception.ConnectFailedException as e:
        summary["refused"] += 1
        summary["refusals"].append(f"{type(e).__name__}: {e}")
        return
    conn.disconnect()
    summary["errors"].append("a wrong passcode was let in")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dest", default="")
    parser.add_argument("--count", type=int, default=0, help="0 = until stdin closes")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--tag", default="perreq")
    parser.add_argument("--passcode", default="guest")
    parser.add_argument("--expect-refused", action="store_true")
    parser.add_argument("--subscribe", default="")
    args = parser.parse_args()

    summary = {"sent": 0, "receipted": 0, "refused": 0, "refusals": [], "errors": []}
    print("ready", flush=True)
    try:
        if args.subscribe:
            conn, _ = connect(args, args.passcode)
            conn.subscribe(args.subscribe, id="1", ack="auto")
            conn.disconnect(receipt="bye")
        else:
            stop = threading.Event()
            if not args.count:
                threading.Thread(target=lambda: (sys.stdin.read(), stop.set()),
                                 daemon=True).start()
            started = time.monotonic()
            i = 0
            while not stop.is_set() and (not args.count or i < args.count):
                lag = started + i / args.rate - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
                if args.expect_refused:
                    refused_once(args, summary)
                else:
                    send_one(args, i, summary)
                i += 1
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

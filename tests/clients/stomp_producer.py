"""A stomp.py producer without reconnect logic: sends COUNT messages at RATE per second, with or
without receipts, then disconnects. Counts what the application sees.

Prints "ready" once connected, then one JSON line: sent, receipts, errors, disconnects, and
max_stall_s: the longest time between two receipts (with --receipts), how long the application
waited on its broker at worst. With --dest=- the destination is read from standard input after
"ready" (a test can place the queue where the session landed).
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
        self.receipt_times = []
        self.errors = []
        self.disconnects = 0
        self.closing = False
        self.lock = threading.Lock()

    def on_receipt(self, frame):
        with self.lock:
            self.receipts.add(frame.headers.get("receipt-id"))
            self.receipt_times.append(time.monotonic())

    def on_error(self, frame):
        with self.lock:
            self.errors.append(frame.headers.get("message", "ERROR"))

    def on_disconnected(self):
        with self.lock:
            if not self.closing:
                self.disconnects += 1


def wait_for(watcher, receipt, limit=60):
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        with watcher.lock:
            if receipt in watcher.receipts:
                return
        time.sleep(0.01)
    raise TimeoutError(f"no receipt {receipt}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--count", type=int, default=1000,
                        help="messages to send; 0 = until stdin closes")
    parser.add_argument("--rate", type=float, default=0, help="messages per second; 0 = flat out")
    parser.add_argument("--receipts", action="store_true")
    parser.add_argument("--tag", default="p")
    parser.add_argument("--persistent", action="store_true")
    parser.add_argument("--tx-batch", type=int, default=0,
                        help="send in transactions of this many messages, each committed "
                             "(with a receipt when --receipts) before the next")
    parser.add_argument("--settle", type=float, default=60,
                        help="seconds to wait for outstanding receipts at the end")
    args = parser.parse_args()

    watcher = Watcher()
    conn = stomp.Connection12([("127.0.0.1", args.port)], heartbeats=(2000, 2000),
                              reconnect_attempts_max=1, auto_content_length=True,
                              vhost="/")
    conn.set_listener("watcher", watcher)
    summary = {"sent": 0, "receipts": 0, "errors": [], "disconnects": 0}
    try:
        conn.connect("guest", "guest", wait=True)
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print("ready", flush=True)
    if args.dest == "-":
        args.dest = sys.stdin.readline().strip()
        if not args.dest:  # told to leave without sending
            args.count = -1
    try:
        if summary["errors"]:
            raise RuntimeError("not connected")
        stop = threading.Event()
        if not args.count:
            threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
        started = time.monotonic()
        i = -1
        while args.count >= 0 and not stop.is_set() and (not args.count or i + 1 < args.count):
            i += 1
            if args.rate:
                lag = started + i / args.rate - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
            headers = {"persistent": "true"} if args.persistent else {}
            kwargs = {"receipt": f"{args.tag}-r{i}"} if args.receipts else {}
            if args.tx_batch:
                if i % args.tx_batch == 0:
                    tx = conn.begin()
                headers["transaction"] = tx
                kwargs = {}
            conn.send(args.dest, f"{args.tag}-{i}", headers=headers, **kwargs)
            summary["sent"] += 1
            if args.tx_batch and (i + 1) % args.tx_batch == 0:
                commit_receipt = f"{args.tag}-c{i}" if args.receipts else None
                conn.commit(tx, receipt=commit_receipt)
                if commit_receipt:
                    wait_for(watcher, commit_receipt)
                summary["committed"] = summary.get("committed", 0) + args.tx_batch
        if args.tx_batch and summary["sent"] % args.tx_batch:
            conn.abort(tx)  # the last, partial batch is abandoned on purpose
        if args.receipts and not args.tx_batch:
            deadline = time.monotonic() + args.settle
            while len(watcher.receipts) < summary["sent"] and time.monotonic() < deadline:
                time.sleep(0.05)
        with watcher.lock:
            watcher.closing = True
        conn.disconnect(receipt="bye")
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    with watcher.lock:
        summary["receipts"] = len(watcher.receipts - {"bye"})
        summary["errors"] += watcher.errors
        summary["disconnects"] = watcher.disconnects
        times = watcher.receipt_times
        summary["max_stall_s"] = round(max((b - a for a, b in zip(times, times[1:])), default=0), 3)
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""A stomp.py consumer without reconnect logic. Subscribes with the given ack mode and acks each
message; stops once it has seen EXPECT distinct bodies, or after IDLE seconds without a message
once stdin is closed. Counts what the application sees.

Prints "ready" once subscribed, then one JSON line: received (distinct), duplicates, per_tag,
errors, disconnects.
"""
import argparse
import collections
import json
import threading
import time

import stomp

from expectations import Expectations


class Consumer(stomp.ConnectionListener):
    def __init__(self, conn, ack_mode):
        self.conn = conn
        self.ack_mode = ack_mode
        self.seen = set()
        self.duplicates = 0
        self.errors = []
        self.disconnects = 0
        self.closing = False
        self.last = time.monotonic()
        self.deliveries = 0
        self.lock = threading.Lock()

    def on_message(self, frame):
        with self.lock:
            body = frame.body
            self.deliveries += 1
            if body in self.seen:
                self.duplicates += 1
            self.seen.add(body)
            self.last = time.monotonic()
        if self.ack_mode != "auto":
            self.conn.ack(frame.headers["ack"])

    def on_error(self, frame):
        with self.lock:
            self.errors.append(frame.headers.get("message", "ERROR"))

    def on_disconnected(self):
        with self.lock:
            if not self.closing:
                self.disconnects += 1


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dest", required=True)
    parser.add_argument("--ack", default="client-individual")
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--idle", type=float, default=20)
    parser.add_argument("--limit", type=float, default=300, help="hard cap on the run, seconds")
    parser.add_argument("--heartbeat", type=int, default=2000, help="milliseconds, both ways")
    parser.add_argument("--dump", action="store_true",
                        help="also print every body received, for counting across consumers")
    args = parser.parse_args()

    # stomp.py would send the address as `host`, which RabbitMQ takes for the vhost.
    conn = stomp.Connection12([("127.0.0.1", args.port)],
                              heartbeats=(args.heartbeat, args.heartbeat),
                              reconnect_attempts_max=1, vhost="/")
    consumer = Consumer(conn, args.ack)
    conn.set_listener("consumer", consumer)
    errors = []
    try:
        conn.connect("guest", "guest", wait=True)
        conn.subscribe(args.dest, id="1", ack=args.ack, headers={"prefetch-count": "100"})
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    print("ready", flush=True)

    expectations = Expectations()
    started = time.monotonic()
    while time.monotonic() - started < args.limit:
        with consumer.lock:
            have, last = len(consumer.seen), consumer.last
            done = expectations.done(consumer.seen, time.monotonic() - max(last, started),
                                     args.idle)
        if args.expect and have >= args.expect and expectations.closed.is_set():
            break
        if done:
            break
        time.sleep(0.05)
    with consumer.lock:
        consumer.closing = True
    try:
        conn.disconnect(receipt="bye")
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    with consumer.lock:
        per_tag = collections.Counter(body.rsplit("-", 1)[0] for body in consumer.seen)
        # Bodies are TAG-SEQ with SEQ from 0: name the holes below each tag's highest SEQ.
        highest = collections.defaultdict(int)
        for body in consumer.seen:
            tag, seq = body.rsplit("-", 1)
            highest[tag] = max(highest[tag], int(seq))
        gaps = {tag: [n for n in range(top) if f"{tag}-{n}" not in consumer.seen][:20]
                for tag, top in highest.items()}
        print(json.dumps({
            "received": len(consumer.seen),
            "duplicates": consumer.duplicates,
            "per_tag": per_tag,
            "highest": highest,
            "gaps": gaps,
            "errors": errors + consumer.errors,
            "disconnects": consumer.disconnects,
            **({"bodies": sorted(consumer.seen), "deliveries": consumer.deliveries}
               if args.dump else {}),
        }), flush=True)


if __name__ == "__main__":
    main()

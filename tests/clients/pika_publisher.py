"""A pika publisher without reconnect logic: publishes to a queue through the default exchange
at RATE per second until stdin closes (or COUNT messages), with publisher confirms, without
them (fire-and-forget, seed 004's way), or in transactions of TX_BATCH messages.

Prints "ready" once connected, then one JSON line: sent, confirmed, committed, errors, and the
connection.blocked / connection.unblocked notifications it got.
"""
import argparse
import json
import sys
import threading
import time

import pika

import pika_connection


def main():
    parser = argparse.ArgumentParser()
    pika_connection.add_arguments(parser)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--exchange", default="")
    parser.add_argument("--confirms", action="store_true")
    parser.add_argument("--tx-batch", type=int, default=0)
    parser.add_argument("--rate", type=float, default=100)
    parser.add_argument("--count", type=int, default=0, help="0 = until stdin closes")
    parser.add_argument("--tag", default="p")
    parser.add_argument("--size", type=int, default=0,
                        help="pad each body to this many bytes (after its tag and number)")
    args = parser.parse_args()

    summary = {"sent": 0, "confirmed": 0, "committed": 0, "errors": [],
               "blocked": 0, "unblocked": 0}
    stop = threading.Event()
    if not args.count:
        threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    connection = None
    try:
        connection = pika.BlockingConnection(
            pika_connection.parameters(args))
        connection.add_on_connection_blocked_callback(
            lambda *_: summary.__setitem__("blocked", summary["blocked"] + 1))
        connection.add_on_connection_unblocked_callback(
            lambda *_: summary.__setitem__("unblocked", summary["unblocked"] + 1))
        channel = connection.channel()
        if args.confirms:
            channel.confirm_delivery()
        if args.tx_batch:
            channel.tx_select()
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print("ready", flush=True)
    try:
        if summary["errors"]:
            raise RuntimeError("not connected")
        started = time.monotonic()
        i = 0
        while not stop.is_set() and (not args.count or i < args.count):
            lag = started + i / args.rate - time.monotonic()
            if lag > 0:
                connection.sleep(lag)
            elif lag < -1:
                # Held back (a failover, tether's backpressure): go on at the rate, not in a
                # burst that makes up for the time lost.
                started -= lag
            body = f"{args.tag}-{i}".encode()
            if args.size > len(body):
                body += b"-" + b"x" * (args.size - len(body) - 1)
            channel.basic_publish(args.exchange, args.queue, body,
                                  pika.BasicProperties(delivery_mode=2))
            summary["sent"] += 1
            if args.confirms:
                summary["confirmed"] += 1  # basic_publish returns once the broker confirmed
            i += 1
            if args.tx_batch and i % args.tx_batch == 0:
                channel.tx_commit()
                summary["committed"] += args.tx_batch
        if args.tx_batch and i % args.tx_batch:
            channel.tx_rollback()  # the last, partial batch is abandoned on purpose
        # Told to hold back at the very end: the unblock comes once what was sent is confirmed
        # (a minute is far more than the lab's backlog takes).
        waited = time.monotonic() + 60
        while summary["blocked"] > summary["unblocked"] and time.monotonic() < waited:
            connection.process_data_events(time_limit=0.2)
        connection.close()
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

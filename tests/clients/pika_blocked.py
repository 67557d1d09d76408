"""Holds COUNT pika connections (no heart-beats), each with connection.blocked and unblocked
callbacks, and obeys lines on stdin:

  publish    publishes one message on every connection to QUEUE (no confirm: a blocked
             broker holds it), then waits until every connection saw connection.blocked
  join       opens one more connection, with a channel, while the others are blocked
  unblocked  waits until every connection that saw connection.blocked saw unblocked

After each, prints one JSON line: opened, blocked, unblocked (how many connections saw each),
errors.
Waits are bounded by LIMIT seconds. When stdin closes, closes every connection.
"""
import argparse
import json
import sys
import time

import pika

import pika_connection


def main():
    parser = argparse.ArgumentParser()
    pika_connection.add_arguments(parser)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--limit", type=float, default=30)
    args = parser.parse_args()

    held, seen, errors = [], {"blocked": set(), "unblocked": set()}, []

    def open_one():
        i = len(held)
        parameters = pika_connection.parameters(args)
        parameters.heartbeat = 0
        connection = pika.BlockingConnection(parameters)
        connection.add_on_connection_blocked_callback(lambda *_: seen["blocked"].add(i))
        connection.add_on_connection_unblocked_callback(lambda *_: seen["unblocked"].add(i))
        held.append((i, connection, connection.channel()))

    def wait_until(kind, who):
        deadline = time.monotonic() + args.limit
        while not who <= seen[kind] and time.monotonic() < deadline:
            for _, connection, _ in held:
                connection.process_data_events(0.05)

    def report():
        print(json.dumps({"opened": len(held), "blocked": len(seen["blocked"]), "unblocked": len(seen["unblocked"]),
                          "errors": errors}), flush=True)

    try:
        for _ in range(args.count):
            open_one()
    except Exception as e:
        errors.append(f"open: {type(e).__name__}: {e}")
    print("ready", flush=True)
    for line in sys.stdin:
        command = line.strip()
        try:
            if command == "publish":
                for i, _, channel in held:
                    channel.basic_publish("", args.queue, f"blocked-{i}".encode())
                wait_until("blocked", {i for i, _, _ in held})
            elif command == "join":
                open_one()
            elif command == "unblocked":
                wait_until("unblocked", set(seen["blocked"]))
        except Exception as e:
            errors.append(f"{command}: {type(e).__name__}: {e}")
        report()
    for i, connection, _ in held:
        try:
            connection.close()
        except Exception as e:
            errors.append(f"close {i}: {type(e).__name__}: {e}")
    report()


if __name__ == "__main__":
    main()

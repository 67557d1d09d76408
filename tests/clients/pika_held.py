"""Holds COUNT pika connections open, one channel each with publisher confirms, no heart-beats
(an idle application's connection pool). For each line "publish" on stdin, publishes one
message on every connection to QUEUE (tag TAG, numbered by connection and round) and waits for
its confirm, then prints one JSON line: confirmed, errors. When stdin closes, closes every
connection cleanly.

Prints "ready" once all are open, then one JSON line at the end: opened, confirmed, closed,
errors (each quoted with the connection it happened on). No reconnect logic: an exception is
an error.
"""
import argparse
import json
import sys

import pika

import pika_connection


def main():
    parser = argparse.ArgumentParser()
    pika_connection.add_arguments(parser)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--tag", default="held")
    args = parser.parse_args()

    held, errors = [], []
    for i in range(args.count):
        try:
            parameters = pika_connection.parameters(args)
            parameters.heartbeat = 0
            connection = pika.BlockingConnection(parameters)
            channel = connection.channel()
            channel.confirm_delivery()
            held.append((i, connection, channel))
        except Exception as e:
            errors.append(f"connection {i}: {type(e).__name__}: {e}")
    print("ready", flush=True)

    confirmed, rounds = 0, 0
    for line in sys.stdin:
        if line.strip() != "publish":
            continue
        rounds += 1
        round_confirmed, round_errors = 0, []
        for i, connection, channel in held:
            try:
                # basic_publish returns once the broker confirmed (it raises if it nacked).
                channel.basic_publish("", args.queue, f"{args.tag}r{rounds}-{i}".encode(),
                                      pika.BasicProperties(delivery_mode=2))
                round_confirmed += 1
            except Exception as e:
                round_errors.append(f"connection {i}: {type(e).__name__}: {e}")
        confirmed += round_confirmed
        errors.extend(round_errors)
        print(json.dumps({"confirmed": round_confirmed, "errors": round_errors}), flush=True)

    closed = 0
    for i, connection, _ in held:
        try:
            connection.close()
            closed += 1
        except Exception as e:
            errors.append(f"connection {i} at close: {type(e).__name__}: {e}")
    print(json.dumps({"opened": len(held), "confirmed": confirmed, "closed": closed,
                      "errors": errors}), flush=True)


if __name__ == "__main__":
    main()

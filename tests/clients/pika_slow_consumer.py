"""A consumer whose application stalls: it subscribes to QUEUE with manual acks and no prefetch
limit, prints "ready", and then reads nothing from its socket until a line "read" comes on
stdin. Then it consumes and acks until no message came for IDLE seconds.

Prints one JSON line at the end: received (distinct bodies), duplicates, redelivered, errors.
No reconnect logic: an exception is an error.
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
    parser.add_argument("--queue", required=True)
    parser.add_argument("--idle", type=float, default=3)
    args = parser.parse_args()

    seen, state, errors = set(), {"duplicates": 0, "redelivered": 0, "last": 0.0}, []

    def on_message(channel, method, _properties, body):
        if body in seen:
            state["duplicates"] += 1
        seen.add(body)
        if method.redelivered:
            state["redelivered"] += 1
        state["last"] = time.monotonic()
        channel.basic_ack(method.delivery_tag)

    try:
        parameters = pika_connection.parameters(args)
        parameters.heartbeat = 0
        connection = pika.BlockingConnection(parameters)
        channel = connection.channel()
        channel.basic_consume(args.queue, on_message)
        print("ready", flush=True)
        for line in sys.stdin:
            if line.strip() == "read":
                break
        state["last"] = time.monotonic()
        while time.monotonic() - state["last"] < args.idle:
            connection.process_data_events(time_limit=0.5)
        connection.close()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    print(json.dumps({"received": len(seen), "duplicates": state["duplicates"],
                      "redelivered": state["redelivered"], "errors": errors}), flush=True)


if __name__ == "__main__":
    main()

"""Publish COUNT messages with publisher confirms, then consume them, through one AMQP port.

Prints one JSON line: published, confirmed, received, errors.
"""
import argparse
import json
import sys

import pika


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, default=100)
    args = parser.parse_args()

    summary = {"published": 0, "confirmed": 0, "received": 0, "errors": []}
    try:
        params = pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1)
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_purge(args.queue)
        channel.confirm_delivery()
        for i in range(args.count):
            channel.basic_publish("", args.queue, f"message {i}".encode(),
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)
            summary["published"] += 1
            summary["confirmed"] += 1  # basic_publish raises unless the broker confirmed
        bodies = set()
        for method, _props, body in channel.consume(args.queue, inactivity_timeout=10):
            if method is None:
                break
            bodies.add(body)
            channel.basic_ack(method.delivery_tag)
            if len(bodies) == args.count:
                break
        channel.cancel()
        summary["received"] = len(bodies)
        channel.queue_delete(args.queue)
        connection.close()
    except Exception as e:  # the summary reports every client-visible error
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(summary))
    sys.stdout.flush()


if __name__ == "__main__":
    main()

"""A pika consumer without reconnect logic: manual acks with a prefetch, on a queue, or on a
server-named exclusive queue bound to a fanout exchange (pub/sub). Runs until stdin closes and
no message came for IDLE seconds. Checks that delivery tags only grow.

Prints "ready" once consuming, then one JSON line: received (distinct), duplicates (and those
without the redelivered flag), per_tag, highest, gaps, tag_regressions, errors.
"""
import argparse
import collections
import json
import re
import time

import pika

from expectations import Expectations

import pika_connection


PADDING = re.compile(r"-x+$")


def main():
    parser = argparse.ArgumentParser()
    pika_connection.add_arguments(parser)
    parser.add_argument("--queue", default="")
    parser.add_argument("--fanout", default="", help="subscribe to this fanout exchange through "
                                                     "a server-named exclusive queue")
    parser.add_argument("--own-queue", action="store_true",
                        help="declare --queue itself, transient and auto-delete, as Celery "
                             "declares its pidbox queue")
    parser.add_argument("--prefetch", type=int, default=50)
    parser.add_argument("--idle", type=float, default=20)
    parser.add_argument("--limit", type=float, default=300)
    parser.add_argument("--dump", action="store_true",
                        help="also print every message body received, for counting across consumers")
    args = parser.parse_args()

    seen = set()
    state = {"duplicates": 0, "last_tag": 0, "regressions": 0, "last_message": time.monotonic(),
             "deliveries": 0, "unflagged_duplicates": 0}
    errors = []

    def on_message(channel, method, _properties, body):
        # pika_publisher.py --size pads a body as "TAG-SEQ-xxx...": counted as "TAG-SEQ".
        body = PADDING.sub("", body.decode())
        state["deliveries"] += 1
        if body in seen:
            state["duplicates"] += 1
            # AMQP allows a message again only with the redelivered flag set.
            if not method.redelivered:
                state["unflagged_duplicates"] += 1
        seen.add(body)
        if method.delivery_tag <= state["last_tag"]:
            state["regressions"] += 1
        state["last_tag"] = method.delivery_tag
        state["last_message"] = time.monotonic()
        channel.basic_ack(method.delivery_tag)

    connection = None
    try:
        connection = pika.BlockingConnection(
            pika_connection.parameters(args))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=args.prefetch)
        queue = args.queue
        if args.own_queue:
            channel.queue_declare(queue, auto_delete=True)
        if args.fanout:
            channel.exchange_declare(args.fanout, "fanout")
            queue = channel.queue_declare("", exclusive=True).method.queue
            channel.queue_bind(queue, args.fanout)
        channel.basic_consume(queue, on_message)
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    print("ready", flush=True)

    expectations = Expectations()
    started = time.monotonic()
    try:
        while connection and not errors and time.monotonic() - started < args.limit:
            connection.process_data_events(time_limit=0.1)
            if expectations.done(seen, time.monotonic() - state["last_message"], args.idle):
                break
        if connection and not errors:
            connection.close()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")

    per_tag = collections.Counter(body.rsplit("-", 1)[0] for body in seen)
    highest = collections.defaultdict(int)
    for body in seen:
        tag, seq = body.rsplit("-", 1)
        highest[tag] = max(highest[tag], int(seq))
    gaps = {tag: [n for n in range(top) if f"{tag}-{n}" not in seen] for tag, top in highest.items()}
    print(json.dumps({
        "received": len(seen), "duplicates": state["duplicates"],
        "unflagged_duplicates": state["unflagged_duplicates"], "per_tag": per_tag,
        "highest": highest, "missing": {tag: len(g) for tag, g in gaps.items()},
        "gaps": {tag: g[:20] for tag, g in gaps.items()},
        "tag_regressions": state["regressions"], "errors": errors,
        **({"bodies": sorted(seen), "deliveries": state["deliveries"]} if args.dump else {}),
    }), flush=True)


if __name__ == "__main__":
    main()

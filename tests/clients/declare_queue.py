"""Declare (and purge) a durable queue directly on a node, for tests that use it by name; or
delete it, or say whether it exists and how many consumers it has."""
import argparse
import json

import pika

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--queue", required=True)
parser.add_argument("--type", default="quorum", choices=["quorum", "classic"])
parser.add_argument("--delete", action="store_true", help="delete instead of declare")
parser.add_argument("--inspect", action="store_true",
                    help='print {"exists": ..., "consumers": ...} instead of declaring')
args = parser.parse_args()

connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", args.port))
channel = connection.channel()
if args.inspect:
    try:
        ok = channel.queue_declare(args.queue, passive=True).method
        print(json.dumps({"exists": True, "consumers": ok.consumer_count,
                          "messages": ok.message_count}))
    except pika.exceptions.ChannelClosedByBroker:
        print(json.dumps({"exists": False, "consumers": 0, "messages": 0}))
    connection.close()
    raise SystemExit(0)
if args.delete:
    channel.queue_delete(args.queue)
else:
    channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": args.type})
    channel.queue_purge(args.queue)
connection.close()
print(json.dumps({"ok": True}))

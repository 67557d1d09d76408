"""Declare (and purge) a durable queue directly on a node, for tests that use it by name."""
import argparse
import json

import pika

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, required=True)
parser.add_argument("--queue", required=True)
parser.add_argument("--type", default="quorum", choices=["quorum", "classic"])
parser.add_argument("--delete", action="store_true", help="delete instead of declare")
args = parser.parse_args()

connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", args.port))
channel = connection.channel()
if args.delete:
    channel.queue_delete(args.queue)
else:
    channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": args.type})
    channel.queue_purge(args.queue)
connection.close()
print(json.dumps({"ok": True}))

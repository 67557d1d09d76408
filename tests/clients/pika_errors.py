"""Errors a client causes, seen through pika: a passive declare of a queue that does not exist,
a wrong password, and an idle connection that waits for the broker to go away. Prints one JSON
line with what each step saw.
"""
import argparse
import json
import sys

import pika


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--step", choices=["not-found", "bad-login", "idle"], required=True)
    parser.add_argument("--limit", type=float, default=60)
    args = parser.parse_args()
    result = {"step": args.step}
    try:
        if args.step == "bad-login":
            credentials = pika.PlainCredentials("guest", "wrong")
            pika.BlockingConnection(pika.ConnectionParameters(
                "127.0.0.1", args.port, credentials=credentials, connection_attempts=1))
            result["outcome"] = "connected"
        elif args.step == "not-found":
            connection = pika.BlockingConnection(
                pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1))
            channel = connection.channel()
            try:
                channel.queue_declare("tether-no-such-queue", passive=True)
                result["outcome"] = "declared"
            except pika.exceptions.ChannelClosedByBroker as e:
                result["outcome"] = "channel closed"
                result["code"] = e.reply_code
                result["text"] = e.reply_text
            # The connection itself must still work.
            channel = connection.channel()
            channel.queue_declare("", exclusive=True)
            result["connection_ok"] = True
            connection.close()
        else:
            connection = pika.BlockingConnection(
                pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1))
            print("ready", flush=True)
            connection.process_data_events(time_limit=args.limit)
            result["outcome"] = "still open"
    except pika.exceptions.ConnectionClosedByBroker as e:
        result["outcome"] = "connection closed"
        result["code"] = e.reply_code
        result["text"] = e.reply_text
    except Exception as e:
        result["outcome"] = type(e).__name__
        result["text"] = str(e)
    if args.step != "idle":
        print("ready", flush=True)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()

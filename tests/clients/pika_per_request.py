"""The seeds' connect-per-request pattern with pika: for every message, connect, open a channel,
publish (with confirms unless --no-confirms), close. No reconnect logic: an exception is an
error. Runs COUNT times, or until stdin closes, at RATE per second.

Other checks, one connection each, instead of publishing:
  --expect-refused  log in (with --password) and count the refusals; a login that works is an
                    error
  --exclusive NAME  declare an exclusive queue NAME, then close
  --passive NAME    declare NAME passively: prints whether it exists for this connection

Prints "ready" first, then one JSON line: sent, confirmed, refused, exists, errors.
"""
import argparse
import json
import sys
import threading
import time

import pika

import pika_connection


def connect(args):
    parameters = pika_connection.parameters(args)
    parameters.credentials = pika.PlainCredentials(args.user, args.password)
    return pika.BlockingConnection(parameters)


def publish_one(args, i, summary):
    connection = connect(args)
    try:
        channel = connection.channel()
        if not args.no_confirms:
            channel.confirm_delivery()
        channel.basic_publish("", args.queue, f"{args.tag}-{i}".encode(),
                              pika.BasicProperties(delivery_mode=2))
        summary["sent"] += 1
        if not args.no_confirms:
            summary["confirmed"] += 1  # basic_publish returns once the broker confirmed
    finally:
        connection.close()


def refused_once(args, summary):
    try:
        connection = connect(args)
    except (pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
            pika.exceptions.AuthenticationError) as e:
        summary["refused"] += 1
        summary["refusals"].append(f"{type(e).__name__}: {e}")
        return
    except pika.exceptions.ConnectionClosedByBroker as e:
        if e.reply_code == 403:
            summary["refused"] += 1
            summary["refusals"].append(f"{type(e).__name__}: {e}")
            return
        raise
    connection.close()
    summary["errors"].append("a wrong password was let in")


def main():
    parser = argparse.ArgumentParser()
    pika_connection.add_arguments(parser)
    parser.add_argument("--queue", default="")
    parser.add_argument("--count", type=int, default=0, help="0 = until stdin closes")
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--tag", default="perreq")
    parser.add_argument("--user", default="guest")
    parser.add_argument("--password", default="guest")
    parser.add_argument("--no-confirms", action="store_true")
    parser.add_argument("--expect-refused", action="store_true")
    parser.add_argument("--exclusive", default="")
    parser.add_argument("--passive", default="")
    args = parser.parse_args()

    summary = {"sent": 0, "confirmed": 0, "refused": 0, "refusals": [], "exists": None,
               "errors": []}
    print("ready", flush=True)
    try:
        if args.exclusive:
            connection = connect(args)
            connection.channel().queue_declare(args.exclusive, exclusive=True)
            connection.close()
        elif args.passive:
            connection = connect(args)
            try:
                connection.channel().queue_declare(args.passive, passive=True)
                summary["exists"] = True
            except pika.exceptions.ChannelClosedByBroker as e:
                if e.reply_code != 404:
                    raise
                summary["exists"] = False
            connection.close()
        else:
            stop = threading.Event()
            if not args.count:
                threading.Thread(target=lambda: (sys.stdin.read(), stop.set()),
                                 daemon=True).start()
            started = time.monotonic()
            i = 0
            while not stop.is_set() and (not args.count or i < args.count):
                lag = started + i / args.rate - time.monotonic()
                if lag > 0:
                    time.sleep(lag)
                if args.expect_refused:
                    refused_once(args, summary)
                else:
                    publish_one(args, i, summary)
                i += 1
    except Exception as e:
        summary["errors"].append(f"{type(e).__name__}: {e}")
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

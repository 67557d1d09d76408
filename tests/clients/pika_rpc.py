"""RPC over AMQP with pika, no reconnect logic. The server answers requests from a named queue
on each request's reply-to; the client sends requests on a server-named exclusive reply queue,
one at a time, waiting up to TIMEOUT for each reply, until stdin closes.

Prints "ready", then one JSON line. Client: requests, replies, timeouts, last_ok (requests
answered in a row at the end), errors. Server: served, errors.
"""
import argparse
import json
import sys
import threading
import time
import uuid

import pika


def serve(args, stop):
    served, errors = 0, []
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)

    def on_request(ch, method, properties, body):
        nonlocal served
        ch.basic_publish("", properties.reply_to, b"re:" + body,
                         pika.BasicProperties(correlation_id=properties.correlation_id))
        ch.basic_ack(method.delivery_tag)
        served += 1

    channel.basic_consume(args.queue, on_request)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            connection.process_data_events(time_limit=0.1)
        connection.close()
    except Exception as e:
        errors.append(f"{type(e).__name__}: {e}")
    return {"served": served, "errors": errors}


def call(args, stop):
    result = {"requests": 0, "replies": 0, "timeouts": 0, "last_ok": 0, "errors": []}
    connection = pika.BlockingConnection(
        pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1))
    channel = connection.channel()
    reply_queue = channel.queue_declare("", exclusive=True).method.queue
    answers = {}

    def on_reply(_ch, _method, properties, body):
        answers[properties.correlation_id] = body

    channel.basic_consume(reply_queue, on_reply, auto_ack=True)
    print("ready", flush=True)
    try:
        while not stop.is_set():
            correlation = str(uuid.uuid4())
            channel.basic_publish("", args.queue, correlation.encode(),
                                  pika.BasicProperties(reply_to=reply_queue,
                                                       correlation_id=correlation))
            result["requests"] += 1
            deadline = time.monotonic() + args.timeout
            while correlation not in answers and time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.05)
            if correlation in answers:
                result["replies"] += 1
                result["last_ok"] += 1
            else:
                result["timeouts"] += 1
                result["last_ok"] = 0
            connection.sleep(1 / args.rate)
        connection.close()
    except Exception as e:
        result["errors"].append(f"{type(e).__name__}: {e}")
    return result


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--role", choices=["server", "client"], required=True)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    try:
        summary = serve(args, stop) if args.role == "server" else call(args, stop)
    except Exception as e:
        print("ready", flush=True)
        summary = {"errors": [f"{type(e).__name__}: {e}"]}
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()

"""Open COUNT AMQP connections, each with a server-named queue of its own, and keep them open.
Prints "ready" once all are open. Each "ping" line on stdin makes every connection publish one
message (with confirms) to its queue and get it back; one JSON line answers: ok, errors. When
stdin closes, every connection closes; the last JSON line: opened, pings_ok, errors.
"""
import argparse
import json
import sys

import pika


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    args = parser.parse_args()

    sessions, errors = [], []
    for _ in range(args.count):
        try:
            params = pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1,
                                               heartbeat=0)
            connection = pika.BlockingConnection(params)
            channel = connection.channel()
            channel.confirm_delivery()
            queue = channel.queue_declare("", exclusive=True).method.queue
            sessions.append((connection, channel, queue))
        except Exception as e:
            errors.append(f"open: {type(e).__name__}: {e}")
    print("ready", flush=True)

    pings_ok = 0
    for line in sys.stdin:
        if line.strip() != "ping":
            continue
        ok, ping_errors = 0, []
        for number, (_, channel, queue) in enumerate(sessions):
            try:
                body = f"ping {number}".encode()
                channel.basic_publish("", queue, body)
                method, _, got = channel.basic_get(queue, auto_ack=True)
                if got == body:
                    ok += 1
                else:
                    ping_errors.append(f"session {number}: got {got!r}")
            except Exception as e:
                ping_errors.append(f"session {number}: {type(e).__name__}: {e}")
        pings_ok += ok
        errors.extend(ping_errors)
        print(json.dumps({"ok": ok, "errors": ping_errors}), flush=True)

    for connection, _, _ in sessions:
        try:
            connection.close()
        except Exception as e:
            errors.append(f"close: {type(e).__name__}: {e}")
    print(json.dumps({"opened": len(sessions), "pings_ok": pings_ok, "errors": errors}),
          flush=True)


if __name__ == "__main__":
    main()

"""Open COUNT AMQP connections (full handshake, one channel each) and hold them until stdin
closes. Prints "ready" once all are open, then one JSON line: opened, closed_by_peer, errors.
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

    connections, errors = [], []
    for _ in range(args.count):
        try:
            params = pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1,
                                               heartbeat=0)
            connection = pika.BlockingConnection(params)
            connection.channel()
            connections.append(connection)
        except Exception as e:
            errors.append(f"{type(e).__name__}: {e}")
    print("ready", flush=True)
    sys.stdin.read()
    closed_by_peer = 0
    for connection in connections:
        try:
            connection.process_data_events(0)
            connection.close()
        except Exception:
            closed_by_peer += 1
    print(json.dumps({"opened": len(connections), "closed_by_peer": closed_by_peer,
                      "errors": errors}), flush=True)


if __name__ == "__main__":
    main()

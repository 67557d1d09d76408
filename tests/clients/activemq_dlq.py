"""Takes from ActiveMQ.DLQ on each broker the messages that came from one destination, and
prints what they were and why the broker dead-lettered them: one JSON line, {"bodies": [...],
"causes": {cause: count}}. Messages of other destinations are left where they are.
"""
import argparse
import collections
import json
import time

import stomp


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--ports", required=True, help="comma-separated STOMP ports")
    parser.add_argument("--destination", required=True, help="e.g. /queue/orders")
    args = parser.parse_args()
    bodies, causes = [], collections.Counter()
    for port in args.ports.split(","):
        conn = stomp.Connection12([("127.0.0.1", int(port))], vhost="/")
        frames = []

        class Listener(stomp.ConnectionListener):
            def on_message(self, frame):
                frames.append(frame)

        conn.set_listener("", Listener())
        conn.connect("admin", "admin", wait=True)
        conn.subscribe("/queue/ActiveMQ.DLQ", id="1", ack="client-individual")
        # A DLQ holds little; what is there arrives within a second or two.
        quiet_since, seen = time.monotonic(), 0
        while time.monotonic() - quiet_since < 2:
            time.sleep(0.2)
            if len(frames) != seen:
                seen, quiet_since = len(frames), time.monotonic()
        for frame in frames:
            if frame.headers.get("original-destination") == args.destination:
                bodies.append(frame.body)
                causes[frame.headers.get("dlqDeliveryFailureCause", "?")] += 1
                conn.ack(frame.headers["ack"])
        # Others' messages, not acked, go back to the DLQ as the connection closes.
        conn.disconnect()
    print(json.dumps({"bodies": bodies, "causes": causes}))


if __name__ == "__main__":
    main()

"""stomp.py the way its docs show it, with no reconnect logic: a producer that asks a receipt for
every SEND and a consumer with client-individual acks, each on its own STOMP 1.2 connection
with heart-beats. The counted scenario is tally.py's; a receipt stands for a confirm."""
import argparse
import threading
import time

import stomp

from tally import Tally


class Listener(stomp.ConnectionListener):
    def __init__(self, tally, conn, role):
        self.tally, self.conn, self.role = tally, conn, role
        self.receipts = {}
        self.lock = threading.Lock()

    def on_message(self, frame):
        headers = frame.headers
        redelivered = headers.get("redelivered") == "true" or int(
            headers.get("redeliveries", "0") or 0) > 0
        self.tally.delivered(frame.body, redelivered)
        self.conn.ack(headers["ack"])

    def on_receipt(self, frame):
        with self.lock:
            body = self.receipts.pop(frame.headers.get("receipt-id"), None)
        if body is not None:
            self.tally.confirm(body)

    def on_error(self, frame):
        self.tally.error(f"{self.role}: ERROR frame: {frame.headers.get('message')}")

    def on_disconnected(self):
        if not self.tally.stopping.is_set():
            self.tally.error(f"{self.role}: disconnected")


def connect(tally, port, role):
    # stomp.py would send the address as `host`, which RabbitMQ takes for the vhost.
    conn = stomp.Connection12([("127.0.0.1", port)], heartbeats=(4000, 4000),
                              reconnect_attempts_max=1, vhost="/")
    listener = Listener(tally, conn, role)
    conn.set_listener(role, listener)
    conn.connect("guest", "guest", wait=True)
    return conn, listener


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--destination", required=True)
    parser.add_argument("--rate", type=float, default=40)
    parser.add_argument("--name", default="stomp.py")
    args = parser.parse_args()
    tally = Tally(args.name, stomp.__version__ if isinstance(stomp.__version__, str)
                  else ".".join(map(str, stomp.__version__)))
    consumer = producer = None
    try:
        consumer, _ = connect(tally, args.port, "consumer")
        consumer.subscribe(args.destination, id="1", ack="client-individual",
                           headers={"prefetch-count": "50", "activemq.prefetchSize": "50"})
        producer, listener = connect(tally, args.port, "producer")
        print("ready", flush=True)
        while not tally.stopping.is_set() and not tally.errors:
            body = tally.next_body()
            with listener.lock:
                listener.receipts[f"r{body}"] = body
            producer.send(args.destination, body, headers={"persistent": "true"},
                          receipt=f"r{body}")
            time.sleep(1 / args.rate)
        deadline = time.monotonic() + 60
        while not tally.all_confirmed() and time.monotonic() < deadline and not tally.errors:
            time.sleep(0.1)
        tally.wait_drained()
    except Exception as e:
        tally.error(e)
    tally.stopping.set()
    for conn in (producer, consumer):
        try:
            if conn:
                conn.disconnect()
        except Exception:
            pass
    tally.print_summary()


if __name__ == "__main__":
    main()

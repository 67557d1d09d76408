"""The counted scenario every client of the matrix runs, for the Python ones: what a publisher
sent and had confirmed, what a consumer received, and when to stop.

Each matrix client publishes the bodies "0", "1", ... to its own queue at a steady rate, with
confirms (AMQP) or receipts (STOMP), and consumes them back with manual acks. On "stop" (or
end of file) on its standard input it stops publishing, waits for its last confirms, and drains
until every confirmed body came back and the queue was quiet for a moment. It then prints one
JSON line; the test asserts on it (tests/client_matrix.rs).
"""
import json
import sys
import threading
import time

# Quiet after the last confirmed body came back: room for redeliveries that come after it.
SETTLE = 2.0
# How long a drain may take after "stop": a restarted node's queue replica catching up, an
# ActiveMQ broker forwarding what it kept while it was down.
DRAIN_LIMIT = 120.0


class Tally:
    def __init__(self, client, version):
        self.client, self.version = client, version
        self.lock = threading.Lock()
        self.sent = 0
        self.confirmed = set()
        self.nacked = 0
        self.received = set()
        self.deliveries = 0
        self.redelivered = 0
        self.duplicates = 0
        self.duplicates_redelivered = 0
        self.errors = []
        self.extra = {}
        self.last_delivery = time.monotonic()
        self.stopping = threading.Event()
        threading.Thread(target=self._read_stdin, daemon=True).start()

    def _read_stdin(self):
        for line in sys.stdin:
            if line.strip() == "stop":
                break
        self.stopping.set()

    def next_body(self):
        with self.lock:
            body = str(self.sent)
            self.sent += 1
            return body

    def confirm(self, body):
        with self.lock:
            self.confirmed.add(int(body))

    def nack(self, _body):
        with self.lock:
            self.nacked += 1

    def delivered(self, body, redelivered):
        with self.lock:
            seq = int(body)
            self.deliveries += 1
            self.redelivered += bool(redelivered)
            if seq in self.received:
                self.duplicates += 1
                self.duplicates_redelivered += bool(redelivered)
            self.received.add(seq)
            self.last_delivery = time.monotonic()

    def error(self, e):
        with self.lock:
            self.errors.append(f"{type(e).__name__}: {e}" if isinstance(e, BaseException) else str(e))

    def all_confirmed(self):
        with self.lock:
            return len(self.confirmed) + self.nacked >= self.sent

    def drained(self):
        """True once every confirmed body came back and the queue was quiet for SETTLE."""
        with self.lock:
            quiet = time.monotonic() - self.last_delivery
            return self.confirmed <= self.received and quiet > SETTLE

    def wait_drained(self, pump=lambda: time.sleep(0.1)):
        deadline = time.monotonic() + DRAIN_LIMIT
        while not self.drained() and time.monotonic() < deadline and not self.errors:
            pump()

    def summary(self):
        with self.lock:
            lost = sorted(self.confirmed - self.received)
            return {
                "client": self.client, "version": self.version,
                "sent": self.sent, "confirmed": len(self.confirmed), "nacked": self.nacked,
                "received": len(self.received), "deliveries": self.deliveries,
                "redelivered": self.redelivered, "duplicates": self.duplicates,
                "duplicates_redelivered": self.duplicates_redelivered,
                "lost": len(lost), "lost_first": lost[:1000], "errors": self.errors[:20],
                **self.extra,
            }

    def print_summary(self):
        print(json.dumps(self.summary()), flush=True)

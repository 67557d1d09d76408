"""What a test tells a consumer on its standard input before closing it: one line
"expect TAG N" per publisher, N messages TAG-0 .. TAG-(N-1) sent. The consumer stops once it
has each publisher's last message and the queue has been quiet for a moment, rather than after
its full idle time: the fault trials otherwise spend most of a minute each just waiting.
"""
import sys
import threading

# Quiet after the last expected message arrived: room for redeliveries that come after it.
SETTLE = 2.0


class Expectations:
    def __init__(self):
        self.closed = threading.Event()
        self.last = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in sys.stdin:
            words = line.split()
            if len(words) == 3 and words[0] == "expect":
                self.last[words[1]] = int(words[2])
        self.closed.set()

    def done(self, seen, quiet, idle):
        """True once stdin closed and either every expected last message is in `seen` (a set
        of bodies) with `quiet` seconds since the last delivery past SETTLE, or `quiet` is past
        `idle`."""
        if not self.closed.is_set():
            return False
        if quiet > idle:
            return True
        met = bool(self.last) and all(
            f"{tag}-{n - 1}" in seen for tag, n in self.last.items() if n > 0)
        return met and quiet > SETTLE

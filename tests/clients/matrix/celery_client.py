"""Celery with kombu, the way its docs show it: a worker (`celery worker`, its defaults: the
pidbox remote-control queue, mingle and gossip over fanout exchanges, heartbeats) and a producer
calling `record.delay(seq)` with publish confirms, through tether, with no reconnect logic of
ours. After "stop" on stdin it waits for every confirmed task to have run, asks
`celery inspect ping` (a broadcast answered on a reply queue), stops the worker and prints the
tally: executions stand for deliveries, and a task run twice must carry the redelivered flag
unless tether sent its publish again.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

from tally import Tally


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--rate", type=float, default=20)
    args = parser.parse_args()
    executions = tempfile.NamedTemporaryFile(prefix="celery-executions-", delete=False).name
    os.environ.update(MATRIX_PORT=str(args.port), MATRIX_QUEUE=args.queue,
                      MATRIX_EXECUTIONS=executions)
    here = os.path.dirname(os.path.abspath(__file__))
    celery = [sys.executable, "-m", "celery", "-A", "celery_app"]
    worker = subprocess.Popen(
        celery + ["worker", "--pool=solo", "--loglevel=WARNING", "-n", f"{args.queue}@%h"],
        cwd=here, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sys.path.insert(0, here)
    import celery as celery_package
    from celery_app import app, record
    tally = Tally("Celery (kombu)", f"{celery_package.__version__}")
    executed_lines = 0

    def read_executions():
        nonlocal executed_lines
        with open(executions) as f:
            lines = f.read().splitlines()
        for line in lines[executed_lines:]:
            seq, redelivered = line.split()
            tally.delivered(seq, redelivered == "1")
        executed_lines = len(lines)

    ping = {}
    try:
        # Ready once the worker answers a ping: it consumes and its pidbox is up.
        deadline = time.monotonic() + 60
        while not app.control.inspect(timeout=1).ping():
            if time.monotonic() > deadline or worker.poll() is not None:
                raise RuntimeError("the worker did not answer a ping within 60 s")
        print("ready", flush=True)
        while not tally.stopping.is_set() and not tally.errors:
            body = tally.next_body()
            record.delay(int(body))
            tally.confirm(body)
            read_executions()
            time.sleep(1 / args.rate)
        tally.wait_drained(lambda: (time.sleep(0.2), read_executions()))
        answer = subprocess.run(celery + ["inspect", "ping", "--timeout=10"], cwd=here,
                                capture_output=True, text=True, timeout=60)
        ping = {"exit": answer.returncode, "pong": "pong" in answer.stdout}
        if answer.returncode != 0 or "pong" not in answer.stdout:
            tally.error(f"celery inspect ping: exit {answer.returncode}: "
                        f"{answer.stdout.strip()} {answer.stderr.strip()[-300:]}")
    except Exception as e:
        tally.error(e)
    worker.terminate()
    try:
        _, stderr = worker.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        worker.kill()
        _, stderr = worker.communicate()
    read_executions()
    # What the worker itself reported as going wrong (a lost connection, a failed task).
    for line in stderr.splitlines():
        if "ERROR" in line or "CRITICAL" in line or "Traceback" in line:
            tally.error(f"worker: {line.strip()[:300]}")
    os.unlink(executions)
    tally.extra["inspect_ping"] = ping
    tally.print_summary()


if __name__ == "__main__":
    main()

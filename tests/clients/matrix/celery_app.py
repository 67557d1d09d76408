"""The Celery application of the matrix: one task that records each execution (its argument
and the redelivered flag of the message that carried it) in a file, acked late so that a task
whose worker's node died is redelivered rather than dropped. The queue is a quorum queue, as a
task queue that must survive a node is."""
import os

from celery import Celery
from kombu import Queue

QUEUE = os.environ["MATRIX_QUEUE"]
EXECUTIONS = os.environ["MATRIX_EXECUTIONS"]

app = Celery("matrix", broker=f"amqp://guest:guest@127.0.0.1:{os.environ['MATRIX_PORT']}//")
app.conf.update(
    task_queues=[Queue(QUEUE, routing_key=QUEUE, queue_arguments={"x-queue-type": "quorum"})],
    task_default_queue=QUEUE,
    task_acks_late=True,
    worker_prefetch_multiplier=10,
    # kombu waits for the broker's confirm of each task it publishes.
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=False,
    worker_hijack_root_logger=False,
)


@app.task(bind=True)
def record(self, seq):
    redelivered = bool((self.request.delivery_info or {}).get("redelivered"))
    with open(EXECUTIONS, "a") as executions:
        executions.write(f"{seq} {int(redelivered)}\n")

"""pika's SelectConnection (callbacks on its ioloop) the way its docs show it, with no reconnect
logic: one connection, a consumer channel with manual acks and a prefetch, and a publisher
channel in confirm mode publishing on a timer."""
import argparse
import time

import pika

from tally import Tally


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--rate", type=float, default=40)
    args = parser.parse_args()
    tally = Tally("pika SelectConnection", pika.__version__)
    # Confirms come by delivery tag, in order of publishing on the channel.
    in_flight = {}
    state = {"publishing": True, "next_tag": 1}

    def on_open(connection):
        connection.channel(on_open_callback=on_consumer_channel)

    def on_consuming(_frame):
        print("ready", flush=True)
        # Publishing starts once the queue exists: a body routed nowhere would count as lost.
        connection.channel(on_open_callback=on_publisher_channel)

    def on_close(_connection, reason):
        if state["publishing"] or not tally.stopping.is_set():
            tally.error(f"connection closed: {reason}")
        connection.ioloop.stop()

    def on_consumer_channel(channel):
        channel.add_on_close_callback(on_channel_closed)

        def on_declared(_frame):
            channel.basic_qos(prefetch_count=50, callback=lambda _f: channel.basic_consume(
                args.queue, on_message, callback=on_consuming))
        channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": "quorum"},
                              callback=on_declared)

    def on_message(channel, method, _properties, body):
        tally.delivered(body.decode(), method.redelivered)
        channel.basic_ack(method.delivery_tag)

    def on_publisher_channel(channel):
        channel.add_on_close_callback(on_channel_closed)
        channel.confirm_delivery(on_confirm, callback=lambda _f: publish(channel))

    def on_channel_closed(_channel, reason):
        if not tally.stopping.is_set() or state["publishing"]:
            tally.error(f"channel closed: {reason}")

    def on_confirm(frame):
        method = frame.method
        tags = [t for t in in_flight if t <= method.delivery_tag] if method.multiple else [
            method.delivery_tag]
        for tag in tags:
            body = in_flight.pop(tag, None)
            if body is not None:
                (tally.confirm if isinstance(method, pika.spec.Basic.Ack) else tally.nack)(body)

    def publish(channel):
        if tally.stopping.is_set() or tally.errors:
            state["publishing"] = False
            connection.ioloop.call_later(0.1, lambda: finish_when_drained())
            return
        body = tally.next_body()
        in_flight[state["next_tag"]] = body
        state["next_tag"] += 1
        channel.basic_publish("", args.queue, body, pika.BasicProperties(delivery_mode=2))
        connection.ioloop.call_later(1 / args.rate, lambda: publish(channel))

    deadline = {}

    def finish_when_drained():
        deadline.setdefault("at", time.monotonic() + 120)
        if (tally.all_confirmed() and tally.drained()) or tally.errors \
                or time.monotonic() > deadline["at"]:
            connection.close()
        else:
            connection.ioloop.call_later(0.1, finish_when_drained)

    connection = pika.SelectConnection(
        pika.ConnectionParameters("127.0.0.1", args.port, connection_attempts=1),
        on_open_callback=on_open,
        on_open_error_callback=lambda _c, e: (tally.error(e), connection.ioloop.stop()),
        on_close_callback=on_close)
    # The tally's stdin reader sets `stopping`; the publish timer notices it.
    try:
        connection.ioloop.start()
    except Exception as e:
        tally.error(e)
    tally.print_summary()


if __name__ == "__main__":
    main()

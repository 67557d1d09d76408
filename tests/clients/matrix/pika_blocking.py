"""pika's BlockingConnection the way its docs show it, with no reconnect logic: a publisher
thread with confirms (basic_publish returns once the broker confirmed, raises if it nacked)
and a consumer with manual acks and a prefetch, each on its own connection."""
import argparse
import threading
import time

import pika

from tally import Tally


def parameters(port):
    return pika.ConnectionParameters("127.0.0.1", port, connection_attempts=1)


def publish(tally, args):
    try:
        connection = pika.BlockingConnection(parameters(args.port))
        channel = connection.channel()
        channel.confirm_delivery()
        while not tally.stopping.is_set() and not tally.errors:
            body = tally.next_body()
            channel.basic_publish("", args.queue, body,
                                  pika.BasicProperties(delivery_mode=2), mandatory=True)
            tally.confirm(body)
            connection.sleep(1 / args.rate)
        connection.close()
    except Exception as e:
        tally.error(e)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--rate", type=float, default=40)
    args = parser.parse_args()
    tally = Tally("pika BlockingConnection", pika.__version__)

    def on_message(channel, method, _properties, body):
        tally.delivered(body.decode(), method.redelivered)
        channel.basic_ack(method.delivery_tag)

    connection = None
    try:
        connection = pika.BlockingConnection(parameters(args.port))
        channel = connection.channel()
        channel.queue_declare(args.queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.basic_qos(prefetch_count=50)
        channel.basic_consume(args.queue, on_message)
    except Exception as e:
        tally.error(e)
    print("ready", flush=True)
    publisher = threading.Thread(target=publish, args=(tally, args))
    publisher.start()
    try:
        while connection and not tally.stopping.is_set() and not tally.errors:
            connection.process_data_events(time_limit=0.1)
        publisher.join()
        if connection:
            tally.wait_drained(lambda: connection.process_data_events(time_limit=0.1))
            connection.close()
    except Exception as e:
        tally.error(e)
    tally.print_summary()


if __name__ == "__main__":
    main()

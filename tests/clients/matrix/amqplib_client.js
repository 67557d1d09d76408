// Node's amqplib the way its docs show it, with no reconnect logic: a confirm channel that
// publishes without waiting (amqplib pipelines, and calls back on each confirm) and a consumer
// channel with manual acks and a prefetch, on one connection. The counted scenario is
// tally.py's: "stop" on stdin ends publishing, then it drains and prints one JSON line.
"use strict";
const amqp = require("amqplib");
const readline = require("readline");

const args = Object.fromEntries(process.argv.slice(2).map((a) => a.replace(/^--/, "").split("=")));
const port = Number(args.port);
const queue = args.queue;
const rate = Number(args.rate || 40);
const SETTLE_MS = 2000;
const DRAIN_LIMIT_MS = 120000;

const tally = {
  sent: 0, confirmed: new Set(), nacked: 0, received: new Set(), deliveries: 0,
  redelivered: 0, duplicates: 0, duplicatesRedelivered: 0, errors: [], lastDelivery: Date.now(),
};
let stopping = false;
readline.createInterface({ input: process.stdin }).on("line", (line) => {
  if (line.trim() === "stop") stopping = true;
}).on("close", () => { stopping = true; });

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const error = (e) => tally.errors.push(e instanceof Error ? `${e.name}: ${e.message}` : String(e));

async function main() {
  let connection;
  try {
    connection = await amqp.connect(`amqp://guest:guest@127.0.0.1:${port}`);
    connection.on("error", error);
    connection.on("close", () => { if (!stopping) error("connection closed"); });
    const consumer = await connection.createChannel();
    consumer.on("error", error);
    // Pipelined: amqplib sends these without waiting for each answer.
    consumer.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } });
    consumer.prefetch(50);
    await consumer.consume(queue, (message) => {
      const seq = Number(message.content.toString());
      tally.deliveries += 1;
      if (message.fields.redelivered) tally.redelivered += 1;
      if (tally.received.has(seq)) {
        tally.duplicates += 1;
        if (message.fields.redelivered) tally.duplicatesRedelivered += 1;
      }
      tally.received.add(seq);
      tally.lastDelivery = Date.now();
      consumer.ack(message);
    }, { noAck: false });
    console.log("ready");
    const publisher = await connection.createConfirmChannel();
    publisher.on("error", error);
    const pending = [];
    while (!stopping && tally.errors.length === 0) {
      const seq = tally.sent++;
      pending.push(new Promise((resolve) => {
        publisher.publish("", queue, Buffer.from(String(seq)), { persistent: true }, (err) => {
          if (err) tally.nacked += 1; else tally.confirmed.add(seq);
          resolve();
        });
      }));
      await sleep(1000 / rate);
    }
    await Promise.race([Promise.all(pending), sleep(60000)]);
    const deadline = Date.now() + DRAIN_LIMIT_MS;
    while (Date.now() < deadline && tally.errors.length === 0) {
      const all = [...tally.confirmed].every((seq) => tally.received.has(seq));
      if (all && Date.now() - tally.lastDelivery > SETTLE_MS) break;
      await sleep(100);
    }
    await connection.close();
  } catch (e) {
    error(e);
  }
  const lost = [...tally.confirmed].filter((seq) => !tally.received.has(seq)).sort((a, b) => a - b);
  console.log(JSON.stringify({
    client: "amqplib (Node)", version: require("amqplib/package.json").version,
    sent: tally.sent, confirmed: tally.confirmed.size, nacked: tally.nacked,
    received: tally.received.size, deliveries: tally.deliveries, redelivered: tally.redelivered,
    duplicates: tally.duplicates, duplicates_redelivered: tally.duplicatesRedelivered,
    lost: lost.length, lost_first: lost.slice(0, 10), errors: tally.errors.slice(0, 20),
  }));
  process.exit(0);
}

main();

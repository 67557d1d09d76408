# Ruby's bunny the way its docs show it, with its automatic recovery left on (its default): a
# publisher channel in confirm mode and a consumer with manual acks and a prefetch, on one
# connection. The counted scenario is tally.py's; recoveries bunny started by itself are
# counted, as tether's failover must not cause one.
require "bunny"
require "json"
require "set"

args = ARGV.to_h { |a| a.sub(/\A--/, "").split("=", 2) }
port = Integer(args.fetch("port"))
queue_name = args.fetch("queue")
rate = Float(args.fetch("rate", "40"))
SETTLE = 2.0
DRAIN_LIMIT = 120.0

lock = Mutex.new
sent = 0
confirmed = Set.new
nacked = 0
received = Set.new
deliveries = redelivered = duplicates = duplicates_redelivered = recoveries = 0
errors = []
last_delivery = Time.now
stopping = false
Thread.new do
  $stdin.each_line { |line| break if line.strip == "stop" }
  stopping = true
end

begin
  connection = Bunny.new(host: "127.0.0.1", port: port, logger: Logger.new(File::NULL))
  connection.after_recovery_completed { lock.synchronize { recoveries += 1 } }
  connection.start
  consumer = connection.create_channel
  consumer.prefetch(50)
  queue = consumer.queue(queue_name, durable: true, arguments: { "x-queue-type" => "quorum" })
  queue.subscribe(manual_ack: true) do |info, _properties, body|
    seq = Integer(body)
    lock.synchronize do
      deliveries += 1
      redelivered += 1 if info.redelivered
      if received.include?(seq)
        duplicates += 1
        duplicates_redelivered += 1 if info.redelivered
      end
      received << seq
      last_delivery = Time.now
    end
    consumer.ack(info.delivery_tag)
  end
  puts "ready"
  $stdout.flush
  publisher = connection.create_channel
  publisher.confirm_select
  in_flight = {}
  until stopping || !errors.empty?
    in_flight[publisher.next_publish_seq_no] = sent
    publisher.default_exchange.publish(sent.to_s, routing_key: queue_name, persistent: true)
    sent += 1
    sleep(1.0 / rate)
  end
  publisher.wait_for_confirms
  nacks = publisher.nacked_set
  in_flight.each { |tag, seq| nacks.include?(tag) ? nacked += 1 : confirmed << seq }
  deadline = Time.now + DRAIN_LIMIT
  while Time.now < deadline && errors.empty?
    done = lock.synchronize { confirmed.subset?(received) && Time.now - last_delivery > SETTLE }
    break if done
    sleep 0.1
  end
  connection.close
rescue StandardError => e
  errors << "#{e.class}: #{e.message}"
end
lost = (confirmed - received).to_a.sort
puts JSON.generate(
  client: "bunny", version: Bunny::VERSION, sent: sent, confirmed: confirmed.size,
  nacked: nacked, received: received.size, deliveries: deliveries, redelivered: redelivered,
  duplicates: duplicates, duplicates_redelivered: duplicates_redelivered, lost: lost.size,
  lost_first: lost.first(10), recoveries: recoveries, errors: errors.first(20)
)

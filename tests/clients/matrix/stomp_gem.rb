# Ruby's stomp gem (Debian's ruby-stomp) the way its docs show it, with no reconnect logic
# (`reliable: false`, so a broken connection raises): a producer that asks a receipt for every
# SEND and a consumer with client-individual acks, each on its own STOMP 1.2 connection. The
# counted scenario is tally.py's; a receipt stands for a confirm.
require "json"
require "set"
require "stomp"

args = ARGV.to_h { |a| a.sub(/\A--/, "").split("=", 2) }
port = Integer(args.fetch("port"))
destination = args.fetch("destination")
rate = Float(args.fetch("rate", "40"))
SETTLE = 2.0
DRAIN_LIMIT = 120.0

lock = Mutex.new
sent = 0
confirmed = Set.new
received = Set.new
deliveries = redelivered = duplicates = duplicates_redelivered = 0
errors = []
last_delivery = Time.now
stopping = false
Thread.new do
  $stdin.each_line { |line| break if line.strip == "stop" }
  stopping = true
end

def connect(port)
  Stomp::Client.new(
    hosts: [{ login: "guest", passcode: "guest", host: "127.0.0.1", port: port }],
    reliable: false, connect_timeout: 10, logger: nil,
    connect_headers: { "accept-version" => "1.2", "host" => "/", "heart-beat" => "0,0" }
  )
end

begin
  # An ERROR frame is raised in this thread by the gem itself (its default error listener).
  consumer = connect(port)
  consumer.subscribe(destination, "id" => "1", "ack" => "client-individual",
                                  "prefetch-count" => "50", "activemq.prefetchSize" => "50") do |message|
    again = message.headers["redelivered"] == "true" || message.headers["redeliveries"].to_i > 0
    seq = Integer(message.body)
    lock.synchronize do
      deliveries += 1
      redelivered += 1 if again
      if received.include?(seq)
        duplicates += 1
        duplicates_redelivered += 1 if again
      end
      received << seq
      last_delivery = Time.now
    end
    consumer.ack(message)
  end
  producer = connect(port)
  puts "ready"
  $stdout.flush
  # A lambda, so that each receipt's block holds its own `seq` (an `until` body has no scope of
  # its own: a block there would see the loop's latest value).
  publish = lambda do |seq|
    producer.publish(destination, seq.to_s, "persistent" => "true") do |_receipt|
      lock.synchronize { confirmed << seq }
    end
  end
  until stopping || !errors.empty?
    publish.call(sent)
    sent += 1
    sleep(1.0 / rate)
  end
  deadline = Time.now + 60
  sleep 0.1 while lock.synchronize { confirmed.size < sent } && Time.now < deadline && errors.empty?
  deadline = Time.now + DRAIN_LIMIT
  while Time.now < deadline && errors.empty?
    break if lock.synchronize { confirmed.subset?(received) && Time.now - last_delivery > SETTLE }
    sleep 0.1
  end
  stopping = true
  producer.close
  consumer.close
rescue StandardError => e
  errors << "#{e.class}: #{e.message}"
end
lost = (confirmed - received).to_a.sort
puts JSON.generate(
  client: "stomp gem (Ruby)", version: Stomp::Version::STRING, sent: sent,
  confirmed: confirmed.size, nacked: 0, received: received.size, deliveries: deliveries,
  redelivered: redelivered, duplicates: duplicates, duplicates_redelivered: duplicates_redelivered,
  lost: lost.size, lost_first: lost.first(1000), errors: errors.first(20)
)

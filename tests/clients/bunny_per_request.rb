# The connect-per-request pattern with Ruby's bunny (Debian's ruby-bunny): for every message,
# connect, open a channel in confirm mode, publish, wait for the confirm, close. Bunny's own
# recovery is off, so that a broken connection is an error here, not hidden.
#
# Usage: bunny_per_request.rb PORT QUEUE COUNT [TAG]
# Prints one JSON line: sent, confirmed, errors.
require "bunny"
require "json"

port, queue, count, tag = ARGV[0].to_i, ARGV[1], ARGV[2].to_i, (ARGV[3] || "bunny")
summary = { "sent" => 0, "confirmed" => 0, "errors" => [] }
begin
  count.times do |i|
    connection = Bunny.new(host: "127.0.0.1", port: port, automatically_recover: false,
                           logger: Logger.new(nil))
    connection.start
    channel = connection.create_channel
    channel.confirm_select
    channel.default_exchange.publish("#{tag}-#{i}", routing_key: queue, persistent: true)
    summary["sent"] += 1
    summary["confirmed"] += 1 if channel.wait_for_confirms
    connection.close
  end
rescue StandardError => e
  summary["errors"] << "#{e.class}: #{e.message}"
end
puts JSON.generate(summary)

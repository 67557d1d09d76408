# A fire-and-forget producer with Ruby's stomp gem (Debian's ruby-stomp), no reconnect logic:
# `reliable: false`, so a broken connection raises. Sends COUNT messages at RATE per second
# without receipts (COUNT 0: until stdin closes), then disconnects. Prints "ready", then one JSON line: sent, errors.
require "json"
require "optparse"
require "stomp"

options = { count: 1000, rate: 0.0, tag: "rb" }
OptionParser.new do |o|
  o.on("--port PORT", Integer) { |v| options[:port] = v }
  o.on("--dest DEST") { |v| options[:dest] = v }
  o.on("--count N", Integer) { |v| options[:count] = v }
  o.on("--rate R", Float) { |v| options[:rate] = v }
  o.on("--tag TAG") { |v| options[:tag] = v }
  o.on("--persistent") { options[:persistent] = true }
end.parse!

summary = { sent: 0, errors: [] }
begin
  client = Stomp::Client.new(
    hosts: [{ login: "guest", passcode: "guest", host: "127.0.0.1", port: options[:port] }],
    reliable: false,
    connect_timeout: 10,
    connect_headers: { "accept-version" => "1.2", "host" => "/", "heart-beat" => "0,0" }
  )
  puts "ready"
  $stdout.flush
  stop = false
  Thread.new { $stdin.read; stop = true } if options[:count].zero?
  started = Process.clock_gettime(Process::CLOCK_MONOTONIC)
  i = -1
  while !stop && (options[:count].zero? || i + 1 < options[:count])
    i += 1
    if options[:rate] > 0
      lag = started + i / options[:rate] - Process.clock_gettime(Process::CLOCK_MONOTONIC)
      sleep(lag) if lag > 0
    end
    headers = options[:persistent] ? { "persistent" => "true" } : {}
    client.publish(options[:dest], "#{options[:tag]}-#{i}", headers)
    summary[:sent] += 1
  end
  client.close
rescue StandardError => e
  summary[:errors] << "#{e.class}: #{e.message}"
end
puts JSON.generate(summary)

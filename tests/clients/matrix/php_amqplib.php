<?php
// php-amqplib the way a PHP web app uses it: every publish is a request of its own, with a
// new connection, a confirm and a close; and a long-lived consumer with manual acks, the way
// its docs show it, with no reconnect logic. One process takes turns: a "request", then the
// consumer's channel waits briefly for deliveries. The counted scenario is tally.py's.
require_once '/usr/share/php/PhpAmqpLib/autoload.php';

use PhpAmqpLib\Connection\AMQPStreamConnection;
use PhpAmqpLib\Message\AMQPMessage;
use PhpAmqpLib\Exception\AMQPTimeoutException;

$options = getopt('', ['port:', 'queue:', 'rate::']);
$port = (int) $options['port'];
$queue = $options['queue'];
$rate = (float) ($options['rate'] ?? 20);
const SETTLE = 2.0;
const DRAIN_LIMIT = 120.0;

$sent = 0; $confirmed = []; $nacked = 0; $received = []; $deliveries = 0;
$redelivered = 0; $duplicates = 0; $duplicatesRedelivered = 0; $errors = [];
$lastDelivery = microtime(true);

function connect($port) {
    return new AMQPStreamConnection('127.0.0.1', $port, 'guest', 'guest', '/', false, 'AMQPLAIN',
        null, 'en_US', 10.0, 10.0, null, false, 0);
}

// One web request: connect, publish with a confirm, close.
function publish_request($port, $queue, $seq, &$confirmed, &$nacked) {
    $connection = connect($port);
    $channel = $connection->channel();
    $channel->confirm_select();
    $channel->set_ack_handler(function () use ($seq, &$confirmed) { $confirmed[$seq] = true; });
    $channel->set_nack_handler(function () use (&$nacked) { $nacked++; });
    $message = new AMQPMessage((string) $seq, ['delivery_mode' => AMQPMessage::DELIVERY_MODE_PERSISTENT]);
    $channel->basic_publish($message, '', $queue);
    $channel->wait_for_pending_acks(30.0);
    $channel->close();
    $connection->close();
}

stream_set_blocking(STDIN, false);
$stopping = false;
$consumer = null;
try {
    $consumer = connect($port);
    $channel = $consumer->channel();
    $channel->queue_declare($queue, false, true, false, false, false,
        new PhpAmqpLib\Wire\AMQPTable(['x-queue-type' => 'quorum']));
    $channel->basic_qos(0, 50, false);
    $channel->basic_consume($queue, '', false, false, false, false,
        function ($message) use (&$received, &$deliveries, &$redelivered, &$duplicates,
                                 &$duplicatesRedelivered, &$lastDelivery) {
            $seq = (int) $message->getBody();
            $again = (bool) $message->get('redelivered');
            $deliveries++;
            if ($again) $redelivered++;
            if (isset($received[$seq])) { $duplicates++; if ($again) $duplicatesRedelivered++; }
            $received[$seq] = true;
            $lastDelivery = microtime(true);
            $message->ack();
        });
    echo "ready\n";
    $next = microtime(true);
    while (!$stopping && !$errors) {
        $line = fgets(STDIN);
        if (($line !== false && trim($line) === 'stop') || feof(STDIN)) { $stopping = true; break; }
        if (microtime(true) >= $next) {
            publish_request($port, $queue, $sent++, $confirmed, $nacked);
            $next += 1.0 / $rate;
        }
        try { $channel->wait(null, true, 0.02); } catch (AMQPTimeoutException $e) {}
    }
    $deadline = microtime(true) + DRAIN_LIMIT;
    while (microtime(true) < $deadline) {
        $missing = array_diff_key($confirmed, $received);
        if (!$missing && microtime(true) - $lastDelivery > SETTLE) break;
        try { $channel->wait(null, false, 0.1); } catch (AMQPTimeoutException $e) {}
    }
    $channel->close();
    $consumer->close();
} catch (Throwable $e) {
    $errors[] = get_class($e) . ': ' . $e->getMessage();
}
$lost = array_keys(array_diff_key($confirmed, $received));
sort($lost);
echo json_encode([
    'client' => 'php-amqplib', 'version' => trim(shell_exec("dpkg-query -W -f='\${Version}' php-amqplib")),
    'sent' => $sent, 'confirmed' => count($confirmed), 'nacked' => $nacked,
    'received' => count($received), 'deliveries' => $deliveries, 'redelivered' => $redelivered,
    'duplicates' => $duplicates, 'duplicates_redelivered' => $duplicatesRedelivered,
    'lost' => count($lost), 'lost_first' => array_slice($lost, 0, 10),
    'errors' => array_slice($errors, 0, 20), 'connections' => $sent + 1,
]), "\n";

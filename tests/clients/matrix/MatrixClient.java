// The RabbitMQ Java client the way its docs show it, with its automatic recovery left on (its
// default): a publisher channel in confirm mode with a confirm listener, and a consumer with
// manual acks and a prefetch, on one connection. The counted scenario is tally.py's; it also
// counts the recoveries the client started by itself, which tether's failover must not cause.
//
// With --expect-recovery the client is meant to recover (tether itself hangs past the client's
// heart-beat timeout): a shutdown is then not an error, and, as the client's docs ask of an
// application, publishes that were unconfirmed or failed when the connection went are published
// again once it is recovered (a recovered channel numbers its confirms from 1 again).
import com.rabbitmq.client.*;
import java.io.BufferedReader;
import java.io.InputStreamReader;
import java.nio.charset.StandardCharsets;
import java.util.*;
import java.util.concurrent.*;
import java.util.concurrent.atomic.AtomicInteger;

public class MatrixClient {
    static final long SETTLE_MS = 2000, DRAIN_LIMIT_MS = 120000;
    static final Set<Long> confirmed = ConcurrentHashMap.newKeySet();
    static final Set<Long> received = ConcurrentHashMap.newKeySet();
    static final ConcurrentSkipListMap<Long, Long> inFlight = new ConcurrentSkipListMap<>();
    static final List<String> errors = Collections.synchronizedList(new ArrayList<>());
    static final AtomicInteger nacked = new AtomicInteger(), deliveries = new AtomicInteger(),
        redelivered = new AtomicInteger(), duplicates = new AtomicInteger(),
        duplicatesRedelivered = new AtomicInteger(), recoveries = new AtomicInteger(),
        shutdowns = new AtomicInteger();
    static volatile long lastDelivery = System.currentTimeMillis();
    static volatile boolean stopping = false;
    static boolean expectRecovery = false;
    // Publishes to send again after a recovery: unconfirmed when the connection went, or failed.
    static final List<Long> republish = Collections.synchronizedList(new ArrayList<>());
    static final Object publishing = new Object();
    static Channel publisher;

    public static void main(String[] argv) throws Exception {
        Map<String, String> args = new HashMap<>();
        for (String a : argv) {
            String[] kv = a.replaceFirst("^--", "").split("=", 2);
            args.put(kv[0], kv.length > 1 ? kv[1] : "");
        }
        int port = Integer.parseInt(args.get("port"));
        String queue = args.get("queue");
        queueName = queue;
        double rate = Double.parseDouble(args.getOrDefault("rate", "40"));
        expectRecovery = args.containsKey("expect-recovery");
        Thread stdin = new Thread(() -> {
            try (BufferedReader in = new BufferedReader(new InputStreamReader(System.in))) {
                String line;
                while ((line = in.readLine()) != null && !line.trim().equals("stop")) { }
            } catch (Exception e) { }
            stopping = true;
        });
        stdin.setDaemon(true);
        stdin.start();

        long sent = 0;
        Connection connection = null;
        try {
            ConnectionFactory factory = new ConnectionFactory();
            factory.setHost("127.0.0.1");
            factory.setPort(port);
            // Left as the client ships it: automatic recovery on, topology recovery on. Heart-
            // beats every 5 s rather than 60: the client computes a missed-heartbeat timeout
            // of its own, shorter than a node's 20 s hang, which tether must keep satisfied.
            factory.setRequestedHeartbeat(5);
            connection = factory.newConnection("tether-matrix");
            connection.addShutdownListener(cause -> {
                if (!stopping) {
                    shutdowns.incrementAndGet();
                    if (!expectRecovery) errors.add("connection shut down: " + cause.getMessage());
                }
            });
            ((Recoverable) connection).addRecoveryListener(new RecoveryListener() {
                public void handleRecovery(Recoverable r) {
                    recoveries.incrementAndGet();
                    if (expectRecovery) republishAfterRecovery();
                }
                public void handleRecoveryStarted(Recoverable r) { }
            });
            Channel consumer = connection.createChannel();
            consumer.queueDeclare(queue, true, false, false, Map.of("x-queue-type", "quorum"));
            consumer.basicQos(50);
            consumer.basicConsume(queue, false, new DefaultConsumer(consumer) {
                @Override
                public void handleDelivery(String tag, Envelope envelope, AMQP.BasicProperties p,
                                           byte[] body) throws java.io.IOException {
                    long seq = Long.parseLong(new String(body, StandardCharsets.UTF_8));
                    boolean again = envelope.isRedeliver();
                    deliveries.incrementAndGet();
                    if (again) redelivered.incrementAndGet();
                    if (!received.add(seq)) {
                        duplicates.incrementAndGet();
                        if (again) duplicatesRedelivered.incrementAndGet();
                    }
                    lastDelivery = System.currentTimeMillis();
                    getChannel().basicAck(envelope.getDeliveryTag(), false);
                }
            });
            System.out.println("ready");
            System.out.flush();
            publisher = connection.createChannel();
            publisher.confirmSelect();
            publisher.addConfirmListener(new ConfirmListener() {
                public void handleAck(long tag, boolean multiple) { settle(tag, multiple, true); }
                public void handleNack(long tag, boolean multiple) { settle(tag, multiple, false); }
            });
            while (!stopping && errors.isEmpty()) {
                try {
                    publish(queue, sent);
                } catch (Exception e) {
                    if (!expectRecovery) throw e;
                    republish.add(sent);
                }
                sent++;
                Thread.sleep((long) (1000 / rate));
            }
            if (expectRecovery) {
                // Until every publish is confirmed, a recovery may still be under way.
                long until = System.currentTimeMillis() + 60000;
                while (confirmed.size() + nacked.get() < sent && System.currentTimeMillis() < until) {
                    Thread.sleep(100);
                }
            }
            publisher.waitForConfirms(60000);
            long deadline = System.currentTimeMillis() + DRAIN_LIMIT_MS;
            while (System.currentTimeMillis() < deadline && errors.isEmpty()) {
                if (received.containsAll(confirmed)
                        && System.currentTimeMillis() - lastDelivery > SETTLE_MS) break;
                Thread.sleep(100);
            }
            stopping = true;
            connection.close();
        } catch (Exception e) {
            errors.add(e.getClass().getSimpleName() + ": " + e.getMessage());
        }
        List<Long> lost = new ArrayList<>();
        for (Long seq : confirmed) if (!received.contains(seq)) lost.add(seq);
        Collections.sort(lost);
        StringBuilder json = new StringBuilder("{");
        json.append("\"client\":\"RabbitMQ Java client\",\"version\":\"")
            .append(ConnectionFactory.class.getPackage().getImplementationVersion()).append("\"");
        json.append(",\"sent\":").append(sent).append(",\"confirmed\":").append(confirmed.size());
        json.append(",\"nacked\":").append(nacked.get()).append(",\"received\":").append(received.size());
        json.append(",\"deliveries\":").append(deliveries.get()).append(",\"redelivered\":").append(redelivered.get());
        json.append(",\"duplicates\":").append(duplicates.get());
        json.append(",\"duplicates_redelivered\":").append(duplicatesRedelivered.get());
        json.append(",\"lost\":").append(lost.size()).append(",\"lost_first\":")
            .append(lost.subList(0, Math.min(10, lost.size())));
        json.append(",\"recoveries\":").append(recoveries.get());
        json.append(",\"shutdowns\":").append(shutdowns.get());
        json.append(",\"errors\":[");
        synchronized (errors) {
            for (int i = 0; i < Math.min(20, errors.size()); i++) {
                if (i > 0) json.append(",");
                json.append("\"").append(errors.get(i).replace("\\", "\\\\").replace("\"", "\\\"")).append("\"");
            }
        }
        json.append("]}");
        System.out.println(json);
        System.exit(0);
    }

    static void publish(String queue, long seq) throws java.io.IOException {
        synchronized (publishing) {
            inFlight.put(publisher.getNextPublishSeqNo(), seq);
            publisher.basicPublish("", queue, MessageProperties.PERSISTENT_BASIC,
                Long.toString(seq).getBytes(StandardCharsets.UTF_8));
        }
    }

    static String queueName;

    static void republishAfterRecovery() {
        List<Long> again;
        synchronized (publishing) {
            again = new ArrayList<>(inFlight.values());
            inFlight.clear();
            synchronized (republish) {
                again.addAll(republish);
                republish.clear();
            }
        }
        for (Long seq : again) {
            try {
                publish(queueName, seq);
            } catch (Exception e) {
                errors.add("publishing again after recovery: " + e);
            }
        }
    }

    static void settle(long tag, boolean multiple, boolean ack) {
        Map<Long, Long> done = multiple ? inFlight.headMap(tag, true) : new HashMap<>();
        if (!multiple && inFlight.containsKey(tag)) done.put(tag, inFlight.get(tag));
        for (Long seq : new ArrayList<>(done.values())) {
            if (ack) confirmed.add(seq); else nacked.incrementAndGet();
        }
        if (multiple) inFlight.headMap(tag, true).clear(); else inFlight.remove(tag);
    }
}

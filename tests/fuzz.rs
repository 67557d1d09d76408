//! Fuzzing on stable Rust: every entry point of `tether::fuzz` is fed a seed corpus and then
//! mutations of it (bit flips, random bytes, truncations, splices, duplicated runs, huge length
//! fields, protocol tokens) for a while, and must never panic or hang. No coverage feedback:
//! a plain mutation loop, cheap enough for every CI run.
//!
//! - `tests/fuzz/corpus/TARGET/` holds inputs that are always run first: every input that ever
//!   crashed a target goes there, as a regression test.
//! - A crash writes its input to `tests/fuzz/crashes/TARGET/` and fails the trial with the
//!   file's name; a hang (one input running for 10 s) writes it there and exits the process.
//! - `TETHER_FUZZ_SECONDS` (default 10) is the time per target, `TETHER_FUZZ_SEED` the seed to
//!   start from (printed by every run). `scripts/fuzz TARGET SECONDS` runs one target longer.

use libtest_mimic::{Arguments, Failed, Trial};
use std::cell::RefCell;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// One input running this long is a hang: far beyond any decode of the few KiB inputs here,
/// even on a loaded machine.
const HANG: Duration = Duration::from_secs(10);
/// Mutated inputs kept to mutate further (a random walk away from the seeds).
const POOL: usize = 2_000;
const MAX_INPUT: usize = 256 * 1024;

fn main() {
    let args = Arguments::from_args();
    let trials = tether::fuzz::TARGETS
        .iter()
        .map(|&(name, target)| Trial::test(name, move || fuzz(name, target)))
        .collect();
    std::panic::set_hook(Box::new(|info| {
        LAST_PANIC.with(|last| *last.borrow_mut() = Some(info.to_string()));
    }));
    libtest_mimic::run(&args, trials).exit();
}

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

fn fuzz(name: &'static str, target: fn(&[u8])) -> Result<(), Failed> {
    let seconds: u64 = env_number("TETHER_FUZZ_SECONDS").unwrap_or(10);
    let seed = env_number("TETHER_FUZZ_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let mut random = Random(seed | 1);
    let regressions = corpus(name);
    let mut pool: Vec<Vec<u8>> = seeds(name);
    pool.extend(regressions.iter().map(|(_, bytes)| bytes.clone()));
    let watch = Watchdog::start(name);
    for (file, input) in &regressions {
        if let Err(message) = watch.run(target, input) {
            return Err(format!("{name}: regression input {file} panics: {message}").into());
        }
    }
    let seeds = pool.len();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut runs = 0u64;
    while Instant::now() < deadline {
        let parent = &pool[random.below(pool.len())];
        let other = &pool[random.below(pool.len())];
        let input = mutate(parent, other, &mut random, text_target(name));
        runs += 1;
        if let Err(message) = watch.run(target, &input) {
            let file = save_crash(name, &input);
            return Err(format!(
                "{name} panics on {} ({} bytes; seed {seed}): {message}\n\
                 move it to tests/fuzz/corpus/{name}/ once fixed, as a regression test",
                file.display(),
                input.len()
            )
            .into());
        }
        if random.below(8) == 0 {
            if pool.len() < POOL + seeds {
                pool.push(input);
            } else {
                let slot = seeds + random.below(POOL);
                pool[slot] = input;
            }
        }
    }
    watch.stop();
    eprintln!(
        "{name}: {runs} inputs in {seconds} s (seed {seed}, {seeds} seeds, {} regressions), no panic",
        regressions.len()
    );
    Ok(())
}

fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.parse().ok()
}

/// Targets whose input is text: their mutations insert tokens too.
fn text_target(name: &str) -> bool {
    matches!(
        name,
        "stomp" | "config" | "management_json" | "http_response" | "broker_list"
    )
}

/// Runs inputs and catches their panics; a thread beside it exits the process on a hang.
struct Watchdog {
    current: Arc<Mutex<(Option<Instant>, Vec<u8>)>>,
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn start(name: &'static str) -> Watchdog {
        let current: Arc<Mutex<(Option<Instant>, Vec<u8>)>> = Arc::default();
        let done = Arc::new(AtomicBool::new(false));
        let (watched, finished) = (current.clone(), done.clone());
        std::thread::spawn(move || {
            while !finished.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(500));
                let Ok(current) = watched.lock() else { return };
                if let (Some(started), input) = &*current
                    && started.elapsed() > HANG
                {
                    let file = save_crash(name, input);
                    eprintln!("{name} hangs on {} ({} bytes)", file.display(), input.len());
                    std::process::exit(101);
                }
            }
        });
        Watchdog { current, done }
    }

    fn run(&self, target: fn(&[u8]), input: &[u8]) -> Result<(), String> {
        if let Ok(mut current) = self.current.lock() {
            *current = (Some(Instant::now()), input.to_vec());
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
        if let Ok(mut current) = self.current.lock() {
            current.0 = None;
        }
        outcome.map_err(|_| {
            LAST_PANIC
                .with(|last| last.borrow_mut().take())
                .unwrap_or_else(|| "a panic".into())
        })
    }

    fn stop(self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

fn save_crash(name: &str, input: &[u8]) -> PathBuf {
    let dir = PathBuf::from(REPO).join("tests/fuzz/crashes").join(name);
    let _ = std::fs::create_dir_all(&dir);
    let file = dir.join(format!("crash-{:016x}", fnv(input)));
    let _ = std::fs::write(&file, input);
    file
}

fn fnv(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x100000001b3)
    })
}

/// The regression inputs of a target: (file name, bytes).
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = PathBuf::from(REPO).join("tests/fuzz/corpus").join(name);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut inputs: Vec<(String, Vec<u8>)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let bytes = std::fs::read(entry.path()).ok()?;
            Some((entry.file_name().to_string_lossy().into_owned(), bytes))
        })
        .collect();
    inputs.sort();
    inputs
}

/// xorshift64*: reproducible from its seed, no dependency.
struct Random(u64);

impl Random {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545F4914F6CDD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Numbers that break length and count fields.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7f,
    0xff,
    0xffff,
    0x7fff_ffff,
    0x8000_0000,
    0xffff_ffff,
    0x7fff_ffff_ffff_ffff,
    u64::MAX,
];

/// Pieces of the text formats the targets read.
const TOKENS: [&[u8]; 22] = [
    b"\n",
    b"\r\n",
    b"\0",
    b":",
    b"\\",
    b"\\c",
    b"content-length:",
    b"content-length:99999999999\n",
    b"receipt:",
    b"destination:/queue/x\n",
    b"\n\n",
    b"{",
    b"}",
    b"[",
    b"]",
    b"\"",
    b"\"x\":",
    b"Transfer-Encoding: chunked\r\n",
    b"Content-Length: 18446744073709551615\r\n",
    b"[[listeners]]\n",
    b" = ",
    b"tcp://",
];

/// One to four mutations of `parent` (`other` for splices).
fn mutate(parent: &[u8], other: &[u8], random: &mut Random, text: bool) -> Vec<u8> {
    let mut input = parent.to_vec();
    for _ in 0..1 + random.below(4) {
        let len = input.len();
        match random.below(if text { 10 } else { 9 }) {
            0 if len > 0 => {
                let at = random.below(len);
                input[at] ^= 1 << random.below(8);
            }
            1 if len > 0 => {
                let at = random.below(len);
                input[at] = random.next() as u8;
            }
            2 => {
                let at = random.below(len + 1);
                let count = 1 + random.below(16);
                let bytes: Vec<u8> = (0..count).map(|_| random.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            3 if len > 0 => {
                let from = random.below(len);
                let to = (from + 1 + random.below(64)).min(len);
                input.drain(from..to);
            }
            4 if len > 0 => input.truncate(random.below(len)),
            5 if !other.is_empty() => {
                let cut = random.below(len + 1);
                let from = random.below(other.len());
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            6 if len > 0 => {
                let from = random.below(len);
                let to = (from + 1 + random.below(256)).min(len);
                let run = input[from..to].to_vec();
                for _ in 0..1 + random.below(8) {
                    input.splice(from..from, run.iter().copied());
                }
            }
            7 if len > 0 => {
                let value = INTERESTING[random.below(INTERESTING.len())];
                let width = [1, 2, 4, 8][random.below(4)];
                let at = random.below(len);
                let bytes = value.to_be_bytes();
                for (i, byte) in bytes[8 - width..].iter().enumerate() {
                    if let Some(slot) = input.get_mut(at + i) {
                        *slot = *byte;
                    }
                }
            }
            8 if !other.is_empty() => {
                let at = random.below(len + 1);
                let from = random.below(other.len());
                let to = (from + 1 + random.below(128)).min(other.len());
                input.splice(at..at, other[from..to].iter().copied());
            }
            9 => {
                let at = random.below(len + 1);
                let token = TOKENS[random.below(TOKENS.len())];
                input.splice(at..at, token.iter().copied());
            }
            _ => {}
        }
    }
    input.truncate(MAX_INPUT);
    input
}

/// Inputs a target reads in normal use, made here from tether's own encoders and files.
fn seeds(name: &str) -> Vec<Vec<u8>> {
    let mut seeds = match name {
        "amqp" => amqp_seeds(),
        "stomp" => stomp_seeds(),
        "openwire" => openwire_seeds(),
        "config" => files(
            &[
                "conf",
                "conf/bench",
                "tests/config/valid",
                "tests/config/invalid",
            ],
            "toml",
        ),
        "management_json" => files(&["src/cluster/discovery/rabbitmq/testdata"], "json"),
        "http_response" => vec![
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello".to_vec(),
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                .to_vec(),
            b"HTTP/1.0 404 Not Found\r\n\r\n{\"error\":\"not_found\"}".to_vec(),
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n".to_vec(),
        ],
        "broker_list" => vec![
            b"tcp://127.0.0.1:61616,tcp://127.0.0.1:61617".to_vec(),
            b"ssl://b1:61617, nio://b2:61616?x=1,failover:(tcp://c:1)".to_vec(),
        ],
        _ => Vec::new(),
    };
    if seeds.is_empty() {
        seeds.push(Vec::new());
    }
    seeds
}

fn files(dirs: &[&str], extension: &str) -> Vec<Vec<u8>> {
    let mut found = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(PathBuf::from(REPO).join(dir)) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == extension)
                && let Ok(bytes) = std::fs::read(&path)
            {
                found.push(bytes);
            }
        }
    }
    found
}

fn amqp_seeds() -> Vec<Vec<u8>> {
    use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue};
    use amq_protocol::types::{AMQPValue, FieldTable};
    use tether::proto::amqp::{Frame, encode_header, method};
    let mut table = FieldTable::default();
    table.insert(
        "x-queue-type".into(),
        AMQPValue::LongString("quorum".into()),
    );
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::FieldTable(table.clone()));
    let methods = [
        AMQPClass::Connection(connection::AMQPMethod::StartOk(connection::StartOk {
            client_properties: nested.clone(),
            mechanism: "PLAIN".into(),
            response: "\0guest\0guest".into(),
            locale: "en_US".into(),
        })),
        AMQPClass::Connection(connection::AMQPMethod::TuneOk(connection::TuneOk {
            channel_max: 2047,
            frame_max: 131072,
            heartbeat: 60,
        })),
        AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {})),
        AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        })),
        AMQPClass::Queue(queue::AMQPMethod::Declare(queue::Declare {
            queue: "q".into(),
            durable: true,
            arguments: table,
            ..Default::default()
        })),
        AMQPClass::Exchange(exchange::AMQPMethod::Declare(exchange::Declare {
            exchange: "x".into(),
            kind: "fanout".into(),
            arguments: nested,
            ..Default::default()
        })),
        AMQPClass::Basic(basic::AMQPMethod::Consume(basic::Consume {
            queue: "q".into(),
            consumer_tag: "c".into(),
            ..Default::default()
        })),
        AMQPClass::Basic(basic::AMQPMethod::Publish(basic::Publish {
            exchange: "".into(),
            routing_key: "q".into(),
            ..Default::default()
        })),
        AMQPClass::Basic(basic::AMQPMethod::Deliver(basic::Deliver {
            consumer_tag: "c".into(),
            delivery_tag: 7,
            redelivered: true,
            exchange: "".into(),
            routing_key: "q".into(),
        })),
        AMQPClass::Basic(basic::AMQPMethod::Ack(basic::Ack {
            delivery_tag: 7,
            multiple: true,
        })),
    ];
    let properties = amq_protocol::protocol::BasicProperties::default()
        .with_reply_to("amq.rabbitmq.reply-to".into())
        .with_delivery_mode(2);
    let mut frames: Vec<Frame> = methods
        .iter()
        .map(|m| Frame::method(1, method::encode(m)))
        .collect();
    frames.push(Frame::header(1, encode_header(60, 5, &properties)));
    frames.push(Frame::body(1, bytes::Bytes::from_static(b"hello")));
    frames.push(Frame::heartbeat());
    let wire = |frame: &Frame| {
        let mut bytes = frame.wire_header().to_vec();
        bytes.extend_from_slice(&frame.payload);
        bytes.push(0xce);
        bytes
    };
    let mut seeds: Vec<Vec<u8>> = frames.iter().map(wire).collect();
    seeds.push(frames.iter().flat_map(wire).collect());
    seeds
}

fn stomp_seeds() -> Vec<Vec<u8>> {
    let frames: [&[u8]; 6] = [
        b"CONNECT\naccept-version:1.0,1.1,1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:1000,1000\n\n\0",
        b"SEND\ndestination:/queue/a\nreceipt:1\ncontent-length:5\n\nhello\0",
        b"SUBSCRIBE\nid:1\ndestination:/queue/a\nack:client-individual\n\n\0",
        b"MESSAGE\nsubscription:1\nmessage-id:m1\nack:a1\ndestination:/queue/a\n\nbody\0\n\n",
        b"BEGIN\ntransaction:t\n\n\0ACK\nid:a1\ntransaction:t\n\n\0COMMIT\ntransaction:t\nreceipt:r\n\n\0",
        b"SEND\ndestination:/queue/a\nescaped\\c\\n\\\\:v\\r\n\nbody without length\0",
    ];
    // The first byte picks the version: one seed per version and frame.
    (0..3u8)
        .flat_map(|version| {
            frames.iter().map(move |frame| {
                let mut seed = vec![version];
                seed.extend_from_slice(frame);
                seed
            })
        })
        .collect()
}

fn openwire_seeds() -> Vec<Vec<u8>> {
    use tether::proto::openwire::{Command, ConnectionControl, WireFormatInfo};
    let mut seeds = Vec::new();
    let commands = [
        Command::WireFormatInfo(WireFormatInfo::tether(64 * 1024, Duration::from_secs(30))),
        Command::ConnectionControl(ConnectionControl {
            connected_brokers: Some("tcp://127.0.0.1:61616,tcp://127.0.0.1:61617".into()),
            rebalance_connection: true,
            token: Some(vec![1, 2]),
            ..ConnectionControl::default()
        }),
    ];
    for command in &commands {
        let mut bytes = bytes::BytesMut::new();
        if command.encode(&mut bytes).is_ok() {
            seeds.push(bytes.to_vec());
        }
    }
    seeds
}

use super::*;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

fn load(rel: &str) -> Result<Config, ConfigError> {
    Config::load(&Path::new(REPO).join(rel))
}

#[test]
fn the_shipped_config_loads_as_written() {
    let config = load("conf/tether.toml").expect("conf/tether.toml must be valid");
    assert_eq!(config.clusters[0].nodes.len(), 3);
    assert_eq!(
        config.clusters[0].health.interval,
        Duration::from_millis(500)
    );
    assert_eq!(config.listeners[0].endpoint(), "amqp");
    assert_eq!(
        config.admin.unwrap().listen,
        "127.0.0.1:9464".parse().unwrap()
    );
}

#[test]
fn every_valid_fixture_and_shipped_config_loads() {
    let dirs = ["tests/config/valid", "conf"];
    let files = dirs
        .iter()
        .flat_map(|dir| std::fs::read_dir(Path::new(REPO).join(dir)).unwrap())
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "toml")
        });
    for entry in files {
        let path = entry.unwrap().path();
        if let Err(e) = Config::load(&path) {
            panic!("{} should be valid: {e}", path.display());
        }
    }
}

fn rejection(rel: &str) -> String {
    match load(rel) {
        Ok(_) => panic!("{rel} should be rejected"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn unknown_key_is_named_with_its_path() {
    let message = rejection("tests/config/invalid/unknown-key.toml");
    assert!(message.starts_with("clusters[0].health"), "{message}");
    assert!(message.contains("unknown field `fal`"), "{message}");
}

#[test]
fn bad_duration_says_what_was_expected() {
    let message = rejection("tests/config/invalid/bad-duration.toml");
    assert!(
        message.starts_with("clusters[0].connect_timeout"),
        "{message}"
    );
    assert!(message.contains("expected a duration"), "{message}");
}

#[test]
fn unknown_cluster_lists_the_defined_ones() {
    let message = rejection("tests/config/invalid/unknown-cluster.toml");
    assert!(message.starts_with("listeners[0].cluster"), "{message}");
    assert!(
        message.contains("\"lan\"") && message.contains("lab"),
        "{message}"
    );
}

#[test]
fn endpoint_address_without_port_is_rejected() {
    let message = rejection("tests/config/invalid/bad-endpoint-address.toml");
    assert!(
        message.starts_with("clusters[0].nodes[0].amqp"),
        "{message}"
    );
}

#[test]
fn a_discovery_url_without_its_scheme_is_rejected() {
    let message = rejection("tests/config/invalid/bad-discovery-url.toml");
    assert!(
        message.starts_with("clusters[0].discovery.rabbitmq.url"),
        "{message}"
    );
    assert!(message.contains("http://"), "{message}");
}

#[test]
fn locality_without_rabbitmq_discovery_is_rejected() {
    let message = rejection("tests/config/invalid/locality-without-discovery.toml");
    assert!(message.starts_with("clusters[0].locality"), "{message}");
    assert!(message.contains("discovery.rabbitmq"), "{message}");
}

#[test]
fn discovery_settings_are_read_and_the_password_never_printed() {
    let config = Config::load(Path::new("tests/config/valid/discovery.toml")).unwrap();
    let rabbitmq = config.clusters[0].discovery.rabbitmq.clone().unwrap();
    assert_eq!(rabbitmq.interval, Duration::from_secs(2));
    assert_eq!(rabbitmq.password.expose(), "guest");
    let secret = with_cluster(
        r#"name = "lab"
nodes = [{ name = "r1", amqp = "127.0.0.1:5681" }]
discovery.rabbitmq = { url = "http://127.0.0.1:15681", password = "hunter2" }"#,
    )
    .unwrap();
    let printed = format!("{secret:?}");
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(printed.contains("MASKED"), "{printed}");
    let activemq = config.clusters[1].discovery.activemq.clone().unwrap();
    assert_eq!(activemq.endpoints.len(), 2);
    assert!(config.clusters[1].rebalance);
    assert_eq!(
        config.clusters[1].rebalance_pace,
        Duration::from_millis(500)
    );
}

const MINIMAL_LISTENER: &str = r#"
[[listeners]]
name = "l"
bind = "127.0.0.1:5700"
protocol = "tcp"
cluster = "lab"
endpoint = "amqp"
"#;

fn with_cluster(cluster: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!("[[clusters]]\n{cluster}\n{MINIMAL_LISTENER}"))
}

#[test]
fn cluster_rules() {
    let ok = r#"name = "lab"
nodes = [{ name = "r1", amqp = "127.0.0.1:5681" }]"#;
    with_cluster(ok).unwrap();

    let cases = [
        (r#"name = "lab""#, "clusters[0]: has no nodes"),
        (
            r#"name = "lab"
hosts = ["a"]"#,
            "clusters[0].ports",
        ),
        (
            r#"name = "lab"
hosts = ["a:5672"]
ports = { amqp = 5672 }"#,
            "clusters[0].hosts[0]",
        ),
        (
            r#"name = "lab"
dns_srv = "amqp.example"
ports = { amqp = 5672 }"#,
            "clusters[0].dns_srv",
        ),
        (
            r#"name = "lab"
nodes = [{ name = "r1", amqp = "127.0.0.1:1" }, { name = "r1", amqp = "127.0.0.1:2" }]"#,
            "clusters[0].nodes[1].name",
        ),
        (
            r#"name = "lab"
balance = "fastest"
nodes = [{ name = "r1", amqp = "127.0.0.1:5681" }]"#,
            "clusters[0].balance",
        ),
        (
            r#"name = "lab"
health = { rise = 0 }
nodes = [{ name = "r1", amqp = "127.0.0.1:5681" }]"#,
            "clusters[0].health.rise",
        ),
        (
            r#"name = "lab"
nodes = [{ name = "r1", stomp = "127.0.0.1:5681" }]"#,
            "listeners[0].endpoint",
        ),
    ];
    for (cluster, expected) in cases {
        let message = with_cluster(cluster)
            .err()
            .unwrap_or_else(|| panic!("should be rejected:\n{cluster}"))
            .to_string();
        assert!(message.starts_with(expected), "{expected} not in {message}");
    }
}

#[test]
fn session_keys_belong_to_protocol_listeners() {
    let tcp = r#"
[[clusters]]
name = "lab"
nodes = [{ name = "r1", amqp = "127.0.0.1:5681" }]
[[listeners]]
name = "l"
bind = "127.0.0.1:5700"
protocol = "tcp"
cluster = "lab"
endpoint = "amqp"
failover_timeout = "10s"
"#;
    let message = Config::parse(tcp).unwrap_err().to_string();
    assert!(
        message.starts_with("listeners[0].failover_timeout"),
        "{message}"
    );

    let stomp = r#"
[[clusters]]
name = "lab"
nodes = [{ name = "r1", stomp = "127.0.0.1:61681" }]
[[listeners]]
name = "l"
bind = "127.0.0.1:61613"
protocol = "stomp"
cluster = "lab"
failover_timeout = "10s"
max_unconfirmed = 0
"#;
    let message = Config::parse(stomp).unwrap_err().to_string();
    assert!(
        message.starts_with("listeners[0].max_unconfirmed"),
        "{message}"
    );
    let ok = Config::parse(&stomp.replace("max_unconfirmed = 0", "max_unconfirmed = 5")).unwrap();
    let session = ok.listeners[0].session();
    assert_eq!(session.failover_timeout, Duration::from_secs(10));
    assert_eq!(session.max_unconfirmed, 5);
    assert_eq!(
        session.upstream_heartbeat,
        Duration::from_secs(1),
        "defaults fill the rest"
    );
}

#[test]
fn srv_names_give_their_service() {
    assert_eq!(srv_service("_amqp._tcp.example"), Some("amqp"));
    assert_eq!(srv_service("_stomp._tcp.rabbit.internal."), Some("stomp"));
    assert_eq!(srv_service("amqp._tcp.example"), None);
    assert_eq!(srv_service("_amqp._tcp"), None);
}

#[test]
fn each_protocol_takes_its_own_keys_and_errors_name_the_key() {
    let listener = |protocol: &str, key_line: &str| {
        format!(
            r#"
[[clusters]]
name = "lab"
nodes = [{{ name = "r1", amqp = "127.0.0.1:5681", stomp = "127.0.0.1:61681" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:61613"
protocol = "{protocol}"
cluster = "lab"
{key_line}
"#
        )
    };
    let rejected = |text: String| Config::parse(&text).unwrap_err().to_string();

    let message = rejected(listener("stomp", "frame_max = 8192"));
    assert_eq!(
        message,
        "listeners[0].frame_max: does not apply to stomp listeners"
    );
    let message = rejected(listener("amqp", "max_headers = 10"));
    assert!(
        message.starts_with("listeners[0].max_headers: does not apply to amqp listeners"),
        "{message}"
    );
    let message = rejected(listener("amqp", r#"client_heartbeat = "often""#));
    assert!(
        message.starts_with("listeners[0].client_heartbeat")
            && message.contains("expected a duration"),
        "{message}"
    );
    let message = rejected(listener("amqp", "fram_max = 8192"));
    assert!(message.starts_with("listeners[0].fram_max"), "{message}");
    let message = rejected(
        listener("stomp", r#"bind = "nowhere""#).replace("bind = \"127.0.0.1:61613\"\n", ""),
    );
    assert!(message.starts_with("listeners[0].bind"), "{message}");

    let config = Config::parse(&listener("amqp", "frame_max = 8192\nmax_unacked = 7")).unwrap();
    let ListenerKind::Amqp(keys) = &config.listeners[0].kind else {
        panic!("an amqp listener: {:?}", config.listeners[0].kind);
    };
    assert_eq!(keys.frame_max, Some(8192));
    let session = config.listeners[0].session();
    assert_eq!((session.frame_max, session.max_unacked), (8192, 7));
    assert_eq!(
        session.max_frame_size,
        16 * 1024 * 1024,
        "STOMP's defaults, unused"
    );
}

/// A config around one cluster's extra keys and one listener's.
fn with_tls(cluster_keys: &str, listener_keys: &str) -> Result<Config, ConfigError> {
    Config::parse(&format!(
        "[[clusters]]\nname = \"c\"\nnodes = [{{ name = \"n\", amqp = \"127.0.0.1:5671\" }}]\n{cluster_keys}\n\
         [[listeners]]\nname = \"l\"\nbind = \"127.0.0.1:5672\"\nprotocol = \"amqp\"\ncluster = \"c\"\n{listener_keys}\n"
    ))
}

#[test]
fn tls_keys_are_checked_and_named() {
    let config = with_tls(
        r#"tls = { ca_file = "/etc/ca.pem", server_name = "rabbit.internal" }"#,
        r#"tls = { cert_file = "/etc/l.pem", key_file = "/etc/l.key", client_ca_file = "/etc/ca.pem" }"#,
    )
    .unwrap();
    let tls = config.clusters[0].tls.as_ref().unwrap();
    assert_eq!(tls.server_name.as_deref(), Some("rabbit.internal"));
    assert!(!tls.insecure);
    assert!(
        config.listeners[0]
            .tls
            .as_ref()
            .unwrap()
            .client_ca_file
            .is_some()
    );

    for (cluster, listener, key, words) in [
        (
            r#"tls = { cert_file = "/c.pem" }"#,
            "",
            "clusters[0].tls.key_file",
            "is needed with cert_file",
        ),
        (
            r#"tls = { key_file = "/c.key" }"#,
            "",
            "clusters[0].tls.cert_file",
            "is needed with key_file",
        ),
        (
            r#"tls = { insecure = true, ca_file = "/ca.pem" }"#,
            "",
            "clusters[0].tls.insecure",
            "verifies nothing",
        ),
        (
            r#"tls = { server_name = "" }"#,
            "",
            "clusters[0].tls.server_name",
            "must not be empty",
        ),
        (
            r#"tls = { ca = "/ca.pem" }"#,
            "",
            "clusters[0].tls",
            "unknown field `ca`",
        ),
        (
            "",
            r#"tls = { cert_file = "/l.pem" }"#,
            "listeners[0].tls",
            "key_file",
        ),
        (
            "tls = {}\ndiscovery.activemq = { url = \"tcp://10.0.0.5:61616\" }",
            "",
            "clusters[0].discovery.activemq.url",
            "ssl://",
        ),
    ] {
        let message = match with_tls(cluster, listener) {
            Ok(_) => panic!("{cluster} {listener} should be rejected"),
            Err(e) => e.to_string(),
        };
        assert!(message.starts_with(key), "{message}");
        assert!(message.contains(words), "{message}");
    }
    // Discovery over TLS takes the TLS URLs.
    with_tls(
        "tls = {}\ndiscovery.activemq = { url = \"ssl://10.0.0.5:61617\" }\ndiscovery.rabbitmq = { url = \"https://10.0.0.5:15671\" }",
        "",
    )
    .unwrap();
}

#[test]
fn pool_keys_have_defaults_a_switch_and_named_errors() {
    let amqp = |pool: &str| {
        Config::parse(&format!(
            r#"
[[clusters]]
name = "lab"
nodes = [{{ name = "r1", amqp = "127.0.0.1:5681" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:5672"
protocol = "amqp"
cluster = "lab"
{pool}
"#
        ))
    };
    let defaults = amqp("").unwrap().listeners[0].session().pool;
    assert_eq!(defaults.max_idle, 16, "on by default");
    assert_eq!(defaults.idle_timeout, Duration::from_secs(300));
    assert_eq!(defaults.max_lifetime, Duration::from_secs(1800));
    let off = amqp("pool = { max_idle = 0 }").unwrap().listeners[0]
        .session()
        .pool;
    assert_eq!(off.max_idle, 0);
    assert_eq!(
        off.idle_timeout,
        Duration::from_secs(300),
        "the rest keep their defaults"
    );
    let message = amqp(r#"pool = { idle_timeout = "10ms" }"#)
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("listeners[0].pool.idle_timeout"),
        "{message}"
    );
    let message = amqp("pool = { max_idel = 3 }").unwrap_err().to_string();
    assert!(message.contains("listeners[0].pool"), "{message}");
    assert!(message.contains("max_idel"), "{message}");

    let tcp = amqp("pool = { max_idle = 3 }")
        .map(|_| ())
        .map_err(|e| e.to_string());
    assert!(tcp.is_ok(), "an amqp listener takes it: {tcp:?}");
}

#[test]
fn multiplexing_is_off_by_default_and_for_amqp_listeners_only() {
    let listener = |protocol: &str, pool: &str| {
        Config::parse(&format!(
            r#"
[[clusters]]
name = "lab"
nodes = [{{ name = "r1", amqp = "127.0.0.1:5681", stomp = "127.0.0.1:61681" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:5672"
protocol = "{protocol}"
cluster = "lab"
{pool}
"#
        ))
    };
    let defaults = listener("amqp", "").unwrap().listeners[0].session().pool;
    assert!(!defaults.multiplex);
    assert_eq!(defaults.channels_per_connection, 256);
    let on = listener(
        "amqp",
        "pool = { multiplex = true, channels_per_connection = 64 }",
    )
    .unwrap()
    .listeners[0]
        .session()
        .pool;
    assert!(on.multiplex);
    assert_eq!(on.channels_per_connection, 64);
    assert_eq!(on.max_idle, 16, "the rest keep their defaults");

    let message = listener("stomp", "pool = { multiplex = true }")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("listeners[0].pool.multiplex") && message.contains("amqp listeners"),
        "{message}"
    );
    let message = listener("amqp", "pool = { channels_per_connection = 0 }")
        .unwrap_err()
        .to_string();
    assert!(
        message.starts_with("listeners[0].pool.channels_per_connection"),
        "{message}"
    );
}

#[test]
fn max_passive_ejection_is_a_share() {
    let cluster = |keys: &str| {
        Config::parse(&format!(
            r#"
[[clusters]]
name = "lab"
{keys}
nodes = [{{ name = "r1", amqp = "127.0.0.1:5681" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:5672"
protocol = "amqp"
cluster = "lab"
"#
        ))
    };
    assert_eq!(cluster("").unwrap().clusters[0].max_passive_ejection, 0.5);
    let share =
        cluster(r#"max_passive_ejection = "34%""#).unwrap().clusters[0].max_passive_ejection;
    assert!((share - 0.34).abs() < 1e-9, "{share}");
    for bad in [r#""half""#, r#""150%""#, "50"] {
        let message = cluster(&format!("max_passive_ejection = {bad}"))
            .unwrap_err()
            .to_string();
        assert!(message.contains("max_passive_ejection"), "{bad}: {message}");
    }
}

#[test]
fn process_limits_have_defaults_and_refuse_zero() {
    let with = |limits: &str| {
        Config::parse(&format!(
            r#"
{limits}
[[clusters]]
name = "lab"
nodes = [{{ name = "r1", amqp = "127.0.0.1:5681" }}]
[[listeners]]
name = "l"
bind = "127.0.0.1:5672"
protocol = "amqp"
cluster = "lab"
"#
        ))
    };
    let defaults = with("").unwrap().limits;
    assert_eq!(
        defaults.max_sessions, None,
        "by default from the open-file limit"
    );
    assert_eq!(defaults.max_unconfirmed_bytes, 512 * 1024 * 1024);
    let set = with("[limits]\nmax_sessions = 5000\nmax_unconfirmed_bytes = 1048576")
        .unwrap()
        .limits;
    assert_eq!(
        (set.max_sessions, set.max_unconfirmed_bytes),
        (Some(5000), 1 << 20)
    );
    for (bad, key) in [
        ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
        (
            "[limits]\nmax_unconfirmed_bytes = 0",
            "limits.max_unconfirmed_bytes",
        ),
        ("[limits]\nmax_files = 10", "max_files"),
    ] {
        let message = with(bad).unwrap_err().to_string();
        assert!(message.contains(key), "{bad}: {message}");
    }
}

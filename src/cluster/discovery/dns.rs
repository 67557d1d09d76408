//! Nodes from DNS: every A/AAAA address of a host name is a node, and so is every address of
//! every SRV target. Names are re-resolved when their records expire (hickory's own cache is
//! off, so the TTL we see is the server's).

use crate::address::Address;
use crate::backoff::Backoff;
use crate::cluster::discovery::UpdateSender;
use crate::cluster::node::NodeSpec;
use crate::cluster::topology::Update;
use crate::config::DnsConfig;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, LookupIpStrategy, NameServerConfig, ResolverConfig,
};
use hickory_resolver::net::NetError;
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::RData;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Records are re-read no sooner than this, however short their TTL ...
const MIN_REFRESH: Duration = Duration::from_secs(1);
/// ... and no later than this, however long.
const MAX_REFRESH: Duration = Duration::from_secs(300);
/// A name that does not exist is asked again this often.
const NEGATIVE_REFRESH: Duration = Duration::from_secs(5);

pub fn resolver(config: &DnsConfig) -> Result<TokioResolver, NetError> {
    let mut builder = if config.nameservers.is_empty() {
        TokioResolver::builder_tokio()?
    } else {
        let servers = config
            .nameservers
            .iter()
            .map(|server| {
                let mut udp = ConnectionConfig::udp();
                udp.port = server.port();
                let mut tcp = ConnectionConfig::tcp();
                tcp.port = server.port();
                NameServerConfig::new(server.ip(), true, vec![udp, tcp])
            })
            .collect();
        TokioResolver::builder_with_config(
            ResolverConfig::from_name_servers(servers),
            TokioRuntimeProvider::default(),
        )
    };
    let options = builder.options_mut();
    options.cache_size = 0;
    options.ip_strategy = LookupIpStrategy::Ipv4AndIpv6;
    builder.build()
}

/// What one DNS source resolves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// Every address of `host` is a node with the endpoints in `ports`.
    Host {
        host: String,
        ports: BTreeMap<String, u16>,
    },
    /// Every address of every target of `name` is a node whose `service` endpoint is at the
    /// record's port, with the other endpoints in `ports`.
    Srv {
        name: String,
        service: String,
        ports: BTreeMap<String, u16>,
    },
}

impl Query {
    pub fn source_id(&self) -> String {
        match self {
            Query::Host { host, .. } => format!("dns:{host}"),
            Query::Srv { name, .. } => format!("dns-srv:{name}"),
        }
    }
}

enum Outcome {
    Nodes {
        nodes: Vec<NodeSpec>,
        valid_until: Instant,
    },
    NoSuchName,
}

/// Resolves `query` whenever its records expire and reports the node set, until cancelled.
/// A lookup that fails keeps the last node set (a DNS outage must not empty the cluster).
pub async fn run(
    resolver: TokioResolver,
    query: Query,
    updates: UpdateSender,
    cancel: CancellationToken,
) {
    let source = query.source_id();
    let mut retry = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut reported = false;
    loop {
        let resolved = tokio::select! {
            _ = cancel.cancelled() => return,
            resolved = resolve(&resolver, &query) => resolved,
        };
        let wait = match resolved {
            Ok(Outcome::Nodes { nodes, valid_until }) => {
                retry.reset();
                updates.send(&source, Update::Reset(nodes));
                reported = true;
                valid_until
                    .saturating_duration_since(Instant::now())
                    .clamp(MIN_REFRESH, MAX_REFRESH)
            }
            Ok(Outcome::NoSuchName) => {
                tracing::warn!(%source, "DNS has no records for this name: it has no nodes");
                updates.send(&source, Update::Reset(Vec::new()));
                reported = true;
                NEGATIVE_REFRESH
            }
            Err(e) => {
                tracing::warn!(%source, error = %e, "DNS lookup failed; keeping the nodes last resolved");
                if !reported {
                    // Let startup go on without these nodes rather than wait for DNS.
                    updates.report_failed(&source);
                    reported = true;
                }
                retry.next_delay()
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn resolve(resolver: &TokioResolver, query: &Query) -> Result<Outcome, NetError> {
    match query {
        Query::Host { host, ports } => {
            let lookup = match resolver.lookup_ip(host.as_str()).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return Ok(Outcome::NoSuchName);
                }
                Err(e) => return Err(e),
            };
            let nodes = lookup
                .iter()
                .map(|ip| node(host, ip, ports.iter().map(|(e, p)| (e.clone(), *p))))
                .collect();
            Ok(Outcome::Nodes {
                nodes,
                valid_until: lookup.valid_until(),
            })
        }
        Query::Srv {
            name,
            service,
            ports,
        } => {
            let lookup = match resolver.srv_lookup(name.as_str()).await {
                Ok(lookup) => lookup,
                Err(e) if e.is_no_records_found() || e.is_nx_domain() => {
                    return Ok(Outcome::NoSuchName);
                }
                Err(e) => return Err(e),
            };
            let mut valid_until = lookup.valid_until();
            let mut nodes = Vec::new();
            for record in lookup.answers() {
                let RData::SRV(srv) = &record.data else {
                    continue;
                };
                let target = srv.target.to_string();
                let addresses = match resolver.lookup_ip(srv.target.clone()).await {
                    Ok(addresses) => addresses,
                    Err(e) if e.is_no_records_found() || e.is_nx_domain() => continue,
                    Err(e) => return Err(e),
                };
                valid_until = valid_until.min(addresses.valid_until());
                for ip in addresses.iter() {
                    let endpoints = ports
                        .iter()
                        .filter(|(e, _)| *e != service)
                        .map(|(e, p)| (e.clone(), *p))
                        .chain([(service.clone(), srv.port)]);
                    nodes.push(node(&target, ip, endpoints));
                }
            }
            Ok(Outcome::Nodes { nodes, valid_until })
        }
    }
}

fn node(host: &str, ip: IpAddr, endpoints: impl Iterator<Item = (String, u16)>) -> NodeSpec {
    NodeSpec {
        name: format!("{}/{ip}", host.trim_end_matches('.')),
        endpoints: endpoints
            .map(|(e, port)| (e, Address::Ip(SocketAddr::new(ip, port))))
            .collect(),
    }
}

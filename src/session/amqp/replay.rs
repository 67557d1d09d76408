//! Setting a session up again on a new node, in three steps:
//!
//! 1. [`establish`]: connect to a live node, log in with the client's credentials, open its
//!    virtual host; another node on failure, until the deadline.
//! 2. [`replay`], the part that must wait for the node's answers: exchanges, queues
//!    (server-named ones get new names) and bindings, declared on a channel of tether's own;
//!    then each client channel opened again with its qos and confirms.
//! 3. [`resend`], what needs no answer before the session can go on, pipelined: consumers,
//!    requests the failed node never answered, unconfirmed publishes.

use super::channel::Channel;
use super::declarations::Declarations;
use super::names::QueueNames;
use super::state::{ChannelSession, Out, method_frame};
use super::upstream::{Failure, Upstream};
use crate::backoff::Backoff;
use crate::cluster::ejection::Cause;
use crate::listener::Listener;
use crate::session::failover::Destination;
use amq_protocol::protocol::{AMQPClass, basic, channel, confirm, connection, exchange, queue};
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// A node connected, handshaken and set up again.
pub struct Established {
    pub upstream: Upstream,
    pub replayed: Replayed,
}

/// What a session needs to be set up on another node: all of it owned, so that it can be
/// set up while the session goes on (and heart-beats its client).
pub struct Recorded {
    pub start_ok: connection::StartOk,
    pub open: connection::Open,
    pub declarations: Declarations,
    pub channels: Vec<ChannelSetup>,
}

/// Connects to a live node (`next`'s, if it names one, once it allows), logs in with the
/// client's credentials, opens its virtual host and replays the session's set-up; another node
/// on failure, until `deadline`. A warm connection from the listener's pool that the same
/// credentials logged in (on the node named, if one is) saves the connect and the login.
pub async fn establish(
    listener: Arc<Listener>,
    recorded: Recorded,
    deadline: Instant,
    next: Destination,
    share: bool,
) -> Result<Established, Failure> {
    next.wait().await;
    let preferred = next.node;
    let settings = &listener.session;
    let cluster = &listener.cluster;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    loop {
        let attempt = async {
            let shared = match share {
                true => shared_link(&listener, &recorded, preferred.as_deref()).await,
                false => None,
            };
            let (mut upstream, logged_in) = match shared {
                Some(linked) => (linked?, true),
                None => match warm(&listener, &recorded, &preferred).await {
                    Some(upstream) => (upstream, true),
                    None => (
                        Upstream::connect(&listener, preferred.as_deref()).await?.0,
                        false,
                    ),
                },
            };
            let result = async {
                if !logged_in {
                    let (start_ok, open) = (&recorded.start_ok, &recorded.open);
                    (upstream.log_in(start_ok, open, settings.upstream_heartbeat)).await?;
                }
                replay(
                    &mut upstream,
                    &recorded.declarations,
                    &recorded.channels,
                    deadline,
                )
                .await
            };
            match tokio::time::timeout(settings.upstream_handshake_timeout * 4, result).await {
                Ok(Ok(replayed)) => Ok(Established { upstream, replayed }),
                Ok(Err(Failure::Broken(why))) => {
                    // The node may have closed this one connection only (a channel crash
                    // after a replayed publish): checked at once, down only if that fails.
                    cluster.node_suspect(
                        upstream.node(),
                        listener.config.endpoint(),
                        &format!("failover attempt: {why}"),
                    );
                    Err(Failure::Broken(format!("{}: {why}", upstream.node().name)))
                }
                Ok(Err(other)) => Err(other),
                Err(_) => {
                    let why = "no answer in time during handshake or replay";
                    let endpoint = listener.config.endpoint();
                    cluster.node_failed(upstream.node(), endpoint, Cause::Handshake, why);
                    Err(Failure::Broken(format!("{}: {why}", upstream.node().name)))
                }
            }
        };
        // No attempt outlives the failover's deadline: a node that accepts TCP and then says
        // nothing (hung, or tried in panic mode) must not hold the client past
        // failover_timeout.
        let attempt = async {
            match tokio::time::timeout_at(deadline, attempt).await {
                Ok(result) => result,
                Err(_) => Err(Failure::Broken(
                    "no node answered before the failover timeout".into(),
                )),
            }
        };
        let last = match attempt.await {
            Ok(established) => return Ok(established),
            Err(Failure::Refused(close)) => return Err(Failure::Refused(close)),
            Err(Failure::Broken(why)) => why,
            Err(Failure::ChannelClosed(channel, close)) => {
                format!(
                    "channel {channel} closed: {} {}",
                    close.reply_code, close.reply_text
                )
            }
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(Failure::Broken(last));
        }
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

/// A link on a shared connection the session's credentials logged in (a new one when there
/// is none with room), if the listener multiplexes; `None` if it does not.
async fn shared_link(
    listener: &Listener,
    recorded: &Recorded,
    preferred: Option<&str>,
) -> Option<Result<Upstream, Failure>> {
    let pooling = listener.amqp_pool.as_ref()?;
    let shared = pooling.shared.as_ref()?;
    let credentials = super::pooled::credentials(&recorded.start_ok, &recorded.open);
    let settings = &listener.session;
    let fresh = || async {
        let logged_in = async {
            let (mut upstream, _) = Upstream::connect(listener, preferred).await?;
            let (start_ok, open) = (&recorded.start_ok, &recorded.open);
            (upstream.log_in(start_ok, open, settings.upstream_heartbeat)).await?;
            Ok(upstream)
        };
        match tokio::time::timeout(settings.upstream_handshake_timeout * 4, logged_in).await {
            Ok(result) => result,
            Err(_) => Err(Failure::Broken("no answer in time during handshake".into())),
        }
    };
    let gate = pooling.pool.gate();
    Some(shared.attach(gate, &credentials, preferred, fresh).await)
}

/// A pooled connection the session's credentials logged in, if the listener keeps one.
async fn warm(
    listener: &Listener,
    recorded: &Recorded,
    preferred: &Option<String>,
) -> Option<Upstream> {
    let pooling = listener.amqp_pool.as_ref()?;
    let credentials = super::pooled::credentials(&recorded.start_ok, &recorded.open);
    let (warm, node) = pooling
        .pool
        .take_on(&credentials, preferred.as_deref())
        .await?;
    let (mut upstream, channels) = warm.into_upstream(&node);
    // The replay opens the session's own channels: the ones the pool kept open go first.
    let ids: Vec<u16> = channels.iter().map(|(id, _)| *id).collect();
    upstream.close_channels(&ids).await.ok()?;
    Some(upstream)
}

/// What [`resend`] sent, by kind.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resent {
    pub consumers: usize,
    pub publishes: usize,
    pub requests: usize,
}

/// After the awaited part of the replay, for every channel the new node took: consumers,
/// requests the failed node never answered (those the channel set-up already did are answered
/// by tether, the others asked again) and kept publishes, renumbered, in the node's names.
pub fn resend(
    channels: &mut BTreeMap<u16, ChannelSession>,
    names: &QueueNames,
    out: &mut Out,
) -> Resent {
    let mut resent = Resent::default();
    for (id, session) in channels.iter_mut().filter(|(_, s)| !s.closed_by_node) {
        let id = *id;
        for consumer in &session.state.consumers {
            let queue = names.node_name(&consumer.queue);
            out.to_node
                .push(method_frame(id, &consume_again(&consumer.method, queue)));
            resent.consumers += 1;
        }
        let after = session.requests.after_replay();
        for answer in &after.answers {
            out.to_client.push(method_frame(id, answer));
        }
        for (request, frame) in &after.again {
            out.to_node.push(match names.request_for_node(request) {
                Some(renamed) => method_frame(id, &renamed),
                None => frame.clone(),
            });
            resent.requests += 1;
        }
        session.state.confirms.renumber_for_replay();
        for publish in &session.state.confirms.unconfirmed {
            out.to_node
                .extend(names.publish_for_node(publish.frames.clone()));
            resent.publishes += 1;
        }
    }
    resent
}

/// AMQP's reply code for an exclusive queue still held by a connection of the failed node.
const RESOURCE_LOCKED: u16 = 405;

/// What a client channel needs on the new node before its consumers and publishes.
#[derive(Clone, Debug)]
pub struct ChannelSetup {
    pub id: u16,
    pub qos: Vec<Bytes>,
    /// Confirms on (also for tx channels: tether runs transactions over confirms).
    pub confirm: bool,
}

impl ChannelSetup {
    pub fn of(channel: &Channel) -> ChannelSetup {
        ChannelSetup {
            id: channel.id,
            qos: channel
                .qos
                .iter()
                .map(|(_, payload)| payload.clone())
                .collect(),
            confirm: channel.confirms.upstream_confirm,
        }
    }
}

#[derive(Debug, Default)]
pub struct Replayed {
    /// Server-named queues: the client's name and the new node's.
    pub renames: Vec<(String, String)>,
    /// Client channels the new node refused, with its reason: the client is told.
    pub failed_channels: Vec<(u16, channel::Close)>,
    /// Declarations the new node refused (logged; the session goes on without them).
    pub skipped: Vec<String>,
    pub exchanges: usize,
    pub queues: usize,
    pub bindings: usize,
    pub channels: usize,
}

/// Declares `declarations` and sets up `channels` on `upstream`, retrying an exclusive queue
/// that the failed node's connection still holds until `deadline`.
pub async fn replay(
    upstream: &mut Upstream,
    declarations: &Declarations,
    channels: &[ChannelSetup],
    deadline: Instant,
) -> Result<Replayed, Failure> {
    let mut replayed = Replayed::default();
    if !declarations.exchanges.is_empty()
        || !declarations.queues.is_empty()
        || !declarations.exchange_bindings.is_empty()
    {
        let own = own_channel(upstream, channels);
        declare_all(upstream, own, declarations, deadline, &mut replayed).await?;
    }
    for setup in channels {
        match set_up_channel(upstream, setup).await {
            Ok(()) => replayed.channels += 1,
            Err(Failure::ChannelClosed(id, close)) => replayed.failed_channels.push((id, close)),
            Err(other) => return Err(other),
        }
    }
    Ok(replayed)
}

/// A channel number no client channel uses: the node's highest, or the nearest free one below.
fn own_channel(upstream: &Upstream, channels: &[ChannelSetup]) -> u16 {
    let top = match upstream.tune.channel_max {
        0 => u16::MAX,
        max => max,
    };
    (1..=top)
        .rev()
        .find(|n| channels.iter().all(|c| c.id != *n))
        .unwrap_or(top)
}

fn open_channel() -> AMQPClass {
    AMQPClass::Channel(channel::AMQPMethod::Open(channel::Open {}))
}

async fn declare_all(
    upstream: &mut Upstream,
    own: u16,
    declarations: &Declarations,
    deadline: Instant,
    replayed: &mut Replayed,
) -> Result<(), Failure> {
    upstream.request(own, &open_channel()).await?;
    for declare in &declarations.exchanges {
        let mut declare = declare.clone();
        declare.nowait = false;
        let method = AMQPClass::Exchange(exchange::AMQPMethod::Declare(declare.clone()));
        if attempt(
            upstream,
            own,
            &method,
            replayed,
            "exchange",
            declare.exchange.as_str(),
        )
        .await?
        {
            replayed.exchanges += 1;
        }
    }
    for record in &declarations.queues {
        let mut declare = record.declare.clone();
        declare.nowait = false;
        let method = AMQPClass::Queue(queue::AMQPMethod::Declare(declare));
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        loop {
            match upstream.request(own, &method).await {
                Ok(AMQPClass::Queue(queue::AMQPMethod::DeclareOk(ok))) => {
                    if record.server_named() {
                        replayed
                            .renames
                            .push((record.name.clone(), ok.queue.to_string()));
                    }
                    replayed.queues += 1;
                    break;
                }
                Ok(_) => break,
                Err(Failure::ChannelClosed(_, close))
                    if close.reply_code == RESOURCE_LOCKED && Instant::now() < deadline =>
                {
                    // The failed node's connection still holds the exclusive queue until the
                    // cluster notices it is gone: ask again shortly.
                    upstream.request(own, &open_channel()).await?;
                    tokio::time::sleep(backoff.next_delay()).await;
                }
                Err(Failure::ChannelClosed(_, close)) => {
                    replayed.skipped.push(format!(
                        "queue {}: {} {}",
                        record.name, close.reply_code, close.reply_text
                    ));
                    upstream.request(own, &open_channel()).await?;
                    break;
                }
                Err(other) => return Err(other),
            }
        }
    }
    let renames = replayed.renames.clone();
    for bind in &declarations.exchange_bindings {
        let mut bind = bind.clone();
        bind.nowait = false;
        let method = AMQPClass::Exchange(exchange::AMQPMethod::Bind(bind.clone()));
        if attempt(
            upstream,
            own,
            &method,
            replayed,
            "exchange binding",
            bind.destination.as_str(),
        )
        .await?
        {
            replayed.bindings += 1;
        }
    }
    for bind in &declarations.queue_bindings {
        let mut bind = bind.clone();
        bind.nowait = false;
        bind.queue = replayed_name(&renames, bind.queue.as_str()).into();
        let method = AMQPClass::Queue(queue::AMQPMethod::Bind(bind.clone()));
        if attempt(
            upstream,
            own,
            &method,
            replayed,
            "binding",
            bind.queue.as_str(),
        )
        .await?
        {
            replayed.bindings += 1;
        }
    }
    upstream
        .request(
            own,
            &AMQPClass::Channel(channel::AMQPMethod::Close(channel::Close {
                reply_code: 200,
                reply_text: "tether replay done".into(),
                class_id: 0,
                method_id: 0,
            })),
        )
        .await?;
    Ok(())
}

/// The name a queue has on the new node, given the renames found so far.
pub fn replayed_name(renames: &[(String, String)], name: &str) -> String {
    renames
        .iter()
        .find(|(client, _)| client == name)
        .map_or(name, |(_, node)| node.as_str())
        .to_owned()
}

/// One declaration: true if the node took it. A refusal closes tether's channel: it is opened
/// again and the refusal noted.
async fn attempt(
    upstream: &mut Upstream,
    own: u16,
    method: &AMQPClass,
    replayed: &mut Replayed,
    what: &str,
    name: &str,
) -> Result<bool, Failure> {
    match upstream.request(own, method).await {
        Ok(_) => Ok(true),
        Err(Failure::ChannelClosed(_, close)) => {
            replayed.skipped.push(format!(
                "{what} {name}: {} {}",
                close.reply_code, close.reply_text
            ));
            upstream.request(own, &open_channel()).await?;
            Ok(false)
        }
        Err(other) => Err(other),
    }
}

async fn set_up_channel(upstream: &mut Upstream, setup: &ChannelSetup) -> Result<(), Failure> {
    upstream.request(setup.id, &open_channel()).await?;
    for qos in &setup.qos {
        let method = crate::proto::amqp::method::decode(qos)
            .map_err(|e| Failure::Broken(format!("recorded basic.qos: {e}")))?;
        upstream.request(setup.id, &method).await?;
    }
    if setup.confirm {
        let select = AMQPClass::Confirm(confirm::AMQPMethod::Select(confirm::Select {
            nowait: false,
        }));
        upstream.request(setup.id, &select).await?;
    }
    Ok(())
}

/// basic.consume as replayed: the client's tag, the node's queue name, no answer awaited.
pub fn consume_again(consume: &basic::Consume, queue: &str) -> AMQPClass {
    let mut consume = consume.clone();
    consume.queue = queue.into();
    consume.nowait = true;
    AMQPClass::Basic(basic::AMQPMethod::Consume(consume))
}

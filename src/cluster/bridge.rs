//! The bridge thread and the cores' ends of it (see the module documentation of `cluster`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::subject;
use crate::config::Cluster;
use crate::runtime::inbox::{self, Inbox};

/// What the bridge and `/health` / `/metrics` share (node-wide, not per core).
#[derive(Default)]
pub struct State {
    pub node: String,
    connected: AtomicBool,
    /// Why the node is not connected (for `/health`).
    reason: Mutex<String>,
    /// Publications handed to NATS.
    pub published: AtomicU64,
    /// Publications received from other nodes.
    pub received: AtomicU64,
    /// Publications a full up queue refused (the bridge could not keep up).
    pub dropped: AtomicU64,
    /// Publications not sent because NATS was unreachable (delivered locally all the same).
    pub unreachable: AtomicU64,
    /// Topics this node is subscribed to (gauge).
    pub subscriptions: AtomicU64,
    /// Times the connection to NATS was (re)established.
    pub connects: AtomicU64,
}

impl State {
    /// `None` while connected, otherwise why not.
    pub fn degraded(&self) -> Option<String> {
        if self.connected.load(Ordering::Relaxed) {
            None
        } else {
            Some(self.reason.lock().map(|r| r.clone()).unwrap_or_default())
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn set(&self, connected: bool, reason: &str) {
        self.connected.store(connected, Ordering::Relaxed);
        if let Ok(mut r) = self.reason.lock() {
            *r = reason.to_string();
        }
    }
}

enum Up {
    Publish {
        topic: Box<str>,
        bytes: Arc<[u8]>,
    },
    /// A home core's answer to a node that asked for a topic's presence state.
    Reply {
        subject: String,
        bytes: Vec<u8>,
    },
    /// Close the sockets with this id on every other node.
    Disconnect(Box<str>),
}

enum Interest {
    /// A core has subscribers of the topic now; `presence`: it is a presence topic.
    On(Box<str>, bool),
    Off(Box<str>),
}

/// What the bridge hands a core.
#[derive(Clone, Debug)]
pub enum Down {
    /// A publication another node (`origin`: name#incarnation) published.
    Publication { bytes: Arc<[u8]>, origin: Arc<str> },
    /// A node asks for `topic`'s presence state: the topic's home core answers to `reply`.
    StateRequest { topic: Arc<str>, reply: Arc<str> },
    /// Node `origin`'s presence state of `topic` (a diff of joins), as asked.
    Seed {
        topic: Arc<str>,
        origin: Arc<str>,
        diff: Arc<str>,
    },
    /// Node `origin` is gone (silent for `down_period_ms`, or restarted): its presences leave.
    NodeDown(Arc<str>),
    /// Close the sockets with this id (`POST /api/disconnect` on another node).
    Disconnect(Arc<str>),
}

/// Header carrying a message's origin node instance.
const ORIGIN: &str = "cc-origin";

/// One core's end of the bridge: publish, say which topics it has subscribers for, and take what
/// other nodes published. Never blocks.
pub struct Link {
    up: mpsc::Sender<Up>,
    interest: mpsc::UnboundedSender<Interest>,
    down: Inbox<Down>,
    pub state: Arc<State>,
}

impl Link {
    /// Hand a publication of `topic` to the cluster; false (counted) if the up queue is full.
    pub fn publish(&self, topic: &str, bytes: Arc<[u8]>) -> bool {
        let ok = self
            .up
            .try_send(Up::Publish {
                topic: topic.into(),
                bytes,
            })
            .is_ok();
        if !ok {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// This core has subscribers of `topic` now (`on`; `presence`: a presence topic), or no more.
    pub fn interest(&self, topic: &str, on: bool, presence: bool) {
        let i = if on {
            Interest::On(topic.into(), presence)
        } else {
            Interest::Off(topic.into())
        };
        let _ = self.interest.send(i);
    }

    /// Ask every other node to close its sockets with id `id`.
    pub fn disconnect(&self, id: &str) {
        if self.up.try_send(Up::Disconnect(id.into())).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Answer a node's request for a topic's presence state (`diff`: a diff of joins).
    pub fn reply(&self, reply: &str, topic: &str, diff: &str) {
        let mut bytes = Vec::with_capacity(4 + topic.len() + diff.len());
        bytes.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        bytes.extend_from_slice(topic.as_bytes());
        bytes.extend_from_slice(diff.as_bytes());
        let up = Up::Reply {
            subject: reply.into(),
            bytes,
        };
        if self.up.try_send(up).is_err() {
            self.state.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next thing the bridge has for this core.
    pub fn poll_recv(&self, cx: &Context<'_>) -> Poll<Down> {
        self.down.poll_recv(cx)
    }
}

/// The bridge thread; stopped (after a flush) when dropped or by [`Bridge::stop`].
pub struct Bridge {
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Start the bridge for `cores` cores; each core's down queue holds `down` publications;
    /// `largest` is the largest publication a core may hand it (a NATS server that takes less is
    /// warned about when the node connects).
    pub fn start(
        cfg: &Cluster,
        cores: usize,
        down: usize,
        largest: usize,
    ) -> std::io::Result<(Bridge, Vec<Link>)> {
        let node = cfg.node.clone().unwrap_or_else(default_node);
        let state = Arc::new(State {
            node: node.clone(),
            reason: Mutex::new("connecting to NATS".into()),
            ..State::default()
        });
        let (up_tx, up_rx) = mpsc::channel(cfg.queue);
        let (int_tx, int_rx) = mpsc::unbounded_channel();
        let mut downs = Vec::with_capacity(cores);
        let mut links = Vec::with_capacity(cores);
        for _ in 0..cores {
            let (tx, rx) = inbox::inbox(down);
            downs.push(tx);
            links.push(Link {
                up: up_tx.clone(),
                interest: int_tx.clone(),
                down: rx,
                state: state.clone(),
            });
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (cfg, st) = (cfg.clone(), state.clone());
        let ends = Ends {
            up: up_rx,
            interest: int_rx,
            downs: Arc::new(downs),
            stop: stop_rx,
        };
        let thread =
            crate::runtime::inbox::spawn_tokio_thread("corecast-cluster", "cluster", move || {
                run(cfg, node, st, ends, largest)
            })?;
        Ok((
            Bridge {
                state,
                stop: Some(stop_tx),
                thread: Some(thread),
            },
            links,
        ))
    }

    /// Flush what is queued for NATS (at most two seconds) and stop the thread.
    pub fn stop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hostname and pid.
fn default_node() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

type Downs = Arc<Vec<inbox::Sender<Down>>>;

/// This process's instance name: the node's name and a random incarnation, so that a node that
/// restarts replaces its old self on the others.
fn instance(node: &str) -> String {
    use std::hash::BuildHasher;
    let seed = std::collections::hash_map::RandomState::new()
        .hash_one((std::process::id(), std::time::SystemTime::now()));
    format!("{node}#{seed:016x}")
}

fn origin_of(msg: &async_nats::Message) -> Option<Arc<str>> {
    let h = msg.headers.as_ref()?.get(ORIGIN)?;
    Some(Arc::from(h.as_str()))
}

/// The bridge's ends of the cores' queues, and its stop signal.
struct Ends {
    up: mpsc::Receiver<Up>,
    interest: mpsc::UnboundedReceiver<Interest>,
    downs: Downs,
    stop: tokio::sync::oneshot::Receiver<()>,
}

async fn run(cfg: Cluster, node: String, state: Arc<State>, ends: Ends, largest: usize) {
    let Ends {
        mut up,
        mut interest,
        downs,
        mut stop,
    } = ends;
    // Set off by a reconnect or a slow-consumer report: this node may have missed presence
    // diffs, so it asks for the state of its presence topics again.
    let (resync_tx, mut resync_rx) = mpsc::unbounded_channel::<()>();
    let client = match connect(&cfg, &node, state.clone(), resync_tx).await {
        Ok(c) => c,
        Err(e) => {
            warn!(error = %e, "cluster: cannot use the NATS settings; serving local clients only");
            state.set(false, &format!("cluster: {e}"));
            // Keep draining the queues so the cores never wait on us.
            loop {
                tokio::select! {
                    _ = &mut stop => return,
                    _ = up.recv() => {
                        state.unreachable.fetch_add(1, Ordering::Relaxed);
                    }
                    _ = interest.recv() => {}
                }
            }
        }
    };
    let prefix = cfg.subject_prefix.clone();
    let me = instance(&node);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(ORIGIN, me.as_str());
    let sync_subject = format!("{prefix}.sync");
    let inbox = client.new_inbox();
    // Presence across nodes: heartbeats, state requests and their answers, on subjects of
    // their own (always subscribed, whatever the topics).
    let (peer_tx, mut peer_rx) = mpsc::unbounded_channel::<Peer>();
    let mut aux = Vec::new();
    if let Ok(sub) = client.subscribe(format!("{prefix}.hb")).await {
        aux.push(tokio::spawn(heartbeats_in(sub, peer_tx.clone(), false)));
    }
    if let Ok(sub) = client.subscribe(format!("{prefix}.disconnect")).await {
        aux.push(tokio::spawn(disconnects_in(sub, downs.clone())));
    }
    if let Ok(sub) = client.subscribe(format!("{prefix}.bye")).await {
        aux.push(tokio::spawn(heartbeats_in(sub, peer_tx.clone(), true)));
    }
    if let Ok(sub) = client.subscribe(sync_subject.clone()).await {
        aux.push(tokio::spawn(requests_in(
            sub,
            downs.clone(),
            me.clone(),
            peer_tx.clone(),
        )));
    }
    if let Ok(sub) = client.subscribe(inbox.clone()).await {
        aux.push(tokio::spawn(seeds_in(sub, downs.clone(), peer_tx.clone())));
    }
    let beat = Duration::from_millis(cfg.presence_heartbeat_ms);
    let down_after = Duration::from_millis(cfg.down_period_ms);
    let mut ticker = tokio::time::interval(beat);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Other instances by name: (instance, last heard).
    let mut peers: HashMap<String, (Arc<str>, tokio::time::Instant)> = HashMap::new();
    // Topic -> (cores interested, presence topic, the subscription's task).
    let mut subs: HashMap<Box<str>, (usize, bool, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(i) = interest.recv() => match i {
                Interest::On(topic, presence) => {
                    if let Some((n, _, _)) = subs.get_mut(&topic) {
                        *n += 1;
                        continue;
                    }
                    let subject = subject::of_topic(&prefix, &topic);
                    match client.subscribe(subject).await {
                        Ok(sub) => {
                            let task = tokio::spawn(forward(
                                sub,
                                downs.clone(),
                                state.clone(),
                                peer_tx.clone(),
                            ));
                            // The gauge counts subscriptions NATS has taken (when connected).
                            if state.connected() {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    client.flush(),
                                )
                                .await;
                            }
                            if presence {
                                // What the others hold of this topic: their homes answer.
                                ask_state(&client, &sync_subject, &inbox, &topic).await;
                            }
                            subs.insert(topic, (1, presence, task));
                            state.subscriptions.store(subs.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => warn!(error = %e, %topic, "cluster: subscribe failed"),
                    }
                }
                Interest::Off(topic) => {
                    if let Some((n, _, _)) = subs.get_mut(&topic) {
                        *n -= 1;
                        if *n == 0
                            && let Some((_, _, task)) = subs.remove(&topic)
                        {
                            task.abort(); // drops the subscriber: NATS is told to unsubscribe
                        }
                        state.subscriptions.store(subs.len() as u64, Ordering::Relaxed);
                    }
                }
            },
            Some(up_msg) = up.recv() => {
                if !state.connected() {
                    state.unreachable.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let sent = match up_msg {
                    Up::Publish { topic, bytes } => {
                        let subject = subject::of_topic(&prefix, &topic);
                        let payload = bytes::Bytes::copy_from_slice(&bytes);
                        let r = client.publish_with_headers(subject, headers.clone(), payload).await;
                        if r.is_ok() {
                            state.published.fetch_add(1, Ordering::Relaxed);
                        }
                        r.is_ok()
                    }
                    Up::Reply { subject, bytes } => client
                        .publish_with_headers(subject, headers.clone(), bytes.into())
                        .await
                        .is_ok(),
                    Up::Disconnect(id) => client
                        .publish(
                            format!("{prefix}.disconnect"),
                            bytes::Bytes::copy_from_slice(id.as_bytes()),
                        )
                        .await
                        .is_ok(),
                };
                if !sent {
                    state.unreachable.fetch_add(1, Ordering::Relaxed);
                }
            }
            Some(peer) = peer_rx.recv() => {
                let Peer { name, instance, bye } = peer;
                let now = tokio::time::Instant::now();
                if *instance == *me {
                    continue;
                }
                if bye {
                    // A node stopping: its presences leave now, not after the down period.
                    peers.remove(&name);
                    send_all(&downs, Down::NodeDown(instance)).await;
                    continue;
                }
                let fresh = match peers.get(&name) {
                    Some((known, _)) if *known == instance => false,
                    Some((old, _)) => {
                        // Restarted: its old self's presences leave at once.
                        send_all(&downs, Down::NodeDown(old.clone())).await;
                        true
                    }
                    None => true,
                };
                if fresh {
                    info!(node = %instance, "cluster: node in sight");
                }
                peers.insert(name, (instance, now));
                if fresh {
                    // A node (back) in sight: ask for what it holds of our presence topics.
                    for (topic, (_, presence, _)) in &subs {
                        if *presence {
                            ask_state(&client, &sync_subject, &inbox, topic).await;
                        }
                    }
                }
            }
            Some(()) = resync_rx.recv() => {
                let max = client.server_info().max_payload;
                if max > 0 && max < largest {
                    warn!(
                        nats_max_payload = max,
                        largest,
                        "cluster: the NATS server takes messages up to max_payload only: bigger \
                         publications reach this node only (raise max_payload, see \
                         deploy/nats-server.conf)"
                    );
                }
                for (topic, (_, presence, _)) in &subs {
                    if *presence {
                        ask_state(&client, &sync_subject, &inbox, topic).await;
                    }
                }
            }
            _ = ticker.tick() => {
                if state.connected() {
                    let _ = client
                        .publish(format!("{prefix}.hb"), bytes::Bytes::copy_from_slice(me.as_bytes()))
                        .await;
                }
                let now = tokio::time::Instant::now();
                let silent: Vec<String> = peers
                    .iter()
                    .filter(|(_, (_, seen))| now.duration_since(*seen) > down_after)
                    .map(|(name, _)| name.clone())
                    .collect();
                for name in silent {
                    if let Some((instance, _)) = peers.remove(&name) {
                        info!(node = %instance, "cluster: node silent for the down period");
                        send_all(&downs, Down::NodeDown(instance)).await;
                    }
                }
            }
        }
    }
    // Leaving: the drain's leave diffs are in the queue already; flush them.
    while let Ok(msg) = up.try_recv() {
        if let Up::Publish { topic, bytes } = msg {
            let subject = subject::of_topic(&prefix, &topic);
            let payload = bytes::Bytes::copy_from_slice(&bytes);
            let _ = client
                .publish_with_headers(subject, headers.clone(), payload)
                .await;
        }
    }
    let _ = client
        .publish(
            format!("{prefix}.bye"),
            bytes::Bytes::copy_from_slice(me.as_bytes()),
        )
        .await;
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    for (_, (_, _, task)) in subs {
        task.abort();
    }
    for task in aux {
        task.abort();
    }
}

/// Ask every node's home of `topic` for its presence state (answers come to `inbox`).
async fn ask_state(client: &async_nats::Client, sync_subject: &str, inbox: &str, topic: &str) {
    let _ = client
        .publish_with_reply(
            sync_subject.to_string(),
            inbox.to_string(),
            bytes::Bytes::copy_from_slice(topic.as_bytes()),
        )
        .await;
}

/// A heartbeat: a node's name and instance.
struct Peer {
    name: String,
    instance: Arc<str>,
    /// A goodbye (the node is stopping), not a heartbeat.
    bye: bool,
}

async fn heartbeats_in(
    mut sub: async_nats::Subscriber,
    to: mpsc::UnboundedSender<Peer>,
    bye: bool,
) {
    while let Some(msg) = sub.next().await {
        let Ok(instance) = std::str::from_utf8(&msg.payload) else {
            continue;
        };
        tell(&to, &Arc::from(instance), bye);
    }
}

/// Tell the main loop that `instance` was heard from.
fn heard(to: &mpsc::UnboundedSender<Peer>, instance: &Arc<str>) {
    tell(to, instance, false);
}

/// Tell the main loop about `instance` (`name#incarnation`): alive, or saying goodbye.
fn tell(to: &mpsc::UnboundedSender<Peer>, instance: &Arc<str>, bye: bool) {
    let name = instance.rsplit_once('#').map_or(&**instance, |(n, _)| n);
    let _ = to.send(Peer {
        name: name.to_string(),
        instance: instance.clone(),
        bye,
    });
}

async fn requests_in(
    mut sub: async_nats::Subscriber,
    downs: Downs,
    me: String,
    peers: mpsc::UnboundedSender<Peer>,
) {
    while let Some(msg) = sub.next().await {
        if let Some(origin) = origin_of(&msg) {
            heard(&peers, &origin);
        }
        let (Some(reply), Ok(topic)) = (msg.reply.as_ref(), std::str::from_utf8(&msg.payload))
        else {
            continue;
        };
        if origin_of(&msg).as_deref() == Some(me.as_str()) {
            continue; // our own request (no_echo covers it; checked anyway)
        }
        let req = Down::StateRequest {
            topic: Arc::from(topic),
            reply: Arc::from(reply.as_str()),
        };
        send_all(&downs, req).await;
    }
}

async fn seeds_in(
    mut sub: async_nats::Subscriber,
    downs: Downs,
    peers: mpsc::UnboundedSender<Peer>,
) {
    while let Some(msg) = sub.next().await {
        let Some(origin) = origin_of(&msg) else {
            continue;
        };
        heard(&peers, &origin);
        let b = &msg.payload[..];
        let Some(len) = b
            .get(..4)
            .map(|l| u32::from_le_bytes(l.try_into().unwrap()) as usize)
        else {
            continue;
        };
        let (Some(topic), Some(diff)) = (b.get(4..4 + len), b.get(4 + len..)) else {
            continue;
        };
        let (Ok(topic), Ok(diff)) = (std::str::from_utf8(topic), std::str::from_utf8(diff)) else {
            continue;
        };
        let seed = Down::Seed {
            topic: Arc::from(topic),
            origin,
            diff: Arc::from(diff),
        };
        send_all(&downs, seed).await;
    }
}

async fn disconnects_in(mut sub: async_nats::Subscriber, downs: Downs) {
    while let Some(msg) = sub.next().await {
        if let Ok(id) = std::str::from_utf8(&msg.payload) {
            send_all(&downs, Down::Disconnect(Arc::from(id))).await;
        }
    }
}

/// Hand `item` to every core, in order, waiting for room where a core is behind.
async fn send_all(downs: &Downs, item: Down) {
    for tx in downs.iter() {
        let mut item = item.clone();
        loop {
            // `try_send` wakes the core either way.
            match tx.try_send(item) {
                Ok(()) => break,
                Err(std::sync::mpsc::TrySendError::Full(back)) => {
                    // The core is behind: let it catch up (order is kept).
                    item = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
            }
        }
    }
}

async fn connect(
    cfg: &Cluster,
    node: &str,
    state: Arc<State>,
    resync: mpsc::UnboundedSender<()>,
) -> Result<async_nats::Client, String> {
    let urls = cfg.nats_url.join(",");
    let st = state.clone();
    let shown = urls.clone();
    let mut opts = async_nats::ConnectOptions::new()
        .name(node)
        .no_echo() // this node's own publications were delivered here already
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(2))
        .subscription_capacity(65_536)
        .event_callback(move |event| {
            let st = st.clone();
            let urls = shown.clone();
            let resync = resync.clone();
            async move {
                match event {
                    async_nats::Event::Connected => {
                        st.connects.fetch_add(1, Ordering::Relaxed);
                        st.set(true, "");
                        info!(%urls, "cluster: connected to NATS");
                        let _ = resync.send(());
                    }
                    async_nats::Event::SlowConsumer(sid) => {
                        warn!(
                            sid,
                            "cluster: NATS dropped messages for this node; resyncing presence"
                        );
                        let _ = resync.send(());
                    }
                    async_nats::Event::Disconnected => {
                        st.set(false, &format!("cluster: NATS unreachable ({urls})"));
                        warn!(%urls, "cluster: lost NATS; local delivery goes on");
                    }
                    async_nats::Event::Closed => st.set(false, "cluster: NATS connection closed"),
                    other => info!(event = %other, "cluster: NATS event"),
                }
            }
        });
    if let (Some(user), Some(pass)) = (&cfg.user, &cfg.password) {
        opts = opts.user_and_password(user.clone(), pass.clone());
    }
    if let Some(token) = &cfg.token {
        opts = opts.token(token.clone());
    }
    if let Some(path) = &cfg.creds_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|e| format!("creds_file {}: {e}", path.display()))?;
    }
    if let Some(ca) = &cfg.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if cfg.tls_required {
        opts = opts.require_tls(true);
    }
    state.set(false, &format!("cluster: connecting to NATS ({urls})"));
    let addrs: Vec<async_nats::ServerAddr> = cfg
        .nats_url
        .iter()
        .map(|u| u.parse().map_err(|e| format!("nats_url {u}: {e}")))
        .collect::<Result<_, _>>()?;
    opts.connect(addrs).await.map_err(|e| e.to_string())
}

/// Hand every message of one subscription to every core, in order. The sender counts as heard
/// from (at most a few times a second), so that a node is known from its first message, not
/// only from its first heartbeat.
async fn forward(
    mut sub: async_nats::Subscriber,
    downs: Downs,
    state: Arc<State>,
    peers: mpsc::UnboundedSender<Peer>,
) {
    let mut last: Option<(Arc<str>, tokio::time::Instant)> = None;
    while let Some(msg) = sub.next().await {
        state.received.fetch_add(1, Ordering::Relaxed);
        let origin = origin_of(&msg).unwrap_or_else(|| Arc::from("?"));
        let now = tokio::time::Instant::now();
        let stale = last.as_ref().is_none_or(|(o, t)| {
            *o != origin || now.duration_since(*t) > Duration::from_millis(250)
        });
        if stale {
            heard(&peers, &origin);
            last = Some((origin.clone(), now));
        }
        let bytes: Arc<[u8]> = Arc::from(&msg.payload[..]);
        send_all(&downs, Down::Publication { bytes, origin }).await;
    }
}

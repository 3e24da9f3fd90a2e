//! The bridge thread and the cores' ends of it (see the module documentation of `cluster`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use futures_lite::StreamExt;
use tokio::sync::mpsc;
use tracing::{info, warn};

use crate::cluster::subject;
use crate::config::Cluster;

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
    Publish { topic: Box<str>, bytes: Arc<[u8]> },
}

enum Interest {
    On(Box<str>),
    Off(Box<str>),
}

/// One core's end of the bridge: publish, say which topics it has subscribers for, and take what
/// other nodes published. Never blocks.
pub struct Link {
    up: mpsc::Sender<Up>,
    interest: mpsc::UnboundedSender<Interest>,
    down: std::sync::mpsc::Receiver<Arc<[u8]>>,
    waker: Arc<AtomicWaker>,
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

    /// This core has subscribers of `topic` now (`on`), or no more.
    pub fn interest(&self, topic: &str, on: bool) {
        let i = if on {
            Interest::On(topic.into())
        } else {
            Interest::Off(topic.into())
        };
        let _ = self.interest.send(i);
    }

    /// The next publication another node sent (for this core to deliver).
    pub fn poll_recv(&self, cx: &Context<'_>) -> Poll<Arc<[u8]>> {
        if let Ok(b) = self.down.try_recv() {
            return Poll::Ready(b);
        }
        self.waker.register(cx.waker());
        match self.down.try_recv() {
            Ok(b) => Poll::Ready(b),
            Err(_) => Poll::Pending,
        }
    }
}

/// The bridge thread; stopped (after a flush) when dropped or by [`Bridge::stop`].
pub struct Bridge {
    pub state: Arc<State>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Bridge {
    /// Start the bridge for `cores` cores; each core's down queue holds `down` publications.
    pub fn start(cfg: &Cluster, cores: usize, down: usize) -> std::io::Result<(Bridge, Vec<Link>)> {
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
            let (tx, rx) = std::sync::mpsc::sync_channel(down.max(1));
            let waker = Arc::new(AtomicWaker::new());
            downs.push((tx, waker.clone()));
            links.push(Link {
                up: up_tx.clone(),
                interest: int_tx.clone(),
                down: rx,
                waker,
                state: state.clone(),
            });
        }
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let (cfg, st) = (cfg.clone(), state.clone());
        let thread = std::thread::Builder::new()
            .name("corecast-cluster".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        warn!(error = %e, "cluster: cannot start the bridge's runtime");
                        return;
                    }
                };
                rt.block_on(run(cfg, node, st, up_rx, int_rx, Arc::new(downs), stop_rx));
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

type Downs = Arc<Vec<(std::sync::mpsc::SyncSender<Arc<[u8]>>, Arc<AtomicWaker>)>>;

async fn run(
    cfg: Cluster,
    node: String,
    state: Arc<State>,
    mut up: mpsc::Receiver<Up>,
    mut interest: mpsc::UnboundedReceiver<Interest>,
    downs: Downs,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    let client = match connect(&cfg, &node, state.clone()).await {
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
    // Topic -> (cores interested, the subscription's task).
    let mut subs: HashMap<Box<str>, (usize, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            Some(i) = interest.recv() => match i {
                Interest::On(topic) => {
                    if let Some((n, _)) = subs.get_mut(&topic) {
                        *n += 1;
                        continue;
                    }
                    let subject = subject::of_topic(&prefix, &topic);
                    match client.subscribe(subject).await {
                        Ok(sub) => {
                            let task = tokio::spawn(forward(sub, downs.clone(), state.clone()));
                            subs.insert(topic, (1, task));
                            // The gauge counts subscriptions NATS has taken (when connected).
                            if state.connected() {
                                let _ = tokio::time::timeout(
                                    Duration::from_secs(1),
                                    client.flush(),
                                )
                                .await;
                            }
                            state.subscriptions.store(subs.len() as u64, Ordering::Relaxed);
                        }
                        Err(e) => warn!(error = %e, %topic, "cluster: subscribe failed"),
                    }
                }
                Interest::Off(topic) => {
                    if let Some((n, _)) = subs.get_mut(&topic) {
                        *n -= 1;
                        if *n == 0
                            && let Some((_, task)) = subs.remove(&topic)
                        {
                            task.abort(); // drops the subscriber: NATS is told to unsubscribe
                        }
                        state.subscriptions.store(subs.len() as u64, Ordering::Relaxed);
                    }
                }
            },
            Some(Up::Publish { topic, bytes }) = up.recv() => {
                if !state.connected() {
                    state.unreachable.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let subject = subject::of_topic(&prefix, &topic);
                match client.publish(subject, bytes::Bytes::copy_from_slice(&bytes)).await {
                    Ok(()) => state.published.fetch_add(1, Ordering::Relaxed),
                    Err(_) => state.unreachable.fetch_add(1, Ordering::Relaxed),
                };
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), client.flush()).await;
    for (_, (_, task)) in subs {
        task.abort();
    }
}

async fn connect(
    cfg: &Cluster,
    node: &str,
    state: Arc<State>,
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
            async move {
                match event {
                    async_nats::Event::Connected => {
                        st.connects.fetch_add(1, Ordering::Relaxed);
                        st.set(true, "");
                        info!(%urls, "cluster: connected to NATS");
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

/// Hand every message of one subscription to every core, in order.
async fn forward(mut sub: async_nats::Subscriber, downs: Downs, state: Arc<State>) {
    while let Some(msg) = sub.next().await {
        state.received.fetch_add(1, Ordering::Relaxed);
        let bytes: Arc<[u8]> = Arc::from(&msg.payload[..]);
        for (tx, waker) in downs.iter() {
            let mut item = bytes.clone();
            loop {
                match tx.try_send(item) {
                    Ok(()) => break,
                    Err(std::sync::mpsc::TrySendError::Full(back)) => {
                        // The core is behind: let it catch up (order is kept).
                        item = back;
                        waker.wake();
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err(std::sync::mpsc::TrySendError::Disconnected(_)) => break,
                }
            }
            waker.wake();
        }
    }
}

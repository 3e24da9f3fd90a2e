//! Inside a worker: the state its connections share, and one connection's life (open and join,
//! then hold: heartbeats, counting broadcasts, until told to stop or dropped by the server).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::{OwnedSemaphorePermit, watch};
use tokio::time::{Instant, interval_at, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::Target;
use crate::client::{self, Ws};
use crate::hist::{self, Hist};
use crate::proto::{self, BENCH_EVENT, Incoming, Stamp};
use crate::tally::{Seen, Streams};
use crate::worker::{Progress, Rx, Spec};

/// How long a closing socket waits for the server's close frame and FIN.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

/// Lock a mutex, ignoring poisoning (a panicked holder leaves counters that are still usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *lock(map).entry(key).or_insert(0) += 1;
}

/// Counters of one worker process. The worker runs one thread, so the mutexes never contend.
#[derive(Default)]
pub struct Counters {
    pub attempted: AtomicU64,
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    pub open: AtomicU64,
    pub settled: AtomicU64,
    pub alive: AtomicU64,
    pub not_attempted: AtomicU64,
    pub heartbeats_sent: AtomicU64,
    pub heartbeats_ok: AtomicU64,
    pub first_attempt_ns: AtomicU64,
    pub last_join_ns: AtomicU64,
    pub last_measured_rx_ns: AtomicU64,
    pub rx_total: AtomicU64,
    pub rx_measured_unique: AtomicU64,
    pub rx_duplicated: AtomicU64,
    pub rx_warmup_duplicated: AtomicU64,
    pub rx_reordered: AtomicU64,
    pub rx_warmup: AtomicU64,
    pub rx_foreign: AtomicU64,
    pub rx_malformed: AtomicU64,
    pub rx_other: AtomicU64,
    pub ramp_done: AtomicBool,
}

pub struct Shared {
    pub spec: Spec,
    pub target: Target,
    pub c: Counters,
    pub failures: Mutex<BTreeMap<String, u64>>,
    pub drops: Mutex<BTreeMap<String, u64>>,
    pub joined_per_topic: Vec<AtomicU64>,
    pub connect_hist: Mutex<Hist>,
    pub delivery_hist: Mutex<Hist>,
    /// Deliveries whose publisher socket is on the subscriber's server core.
    pub same_core_hist: Mutex<Hist>,
    /// Deliveries that crossed the server's core mesh.
    pub cross_core_hist: Mutex<Hist>,
    pub stop: watch::Receiver<bool>,
}

impl Shared {
    pub fn new(spec: Spec, stop: watch::Receiver<bool>) -> anyhow::Result<Shared> {
        anyhow::ensure!(!spec.topics.is_empty(), "a worker needs at least one topic");
        let target = Target::from_url(&spec.url)?;
        let c = Counters::default();
        c.first_attempt_ns.store(u64::MAX, Relaxed);
        Ok(Shared {
            joined_per_topic: spec.topics.iter().map(|_| AtomicU64::new(0)).collect(),
            spec,
            target,
            c,
            failures: Mutex::default(),
            drops: Mutex::default(),
            connect_hist: Mutex::new(hist::new_latency()),
            delivery_hist: Mutex::new(hist::new_latency()),
            same_core_hist: Mutex::new(hist::new_latency()),
            cross_core_hist: Mutex::new(hist::new_latency()),
            stop,
        })
    }

    pub fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    pub fn progress(&self) -> Progress {
        let c = &self.c;
        Progress {
            attempted: c.attempted.load(Relaxed),
            joined: c.joined.load(Relaxed),
            failed: c.failed.load(Relaxed),
            open: c.open.load(Relaxed),
            settled: c.settled.load(Relaxed),
            rx_total: c.rx_total.load(Relaxed),
            rx_measured: c.rx_measured_unique.load(Relaxed),
        }
    }

    pub fn rx(&self) -> Rx {
        let c = &self.c;
        Rx {
            total: c.rx_total.load(Relaxed),
            measured_unique: c.rx_measured_unique.load(Relaxed),
            duplicated: c.rx_duplicated.load(Relaxed),
            warmup_duplicated: c.rx_warmup_duplicated.load(Relaxed),
            reordered: c.rx_reordered.load(Relaxed),
            warmup: c.rx_warmup.load(Relaxed),
            foreign: c.rx_foreign.load(Relaxed),
            malformed: c.rx_malformed.load(Relaxed),
            other: c.rx_other.load(Relaxed),
        }
    }

    /// Account one text message received by a connection joined to topic `topic` and owned by
    /// server core `core`.
    fn on_text(&self, text: &str, topic: usize, core: Option<u32>, streams: &mut Streams) {
        let c = &self.c;
        let (wire_topic, payload) = match proto::parse(text) {
            Ok(Incoming::Event {
                topic,
                event,
                payload,
            }) if event == BENCH_EVENT => (topic, payload),
            Ok(Incoming::Reply { topic, ok, .. }) if topic == "phoenix" && ok => {
                c.heartbeats_ok.fetch_add(1, Relaxed);
                return;
            }
            Ok(_) => {
                c.rx_other.fetch_add(1, Relaxed);
                return;
            }
            Err(_) => {
                c.rx_malformed.fetch_add(1, Relaxed);
                return;
            }
        };
        let Ok(st) = Stamp::decode(payload) else {
            c.rx_malformed.fetch_add(1, Relaxed);
            return;
        };
        c.rx_total.fetch_add(1, Relaxed);
        if st.t as usize != topic || self.spec.topics.get(topic).is_none_or(|t| *t != wire_topic) {
            c.rx_foreign.fetch_add(1, Relaxed);
            return;
        }
        let seen = streams.insert(st.p, st.t, st.s);
        if seen == Seen::Reordered {
            c.rx_reordered.fetch_add(1, Relaxed);
        }
        match (seen, st.measured()) {
            (Seen::OutOfRange, _) => {
                c.rx_malformed.fetch_add(1, Relaxed);
            }
            (Seen::Dup, true) => {
                c.rx_duplicated.fetch_add(1, Relaxed);
            }
            (Seen::Dup, false) => {
                c.rx_warmup_duplicated.fetch_add(1, Relaxed);
            }
            (_, false) => {
                c.rx_warmup.fetch_add(1, Relaxed);
            }
            (_, true) => {
                let now = proto::now_ns();
                let ns = now.saturating_sub(st.ts);
                c.rx_measured_unique.fetch_add(1, Relaxed);
                c.last_measured_rx_ns.fetch_max(now, Relaxed);
                hist::record_ns(&mut lock(&self.delivery_hist), ns);
                if let (Some(mine), Some(theirs)) = (core, st.c) {
                    let h = if mine == theirs {
                        &self.same_core_hist
                    } else {
                        &self.cross_core_hist
                    };
                    hist::record_ns(&mut lock(h), ns);
                }
            }
        }
    }
}

/// Connection `i` (global index): open and join, then hold until stopped.
pub async fn connection(sh: Arc<Shared>, i: usize, permit: OwnedSemaphorePermit) {
    let spec = &sh.spec;
    let topic = i % spec.topics.len();
    let source = match spec.source_ips.len() {
        0 => None,
        n => Some(spec.source_ips[i % n]),
    };
    let start = Instant::now();
    sh.c.first_attempt_ns.fetch_min(proto::now_ns(), Relaxed);
    let limit = Duration::from_millis(spec.connect_timeout_ms);
    let topics = std::slice::from_ref(&spec.topics[topic]);
    let opened = timeout(limit, client::open(&sh.target, source, topics)).await;
    drop(permit);
    match opened {
        Ok(Ok(client::Opened { ws, core })) => {
            let elapsed = start.elapsed().as_nanos() as u64;
            hist::record_ns(&mut lock(&sh.connect_hist), elapsed);
            sh.c.last_join_ns.fetch_max(proto::now_ns(), Relaxed);
            sh.c.joined.fetch_add(1, Relaxed);
            sh.c.open.fetch_add(1, Relaxed);
            sh.joined_per_topic[topic].fetch_add(1, Relaxed);
            sh.c.settled.fetch_add(1, Relaxed);
            hold(&sh, ws, topic, core).await;
            sh.c.open.fetch_sub(1, Relaxed);
        }
        Ok(Err(e)) => {
            bump(&sh.failures, e.kind);
            sh.c.failed.fetch_add(1, Relaxed);
            sh.c.settled.fetch_add(1, Relaxed);
        }
        Err(_) => {
            bump(&sh.failures, "timeout".to_string());
            sh.c.failed.fetch_add(1, Relaxed);
            sh.c.settled.fetch_add(1, Relaxed);
        }
    }
    sh.c.alive.fetch_sub(1, Relaxed);
}

/// Hold an open, joined socket: heartbeat like phoenix.js, account what arrives, and close
/// politely when the worker stops. A socket the server drops is counted by how it ended.
async fn hold(sh: &Shared, mut ws: Ws, topic: usize, core: Option<u32>) {
    let mut stop = sh.stop.clone();
    let every = Duration::from_secs(sh.spec.heartbeat_secs.max(1));
    let mut beat = interval_at(Instant::now() + every, every);
    let mut next_ref = 2u64; // ref 1 was the join
    let mut streams = Streams::default();
    loop {
        if *stop.borrow_and_update() {
            client::close_politely(&mut ws, CLOSE_WAIT).await;
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {
                client::close_politely(&mut ws, CLOSE_WAIT).await;
                return;
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => sh.on_text(t.as_str(), topic, core, &mut streams),
                Some(Ok(Message::Close(f))) => {
                    bump(&sh.drops, client::close_label(f.as_ref()));
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    bump(&sh.drops, client::read_error_label(&e));
                    return;
                }
                None => {
                    bump(&sh.drops, "eof".to_string());
                    return;
                }
            },
            _ = beat.tick() => {
                let hb = proto::heartbeat(next_ref);
                next_ref += 1;
                if ws.send(Message::text(hb)).await.is_err() {
                    bump(&sh.drops, "heartbeat_send".to_string());
                    return;
                }
                sh.c.heartbeats_sent.fetch_add(1, Relaxed);
            }
        }
    }
}

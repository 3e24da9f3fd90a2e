//! Publishers for the `broadcast` scenario, run in the parent process: P publishers at R msgs/s
//! in total, each over a socket (join, then push event "bench") or `POST /api/broadcast`. Every
//! message is stamped (send time, publisher, topic, sequence, measured or warm-up).

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Target, Via};
use crate::client::{self, Ws};
use crate::hist::{self, Hist};
use crate::proto::{self, BENCH_EVENT, Incoming, Stamp};
use crate::session::lock;

pub struct Plan {
    pub target: Target,
    pub via: Via,
    pub publishers: usize,
    pub topics: Vec<String>,
    pub rate: f64,
    pub warmup: Duration,
    pub measure: Duration,
    pub payload_bytes: usize,
    pub source: Option<Ipv4Addr>,
}

/// The topics publisher `p` of `publishers` sends to: its share when there are at least as
/// many topics as publishers, else one topic shared with others.
pub fn publisher_topics(p: usize, publishers: usize, topics: usize) -> Vec<usize> {
    if topics >= publishers {
        (0..topics).filter(|t| t % publishers == p).collect()
    } else {
        vec![p % topics.max(1)]
    }
}

struct State {
    sent_measured: Vec<AtomicU64>,
    sent_warmup: Vec<AtomicU64>,
    finished: AtomicU64,
    copies: AtomicU64,
    unacked: AtomicU64,
    opened: AtomicU64,
    api_reconnects: AtomicU64,
    first_measured_ns: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
    /// Publish latency of measured messages: push -> phx_reply, or the whole POST.
    latency: Mutex<Hist>,
}

impl State {
    fn error(&self, kind: String) {
        *lock(&self.errors).entry(kind).or_insert(0) += 1;
    }

    fn record(&self, since: Instant) {
        hist::record_ns(&mut lock(&self.latency), since.elapsed().as_nanos() as u64);
    }

    fn count(&self, topic: usize, measured: bool, add: bool) {
        let c = if measured {
            &self.sent_measured[topic]
        } else {
            &self.sent_warmup[topic]
        };
        if add {
            c.fetch_add(1, Relaxed);
        } else {
            c.fetch_sub(1, Relaxed);
        }
    }
}

/// When and what one publisher sends.
#[derive(Clone)]
struct Schedule {
    p: usize,
    /// The server core of this publisher's socket (socket publishers on corecast).
    core: Option<u32>,
    topics: Vec<usize>,
    names: Vec<String>,
    start: Instant,
    measure_at: Instant,
    end: Instant,
    interval: f64,
    offset: f64,
    pad: usize,
}

impl Schedule {
    fn due(&self, j: u64) -> Instant {
        self.start + Duration::from_secs_f64((j as f64 + self.offset) * self.interval)
    }

    /// Message j: (index into this publisher's topics, topic, measured).
    fn message(&self, j: u64) -> (usize, usize, bool) {
        let k = (j % self.topics.len() as u64) as usize;
        (k, self.topics[k], self.due(j) >= self.measure_at)
    }
}

/// Publishers under way.
pub struct Running {
    state: Arc<State>,
    halt: watch::Sender<bool>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    publishers: usize,
    pub measure_start_ns: u64,
    pub measure_secs: f64,
}

/// What the publishers did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub publishers_opened: u64,
    /// Measured messages accepted, per topic.
    pub sent_measured: Vec<u64>,
    /// Warm-up messages accepted, per topic.
    pub sent_warmup: Vec<u64>,
    pub errors: BTreeMap<String, u64>,
    /// Pushes never answered by a `phx_reply` (socket publishers).
    pub unacked: u64,
    /// New keep-alive connections API publishers had to open after their first (the server
    /// closed one): each may land on another core, and order is kept within a connection.
    pub api_reconnects: u64,
    /// Copies of their own broadcasts received by publisher sockets (sender included).
    pub copies_received: u64,
    /// Publish latency of measured messages: push -> phx_reply (socket) or the whole
    /// `POST /api/broadcast` on the publisher's keep-alive connection (api; a reconnect, when
    /// the server closed it, included).
    pub latency: hist::Percentiles,
    #[serde(skip)]
    pub latency_hist: Hist,
}

/// Open the publishers (sockets are connected and joined first), then start sending.
pub async fn start(plan: Plan) -> Running {
    let zeros = || plan.topics.iter().map(|_| AtomicU64::new(0)).collect();
    let state = Arc::new(State {
        sent_measured: zeros(),
        sent_warmup: zeros(),
        finished: AtomicU64::new(0),
        copies: AtomicU64::new(0),
        unacked: AtomicU64::new(0),
        opened: AtomicU64::new(0),
        api_reconnects: AtomicU64::new(0),
        first_measured_ns: AtomicU64::new(u64::MAX),
        errors: Mutex::default(),
        latency: Mutex::new(hist::new_latency()),
    });
    let mut sockets: Vec<Option<client::Opened>> = Vec::new();
    for p in 0..plan.publishers {
        if plan.via == Via::Api {
            state.opened.fetch_add(1, Relaxed);
            sockets.push(None);
            continue;
        }
        let names: Vec<String> = publisher_topics(p, plan.publishers, plan.topics.len())
            .into_iter()
            .map(|t| plan.topics[t].clone())
            .collect();
        let opened = timeout(
            Duration::from_secs(15),
            client::open(&plan.target, plan.source, &names),
        )
        .await;
        match opened {
            Ok(Ok(opened)) => {
                state.opened.fetch_add(1, Relaxed);
                sockets.push(Some(opened));
            }
            Ok(Err(e)) => {
                state.error(format!("publisher_{}", e.kind));
                sockets.push(None);
            }
            Err(_) => {
                state.error("publisher_open_timeout".into());
                sockets.push(None);
            }
        }
    }
    let (stop, stop_rx) = watch::channel(false);
    let (halt, halt_rx) = watch::channel(false);
    let start = Instant::now() + Duration::from_millis(50);
    let measure_at = start + plan.warmup;
    let end = measure_at + plan.measure;
    let per_pub_rate = plan.rate / plan.publishers as f64;
    let mut tasks = Vec::new();
    for (p, opened) in sockets.into_iter().enumerate() {
        let topics = publisher_topics(p, plan.publishers, plan.topics.len());
        let (ws, core) = match opened {
            Some(o) => (Some(o.ws), o.core),
            None => (None, None),
        };
        let sched = Schedule {
            p,
            core,
            names: topics.iter().map(|t| plan.topics[*t].clone()).collect(),
            topics,
            start,
            measure_at,
            end,
            interval: 1.0 / per_pub_rate,
            offset: p as f64 / plan.publishers as f64,
            pad: plan.payload_bytes,
        };
        let (st, rx, hx) = (state.clone(), stop_rx.clone(), halt_rx.clone());
        tasks.push(match (plan.via, ws) {
            (Via::Socket, Some(ws)) => tokio::spawn(socket_publisher(st, sched, ws, hx, rx)),
            (Via::Socket, None) => {
                state.finished.fetch_add(1, Relaxed);
                continue;
            }
            (Via::Api, _) => tokio::spawn(api_publisher(st, sched, plan.target.clone(), hx)),
        });
    }
    let now_ns = proto::now_ns();
    Running {
        state,
        halt,
        stop,
        tasks,
        publishers: plan.publishers,
        measure_start_ns: now_ns + (measure_at - Instant::now()).as_nanos() as u64,
        measure_secs: plan.measure.as_secs_f64(),
    }
}

impl Running {
    /// Messages accepted so far (warm-up and measured).
    pub fn sent(&self) -> u64 {
        let warm: u64 = self.state.sent_warmup.iter().map(|a| a.load(Relaxed)).sum();
        warm + self.sent_measured().iter().sum::<u64>()
    }

    pub fn sent_measured(&self) -> Vec<u64> {
        self.state
            .sent_measured
            .iter()
            .map(|a| a.load(Relaxed))
            .collect()
    }

    /// Every publisher has sent its last message and had its answers (or given up on them).
    pub fn schedules_done(&self) -> bool {
        self.state.finished.load(Relaxed) >= self.publishers as u64
    }

    /// Stop sending now (publishers behind schedule give up the rest of it).
    pub fn halt(&self) {
        self.halt.send_replace(true);
    }

    /// When the first measured message went out, unix nanoseconds (None if none did).
    pub fn first_measured_ns(&self) -> Option<u64> {
        let v = self.state.first_measured_ns.load(Relaxed);
        (v != u64::MAX).then_some(v)
    }

    /// Stop the publishers (socket readers too) and collect what they did.
    pub async fn stop(self) -> Outcome {
        self.halt.send_replace(true);
        self.stop.send_replace(true);
        for t in self.tasks {
            let _ = timeout(Duration::from_secs(5), t).await;
        }
        let s = &self.state;
        let latency = lock(&s.latency).clone();
        Outcome {
            publishers_opened: s.opened.load(Relaxed),
            sent_measured: s.sent_measured.iter().map(|a| a.load(Relaxed)).collect(),
            sent_warmup: s.sent_warmup.iter().map(|a| a.load(Relaxed)).collect(),
            errors: lock(&s.errors).clone(),
            unacked: s.unacked.load(Relaxed),
            api_reconnects: s.api_reconnects.load(Relaxed),
            copies_received: s.copies.load(Relaxed),
            latency: hist::percentiles(&latency),
            latency_hist: latency,
        }
    }
}

fn stamp(st: &State, sched: &Schedule, topic: usize, seq: u64, measured: bool) -> String {
    let ts = proto::now_ns();
    if measured {
        st.first_measured_ns.fetch_min(ts, Relaxed);
    }
    Stamp {
        ts,
        p: sched.p as u32,
        t: topic as u32,
        s: seq,
        m: u8::from(measured),
        c: sched.core,
    }
    .encode(sched.pad)
}

/// Push on schedule; read replies (a refused push is taken back out of the sent counts) and
/// the copies of our own broadcasts; keep reading after the last push until stopped.
async fn socket_publisher(
    st: Arc<State>,
    sched: Schedule,
    mut ws: Ws,
    mut halt: watch::Receiver<bool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut pending: HashMap<u64, (usize, bool, Instant)> = HashMap::new();
    let mut seq = vec![0u64; sched.topics.len()];
    let (mut j, mut finished) = (0u64, false);
    let mut over_at: Option<Instant> = None;
    loop {
        let due = sched.due(j);
        // The window is wall-clock: a publisher behind schedule does not run past its end.
        let now = Instant::now();
        if over_at.is_none() && (due >= sched.end || now >= sched.end || *halt.borrow()) {
            over_at = Some(now);
        }
        if !finished
            && over_at.is_some_and(|t| pending.is_empty() || t.elapsed() > Duration::from_secs(3))
        {
            finished = true;
            st.unacked.fetch_add(pending.len() as u64, Relaxed);
            pending.clear();
            st.finished.fetch_add(1, Relaxed);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => break,
            _ = halt.changed(), if over_at.is_none() => {}
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match proto::parse(t.as_str()) {
                    Ok(Incoming::Reply { msg_ref: Some(r), ok, .. }) => {
                        let entry = r.parse::<u64>().ok().and_then(|r| pending.remove(&r));
                        match (entry, ok) {
                            (Some((_, true, at)), true) => st.record(at),
                            (Some((topic, measured, _)), false) => {
                                st.error("push_refused".into());
                                st.count(topic, measured, false);
                            }
                            _ => {}
                        }
                    }
                    Ok(Incoming::Event { event, .. }) if event == BENCH_EVENT => {
                        st.copies.fetch_add(1, Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => st.error("publisher_malformed".into()),
                },
                Some(Ok(Message::Close(f))) => {
                    st.error(format!("publisher_{}", client::close_label(f.as_ref())));
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    st.error(format!("publisher_{}", client::read_error_label(&e)));
                    break;
                }
                None => {
                    st.error("publisher_eof".into());
                    break;
                }
            },
            _ = sleep_until(due), if over_at.is_none() => {
                let (k, topic, measured) = sched.message(j);
                let msg_ref = 1_000_000 + j;
                let at = Instant::now();
                let payload = stamp(&st, &sched, topic, seq[k], measured);
                let text = proto::push(k as u64 + 1, msg_ref, &sched.names[k], BENCH_EVENT, &payload);
                seq[k] += 1;
                j += 1;
                if ws.send(Message::text(text)).await.is_err() {
                    st.error("publisher_send".into());
                    break;
                }
                st.count(topic, measured, true);
                pending.insert(msg_ref, (topic, measured, at));
            }
            _ = sleep(Duration::from_millis(50)), if over_at.is_some() && !finished => {}
        }
    }
    if !finished {
        st.unacked.fetch_add(pending.len() as u64, Relaxed);
        st.finished.fetch_add(1, Relaxed);
    }
    client::close_politely(&mut ws, Duration::from_secs(3)).await;
}

/// One `POST /api/broadcast` per message, on schedule, all on one keep-alive connection (a new
/// one only when the server closed it): the server takes them in order on one core, so they
/// arrive in order everywhere. Only 2xx answers count as sent.
async fn api_publisher(
    st: Arc<State>,
    sched: Schedule,
    target: Target,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn = crate::http::KeepAlive::new(target.addr);
    let mut seq = vec![0u64; sched.topics.len()];
    let mut j = 0u64;
    while sched.due(j) < sched.end {
        tokio::select! {
            _ = stop.changed() => break,
            _ = sleep_until(sched.due(j)) => {}
        }
        let (k, topic, measured) = sched.message(j);
        let s = seq[k];
        seq[k] += 1;
        j += 1;
        let body = || {
            let payload = stamp(&st, &sched, topic, s, measured);
            Some(proto::api_broadcast(&sched.names[k], BENCH_EVENT, &payload).into_bytes())
        };
        let limit = Duration::from_secs(5);
        let at = Instant::now();
        match conn
            .request_with("POST", "/api/broadcast", body, limit)
            .await
        {
            Ok((code, _)) if (200..300).contains(&code) => {
                st.count(topic, measured, true);
                if measured {
                    st.record(at);
                }
            }
            Ok((code, _)) => st.error(format!("api_http_{code}")),
            Err(_) => st.error("api_io".into()),
        }
    }
    st.api_reconnects.fetch_add(conn.reconnects, Relaxed);
    st.finished.fetch_add(1, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_are_shared_out() {
        assert_eq!(publisher_topics(0, 4, 10), vec![0, 4, 8]);
        assert_eq!(publisher_topics(3, 4, 10), vec![3, 7]);
        assert_eq!(publisher_topics(2, 4, 1), vec![0]);
        assert_eq!(publisher_topics(3, 4, 2), vec![1]);
        let all: Vec<usize> = (0..3).flat_map(|p| publisher_topics(p, 3, 7)).collect();
        let mut sorted = all.clone();
        sorted.sort();
        assert_eq!(sorted, (0..7).collect::<Vec<_>>());
    }
}

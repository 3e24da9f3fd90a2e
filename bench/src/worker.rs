//! Worker processes: the parent re-executes itself with `--worker`, writes a [`Spec`] as the
//! first line of the worker's stdin, and reads [`Event`]s (one JSON object a line) from its
//! stdout. The worker opens its share of connections at its share of the rate, reports progress,
//! says when it is ready, holds until the parent writes `stop` (or closes stdin, or the spec's
//! lifetime runs out), closes its sockets and reports its partial results.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::hist;
use crate::session::{self, Shared, lock};

/// What one worker does.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    pub index: usize,
    pub url: String,
    pub source_ips: Vec<Ipv4Addr>,
    /// Global index of this worker's first connection; connection i joins topic i mod T and
    /// binds source address i mod len(source_ips).
    pub first: usize,
    pub count: usize,
    pub topics: Vec<String>,
    /// Connection attempts per second (0: as fast as `max_inflight` allows).
    pub rate: f64,
    pub max_inflight: usize,
    pub connect_timeout_ms: u64,
    pub heartbeat_secs: u64,
    pub progress_ms: u64,
    /// The worker stops itself this long after it starts, whatever the parent says.
    pub lifetime_secs: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub attempted: u64,
    pub joined: u64,
    pub failed: u64,
    pub open: u64,
    pub settled: u64,
    pub rx_total: u64,
    pub rx_measured: u64,
}

impl Progress {
    pub fn add(&mut self, o: &Progress) {
        self.attempted += o.attempted;
        self.joined += o.joined;
        self.failed += o.failed;
        self.open += o.open;
        self.settled += o.settled;
        self.rx_total += o.rx_total;
        self.rx_measured += o.rx_measured;
    }
}

/// Broadcast messages received, by what they were.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Rx {
    pub total: u64,
    pub measured_unique: u64,
    pub duplicated: u64,
    pub warmup_duplicated: u64,
    pub reordered: u64,
    pub warmup: u64,
    pub foreign: u64,
    pub malformed: u64,
    pub other: u64,
}

impl Rx {
    pub fn add(&mut self, o: &Rx) {
        self.total += o.total;
        self.measured_unique += o.measured_unique;
        self.duplicated += o.duplicated;
        self.warmup_duplicated += o.warmup_duplicated;
        self.reordered += o.reordered;
        self.warmup += o.warmup;
        self.foreign += o.foreign;
        self.malformed += o.malformed;
        self.other += o.other;
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ready {
    pub progress: Progress,
    pub joined_per_topic: Vec<u64>,
}

/// A worker's partial results.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    pub index: usize,
    pub progress: Progress,
    pub not_attempted: u64,
    pub failures: BTreeMap<String, u64>,
    /// Sockets that ended before the worker stopped, by how (close code, eof, error).
    pub drops: BTreeMap<String, u64>,
    pub joined_per_topic: Vec<u64>,
    /// Connect + upgrade + join latency, microseconds, V2-serialised and base64.
    pub connect_hist: String,
    /// Delivery latency of measured messages, microseconds, V2-serialised and base64.
    pub delivery_hist: String,
    /// The same, split by whether the publisher's socket is on the subscriber's server core.
    pub same_core_hist: String,
    pub cross_core_hist: String,
    pub rx: Rx,
    pub heartbeats_sent: u64,
    pub heartbeats_ok: u64,
    pub first_attempt_ns: u64,
    pub last_join_ns: u64,
    pub last_measured_rx_ns: u64,
    /// This worker's own RSS when it was ready.
    pub rss_bytes: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
pub enum Event {
    Progress(Progress),
    Ready(Ready),
    Done(Box<Report>),
}

fn emit(ev: &Event) {
    if let Ok(line) = serde_json::to_string(ev) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

/// Entry point of `corecast-bench --worker`.
pub fn main() -> anyhow::Result<()> {
    crate::raise_nofile();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?
        .block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let first = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("no spec on stdin within 30 s")??
        .context("stdin closed before the spec")?;
    let spec: Spec = serde_json::from_str(&first).context("bad worker spec")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let sh = Arc::new(Shared::new(spec, stop_rx.clone())?);

    // The parent's commands: `stop`, or EOF (the parent is gone): both stop the worker.
    let tx = stop_tx.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.trim() == "stop" {
                break;
            }
        }
        tx.send_replace(true);
    });
    tokio::spawn(ramp(sh.clone()));

    let deadline = Instant::now() + Duration::from_secs(sh.spec.lifetime_secs);
    let mut every = tokio::time::interval(Duration::from_millis(sh.spec.progress_ms.max(50)));
    let mut stop = stop_rx;
    let mut ready_sent = false;
    let mut ready_rss = None;
    loop {
        tokio::select! {
            _ = every.tick() => {}
            _ = stop.changed() => {}
            _ = sleep_until(deadline) => {
                eprintln!("corecast-bench worker {}: lifetime over, stopping", sh.spec.index);
                stop_tx.send_replace(true);
            }
        }
        let p = sh.progress();
        if !ready_sent && sh.c.ramp_done.load(Relaxed) && p.settled >= p.attempted {
            ready_sent = true;
            ready_rss = crate::probe::self_rss();
            emit(&Event::Ready(Ready {
                progress: p,
                joined_per_topic: joined_per_topic(&sh),
            }));
        }
        emit(&Event::Progress(p));
        if sh.stopping() {
            break;
        }
    }
    // Sockets close on their own once told; wait for them, bounded.
    let close_by = Instant::now() + Duration::from_secs(10);
    while sh.c.alive.load(Relaxed) > 0 && Instant::now() < close_by {
        sleep(Duration::from_millis(20)).await;
    }
    emit(&Event::Done(Box::new(report(&sh, ready_rss)?)));
    Ok(())
}

fn joined_per_topic(sh: &Shared) -> Vec<u64> {
    sh.joined_per_topic
        .iter()
        .map(|a| a.load(Relaxed))
        .collect()
}

/// Start this worker's connections at its rate, at most `max_inflight` opening at once.
async fn ramp(sh: Arc<Shared>) {
    let spec = &sh.spec;
    let permits = Arc::new(Semaphore::new(spec.max_inflight.max(1)));
    let start = Instant::now();
    let mut started = 0usize;
    for k in 0..spec.count {
        if spec.rate > 0.0 {
            sleep_until(start + Duration::from_secs_f64(k as f64 / spec.rate)).await;
        }
        let Ok(permit) = permits.clone().acquire_owned().await else {
            break;
        };
        if sh.stopping() {
            break;
        }
        sh.c.attempted.fetch_add(1, Relaxed);
        sh.c.alive.fetch_add(1, Relaxed);
        tokio::spawn(session::connection(sh.clone(), spec.first + k, permit));
        started += 1;
    }
    sh.c.not_attempted
        .store((spec.count - started) as u64, Relaxed);
    sh.c.ramp_done.store(true, Relaxed);
}

fn report(sh: &Shared, rss_bytes: Option<u64>) -> anyhow::Result<Report> {
    let c = &sh.c;
    Ok(Report {
        index: sh.spec.index,
        progress: sh.progress(),
        not_attempted: c.not_attempted.load(Relaxed),
        failures: lock(&sh.failures).clone(),
        drops: lock(&sh.drops).clone(),
        joined_per_topic: joined_per_topic(sh),
        connect_hist: hist::to_b64(&lock(&sh.connect_hist))?,
        delivery_hist: hist::to_b64(&lock(&sh.delivery_hist))?,
        same_core_hist: hist::to_b64(&lock(&sh.same_core_hist))?,
        cross_core_hist: hist::to_b64(&lock(&sh.cross_core_hist))?,
        rx: sh.rx(),
        heartbeats_sent: c.heartbeats_sent.load(Relaxed),
        heartbeats_ok: c.heartbeats_ok.load(Relaxed),
        first_attempt_ns: c.first_attempt_ns.load(Relaxed),
        last_join_ns: c.last_join_ns.load(Relaxed),
        last_measured_rx_ns: c.last_measured_rx_ns.load(Relaxed),
        rss_bytes,
    })
}

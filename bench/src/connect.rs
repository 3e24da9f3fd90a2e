//! The `connect` scenario: open N connections at a rate, join each to one of T topics, hold them
//! idle (heartbeats only), and measure what they cost the server and the kernel.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::cli::{ConnectArgs, Target};
use crate::hist::{self, Percentiles};
use crate::pool::{self, Pool};
use crate::probe::{Prober, Sample};
use crate::report::{self, Header, counter_delta, kernel_delta, per_conn};
use crate::worker::Report;

#[derive(Serialize)]
struct Params {
    connections: usize,
    rate: f64,
    topics: usize,
    hold_secs: u64,
    settle_secs: u64,
    heartbeat_secs: u64,
    workers: usize,
    source_ips: usize,
    max_inflight: usize,
    connect_timeout_ms: u64,
}

#[derive(Serialize)]
struct Results {
    attempted: u64,
    joined: u64,
    failed: u64,
    not_attempted: u64,
    failures: BTreeMap<String, u64>,
    /// Joined sockets that ended before the end of the hold, by how.
    drops: BTreeMap<String, u64>,
    ramp_secs: f64,
    /// Joined connections per second from the first attempt to the last join.
    connect_rate_per_sec: f64,
    connect_join_latency: Percentiles,
    heartbeats_sent: u64,
    heartbeats_ok: u64,
    client_rss_bytes: u64,
}

#[derive(Serialize)]
struct Memory {
    /// Joined connections open when the "after" sample was taken (the divisor below).
    connections: u64,
    rss_source: String,
    server_rss_before_bytes: Option<u64>,
    server_rss_after_ramp_bytes: Option<u64>,
    server_rss_after_hold_bytes: Option<u64>,
    server_rss_after_close_bytes: Option<u64>,
    /// (RSS after hold - RSS before) / connections.
    rss_per_connection_bytes: Option<f64>,
    slab_before_bytes: Option<u64>,
    slab_after_bytes: Option<u64>,
    slab_per_connection_bytes: Option<f64>,
    sunreclaim_per_connection_bytes: Option<f64>,
    tcp_mem_per_connection_bytes: Option<f64>,
    /// Cross-check: (Slab after hold - Slab after close) / connections.
    slab_freed_at_close_per_connection_bytes: Option<f64>,
    note: &'static str,
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: Header,
    params: Params,
    results: Results,
    memory: Memory,
    server_counters: BTreeMap<String, f64>,
    /// Machine-wide TCP counters that moved during the run (other load on the box shows too).
    kernel_counters: BTreeMap<String, i64>,
    samples: BTreeMap<&'static str, Sample>,
}

pub fn topic_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n.max(1)).map(|i| format!("{prefix}{i}")).collect()
}

pub async fn run(args: ConnectArgs) -> anyhow::Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.connections > 0, "--connections must be > 0");
    anyhow::ensure!(args.rate > 0.0, "--rate must be > 0");
    let target = Target::from_url(&c.url)?;
    let n = args.connections;
    let fleet = pool::plan(
        c,
        n,
        args.rate,
        args.topics,
        args.settle_secs + args.hold_secs,
        500,
    )?;
    let (workers, topics, ramp_limit) = (fleet.workers, fleet.topics, fleet.ramp_limit);
    let prober = Prober::from_options(target, c);
    eprintln!(
        "[connect] {n} connections at {}/s over {} topics, {workers} workers, {} source addresses",
        args.rate,
        topics.len(),
        fleet.source_ips
    );
    let before = prober.sample().await;
    let pool = Pool::spawn("connect", fleet.specs).await?;
    pool.wait_ready(ramp_limit).await;
    let ready_at = Instant::now();
    sleep(Duration::from_secs(args.settle_secs)).await;
    let after_ramp = prober.sample().await;
    let hold = Duration::from_secs(args.hold_secs);
    while ready_at.elapsed() < hold {
        sleep((hold - ready_at.elapsed()).min(Duration::from_secs(5))).await;
        let t = pool.totals();
        eprintln!(
            "[connect] holding {:4.1}s of {}s: open {} of {} joined",
            ready_at.elapsed().as_secs_f64(),
            args.hold_secs,
            t.open,
            t.joined
        );
    }
    let after_hold = prober.sample().await;
    let open = pool.totals().open;
    let reports = pool.finish(Duration::from_secs(30)).await;
    sleep(Duration::from_secs(1)).await;
    let after_close = prober.sample().await;

    let results = merge(&reports)?;
    let memory = Memory {
        connections: open,
        rss_source: after_hold.rss_source.clone(),
        server_rss_before_bytes: before.server_rss_bytes,
        server_rss_after_ramp_bytes: after_ramp.server_rss_bytes,
        server_rss_after_hold_bytes: after_hold.server_rss_bytes,
        server_rss_after_close_bytes: after_close.server_rss_bytes,
        rss_per_connection_bytes: per_conn(
            before.server_rss_bytes,
            after_hold.server_rss_bytes,
            open,
        ),
        slab_before_bytes: before.slab_bytes,
        slab_after_bytes: after_hold.slab_bytes,
        slab_per_connection_bytes: per_conn(before.slab_bytes, after_hold.slab_bytes, open),
        sunreclaim_per_connection_bytes: per_conn(
            before.sunreclaim_bytes,
            after_hold.sunreclaim_bytes,
            open,
        ),
        tcp_mem_per_connection_bytes: per_conn(
            before.tcp_mem_bytes,
            after_hold.tcp_mem_bytes,
            open,
        ),
        slab_freed_at_close_per_connection_bytes: per_conn(
            after_close.slab_bytes,
            after_hold.slab_bytes,
            open,
        ),
        note: "kernel figures are machine-wide /proc deltas; on loopback they include both \
               ends of every connection (the client's socket and the server's)",
    };
    let summary = Summary {
        header: Header::new("connect", c),
        params: Params {
            connections: n,
            rate: args.rate,
            topics: topics.len(),
            hold_secs: args.hold_secs,
            settle_secs: args.settle_secs,
            heartbeat_secs: c.heartbeat_secs,
            workers,
            source_ips: fleet.source_ips,
            max_inflight: c.max_inflight,
            connect_timeout_ms: c.connect_timeout_ms,
        },
        server_counters: counter_delta(&before, &after_close),
        kernel_counters: kernel_delta(&before, &after_close),
        samples: BTreeMap::from([
            ("before", before),
            ("after_ramp", after_ramp),
            ("after_hold", after_hold),
            ("after_close", after_close),
        ]),
        results: results.0,
        memory,
    };
    let value = serde_json::to_value(&summary)?;
    if let Some(dir) = &c.report {
        let title = format!("corecast connect: {open} connections, connect + join latency");
        let h = &results.1;
        report::write(
            dir,
            &value,
            &[("connect_join", "connect + upgrade + join", h)],
            &c.font,
            &title,
        )?;
    }
    report::print_summary(&value);
    Ok(())
}

fn merge(reports: &[Report]) -> anyhow::Result<(Results, hist::Hist)> {
    let h = hist::merge_b64(reports.iter().map(|r| r.connect_hist.as_str()))?;
    let mut failures = BTreeMap::new();
    let mut drops = BTreeMap::new();
    for r in reports {
        for (k, v) in &r.failures {
            *failures.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.drops {
            *drops.entry(k.clone()).or_insert(0) += v;
        }
    }
    let sum = |f: fn(&Report) -> u64| reports.iter().map(f).sum::<u64>();
    let first = reports
        .iter()
        .map(|r| r.first_attempt_ns)
        .min()
        .unwrap_or(0);
    let last = reports.iter().map(|r| r.last_join_ns).max().unwrap_or(0);
    let joined = sum(|r| r.progress.joined);
    let ramp_secs = last.saturating_sub(first) as f64 / 1e9;
    Ok((
        Results {
            attempted: sum(|r| r.progress.attempted),
            joined,
            failed: sum(|r| r.progress.failed),
            not_attempted: sum(|r| r.not_attempted),
            failures,
            drops,
            ramp_secs,
            connect_rate_per_sec: if ramp_secs > 0.0 {
                joined as f64 / ramp_secs
            } else {
                0.0
            },
            connect_join_latency: hist::percentiles(&h),
            heartbeats_sent: sum(|r| r.heartbeats_sent),
            heartbeats_ok: sum(|r| r.heartbeats_ok),
            client_rss_bytes: sum(|r| r.rss_bytes.unwrap_or(0)),
        },
        h,
    ))
}

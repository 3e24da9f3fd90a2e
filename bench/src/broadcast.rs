//! The `broadcast` scenario: N subscribers over T topics (in worker processes), P publishers at
//! R msgs/s (in this process); warm-up, a measured window, then a bounded drain. Reports
//! delivery latency, deliveries per second, and exact lost/duplicated counts.
//!
//! Publisher sockets are not subscribers: the copies of their own broadcasts they receive
//! (the sender is included) are read and counted apart, never in delivered/expected/lost.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use tokio::time::{Instant, sleep};

use crate::cli::{BroadcastArgs, Target, Via, worker_urls};
use crate::hist::{self, Percentiles};
use crate::pool::{self, Pool};
use crate::probe::{Prober, Sample};
use crate::publish::{self, Outcome, Plan, publisher_topics};
use crate::report::{self, Header, counter_delta, kernel_delta};
use crate::tally::{Accounting, account, expected_deliveries};
use crate::worker::{Report, Rx};

#[derive(Serialize)]
struct Params {
    subscribers: usize,
    topics: usize,
    publishers: usize,
    via: Via,
    rate: f64,
    connect_rate: f64,
    warmup_secs: u64,
    measure_secs: u64,
    drain_secs_max: u64,
    payload_bytes: usize,
    workers: usize,
    source_ips: usize,
    publish_url: String,
    subscriber_urls: Vec<String>,
}

#[derive(Serialize)]
struct PublisherCopies {
    counted: bool,
    received: u64,
    expected: u64,
    note: &'static str,
}

#[derive(Serialize)]
struct Results {
    subscribers_joined: u64,
    subscribers_per_topic: Vec<u64>,
    subscriber_failures: BTreeMap<String, u64>,
    /// Subscribers that ended before the run did, by how (`close_1013`: slow consumer).
    subscriber_drops: BTreeMap<String, u64>,
    publishers: Outcome,
    sent_measured: u64,
    /// Measured messages per second actually sent.
    achieved_rate: f64,
    accounting: Accounting,
    reordered: u64,
    received: Rx,
    /// Measured deliveries / (last measured delivery - first measured send).
    deliveries_per_sec: f64,
    /// Expected deliveries / measured window: what the publishers asked of the server.
    offered_deliveries_per_sec: f64,
    drain_secs: f64,
    delivery_latency: Percentiles,
    /// Socket publishers on corecast only: deliveries to subscribers on the publisher's core...
    delivery_latency_same_core: Option<Percentiles>,
    /// ... and deliveries that went through the core mesh.
    delivery_latency_cross_core: Option<Percentiles>,
    /// One entry per subscriber URL (`--subscriber-url`; just --url without it).
    by_subscriber_url: Vec<ByUrl>,
    publisher_copies: PublisherCopies,
    queue_bound_hit: bool,
    client_rss_bytes: u64,
}

/// The subscribers of one URL (e.g. one node of a cluster): their share of the accounting.
#[derive(Debug, Serialize)]
struct ByUrl {
    url: String,
    workers: usize,
    subscribers_joined: u64,
    accounting: Accounting,
    reordered: u64,
    /// Their distinct measured deliveries / (their last measured delivery - first measured send).
    deliveries_per_sec: f64,
    delivery_latency: Percentiles,
}

/// Group the workers' reports by the URL their subscribers used (`url_of_worker[index]`), in
/// the order the URLs first appear. Expected deliveries use each report's own joins.
fn by_url(
    url_of_worker: &[String],
    reports: &[Report],
    sent_per_topic: &[u64],
    measure_start_ns: u64,
) -> anyhow::Result<Vec<ByUrl>> {
    let mut urls: Vec<&String> = Vec::new();
    for u in url_of_worker {
        if !urls.contains(&u) {
            urls.push(u);
        }
    }
    let mut out = Vec::new();
    for url in urls {
        let mine: Vec<&Report> = reports
            .iter()
            .filter(|r| url_of_worker.get(r.index) == Some(url))
            .collect();
        let mut rx = Rx::default();
        let mut joined = vec![0u64; sent_per_topic.len()];
        for r in &mine {
            rx.add(&r.rx);
            for (j, k) in joined.iter_mut().zip(&r.joined_per_topic) {
                *j += k;
            }
        }
        let accounting = account(
            expected_deliveries(sent_per_topic, &joined),
            rx.measured_unique,
            rx.duplicated,
        );
        let last_rx = mine
            .iter()
            .map(|r| r.last_measured_rx_ns)
            .max()
            .unwrap_or(0);
        let span = last_rx.saturating_sub(measure_start_ns) as f64 / 1e9;
        let delivery = hist::merge_b64(mine.iter().map(|r| r.delivery_hist.as_str()))?;
        out.push(ByUrl {
            url: url.clone(),
            workers: url_of_worker.iter().filter(|u| *u == url).count(),
            subscribers_joined: joined.iter().sum(),
            accounting,
            reordered: rx.reordered,
            deliveries_per_sec: if span > 0.0 {
                accounting.delivered as f64 / span
            } else {
                0.0
            },
            delivery_latency: hist::percentiles(&delivery),
        });
    }
    Ok(out)
}

#[derive(Serialize)]
struct Summary {
    #[serde(flatten)]
    header: Header,
    params: Params,
    results: Results,
    server_counters: BTreeMap<String, f64>,
    /// Machine-wide TCP counters that moved during the run (other load on the box shows too).
    kernel_counters: BTreeMap<String, i64>,
    samples: BTreeMap<&'static str, Sample>,
}

pub async fn run(args: BroadcastArgs) -> anyhow::Result<()> {
    let c = &args.common;
    anyhow::ensure!(args.subscribers > 0, "--subscribers must be > 0");
    anyhow::ensure!(
        args.topics > 0 && args.publishers > 0,
        "need topics and publishers"
    );
    anyhow::ensure!(
        args.rate > 0.0 && args.connect_rate > 0.0,
        "rates must be > 0"
    );
    let target = Target::from_url(&c.url)?;
    let publish_url = args.publish_url.clone().unwrap_or_else(|| c.url.clone());
    let publish_target = Target::from_url(&publish_url)?;
    for u in &args.subscriber_url {
        Target::from_url(u)?;
    }
    let n = args.subscribers;
    let run_secs = args.warmup_secs + args.measure_secs + args.drain_secs;
    // At least one worker per subscriber URL.
    let mut planned = c.clone();
    planned.workers = planned.workers.max(args.subscriber_url.len());
    let mut fleet = pool::plan(&planned, n, args.connect_rate, args.topics, run_secs, 200)?;
    let url_of_worker = worker_urls(fleet.specs.len(), &args.subscriber_url, &c.url);
    for (spec, url) in fleet.specs.iter_mut().zip(&url_of_worker) {
        spec.url = url.clone();
    }
    let subscriber_urls = match args.subscriber_url.is_empty() {
        true => vec![c.url.clone()],
        false => args.subscriber_url.clone(),
    };
    let (workers, topics, ramp_limit) = (fleet.workers, fleet.topics, fleet.ramp_limit);
    let prober = Prober::from_options(target, c);
    let label = c.label.clone().unwrap_or_else(|| "broadcast".into());
    eprintln!(
        "[{label}] {n} subscribers over {} topics, {} publishers via {:?} at {} msgs/s, {workers} workers",
        topics.len(),
        args.publishers,
        args.via,
        args.rate
    );
    let pool = Pool::spawn(&label, fleet.specs).await?;
    let ready = pool.wait_ready(ramp_limit).await;
    let mut subs = vec![0u64; topics.len()];
    for r in &ready {
        for (s, j) in subs.iter_mut().zip(&r.joined_per_topic) {
            *s += j;
        }
    }
    let before = prober.sample().await;

    let running = publish::start(Plan {
        target: publish_target,
        via: args.via,
        publishers: args.publishers,
        topics: topics.clone(),
        rate: args.rate,
        warmup: Duration::from_secs(args.warmup_secs),
        measure: Duration::from_secs(args.measure_secs),
        payload_bytes: args.payload_bytes,
        source: None,
    })
    .await;
    let t0 = Instant::now();
    let limit = Duration::from_secs(args.warmup_secs + args.measure_secs + 20);
    let mut last_print = Instant::now();
    while !running.schedules_done() && t0.elapsed() < limit {
        sleep(Duration::from_millis(50)).await;
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            let phase = if t0.elapsed().as_secs() < args.warmup_secs {
                "warm-up"
            } else {
                "measure"
            };
            let p = pool.totals();
            eprintln!(
                "[{label}] {:5.1}s {phase}: sent {}  received {} (measured {})  subscribers open {}",
                t0.elapsed().as_secs_f64(),
                running.sent(),
                p.rx_total,
                p.rx_measured,
                p.open
            );
        }
    }
    if !running.schedules_done() {
        eprintln!("[{label}] publishers not done at {limit:?}: halting them");
        running.halt();
        let halted = Instant::now();
        while !running.schedules_done() && halted.elapsed() < Duration::from_secs(10) {
            sleep(Duration::from_millis(20)).await;
        }
    }
    let sent = running.sent_measured();
    let expected = expected_deliveries(&sent, &subs);
    let drain_start = Instant::now();
    let drain = Duration::from_secs(args.drain_secs);
    while pool.totals().rx_measured < expected && drain_start.elapsed() < drain {
        sleep(Duration::from_millis(20)).await;
    }
    let drain_secs = drain_start.elapsed().as_secs_f64();
    eprintln!(
        "[{label}] drained in {drain_secs:.2}s: {} of {expected} expected deliveries",
        pool.totals().rx_measured
    );
    let measure_start_ns = running
        .first_measured_ns()
        .unwrap_or(running.measure_start_ns);
    let measure_secs = running.measure_secs;
    let outcome = running.stop().await;
    let publish_hist = outcome.latency_hist.clone();
    let reports = pool.finish(Duration::from_secs(30)).await;
    let after = prober.sample().await;

    let delivery = hist::merge_b64(reports.iter().map(|r| r.delivery_hist.as_str()))?;
    // Core indexes only compare within one server: the subscribers on the publishers' URL.
    let on_publish_url = || {
        reports
            .iter()
            .filter(|r| url_of_worker.get(r.index) == Some(&publish_url))
    };
    let same = hist::merge_b64(on_publish_url().map(|r| r.same_core_hist.as_str()))?;
    let cross = hist::merge_b64(on_publish_url().map(|r| r.cross_core_hist.as_str()))?;
    let some = |h: &hist::Hist| (!h.is_empty()).then(|| hist::percentiles(h));
    let mut rx = Rx::default();
    let (mut failures, mut drops) = (BTreeMap::new(), BTreeMap::new());
    for r in &reports {
        rx.add(&r.rx);
        merge_counts(&mut failures, &r.failures);
        merge_counts(&mut drops, &r.drops);
    }
    let accounting = account(expected, rx.measured_unique, rx.duplicated);
    let last_rx = reports
        .iter()
        .map(|r| r.last_measured_rx_ns)
        .max()
        .unwrap_or(0);
    let span = last_rx.saturating_sub(measure_start_ns) as f64 / 1e9;
    let sent_measured: u64 = outcome.sent_measured.iter().sum();
    let by_subscriber_url = by_url(&url_of_worker, &reports, &sent, measure_start_ns)?;
    let server_counters = counter_delta(&before, &after);
    let slow_closes = server_counters
        .get("corecast_slow_consumer_closes_total")
        .copied()
        .unwrap_or(0.0);
    let copies_expected = match args.via {
        Via::Api => 0,
        Via::Socket => publisher_copies_expected(&outcome, args.publishers, topics.len()),
    };
    let results = Results {
        subscribers_joined: subs.iter().sum(),
        subscribers_per_topic: subs,
        subscriber_failures: failures,
        queue_bound_hit: slow_closes > 0.0 || drops.contains_key("close_1013"),
        subscriber_drops: drops,
        sent_measured,
        achieved_rate: sent_measured as f64 / measure_secs,
        accounting,
        reordered: rx.reordered,
        received: rx,
        deliveries_per_sec: if span > 0.0 {
            accounting.delivered as f64 / span
        } else {
            0.0
        },
        offered_deliveries_per_sec: expected as f64 / measure_secs,
        drain_secs,
        delivery_latency: hist::percentiles(&delivery),
        delivery_latency_same_core: some(&same),
        delivery_latency_cross_core: some(&cross),
        by_subscriber_url,
        publisher_copies: PublisherCopies {
            counted: false,
            received: outcome.copies_received,
            expected: copies_expected,
            note: "publisher sockets get their own broadcasts (sender included); \
                   those copies are not in delivered/expected/lost",
        },
        publishers: outcome,
        client_rss_bytes: reports.iter().filter_map(|r| r.rss_bytes).sum(),
    };
    let summary = Summary {
        header: Header::new("broadcast", c),
        params: Params {
            subscribers: n,
            topics: topics.len(),
            publishers: args.publishers,
            via: args.via,
            rate: args.rate,
            connect_rate: args.connect_rate,
            warmup_secs: args.warmup_secs,
            measure_secs: args.measure_secs,
            drain_secs_max: args.drain_secs,
            payload_bytes: args.payload_bytes,
            workers,
            source_ips: fleet.source_ips,
            publish_url: publish_url.clone(),
            subscriber_urls,
        },
        results,
        server_counters,
        kernel_counters: kernel_delta(&before, &after),
        samples: BTreeMap::from([("before", before), ("after", after)]),
    };
    let value = serde_json::to_value(&summary)?;
    if let Some(dir) = &c.report {
        let via = format!("{:?}", args.via).to_lowercase();
        let topics_word = if topics.len() == 1 { "topic" } else { "topics" };
        let title = format!(
            "corecast {label}: {n} subscribers, {} {topics_word}, {} msgs/s via {via}",
            topics.len(),
            args.rate,
        );
        let publish_label = match args.via {
            Via::Socket => "publish: push -> phx_reply",
            Via::Api => "publish: POST /api/broadcast",
        };
        report::write(
            dir,
            &value,
            &[
                ("delivery", "delivery: send -> subscriber", &delivery),
                (
                    "delivery_same_core",
                    "delivery, publisher on the same core",
                    &same,
                ),
                ("delivery_cross_core", "delivery across cores", &cross),
                ("publish", publish_label, &publish_hist),
            ],
            &c.font,
            &title,
        )?;
    }
    report::print_summary(&value);
    Ok(())
}

fn merge_counts(into: &mut BTreeMap<String, u64>, from: &BTreeMap<String, u64>) {
    for (k, v) in from {
        *into.entry(k.clone()).or_insert(0) += v;
    }
}

/// Copies publisher sockets should get: each message once per publisher joined to its topic.
fn publisher_copies_expected(o: &Outcome, publishers: usize, topics: usize) -> u64 {
    let mut pubs_on = vec![0u64; topics];
    for p in 0..publishers {
        for t in publisher_topics(p, publishers, topics) {
            pubs_on[t] += 1;
        }
    }
    let sent = o
        .sent_measured
        .iter()
        .zip(&o.sent_warmup)
        .map(|(m, w)| m + w);
    sent.zip(pubs_on).map(|(n, k)| n * k).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(index: usize, joined: Vec<u64>, unique: u64, dups: u64, last_ns: u64) -> Report {
        let mut h = hist::new_latency();
        hist::record_ns(&mut h, 2_000_000 * (index as u64 + 1));
        Report {
            index,
            joined_per_topic: joined,
            rx: Rx {
                measured_unique: unique,
                duplicated: dups,
                ..Rx::default()
            },
            last_measured_rx_ns: last_ns,
            delivery_hist: hist::to_b64(&h).unwrap(),
            ..Report::default()
        }
    }

    #[test]
    fn reports_are_grouped_by_subscriber_url() {
        let urls: Vec<String> = ["ws://a", "ws://b", "ws://a"].map(String::from).into();
        // 10 messages on topic 0, 4 on topic 1.
        let sent = [10, 4];
        let reports = [
            report(0, vec![2, 1], 24, 0, 3_000_000_000),
            report(1, vec![1, 1], 13, 2, 2_000_000_000),
            report(2, vec![0, 1], 4, 0, 2_000_000_000),
        ];
        let g = by_url(&urls, &reports, &sent, 1_000_000_000).unwrap();
        assert_eq!(g.len(), 2);
        let (a, b) = (&g[0], &g[1]);
        assert_eq!(
            (a.url.as_str(), a.workers, a.subscribers_joined),
            ("ws://a", 2, 4)
        );
        // a: topic 0 x 2 subscribers + topic 1 x 2 = 28 expected, 28 delivered.
        assert_eq!((a.accounting.expected, a.accounting.lost), (28, 0));
        assert_eq!(a.deliveries_per_sec, 14.0);
        assert_eq!(a.delivery_latency.count, 2);
        // b: 10 + 4 = 14 expected, 13 delivered, 2 duplicated.
        assert_eq!(
            (b.url.as_str(), b.workers, b.subscribers_joined),
            ("ws://b", 1, 2)
        );
        assert_eq!(
            (
                b.accounting.expected,
                b.accounting.lost,
                b.accounting.duplicated
            ),
            (14, 1, 2)
        );
        assert!((b.delivery_latency.p50_ms - 4.0).abs() < 0.01); // HDR: 3 digits
    }
}

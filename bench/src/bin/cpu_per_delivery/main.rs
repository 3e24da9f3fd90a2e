//! cpu_per_delivery: the server's CPU per delivery of a one-topic fan-out (issue 11).
//!
//! Opens N subscribers (5,000) joined to `room:cpu` on one server, then for each way of
//! publishing sends M broadcasts (100) whose frame is 77 bytes on the wire, waits until every
//! subscriber has every message (counted once each, by id), and reads the server's CPU from
//! `/proc` before and after: CPU per delivery = (utime + stime) / (N x M). Ways: one HTTP
//! connection per `POST /api/broadcast`; one joined socket pushing back to back; one keep-alive
//! HTTP connection, request after request; and, against `bench/peers/c_floor`, one write() per
//! delivery or one per socket.
//!
//! Prints one JSON object (every measurement) on stdout; `scripts/cpu_per_delivery.py`
//! (`make cpu-per-delivery`) runs it against each server and makes the table. Every wait is
//! bounded and the whole run ends by itself after `--lifetime-secs`.

mod cpu;
mod msg;
mod publish;
mod subs;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use serde::Serialize;
use tokio::sync::{Semaphore, watch};
use tokio::time::{Instant, sleep, timeout};

use publish::{Publish, Pusher, Way};
use subs::{CountsReport, Shared};

#[derive(Parser, Debug, Clone)]
#[command(about = "Server CPU per delivery of a one-topic fan-out, three ways of publishing")]
struct Args {
    /// The server's address (WebSocket and HTTP on the same port).
    #[arg(long)]
    addr: SocketAddr,
    #[arg(long, default_value = "/socket/websocket?vsn=2.0.0")]
    path: String,
    /// The server's pid (its /proc entry is read).
    #[arg(long)]
    server_pid: u32,
    #[arg(short = 'n', long, default_value_t = 5_000)]
    subscribers: usize,
    /// Broadcasts per measurement (at most 999).
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Each way is measured this many times (the ways take turns).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "api-per-request,socket,api-keepalive"
    )]
    ways: Vec<Way>,
    /// Pause after the last delivery before the second CPU sample (the server finishes closing).
    #[arg(long, default_value_t = 20)]
    settle_ms: u64,
    /// Bound on one measurement (publish + deliveries).
    #[arg(long, default_value_t = 60)]
    measure_timeout_secs: u64,
    /// Subscriber connects in flight at once.
    #[arg(long, default_value_t = 200)]
    max_inflight: usize,
    /// Send heartbeats (between measurements) when the last ones are older than this; 0: never
    /// (the C floor does not answer them).
    #[arg(long, default_value_t = 20)]
    heartbeat_secs: u64,
    /// The whole run stops by itself after this long.
    #[arg(long, default_value_t = 600)]
    lifetime_secs: u64,
}

#[derive(Serialize)]
struct Measurement {
    way: Way,
    round: usize,
    tag: u32,
    subscribers: u64,
    messages: usize,
    deliveries_expected: u64,
    deliveries: u64,
    complete: bool,
    /// Server CPU per delivery, microseconds (exec_s / deliveries_expected).
    us_per_delivery: f64,
    /// The same from utime + stime of /proc/PID/stat (tick resolution).
    us_per_delivery_ticks: f64,
    cpu: cpu::Delta,
    publish_ms: f64,
    all_delivered_ms: f64,
    publisher: Publish,
    counts: CountsReport,
    error: Option<String>,
}

#[derive(Serialize)]
struct Output {
    addr: SocketAddr,
    server_pid: u32,
    subscribers_asked: usize,
    subscribers_joined: u64,
    subscribers_failed: u64,
    join_secs: f64,
    messages: usize,
    frame_bytes: usize,
    example_frame_text: String,
    /// Server CPU while idle with every subscriber joined (ns per second of wall time).
    idle_cpu_ns_per_s: f64,
    heartbeats_ok: u64,
    measurements: Vec<Measurement>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        (1..1000).contains(&args.messages),
        "--messages must be 1 to 999"
    );
    if let Err(e) = rlimit::increase_nofile_limit(u64::MAX) {
        eprintln!("cpu_per_delivery: cannot raise the descriptor limit: {e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let lifetime = Duration::from_secs(args.lifetime_secs);
    let out = rt
        .block_on(async { timeout(lifetime, run(args)).await })
        .context("lifetime over")??;
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(())
}

async fn run(args: Args) -> anyhow::Result<Output> {
    let sh = Arc::new(Shared::default());
    let (beat_tx, beat_rx) = watch::channel(0u64);
    let (stop_tx, stop_rx) = watch::channel(false);

    if args
        .ways
        .iter()
        .any(|w| matches!(w, Way::CWrite | Way::CBatch))
    {
        let said = publish::c_floor_reset(args.addr).await?;
        eprintln!("cpu_per_delivery: C floor reset: {said}");
    }
    // Open and join every subscriber, a bounded number at a time.
    let t0 = Instant::now();
    let permits = Arc::new(Semaphore::new(args.max_inflight.max(1)));
    for i in 0..args.subscribers {
        let permit = permits.clone().acquire_owned().await?;
        tokio::spawn(subs::run(
            i,
            args.addr,
            args.path.clone(),
            sh.clone(),
            permit,
            beat_rx.clone(),
            stop_rx.clone(),
        ));
    }
    let settled = |sh: &Shared| sh.joined.load(Relaxed) + sh.failed.load(Relaxed);
    let limit = t0 + Duration::from_secs(60);
    while settled(&sh) < args.subscribers as u64 && Instant::now() < limit {
        sleep(Duration::from_millis(20)).await;
    }
    let join_secs = t0.elapsed().as_secs_f64();
    let joined = sh.joined.load(Relaxed);
    eprintln!(
        "cpu_per_delivery: {joined} of {} subscribers joined in {join_secs:.1} s",
        args.subscribers
    );
    anyhow::ensure!(joined > 0, "no subscriber joined");

    // The server's CPU while nothing happens (a busy-polling runtime would show here).
    sleep(Duration::from_millis(200)).await;
    let a = cpu::sample(args.server_pid)?;
    let idle_t = Instant::now();
    sleep(Duration::from_millis(500)).await;
    let b = cpu::sample(args.server_pid)?;
    let idle_cpu_ns_per_s = cpu::delta(&a, &b).exec_s * 1e9 / idle_t.elapsed().as_secs_f64();

    let beats = args.heartbeat_secs > 0;
    let mut last_beat = Instant::now();
    if beats {
        last_beat = heartbeat(&sh, &beat_tx, joined).await;
    }
    let mut measurements = Vec::new();
    let mut tag = 0u32;
    for round in 0..args.rounds {
        for &way in &args.ways {
            if beats && last_beat.elapsed() > Duration::from_secs(args.heartbeat_secs) {
                last_beat = heartbeat(&sh, &beat_tx, joined).await;
            }
            tag += 1;
            let m = measure(&args, &sh, way, round, tag).await;
            eprintln!(
                "cpu_per_delivery: round {round} {way:?}: {:.3} us/delivery ({} of {} delivered{})",
                m.us_per_delivery,
                m.deliveries,
                m.deliveries_expected,
                m.error
                    .as_deref()
                    .map(|e| format!(", {e}"))
                    .unwrap_or_default()
            );
            measurements.push(m);
        }
    }
    stop_tx.send_replace(true);
    sleep(Duration::from_millis(100)).await;
    Ok(Output {
        addr: args.addr,
        server_pid: args.server_pid,
        subscribers_asked: args.subscribers,
        subscribers_joined: joined,
        subscribers_failed: sh.failed.load(Relaxed),
        join_secs,
        messages: args.messages,
        frame_bytes: msg::FRAME_LEN,
        example_frame_text: msg::broadcast_text(&msg::payload(1, 0)),
        idle_cpu_ns_per_s,
        heartbeats_ok: sh.counts.heartbeat_ok.load(Relaxed),
        measurements,
    })
}

/// Every subscriber sends a heartbeat; wait (bounded) for the replies. Outside measurements.
async fn heartbeat(sh: &Shared, tx: &watch::Sender<u64>, joined: u64) -> Instant {
    let before = sh.counts.heartbeat_ok.load(Relaxed);
    tx.send_modify(|n| *n += 1);
    let limit = Instant::now() + Duration::from_secs(10);
    while sh.counts.heartbeat_ok.load(Relaxed) < before + joined && Instant::now() < limit {
        sleep(Duration::from_millis(10)).await;
    }
    let got = sh.counts.heartbeat_ok.load(Relaxed) - before;
    if got < joined {
        eprintln!("cpu_per_delivery: {got} of {joined} heartbeats answered");
    }
    sleep(Duration::from_millis(50)).await;
    Instant::now()
}

/// An API publisher is a backend: another process, not a task behind the 5,000 subscriber
/// readers of this client's one thread (there it would wait for them after each response, and
/// how fast it could send would depend on how many frames the server had just written). So it
/// runs on a thread of its own, with its own runtime.
async fn on_own_thread(
    way: Way,
    addr: SocketAddr,
    payloads: Vec<String>,
) -> anyhow::Result<Publish> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("api-publisher".into())
        .spawn(move || {
            let got = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(anyhow::Error::from)
                .and_then(|rt| {
                    rt.block_on(async {
                        match way {
                            Way::ApiPerRequest => publish::api_per_request(addr, &payloads).await,
                            Way::ApiKeepalive => publish::api_keepalive(addr, &payloads).await,
                            other => Err(anyhow::anyhow!("{other:?} is not an API way")),
                        }
                    })
                });
            let _ = tx.send(got);
        })?;
    rx.await
        .context("the publisher thread ended without a result")?
}

async fn measure(args: &Args, sh: &Shared, way: Way, round: usize, tag: u32) -> Measurement {
    let payloads: Vec<String> = (0..args.messages).map(|k| msg::payload(tag, k)).collect();
    sh.begin(tag, args.messages);
    let target = sh.target.load(Relaxed);
    let bound = Duration::from_secs(args.measure_timeout_secs);
    let mut pusher = None;
    let mut error = None;
    if way == Way::Socket {
        match Pusher::open(args.addr, &args.path).await {
            Ok(p) => pusher = Some(p),
            Err(e) => error = Some(format!("publisher socket: {e:#}")),
        }
    }
    let before = cpu::sample(args.server_pid);
    let t0 = Instant::now();
    let work = async {
        let published = match (way, pusher.as_mut()) {
            (Way::ApiPerRequest | Way::ApiKeepalive, _) => {
                on_own_thread(way, args.addr, payloads.clone()).await
            }
            (Way::Socket, Some(p)) => p.push_all(&payloads).await,
            (Way::Socket, None) => Err(anyhow::anyhow!("no publisher socket")),
            (Way::CWrite, _) => publish::c_floor(args.addr, &payloads, 1).await,
            (Way::CBatch, _) => publish::c_floor(args.addr, &payloads, args.messages).await,
        };
        let publish_ms = t0.elapsed().as_secs_f64() * 1e3;
        while sh.delivered.load(Relaxed) < target {
            sh.done.notified().await;
        }
        (published, publish_ms)
    };
    let (publisher, publish_ms) = match timeout(bound, work).await {
        Ok((Ok(p), ms)) => (p, ms),
        Ok((Err(e), ms)) => {
            error.get_or_insert(format!("{e:#}"));
            (Publish::default(), ms)
        }
        Err(_) => {
            error.get_or_insert(format!("not done within {bound:?}"));
            (Publish::default(), f64::NAN)
        }
    };
    let all_delivered_ms = t0.elapsed().as_secs_f64() * 1e3;
    sleep(Duration::from_millis(args.settle_ms)).await;
    let after = cpu::sample(args.server_pid);
    drop(pusher); // closed after the sample: its join and close are not the broadcasts' cost
    let cpu = match (before, after) {
        (Ok(a), Ok(b)) => cpu::delta(&a, &b),
        (Err(e), _) | (_, Err(e)) => {
            error.get_or_insert(format!("CPU sample: {e:#}"));
            cpu::Delta::default()
        }
    };
    let deliveries = sh.delivered.load(Relaxed);
    let denom = target.max(1) as f64;
    Measurement {
        way,
        round,
        tag,
        subscribers: sh.joined.load(Relaxed),
        messages: args.messages,
        deliveries_expected: target,
        deliveries,
        complete: deliveries == target && error.is_none(),
        us_per_delivery: cpu.exec_s * 1e6 / denom,
        us_per_delivery_ticks: cpu.ticks_s * 1e6 / denom,
        cpu,
        publish_ms,
        all_delivered_ms,
        publisher,
        counts: sh.report(),
        error,
    }
}

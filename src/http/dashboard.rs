//! The live dashboard (issue 14; only with `dashboard = true`): `GET /dashboard`, one static
//! page embedded in the binary (`dashboard.html`: inline CSS and JS, no external assets), and
//! `GET /dashboard/live`, the WebSocket it opens, which gets one JSON text frame a second.
//! Who may open either is decided in [`crate::http::plan`] (the API's rule, plus `?key=`).
//!
//! No timer per socket: once a second of its tick ([`on_tick`], wired by `crate::server` after
//! the hub's own tick), a core lists its top topics for the others (only while some dashboard is
//! open anywhere), samples every core's counters, and, if it serves dashboard sockets, builds
//! one frame and offers that one shared buffer to each of them like a broadcast
//! (`Slot::offer`: the normal outbound queue and its bounds; a socket that does not read is
//! closed with 1013 as a slow consumer).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use crate::http::Answer;
use crate::proto::frame::{OpCode, close};
use crate::pubsub::hub::{Counters, Hub};
use crate::pubsub::live::{self, Rates, Sample, TOP_TOPICS};
use crate::runtime::shard::Stats;
use crate::runtime::sys;

/// The page: one file, no build step.
pub const PAGE: &str = include_str!("dashboard.html");

/// Headers of the page: never cached (its URL may carry the key), never framed, no referrer
/// (ditto), and nothing loaded or connected to but its own origin.
pub const PAGE_HEADERS: &[(&str, &str)] = &[
    ("Cache-Control", "no-store"),
    ("Referrer-Policy", "no-referrer"),
    ("X-Frame-Options", "DENY"),
    ("X-Content-Type-Options", "nosniff"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; \
         connect-src 'self'; img-src data:; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'none'",
    ),
];

/// `GET /dashboard` (the caller is allowed).
pub fn page() -> Answer {
    Answer {
        status: 200,
        content_type: "text/html; charset=utf-8",
        body: PAGE.as_bytes().to_vec(),
        headers: PAGE_HEADERS,
    }
}

/// A dashboard socket opened on this core (its upgrade is answered): it gets the next frame.
pub fn watch(hub: &Hub, key: usize, generation: u32) {
    hub.live.watch(key, generation);
    Stats::bump(&hub.counters.dashboards);
}

/// A dashboard socket of this core leaves the WebSocket phase.
pub fn unwatch(hub: &Hub, key: usize, generation: u32) {
    if hub.live.unwatch(key, generation) {
        Stats::sub(&hub.counters.dashboards, 1);
    }
}

/// Every tick of the core; does its work once a second (see the module's comment).
pub fn on_tick(hub: &Hub) {
    let shard = &*hub.shard;
    if !shard.cfg.dashboard || !hub.live.new_second(shard.now_tick()) {
        return;
    }
    let open = hub.shared.total(|c| &c.dashboards) > 0;
    {
        let mut mine = hub
            .counters
            .top_topics
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if open {
            *mine = hub
                .topics
                .borrow()
                .top(TOP_TOPICS)
                .into_iter()
                .map(|(topic, n)| (Box::from(&*topic), n.min(u32::MAX as usize) as u32))
                .collect();
        } else if !mine.is_empty() {
            *mine = Vec::new(); // a dashboard that opens later gets no stale list
        }
    }
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let samples = hub
        .shared
        .counters
        .iter()
        .map(|c| Sample {
            deliveries: load(&c.deliveries),
            broadcasts: load(&c.broadcasts),
            joins: load(&c.joins),
        })
        .collect();
    let rates = hub.live.rates(Instant::now(), samples);
    if !hub.live.has_watchers() {
        return;
    }
    let body = frame(hub, &rates);
    let Ok(bytes) = shard.build_frame(OpCode::Text, |b| serde_json::to_writer(b, &body)) else {
        return;
    };
    let (max_bytes, max_frames) = (
        shard.cfg.out_queue_max_bytes,
        shard.cfg.out_queue_max_frames,
    );
    let mut sent = 0;
    let mut slots = shard.slots.borrow_mut();
    for (key, generation) in hub.live.watchers() {
        if let Some(slot) = slots.get_mut(key as usize)
            && slot.generation == generation
            && slot.offer(&bytes, max_bytes, max_frames)
        {
            shard.wake_deferred(slot);
            sent += 1;
        }
    }
    Stats::add(&shard.stats.frames_out, sent);
}

/// Index of 1013 (try again later: slow consumers) in the close counters.
fn slow_consumer_index() -> usize {
    close::SENT
        .iter()
        .position(|&c| c == close::code::TRY_AGAIN_LATER)
        .unwrap_or(close::SENT.len())
}

fn round1(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// One core's row of the frame.
fn core_row(core: usize, s: &Stats, c: &Counters, r: &Rates) -> Value {
    let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
    json!({
        "core": core,
        "connections": load(&s.connections),
        "websockets": load(&s.websockets),
        "joins": load(&c.joins),
        "joins_per_s": round1(r.joins),
        "channels": load(&c.channels),
        "deliveries_per_s": round1(r.deliveries),
        "broadcasts_per_s": round1(r.broadcasts),
        "mesh_backlog": load(&s.mesh_backlog),
        "slow_consumer_closes": load(&s.closes[slow_consumer_index()]),
        "presence_entries": load(&c.presence_entries),
        "dashboards": load(&c.dashboards),
    })
}

/// The frame a core sends its dashboard sockets: every core's row, their sum, the process's
/// RSS, the node's top topics (every core's list, merged).
pub fn frame(hub: &Hub, rates: &[Rates]) -> Value {
    let shard = &*hub.shard;
    let (stats, counters) = (&shard.shared.stats, &hub.shared.counters);
    let none = Rates::default();
    let cores: Vec<Value> = stats
        .iter()
        .zip(counters.iter())
        .enumerate()
        .map(|(i, (s, c))| core_row(i, s, c, rates.get(i).unwrap_or(&none)))
        .collect();
    let mut total = serde_json::Map::new();
    for row in &cores {
        for (k, v) in row.as_object().into_iter().flatten() {
            if k == "core" {
                continue;
            }
            let sum =
                total.get(k).and_then(Value::as_f64).unwrap_or(0.0) + v.as_f64().unwrap_or(0.0);
            let sum = if v.is_u64() {
                json!(sum as u64)
            } else {
                json!(round1(sum))
            };
            total.insert(k.clone(), sum);
        }
    }
    let lists: Vec<Vec<(Box<str>, u32)>> = counters
        .iter()
        .map(|c| {
            c.top_topics
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
        })
        .collect();
    let top: Vec<Value> = live::merge_top(lists.iter().map(Vec::as_slice), TOP_TOPICS)
        .into_iter()
        .map(|(topic, n)| json!({"topic": topic, "subscribers": n}))
        .collect();
    let unix_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let cluster = hub.cluster().map(|c| {
        json!({
            "node": c.node,
            "connected": c.connected(),
            "published": c.published.load(Ordering::Relaxed),
            "received": c.received.load(Ordering::Relaxed),
        })
    });
    json!({
        "t": unix_ms,
        "uptime_s": shard.shared.started.elapsed().as_secs(),
        "version": env!("CARGO_PKG_VERSION"),
        "sent_by_core": shard.id,
        "rss_bytes": sys::rss_bytes().unwrap_or(0),
        "idle_timeout_ms": shard.cfg.idle_timeout_ms,
        "cores": cores,
        "total": total,
        "top_topics": top,
        "cluster": cluster,
    })
}

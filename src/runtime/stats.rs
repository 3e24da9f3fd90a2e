//! Counters and gauges of one core's runtime (connections, frames, bytes, timeouts, the mesh),
//! and what every core shares. The pub/sub layer keeps its own (`pubsub::hub::Counters`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use crate::config::Config;
use crate::proto::frame::close;

/// Counters and gauges of one core. Written only by that core (relaxed atomics on a cache line
/// nobody else writes), read by whichever core renders `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub websockets: AtomicU64,
    pub accepted: AtomicU64,
    pub upgraded: AtomicU64,
    pub http_requests: AtomicU64,
    /// Request-body bytes reserved on this core right now (see `crate::http::BodyReservation`).
    pub http_body_bytes: AtomicU64,
    /// Requests answered 503 because their body would pass `max_body_bytes_in_flight`.
    pub http_body_busy: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Multishot polls the kernel ended (e.g. a burst past `ring_entries`) and the connection
    /// re-armed.
    pub poll_rearms: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Sockets closed (1008) because a data message was still incomplete at `message_timeout_ms`.
    pub message_timeouts: AtomicU64,
    /// Sockets closed (1013) because their partial message would pass the core's
    /// `max_partial_bytes_per_core`.
    pub partial_budget_closes: AtomicU64,
    /// Bytes this core's sockets hold for partial frames and fragmented messages (gauge).
    pub partial_bytes: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    /// One-shot `POLLOUT` polls armed because a socket was full (see `transport::conn`).
    pub write_polls: AtomicU64,
    pub mesh_sent: AtomicU64,
    pub mesh_received: AtomicU64,
    pub mesh_dropped: AtomicU64,
    pub mesh_backlog: AtomicU64,
    /// Bytes ([`crate::runtime::mesh::Envelope::cost`]) queued for other cores, in outboxes or on rings.
    pub mesh_backlog_bytes: AtomicU64,
    /// Times this core began to hold its connections back (a peer outbox over its high mark).
    pub mesh_pauses: AtomicU64,
    /// Connections that stopped reading during such a hold (each counted once per hold).
    pub mesh_parked: AtomicU64,
    /// Close frames sent, by code: see [`close::SENT`]; the last slot counts any other code.
    pub closes: [AtomicU64; close::SENT.len() + 1],
}

impl Stats {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn close_sent(&self, code: u16) {
        let i = close::SENT
            .iter()
            .position(|&c| c == code)
            .unwrap_or(close::SENT.len());
        Stats::bump(&self.closes[i]);
    }
}

/// What every core shares (read-only or atomics): config, every core's counters.
pub struct Shared {
    pub cfg: Arc<Config>,
    /// One `Stats` per core, each its own allocation; index = core id.
    pub stats: Vec<Arc<Stats>>,
    pub started: Instant,
}

impl Shared {
    /// One counter summed over every core.
    pub fn total(&self, counter: fn(&Stats) -> &AtomicU64) -> u64 {
        self.stats
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }
}

//! `GET /metrics`: every core's counters in Prometheus text format, the runtime's
//! ([`Stats`]) and the channels' ([`Counters`]).

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::http::Answer;
use crate::proto::frame::close;
use crate::pubsub::hub::{Counters, Hub};
use crate::runtime::shard::Stats;
use crate::runtime::sys;

/// One series: name, kind, help, and where each core keeps its value.
type Series<T> = (
    &'static str,
    &'static str,
    &'static str,
    fn(&T) -> &AtomicU64,
);

const SERIES: &[Series<Stats>] = &[
    (
        "corecast_connections",
        "gauge",
        "Open TCP connections, any phase.",
        |s| &s.connections,
    ),
    (
        "corecast_websockets",
        "gauge",
        "Open WebSocket connections.",
        |s| &s.websockets,
    ),
    (
        "corecast_accepted_total",
        "counter",
        "Accepted TCP connections.",
        |s| &s.accepted,
    ),
    (
        "corecast_upgrades_total",
        "counter",
        "Completed WebSocket upgrades.",
        |s| &s.upgraded,
    ),
    (
        "corecast_http_requests_total",
        "counter",
        "HTTP requests parsed.",
        |s| &s.http_requests,
    ),
    (
        "corecast_http_body_bytes",
        "gauge",
        "Request-body bytes reserved (being read or handled), of max_body_bytes_in_flight.",
        |s| &s.http_body_bytes,
    ),
    (
        "corecast_http_body_busy_total",
        "counter",
        "Requests answered 503: their body would pass max_body_bytes_in_flight.",
        |s| &s.http_body_busy,
    ),
    (
        "corecast_accept_errors_total",
        "counter",
        "Failed accepts (e.g. EMFILE).",
        |s| &s.accept_errors,
    ),
    (
        "corecast_poll_rearms_total",
        "counter",
        "Socket polls the kernel ended (a readiness burst past ring_entries) and re-armed.",
        |s| &s.poll_rearms,
    ),
    (
        "corecast_handshake_timeouts_total",
        "counter",
        "Connections dropped at the handshake timeout.",
        |s| &s.handshake_timeouts,
    ),
    (
        "corecast_idle_timeouts_total",
        "counter",
        "Sockets closed for silence.",
        |s| &s.idle_timeouts,
    ),
    (
        "corecast_message_timeouts_total",
        "counter",
        "Sockets closed with 1008 for a message still incomplete at message_timeout_ms.",
        |s| &s.message_timeouts,
    ),
    (
        "corecast_partial_budget_closes_total",
        "counter",
        "Sockets closed with 1013 for a partial message over max_partial_bytes_per_core.",
        |s| &s.partial_budget_closes,
    ),
    (
        "corecast_partial_bytes",
        "gauge",
        "Bytes held for partial frames and fragmented messages.",
        |s| &s.partial_bytes,
    ),
    (
        "corecast_frames_in_total",
        "counter",
        "WebSocket frames received (every fragment and control frame).",
        |s| &s.frames_in,
    ),
    (
        "corecast_frames_out_total",
        "counter",
        "WebSocket frames queued for sending.",
        |s| &s.frames_out,
    ),
    (
        "corecast_bytes_out_total",
        "counter",
        "Bytes written to sockets.",
        |s| &s.bytes_out,
    ),
    (
        "corecast_slow_consumer_closes_total",
        "counter",
        "Sockets closed with 1013 for a full queue.",
        |s| &s.slow_consumer_closes,
    ),
    (
        "corecast_write_polls_total",
        "counter",
        "One-shot write polls armed because a socket was full.",
        |s| &s.write_polls,
    ),
    (
        "corecast_mesh_sent_total",
        "counter",
        "Broadcasts put on rings to other cores.",
        |s| &s.mesh_sent,
    ),
    (
        "corecast_mesh_received_total",
        "counter",
        "Broadcasts received from other cores.",
        |s| &s.mesh_received,
    ),
    (
        "corecast_mesh_dropped_total",
        "counter",
        "Broadcasts dropped because a peer outbox was at its bound (mesh_outbox or mesh_outbox_bytes).",
        |s| &s.mesh_dropped,
    ),
    (
        "corecast_mesh_backlog",
        "gauge",
        "Broadcasts waiting in this core's outboxes.",
        |s| &s.mesh_backlog,
    ),
    (
        "corecast_mesh_backlog_bytes",
        "gauge",
        "Bytes of broadcasts this core queued for other cores, in outboxes or on rings.",
        |s| &s.mesh_backlog_bytes,
    ),
    (
        "corecast_mesh_pauses_total",
        "counter",
        "Times this core stopped reading its sockets because a peer outbox passed its high mark.",
        |s| &s.mesh_pauses,
    ),
    (
        "corecast_mesh_parked_total",
        "counter",
        "Connections parked (not read) until the outboxes drained, once per pause each.",
        |s| &s.mesh_parked,
    ),
];

const CHANNEL_SERIES: &[Series<Counters>] = &[
    ("corecast_channels", "gauge", "Joined channels.", |c| {
        &c.channels
    }),
    (
        "corecast_joins_total",
        "counter",
        "Successful channel joins.",
        |c| &c.joins,
    ),
    (
        "corecast_join_errors_total",
        "counter",
        "Refused channel joins.",
        |c| &c.join_errors,
    ),
    (
        "corecast_broadcasts_total",
        "counter",
        "Broadcasts published from this core.",
        |c| &c.broadcasts,
    ),
    (
        "corecast_deliveries_total",
        "counter",
        "Broadcast frames queued on subscribers.",
        |c| &c.deliveries,
    ),
    (
        "corecast_handler_panics_total",
        "counter",
        "Panics caught in channel handlers.",
        |c| &c.handler_panics,
    ),
    (
        "corecast_refused_events_total",
        "counter",
        "Client pushes and broadcasts refused for a reserved event (phx_*, presence_*).",
        |c| &c.refused_events,
    ),
    (
        "corecast_refused_payloads_total",
        "counter",
        "Broadcasts refused for a JSON payload that is not an object.",
        |c| &c.refused_payloads,
    ),
    (
        "corecast_broadcast_encodes_total",
        "counter",
        "Broadcast frames encoded: one per publication per wire format with subscribers on the core.",
        |c| &c.encodes,
    ),
    (
        "corecast_disconnects_total",
        "counter",
        "Sockets closed by POST /api/disconnect (by socket id).",
        |c| &c.disconnects,
    ),
    (
        "corecast_longpoll_sessions",
        "gauge",
        "Long-poll sessions (/socket/longpoll) on the core.",
        |c| &c.longpoll_sessions,
    ),
    (
        "corecast_longpoll_opened_total",
        "counter",
        "Long-poll sessions opened on the core.",
        |c| &c.longpoll_opened,
    ),
    (
        "corecast_longpoll_expired_total",
        "counter",
        "Long-poll sessions closed after 1.5 windows without a poll.",
        |c| &c.longpoll_expired,
    ),
    (
        "corecast_longpoll_refused_total",
        "counter",
        "New long-poll sessions refused: the core held its share of max_longpoll_sessions.",
        |c| &c.longpoll_refused,
    ),
    (
        "corecast_longpoll_forwarded_total",
        "counter",
        "Long-poll requests this core received for a session of another core (sent over the mesh).",
        |c| &c.longpoll_forwarded,
    ),
    (
        "corecast_history_topics",
        "gauge",
        "History topics with a ring on the core (every core keeps a copy of each).",
        |c| &c.history_topics,
    ),
    (
        "corecast_history_entries",
        "gauge",
        "Publications kept in the core's history rings.",
        |c| &c.history_entries,
    ),
    (
        "corecast_history_bytes",
        "gauge",
        "Bytes counted against history_max_bytes on the core (entries share the publication's buffer).",
        |c| &c.history_bytes,
    ),
    (
        "corecast_history_recovered_total",
        "counter",
        "Joins that asked to recover and did (recovered: true).",
        |c| &c.history_recovered,
    ),
    (
        "corecast_history_unrecovered_total",
        "counter",
        "Joins that asked to recover and could not (recovered: false).",
        |c| &c.history_unrecovered,
    ),
    (
        "corecast_history_replayed_total",
        "counter",
        "Publications pushed to recovering joins.",
        |c| &c.history_replayed,
    ),
    (
        "corecast_presence_topics",
        "gauge",
        "Presence topics this core is the home of.",
        |c| &c.presence_topics,
    ),
    (
        "corecast_presence_entries",
        "gauge",
        "Presences (metas) of the topics this core is the home of.",
        |c| &c.presence_entries,
    ),
    (
        "corecast_presence_diffs_total",
        "counter",
        "presence_diff publications (one per topic per window with changes).",
        |c| &c.presence_diffs,
    ),
    (
        "corecast_presence_tracks_total",
        "counter",
        "Presences added, at their topic's home core.",
        |c| &c.presence_tracks,
    ),
    (
        "corecast_presence_untracks_total",
        "counter",
        "Presences removed, at their topic's home core.",
        |c| &c.presence_untracks,
    ),
    (
        "corecast_presence_refused_total",
        "counter",
        "Presences refused: joins past max_presences_per_topic (and tracks the home refused).",
        |c| &c.presence_refused,
    ),
];

/// Write one block per series, one line per core.
fn series<T>(out: &mut String, series: &[Series<T>], cores: &[Arc<T>]) {
    for (name, kind, help, get) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (core, s) in cores.iter().enumerate() {
            let v = get(s).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {v}");
        }
    }
}

/// The whole `/metrics` page.
pub fn metrics(hub: &Hub) -> Answer {
    let shard = &hub.shard;
    let all = &shard.shared.stats;
    let mut out = String::with_capacity(8192);
    series(&mut out, SERIES, all);
    series(&mut out, CHANNEL_SERIES, &hub.shared.counters);
    if let Some(c) = hub.cluster() {
        let node = serde_json::to_string(&c.node).unwrap_or_default();
        for (name, kind, help, v) in [
            (
                "corecast_cluster_connected",
                "gauge",
                "1 while this node is connected to NATS.",
                u64::from(c.connected()),
            ),
            (
                "corecast_cluster_published_total",
                "counter",
                "Publications handed to NATS (one per broadcast published on this node).",
                c.published.load(Ordering::Relaxed),
            ),
            (
                "corecast_cluster_received_total",
                "counter",
                "Publications received from other nodes.",
                c.received.load(Ordering::Relaxed),
            ),
            (
                "corecast_cluster_unreachable_total",
                "counter",
                "Publications that could not reach the cluster (NATS unreachable); delivered locally.",
                c.unreachable.load(Ordering::Relaxed),
            ),
            (
                "corecast_cluster_dropped_total",
                "counter",
                "Publications dropped because the bridge's queue was full.",
                c.dropped.load(Ordering::Relaxed),
            ),
            (
                "corecast_cluster_subscriptions",
                "gauge",
                "Topics this node is subscribed to on NATS (those with local subscribers).",
                c.subscriptions.load(Ordering::Relaxed),
            ),
            (
                "corecast_cluster_connects_total",
                "counter",
                "Times the connection to NATS was established.",
                c.connects.load(Ordering::Relaxed),
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{node={node}}} {v}"
            );
        }
    }
    if let Some(h) = hub.hooks() {
        hooks_series(&mut out, h.state());
    }
    let name = "corecast_closes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Close frames sent, by code.\n# TYPE {name} counter"
    );
    for (core, s) in all.iter().enumerate() {
        for (i, c) in s.closes.iter().enumerate() {
            let code = close::SENT
                .get(i)
                .map_or("other".to_string(), u16::to_string);
            let v = c.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{core=\"{core}\",code=\"{code}\"}} {v}");
        }
    }
    // Envelopes on the SPSC rings right now: sent by some core, not yet taken by the receiver.
    let shared = &shard.shared;
    let in_flight = shared
        .total(|s| &s.mesh_sent)
        .saturating_sub(shared.total(|s| &s.mesh_received));
    let _ = writeln!(
        out,
        "# HELP corecast_mesh_in_flight Broadcasts on the cross-core rings (all cores, 100 ms resolution).\n# TYPE corecast_mesh_in_flight gauge\ncorecast_mesh_in_flight {in_flight}"
    );
    let rss = sys::rss_bytes().unwrap_or(0);
    let _ = writeln!(
        out,
        "# HELP corecast_rss_bytes Resident set size of the process.\n# TYPE corecast_rss_bytes gauge\ncorecast_rss_bytes {rss}"
    );
    let up = shard.shared.started.elapsed().as_secs_f64();
    let _ = writeln!(
        out,
        "# HELP corecast_uptime_seconds Seconds since start.\n# TYPE corecast_uptime_seconds gauge\ncorecast_uptime_seconds {up:.1}"
    );
    Answer {
        status: 200,
        content_type: "text/plain; version=0.0.4",
        body: out.into_bytes(),
        headers: &[],
    }
}

/// The backend hooks' series, one sample per hook (`hook="connect|join|push"`).
fn hooks_series(out: &mut String, st: &crate::hooks::client::State) {
    use crate::hooks::client::{Hook, HookStats};
    use std::sync::atomic::AtomicU64;
    type Series = (
        &'static str,
        &'static str,
        &'static str,
        fn(&HookStats) -> &AtomicU64,
    );
    let all: [Series; 7] = [
        (
            "corecast_hook_requests_total",
            "counter",
            "Hook requests the hooks thread took.",
            |s| &s.requests,
        ),
        (
            "corecast_hook_failures_total",
            "counter",
            "Hook requests that got no usable answer (timeouts, errors, non-2xx, circuit open excluded).",
            |s| &s.failures,
        ),
        (
            "corecast_hook_timeouts_total",
            "counter",
            "Hook requests not answered within hooks.timeout_ms.",
            |s| &s.timeouts,
        ),
        (
            "corecast_hook_short_circuited_total",
            "counter",
            "Hook requests failed at once because the circuit was open.",
            |s| &s.short_circuited,
        ),
        (
            "corecast_hook_busy_total",
            "counter",
            "Joins and pushes refused at once: the core had max_in_flight_per_core hooks out.",
            |s| &s.busy,
        ),
        (
            "corecast_hook_circuit_open",
            "gauge",
            "1 while the hook's circuit is open (the backend failed hooks.circuit_failures times in a row).",
            |s| &s.circuit_open,
        ),
        (
            "corecast_hook_circuit_opens_total",
            "counter",
            "Times the hook's circuit opened.",
            |s| &s.circuit_opens,
        ),
    ];
    for (name, kind, help, get) in all {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for hook in Hook::ALL {
            let v = get(st.of(hook)).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{hook=\"{}\"}} {v}", hook.name());
        }
    }
}

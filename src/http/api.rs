//! Plain HTTP on the WebSocket port: `GET /metrics` (Prometheus text) and
//! `POST /api/broadcast` (server-side publishing to every subscriber on every core: one
//! publication or a batch).
//!
//! Who may call them, with which method, content type and body length is decided from the
//! request head in [`crate::http`] before any body byte is read; these functions only answer.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::http::{Answer, Format};
use crate::proto::phoenix::{Payload, is_reserved_event};
use crate::pubsub::session::{Refused, publish};
use crate::runtime::shard::{CLOSE_CODES, Shard, Stats};
use crate::runtime::sys;

/// One publication of a `POST /api/broadcast` body.
#[derive(Deserialize)]
struct Publication<'a> {
    #[serde(borrow)]
    topic: Cow<'a, str>,
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow)]
    payload: &'a RawValue,
}

/// Why a body is refused before anything is published.
#[derive(Debug, PartialEq)]
struct BadBody {
    status: u16,
    reason: String,
    /// The publication at fault (0-based, blank NDJSON lines not counted), in a batch.
    index: Option<usize>,
    /// Its line (1-based), in an NDJSON body.
    line: Option<usize>,
}

impl BadBody {
    fn new(status: u16, reason: impl Into<String>) -> BadBody {
        BadBody {
            status,
            reason: reason.into(),
            index: None,
            line: None,
        }
    }

    fn at(mut self, index: usize) -> BadBody {
        self.index = Some(index);
        self
    }

    fn answer(&self) -> Answer {
        let mut v = serde_json::json!({ "error": self.reason });
        if let Some(i) = self.index {
            v["index"] = i.into();
        }
        if let Some(l) = self.line {
            v["line"] = l.into();
        }
        Answer::json(self.status, &v.to_string())
    }
}

/// `POST /api/broadcast`: the body of a request [`crate::http::plan`] accepted (caller allowed,
/// JSON or NDJSON, within the size bounds). One publication `{"topic", "event", "payload"}`, or
/// a batch: a JSON array of them, or NDJSON, one per line. Every publication is checked before
/// any is published (a bad one refuses the whole body: 400 with its index and the reason; more
/// than `max_broadcast_batch`: 413), then all are published in their order, through
/// [`publish`]. Answered once: 202 `{"ok":true,"published":N}`.
pub fn broadcast(shard: &Shard, body: &[u8], format: Format) -> Answer {
    let cfg = &shard.cfg;
    let parsed = match format {
        Format::Json => parse_json(body, cfg.max_broadcast_batch),
        Format::NdJson => parse_ndjson(body, cfg.max_broadcast_batch),
    };
    let publications = match parsed {
        Ok(p) => p,
        Err(bad) => return bad.answer(),
    };
    let batch = format == Format::NdJson || starts_array(body);
    let at = |bad: BadBody, i: usize| if batch { bad.at(i) } else { bad };
    for (i, p) in publications.iter().enumerate() {
        if let Err(why) = check(shard, p) {
            return at(BadBody::new(400, why), i).answer();
        }
    }
    if shard.reads_held() {
        // This core's cross-core outboxes are over their mark: push back on the caller (it
        // retries) instead of queueing more for the other cores, where they could be dropped.
        return Answer {
            headers: &[("Retry-After", "1")],
            ..Answer::json(
                503,
                r#"{"error":"busy: the cross-core backlog is over its mark, retry"}"#,
            )
        };
    }
    for (i, p) in publications.iter().enumerate() {
        let payload = Payload::Json(p.payload.get());
        if let Err(why) = publish(shard, &p.topic, &p.event, payload) {
            // Not reached: `check` refuses what `publish` would (kept as a guard).
            let reason = format!("{}; the {i} before it were published", why.reason());
            return at(BadBody::new(500, reason), i).answer();
        }
    }
    let published = publications.len();
    Answer::json(202, &format!(r#"{{"ok":true,"published":{published}}}"#))
}

/// What [`publish`] would refuse, and what the API refuses on top (empty or over-long names),
/// so that a batch is refused before any of it is published. Counted like [`publish`] counts.
fn check(shard: &Shard, p: &Publication<'_>) -> Result<(), &'static str> {
    if p.topic.is_empty() {
        return Err("empty topic");
    }
    if p.topic.len() > shard.cfg.max_topic_len {
        return Err("topic longer than max_topic_len");
    }
    if p.event.is_empty() {
        return Err("empty event");
    }
    if is_reserved_event(&p.event) {
        Stats::bump(&shard.stats.refused_events);
        return Err(Refused::ReservedEvent.reason());
    }
    if !Payload::Json(p.payload.get()).is_relayable() {
        Stats::bump(&shard.stats.refused_payloads);
        return Err(Refused::NotAnObject.reason());
    }
    Ok(())
}

fn starts_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// An `application/json` body: one publication, or a JSON array of at most `max` of them.
fn parse_json(body: &[u8], max: usize) -> Result<Vec<Publication<'_>>, BadBody> {
    let bad = |e: serde_json::Error| BadBody::new(400, format!("bad request body: {e}"));
    if !starts_array(body) {
        return serde_json::from_slice(body).map(|p| vec![p]).map_err(bad);
    }
    let at = Cell::new(0);
    let too_many = Cell::new(false);
    let mut de = serde_json::Deserializer::from_slice(body);
    let seed = Batch {
        max,
        at: &at,
        too_many: &too_many,
    };
    match seed.deserialize(&mut de).and_then(|v| de.end().map(|()| v)) {
        Ok(v) => Ok(v),
        Err(_) if too_many.get() => Err(too_large(max)),
        Err(e) => Err(bad(e).at(at.get())),
    }
}

/// An `application/x-ndjson` body: one publication per line (`\n` or `\r\n`), blank lines
/// ignored, at most `max` of them.
fn parse_ndjson(body: &[u8], max: usize) -> Result<Vec<Publication<'_>>, BadBody> {
    let lines = body
        .split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, l)| !l.iter().all(u8::is_ascii_whitespace));
    let mut out = Vec::new();
    for (line, text) in lines {
        if out.len() == max {
            return Err(too_large(max));
        }
        match serde_json::from_slice(text) {
            Ok(p) => out.push(p),
            Err(e) => {
                let mut bad = BadBody::new(400, format!("bad publication: {e}")).at(out.len());
                bad.line = Some(line + 1);
                return Err(bad);
            }
        }
    }
    Ok(out)
}

fn too_large(max: usize) -> BadBody {
    BadBody::new(
        413,
        format!("batch too large: more than {max} publications (max_broadcast_batch)"),
    )
}

/// Deserializes a JSON array of publications, stopping at the one past `max`; `at` follows the
/// index being read, so an error can say which publication it is in.
struct Batch<'c> {
    max: usize,
    at: &'c Cell<usize>,
    too_many: &'c Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for Batch<'_> {
    type Value = Vec<Publication<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Batch<'_> {
    type Value = Vec<Publication<'de>>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an array of publications")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        loop {
            self.at.set(out.len());
            let Some(p) = seq.next_element()? else {
                return Ok(out);
            };
            if out.len() == self.max {
                self.too_many.set(true);
                return Err(serde::de::Error::custom("too many publications"));
            }
            out.push(p);
        }
    }
}

type Getter = fn(&Stats) -> &AtomicU64;

const SERIES: &[(&str, &str, &str, Getter)] = &[
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
    ("corecast_channels", "gauge", "Joined channels.", |s| {
        &s.channels
    }),
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
        "corecast_joins_total",
        "counter",
        "Successful channel joins.",
        |s| &s.joins,
    ),
    (
        "corecast_join_errors_total",
        "counter",
        "Refused channel joins.",
        |s| &s.join_errors,
    ),
    (
        "corecast_broadcasts_total",
        "counter",
        "Broadcasts published from this core.",
        |s| &s.broadcasts,
    ),
    (
        "corecast_deliveries_total",
        "counter",
        "Broadcast frames queued on subscribers.",
        |s| &s.deliveries,
    ),
    (
        "corecast_slow_consumer_closes_total",
        "counter",
        "Sockets closed with 1013 for a full queue.",
        |s| &s.slow_consumer_closes,
    ),
    (
        "corecast_handler_panics_total",
        "counter",
        "Panics caught in channel handlers.",
        |s| &s.handler_panics,
    ),
    (
        "corecast_refused_events_total",
        "counter",
        "Client pushes and broadcasts refused for a reserved event (phx_*, presence_*).",
        |s| &s.refused_events,
    ),
    (
        "corecast_refused_payloads_total",
        "counter",
        "Broadcasts refused for a JSON payload that is not an object.",
        |s| &s.refused_payloads,
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

/// `GET /metrics`: every core's counters in Prometheus text format.
pub fn metrics(shard: &Shard) -> Answer {
    let all = &shard.shared.stats;
    let mut out = String::with_capacity(8192);
    for (name, kind, help, get) in SERIES {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (core, s) in all.iter().enumerate() {
            let v = get(s).load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{core=\"{core}\"}} {v}");
        }
    }
    let name = "corecast_closes_total";
    let _ = writeln!(
        out,
        "# HELP {name} Close frames sent, by code.\n# TYPE {name} counter"
    );
    for (core, s) in all.iter().enumerate() {
        for (i, c) in s.closes.iter().enumerate() {
            let code = CLOSE_CODES
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

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(p: &[Publication<'_>]) -> Vec<String> {
        p.iter().map(|p| p.topic.to_string()).collect()
    }

    #[test]
    fn one_publication_or_an_array() {
        let one = br#" {"topic":"a","event":"e","payload":{"x":[1]}} "#;
        let p = parse_json(one, 10).unwrap();
        assert_eq!(
            (topics(&p), p[0].payload.get()),
            (vec!["a".into()], r#"{"x":[1]}"#)
        );
        let many = br#"[{"topic":"a","event":"e","payload":{}},
            {"topic":"b\u0021","event":"e","payload":{}}]"#;
        assert_eq!(topics(&parse_json(many, 2).unwrap()), ["a", "b!"]);
        assert!(parse_json(b"[]", 2).unwrap().is_empty());
        assert!(starts_array(b"\r\n [") && !starts_array(b"{"));
    }

    #[test]
    fn array_errors_name_the_publication() {
        let item = r#"{"topic":"a","event":"e","payload":{}}"#;
        let with = |i: usize, bad: &str| {
            let mut items = [item; 5];
            items[i] = bad;
            format!("[{}]", items.join(","))
        };
        let missing = with(3, r#"{"topic":"a","payload":{}}"#);
        let bad = parse_json(missing.as_bytes(), 10).err().unwrap();
        assert_eq!((bad.status, bad.index), (400, Some(3)));
        assert!(
            bad.reason.contains("missing field `event`"),
            "{}",
            bad.reason
        );
        let bad = parse_json(with(0, r#"{"topic":1}"#).as_bytes(), 10)
            .err()
            .unwrap();
        assert_eq!(bad.index, Some(0));
        let bad = parse_json(format!("[{item}] x").as_bytes(), 10)
            .err()
            .unwrap();
        assert_eq!(bad.status, 400, "trailing bytes");
        // Bounded: the one past `max` stops the parse.
        let bad = parse_json(with(0, item).as_bytes(), 4).err().unwrap();
        assert_eq!((bad.status, bad.index), (413, None));
        assert!(parse_json(with(0, item).as_bytes(), 5).is_ok());
    }

    #[test]
    fn ndjson_lines() {
        let body = b"{\"topic\":\"a\",\"event\":\"e\",\"payload\":{}}\r\n\n  \n\
            {\"topic\":\"b\",\"event\":\"e\",\"payload\":{}}";
        assert_eq!(topics(&parse_ndjson(body, 2).unwrap()), ["a", "b"]);
        assert!(parse_ndjson(b"", 2).unwrap().is_empty());
        assert_eq!(parse_ndjson(body, 1).err().unwrap().status, 413);
        let bad = parse_ndjson(
            b"\n{\"topic\":\"a\",\"event\":\"e\",\"payload\":{}}\n\n[1]\n",
            9,
        );
        let bad = bad.err().unwrap();
        assert_eq!((bad.status, bad.index, bad.line), (400, Some(1), Some(4)));
    }

    #[test]
    fn error_answers_are_json() {
        let mut bad = BadBody::new(400, "a \"quoted\" reason").at(2);
        bad.line = Some(3);
        let a = bad.answer();
        let v: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
        assert_eq!(
            (a.status, v),
            (
                400,
                serde_json::json!({"error": "a \"quoted\" reason", "index": 2, "line": 3})
            )
        );
    }
}

//! Plain HTTP on the WebSocket port: `GET /metrics` (Prometheus text) and
//! `POST /api/broadcast` (server-side publishing to every subscriber on every core: one
//! publication or a batch).
//!
//! Who may call them, with which method, content type and body length is decided from the
//! request head in [`crate::http`] before any body byte is read; these functions only answer.

use std::borrow::Cow;
use std::cell::Cell;

use serde::Deserialize;
use serde::de::{DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::http::{Answer, Format};
use crate::proto::phoenix::Payload;
use crate::pubsub::hub::Hub;
use crate::pubsub::publication::{Publication, Refused};

/// One publication of a `POST /api/broadcast` body.
#[derive(Deserialize)]
struct Item<'a> {
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

/// `GET /api/presence?topic=...`: the topic's presences as this core knows them (every core
/// holds the same state, as of the last diff it delivered), in `presence_state`'s shape.
pub fn presence(hub: &Hub, query: &str) -> Answer {
    let Some(topic) = crate::proto::handshake::query_param(query, "topic") else {
        return Answer::json(400, r#"{"error":"topic parameter required"}"#);
    };
    if !hub.shard.cfg.presence_topic(&topic) {
        return Answer::json(404, r#"{"error":"not a presence topic (see presence)"}"#);
    }
    let state = hub.presence.borrow_mut().state_json(&topic);
    Answer::json(200, &state)
}

/// `GET /api/history?topic=...&since=N&limit=M`: the publications of a history topic after
/// offset `since` (default 0), oldest first, at most `limit` (default and at most
/// `history_max_replay`), as this core keeps them (every core keeps the same ring):
/// `{"epoch":E,"offset":L,"first":F,"publications":[{"offset":o,"event":..,"payload":{..}}]}`,
/// a binary payload as `"binary":"<base64>"`. `first` is the oldest offset kept: `since + 1 <
/// first` means some were lost to the bounds.
pub fn history(hub: &Hub, query: &str) -> Answer {
    use base64::Engine;
    use std::fmt::Write;
    let cfg = &hub.shard.cfg;
    let Some(topic) = crate::proto::handshake::query_param(query, "topic") else {
        return Answer::json(400, r#"{"error":"topic parameter required"}"#);
    };
    let Some(rule) = cfg.history_rule(&topic) else {
        return Answer::json(404, r#"{"error":"not a history topic (see [[history]])"}"#);
    };
    let number = |name: &str| match crate::proto::handshake::query_param(query, name) {
        None => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| name.to_string()),
    };
    let (since, limit) = match (number("since"), number("limit")) {
        (Ok(s), Ok(l)) => (s.unwrap_or(0), l.unwrap_or(cfg.history_max_replay as u64)),
        (Err(name), _) | (_, Err(name)) => {
            let body = serde_json::json!({ "error": format!("{name} must be a whole number") });
            return Answer::json(400, &body.to_string());
        }
    };
    let limit = limit.min(cfg.history_max_replay as u64) as usize;
    let now = std::time::Instant::now();
    let (pos, first, list) = hub
        .history
        .borrow_mut()
        .since(&topic, rule, since, limit, now);
    let mut out = format!(
        r#"{{"epoch":{},"offset":{},"first":{first},"publications":["#,
        pos.epoch, pos.offset
    );
    for (i, p) in list.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let (_, event, payload) = p.parts();
        let offset = p.position().map_or(0, |(o, _)| o);
        let event = serde_json::to_string(event).unwrap_or_default();
        let _ = write!(out, r#"{{"offset":{offset},"event":{event},"#);
        match payload {
            Payload::Json(text) => {
                let _ = write!(out, r#""payload":{text}}}"#);
            }
            Payload::Binary(b) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(b);
                let _ = write!(out, r#""binary":"{b64}"}}"#);
            }
        }
    }
    out.push_str("]}");
    Answer::json(200, &out)
}

/// `POST /api/disconnect` `{"id": "users_socket:alice"}`: close every socket with that id (see
/// `Handler::socket_id`) on every core and every node, with 1000 "disconnected", so phoenix.js
/// reconnects and authenticates again (Phoenix's `Endpoint.broadcast(id, "disconnect", %{})`).
/// 202 `{"ok":true,"closed_here":N}` (the other cores and nodes close theirs as the request
/// reaches them).
pub fn disconnect(hub: &Hub, body: &[u8]) -> Answer {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    let id = match serde_json::from_slice::<Body<'_>>(body) {
        Ok(b) if !b.id.is_empty() && b.id.len() <= 1024 => b.id,
        _ => {
            return Answer::json(
                400,
                r#"{"error":"expected {\"id\": \"...\"} (a socket id, at most 1024 bytes)"}"#,
            );
        }
    };
    let n = hub.disconnect(&id);
    Answer::json(202, &format!(r#"{{"ok":true,"closed_here":{n}}}"#))
}

/// `POST /api/broadcast`: the body of a request [`crate::http::plan`] accepted (caller allowed,
/// JSON or NDJSON, within the size bounds). One publication `{"topic", "event", "payload"}`, or
/// a batch: a JSON array of them, or NDJSON, one per line. Every publication is checked before
/// any is published (a bad one refuses the whole body: 400 with its index and the reason; more
/// than `max_broadcast_batch`: 413), then all are published in their order, through
/// [`Hub::publish`]. Answered once: 202 `{"ok":true,"published":N}`.
pub fn broadcast(hub: &Hub, body: &[u8], format: Format) -> Answer {
    let cfg = &hub.shard.cfg;
    let parsed = match format {
        Format::Json => parse_json(body, cfg.max_broadcast_batch),
        Format::NdJson => parse_ndjson(body, cfg.max_broadcast_batch),
    };
    let items = match parsed {
        Ok(p) => p,
        Err(bad) => return bad.answer(),
    };
    let batch = format == Format::NdJson || starts_array(body);
    let at = |bad: BadBody, i: usize| if batch { bad.at(i) } else { bad };
    let mut publications = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match check(hub, item) {
            Ok(p) => publications.push(p),
            Err(why) => return at(BadBody::new(400, why), i).answer(),
        }
    }
    if hub.shard.reads_held() {
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
    let published = publications.len();
    for p in publications {
        hub.publish(p);
    }
    Answer::json(202, &format!(r#"{{"ok":true,"published":{published}}}"#))
}

/// The publication an item asks for, checked by [`Hub::check`] (what no broadcast may carry,
/// counted) and for what the API refuses on top (empty or over-long names), so that a batch is
/// refused before any of it is published.
fn check(hub: &Hub, p: &Item<'_>) -> Result<Publication, &'static str> {
    if p.topic.is_empty() {
        return Err("empty topic");
    }
    if p.topic.len() > hub.shard.cfg.max_topic_len {
        return Err("topic longer than max_topic_len");
    }
    if p.event.is_empty() {
        return Err("empty event");
    }
    hub.check(&p.topic, &p.event, Payload::Json(p.payload.get()))
        .map_err(Refused::reason)
}

fn starts_array(body: &[u8]) -> bool {
    body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'[')
}

/// An `application/json` body: one publication, or a JSON array of at most `max` of them.
fn parse_json(body: &[u8], max: usize) -> Result<Vec<Item<'_>>, BadBody> {
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
fn parse_ndjson(body: &[u8], max: usize) -> Result<Vec<Item<'_>>, BadBody> {
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
    type Value = Vec<Item<'de>>;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Batch<'_> {
    type Value = Vec<Item<'de>>;

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

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(p: &[Item<'_>]) -> Vec<String> {
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

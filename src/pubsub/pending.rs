//! One core's side of the backend hooks (`crate::hooks`): who a socket is (its [`Identity`]),
//! the JSON a hook is asked with and what its answer means (schema v1, docs/hooks.md), and the
//! connections waiting for an answer.
//!
//! A connection waits for at most one hook at a time (a pending connect, join or push); the
//! messages it sends meanwhile are queued behind it, in order (at most one read's worth: the
//! connection is not read again until the answer is in), and replayed once it is handled. The
//! core's hooks task takes answers off the core's inbox, files each with its connection and
//! wakes it (`signal::HOOK`); the connection's own task then carries the answer out.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::hooks::client::{Answer, Failure, Hook, Link, Ticket};
use crate::proto::phoenix::{Frame, Payload};
use crate::pubsub::presence::Meta;
use crate::runtime::shard::{Shard, signal};

/// The version of the hooks' JSON (`"v"` in every request).
pub const SCHEMA_VERSION: u32 = 1;

/// Who a socket is, beyond its subject: set from its token and the connect hook. Boxed in the
/// session, allocated only for sockets that have some of it.
#[derive(Debug, Default, Clone)]
pub struct Identity {
    /// The token's `sub`, or what the connect hook set.
    pub user: Option<Box<str>>,
    /// The token's `channels` patterns (a join must match one of them too).
    pub channels: Option<Box<[String]>>,
    /// The token's `presence` meta (a JSON object), instead of the join payload's.
    pub presence: Option<Box<str>>,
    /// The token's `info` (or what the connect hook set), as JSON text, for the hooks.
    pub info: Option<Box<str>>,
    /// The socket's id (`Handler::socket_id`, or what the connect hook set).
    pub socket_id: Option<Box<str>>,
    /// The client's address (only kept when hooks are on).
    pub client: Option<SocketAddr>,
}

/// What a connection waits for, with what it needs to carry the answer out.
pub enum Waiting {
    /// The HTTP upgrade (the connect hook); the request stays in the connection's buffer.
    Connect,
    Join {
        topic: Box<str>,
        join_ref: Option<Box<str>>,
        msg_ref: Option<Box<str>>,
        /// The presence the join tracks when allowed (see `Session::presence_for`).
        default: Option<(Box<str>, Meta)>,
        /// What its params asked to recover, on a history topic (`pubsub::history`).
        since: Option<Option<crate::pubsub::history::Position>>,
    },
    Push {
        topic: Box<str>,
        event: Box<str>,
        join_ref: Option<Box<str>>,
        msg_ref: Option<Box<str>>,
        /// The push's JSON payload, or its bytes when binary.
        payload: Box<str>,
        binary: Option<Box<[u8]>>,
    },
}

/// A message that arrived behind a pending one: (text?, bytes).
pub type Queued = (bool, Box<[u8]>);

struct Pending {
    generation: u32,
    seq: u32,
    waiting: Waiting,
    queued: Vec<Queued>,
    answer: Option<Result<Bytes, Failure>>,
}

/// A core's hooks: its link to the hooks thread and its waiting connections.
pub struct Hooked {
    link: Link,
    pub cfg: crate::config::Hooks,
    pending: RefCell<HashMap<usize, Pending>>,
    /// Requests out and not yet answered (`max_in_flight_per_core`).
    in_flight: Cell<usize>,
    seq: Cell<u32>,
}

/// Why a hook could not be asked: answer the client at once.
pub const BUSY: &str = r#"{"reason":"too many pending hooks"}"#;

impl Hooked {
    pub fn new(link: Link, cfg: crate::config::Hooks) -> Rc<Hooked> {
        Rc::new(Hooked {
            link,
            cfg,
            pending: RefCell::new(HashMap::new()),
            in_flight: Cell::new(0),
            seq: Cell::new(0),
        })
    }

    /// Start the core's task that files the answers (one per core, for the core's life).
    pub fn spawn(self: &Rc<Self>, shard: Rc<Shard>) {
        let me = self.clone();
        glommio::spawn_local(async move {
            loop {
                let a = std::future::poll_fn(|cx| me.link.down.poll_recv(cx)).await;
                me.on_answer(&shard, a);
            }
        })
        .detach();
    }

    fn on_answer(&self, shard: &Shard, a: Answer) {
        self.in_flight.set(self.in_flight.get().saturating_sub(1));
        let t = a.ticket;
        let mut pending = self.pending.borrow_mut();
        let Some(p) = pending.get_mut(&t.key) else {
            return; // the connection is gone
        };
        if p.generation != t.generation || p.seq != t.seq || p.answer.is_some() {
            return;
        }
        p.answer = Some(a.outcome);
        if let Some(slot) = shard.slots.borrow_mut().get_mut(t.key)
            && slot.generation == t.generation
        {
            slot.signals |= signal::HOOK;
            slot.wake();
        }
    }

    /// The hook URL configured for `hook`, and (join, push) whether `topic` goes to it.
    pub fn wants(&self, hook: Hook, topic: &str) -> bool {
        let c = &self.cfg;
        match hook {
            Hook::Connect => c.connect_url.is_some(),
            Hook::Join => {
                c.join_url.is_some()
                    && (c.join_topics.is_empty()
                        || crate::config::Config::pattern_matches(&c.join_topics, topic))
            }
            Hook::Push => {
                c.push_url.is_some()
                    && (c.push_topics.is_empty()
                        || crate::config::Config::pattern_matches(&c.push_topics, topic))
            }
        }
    }

    /// The hooks' counters (node-wide).
    pub fn state(&self) -> &crate::hooks::client::State {
        &self.link.state
    }

    /// The node's name (for the requests).
    pub fn node(&self) -> &str {
        &self.link.state.node
    }

    /// Ask `hook` with `body` for connection (`key`, `generation`), which then waits
    /// (`waiting`). `Err(BUSY)` when the core has `max_in_flight_per_core` out already or the
    /// hooks queue is full: answer the client at once.
    pub fn ask(
        &self,
        hook: Hook,
        key: usize,
        generation: u32,
        waiting: Waiting,
        body: Vec<u8>,
    ) -> Result<(), &'static str> {
        if self.in_flight.get() >= self.cfg.max_in_flight_per_core {
            self.link
                .state
                .of(hook)
                .busy
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(BUSY);
        }
        let seq = self.seq.get().wrapping_add(1);
        self.seq.set(seq);
        let ticket = Ticket {
            key,
            generation,
            seq,
        };
        if !self.link.ask(hook, ticket, body) {
            return Err(BUSY);
        }
        self.in_flight.set(self.in_flight.get() + 1);
        self.pending.borrow_mut().insert(
            key,
            Pending {
                generation,
                seq,
                waiting,
                queued: Vec::new(),
                answer: None,
            },
        );
        Ok(())
    }

    /// Does connection `key` wait for a hook (answered or not)?
    pub fn is_pending(&self, key: usize, generation: u32) -> bool {
        self.pending
            .borrow()
            .get(&key)
            .is_some_and(|p| p.generation == generation)
    }

    /// Queue a message behind the connection's pending one.
    pub fn queue(&self, key: usize, frame: Frame<'_>) {
        if let Some(p) = self.pending.borrow_mut().get_mut(&key) {
            p.queued.push(match frame {
                Frame::Text(t) => (true, t.as_bytes().into()),
                Frame::Binary(b) => (false, b.into()),
            });
        }
    }

    /// The connection's answered hook, if it has one: what it waited for, the answer, and the
    /// messages queued behind it.
    pub fn take_answered(
        &self,
        key: usize,
        generation: u32,
    ) -> Option<(Waiting, Result<Bytes, Failure>, Vec<Queued>)> {
        let mut pending = self.pending.borrow_mut();
        let p = pending.get(&key)?;
        if p.generation != generation || p.answer.is_none() {
            return None;
        }
        let p = pending.remove(&key)?;
        Some((p.waiting, p.answer?, p.queued))
    }

    /// The connection is gone: forget what it waited for (its answer is dropped on arrival).
    pub fn forget(&self, key: usize, generation: u32) {
        let mut pending = self.pending.borrow_mut();
        if pending
            .get(&key)
            .is_some_and(|p| p.generation == generation)
        {
            pending.remove(&key);
        }
    }
}

/// The body of a join or push hook request (schema v1).
pub fn request_json(
    hook: Hook,
    node: &str,
    who: Option<&Identity>,
    topic: &str,
    event: &str,
    payload: Payload<'_>,
) -> Vec<u8> {
    let mut out = head_json(hook, node, who);
    out.push_str(",\"topic\":");
    out.push_str(&json_str(topic));
    out.push_str(",\"event\":");
    out.push_str(&json_str(event));
    match payload {
        Payload::Json(p) => {
            out.push_str(",\"payload\":");
            out.push_str(p);
        }
        Payload::Binary(b) => {
            use base64::Engine;
            out.push_str(",\"payload\":null,\"payload_base64\":\"");
            out.push_str(&base64::engine::general_purpose::STANDARD.encode(b));
            out.push('"');
        }
    }
    out.push('}');
    out.into_bytes()
}

/// The body of a connect hook request (schema v1).
pub fn connect_json(
    node: &str,
    who: Option<&Identity>,
    query: &str,
    origin: Option<&str>,
) -> Vec<u8> {
    let mut out = head_json(Hook::Connect, node, who);
    out.push_str(",\"query\":");
    out.push_str(&json_str(query));
    out.push_str(",\"origin\":");
    out.push_str(&origin.map_or("null".into(), json_str));
    out.push('}');
    out.into_bytes()
}

fn head_json(hook: Hook, node: &str, who: Option<&Identity>) -> String {
    let opt = |v: Option<&str>| v.map_or("null".to_string(), json_str);
    let w = who.cloned().unwrap_or_default();
    format!(
        "{{\"v\":{SCHEMA_VERSION},\"hook\":\"{}\",\"node\":{},\"subject\":{},\"socket_id\":{},\"info\":{},\"client\":{}",
        hook.name(),
        json_str(node),
        opt(w.user.as_deref()),
        opt(w.socket_id.as_deref()),
        w.info.as_deref().unwrap_or("null"),
        opt(w.client.map(|a| a.to_string()).as_deref()),
    )
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// A JSON object's text, if `v` is one.
fn object(v: Option<&RawValue>) -> Option<&str> {
    v.map(RawValue::get)
        .filter(|t| t.trim_start().starts_with('{'))
}

#[derive(Deserialize)]
struct JoinAnswer<'a> {
    allow: bool,
    #[serde(borrow, default)]
    reply: Option<&'a RawValue>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct PushAnswer<'a> {
    #[serde(default = "yes")]
    ok: bool,
    #[serde(borrow, default)]
    reply: Option<&'a RawValue>,
    #[serde(default)]
    broadcast: bool,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct ConnectAnswer<'a> {
    allow: bool,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    subject: Option<String>,
    #[serde(default)]
    socket_id: Option<String>,
    #[serde(borrow, default)]
    info: Option<&'a RawValue>,
}

fn yes() -> bool {
    true
}

fn reason(r: &str) -> String {
    format!("{{\"reason\":{}}}", json_str(r))
}

/// What a join's hook decided: `Ok(reply)` or `Err(reply)`, each a JSON object.
pub fn join_decision(outcome: &Result<Bytes, Failure>) -> Result<String, String> {
    match outcome {
        Err(Failure::Timeout) => Err(reason("join timed out")),
        Err(Failure::Malformed) => Err(reason("join hook answered badly")),
        Err(_) => Err(reason("join hook unavailable")),
        Ok(body) => match serde_json::from_slice::<JoinAnswer<'_>>(body) {
            Ok(a) if a.allow => Ok(object(a.reply).unwrap_or("{}").to_string()),
            Ok(a) => Err(reason(a.reason.as_deref().unwrap_or("join refused"))),
            Err(_) => Err(reason("join hook answered badly")),
        },
    }
}

/// What a push's hook decided.
pub struct PushDecision {
    pub ok: bool,
    pub reply: String,
    /// Broadcast this payload (the push's own, or the backend's rewrite).
    pub broadcast: Option<Option<String>>,
}

pub fn push_decision(outcome: &Result<Bytes, Failure>) -> PushDecision {
    let failed = |r: &str| PushDecision {
        ok: false,
        reply: reason(r),
        broadcast: None,
    };
    match outcome {
        Err(Failure::Timeout) => failed("push timed out"),
        Err(Failure::Malformed) => failed("push hook answered badly"),
        Err(_) => failed("push hook unavailable"),
        Ok(body) => match serde_json::from_slice::<PushAnswer<'_>>(body) {
            Ok(a) => PushDecision {
                ok: a.ok,
                reply: object(a.reply).unwrap_or("{}").to_string(),
                broadcast: a.broadcast.then(|| object(a.payload).map(str::to_string)),
            },
            Err(_) => failed("push hook answered badly"),
        },
    }
}

/// What the connect hook decided: the changes to the socket's identity, or why it is refused
/// (HTTP status, reason).
pub fn connect_decision(
    outcome: &Result<Bytes, Failure>,
    who: &mut Identity,
) -> Result<(), (u16, String)> {
    let a = match outcome {
        Err(Failure::Timeout) => return Err((503, "connect hook timed out".into())),
        Err(Failure::Malformed) => return Err((503, "connect hook answered badly".into())),
        Err(_) => return Err((503, "connect hook unavailable".into())),
        Ok(body) => serde_json::from_slice::<ConnectAnswer<'_>>(body)
            .map_err(|_| (503, "connect hook answered badly".to_string()))?,
    };
    if !a.allow {
        return Err((403, a.reason.unwrap_or_else(|| "connection refused".into())));
    }
    if let Some(s) = a.subject {
        who.user = Some(s.into());
    }
    if let Some(id) = a.socket_id {
        who.socket_id = Some(id.into());
    }
    if let Some(info) = a.info {
        who.info = Some(info.get().into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Result<Bytes, Failure> {
        Ok(Bytes::from(s.to_string()))
    }

    #[test]
    fn answers_mean_what_docs_hooks_md_says() {
        assert_eq!(
            join_decision(&ok(r#"{"allow":true,"reply":{"n":1}}"#)),
            Ok(r#"{"n":1}"#.into())
        );
        assert_eq!(join_decision(&ok(r#"{"allow":true}"#)), Ok("{}".into()));
        assert_eq!(
            join_decision(&ok(r#"{"allow":false,"reason":"no \"way\""}"#)),
            Err(r#"{"reason":"no \"way\""}"#.into())
        );
        assert_eq!(
            join_decision(&Err(Failure::Timeout)),
            Err(r#"{"reason":"join timed out"}"#.into())
        );
        assert!(join_decision(&ok("[1]")).is_err());
        assert!(join_decision(&ok("nope")).is_err());
        let p = push_decision(&ok(
            r#"{"reply":{"a":1},"broadcast":true,"payload":{"b":2}}"#,
        ));
        assert!(p.ok);
        assert_eq!(p.reply, r#"{"a":1}"#);
        assert_eq!(p.broadcast, Some(Some(r#"{"b":2}"#.into())));
        let p = push_decision(&ok(r#"{"ok":false}"#));
        assert!(!p.ok && p.broadcast.is_none());
        let mut who = Identity::default();
        assert!(
            connect_decision(
                &ok(r#"{"allow":true,"subject":"bob","info":{"x":1}}"#),
                &mut who
            )
            .is_ok()
        );
        assert_eq!(who.user.as_deref(), Some("bob"));
        assert_eq!(who.info.as_deref(), Some(r#"{"x":1}"#));
        assert_eq!(
            connect_decision(&ok(r#"{"allow":false,"reason":"banned"}"#), &mut who),
            Err((403, "banned".into()))
        );
    }

    #[test]
    fn request_bodies_are_json() {
        let who = Identity {
            user: Some("alice".into()),
            info: Some(r#"{"plan":"pro"}"#.into()),
            client: Some("127.0.0.1:5000".parse().unwrap()),
            ..Identity::default()
        };
        let b = request_json(
            Hook::Join,
            "n1",
            Some(&who),
            "room:\"1\"",
            "phx_join",
            Payload::Json(r#"{"a":[1]}"#),
        );
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["v"], 1);
        assert_eq!(v["hook"], "join");
        assert_eq!(v["subject"], "alice");
        assert_eq!(v["info"]["plan"], "pro");
        assert_eq!(v["topic"], "room:\"1\"");
        assert_eq!(v["payload"]["a"][0], 1);
        assert_eq!(v["client"], "127.0.0.1:5000");
        assert_eq!(v["socket_id"], serde_json::Value::Null);
        let b = connect_json("n1", None, "vsn=2.0.0", None);
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        assert_eq!(v["query"], "vsn=2.0.0");
    }
}

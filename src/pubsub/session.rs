//! Phoenix Channels on one socket: joins, leaves, pushes, heartbeats, replies, answered exactly
//! as Phoenix's `Phoenix.Socket` answers them (see `lib/phoenix/socket.ex`). Written below in
//! V2's arrays; a V1 socket (`Ctx::wire`) gets the same messages as V1 objects, without their
//! `join_ref`, and every check is the same for both.
//!
//! - `heartbeat` on topic `phoenix` -> `[null, ref, "phoenix", "phx_reply", ok {}]`.
//! - `phx_join` on an allowed topic -> the handler decides; ok/error reply with the join's refs.
//!   A topic the config does not allow -> error `{"reason":"unmatched topic"}` (join_ref null).
//!   Past `max_channels` -> error `{"reason":"too many channels joined"}`.
//!   Joining a topic already joined -> `phx_close` for the old join_ref, then the new join.
//! - `phx_leave` -> ok reply, then `phx_close` with the join_ref.
//! - A push on a joined topic -> the handler decides (default: ok reply + broadcast to the topic).
//!   A push on a topic not joined -> error `{"reason":"unmatched topic"}`.
//!   A message whose join_ref is not the current join of its topic is stale and ignored.
//! - A push whose event is reserved (every `phx_*` but join and leave, `presence_state`,
//!   `presence_diff`) never reaches the handler and is never broadcast: error
//!   `{"reason":"reserved event"}` when the push has a ref, counted in `refused_events`.
//! - A broadcast is refused, whoever asks for it (the default push behaviour, the HTTP API):
//!   for a reserved event, or a JSON payload that is not an object (see [`Hub::broadcast`]).
//! - A frame that is not a Phoenix message closes the socket (Phoenix's socket process crashes on
//!   it): 1007 for text, 1003 for binary; a ref longer than 64 bytes closes it with 1008.

use std::cell::RefCell;

use crate::app::handler::{InReply, PresenceChange, Socket, Terminate};
use crate::hooks::client::Hook;
use crate::proto::phoenix::Payload;
use crate::proto::phoenix::{
    self, EVENT_CLOSE, EVENT_ERROR, EVENT_JOIN, EVENT_LEAVE, Frame, Message, TOPIC_PHOENIX,
    is_reserved_event,
};
use crate::pubsub::encode::{self, Wire};
use crate::pubsub::hub::{EVENT_PRESENCE_STATE, Hub};
use crate::pubsub::pending::{self, Identity, Waiting};
use crate::pubsub::presence::{Meta, Op, Ref, meta_from_object, meta_from_payload};
use crate::pubsub::publication::Refused;
use crate::pubsub::topics::{Sub, Subscription};
use crate::runtime::shard::Stats;

/// One joined channel: its place in the core's topic table, its join ref, and its presence on
/// a presence topic.
struct Joined {
    sub: Subscription,
    join_ref: Option<Box<str>>,
    /// Its presences (empty, no allocation, off presence topics).
    tracked: Box<[Tracked]>,
}

/// The presence a channel holds: its key and the `phx_ref` of its current meta.
struct Tracked {
    key: Box<str>,
    phx_ref: Ref,
}

/// The channels of one socket. Empty (no allocation) until the first join.
#[derive(Default)]
pub struct Session {
    joins: Vec<Joined>,
    /// Who the socket is (its token's subject and claims, what the connect hook said), if any.
    who: Option<Box<Identity>>,
}

/// The connection this session belongs to, and the wire format it speaks.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub hub: &'a Hub,
    pub key: usize,
    pub generation: u32,
    pub wire: Wire,
}

/// Close the socket with this code and reason.
pub type CloseWith = (u16, &'static str);

const UNMATCHED: &str = r#"{"reason":"unmatched topic"}"#;
const TOO_MANY: &str = r#"{"reason":"too many channels joined"}"#;
const TOO_MANY_PRESENCES: &str = r#"{"reason":"too many presences"}"#;
const NOT_TRACKED: &str = r#"{"reason":"not tracked"}"#;
/// The client event that replaces its presence's meta: `{"meta": {...}}`.
pub const EVENT_PRESENCE_UPDATE: &str = "presence_update";

impl Session {
    pub fn new(user: Option<&str>) -> Session {
        Session::with_identity(user.map(|u| {
            Box::new(Identity {
                user: Some(u.into()),
                ..Identity::default()
            })
        }))
    }

    /// A session for a socket that is `who`.
    pub fn with_identity(who: Option<Box<Identity>>) -> Session {
        Session {
            joins: Vec::new(),
            who,
        }
    }

    fn user(&self) -> Option<&str> {
        self.who.as_ref().and_then(|w| w.user.as_deref())
    }

    fn socket<'a>(
        &'a self,
        ctx: Ctx<'_>,
        presence: Option<&'a RefCell<Vec<PresenceChange>>>,
    ) -> Socket<'a> {
        Socket {
            user: self.user(),
            core: ctx.hub.shard.id,
            presence,
        }
    }

    /// Handle one data message from the client.
    pub fn on_frame(&mut self, ctx: Ctx<'_>, frame: Frame<'_>) -> Result<(), CloseWith> {
        if let Some(h) = ctx.hub.hooks()
            && h.is_pending(ctx.key, ctx.generation)
        {
            // Behind a join or push that waits for its hook: in order, after it.
            h.queue(ctx.key, frame);
            return Ok(());
        }
        let msg = match phoenix::decode(ctx.wire.vsn(), frame) {
            Ok(m) => m,
            Err(e @ phoenix::DecodeError::RefTooLong { .. }) => {
                return Err((e.close_code(frame), "ref too long"));
            }
            Err(e) => return Err((e.close_code(frame), "not a phoenix message")),
        };
        if msg.is_heartbeat() {
            reply(ctx, None, msg.msg_ref.as_deref(), TOPIC_PHOENIX, true, "{}");
            return Ok(());
        }
        match &*msg.event {
            EVENT_JOIN => self.join(ctx, &msg),
            EVENT_LEAVE => self.leave(ctx, &msg),
            event if is_reserved_event(event) => {
                Stats::bump(&ctx.hub.counters.refused_events);
                if msg.msg_ref.is_some() {
                    let r = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
                    let reason = Refused::ReservedEvent.response();
                    reply(ctx, r.0, r.1, &msg.topic, false, reason);
                }
            }
            _ => self.push(ctx, &msg),
        }
        Ok(())
    }

    fn find(&self, topic: &str) -> Option<usize> {
        self.joins.iter().position(|j| &*j.sub.topic == topic)
    }

    fn join(&mut self, ctx: Ctx<'_>, msg: &Message<'_>) {
        let topic = &*msg.topic;
        let (join_ref, msg_ref) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
        let channels = self.who.as_ref().and_then(|w| w.channels.as_deref());
        if topic == TOPIC_PHOENIX
            || !ctx.hub.shard.cfg.topic_allowed(topic)
            || channels.is_some_and(|c| !crate::config::Config::pattern_matches(c, topic))
        {
            reply(ctx, None, msg_ref, topic, false, UNMATCHED);
            return;
        }
        if let Some(i) = self.find(topic) {
            // Duplicate join: close the old one first (Phoenix shuts the old channel down).
            let old = self.remove(ctx, i, Terminate::DuplicateJoin);
            push(
                ctx,
                old.as_deref(),
                old.as_deref(),
                topic,
                EVENT_CLOSE,
                "{}",
            );
        }
        if self.joins.len() >= ctx.hub.shard.cfg.max_channels {
            reply(ctx, join_ref, msg_ref, topic, false, TOO_MANY);
            Stats::bump(&ctx.hub.counters.join_errors);
            return;
        }
        // Presence: who this socket is on the topic, and its meta, checked before the handler.
        let is_presence = ctx.hub.shard.cfg.presence_topic(topic);
        let default = match self.presence_for(ctx, topic, msg.payload) {
            Ok(p) => p,
            Err(reason) => {
                Stats::bump(&ctx.hub.counters.join_errors);
                reply(ctx, join_ref, msg_ref, topic, false, reason);
                return;
            }
        };
        if let Some(h) = ctx.hub.hooks()
            && h.wants(Hook::Join, topic)
        {
            // The backend decides, off the core; the socket waits (see `resume`).
            let body = pending::request_json(
                Hook::Join,
                h.node(),
                self.who.as_deref(),
                topic,
                EVENT_JOIN,
                msg.payload,
            );
            let waiting = Waiting::Join {
                topic: topic.into(),
                join_ref: join_ref.map(Box::from),
                msg_ref: msg_ref.map(Box::from),
                default,
                since: crate::pubsub::history::recover_of(msg.payload),
            };
            if let Err(busy) = h.ask(Hook::Join, ctx.key, ctx.generation, waiting, body) {
                Stats::bump(&ctx.hub.counters.join_errors);
                reply(ctx, join_ref, msg_ref, topic, false, busy);
            }
            return;
        }
        let asked = RefCell::new(Vec::new());
        let socket = self.socket(ctx, is_presence.then_some(&asked));
        let decision = ctx.hub.guard(|h| h.join(socket, topic, msg.payload));
        let decision = decision.map(|d| d.map(|r| (r, asked.into_inner())));
        let since = crate::pubsub::history::recover_of(msg.payload);
        self.finish_join(ctx, topic, (join_ref, msg_ref), (default, since), decision);
    }

    /// Carry out a join's decision (the handler's or the hook's; `None`: the handler panicked):
    /// subscribe and reply, with the presence changes it asked for.
    #[allow(clippy::type_complexity)]
    fn finish_join(
        &mut self,
        ctx: Ctx<'_>,
        topic: &str,
        (join_ref, msg_ref): (Option<&str>, Option<&str>),
        (default, since): (
            Option<(Box<str>, Meta)>,
            Option<Option<crate::pubsub::history::Position>>,
        ),
        decision: Option<
            Result<(std::borrow::Cow<'_, str>, Vec<PresenceChange>), std::borrow::Cow<'_, str>>,
        >,
    ) {
        let is_presence = ctx.hub.shard.cfg.presence_topic(topic);
        match decision {
            Some(Ok((response, asked))) => {
                let sub = Sub::new(ctx.key, ctx.generation, ctx.wire.number());
                let sub = ctx.hub.subscribe(topic, sub);
                Stats::bump(&ctx.hub.counters.joins);
                Stats::bump(&ctx.hub.counters.channels);
                // A history topic: the reply carries the position, then what the join asked to
                // recover follows it, before anything delivered later (see `pubsub::history`).
                match ctx.hub.history_join(topic, since) {
                    None => reply(ctx, join_ref, msg_ref, topic, true, &response),
                    Some(r) => {
                        let response = r.response(&response);
                        reply(ctx, join_ref, msg_ref, topic, true, &response);
                        for p in &r.replay {
                            if let Some(f) = encode::broadcast(&ctx.hub.shard, ctx.wire, p) {
                                ctx.hub.shard.enqueue(ctx.key, f);
                            }
                        }
                    }
                }
                let mut tracked = Vec::new();
                if is_presence {
                    // The state as this core knows it, then (through the topic's home, in a
                    // diff like everyone's) the joiner's own join.
                    let state = ctx.hub.presence.borrow_mut().state_json(topic);
                    push(ctx, join_ref, None, topic, EVENT_PRESENCE_STATE, &state);
                    if asked.is_empty() {
                        if let Some((key, meta)) = default {
                            track(ctx, topic, &mut tracked, key, meta);
                        }
                    } else {
                        apply_changes(ctx, topic, &mut tracked, asked);
                    }
                }
                if self.joins.is_empty() {
                    // Most sockets join one channel: room for exactly one (a first push would
                    // make room for four, 3 x 56 bytes a socket never uses).
                    self.joins.reserve_exact(1);
                }
                self.joins.push(Joined {
                    sub,
                    join_ref: join_ref.map(Box::from),
                    tracked: tracked.into_boxed_slice(),
                });
            }
            Some(Err(response)) => {
                Stats::bump(&ctx.hub.counters.join_errors);
                reply(ctx, join_ref, msg_ref, topic, false, &response);
            }
            None => {
                Stats::bump(&ctx.hub.counters.join_errors);
                reply(
                    ctx,
                    join_ref,
                    msg_ref,
                    topic,
                    false,
                    r#"{"reason":"join crashed"}"#,
                );
            }
        }
    }

    /// On a presence topic, the key and meta this socket joins with: `Ok(None)` when it is not
    /// tracked (not a presence topic, or no token and no `presence_anonymous`), `Err(reason)`
    /// for a meta that is refused or a topic that is full.
    fn presence_for(
        &self,
        ctx: Ctx<'_>,
        topic: &str,
        payload: Payload<'_>,
    ) -> Result<Option<(Box<str>, Meta)>, &'static str> {
        let cfg = &ctx.hub.shard.cfg;
        if !cfg.presence_topic(topic) {
            return Ok(None);
        }
        let mut tracker = ctx.hub.presence.borrow_mut();
        let key = match (self.user(), cfg.presence_anonymous) {
            (Some(user), _) => Box::from(user),
            (None, true) => tracker.refs.socket_id(ctx.key, ctx.generation),
            (None, false) => return Ok(None),
        };
        if tracker.entries(topic) >= cfg.max_presences_per_topic {
            Stats::bump(&ctx.hub.counters.presence_refused);
            return Err(TOO_MANY_PRESENCES);
        }
        let text = match payload {
            Payload::Json(t) => t,
            Payload::Binary(_) => "{}",
        };
        let phx_ref = tracker.refs.fresh();
        // The token's `presence` meta, when it has one, rather than what the client says.
        let meta = match self.who.as_ref().and_then(|w| w.presence.as_deref()) {
            Some(m) => meta_from_object(m, cfg.max_presence_meta_bytes, phx_ref, None),
            None => meta_from_payload(text, cfg.max_presence_meta_bytes, phx_ref, None),
        }
        .map_err(|e| e.response())?;
        Ok(Some((key, meta)))
    }

    /// `presence_update` on a tracked channel: the new meta replaces the old one of each of the
    /// channel's presences (a leave of the old and a join of the new, with `phx_ref_prev`).
    fn presence_update(&mut self, ctx: Ctx<'_>, i: usize, msg: &Message<'_>) {
        let topic = &*msg.topic;
        let refs = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
        if self.joins[i].tracked.is_empty() {
            reply(ctx, refs.0, refs.1, topic, false, NOT_TRACKED);
            return;
        }
        let text = match msg.payload {
            Payload::Json(t) => t,
            Payload::Binary(_) => "{}",
        };
        let max = ctx.hub.shard.cfg.max_presence_meta_bytes;
        // Checked once, before anything changes.
        if let Err(e) = meta_from_payload(text, max, Ref::default(), None) {
            reply(ctx, refs.0, refs.1, topic, false, e.response());
            return;
        }
        let mut tracked = std::mem::take(&mut self.joins[i].tracked).into_vec();
        for t in &mut tracked {
            let phx_ref = ctx.hub.presence.borrow_mut().refs.fresh();
            if let Ok(meta) = meta_from_payload(text, max, phx_ref, Some(t.phx_ref)) {
                replace(ctx, topic, t, meta);
            }
        }
        self.joins[i].tracked = tracked.into_boxed_slice();
        reply(ctx, refs.0, refs.1, topic, true, "{}");
    }

    fn leave(&mut self, ctx: Ctx<'_>, msg: &Message<'_>) {
        let topic = &*msg.topic;
        let (join_ref, msg_ref) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
        match self.find(topic) {
            Some(i) if join_ref.is_none() || self.joins[i].join_ref.as_deref() == join_ref => {
                let current = self.remove(ctx, i, Terminate::Left);
                let current = current.as_deref();
                reply(ctx, current, msg_ref, topic, true, "{}");
                push(ctx, current, current, topic, EVENT_CLOSE, "{}");
            }
            Some(_) => {} // stale join_ref: the client raced a close we already sent
            None => reply(ctx, join_ref, msg_ref, topic, true, "{}"),
        }
    }

    fn push(&mut self, ctx: Ctx<'_>, msg: &Message<'_>) {
        let topic = &*msg.topic;
        let (join_ref, msg_ref) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
        let Some(i) = self.find(topic) else {
            reply(ctx, None, msg_ref, topic, false, UNMATCHED);
            return;
        };
        if join_ref.is_some() && self.joins[i].join_ref.as_deref() != join_ref {
            return; // stale: meant for an earlier join of this topic
        }
        if &*msg.event == EVENT_PRESENCE_UPDATE && ctx.hub.shard.cfg.presence_topic(topic) {
            self.presence_update(ctx, i, msg);
            return;
        }
        if let Some(h) = ctx.hub.hooks()
            && h.wants(Hook::Push, topic)
        {
            let body = pending::request_json(
                Hook::Push,
                h.node(),
                self.who.as_deref(),
                topic,
                &msg.event,
                msg.payload,
            );
            let waiting = Waiting::Push {
                topic: topic.into(),
                event: (*msg.event).into(),
                join_ref: join_ref.map(Box::from),
                msg_ref: msg_ref.map(Box::from),
                payload: match msg.payload {
                    Payload::Json(p) => p.into(),
                    Payload::Binary(_) => "{}".into(),
                },
                binary: match msg.payload {
                    Payload::Json(_) => None,
                    Payload::Binary(b) => Some(b.into()),
                },
            };
            if let Err(busy) = h.ask(Hook::Push, ctx.key, ctx.generation, waiting, body) {
                reply(ctx, join_ref, msg_ref, topic, false, busy);
            }
            return;
        }
        let asked = RefCell::new(Vec::new());
        let is_presence = ctx.hub.shard.cfg.presence_topic(topic);
        let socket = self.socket(ctx, is_presence.then_some(&asked));
        let decision = ctx
            .hub
            .guard(|h| h.handle_in(socket, topic, &msg.event, msg.payload));
        let asked = asked.into_inner();
        if !asked.is_empty() && decision.is_some() {
            let mut tracked = std::mem::take(&mut self.joins[i].tracked).into_vec();
            apply_changes(ctx, topic, &mut tracked, asked);
            self.joins[i].tracked = tracked.into_boxed_slice();
        }
        match decision {
            Some(InReply::OkAndBroadcast) => {
                match ctx.hub.broadcast(topic, &msg.event, msg.payload) {
                    Ok(()) => reply(ctx, join_ref, msg_ref, topic, true, "{}"),
                    Err(why) => reply(ctx, join_ref, msg_ref, topic, false, why.response()),
                }
            }
            Some(InReply::Reply { ok, response }) => {
                reply(ctx, join_ref, msg_ref, topic, ok, &response)
            }
            Some(InReply::NoReply) => {}
            None => {
                // Like a crashed channel process: phx_error, and the channel is gone.
                let current = self.remove(ctx, i, Terminate::Crashed);
                let r = current.as_deref();
                push(
                    ctx,
                    r,
                    r,
                    topic,
                    EVENT_ERROR,
                    r#"{"reason":"channel_crash"}"#,
                );
            }
        }
    }

    /// Leave channel `i`; returns its join ref.
    fn remove(&mut self, ctx: Ctx<'_>, i: usize, why: Terminate) -> Option<Box<str>> {
        let j = self.joins.swap_remove(i);
        ctx.hub.unsubscribe(&j.sub);
        for t in j.tracked.into_vec() {
            ctx.hub.presence_send(Op::Untrack {
                topic: Box::from(&*j.sub.topic),
                key: t.key,
                phx_ref: t.phx_ref,
            });
        }
        Stats::sub(&ctx.hub.counters.channels, 1);
        let socket = self.socket(ctx, None);
        ctx.hub.guard(|h| h.terminate(socket, &j.sub.topic, why));
        if self.joins.is_empty() {
            self.joins = Vec::new(); // give the memory back
        }
        j.join_ref
    }

    /// The hook this socket waited for has answered: carry its answer out, then handle the
    /// messages that came in behind it, in order (one may wait for a hook again: the rest then
    /// queue behind that one).
    pub fn resume(&mut self, ctx: Ctx<'_>) -> Result<(), CloseWith> {
        let Some(h) = ctx.hub.hooks() else {
            return Ok(());
        };
        let Some((waiting, outcome, queued)) = h.take_answered(ctx.key, ctx.generation) else {
            return Ok(());
        };
        match waiting {
            Waiting::Connect => {}
            Waiting::Join {
                topic,
                join_ref,
                msg_ref,
                default,
                since,
            } => {
                let refs = (join_ref.as_deref(), msg_ref.as_deref());
                let decision = pending::join_decision(&outcome)
                    .map(|r| (r.into(), Vec::new()))
                    .map_err(Into::into);
                // Nothing of this socket ran meanwhile (its later messages waited behind the
                // join), so the checks made before asking still hold.
                self.finish_join(ctx, &topic, refs, (default, since), Some(decision));
            }
            Waiting::Push {
                topic,
                event,
                join_ref,
                msg_ref,
                payload,
                binary,
            } => {
                let refs = (join_ref.as_deref(), msg_ref.as_deref());
                let d = pending::push_decision(&outcome);
                // Still joined (the push's join may have ended: a close from the server)?
                if self.find(&topic).is_none() {
                    reply(ctx, None, refs.1, &topic, false, UNMATCHED);
                } else if let Some(rewrite) = d.broadcast {
                    let p = match (&rewrite, &binary) {
                        (Some(r), _) => Payload::Json(r),
                        (None, Some(b)) => Payload::Binary(b),
                        (None, None) => Payload::Json(&payload),
                    };
                    match ctx.hub.broadcast(&topic, &event, p) {
                        Ok(()) => reply(ctx, refs.0, refs.1, &topic, d.ok, &d.reply),
                        Err(why) => reply(ctx, refs.0, refs.1, &topic, false, why.response()),
                    }
                } else {
                    reply(ctx, refs.0, refs.1, &topic, d.ok, &d.reply);
                }
            }
        }
        for (text, bytes) in queued {
            let frame = if text {
                match std::str::from_utf8(&bytes) {
                    Ok(t) => Frame::Text(t),
                    Err(_) => continue, // checked by the frame layer when it came in
                }
            } else {
                Frame::Binary(&bytes)
            };
            self.on_frame(ctx, frame)?;
        }
        Ok(())
    }

    /// Leave every channel (the socket is closing).
    pub fn leave_all(&mut self, ctx: Ctx<'_>) {
        if let Some(h) = ctx.hub.hooks() {
            h.forget(ctx.key, ctx.generation);
        }
        while !self.joins.is_empty() {
            self.remove(ctx, self.joins.len() - 1, Terminate::Closed);
        }
    }
}

/// Track `key` with `meta` for a channel of topic `topic`.
fn track(ctx: Ctx<'_>, topic: &str, tracked: &mut Vec<Tracked>, key: Box<str>, meta: Meta) {
    tracked.push(Tracked {
        key: key.clone(),
        phx_ref: meta.phx_ref,
    });
    ctx.hub.presence_send(Op::Track {
        topic: topic.into(),
        key,
        meta,
    });
}

/// Replace a tracked presence's meta with `meta` (whose `phx_ref_prev` is the old ref).
fn replace(ctx: Ctx<'_>, topic: &str, t: &mut Tracked, meta: Meta) {
    let old = std::mem::replace(&mut t.phx_ref, meta.phx_ref);
    ctx.hub.presence_send(Op::Untrack {
        topic: topic.into(),
        key: t.key.clone(),
        phx_ref: old,
    });
    ctx.hub.presence_send(Op::Track {
        topic: topic.into(),
        key: t.key.clone(),
        meta,
    });
}

/// Carry out the presence changes a handler asked for on a channel. A meta that is not a JSON
/// object, or over `max_presence_meta_bytes`, or a topic at `max_presences_per_topic`, changes
/// nothing (counted as refused).
fn apply_changes(
    ctx: Ctx<'_>,
    topic: &str,
    tracked: &mut Vec<Tracked>,
    asked: Vec<PresenceChange>,
) {
    let cfg = &ctx.hub.shard.cfg;
    let meta = |json: &str, prev: Option<Ref>| {
        let phx_ref = ctx.hub.presence.borrow_mut().refs.fresh();
        let m = meta_from_object(json, cfg.max_presence_meta_bytes, phx_ref, prev);
        if m.is_err() {
            Stats::bump(&ctx.hub.counters.presence_refused);
        }
        m.ok()
    };
    for change in asked {
        match change {
            PresenceChange::Track { key, meta: json } => {
                if ctx.hub.presence.borrow().entries(topic) >= cfg.max_presences_per_topic {
                    Stats::bump(&ctx.hub.counters.presence_refused);
                } else if let Some(m) = meta(&json, None) {
                    track(ctx, topic, tracked, key.into(), m);
                }
            }
            PresenceChange::Untrack { key } => {
                tracked.retain(|t| {
                    if *t.key != *key {
                        return true;
                    }
                    ctx.hub.presence_send(Op::Untrack {
                        topic: topic.into(),
                        key: t.key.clone(),
                        phx_ref: t.phx_ref,
                    });
                    false
                });
            }
            PresenceChange::Update { key, meta: json } => {
                for t in tracked.iter_mut().filter(|t| *t.key == *key) {
                    if let Some(m) = meta(&json, Some(t.phx_ref)) {
                        replace(ctx, topic, t, m);
                    }
                }
            }
        }
    }
}

/// Queue a `phx_reply` on the socket.
fn reply(
    ctx: Ctx<'_>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    ok: bool,
    response: &str,
) {
    let shard = &*ctx.hub.shard;
    if let Some(frame) = encode::reply(shard, ctx.wire, (join_ref, msg_ref), topic, ok, response) {
        shard.enqueue(ctx.key, frame);
    }
}

/// Queue a server push (`phx_close`, `phx_error`) on the socket.
fn push(
    ctx: Ctx<'_>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) {
    let shard = &*ctx.hub.shard;
    let refs = (join_ref, msg_ref);
    if let Some(frame) = encode::push(shard, ctx.wire, refs, topic, event, payload) {
        shard.enqueue(ctx.key, frame);
    }
}

#[cfg(test)]
mod tests {
    //! The channel layer in memory, without sockets (as quinn tests quinn-proto): text frames in
    //! through [`Session::on_frame`], the frames queued on the connection's slot out, compared
    //! with what Phoenix answers (see the module documentation).

    use std::borrow::Cow;
    use std::rc::Rc;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};

    use serde_json::{Value, json};

    use super::*;
    use crate::app::handler::{DefaultHandler, Handler};
    use crate::config::Config;
    use crate::proto::frame::close::code;
    use crate::proto::phoenix::Payload;
    use crate::pubsub::hub::tests::{core, queued};

    /// One connection: its slot on the core and its session.
    struct Client {
        session: Session,
        key: usize,
        generation: u32,
        wire: Wire,
    }

    impl Client {
        fn open(hub: &Hub) -> Client {
            Client::open_as(hub, Wire::V2)
        }

        fn open_as(hub: &Hub, wire: Wire) -> Client {
            let (key, generation) = hub.shard.open_slot();
            Client {
                session: Session::new(None),
                key,
                generation,
                wire,
            }
        }

        fn ctx<'a>(&self, hub: &'a Hub) -> Ctx<'a> {
            Ctx {
                hub,
                key: self.key,
                generation: self.generation,
                wire: self.wire,
            }
        }

        /// Feed one text frame.
        fn text(&mut self, hub: &Hub, text: &str) -> Result<(), CloseWith> {
            let ctx = self.ctx(hub);
            self.session.on_frame(ctx, Frame::Text(text))
        }

        /// Feed one message; it must not close the socket.
        fn send(&mut self, hub: &Hub, msg: Value) {
            assert_eq!(self.text(hub, &msg.to_string()), Ok(()), "{msg}");
        }

        /// What was queued on this connection since the last look.
        fn got(&self, hub: &Hub) -> Vec<Value> {
            queued(hub, self.key)
        }

        /// Send `msg` and take what it was answered with.
        fn ask(&mut self, hub: &Hub, msg: Value) -> Vec<Value> {
            self.send(hub, msg);
            self.got(hub)
        }

        /// Join presence topic `topic`: answered ok, then the state.
        fn join_presence(&mut self, hub: &Hub, topic: &str, join_ref: &str) {
            let got = self.ask(hub, json!([join_ref, join_ref, topic, "phx_join", {}]));
            assert_eq!(got[0], ok(join_ref, join_ref, topic, json!({})));
            assert_eq!(got[1][3], "presence_state");
        }

        /// Join `topic` with `join_ref` as both refs; it must be answered ok.
        fn join(&mut self, hub: &Hub, topic: &str, join_ref: &str) {
            let got = self.ask(hub, json!([join_ref, join_ref, topic, "phx_join", {}]));
            assert_eq!(got, [ok(join_ref, join_ref, topic, json!({}))]);
        }
    }

    fn default_core(cfg: Config) -> Rc<Hub> {
        core(cfg, Arc::new(DefaultHandler))
    }

    fn ok(join_ref: impl Into<Value>, msg_ref: &str, topic: &str, response: Value) -> Value {
        json!([join_ref.into(), msg_ref, topic, "phx_reply", {"status": "ok", "response": response}])
    }

    fn error(join_ref: impl Into<Value>, msg_ref: &str, topic: &str, reason: &str) -> Value {
        json!([join_ref.into(), msg_ref, topic, "phx_reply",
            {"status": "error", "response": {"reason": reason}}])
    }

    fn close(join_ref: &str, topic: &str) -> Value {
        json!([join_ref, join_ref, topic, "phx_close", {}])
    }

    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    /// A handler that writes down every call and panics where asked: in `join` for topic
    /// `crash:join`, in `handle_in` for event `crash`, in `terminate` for topic
    /// `crash:terminate`. Otherwise the default behaviour.
    #[derive(Default)]
    struct Recorder {
        calls: Mutex<Vec<String>>,
    }

    impl Recorder {
        fn note(&self, call: String) {
            self.calls.lock().unwrap().push(call);
        }

        fn take(&self) -> Vec<String> {
            std::mem::take(&mut *self.calls.lock().unwrap())
        }
    }

    impl Handler for Recorder {
        fn join(
            &self,
            _: Socket<'_>,
            topic: &str,
            _: Payload<'_>,
        ) -> Result<Cow<'static, str>, Cow<'static, str>> {
            self.note(format!("join {topic}"));
            assert_ne!(topic, "crash:join", "the handler panics in join");
            Ok(Cow::Borrowed("{}"))
        }

        fn handle_in(&self, _: Socket<'_>, topic: &str, event: &str, _: Payload<'_>) -> InReply {
            self.note(format!("in {topic} {event}"));
            assert_ne!(event, "crash", "the handler panics in handle_in");
            InReply::OkAndBroadcast
        }

        fn terminate(&self, _: Socket<'_>, topic: &str, why: Terminate) {
            self.note(format!("terminate {topic} {why:?}"));
            assert_ne!(topic, "crash:terminate", "the handler panics in terminate");
        }
    }

    fn recorded_core(cfg: Config) -> (Rc<Hub>, Arc<Recorder>) {
        let recorder = Arc::new(Recorder::default());
        (core(cfg, recorder.clone()), recorder)
    }

    #[test]
    fn a_socket_with_one_channel_holds_room_for_one() {
        let hub = default_core(Config::default());
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "1");
        assert_eq!(
            c.session.joins.capacity(),
            1,
            "not the four a first push makes room for"
        );
        c.join(&hub, "room:2", "2");
        assert_eq!(c.session.joins.len(), 2);
    }

    #[test]
    fn heartbeat_is_answered_ok_on_phoenix() {
        let hub = default_core(Config::default());
        let mut c = Client::open(&hub);
        let got = c.ask(&hub, json!([null, "1", "phoenix", "heartbeat", {}]));
        assert_eq!(got, [ok(Value::Null, "1", "phoenix", json!({}))]);
    }

    #[test]
    fn join_is_answered_with_its_refs_and_subscribes() {
        let hub = default_core(Config::default());
        let mut c = Client::open(&hub);
        let got = c.ask(
            &hub,
            json!(["3", "4", "room:1", "phx_join", {"token": "x"}]),
        );
        assert_eq!(got, [ok("3", "4", "room:1", json!({}))]);
        assert_eq!(hub.topics.borrow().count("room:1"), 1);
        assert_eq!(get(&hub.counters.joins), 1);
        assert_eq!(get(&hub.counters.channels), 1);
    }

    #[test]
    fn a_topic_not_allowed_is_unmatched_with_a_null_join_ref() {
        let hub = default_core(Config {
            topics: vec!["room:*".into()],
            ..Config::default()
        });
        let mut c = Client::open(&hub);
        for topic in ["chat:1", "phoenix"] {
            let got = c.ask(&hub, json!(["1", "2", topic, "phx_join", {}]));
            assert_eq!(got, [error(Value::Null, "2", topic, "unmatched topic")]);
        }
        assert_eq!(hub.topics.borrow().topics(), 0);
        assert_eq!(get(&hub.counters.channels), 0);
    }

    #[test]
    fn duplicate_join_closes_the_old_join_ref_then_answers_the_new_one() {
        let (hub, handler) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "1");
        let got = c.ask(&hub, json!(["2", "2", "room:1", "phx_join", {}]));
        assert_eq!(
            got,
            [close("1", "room:1"), ok("2", "2", "room:1", json!({}))]
        );
        assert_eq!(
            handler.take(),
            [
                "join room:1",
                "terminate room:1 DuplicateJoin",
                "join room:1"
            ]
        );
        assert_eq!(hub.topics.borrow().count("room:1"), 1, "subscribed once");
        assert_eq!(get(&hub.counters.channels), 1);
        // The old join_ref is stale now; the new one works.
        assert!(c.ask(&hub, json!(["1", "3", "room:1", "m", {}])).is_empty());
        let got = c.ask(&hub, json!(["2", "4", "room:1", "m", {}]));
        assert_eq!(got.len(), 2, "the broadcast and the reply: {got:?}");
        assert_eq!(got[1], ok("2", "4", "room:1", json!({})));
    }

    #[test]
    fn leave_is_answered_ok_then_closed() {
        let (hub, handler) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "1");
        let got = c.ask(&hub, json!(["1", "2", "room:1", "phx_leave", {}]));
        assert_eq!(
            got,
            [ok("1", "2", "room:1", json!({})), close("1", "room:1")]
        );
        assert_eq!(handler.take(), ["join room:1", "terminate room:1 Left"]);
        assert_eq!(hub.topics.borrow().topics(), 0);
        assert_eq!(get(&hub.counters.channels), 0);
        // Leaving a topic not joined is answered ok with its refs, and closes nothing.
        let got = c.ask(&hub, json!(["5", "6", "room:2", "phx_leave", {}]));
        assert_eq!(got, [ok("5", "6", "room:2", json!({}))]);
        assert!(handler.take().is_empty());
    }

    #[test]
    fn a_push_on_a_topic_not_joined_is_unmatched() {
        let (hub, handler) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        let got = c.ask(&hub, json!(["1", "5", "room:9", "new_msg", {}]));
        assert_eq!(got, [error(Value::Null, "5", "room:9", "unmatched topic")]);
        assert!(handler.take().is_empty(), "never reaches the handler");
        assert_eq!(get(&hub.counters.broadcasts), 0);
    }

    #[test]
    fn messages_with_a_stale_join_ref_are_ignored() {
        let (hub, handler) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "7");
        handler.take();
        // A push and a leave meant for an earlier join of the topic: nothing queued, nothing
        // broadcast, still joined.
        assert!(
            c.ask(&hub, json!(["6", "8", "room:1", "new_msg", {}]))
                .is_empty()
        );
        assert!(
            c.ask(&hub, json!(["6", "9", "room:1", "phx_leave", {}]))
                .is_empty()
        );
        assert!(handler.take().is_empty());
        assert_eq!(get(&hub.counters.broadcasts), 0);
        assert_eq!(hub.topics.borrow().count("room:1"), 1);
        // Without a join_ref (the V1 serializer sends none) the push is the current join's.
        let got = c.ask(&hub, json!([null, "10", "room:1", "new_msg", {}]));
        assert_eq!(
            got.last(),
            Some(&ok(Value::Null, "10", "room:1", json!({})))
        );
    }

    #[test]
    fn max_channels_refuses_the_join_past_it() {
        let hub = default_core(Config {
            max_channels: 2,
            ..Config::default()
        });
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "1");
        c.join(&hub, "room:2", "2");
        let got = c.ask(&hub, json!(["3", "3", "room:3", "phx_join", {}]));
        assert_eq!(got, [error("3", "3", "room:3", "too many channels joined")]);
        assert_eq!(get(&hub.counters.join_errors), 1);
        assert_eq!(get(&hub.counters.channels), 2);
        assert_eq!(hub.topics.borrow().count("room:3"), 0);
        // Joining a joined topic again at the limit replaces it: the count does not grow.
        let got = c.ask(&hub, json!(["4", "4", "room:1", "phx_join", {}]));
        assert_eq!(
            got,
            [close("1", "room:1"), ok("4", "4", "room:1", json!({}))]
        );
        assert_eq!(get(&hub.counters.channels), 2);
    }

    #[test]
    fn reserved_events_are_refused_and_reach_nobody() {
        let (hub, handler) = recorded_core(Config::default());
        let (mut a, mut b) = (Client::open(&hub), Client::open(&hub));
        a.join(&hub, "room:1", "1");
        b.join(&hub, "room:1", "1");
        handler.take();
        let reserved = [
            "phx_reply",
            "phx_close",
            "phx_error",
            "phx_anything",
            "presence_state",
            "presence_diff",
        ];
        for event in reserved {
            let got = a.ask(&hub, json!(["1", "7", "room:1", event, {}]));
            assert_eq!(
                got,
                [error("1", "7", "room:1", "reserved event")],
                "{event}"
            );
            // Without a ref there is nothing to answer: refused in silence.
            assert!(
                a.ask(&hub, json!(["1", null, "room:1", event, {}]))
                    .is_empty()
            );
            assert!(b.got(&hub).is_empty(), "{event} reached another member");
        }
        assert!(handler.take().is_empty(), "never reaches the handler");
        let c = &hub.counters;
        assert_eq!(get(&c.refused_events), 2 * reserved.len() as u64);
        assert_eq!((get(&c.broadcasts), get(&c.deliveries)), (0, 0));
        assert_eq!(hub.topics.borrow().count("room:1"), 2, "both still joined");
    }

    #[test]
    fn a_payload_that_is_not_an_object_is_refused_not_relayed() {
        let hub = default_core(Config::default());
        let (mut a, mut b) = (Client::open(&hub), Client::open(&hub));
        a.join(&hub, "room:1", "1");
        b.join(&hub, "room:1", "1");
        let payloads = [
            json!(null),
            json!([1, 2]),
            json!("text"),
            json!(7),
            json!(true),
        ];
        for payload in &payloads {
            let got = a.ask(&hub, json!(["1", "8", "room:1", "new_msg", payload]));
            let refused = error("1", "8", "room:1", "payload must be a JSON object");
            assert_eq!(got, [refused], "{payload}");
            assert!(b.got(&hub).is_empty(), "{payload} reached another member");
        }
        let c = &hub.counters;
        assert_eq!(get(&c.refused_payloads), payloads.len() as u64);
        assert_eq!((get(&c.broadcasts), get(&c.deliveries)), (0, 0));
    }

    /// Take what a tick publishes once the (1 ms) presence window has passed.
    fn presence_tick(hub: &Hub) {
        std::thread::sleep(std::time::Duration::from_millis(2));
        hub.on_tick();
    }

    fn diff_of(msgs: &[Value]) -> Value {
        let diffs: Vec<&Value> = msgs.iter().filter(|m| m[3] == "presence_diff").collect();
        assert_eq!(diffs.len(), 1, "one diff: {msgs:?}");
        assert_eq!((&diffs[0][0], &diffs[0][1]), (&Value::Null, &Value::Null));
        diffs[0][4].clone()
    }

    fn refs_of(v: &Value, key: &str) -> Vec<String> {
        v[key]["metas"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["phx_ref"].as_str().unwrap().to_string())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn presence_state_then_diffs_for_join_update_and_leave() {
        let cfg = Config {
            presence: vec!["room:*".into()],
            presence_anonymous: true,
            presence_diff_window_ms: 1,
            ..Config::default()
        };
        let hub = default_core(cfg);
        let mut a = Client::open(&hub);
        let got = a.ask(
            &hub,
            json!(["1", "1", "room:1", "phx_join", {"meta": {"n": "a"}}]),
        );
        assert_eq!(got[0], ok("1", "1", "room:1", json!({})));
        assert_eq!(got[1], json!(["1", null, "room:1", "presence_state", {}]));
        assert_eq!(got.len(), 2);
        presence_tick(&hub);
        let d = diff_of(&a.got(&hub));
        assert_eq!(d["leaves"], json!({}));
        let (key_a, metas) = d["joins"].as_object().unwrap().iter().next().unwrap();
        let key_a = key_a.clone();
        assert_eq!(key_a.len(), 16, "the socket's own id");
        assert_eq!(metas["metas"][0]["n"], "a");
        let ref_a = metas["metas"][0]["phx_ref"].as_str().unwrap().to_string();
        assert_eq!(ref_a.len(), 16);

        // A second member gets the state with the first, then both see its join.
        let mut b = Client::open(&hub);
        let got = b.ask(&hub, json!(["2", "2", "room:1", "phx_join", {}]));
        assert_eq!(got[1][3], "presence_state");
        assert_eq!(refs_of(&got[1][4], &key_a), std::slice::from_ref(&ref_a));
        presence_tick(&hub);
        let (da, db) = (diff_of(&a.got(&hub)), diff_of(&b.got(&hub)));
        assert_eq!(da, db, "the same diff for every member");
        let key_b = da["joins"]
            .as_object()
            .unwrap()
            .keys()
            .next()
            .unwrap()
            .clone();
        assert_ne!(key_a, key_b);

        // An update: a join of the new meta with phx_ref_prev, a leave of the old.
        let got = a.ask(
            &hub,
            json!(["1", "3", "room:1", "presence_update", {"meta": {"n": "away"}}]),
        );
        assert_eq!(got, [ok("1", "3", "room:1", json!({}))]);
        presence_tick(&hub);
        let d = diff_of(&b.got(&hub));
        assert_eq!(refs_of(&d["leaves"], &key_a), std::slice::from_ref(&ref_a));
        let new = &d["joins"][&key_a]["metas"][0];
        assert_eq!(
            (&new["n"], &new["phx_ref_prev"]),
            (&json!("away"), &json!(ref_a))
        );
        assert_ne!(new["phx_ref"], json!(ref_a));
        assert_eq!(diff_of(&a.got(&hub)), d, "the updater sees its own update");

        // A leave and a closed socket: the leave diffs; nothing is left.
        b.ask(&hub, json!(["2", "4", "room:1", "phx_leave", {}]));
        presence_tick(&hub);
        assert!(d_has_leave(&diff_of(&a.got(&hub)), &key_b));
        let mut c = Client::open(&hub);
        c.join_presence(&hub, "room:1", "5");
        presence_tick(&hub);
        c.got(&hub);
        a.session.leave_all(a.ctx(&hub));
        presence_tick(&hub);
        assert!(d_has_leave(&diff_of(&c.got(&hub)), &key_a));
        assert_eq!(get(&hub.counters.presence_diffs), 6);
        let mut d2 = Client::open(&hub);
        let got = d2.ask(&hub, json!(["9", "9", "room:1", "phx_join", {}]));
        let state = got[1][4].as_object().unwrap();
        assert_eq!(state.len(), 1, "only c is there: {state:?}");
    }

    fn d_has_leave(d: &Value, key: &str) -> bool {
        !refs_of(&d["leaves"], key).is_empty() && d["joins"] == json!({})
    }

    /// Tracks every joiner of `room:*` under `desk:<name from the join payload>` with a role;
    /// `away` updates it, `hide` untracks it.
    struct Desk;
    impl Handler for Desk {
        fn join(
            &self,
            socket: Socket<'_>,
            _topic: &str,
            payload: Payload<'_>,
        ) -> Result<Cow<'static, str>, Cow<'static, str>> {
            let Payload::Json(p) = payload else {
                return Err(Cow::Borrowed("{}"));
            };
            let v: Value = serde_json::from_str(p).unwrap();
            let key = format!("desk:{}", v["name"].as_str().unwrap_or("?"));
            assert!(socket.track(&key, r#"{"role":"agent"}"#));
            Ok(Cow::Borrowed("{}"))
        }

        fn handle_in(&self, socket: Socket<'_>, _: &str, event: &str, _: Payload<'_>) -> InReply {
            match event {
                "away" => socket.update("desk:ann", r#"{"role":"agent","away":true}"#),
                "hide" => socket.untrack("desk:ann"),
                _ => return InReply::OkAndBroadcast,
            };
            InReply::NoReply
        }
    }

    #[test]
    fn a_handler_tracks_updates_and_untracks_with_its_own_keys() {
        let cfg = Config {
            presence: vec!["room:*".into()],
            presence_anonymous: true, // replaced by the handler's own tracking
            presence_diff_window_ms: 1,
            ..Config::default()
        };
        let hub = crate::pubsub::hub::tests::core(cfg, Arc::new(Desk));
        let mut ann = Client::open(&hub);
        let got = ann.ask(
            &hub,
            json!(["1", "1", "room:1", "phx_join", {"name": "ann"}]),
        );
        assert_eq!(got[1][3], "presence_state");
        presence_tick(&hub);
        let d = diff_of(&ann.got(&hub));
        assert_eq!(
            d["joins"].as_object().unwrap().len(),
            1,
            "only the handler's key: {d}"
        );
        assert_eq!(d["joins"]["desk:ann"]["metas"][0]["role"], "agent");
        let first = d["joins"]["desk:ann"]["metas"][0]["phx_ref"].clone();
        ann.send(&hub, json!(["1", "2", "room:1", "away", {}]));
        presence_tick(&hub);
        let d = diff_of(&ann.got(&hub));
        let new = &d["joins"]["desk:ann"]["metas"][0];
        assert_eq!((&new["away"], &new["phx_ref_prev"]), (&json!(true), &first));
        assert_eq!(d["leaves"]["desk:ann"]["metas"][0]["phx_ref"], first);
        ann.send(&hub, json!(["1", "3", "room:1", "hide", {}]));
        presence_tick(&hub);
        let d = diff_of(&ann.got(&hub));
        assert_eq!(d["joins"], json!({}));
        assert_eq!(d["leaves"]["desk:ann"]["metas"][0]["away"], true);
        assert_eq!(hub.presence.borrow().home_totals(), (0, 0));
    }

    #[test]
    fn presence_is_refused_clearly_and_untracked_sockets_still_join() {
        let cfg = Config {
            presence: vec!["room:*".into()],
            presence_diff_window_ms: 1,
            max_presence_meta_bytes: 16,
            ..Config::default()
        };
        let hub = default_core(cfg.clone());
        // No token and no presence_anonymous: joined and shown the state (who is there), but
        // not tracked.
        let mut a = Client::open(&hub);
        a.join_presence(&hub, "room:1", "1");
        let got = a.ask(
            &hub,
            json!(["1", "2", "room:1", "presence_update", {"meta": {}}]),
        );
        assert_eq!(got, [error("1", "2", "room:1", "not tracked")]);
        presence_tick(&hub);
        assert!(a.got(&hub).is_empty());
        // Anonymous allowed: a meta too big or not an object is refused.
        let hub = default_core(Config {
            presence_anonymous: true,
            max_presences_per_topic: 1,
            ..cfg
        });
        let mut b = Client::open(&hub);
        let got = b.ask(
            &hub,
            json!(["1", "1", "room:1", "phx_join", {"meta": {"x": "0123456789abcdef"}}]),
        );
        assert_eq!(got, [error("1", "1", "room:1", "presence meta too large")]);
        let got = b.ask(
            &hub,
            json!(["1", "1", "room:1", "phx_join", {"meta": "me"}]),
        );
        assert_eq!(
            got,
            [error("1", "1", "room:1", "presence meta must be an object")]
        );
        b.join_presence(&hub, "room:1", "2");
        presence_tick(&hub);
        let mut c = Client::open(&hub);
        let got = c.ask(&hub, json!(["3", "3", "room:1", "phx_join", {}]));
        assert_eq!(got, [error("3", "3", "room:1", "too many presences")]);
    }

    #[test]
    fn a_push_reaches_every_member_on_the_core_once_sender_included() {
        let hub = default_core(Config::default());
        let (mut a, mut b) = (Client::open(&hub), Client::open(&hub));
        a.join(&hub, "room:1", "1");
        b.join(&hub, "room:1", "2");
        let outsider = {
            let mut o = Client::open(&hub);
            o.join(&hub, "room:2", "1");
            o
        };
        let broadcast = json!([null, null, "room:1", "new_msg", {"body": "hi"}]);
        let got = a.ask(&hub, json!(["1", "5", "room:1", "new_msg", {"body": "hi"}]));
        // The broadcast is queued on the sender before its reply.
        assert_eq!(got, [broadcast.clone(), ok("1", "5", "room:1", json!({}))]);
        assert_eq!(b.got(&hub), [broadcast]);
        assert!(outsider.got(&hub).is_empty());
        let c = &hub.counters;
        assert_eq!(get(&c.broadcasts), 1);
        assert_eq!((get(&c.encodes), get(&c.deliveries)), (1, 2));
        assert!(
            a.got(&hub).is_empty() && b.got(&hub).is_empty(),
            "exactly once"
        );
    }

    #[test]
    fn a_join_that_panics_is_answered_join_crashed_and_counted() {
        let (hub, _) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        let got = c.ask(&hub, json!(["1", "1", "crash:join", "phx_join", {}]));
        assert_eq!(got, [error("1", "1", "crash:join", "join crashed")]);
        let n = &hub.counters;
        assert_eq!(get(&n.handler_panics), 1);
        assert_eq!((get(&n.join_errors), get(&n.channels)), (1, 0));
        assert_eq!(hub.topics.borrow().topics(), 0, "not joined");
        let got = c.ask(&hub, json!(["1", "2", "crash:join", "m", {}]));
        assert_eq!(
            got,
            [error(Value::Null, "2", "crash:join", "unmatched topic")]
        );
    }

    #[test]
    fn a_push_that_panics_is_a_phx_error_and_ends_only_that_channel() {
        let (hub, handler) = recorded_core(Config::default());
        let (mut a, mut b) = (Client::open(&hub), Client::open(&hub));
        a.join(&hub, "room:1", "1");
        a.join(&hub, "room:2", "2");
        b.join(&hub, "room:1", "1");
        handler.take();
        let got = a.ask(&hub, json!(["1", "3", "room:1", "crash", {}]));
        let crashed = json!(["1", "1", "room:1", "phx_error", {"reason": "channel_crash"}]);
        assert_eq!(got, [crashed]);
        assert_eq!(
            handler.take(),
            ["in room:1 crash", "terminate room:1 Crashed"]
        );
        assert_eq!(get(&hub.counters.handler_panics), 1);
        assert!(b.got(&hub).is_empty(), "nothing reached the other member");
        assert_eq!(hub.topics.borrow().count("room:1"), 1, "only b is left");
        assert_eq!(get(&hub.counters.channels), 2);
        // The channel is gone; the socket and its other channel are not.
        let got = a.ask(&hub, json!(["1", "4", "room:1", "m", {}]));
        assert_eq!(got, [error(Value::Null, "4", "room:1", "unmatched topic")]);
        let got = a.ask(&hub, json!(["2", "5", "room:2", "m", {}]));
        assert_eq!(got.last(), Some(&ok("2", "5", "room:2", json!({}))));
    }

    #[test]
    fn a_terminate_that_panics_is_counted_and_the_leave_still_completes() {
        let (hub, handler) = recorded_core(Config::default());
        let mut c = Client::open(&hub);
        c.join(&hub, "crash:terminate", "1");
        let got = c.ask(&hub, json!(["1", "2", "crash:terminate", "phx_leave", {}]));
        assert_eq!(
            got,
            [
                ok("1", "2", "crash:terminate", json!({})),
                close("1", "crash:terminate")
            ]
        );
        assert_eq!(get(&hub.counters.handler_panics), 1);
        assert_eq!(hub.topics.borrow().topics(), 0);
        // On the socket's close, too: counted, and every channel is still left.
        c.join(&hub, "crash:terminate", "3");
        c.join(&hub, "room:1", "4");
        handler.take();
        let ctx = c.ctx(&hub);
        c.session.leave_all(ctx);
        let mut calls = handler.take();
        calls.sort();
        assert_eq!(
            calls,
            [
                "terminate crash:terminate Closed",
                "terminate room:1 Closed"
            ]
        );
        assert_eq!(get(&hub.counters.handler_panics), 2);
        assert_eq!(get(&hub.counters.channels), 0);
        assert_eq!(hub.topics.borrow().topics(), 0);
        assert!(c.got(&hub).is_empty(), "a closing socket is sent nothing");
    }

    #[test]
    fn frames_that_are_not_phoenix_messages_close_the_socket() {
        let hub = default_core(Config::default());
        let mut c = Client::open(&hub);
        for text in [r#"{"not":"an array"}"#, "[1,2]", "not json"] {
            let (code, _) = c.text(&hub, text).unwrap_err();
            assert_eq!(code, code::INVALID_DATA, "{text}");
        }
        let ctx = c.ctx(&hub);
        let (code, _) = c.session.on_frame(ctx, Frame::Binary(&[0xff])).unwrap_err();
        assert_eq!(code, code::UNSUPPORTED);
        let long = "r".repeat(65);
        let (code, _) = c
            .text(
                &hub,
                &json!(["1", long, "room:1", "phx_join", {}]).to_string(),
            )
            .unwrap_err();
        assert_eq!(code, code::POLICY);
        assert!(c.got(&hub).is_empty());
        assert_eq!(hub.topics.borrow().topics(), 0);
    }

    /// What was queued on `key`, as the text of each frame (final, unmasked text frames).
    fn texts(hub: &Hub, key: usize) -> Vec<String> {
        let mut out = Vec::new();
        hub.shard.drain_queue(key, |f| {
            assert_eq!(f[0], 0x81, "a final text frame");
            let header = match f[1] {
                126 => 4,
                127 => panic!("a test frame over 64 KiB"),
                _ => 2,
            };
            out.push(String::from_utf8(f[header..].to_vec()).unwrap());
        });
        out
    }

    impl Client {
        /// Send a V1 frame's text, and take the texts it was answered with.
        fn ask_text(&mut self, hub: &Hub, text: &str) -> Vec<String> {
            assert_eq!(self.text(hub, text), Ok(()), "{text}");
            texts(hub, self.key)
        }
    }

    /// A V1 message from a client (`join_ref` absent when None).
    fn v1(
        join_ref: Option<&str>,
        msg_ref: &str,
        topic: &str,
        event: &str,
        payload: Value,
    ) -> String {
        let mut m = json!({"topic": topic, "event": event, "payload": payload, "ref": msg_ref});
        if let Some(j) = join_ref {
            m["join_ref"] = json!(j);
        }
        m.to_string()
    }

    /// A V1 reply, byte for byte as Phoenix writes it.
    fn v1_reply(msg_ref: &str, topic: &str, status: &str, response: &str) -> String {
        format!(
            r#"{{"event":"phx_reply","payload":{{"response":{response},"status":"{status}"}},"ref":"{msg_ref}","topic":"{topic}"}}"#
        )
    }

    /// A V1 server push or broadcast, byte for byte.
    fn v1_push(msg_ref: Option<&str>, topic: &str, event: &str, payload: &str) -> String {
        let r = msg_ref.map_or("null".to_string(), |r| format!("\"{r}\""));
        format!(r#"{{"event":"{event}","payload":{payload},"ref":{r},"topic":"{topic}"}}"#)
    }

    #[test]
    fn a_v1_socket_joins_pushes_beats_and_leaves_in_v1_frames() {
        let hub = default_core(Config::default());
        let mut c = Client::open_as(&hub, Wire::V1);
        // An old client: no join_ref at all.
        let got = c.ask_text(&hub, &v1(None, "1", "room:1", "phx_join", json!({})));
        assert_eq!(got, [v1_reply("1", "room:1", "ok", "{}")]);
        let got = c.ask_text(
            &hub,
            &v1(None, "2", "room:1", "new_msg", json!({"body": "hi"})),
        );
        assert_eq!(
            got,
            [
                v1_push(None, "room:1", "new_msg", r#"{"body":"hi"}"#),
                v1_reply("2", "room:1", "ok", "{}")
            ]
        );
        let got = c.ask_text(&hub, &v1(None, "3", "phoenix", "heartbeat", json!({})));
        assert_eq!(got, [v1_reply("3", "phoenix", "ok", "{}")]);
        // Leave: the reply, then phx_close whose ref is the join's (null here).
        let got = c.ask_text(&hub, &v1(None, "4", "room:1", "phx_leave", json!({})));
        assert_eq!(
            got,
            [
                v1_reply("4", "room:1", "ok", "{}"),
                v1_push(None, "room:1", "phx_close", "{}")
            ]
        );
        assert_eq!(hub.topics.borrow().topics(), 0);
        let got = c.ask_text(&hub, &v1(None, "5", "room:1", "new_msg", json!({})));
        let unmatched = r#"{"reason":"unmatched topic"}"#;
        assert_eq!(got, [v1_reply("5", "room:1", "error", unmatched)]);
        // A newer client sends join_ref; the server never does, but a phx_close carries it
        // as its ref, as in Phoenix.
        let got = c.ask_text(&hub, &v1(Some("6"), "6", "room:1", "phx_join", json!({})));
        assert_eq!(got, [v1_reply("6", "room:1", "ok", "{}")]);
        let got = c.ask_text(&hub, &v1(Some("7"), "7", "room:1", "phx_join", json!({})));
        assert_eq!(
            got,
            [
                v1_push(Some("6"), "room:1", "phx_close", "{}"),
                v1_reply("7", "room:1", "ok", "{}")
            ]
        );
        // A push of the old join is stale: ignored.
        assert!(
            c.ask_text(&hub, &v1(Some("6"), "8", "room:1", "m", json!({})))
                .is_empty()
        );
        let got = c.ask_text(&hub, &v1(Some("7"), "9", "room:1", "phx_leave", json!({})));
        assert_eq!(
            got,
            [
                v1_reply("9", "room:1", "ok", "{}"),
                v1_push(Some("7"), "room:1", "phx_close", "{}")
            ]
        );
        assert!(got.iter().all(|t| !t.contains("join_ref")));
    }

    #[test]
    fn v1_and_v2_members_of_a_topic_each_get_their_format_encoded_once() {
        let hub = default_core(Config::default());
        let mut a = Client::open_as(&hub, Wire::V1);
        let b = {
            let mut b = Client::open_as(&hub, Wire::V1);
            b.ask_text(&hub, &v1(Some("1"), "1", "room:1", "phx_join", json!({})));
            b
        };
        let mut c = Client::open(&hub);
        c.join(&hub, "room:1", "1");
        a.ask_text(&hub, &v1(Some("1"), "1", "room:1", "phx_join", json!({})));
        let got = a.ask_text(
            &hub,
            &v1(Some("1"), "2", "room:1", "new_msg", json!({"n": 1})),
        );
        let broadcast = v1_push(None, "room:1", "new_msg", r#"{"n":1}"#);
        assert_eq!(
            got,
            [broadcast.clone(), v1_reply("2", "room:1", "ok", "{}")]
        );
        assert_eq!(texts(&hub, b.key), [broadcast]);
        assert_eq!(
            texts(&hub, c.key),
            [r#"[null,null,"room:1","new_msg",{"n":1}]"#]
        );
        let n = &hub.counters;
        assert_eq!(
            (get(&n.encodes), get(&n.deliveries)),
            (2, 3),
            "one per format"
        );
        // A V2 client's push reaches the V1 members as V1.
        let got = c.ask(&hub, json!(["1", "3", "room:1", "new_msg", {"n": 2}]));
        assert_eq!(got[1], ok("1", "3", "room:1", json!({})));
        let broadcast = v1_push(None, "room:1", "new_msg", r#"{"n":2}"#);
        assert_eq!(texts(&hub, a.key), std::slice::from_ref(&broadcast));
        assert_eq!(texts(&hub, b.key), [broadcast]);
        assert_eq!(get(&n.encodes), 4);
        // A binary broadcast has no V1 form: only the V2 member gets it, one encode.
        hub.broadcast("room:1", "bin", Payload::Binary(b"\x01"))
            .unwrap();
        assert!(texts(&hub, a.key).is_empty() && texts(&hub, b.key).is_empty());
        let mut binary = Vec::new();
        hub.shard.drain_queue(c.key, |f| binary.push(f[0]));
        assert_eq!(binary, [0x82], "one binary frame for the V2 member");
        assert_eq!((get(&n.encodes), get(&n.deliveries)), (5, 7));
    }

    #[test]
    fn a_v1_socket_gets_the_same_checks_as_v2() {
        let cfg = Config {
            presence: vec!["live:*".into()],
            ..Config::default()
        };
        let hub = default_core(cfg);
        let mut c = Client::open_as(&hub, Wire::V1);
        c.ask_text(&hub, &v1(Some("1"), "1", "room:1", "phx_join", json!({})));
        let other = {
            let mut o = Client::open_as(&hub, Wire::V1);
            o.ask_text(&hub, &v1(Some("1"), "1", "room:1", "phx_join", json!({})));
            o
        };
        // Reserved events and payloads that are not objects: refused, nothing relayed.
        let got = c.ask_text(&hub, &v1(Some("1"), "2", "room:1", "phx_close", json!({})));
        let reserved = r#"{"reason":"reserved event"}"#;
        assert_eq!(got, [v1_reply("2", "room:1", "error", reserved)]);
        let got = c.ask_text(&hub, &v1(Some("1"), "3", "room:1", "m", json!([1])));
        let not_object = r#"{"reason":"payload must be a JSON object"}"#;
        assert_eq!(got, [v1_reply("3", "room:1", "error", not_object)]);
        assert!(texts(&hub, other.key).is_empty());
        assert_eq!(get(&hub.counters.refused_events), 1);
        assert_eq!(get(&hub.counters.refused_payloads), 1);
        // A presence topic: the state follows the join reply, ref null.
        let got = c.ask_text(&hub, &v1(Some("4"), "4", "live:1", "phx_join", json!({})));
        assert_eq!(
            got,
            [
                v1_reply("4", "live:1", "ok", "{}"),
                v1_push(None, "live:1", "presence_state", "{}")
            ]
        );
        // A binary frame is read as the same JSON (Phoenix's V1 decoder ignores the opcode).
        let ctx = c.ctx(&hub);
        let hb = v1(None, "5", "phoenix", "heartbeat", json!({}));
        assert_eq!(
            c.session.on_frame(ctx, Frame::Binary(hb.as_bytes())),
            Ok(())
        );
        assert_eq!(texts(&hub, c.key), [v1_reply("5", "phoenix", "ok", "{}")]);
        // What is not a V1 message closes the socket: 1007 as text, 1003 as binary, 1008 for
        // a ref over 64 bytes.
        let long = "r".repeat(65);
        let ctx = c.ctx(&hub);
        for (frame, want) in [
            (
                Frame::Text(r#"["1","1","room:1","phx_join",{}]"#),
                code::INVALID_DATA,
            ),
            (
                Frame::Text(r#"{"topic":"room:1","event":"e","payload":{}}"#),
                code::INVALID_DATA,
            ),
            (
                Frame::Text(r#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#),
                code::INVALID_DATA,
            ),
            (Frame::Text("not json"), code::INVALID_DATA),
            (
                Frame::Binary(b"\x00\x01\x01\x01\x0112te!"),
                code::UNSUPPORTED,
            ),
            (Frame::Binary(b"{\xff}"), code::UNSUPPORTED),
            (Frame::Binary(br#"{"topic":"t"}"#), code::UNSUPPORTED),
        ] {
            let (got, _) = c.session.on_frame(ctx, frame).unwrap_err();
            assert_eq!(got, want, "{frame:?}");
        }
        for msg in [
            v1(None, &long, "room:1", "m", json!({})),
            v1(Some(&long), "1", "room:1", "m", json!({})),
        ] {
            let (got, _) = c.text(&hub, &msg).unwrap_err();
            assert_eq!(got, code::POLICY);
            let (got, _) = c
                .session
                .on_frame(ctx, Frame::Binary(msg.as_bytes()))
                .unwrap_err();
            assert_eq!(got, code::POLICY);
        }
        assert!(texts(&hub, c.key).is_empty());
    }
}

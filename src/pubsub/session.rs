//! Phoenix Channels on one socket: joins, leaves, pushes, heartbeats, replies, answered exactly
//! as Phoenix's `Phoenix.Socket` answers them (see `lib/phoenix/socket.ex`).
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

use crate::app::handler::{InReply, Socket, Terminate};
use crate::proto::frame::close::code;
use crate::proto::phoenix::{
    self, EVENT_CLOSE, EVENT_ERROR, EVENT_JOIN, EVENT_LEAVE, Frame, Message, TOPIC_PHOENIX,
    is_reserved_event,
};
use crate::pubsub::encode::{self, Wire};
use crate::pubsub::hub::Hub;
use crate::pubsub::publication::Refused;
use crate::pubsub::topics::{Sub, Subscription};
use crate::runtime::shard::Stats;

/// One joined channel: its place in the core's topic table and its join ref.
struct Joined {
    sub: Subscription,
    join_ref: Option<Box<str>>,
}

/// The channels of one socket. Empty (no allocation) until the first join.
#[derive(Default)]
pub struct Session {
    joins: Vec<Joined>,
    /// The token's subject, if the socket brought a valid token.
    user: Option<Box<str>>,
}

/// The connection this session belongs to.
#[derive(Clone, Copy)]
pub struct Ctx<'a> {
    pub hub: &'a Hub,
    pub key: usize,
    pub generation: u32,
}

/// Close the socket with this code and reason.
pub type CloseWith = (u16, &'static str);

const UNMATCHED: &str = r#"{"reason":"unmatched topic"}"#;
const TOO_MANY: &str = r#"{"reason":"too many channels joined"}"#;

impl Session {
    pub fn new(user: Option<&str>) -> Session {
        Session {
            joins: Vec::new(),
            user: user.map(Box::from),
        }
    }

    fn socket(&self, ctx: Ctx<'_>) -> Socket<'_> {
        Socket {
            user: self.user.as_deref(),
            core: ctx.hub.shard.id,
        }
    }

    /// Handle one data message from the client.
    pub fn on_frame(&mut self, ctx: Ctx<'_>, frame: Frame<'_>) -> Result<(), CloseWith> {
        let msg = match phoenix::decode(frame) {
            Ok(m) => m,
            Err(phoenix::DecodeError::Json(_)) => {
                return Err((code::INVALID_DATA, "not a phoenix message"));
            }
            Err(phoenix::DecodeError::Binary(_)) => {
                return Err((code::UNSUPPORTED, "not a phoenix message"));
            }
            Err(phoenix::DecodeError::RefTooLong { .. }) => {
                return Err((code::POLICY, "ref too long"));
            }
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
        if topic == TOPIC_PHOENIX || !ctx.hub.shard.cfg.topic_allowed(topic) {
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
        let socket = self.socket(ctx);
        let decision = ctx.hub.guard(|h| h.join(socket, topic, msg.payload));
        match decision {
            Some(Ok(response)) => {
                let sub = Sub::new(ctx.key, ctx.generation, Wire::V2.number());
                let sub = ctx.hub.topics.borrow_mut().subscribe(topic, sub);
                self.joins.push(Joined {
                    sub,
                    join_ref: join_ref.map(Box::from),
                });
                Stats::bump(&ctx.hub.counters.joins);
                Stats::bump(&ctx.hub.counters.channels);
                reply(ctx, join_ref, msg_ref, topic, true, &response);
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
        let socket = self.socket(ctx);
        let decision = ctx
            .hub
            .guard(|h| h.handle_in(socket, topic, &msg.event, msg.payload));
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
        ctx.hub.topics.borrow_mut().unsubscribe(&j.sub);
        Stats::sub(&ctx.hub.counters.channels, 1);
        let socket = self.socket(ctx);
        ctx.hub.guard(|h| h.terminate(socket, &j.sub.topic, why));
        if self.joins.is_empty() {
            self.joins = Vec::new(); // give the memory back
        }
        j.join_ref
    }

    /// Leave every channel (the socket is closing).
    pub fn leave_all(&mut self, ctx: Ctx<'_>) {
        while !self.joins.is_empty() {
            self.remove(ctx, self.joins.len() - 1, Terminate::Closed);
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
    if let Some(frame) = encode::reply(shard, Wire::V2, (join_ref, msg_ref), topic, ok, response) {
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
    if let Some(frame) = encode::push(shard, Wire::V2, refs, topic, event, payload) {
        shard.enqueue(ctx.key, frame);
    }
}

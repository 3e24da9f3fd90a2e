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
//!   for a reserved event, or a JSON payload that is not an object (see [`publish`]).
//! - A frame that is not a Phoenix message closes the socket (Phoenix's socket process crashes on
//!   it): 1007 for text, 1003 for binary; a ref longer than 64 bytes closes it with 1008.

use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::app::handler::{InReply, Socket, Terminate};
use crate::proto::frame::OpCode;
use crate::proto::phoenix::{
    self, EVENT_CLOSE, EVENT_ERROR, EVENT_JOIN, EVENT_LEAVE, Frame, Message, Payload, STATUS_ERROR,
    STATUS_OK, TOPIC_PHOENIX, binary, is_reserved_event, json,
};
use crate::pubsub::topics::{Sub, Subscription};
use crate::runtime::shard::{Shard, Stats};

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
    pub shard: &'a Shard,
    pub key: usize,
    pub generation: u32,
}

/// Close the socket with this code and reason.
pub type CloseWith = (u16, &'static str);

const UNMATCHED: &str = r#"{"reason":"unmatched topic"}"#;
const TOO_MANY: &str = r#"{"reason":"too many channels joined"}"#;

/// Why a broadcast was refused. Nothing was sent to anybody.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The event is reserved ([`is_reserved_event`]): the client libraries would act on it.
    ReservedEvent,
    /// The JSON payload is not an object (Phoenix never broadcasts anything else).
    NotAnObject,
    /// A field does not fit the wire format (a binary header string over 255 bytes).
    TooLong,
}

impl Refused {
    /// The reason, in words.
    pub fn reason(self) -> &'static str {
        match self {
            Refused::ReservedEvent => "reserved event",
            Refused::NotAnObject => "payload must be a JSON object",
            Refused::TooLong => "too long",
        }
    }

    /// The `phx_reply` response a client is told: `{"reason": ..}`.
    pub fn response(self) -> &'static str {
        match self {
            Refused::ReservedEvent => r#"{"reason":"reserved event"}"#,
            Refused::NotAnObject => r#"{"reason":"payload must be a JSON object"}"#,
            Refused::TooLong => r#"{"reason":"too long"}"#,
        }
    }
}

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
            core: ctx.shard.id,
        }
    }

    /// Handle one data message from the client.
    pub fn on_frame(&mut self, ctx: Ctx<'_>, frame: Frame<'_>) -> Result<(), CloseWith> {
        let msg = match phoenix::decode(frame) {
            Ok(m) => m,
            Err(phoenix::DecodeError::Json(_)) => return Err((1007, "not a phoenix message")),
            Err(phoenix::DecodeError::Binary(_)) => return Err((1003, "not a phoenix message")),
            Err(phoenix::DecodeError::RefTooLong { .. }) => return Err((1008, "ref too long")),
        };
        if msg.is_heartbeat() {
            reply(ctx, None, msg.msg_ref.as_deref(), TOPIC_PHOENIX, true, "{}");
            return Ok(());
        }
        match &*msg.event {
            EVENT_JOIN => self.join(ctx, &msg),
            EVENT_LEAVE => self.leave(ctx, &msg),
            event if is_reserved_event(event) => {
                Stats::bump(&ctx.shard.stats.refused_events);
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
        if topic == TOPIC_PHOENIX || !ctx.shard.cfg.topic_allowed(topic) {
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
        if self.joins.len() >= ctx.shard.cfg.max_channels {
            reply(ctx, join_ref, msg_ref, topic, false, TOO_MANY);
            Stats::bump(&ctx.shard.stats.join_errors);
            return;
        }
        let handler = ctx.shard.handler();
        let socket = self.socket(ctx);
        let decision = catch_unwind(AssertUnwindSafe(|| {
            handler.join(socket, topic, msg.payload)
        }));
        match decision {
            Ok(Ok(response)) => {
                let sub = ctx.shard.topics.borrow_mut().subscribe(
                    topic,
                    Sub {
                        key: ctx.key as u32,
                        generation: ctx.generation,
                    },
                );
                self.joins.push(Joined {
                    sub,
                    join_ref: join_ref.map(Box::from),
                });
                Stats::bump(&ctx.shard.stats.joins);
                Stats::bump(&ctx.shard.stats.channels);
                reply(ctx, join_ref, msg_ref, topic, true, &response);
            }
            Ok(Err(response)) => {
                Stats::bump(&ctx.shard.stats.join_errors);
                reply(ctx, join_ref, msg_ref, topic, false, &response);
            }
            Err(_) => {
                Stats::bump(&ctx.shard.stats.handler_panics);
                Stats::bump(&ctx.shard.stats.join_errors);
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
        let handler = ctx.shard.handler();
        let socket = self.socket(ctx);
        let decision = catch_unwind(AssertUnwindSafe(|| {
            handler.handle_in(socket, topic, &msg.event, msg.payload)
        }));
        match decision {
            Ok(InReply::OkAndBroadcast) => match publish(ctx.shard, topic, &msg.event, msg.payload)
            {
                Ok(()) => reply(ctx, join_ref, msg_ref, topic, true, "{}"),
                Err(why) => reply(ctx, join_ref, msg_ref, topic, false, why.response()),
            },
            Ok(InReply::Reply { ok, response }) => {
                reply(ctx, join_ref, msg_ref, topic, ok, &response)
            }
            Ok(InReply::NoReply) => {}
            Err(_) => {
                // Like a crashed channel process: phx_error, and the channel is gone.
                Stats::bump(&ctx.shard.stats.handler_panics);
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
        ctx.shard.topics.borrow_mut().unsubscribe(&j.sub);
        Stats::sub(&ctx.shard.stats.channels, 1);
        let handler = ctx.shard.handler();
        let socket = self.socket(ctx);
        if catch_unwind(AssertUnwindSafe(|| {
            handler.terminate(socket, &j.sub.topic, why)
        }))
        .is_err()
        {
            Stats::bump(&ctx.shard.stats.handler_panics);
        }
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

/// Broadcast `event` with `payload` to every subscriber of `topic` on every core: the one way
/// into the fan-out, for client pushes and the HTTP API alike. Refuses a reserved event and a
/// JSON payload that is not an object (counted), so no caller can send what the client
/// libraries would take for the server's own message.
pub fn publish(
    shard: &Shard,
    topic: &str,
    event: &str,
    payload: Payload<'_>,
) -> Result<(), Refused> {
    if is_reserved_event(event) {
        Stats::bump(&shard.stats.refused_events);
        return Err(Refused::ReservedEvent);
    }
    if !payload.is_relayable() {
        Stats::bump(&shard.stats.refused_payloads);
        return Err(Refused::NotAnObject);
    }
    let frame = broadcast_frame(shard, topic, event, payload).ok_or(Refused::TooLong)?;
    shard.broadcast(topic, frame);
    Ok(())
}

/// Encode a broadcast once, as a complete WebSocket frame: text for a JSON payload, binary
/// (V2 kind 2) for a binary one. None if a binary header field is over 255 bytes. Unchecked:
/// only [`publish`] (and the simulation) call it.
pub(crate) fn broadcast_frame(
    shard: &Shard,
    topic: &str,
    event: &str,
    payload: Payload<'_>,
) -> Option<std::sync::Arc<[u8]>> {
    match payload {
        Payload::Json(p) => shard
            .build_frame(OpCode::Text, |b| json::encode_broadcast(b, topic, event, p))
            .ok(),
        Payload::Binary(p) => shard
            .build_frame(OpCode::Binary, |b| {
                binary::encode_broadcast(b, topic, event, p)
            })
            .ok(),
    }
}

/// Queue a `phx_reply`.
fn reply(
    ctx: Ctx<'_>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    ok: bool,
    response: &str,
) {
    let status = if ok { STATUS_OK } else { STATUS_ERROR };
    let frame = ctx.shard.build_frame(OpCode::Text, |b| {
        json::encode_reply(b, join_ref, msg_ref, topic, status, response)
    });
    let frame = frame.or_else(|_| {
        // The handler gave a response that is not JSON: answer an error instead of nothing.
        ctx.shard.build_frame(OpCode::Text, |b| {
            json::encode_reply(
                b,
                join_ref,
                msg_ref,
                topic,
                STATUS_ERROR,
                r#"{"reason":"bad reply"}"#,
            )
        })
    });
    if let Ok(frame) = frame {
        ctx.shard.enqueue(ctx.key, frame);
    }
}

/// Queue a server push (`phx_close`, `phx_error`).
fn push(
    ctx: Ctx<'_>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &str,
) {
    let frame = ctx.shard.build_frame(OpCode::Text, |b| {
        json::encode_message(b, join_ref, msg_ref, topic, event, payload)
    });
    if let Ok(frame) = frame {
        ctx.shard.enqueue(ctx.key, frame);
    }
}

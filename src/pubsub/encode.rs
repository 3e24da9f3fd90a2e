//! Outbound encoding, per wire format: what a socket of each format receives for a broadcast, a
//! reply and a server push, as one complete WebSocket frame in a shared buffer.
//!
//! A core encodes a publication once per wire format that it has subscribers for, lazily, and
//! queues that one buffer on every subscriber of that format ([`crate::pubsub::hub::Hub`]).

use std::sync::Arc;

use crate::proto::frame::OpCode;
use crate::proto::phoenix::{Payload, STATUS_ERROR, STATUS_OK, Vsn, binary, json, v1};
use crate::pubsub::publication::Publication;
use crate::runtime::shard::Shard;

/// The wire formats a socket may speak (long-poll messages may join them later); the topic
/// table keeps a subscriber's format in two bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wire {
    /// Phoenix V2 (`vsn=2.0.0`): JSON arrays in text frames, binary payloads in binary frames.
    V2 = 0,
    /// Phoenix V1 (`vsn=1.0.0`, or no `vsn`): JSON objects in text frames, and nothing else (a
    /// binary broadcast has no V1 form and is not sent to V1 sockets).
    V1 = 1,
}

impl Wire {
    /// How many formats there are (the size of a per-format cache).
    pub const COUNT: usize = 2;

    /// The format with this number (see [`crate::pubsub::topics::Sub::wire`]).
    pub fn from_number(n: u8) -> Option<Wire> {
        match n {
            0 => Some(Wire::V2),
            1 => Some(Wire::V1),
            _ => None,
        }
    }

    /// The format a socket of serializer `vsn` receives.
    pub fn of(vsn: Vsn) -> Wire {
        match vsn {
            Vsn::V1 => Wire::V1,
            Vsn::V2 => Wire::V2,
        }
    }

    /// The serializer that decodes this format's client messages.
    pub fn vsn(self) -> Vsn {
        match self {
            Wire::V1 => Vsn::V1,
            Wire::V2 => Vsn::V2,
        }
    }

    /// This format's number, an index below [`Wire::COUNT`].
    pub fn number(self) -> u8 {
        self as u8
    }
}

/// A broadcast as a `wire` socket receives it. None if it cannot be encoded in that format.
pub fn broadcast(shard: &Shard, wire: Wire, p: &Publication) -> Option<Arc<[u8]>> {
    let (topic, event, payload) = p.parts();
    match (wire, payload) {
        (Wire::V2, Payload::Json(body)) => shard
            .build_frame(OpCode::Text, |b| {
                json::encode_broadcast(b, topic, event, body)
            })
            .ok(),
        (Wire::V2, Payload::Binary(body)) => shard
            .build_frame(OpCode::Binary, |b| {
                binary::encode_broadcast(b, topic, event, body)
            })
            .ok(),
        (Wire::V1, Payload::Json(body)) => shard
            .build_frame(OpCode::Text, |b| {
                v1::encode_broadcast(b, topic, event, body)
            })
            .ok(),
        // Phoenix's V1 serializer cannot encode one either (Jason raises on the tuple).
        (Wire::V1, Payload::Binary(_)) => None,
    }
}

const BAD_REPLY: &str = r#"{"reason":"bad reply"}"#;

/// A `phx_reply` with `response` (a JSON object's text). A response that is not JSON (a
/// handler's mistake) is answered `error` `{"reason":"bad reply"}` instead of nothing.
pub fn reply(
    shard: &Shard,
    wire: Wire,
    refs: (Option<&str>, Option<&str>),
    topic: &str,
    ok: bool,
    response: &str,
) -> Option<Arc<[u8]>> {
    let (join_ref, msg_ref) = refs;
    let status = if ok { STATUS_OK } else { STATUS_ERROR };
    match wire {
        Wire::V2 => shard
            .build_frame(OpCode::Text, |b| {
                json::encode_reply(b, join_ref, msg_ref, topic, status, response)
            })
            .or_else(|_| {
                shard.build_frame(OpCode::Text, |b| {
                    json::encode_reply(b, join_ref, msg_ref, topic, STATUS_ERROR, BAD_REPLY)
                })
            })
            .ok(),
        // V1 never sends a join_ref.
        Wire::V1 => shard
            .build_frame(OpCode::Text, |b| {
                v1::encode_reply(b, msg_ref, topic, status, response)
            })
            .or_else(|_| {
                shard.build_frame(OpCode::Text, |b| {
                    v1::encode_reply(b, msg_ref, topic, STATUS_ERROR, BAD_REPLY)
                })
            })
            .ok(),
    }
}

/// A server push to one socket (`phx_close`, `phx_error`, later `presence_state`).
pub fn push(
    shard: &Shard,
    wire: Wire,
    refs: (Option<&str>, Option<&str>),
    topic: &str,
    event: &str,
    payload: &str,
) -> Option<Arc<[u8]>> {
    let (join_ref, msg_ref) = refs;
    match wire {
        Wire::V2 => shard
            .build_frame(OpCode::Text, |b| {
                json::encode_message(b, join_ref, msg_ref, topic, event, payload)
            })
            .ok(),
        Wire::V1 => shard
            .build_frame(OpCode::Text, |b| {
                v1::encode_message(b, msg_ref, topic, event, payload)
            })
            .ok(),
    }
}

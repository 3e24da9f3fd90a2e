//! The decoded Phoenix message, shared by the JSON and binary serializers, and the names of
//! the events and topic the protocol reserves.

use std::borrow::Cow;
use std::fmt;

/// The topic of socket-level messages (only `heartbeat` is sent on it).
pub const TOPIC_PHOENIX: &str = "phoenix";
/// Client -> server: join a topic; the payload is the join parameters.
pub const EVENT_JOIN: &str = "phx_join";
/// Client -> server: leave a topic; answered with an `ok` reply.
pub const EVENT_LEAVE: &str = "phx_leave";
/// Server -> client: the answer to a push; payload `{"response": .., "status": ..}`.
pub const EVENT_REPLY: &str = "phx_reply";
/// Server -> client: the channel was closed by the server (or left); carries the join ref.
pub const EVENT_CLOSE: &str = "phx_close";
/// Server -> client: the channel crashed; the client rejoins.
pub const EVENT_ERROR: &str = "phx_error";
/// Client -> server on topic [`TOPIC_PHOENIX`]: keep-alive; answered with an `ok` reply.
pub const EVENT_HEARTBEAT: &str = "heartbeat";
/// Server -> client: the full presence list of a topic (phoenix.js `Presence`).
pub const EVENT_PRESENCE_STATE: &str = "presence_state";
/// Server -> client: presence joins and leaves (phoenix.js `Presence`).
pub const EVENT_PRESENCE_DIFF: &str = "presence_diff";
/// Longest `join_ref` or `ref` accepted from a client, in bytes. phoenix.js sends short decimal
/// counters; a join ref is kept for as long as its channel is joined, so it must be bounded.
pub const MAX_REF_LEN: usize = 64;
/// Reply status for success.
pub const STATUS_OK: &str = "ok";
/// Reply status for failure.
pub const STATUS_ERROR: &str = "error";

/// The payload of a message, left undecoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'a> {
    /// The raw text of a JSON value, already checked to be well-formed JSON. It is never
    /// re-serialised, so it can be copied verbatim into an outgoing frame.
    Json(&'a str),
    /// The opaque bytes at the end of a binary frame.
    Binary(&'a [u8]),
}

/// One Phoenix message as the client sent it: `[join_ref, ref, topic, event, payload]`.
///
/// Strings borrow from the frame unless JSON escapes forced an owned, unescaped copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    /// The ref of the `phx_join` that opened the channel this message belongs to.
    /// `None` for JSON `null`, and for an empty field in a binary frame.
    pub join_ref: Option<Cow<'a, str>>,
    /// This message's own ref; a reply echoes it. `None` as for `join_ref`.
    pub msg_ref: Option<Cow<'a, str>>,
    /// The topic, e.g. `room:lobby`.
    pub topic: Cow<'a, str>,
    /// The event, e.g. `phx_join` or an application event.
    pub event: Cow<'a, str>,
    /// The payload.
    pub payload: Payload<'a>,
}

impl Message<'_> {
    /// True for the socket keep-alive (`heartbeat` on topic `phoenix`).
    pub fn is_heartbeat(&self) -> bool {
        self.topic == TOPIC_PHOENIX && self.event == EVENT_HEARTBEAT
    }

    /// True if the event is one the client libraries treat as the server's own (see
    /// [`is_reserved_event`]).
    pub fn is_reserved_event(&self) -> bool {
        is_reserved_event(&self.event)
    }

    /// The first ref over [`MAX_REF_LEN`], if any.
    pub fn overlong_ref(&self) -> Option<Field> {
        let long = |r: &Option<Cow<'_, str>>| r.as_ref().is_some_and(|r| r.len() > MAX_REF_LEN);
        if long(&self.join_ref) {
            Some(Field::JoinRef)
        } else if long(&self.msg_ref) {
            Some(Field::Ref)
        } else {
            None
        }
    }
}

/// True for an event name that phoenix.js (and the other Phoenix clients) treat specially when
/// it arrives from the server: every `phx_*` name (`phx_reply`, `phx_close`, `phx_error`, and
/// `phx_join` / `phx_leave`, which only mean something from a client) and the two presence
/// events. Such an event is never taken from a client as an application event and never
/// broadcast: a broadcast `phx_close` would close every member's channel, a `presence_diff`
/// would plant entries in every member's `Presence`.
pub fn is_reserved_event(event: &str) -> bool {
    event.starts_with("phx_") || event == EVENT_PRESENCE_STATE || event == EVENT_PRESENCE_DIFF
}

impl Payload<'_> {
    /// True if this payload may be sent to other clients: a JSON object (Phoenix sends nothing
    /// else in a push or broadcast; phoenix.js reads `payload.status` and throws on `null`) or
    /// binary bytes (opaque to the protocol). The JSON text is already known to be well formed.
    pub fn is_relayable(&self) -> bool {
        match self {
            Payload::Json(text) => text.trim_start().starts_with('{'),
            Payload::Binary(_) => true,
        }
    }
}

/// A named header field of a message, used in error values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// `join_ref`.
    JoinRef,
    /// `ref`.
    Ref,
    /// `topic`.
    Topic,
    /// `event`.
    Event,
    /// `status` (replies only).
    Status,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::JoinRef => "join_ref",
            Field::Ref => "ref",
            Field::Topic => "topic",
            Field::Event => "event",
            Field::Status => "status",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg<'a>(topic: &'a str, event: &'a str) -> Message<'a> {
        Message {
            join_ref: None,
            msg_ref: Some(Cow::Borrowed("1")),
            topic: Cow::Borrowed(topic),
            event: Cow::Borrowed(event),
            payload: Payload::Json("{}"),
        }
    }

    #[test]
    fn heartbeat_is_only_on_the_phoenix_topic() {
        assert!(msg("phoenix", "heartbeat").is_heartbeat());
        assert!(!msg("room:1", "heartbeat").is_heartbeat());
        assert!(!msg("phoenix", "phx_join").is_heartbeat());
    }

    #[test]
    fn reserved_events() {
        for e in [
            "phx_join",
            "phx_leave",
            "phx_reply",
            "phx_close",
            "phx_error",
        ] {
            assert!(msg("t", e).is_reserved_event(), "{e}");
        }
        for e in ["phx_anything", "presence_state", "presence_diff"] {
            assert!(msg("t", e).is_reserved_event(), "{e}");
        }
        assert!(!msg("t", "heartbeat").is_reserved_event());
        assert!(!msg("t", "new_msg").is_reserved_event());
        assert!(!msg("t", "presence").is_reserved_event());
        assert!(!msg("t", "phx").is_reserved_event());
    }

    #[test]
    fn only_objects_and_binary_are_relayable() {
        for p in [r#"{}"#, r#" {"a":1}"#] {
            assert!(Payload::Json(p).is_relayable(), "{p}");
        }
        for p in ["null", "[]", "1", r#""s""#, "true", " [{}]"] {
            assert!(!Payload::Json(p).is_relayable(), "{p}");
        }
        assert!(Payload::Binary(b"").is_relayable());
    }

    #[test]
    fn refs_longer_than_the_bound_are_found() {
        let mut m = msg("t", "e");
        assert_eq!(m.overlong_ref(), None);
        m.msg_ref = Some(Cow::Owned("1".repeat(MAX_REF_LEN)));
        assert_eq!(m.overlong_ref(), None, "exactly the bound is fine");
        m.join_ref = Some(Cow::Owned("1".repeat(MAX_REF_LEN + 1)));
        assert_eq!(m.overlong_ref(), Some(Field::JoinRef));
        m.join_ref = None;
        m.msg_ref = Some(Cow::Owned("x".repeat(1 << 20)));
        assert_eq!(m.overlong_ref(), Some(Field::Ref));
    }

    #[test]
    fn field_names_match_phoenix_error_texts() {
        let names: Vec<String> = [Field::JoinRef, Field::Ref, Field::Topic, Field::Event]
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["join_ref", "ref", "topic", "event"]);
    }
}

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

    /// True if the event is one of the `phx_*` names the protocol reserves.
    pub fn is_reserved_event(&self) -> bool {
        matches!(
            &*self.event,
            EVENT_JOIN | EVENT_LEAVE | EVENT_REPLY | EVENT_CLOSE | EVENT_ERROR
        )
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
        assert!(!msg("t", "heartbeat").is_reserved_event());
        assert!(!msg("t", "new_msg").is_reserved_event());
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

//! Phoenix Channels serializers: V2 (`vsn=2.0.0`), the messages the official `phoenix` JS
//! client and `Phoenix.Socket.V2.JSONSerializer` exchange, and V1 (`vsn=1.0.0`, Phoenix's
//! default when a client sends no `vsn`), `Phoenix.Socket.V1.JSONSerializer`'s JSON objects
//! (see [`v1`]). Pure: bytes in, messages out.
//!
//! # V2 text frames (JSON)
//!
//! Every message is a five-element array:
//!
//! ```text
//! [join_ref, ref, topic, event, payload]
//! ```
//!
//! `join_ref` and `ref` are strings or `null`, `topic` and `event` strings, `payload` any JSON
//! value. Phoenix reads any payload from a client but only ever sends objects in pushes and
//! broadcasts (it raises on anything else); we accept any value both ways and leave that
//! policy to the caller. The shapes in use:
//!
//! ```text
//! client join       ["1","1","room:1","phx_join",{..params}]
//! client push       ["1","2","room:1","new_msg",{..}]
//! client heartbeat  [null,"3","phoenix","heartbeat",{}]
//! client leave      ["1","4","room:1","phx_leave",{}]
//! server reply      ["1","2","room:1","phx_reply",{"response":{..},"status":"ok"}]
//! server push       ["1",null,"room:1","event",{..}]
//! server broadcast  [null,null,"room:1","new_msg",{..}]
//! server close      ["1","1","room:1","phx_close",{}]
//! server error      ["1","1","room:1","phx_error",{"reason":"channel_crash"}]
//! ```
//!
//! # V2 binary frames
//!
//! Header bytes, then the strings back to back (UTF-8, each sized by its header byte, so at
//! most 255 bytes), then the payload up to the end of the frame:
//!
//! ```text
//! push, client->server   0 | len(join_ref) | len(ref) | len(topic) | len(event) | join_ref ref topic event | payload
//! push, server->client   0 | len(join_ref) | len(topic) | len(event)            | join_ref topic event     | payload
//! reply                  1 | len(join_ref) | len(ref) | len(topic) | len(status) | join_ref ref topic status | payload
//! broadcast              2 | len(topic) | len(event)                             | topic event              | payload
//! ```
//!
//! A null ref is sent as an empty string. Phoenix's own example, a client push with join_ref
//! `12`, ref `123`, topic `topic`, event `event` and payload `efg`, is
//! `00 02 03 05 05 "12" "123" "topic" "event" 65 66 67`.
//!
//! # Errors
//!
//! Phoenix never replies to a frame it cannot decode: the socket process raises and the
//! connection drops. Every [`DecodeError`] therefore means "close the connection": with 1007
//! for a text frame, 1003 for a binary one, 1008 for a ref that is too long, whichever the
//! serializer (see [`DecodeError::close_code`]; the codes are [`crate::proto::frame::close::code`]).

use thiserror::Error;

pub mod binary;
pub mod json;
pub mod longpoll;
pub mod message;
pub mod v1;

pub use message::{
    EVENT_CLOSE, EVENT_ERROR, EVENT_HEARTBEAT, EVENT_JOIN, EVENT_LEAVE, EVENT_PRESENCE_DIFF,
    EVENT_PRESENCE_STATE, EVENT_REPLY, Field, MAX_REF_LEN, Message, Payload, STATUS_ERROR,
    STATUS_OK, TOPIC_PHOENIX, is_reserved_event,
};

/// The serializer a socket speaks, chosen at connect from its `vsn` parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vsn {
    /// `Phoenix.Socket.V1.JSONSerializer`: JSON objects ([`v1`]).
    V1,
    /// `Phoenix.Socket.V2.JSONSerializer`: JSON arrays ([`json`]) and binary frames ([`binary`]).
    V2,
}

impl Vsn {
    /// The serializer for a connect's `vsn` parameter, `None` (absent) meaning 1.0.0 as in
    /// Phoenix (`params["vsn"] || "1.0.0"`). Phoenix's requirements are `~> 1.0.0` and
    /// `~> 2.0.0`: 1.0.x and 2.0.x (a patch number, digits only). Anything else has none.
    pub fn negotiate(vsn: Option<&str>) -> Option<Vsn> {
        let vsn = vsn.unwrap_or("1.0.0");
        let patch = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
        if vsn.strip_prefix("1.0.").is_some_and(patch) {
            Some(Vsn::V1)
        } else if vsn.strip_prefix("2.0.").is_some_and(patch) {
            Some(Vsn::V2)
        } else {
            None
        }
    }
}

/// A WebSocket data message as the transport hands it over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame<'a> {
    /// A text message (already checked to be UTF-8 by the frame layer).
    Text(&'a str),
    /// A binary message.
    Binary(&'a [u8]),
}

/// Why a client's frame is not a Phoenix message.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// A bad text frame. Close the connection with 1007 ([`code::INVALID_DATA`]), as Phoenix
    /// drops it.
    ///
    /// [`code::INVALID_DATA`]: crate::proto::frame::close::code::INVALID_DATA
    #[error(transparent)]
    Json(#[from] json::DecodeError),
    /// A bad binary frame, a header string that is not UTF-8 included. Close the connection
    /// with 1003 ([`code::UNSUPPORTED`]).
    ///
    /// [`code::UNSUPPORTED`]: crate::proto::frame::close::code::UNSUPPORTED
    #[error(transparent)]
    Binary(#[from] binary::DecodeError),
    /// A text or binary frame that is not a V1 message. Close the connection with 1007 for a
    /// text frame, 1003 for a binary one.
    #[error(transparent)]
    V1(#[from] v1::DecodeError),
    /// A `join_ref` or `ref` longer than [`MAX_REF_LEN`], in a text or a binary frame. Close the
    /// connection with 1008 ([`code::POLICY`]): a reply cannot echo it, and a join ref is kept
    /// for the channel's lifetime.
    ///
    /// [`code::POLICY`]: crate::proto::frame::close::code::POLICY
    #[error("{field} longer than {MAX_REF_LEN} bytes")]
    RefTooLong {
        /// The offending ref.
        field: Field,
    },
}

impl DecodeError {
    /// The close code for this error on `frame`: 1008 ([`code::POLICY`]) for a ref that is too
    /// long, otherwise 1007 ([`code::INVALID_DATA`]) for a text frame and 1003
    /// ([`code::UNSUPPORTED`]) for a binary one.
    ///
    /// [`code::POLICY`]: crate::proto::frame::close::code::POLICY
    /// [`code::INVALID_DATA`]: crate::proto::frame::close::code::INVALID_DATA
    /// [`code::UNSUPPORTED`]: crate::proto::frame::close::code::UNSUPPORTED
    pub fn close_code(&self, frame: Frame<'_>) -> u16 {
        use crate::proto::frame::close::code;
        match (self, frame) {
            (DecodeError::RefTooLong { .. }, _) => code::POLICY,
            (_, Frame::Text(_)) => code::INVALID_DATA,
            (_, Frame::Binary(_)) => code::UNSUPPORTED,
        }
    }
}

/// Decodes one message from a client, text or binary, in serializer `vsn`. Every serializer's
/// messages pass here, so the bounds on client-chosen fields are checked once, for all of them.
pub fn decode(vsn: Vsn, frame: Frame<'_>) -> Result<Message<'_>, DecodeError> {
    let msg = match (vsn, frame) {
        (Vsn::V2, Frame::Text(text)) => json::decode(text)?,
        (Vsn::V2, Frame::Binary(bytes)) => binary::decode_push(bytes)?,
        (Vsn::V1, Frame::Text(text)) => v1::decode(text)?,
        (Vsn::V1, Frame::Binary(bytes)) => v1::decode_bytes(bytes)?,
    };
    if let Some(field) = msg.overlong_ref() {
        return Err(DecodeError::RefTooLong { field });
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    //! Phoenix's own serializer test vectors (`test/phoenix/socket/v2_json_serializer_test.exs`
    //! and `assets/test/serializer_test.js`), reproduced as facts about the wire format.

    use super::binary::{ServerFrame, decode_from_server, decode_push};
    use super::json;
    use super::*;

    fn text(f: impl FnOnce(&mut Vec<u8>) -> Result<(), json::EncodeError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn bin(f: impl FnOnce(&mut Vec<u8>) -> Result<(), binary::EncodeError>) -> Vec<u8> {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        out
    }

    fn parts<'a>(m: &'a Message<'_>) -> (Option<&'a str>, Option<&'a str>, &'a str, &'a str) {
        (
            m.join_ref.as_deref(),
            m.msg_ref.as_deref(),
            &m.topic,
            &m.event,
        )
    }

    #[test]
    fn decode_dispatches_on_frame_type() {
        let m = decode(Vsn::V2, Frame::Text(r#"["1","2","t","e",{}]"#)).unwrap();
        assert_eq!(m.payload, Payload::Json("{}"));
        let m = decode(Vsn::V2, Frame::Binary(b"\x00\x01\x01\x01\x0112te!")).unwrap();
        assert_eq!(parts(&m), (Some("1"), Some("2"), "t", "e"));
        assert_eq!(m.payload, Payload::Binary(b"!"));
        let e = decode(Vsn::V2, Frame::Text("{}"));
        assert_eq!(e, Err(DecodeError::Json(json::DecodeError::NotArray)));
        let e = decode(Vsn::V2, Frame::Binary(&[1, 0, 0, 0, 0]));
        assert_eq!(e, Err(binary::DecodeError::UnexpectedKind(1).into()));
    }

    #[test]
    fn overlong_refs_are_refused_in_text_and_binary() {
        let long = "9".repeat(MAX_REF_LEN + 1);
        let text = format!(r#"["{long}","2","t","e",{{}}]"#);
        let e = decode(Vsn::V2, Frame::Text(&text));
        assert_eq!(
            e,
            Err(DecodeError::RefTooLong {
                field: Field::JoinRef
            })
        );
        let ok = format!(r#"["1","{}","t","e",{{}}]"#, &long[1..]);
        assert!(
            decode(Vsn::V2, Frame::Text(&ok)).is_ok(),
            "{MAX_REF_LEN} bytes is allowed"
        );
        let mut bin = vec![0u8, 1, long.len() as u8, 1, 1];
        bin.extend_from_slice(b"1");
        bin.extend_from_slice(long.as_bytes());
        bin.extend_from_slice(b"te!");
        let e = decode(Vsn::V2, Frame::Binary(&bin));
        assert_eq!(e, Err(DecodeError::RefTooLong { field: Field::Ref }));
    }

    #[test]
    fn elixir_json_vectors() {
        // A Message and a Broadcast of topic "t", event "e", payload %{m: 1} both encode to
        // this text, and it decodes back to the Message.
        let v2 = r#"[null,null,"t","e",{"m":1}]"#;
        let m1 = r#"{"m":1}"#;
        assert_eq!(
            text(|o| json::encode_message(o, None, None, "t", "e", m1)),
            v2
        );
        assert_eq!(text(|o| json::encode_broadcast(o, "t", "e", m1)), v2);
        let m = json::decode(v2).unwrap();
        assert_eq!(parts(&m), (None, None, "t", "e"));
        assert_eq!(m.payload, Payload::Json(m1));
        // A Reply decodes to [nil, nil, "t", "phx_reply", %{"response" => .., "status" => ..}];
        // Jason writes the keys sorted.
        assert_eq!(
            text(|o| json::encode_reply(o, None, None, "t", "ok", m1)),
            r#"[null,null,"t","phx_reply",{"response":{"m":1},"status":"ok"}]"#
        );
    }

    #[test]
    fn js_json_vectors() {
        let js = r#"["0","1","t","e",{"foo":1}]"#;
        let foo = r#"{"foo":1}"#;
        assert_eq!(
            text(|o| json::encode_push(o, Some("0"), Some("1"), "t", "e", foo)),
            js
        );
        let m = json::decode(js).unwrap();
        assert_eq!(parts(&m), (Some("0"), Some("1"), "t", "e"));
        assert_eq!(m.payload, Payload::Json(foo));
    }

    #[test]
    fn socket_level_replies() {
        // What Phoenix's socket answers to a heartbeat, and to a push on an unjoined topic.
        let hb = json::decode(r#"[null,"3","phoenix","heartbeat",{}]"#).unwrap();
        assert!(hb.is_heartbeat());
        let r = hb.msg_ref.as_deref();
        assert_eq!(
            text(|o| json::encode_reply(o, None, r, TOPIC_PHOENIX, STATUS_OK, "{}")),
            r#"[null,"3","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        );
        let reason = r#"{"reason":"unmatched topic"}"#;
        assert_eq!(
            text(|o| json::encode_reply(o, None, Some("2"), "room:1", STATUS_ERROR, reason)),
            r#"[null,"2","room:1","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#
        );
    }

    // The Elixir test's @client_push, @reply, @broadcast and server push, payload "efg".
    const CLIENT_PUSH: &[u8] = b"\x00\x02\x03\x05\x0512123topicevent\x65\x66\x67";
    const REPLY: &[u8] = b"\x01\x02\x03\x05\x0212123topicok\x65\x66\x67";
    const BROADCAST: &[u8] = b"\x02\x05\x05topicevent\x65\x66\x67";
    const SERVER_PUSH: &[u8] = b"\x00\x02\x05\x0512topicevent\x65\x66\x67";

    #[test]
    fn elixir_binary_vectors() {
        let m = decode_push(CLIENT_PUSH).unwrap();
        assert_eq!(parts(&m), (Some("12"), Some("123"), "topic", "event"));
        assert_eq!(m.payload, Payload::Binary(b"efg"));
        let efg = b"efg".as_slice();
        let (j, r) = (Some("12"), Some("123"));
        assert_eq!(
            bin(|o| binary::encode_push(o, j, r, "topic", "event", efg)),
            CLIENT_PUSH
        );
        assert_eq!(
            bin(|o| binary::encode_reply(o, j, r, "topic", "ok", efg)),
            REPLY
        );
        assert_eq!(
            bin(|o| binary::encode_broadcast(o, "topic", "event", efg)),
            BROADCAST
        );
        let push = bin(|o| binary::encode_server_push(o, j, "topic", "event", efg));
        assert_eq!(push, SERVER_PUSH);
    }

    #[test]
    fn js_binary_vectors() {
        // "encodes" and "encodes variable length segments".
        let one = [1u8].as_slice();
        let out = bin(|o| binary::encode_push(o, Some("0"), Some("1"), "t", "e", one));
        assert_eq!(out, b"\0\x01\x01\x01\x0101te\x01");
        let out = bin(|o| binary::encode_push(o, Some("10"), Some("1"), "top", "ev", one));
        assert_eq!(out, b"\0\x02\x01\x03\x02101topev\x01");
        // "decodes push": a server push has no ref.
        let frame = decode_from_server(b"\0\x03\x03\n123topsome-event\x01\x01").unwrap();
        let ServerFrame::Push(m) = frame else {
            panic!("not a push: {frame:?}")
        };
        assert_eq!(parts(&m), (Some("123"), None, "top", "some-event"));
        assert_eq!(m.payload, Payload::Binary(b"\x01\x01"));
        // "decodes reply": the status sits where an event would.
        let frame = decode_from_server(b"\x01\x03\x02\x03\x0210012topok\x01\x01").unwrap();
        let ServerFrame::Reply { status, message } = frame else {
            panic!("not a reply")
        };
        assert_eq!(status, "ok");
        assert_eq!(
            parts(&message),
            (Some("100"), Some("12"), "top", EVENT_REPLY)
        );
        assert_eq!(message.payload, Payload::Binary(b"\x01\x01"));
        // "decodes broadcast".
        let frame = decode_from_server(b"\x02\x03\ntopsome-event\x01\x01").unwrap();
        let ServerFrame::Broadcast(m) = frame else {
            panic!("not a broadcast")
        };
        assert_eq!(parts(&m), (None, None, "top", "some-event"));
        assert_eq!(m.payload, Payload::Binary(b"\x01\x01"));
    }

    #[test]
    fn js_non_ascii_sizes_count_utf8_bytes() {
        let one = [1u8].as_slice();
        let out = bin(|o| binary::encode_push(o, Some("🚀"), Some("1"), "room:café", "π", one));
        assert_eq!(out[..5], [0, 4, 1, 10, 2]);
        assert_eq!(&out[5..], "🚀1room:caféπ\x01".as_bytes());
        let m = decode_push(&out).unwrap();
        assert_eq!(parts(&m), (Some("🚀"), Some("1"), "room:café", "π"));
    }
}

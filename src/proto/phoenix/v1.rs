//! Phoenix V1 JSON frames (`vsn=1.0.0`, and a connect with no `vsn`): one JSON object per
//! message, as `Phoenix.Socket.V1.JSONSerializer` reads and writes them.
//!
//! From a client: an object with the keys `topic`, `event`, `payload` and `ref`, all four
//! required (`ref` may be `null`), and an optional `join_ref`; other keys are ignored.
//! `Phoenix.Socket.Message.from_map!` raises on a missing key, and so the socket drops: every
//! [`DecodeError`] here means "close the connection" too.
//!
//! From the server: `topic`, `event`, `payload` and `ref`, never `join_ref`, in the order Jason
//! writes Phoenix's maps (keys sorted):
//!
//! ```text
//! server reply      {"event":"phx_reply","payload":{"response":{..},"status":"ok"},"ref":"2","topic":"room:1"}
//! server push       {"event":"presence_state","payload":{..},"ref":null,"topic":"room:1"}
//! server broadcast  {"event":"new_msg","payload":{..},"ref":null,"topic":"room:1"}
//! server close      {"event":"phx_close","payload":{},"ref":"1","topic":"room:1"}
//! ```
//!
//! (A `phx_close` or `phx_error` carries the channel's join ref as its `ref`, as Phoenix's
//! `Message` for them has `ref: join_ref`.) V1 has no binary format: Phoenix's V1 serializer
//! JSON-decodes whatever frame arrives, text or binary, and can encode nothing but JSON. So
//! [`decode_bytes`] reads a binary frame as the same JSON object, and a binary payload cannot be
//! sent to a V1 socket at all.
//!
//! Where this is stricter than Phoenix (which checks no types, and keeps one value of a
//! repeated key): `topic` and `event` must be strings, `ref` and `join_ref` strings or `null`,
//! and no key of the four (or `join_ref`) may appear twice, so that no two readers of a frame
//! can disagree on its topic or event.

use std::cell::Cell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::json::{EncodeError, Str, validate, write_str};
use super::message::{EVENT_REPLY, Field, Message, Payload};

/// Why a frame is not a Phoenix V1 message. Phoenix raises on each (its socket process exits
/// and the connection drops); the caller closes the connection (1007 for a text frame, 1003 for
/// a binary one).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON: bad syntax, early end, trailing bytes, an invalid escape or a lone surrogate.
    #[error("not valid JSON (line {line}, column {column})")]
    NotJson {
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
    },
    /// A binary frame whose bytes are not UTF-8 (so not JSON).
    #[error("not UTF-8")]
    NotUtf8,
    /// Valid JSON but not an object (a V2 array, say): Phoenix's "V1 JSON Serializer expected a
    /// map".
    #[error("a Phoenix V1 message must be a JSON object")]
    NotObject,
    /// One of `topic`, `event`, `payload`, `ref` is absent: Phoenix's "missing key".
    #[error("missing key {key:?}")]
    MissingKey {
        /// The first absent key, in the order Phoenix fetches them.
        key: &'static str,
    },
    /// A key of the message appears twice.
    #[error("key {key:?} appears twice")]
    DuplicateKey {
        /// The repeated key.
        key: &'static str,
    },
    /// `join_ref`/`ref` not a string or null, or `topic`/`event` not a string.
    #[error("{field} has the wrong JSON type")]
    WrongType {
        /// The offending key.
        field: Field,
    },
}

/// Decodes one text frame from a client.
pub fn decode(text: &str) -> Result<Message<'_>, DecodeError> {
    let stage = Cell::new(Stage::Top);
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_map(ObjectVisitor { stage: &stage })
        .and_then(|msg| de.end().map(|()| msg))
        .map_err(|e| match e.classify() {
            Category::Data => match stage.get() {
                Stage::Top => DecodeError::NotObject,
                Stage::Value(field) => DecodeError::WrongType { field },
                Stage::Missing(key) => DecodeError::MissingKey { key },
                Stage::Duplicate(key) => DecodeError::DuplicateKey { key },
            },
            Category::Io | Category::Syntax | Category::Eof => DecodeError::NotJson {
                line: e.line(),
                column: e.column(),
            },
        })
}

/// Decodes one binary frame from a client: the same JSON object as a text frame (Phoenix's V1
/// serializer ignores the opcode), so its payload is JSON too.
pub fn decode_bytes(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    let text = std::str::from_utf8(bytes).map_err(|_| DecodeError::NotUtf8)?;
    decode(text)
}

/// Appends a server push or broadcast:
/// `{"event":event,"payload":payload,"ref":ref,"topic":topic}` (a ref of `None` is `null`).
pub fn encode_message(
    out: &mut Vec<u8>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Result<(), EncodeError> {
    let payload = validate(payload_json)?;
    out.extend_from_slice(b"{\"event\":");
    write_str(out, event);
    out.extend_from_slice(b",\"payload\":");
    out.extend_from_slice(payload.as_bytes());
    write_tail(out, msg_ref, topic);
    Ok(())
}

/// Appends a reply:
/// `{"event":"phx_reply","payload":{"response":response,"status":status},"ref":ref,"topic":topic}`.
pub fn encode_reply(
    out: &mut Vec<u8>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response_json: &str,
) -> Result<(), EncodeError> {
    let response = validate(response_json)?;
    out.extend_from_slice(b"{\"event\":");
    write_str(out, EVENT_REPLY);
    out.extend_from_slice(b",\"payload\":{\"response\":");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b",\"status\":");
    write_str(out, status);
    out.push(b'}');
    write_tail(out, msg_ref, topic);
    Ok(())
}

/// Appends a broadcast: [`encode_message`] with `"ref":null`.
pub fn encode_broadcast(
    out: &mut Vec<u8>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Result<(), EncodeError> {
    encode_message(out, None, topic, event, payload_json)
}

fn write_tail(out: &mut Vec<u8>, msg_ref: Option<&str>, topic: &str) {
    out.extend_from_slice(b",\"ref\":");
    match msg_ref {
        Some(r) => write_str(out, r),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"topic\":");
    write_str(out, topic);
    out.push(b'}');
}

/// Where the decoder is, so a serde "data" error can be turned into a typed one.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Top,
    Value(Field),
    Missing(&'static str),
    Duplicate(&'static str),
}

struct ObjectVisitor<'s> {
    stage: &'s Cell<Stage>,
}

impl<'de> Visitor<'de> for ObjectVisitor<'_> {
    type Value = Message<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(r#"{"topic", "event", "payload", "ref"}"#)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let stage = self.stage;
        let twice = |key: &'static str| {
            stage.set(Stage::Duplicate(key));
            de::Error::custom("duplicate key")
        };
        let (mut topic, mut event, mut payload) = (None, None, None);
        let (mut msg_ref, mut join_ref) = (None, None);
        while let Some(key) = map.next_key::<Str<'de>>()? {
            match &*key.0 {
                "topic" if topic.is_some() => return Err(twice("topic")),
                "event" if event.is_some() => return Err(twice("event")),
                "payload" if payload.is_some() => return Err(twice("payload")),
                "ref" if msg_ref.is_some() => return Err(twice("ref")),
                "join_ref" if join_ref.is_some() => return Err(twice("join_ref")),
                "topic" => {
                    stage.set(Stage::Value(Field::Topic));
                    topic = Some(map.next_value::<Str<'de>>()?);
                }
                "event" => {
                    stage.set(Stage::Value(Field::Event));
                    event = Some(map.next_value::<Str<'de>>()?);
                }
                "payload" => payload = Some(map.next_value::<&'de RawValue>()?),
                "ref" => {
                    stage.set(Stage::Value(Field::Ref));
                    msg_ref = Some(map.next_value::<Option<Str<'de>>>()?);
                }
                "join_ref" => {
                    stage.set(Stage::Value(Field::JoinRef));
                    join_ref = Some(map.next_value::<Option<Str<'de>>>()?);
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        let missing = |key: &'static str| {
            stage.set(Stage::Missing(key));
            de::Error::custom("missing key")
        };
        // In the order of Phoenix's `Message.from_map!`.
        let topic = topic.ok_or_else(|| missing("topic"))?;
        let event = event.ok_or_else(|| missing("event"))?;
        let payload = payload.ok_or_else(|| missing("payload"))?;
        let msg_ref = msg_ref.ok_or_else(|| missing("ref"))?;
        Ok(Message {
            join_ref: join_ref.flatten().map(|s| s.0),
            msg_ref: msg_ref.map(|s| s.0),
            topic: topic.0,
            event: event.0,
            payload: Payload::Json(payload.get()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;

    fn enc(f: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn err(text: &str) -> DecodeError {
        decode(text).unwrap_err()
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
    fn phoenix_test_vectors() {
        // `v1_json_serializer_test.exs`: @v1_msg_json decodes to %Message{topic: "t", event:
        // "e", payload: "m"} (ref and join_ref nil), and a Message, a Broadcast of the same
        // encode to the same keys; a Reply puts status and response in the payload.
        let v1 = r#"{"event":"e","payload":"m","ref":null,"topic":"t"}"#;
        let m = decode(v1).unwrap();
        assert_eq!(parts(&m), (None, None, "t", "e"));
        assert_eq!(m.payload, Payload::Json(r#""m""#));
        assert_eq!(enc(|o| encode_message(o, None, "t", "e", r#""m""#)), v1);
        assert_eq!(enc(|o| encode_broadcast(o, "t", "e", r#""m""#)), v1);
        assert_eq!(
            enc(|o| encode_reply(o, Some("null"), "t", "ok", "{}")),
            r#"{"event":"phx_reply","payload":{"response":{},"status":"ok"},"ref":"null","topic":"t"}"#
        );
        // @v1_bad_json: a V2 array is not a V1 message.
        assert_eq!(
            err(r#"[null,null,"t","e",{"m":1}]"#),
            DecodeError::NotObject
        );
    }

    #[test]
    fn what_a_v1_client_sends() {
        // An old phoenix.js: no join_ref at all.
        let m =
            decode(r#"{"topic":"room:1","event":"phx_join","payload":{"a":1},"ref":"1"}"#).unwrap();
        assert_eq!(parts(&m), (None, Some("1"), "room:1", "phx_join"));
        assert_eq!(m.payload, Payload::Json(r#"{"a":1}"#));
        // Newer clients add join_ref; null is the same as absent; any key order.
        let m =
            decode(r#"{"ref":"2","join_ref":"1","payload":{},"event":"new_msg","topic":"room:1"}"#)
                .unwrap();
        assert_eq!(parts(&m), (Some("1"), Some("2"), "room:1", "new_msg"));
        let m = decode(
            r#"{"topic":"phoenix","event":"heartbeat","payload":{},"ref":null,"join_ref":null}"#,
        )
        .unwrap();
        assert!(m.is_heartbeat());
        assert_eq!((m.join_ref, m.msg_ref), (None, None));
        // Other keys are ignored, whatever they hold (skipped without recursion).
        let deep = format!(
            r#"{{"x":{}{},"topic":"t","event":"e","payload":null,"ref":"1","vsn":[1]}}"#,
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert_eq!(decode(&deep).unwrap().payload, Payload::Json("null"));
    }

    #[test]
    fn missing_keys_as_phoenix_reports_them() {
        for (text, key) in [
            (r#"{}"#, "topic"),
            (r#"{"event":"e","payload":{},"ref":"1"}"#, "topic"),
            (r#"{"topic":"t","payload":{},"ref":"1"}"#, "event"),
            (r#"{"topic":"t","event":"e","ref":"1"}"#, "payload"),
            (r#"{"topic":"t","event":"e","payload":{}}"#, "ref"),
            (
                r#"{"topic":"t","event":"e","payload":{},"join_ref":"1"}"#,
                "ref",
            ),
            (
                r#"{"Topic":"t","event":"e","payload":{},"ref":"1"}"#,
                "topic",
            ),
        ] {
            assert_eq!(err(text), DecodeError::MissingKey { key }, "{text}");
        }
        // A null payload or ref is present: Map.fetch! finds it.
        assert!(decode(r#"{"topic":"t","event":"e","payload":null,"ref":null}"#).is_ok());
    }

    #[test]
    fn wrong_types_duplicates_and_non_objects() {
        for (text, field) in [
            (
                r#"{"topic":1,"event":"e","payload":{},"ref":"1"}"#,
                Field::Topic,
            ),
            (
                r#"{"topic":null,"event":"e","payload":{},"ref":"1"}"#,
                Field::Topic,
            ),
            (
                r#"{"topic":"t","event":["e"],"payload":{},"ref":"1"}"#,
                Field::Event,
            ),
            (
                r#"{"topic":"t","event":"e","payload":{},"ref":1}"#,
                Field::Ref,
            ),
            (
                r#"{"topic":"t","event":"e","payload":{},"ref":"1","join_ref":{}}"#,
                Field::JoinRef,
            ),
        ] {
            assert_eq!(err(text), DecodeError::WrongType { field }, "{text}");
        }
        for (text, key) in [
            (
                r#"{"topic":"a","topic":"b","event":"e","payload":{},"ref":"1"}"#,
                "topic",
            ),
            (
                r#"{"topic":"a","event":"e","payload":{},"ref":"1","event":"phx_close"}"#,
                "event",
            ),
            (
                r#"{"topic":"a","event":"e","payload":{},"payload":[],"ref":"1"}"#,
                "payload",
            ),
            (
                r#"{"ref":null,"topic":"a","event":"e","payload":{},"ref":"1"}"#,
                "ref",
            ),
            (
                r#"{"join_ref":null,"join_ref":"1","topic":"a","event":"e","payload":{},"ref":"1"}"#,
                "join_ref",
            ),
            // The same key, escaped.
            (
                r#"{"topic":"a","\u0074opic":"b","event":"e","payload":{},"ref":"1"}"#,
                "topic",
            ),
        ] {
            assert_eq!(err(text), DecodeError::DuplicateKey { key }, "{text}");
        }
        for text in ["[]", r#""{}""#, "5", "null", "true"] {
            assert_eq!(err(text), DecodeError::NotObject, "{text}");
        }
    }

    #[test]
    fn malformed_input_is_not_json() {
        let ok = r#"{"topic":"t","event":"e","payload":{},"ref":"1"}"#;
        for text in [
            "",
            " ",
            "{",
            &ok[..ok.len() - 1],
            &format!("{ok} x"),
            &format!("{ok}{{}}"),
            r#"{"topic":"t","event":"e","payload":{},"ref":"1",}"#,
            r#"{"topic":"t","event":"e","payload":{],"ref":"1"}"#,
            r#"{"topic":"t\q","event":"e","payload":{},"ref":"1"}"#,
            r#"{"topic":"\ud800","event":"e","payload":{},"ref":"1"}"#,
            r#"{topic:"t","event":"e","payload":{},"ref":"1"}"#,
            r#"{'topic':"t","event":"e","payload":{},"ref":"1"}"#,
            &format!("\u{feff}{ok}"),
        ] {
            assert!(matches!(err(text), DecodeError::NotJson { .. }), "{text:?}");
        }
        assert_eq!(decode_bytes(b"{\xff}"), Err(DecodeError::NotUtf8));
        let m = decode_bytes(ok.as_bytes()).unwrap();
        assert_eq!(parts(&m), (None, Some("1"), "t", "e"));
    }

    #[test]
    fn strings_borrow_unless_escaped_and_escapes_round_trip() {
        let m = decode(r#"{"topic":"room:1","event":"e","payload":{},"ref":"1"}"#).unwrap();
        assert!(matches!(m.topic, Cow::Borrowed("room:1")));
        let m =
            decode(r#"{"topic":"room:\"1\"","event":"e\u00e9","payload":{},"ref":"\n"}"#).unwrap();
        assert!(matches!(&m.topic, Cow::Owned(t) if t == "room:\"1\""));
        assert_eq!((&*m.event, m.msg_ref.as_deref()), ("e\u{e9}", Some("\n")));
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend(["", "a\"b\\c", "café π 🚀", "\u{2028}\u{2029}", "x\0y"].map(String::from));
        for s in &samples {
            let text = enc(|o| encode_message(o, Some(s), s, s, "{}"));
            assert_eq!(
                serde_json::from_str::<serde_json::Value>(&text).unwrap()["topic"],
                **s
            );
            let m = decode(&text).unwrap();
            assert_eq!(parts(&m), (None, Some(s.as_str()), s.as_str(), s.as_str()));
        }
    }

    #[test]
    fn encoders_check_the_payload_and_never_write_join_ref() {
        for bad in r#"| |{|{}}|[1,]|{} {}|undefined"#.split('|') {
            let mut out = b"keep".to_vec();
            assert!(
                encode_message(&mut out, None, "t", "e", bad).is_err(),
                "{bad:?}"
            );
            assert!(encode_reply(&mut out, None, "t", "ok", bad).is_err());
            assert_eq!(out, b"keep");
        }
        let mut out = b"x".to_vec();
        encode_broadcast(&mut out, "t", "e", " {\"a\": 1}\n").unwrap();
        assert_eq!(
            out,
            br#"x{"event":"e","payload":{"a": 1},"ref":null,"topic":"t"}"#
        );
        let reply = enc(|o| encode_reply(o, Some("7"), "r", "error", r#"{"reason":"x"}"#));
        let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"topic": "r", "event": "phx_reply", "ref": "7",
                "payload": {"status": "error", "response": {"reason": "x"}}})
        );
    }

    #[test]
    fn mutated_frames_never_panic_and_round_trip() {
        let seed = r#"{"topic":"room:\u00e9","event":"new\n","payload":{"a":[1,"\"",{}]},"ref":"22","join_ref":"1"}"#;
        let alphabet = b"[]{}\",:\\0123456789nulltrefase \xc3\xa9";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut m = seed.as_bytes().to_vec();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let at = (x as usize) % m.len();
                let b = alphabet[(x >> 32) as usize % alphabet.len()];
                match (x >> 60) % 3 {
                    0 => m[at] = b,
                    1 => m.insert(at, b),
                    _ => drop(m.remove(at)),
                }
            }
            let Ok(mut msg) = decode_bytes(&m) else {
                continue;
            };
            let Payload::Json(p) = msg.payload else {
                panic!("binary payload from JSON")
            };
            let again =
                enc(|o| encode_message(o, msg.msg_ref.as_deref(), &msg.topic, &msg.event, p));
            msg.join_ref = None; // the server never sends it
            assert_eq!(decode(&again).unwrap(), msg);
            decoded += 1;
        }
        assert!(decoded > 300, "only {decoded} mutants decoded");
    }
}

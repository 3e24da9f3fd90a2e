//! Phoenix V2 JSON text frames: `[join_ref, ref, topic, event, payload]`.
//!
//! Decoding borrows from the frame: strings without escapes and the payload's raw text are
//! slices of the input. Encoders append to a caller-owned `Vec<u8>` and copy payload text
//! verbatim after checking it is one well-formed JSON value.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use serde::Deserializer as _;
use serde::de::{self, Deserialize, IgnoredAny, SeqAccess, Visitor};
use serde_json::error::Category;
use serde_json::value::RawValue;

use super::message::{EVENT_REPLY, Field, Message, Payload};

/// Why a text frame is not a Phoenix V2 message.
///
/// Phoenix itself answers none of these with a reply: its decoder raises, the socket process
/// exits and the connection drops. The caller closes the connection with 1007
/// ([`code::INVALID_DATA`](crate::proto::frame::close::code::INVALID_DATA)); there is no
/// trustworthy topic or ref to address a `phx_reply` to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON at all: bad syntax, early end, trailing bytes, an invalid escape or a lone
    /// surrogate. Close the connection. (The payload is skipped without recursion, so deep
    /// nesting is no error and costs no stack; the frame size limit bounds it.)
    #[error("not valid JSON (line {line}, column {column})")]
    NotJson {
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
    },
    /// Valid JSON but not an array. Close the connection.
    #[error("a Phoenix V2 message must be a JSON array")]
    NotArray,
    /// An array of other than five elements. Close the connection. (Phoenix ignores elements
    /// past the fifth; the official client never sends them, so we refuse them.)
    #[error("a Phoenix V2 message has 5 elements, got {found}")]
    WrongArity {
        /// How many elements the array had.
        found: usize,
    },
    /// `join_ref`/`ref` not a string or null, or `topic`/`event` not a string. Close the
    /// connection.
    #[error("{field} has the wrong JSON type")]
    WrongType {
        /// The offending element.
        field: Field,
    },
}

/// Why an encoder refused its input. Nothing was written to `out`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The payload text is not exactly one well-formed JSON value. A bug in the caller (or an
    /// embedder's handler): log it and send nothing, or reply `error` instead.
    #[error("payload is not valid JSON (line {line}, column {column})")]
    InvalidPayload {
        /// 1-based line of the fault.
        line: usize,
        /// 1-based column of the fault.
        column: usize,
    },
}

/// Decodes one text frame sent by a client (or, on the client side, by a server).
///
/// The payload may be any JSON value, as in Phoenix, which does not check it; channels that
/// need a map check it themselves.
pub fn decode(text: &str) -> Result<Message<'_>, DecodeError> {
    let stage = Cell::new(Stage::Top);
    let mut de = serde_json::Deserializer::from_str(text);
    de.deserialize_seq(FrameVisitor { stage: &stage })
        .and_then(|msg| de.end().map(|()| msg))
        .map_err(|e| match e.classify() {
            Category::Data => match stage.get() {
                Stage::Top => DecodeError::NotArray,
                Stage::Element(field) => DecodeError::WrongType { field },
                Stage::Arity(found) => DecodeError::WrongArity { found },
            },
            Category::Io | Category::Syntax | Category::Eof => DecodeError::NotJson {
                line: e.line(),
                column: e.column(),
            },
        })
}

/// Appends `[join_ref, ref, topic, event, payload]`: a client push, or a server push
/// (Phoenix's `push/3` sends `ref` null). Refs of `None` are written as `null`.
pub fn encode_message(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Result<(), EncodeError> {
    let payload = validate(payload_json)?;
    write_head(out, join_ref, msg_ref, topic, event);
    out.extend_from_slice(payload.as_bytes());
    out.push(b']');
    Ok(())
}

/// Appends a client push; the same bytes as [`encode_message`].
pub fn encode_push(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Result<(), EncodeError> {
    encode_message(out, join_ref, msg_ref, topic, event, payload_json)
}

/// Appends a reply, byte for byte as Phoenix (Jason) writes it:
/// `[join_ref, ref, topic, "phx_reply", {"response": response, "status": status}]`.
/// (Jason writes small maps with their keys sorted, so `response` comes first.)
pub fn encode_reply(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    response_json: &str,
) -> Result<(), EncodeError> {
    let response = validate(response_json)?;
    write_head(out, join_ref, msg_ref, topic, EVENT_REPLY);
    out.extend_from_slice(b"{\"response\":");
    out.extend_from_slice(response.as_bytes());
    out.extend_from_slice(b",\"status\":");
    write_str(out, status);
    out.extend_from_slice(b"}]");
    Ok(())
}

/// Appends a broadcast: `[null, null, topic, event, payload]`.
pub fn encode_broadcast(
    out: &mut Vec<u8>,
    topic: &str,
    event: &str,
    payload_json: &str,
) -> Result<(), EncodeError> {
    encode_message(out, None, None, topic, event, payload_json)
}

/// Appends `s` as a JSON string literal, quotes included.
///
/// Escapes `"`, `\` and the control characters U+0000..U+001F (the short forms `\b \f \n \r \t`
/// where JSON has them, `\u00XX` otherwise); every other character is copied as UTF-8.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let bytes = s.as_bytes();
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0x00..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        if short == b'u' {
            let hex = [HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]];
            out.extend_from_slice(b"\\u00");
            out.extend_from_slice(&hex);
        } else {
            out.extend_from_slice(&[b'\\', short]);
        }
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// Checks that `text` is exactly one JSON value (surrounding whitespace allowed) and returns
/// the value's own text.
pub(super) fn validate(text: &str) -> Result<&str, EncodeError> {
    serde_json::from_str::<&RawValue>(text)
        .map(RawValue::get)
        .map_err(|e| EncodeError::InvalidPayload {
            line: e.line(),
            column: e.column(),
        })
}

fn write_head(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
) {
    out.push(b'[');
    for r in [join_ref, msg_ref] {
        match r {
            Some(r) => write_str(out, r),
            None => out.extend_from_slice(b"null"),
        }
        out.push(b',');
    }
    write_str(out, topic);
    out.push(b',');
    write_str(out, event);
    out.push(b',');
}

/// Where the decoder is, so a serde "data" error can be turned into a typed one.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Top,
    Element(Field),
    Arity(usize),
}

struct FrameVisitor<'s> {
    stage: &'s Cell<Stage>,
}

impl<'de> Visitor<'de> for FrameVisitor<'_> {
    type Value = Message<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[join_ref, ref, topic, event, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let stage = self.stage;
        let short = |found: usize| {
            stage.set(Stage::Arity(found));
            de::Error::invalid_length(found, &"5 elements")
        };
        stage.set(Stage::Element(Field::JoinRef));
        let join_ref = seq
            .next_element::<Option<Str<'de>>>()?
            .ok_or_else(|| short(0))?;
        stage.set(Stage::Element(Field::Ref));
        let msg_ref = seq
            .next_element::<Option<Str<'de>>>()?
            .ok_or_else(|| short(1))?;
        stage.set(Stage::Element(Field::Topic));
        let topic = seq.next_element::<Str<'de>>()?.ok_or_else(|| short(2))?;
        stage.set(Stage::Element(Field::Event));
        let event = seq.next_element::<Str<'de>>()?.ok_or_else(|| short(3))?;
        let payload = seq
            .next_element::<&'de RawValue>()?
            .ok_or_else(|| short(4))?;
        let mut found = 5;
        while seq.next_element::<IgnoredAny>()?.is_some() {
            found += 1;
        }
        if found != 5 {
            return Err(short(found));
        }
        Ok(Message {
            join_ref: join_ref.map(|s| s.0),
            msg_ref: msg_ref.map(|s| s.0),
            topic: topic.0,
            event: event.0,
            payload: Payload::Json(payload.get()),
        })
    }
}

/// A JSON string that borrows from the input when it has no escapes.
/// (serde's own `Cow<str>` always allocates.)
pub(super) struct Str<'a>(pub(super) Cow<'a, str>);

impl<'de> Deserialize<'de> for Str<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_str(StrVisitor)
    }
}

struct StrVisitor;

impl<'de> Visitor<'de> for StrVisitor {
    type Value = Str<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string")
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Str(Cow::Owned(v.to_owned())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enc(f: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) -> String {
        let mut out = Vec::new();
        f(&mut out).unwrap();
        String::from_utf8(out).unwrap()
    }

    fn err(text: &str) -> DecodeError {
        decode(text).unwrap_err()
    }

    #[test]
    fn strings_borrow_unless_escaped() {
        let m = decode(r#"["1","2","room:1","new_msg",{}]"#).unwrap();
        assert!(matches!(m.topic, Cow::Borrowed("room:1")));
        assert!(matches!(m.join_ref, Some(Cow::Borrowed("1"))));
        let m = decode(r#"[null,null,"room:\"1\"","e\u00e9",{}]"#).unwrap();
        assert!(matches!(&m.topic, Cow::Owned(t) if t == "room:\"1\""));
        assert_eq!(m.event, "e\u{e9}");
    }

    #[test]
    fn payload_is_raw_text_of_any_json_value() {
        // Only its structure is checked: a lone surrogate escape in a payload string passes.
        let m = decode("[null,null,\"t\",\"e\",  {\"a\" : [1, 2.5e3]}\n ]").unwrap();
        assert_eq!(m.payload, Payload::Json(r#"{"a" : [1, 2.5e3]}"#));
        for p in r#"null|1|-0.5|"s"|[]|true|{"k":"\u2028"}|[{}]|"\ud800""#.split('|') {
            let text = format!(r#"[null,null,"t","e",{p}]"#);
            assert_eq!(decode(&text).unwrap().payload, Payload::Json(p));
        }
    }

    #[test]
    fn escaping_matches_serde_json_and_round_trips() {
        let mut samples: Vec<String> = (0u8..0x80).map(|b| char::from(b).to_string()).collect();
        samples.extend(
            [
                "",
                "a\"b\\c",
                "\u{7f}\u{80}",
                "café π 🚀",
                "\u{2028}\u{2029}",
                "\u{feff}x\0y",
            ]
            .map(String::from),
        );
        samples.push((0u8..0x20).map(char::from).collect());
        for s in &samples {
            let mut out = Vec::new();
            write_str(&mut out, s);
            assert_eq!(out, serde_json::to_vec(s).unwrap(), "{s:?}");
            let text = enc(|o| encode_message(o, Some(s), Some(s), s, s, "{}"));
            let m = decode(&text).unwrap();
            assert_eq!(m.join_ref.as_deref(), Some(s.as_str()));
            assert_eq!(m.msg_ref.as_deref(), Some(s.as_str()));
            assert_eq!((&*m.topic, &*m.event), (s.as_str(), s.as_str()));
        }
        assert_eq!(
            enc(|o| encode_broadcast(o, "\n\t\u{1}\u{1f}", "\u{8}\u{c}\r", "0")),
            r#"[null,null,"\n\t\u0001\u001f","\b\f\r",0]"#
        );
    }

    #[test]
    fn not_json() {
        for text in [
            "",
            " ",
            "not json",
            "[null,null,\"t\",\"e\",{}",
            "[null,null,\"t\",\"e\",{}] x",
            "[null,null,\"t\",\"e\",{]",
            "[null,null,\"t\",\"e\",{},]",
            "[null,null,\"t\",\"e\"",
            "[null,null,\"t\\q\",\"e\",{}]",
            "[null,null,\"\\ud800\",\"e\",{}]",
            "[null,null,\"t\",\"e\",{}][]",
            "[nul,null,\"t\",\"e\",{}]",
            "['1',null,\"t\",\"e\",{}]",
            "\u{feff}[null,null,\"t\",\"e\",{}]",
        ] {
            assert!(matches!(err(text), DecodeError::NotJson { .. }), "{text:?}");
        }
        // The payload is skipped without recursion: deep nesting costs no stack.
        let deep = format!(
            "[null,null,\"t\",\"e\",{}{}]",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        assert!(decode(&deep).is_ok());
        let unclosed = format!("[null,null,\"t\",\"e\",{}]", "[".repeat(100_000));
        assert!(matches!(err(&unclosed), DecodeError::NotJson { .. }));
        assert_eq!(
            err("[null,\n x]"),
            DecodeError::NotJson { line: 2, column: 2 }
        );
    }

    #[test]
    fn not_an_array() {
        for text in [r#"{}"#, r#"{"topic":"t"}"#, r#""[]""#, "5", "null", "true"] {
            assert_eq!(err(text), DecodeError::NotArray, "{text}");
        }
    }

    #[test]
    fn wrong_arity() {
        for (text, found) in [
            ("[]", 0),
            ("[null]", 1),
            (r#"[null,null,"t"]"#, 3),
            (r#"[null,null,"t","e"]"#, 4),
            (r#"[null,null,"t","e",{},{}]"#, 6),
            (r#"[null,null,"t","e",{},1,2,[3]]"#, 8),
        ] {
            assert_eq!(err(text), DecodeError::WrongArity { found }, "{text}");
        }
    }

    #[test]
    fn wrong_element_type() {
        for (text, field) in [
            (r#"[1,null,"t","e",{}]"#, Field::JoinRef),
            (r#"[{},null,"t","e",{}]"#, Field::JoinRef),
            (r#"[null,2,"t","e",{}]"#, Field::Ref),
            (r#"[null,false,"t","e",{}]"#, Field::Ref),
            (r#"[null,null,5,"e",{}]"#, Field::Topic),
            (r#"[null,null,null,"e",{}]"#, Field::Topic),
            (r#"[null,null,["t"],"e",{}]"#, Field::Topic),
            (r#"[null,null,"t",null,{}]"#, Field::Event),
            (r#"[null,null,"t",{"e":1},{}]"#, Field::Event),
            ("[1]", Field::JoinRef),
        ] {
            assert_eq!(err(text), DecodeError::WrongType { field }, "{text}");
        }
    }

    #[test]
    fn invalid_payload_is_refused_and_writes_nothing() {
        for bad in r#"| |{|{}}|[1,]|{} {}|undefined|'a'|"\x""#.split('|') {
            let mut out = b"keep".to_vec();
            let e = encode_message(&mut out, None, None, "t", "e", bad);
            assert!(
                matches!(e, Err(EncodeError::InvalidPayload { .. })),
                "{bad:?}"
            );
            assert!(encode_reply(&mut out, None, None, "t", "ok", bad).is_err());
            assert!(encode_broadcast(&mut out, "t", "e", bad).is_err());
            assert_eq!(out, b"keep");
        }
    }

    #[test]
    fn encoders_append_and_trim_payload_whitespace() {
        let mut out = b"x".to_vec();
        encode_broadcast(&mut out, "t", "e", " \n{\"a\": 1}\t").unwrap();
        assert_eq!(out, br#"x[null,null,"t","e",{"a": 1}]"#);
    }

    #[test]
    fn mutated_frames_never_panic_and_round_trip() {
        let seed = r#"["1","22","room:\u00e9","new\n",{"a":[1,"\"",{}]}]"#.as_bytes();
        let alphabet = b"[]{}\",:\\0123456789nulltrefase \xc3\xa9";
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut decoded = 0;
        for _ in 0..20_000 {
            let mut m = seed.to_vec();
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
            let Ok(text) = std::str::from_utf8(&m) else {
                continue;
            };
            let Ok(msg) = decode(text) else { continue };
            let Payload::Json(p) = msg.payload else {
                panic!("binary payload from text")
            };
            let (j, r) = (msg.join_ref.as_deref(), msg.msg_ref.as_deref());
            let again = enc(|o| encode_message(o, j, r, &msg.topic, &msg.event, p));
            assert_eq!(decode(&again).unwrap(), msg, "{text}");
            decoded += 1;
        }
        assert!(decoded > 500, "only {decoded} mutants decoded");
    }
}

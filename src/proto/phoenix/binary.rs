//! Phoenix V2 binary frames: a one-byte kind, one size byte per header string, the strings
//! (UTF-8, not terminated), then the payload bytes up to the end of the frame.
//!
//! | kind | direction | header bytes | strings, in order |
//! |---|---|---|---|
//! | 0 push | client -> server | 5 | join_ref, ref, topic, event |
//! | 0 push | server -> client | 4 | join_ref, topic, event (no ref) |
//! | 1 reply | server -> client | 5 | join_ref, ref, topic, status |
//! | 2 broadcast | server -> client | 3 | topic, event |
//!
//! A binary frame cannot say `null`: a missing ref is sent as an empty string, and an empty
//! ref decodes as `None`.

use std::borrow::Cow;

use super::message::{EVENT_REPLY, Field, Message, Payload};

/// Kind byte of a push (both directions, with different headers).
pub const KIND_PUSH: u8 = 0;
/// Kind byte of a reply (server -> client).
pub const KIND_REPLY: u8 = 1;
/// Kind byte of a broadcast (server -> client).
pub const KIND_BROADCAST: u8 = 2;
/// Header bytes (kind + sizes) of a client push.
pub const PUSH_HEADER_LEN: usize = 5;
/// Header bytes of a server push, which has no ref.
pub const SERVER_PUSH_HEADER_LEN: usize = 4;
/// Header bytes of a reply.
pub const REPLY_HEADER_LEN: usize = 5;
/// Header bytes of a broadcast.
pub const BROADCAST_HEADER_LEN: usize = 3;
/// The longest header string, in bytes: its size must fit the size byte.
pub const MAX_FIELD_LEN: usize = 255;

/// Why a binary frame is not a message we accept.
///
/// Phoenix replies to none of these: its decoder has no clause for them, the socket process
/// exits and the connection drops. The caller closes the connection with 1003
/// ([`code::UNSUPPORTED`](crate::proto::frame::close::code::UNSUPPORTED)), whichever the
/// variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The frame has no bytes at all. Close the connection.
    #[error("empty binary frame")]
    Empty,
    /// A kind byte that this side never receives (from a client: anything but 0; from a
    /// server: anything above 2). Close the connection.
    #[error("unexpected binary frame kind {0}")]
    UnexpectedKind(u8),
    /// The header, or the strings its sizes announce, run past the end of the frame.
    /// Close the connection.
    #[error("binary frame of {len} bytes is shorter than the {needed} its header announces")]
    Truncated {
        /// Bytes the header and strings need.
        needed: usize,
        /// Bytes the frame has.
        len: usize,
    },
    /// A header string is not UTF-8. (Phoenix would accept any bytes here; topics and
    /// events are text to us.) Close the connection, with 1003 like the others.
    #[error("{0} is not valid UTF-8")]
    NotUtf8(Field),
}

/// Why an encoder refused its input. Nothing was written to `out`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A header string is longer than 255 bytes and cannot be sized in one byte; Phoenix
    /// raises here too. Send a JSON frame instead, or reply `error` to the push.
    #[error("{field} is {len} bytes; a binary frame allows at most 255")]
    FieldTooLong {
        /// The offending field.
        field: Field,
        /// Its length in bytes.
        len: usize,
    },
}

/// A binary frame as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerFrame<'a> {
    /// Kind 0: a push to this client only; `msg_ref` is always `None`.
    Push(Message<'a>),
    /// Kind 1: the reply to a push; `event` is `phx_reply`, `payload` the response bytes.
    Reply {
        /// The reply status, e.g. `ok`.
        status: Cow<'a, str>,
        /// The rest of the reply.
        message: Message<'a>,
    },
    /// Kind 2: a broadcast; both refs are `None`.
    Broadcast(Message<'a>),
}

/// Decodes a binary frame sent by a client. Only kind 0 (push) is valid in that direction.
pub fn decode_push(bytes: &[u8]) -> Result<Message<'_>, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&KIND_PUSH) => {
            let ([join_ref, msg_ref, topic, event], payload) = split(
                bytes,
                [Field::JoinRef, Field::Ref, Field::Topic, Field::Event],
            )?;
            Ok(message(join_ref, msg_ref, topic, event, payload))
        }
        Some(&kind) => Err(DecodeError::UnexpectedKind(kind)),
    }
}

/// Decodes a binary frame sent by a server (the client side; for tests and the load generator).
pub fn decode_from_server(bytes: &[u8]) -> Result<ServerFrame<'_>, DecodeError> {
    match bytes.first() {
        None => Err(DecodeError::Empty),
        Some(&KIND_PUSH) => {
            let ([join_ref, topic, event], payload) =
                split(bytes, [Field::JoinRef, Field::Topic, Field::Event])?;
            Ok(ServerFrame::Push(message(
                join_ref, "", topic, event, payload,
            )))
        }
        Some(&KIND_REPLY) => {
            let ([join_ref, msg_ref, topic, status], payload) = split(
                bytes,
                [Field::JoinRef, Field::Ref, Field::Topic, Field::Status],
            )?;
            Ok(ServerFrame::Reply {
                status: Cow::Borrowed(status),
                message: message(join_ref, msg_ref, topic, EVENT_REPLY, payload),
            })
        }
        Some(&KIND_BROADCAST) => {
            let ([topic, event], payload) = split(bytes, [Field::Topic, Field::Event])?;
            Ok(ServerFrame::Broadcast(message(
                "", "", topic, event, payload,
            )))
        }
        Some(&kind) => Err(DecodeError::UnexpectedKind(kind)),
    }
}

/// Appends a client push (kind 0, 5-byte header with a ref), as phoenix.js sends it.
pub fn encode_push(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let fields = [
        (Field::JoinRef, join_ref.unwrap_or("")),
        (Field::Ref, msg_ref.unwrap_or("")),
        (Field::Topic, topic),
        (Field::Event, event),
    ];
    write(out, KIND_PUSH, &fields, payload)
}

/// Appends a server push to one client (kind 0, 4-byte header, no ref), as Phoenix's
/// `push/3` with a `{:binary, data}` payload.
pub fn encode_server_push(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let fields = [
        (Field::JoinRef, join_ref.unwrap_or("")),
        (Field::Topic, topic),
        (Field::Event, event),
    ];
    write(out, KIND_PUSH, &fields, payload)
}

/// Appends a reply (kind 1). phoenix.js presents it as event `phx_reply` with payload
/// `{status, response}`, `response` being the payload bytes.
pub fn encode_reply(
    out: &mut Vec<u8>,
    join_ref: Option<&str>,
    msg_ref: Option<&str>,
    topic: &str,
    status: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let fields = [
        (Field::JoinRef, join_ref.unwrap_or("")),
        (Field::Ref, msg_ref.unwrap_or("")),
        (Field::Topic, topic),
        (Field::Status, status),
    ];
    write(out, KIND_REPLY, &fields, payload)
}

/// Appends a broadcast (kind 2).
pub fn encode_broadcast(
    out: &mut Vec<u8>,
    topic: &str,
    event: &str,
    payload: &[u8],
) -> Result<(), EncodeError> {
    let fields = [(Field::Topic, topic), (Field::Event, event)];
    write(out, KIND_BROADCAST, &fields, payload)
}

/// Writes kind, sizes, strings and payload, after checking every size (so an error leaves
/// `out` untouched).
fn write<const N: usize>(
    out: &mut Vec<u8>,
    kind: u8,
    fields: &[(Field, &str); N],
    payload: &[u8],
) -> Result<(), EncodeError> {
    let mut sizes = [0u8; N];
    for (size, &(field, s)) in sizes.iter_mut().zip(fields) {
        *size = u8::try_from(s.len()).map_err(|_| EncodeError::FieldTooLong {
            field,
            len: s.len(),
        })?;
    }
    let strings: usize = fields.iter().map(|(_, s)| s.len()).sum();
    out.reserve(1 + sizes.len() + strings + payload.len());
    out.push(kind);
    out.extend_from_slice(&sizes);
    for &(_, s) in fields {
        out.extend_from_slice(s.as_bytes());
    }
    out.extend_from_slice(payload);
    Ok(())
}

/// Splits a frame whose kind byte is followed by one size byte per field in `fields`:
/// returns the strings and the payload (the rest of the frame).
fn split<const N: usize>(
    bytes: &[u8],
    fields: [Field; N],
) -> Result<([&str; N], &[u8]), DecodeError> {
    let header_len = 1 + N;
    let Some(sizes) = bytes.get(1..header_len) else {
        return Err(DecodeError::Truncated {
            needed: header_len,
            len: bytes.len(),
        });
    };
    let needed = header_len + sizes.iter().map(|&s| usize::from(s)).sum::<usize>();
    let truncated = DecodeError::Truncated {
        needed,
        len: bytes.len(),
    };
    if bytes.len() < needed {
        return Err(truncated);
    }
    let mut strs = [""; N];
    let mut at = header_len;
    for ((slot, &size), field) in strs.iter_mut().zip(sizes).zip(fields) {
        let end = at + usize::from(size);
        let raw = bytes.get(at..end).ok_or_else(|| truncated.clone())?;
        *slot = std::str::from_utf8(raw).map_err(|_| DecodeError::NotUtf8(field))?;
        at = end;
    }
    let payload = bytes.get(at..).ok_or(truncated)?;
    Ok((strs, payload))
}

fn optional(s: &str) -> Option<Cow<'_, str>> {
    (!s.is_empty()).then_some(Cow::Borrowed(s))
}

fn message<'a>(
    join_ref: &'a str,
    msg_ref: &'a str,
    topic: &'a str,
    event: &'a str,
    payload: &'a [u8],
) -> Message<'a> {
    Message {
        join_ref: optional(join_ref),
        msg_ref: optional(msg_ref),
        topic: Cow::Borrowed(topic),
        event: Cow::Borrowed(event),
        payload: Payload::Binary(payload),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // v2_json_serializer_test.exs: @client_push, @reply, @broadcast and the server push.
    const CLIENT_PUSH: &[u8] = b"\x00\x02\x03\x05\x0512123topicevent\x65\x66\x67";
    const REPLY: &[u8] = b"\x01\x02\x03\x05\x0212123topicok\x65\x66\x67";
    const BROADCAST: &[u8] = b"\x02\x05\x05topicevent\x65\x66\x67";
    const SERVER_PUSH: &[u8] = b"\x00\x02\x05\x0512topicevent\x65\x66\x67";

    fn enc(f: impl FnOnce(&mut Vec<u8>) -> Result<(), EncodeError>) -> Vec<u8> {
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
    fn fields_over_255_bytes_are_refused_untouched() {
        let long = "x".repeat(256);
        let max = "x".repeat(255);
        let p = b"p".as_slice();
        let mut out = b"keep".to_vec();
        let too_long = |field| Err(EncodeError::FieldTooLong { field, len: 256 });
        let got = encode_push(&mut out, Some(&long), None, "t", "e", p);
        assert_eq!(got, too_long(Field::JoinRef));
        let got = encode_push(&mut out, None, Some(&long), "t", "e", p);
        assert_eq!(got, too_long(Field::Ref));
        let got = encode_server_push(&mut out, None, &long, "e", p);
        assert_eq!(got, too_long(Field::Topic));
        let got = encode_reply(&mut out, None, Some(&long), "t", "ok", p);
        assert_eq!(got, too_long(Field::Ref));
        let got = encode_reply(&mut out, None, None, "t", &long, p);
        assert_eq!(got, too_long(Field::Status));
        let got = encode_broadcast(&mut out, "t", &long, p);
        assert_eq!(got, too_long(Field::Event));
        // "é" is two bytes: 128 of them are 256 bytes though only 128 chars.
        let got = encode_broadcast(&mut out, &"é".repeat(128), "e", p);
        assert_eq!(got, too_long(Field::Topic));
        assert_eq!(out, b"keep");
        encode_broadcast(&mut out, &max, &max, p).unwrap();
        assert_eq!(out[4..7], [KIND_BROADCAST, 255, 255]);
        assert_eq!(out.len(), 4 + BROADCAST_HEADER_LEN + 510 + 1);
    }

    #[test]
    fn empty_refs_decode_as_none_and_empty_frames_are_valid() {
        let m = decode_push(&[0, 0, 0, 0, 0]).unwrap();
        assert_eq!(parts(&m), (None, None, "", ""));
        assert_eq!(m.payload, Payload::Binary(b""));
        assert_eq!(enc(|o| encode_push(o, None, Some(""), "", "", &[])), [0; 5]);
    }

    #[test]
    fn client_may_send_only_pushes() {
        assert_eq!(decode_push(&[]), Err(DecodeError::Empty));
        for kind in [KIND_REPLY, KIND_BROADCAST, 3, 0x7b, 255] {
            let mut frame = CLIENT_PUSH.to_vec();
            frame[0] = kind;
            assert_eq!(decode_push(&frame), Err(DecodeError::UnexpectedKind(kind)));
        }
        assert_eq!(decode_from_server(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode_from_server(&[3, 0, 0]),
            Err(DecodeError::UnexpectedKind(3))
        );
    }

    #[test]
    fn truncated_at_every_length() {
        type Decode = fn(&[u8]) -> Result<Payload<'_>, DecodeError>;
        fn server(b: &[u8]) -> Result<Payload<'_>, DecodeError> {
            decode_from_server(b).map(|f| match f {
                ServerFrame::Push(m) | ServerFrame::Broadcast(m) => m.payload,
                ServerFrame::Reply { message, .. } => message.payload,
            })
        }
        let client: Decode = |b| decode_push(b).map(|m| m.payload);
        let cases: [(&[u8], Decode, usize, usize); 4] = [
            (CLIENT_PUSH, client, PUSH_HEADER_LEN, 15),
            (SERVER_PUSH, server, SERVER_PUSH_HEADER_LEN, 12),
            (REPLY, server, REPLY_HEADER_LEN, 12),
            (BROADCAST, server, BROADCAST_HEADER_LEN, 10),
        ];
        for (frame, decode, header, strings) in cases {
            let needed = header + strings;
            assert_eq!(frame.len(), needed + 3);
            for len in 0..=frame.len() {
                let expect = match len {
                    0 => Err(DecodeError::Empty),
                    _ if len < header => Err(DecodeError::Truncated {
                        needed: header,
                        len,
                    }),
                    _ if len < needed => Err(DecodeError::Truncated { needed, len }),
                    _ => Ok(Payload::Binary(&frame[needed..len])),
                };
                assert_eq!(decode(&frame[..len]), expect, "len {len} of {frame:?}");
            }
        }
    }

    #[test]
    fn sizes_pointing_past_the_end() {
        let got = decode_push(&[0, 255, 0, 0, 0]);
        assert_eq!(
            got,
            Err(DecodeError::Truncated {
                needed: 260,
                len: 5
            })
        );
        let got = decode_push(&[0, 255, 255, 255, 255, b'x']);
        assert_eq!(
            got,
            Err(DecodeError::Truncated {
                needed: 1025,
                len: 6
            })
        );
        let got = decode_push(b"\x00\x00\x00\x02\x01t");
        assert_eq!(got, Err(DecodeError::Truncated { needed: 8, len: 6 }));
        let got = decode_from_server(b"\x02\x01\x09te");
        assert_eq!(got, Err(DecodeError::Truncated { needed: 13, len: 5 }));
    }

    #[test]
    fn header_strings_must_be_utf8() {
        let got = decode_push(b"\x00\x00\x00\x01\x01\xffe");
        assert_eq!(got, Err(DecodeError::NotUtf8(Field::Topic)));
        let got = decode_push(b"\x00\x01\x00\x01\x01\xc3te");
        assert_eq!(got, Err(DecodeError::NotUtf8(Field::JoinRef)));
        let got = decode_from_server(b"\x01\x00\x00\x01\x01t\x80");
        assert_eq!(got, Err(DecodeError::NotUtf8(Field::Status)));
        // The payload is opaque: any bytes.
        let m = decode_push(b"\x00\x00\x00\x01\x01te\xff\xfe").unwrap();
        assert_eq!(m.payload, Payload::Binary(b"\xff\xfe"));
    }

    #[test]
    fn random_frames_never_panic_and_round_trip() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut decoded = 0;
        for _ in 0..50_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Mostly-plausible frames: small kinds and sizes, lengths around what they announce.
            let bytes = x.to_le_bytes();
            let len = (x >> 56) as usize % 16;
            let mut frame: Vec<u8> = bytes[..5].iter().map(|b| b % 4).collect();
            frame.extend(bytes.iter().cycle().skip(5).take(len).map(|b| b & 0x7f));
            frame.truncate((x >> 48) as usize % 32);
            if let Ok(m) = decode_push(&frame) {
                let Payload::Binary(p) = m.payload else {
                    panic!("json payload")
                };
                let (j, r, t, e) = parts(&m);
                assert_eq!(enc(|o| encode_push(o, j, r, t, e, p)), frame);
                decoded += 1;
            }
            let _ = decode_from_server(&frame);
        }
        assert!(decoded > 500, "only {decoded} frames decoded");
    }
}

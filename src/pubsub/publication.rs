//! A broadcast as it travels between cores (and, later, nodes): `Publication { topic, event,
//! payload }`, the payload raw JSON text or binary bytes, never re-serialised.
//!
//! One reference-counted allocation holds all of it, so a publication is cloned for every peer
//! core by a count increment and handed to the runtime's mesh as its opaque [`Envelope`] bytes:
//!
//! ```text
//! kind u8 (0 JSON, 1 binary) | topic length u32 LE | event length u32 LE | topic | event | payload
//! ```
//!
//! A publication its history topic's home core has sequenced ([`Publication::sequenced`], see
//! `pubsub::history`) has bit 0x80 set in its kind and its position after the lengths:
//! `offset u64 LE | epoch u64 LE`; its JSON payload carries the same position under
//! `history_pos_key`.
//!
//! [`Publication::new`] is the one check every broadcast passes, whoever asks for it (a client's
//! push, a handler, the HTTP API): no reserved event (the client libraries would act on it: a
//! `phx_close` closes every member's channel), no JSON payload that is not an object (phoenix.js
//! reads `payload.status` and throws on `null`), and header strings that fit the V2 binary
//! format when the payload is binary.

use std::sync::Arc;

use crate::proto::phoenix::{Payload, is_reserved_event};
use crate::runtime::mesh::Envelope;

const HEADER: usize = 9;
/// The header of a sequenced publication: the plain one and its position (16 bytes).
const SEQ_HEADER: usize = HEADER + 16;
const JSON: u8 = 0;
const BINARY: u8 = 1;
/// The kind bit of a sequenced publication.
const SEQ: u8 = 0x80;

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

/// One broadcast: topic, event and payload in one shared buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication(Arc<[u8]>);

impl Publication {
    /// Check and pack a broadcast (see the module documentation for what is refused). The JSON
    /// payload is already known to be one well-formed value (the decoders and the API check it).
    pub fn new(topic: &str, event: &str, payload: Payload<'_>) -> Result<Publication, Refused> {
        if is_reserved_event(event) {
            return Err(Refused::ReservedEvent);
        }
        if !payload.is_relayable() {
            return Err(Refused::NotAnObject);
        }
        let (kind, body) = match payload {
            Payload::Json(p) => (JSON, p.as_bytes()),
            Payload::Binary(b) => {
                if topic.len() > 255 || event.len() > 255 {
                    return Err(Refused::TooLong); // V2 binary sizes each string in one byte
                }
                (BINARY, b)
            }
        };
        let (Ok(t), Ok(e)) = (u32::try_from(topic.len()), u32::try_from(event.len())) else {
            return Err(Refused::TooLong);
        };
        let mut buf = Vec::with_capacity(HEADER + topic.len() + event.len() + body.len());
        buf.push(kind);
        buf.extend_from_slice(&t.to_le_bytes());
        buf.extend_from_slice(&e.to_le_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(event.as_bytes());
        buf.extend_from_slice(body);
        Ok(Publication(Arc::from(buf)))
    }

    /// Pack a publication of an event the server itself sends (`presence_diff`, built by the
    /// topic's home core from its own state): the reserved-event check is skipped, so this is
    /// never called with an event or payload a client or API caller chose.
    pub(crate) fn system(topic: &str, event: &str, payload_json: &str) -> Publication {
        let mut buf = Vec::with_capacity(HEADER + topic.len() + event.len() + payload_json.len());
        buf.push(JSON);
        buf.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(event.len() as u32).to_le_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(event.as_bytes());
        buf.extend_from_slice(payload_json.as_bytes());
        Publication(Arc::from(buf))
    }

    /// Read an envelope another core sent. `None` if it is not a publication's layout (it always
    /// is: only [`Publication::into_envelope`] makes them; checked rather than trusted anyway).
    pub fn from_envelope(env: Envelope) -> Option<Publication> {
        let b = &env.0;
        let (t, e) = Self::lengths(b)?;
        let kind = b[0] & !SEQ;
        let h = if b[0] & SEQ != 0 { SEQ_HEADER } else { HEADER };
        let ok = kind <= BINARY
            && h.checked_add(t)?.checked_add(e)? <= b.len()
            && std::str::from_utf8(&b[h..h + t + e]).is_ok()
            && (kind == BINARY || std::str::from_utf8(&b[h + t + e..]).is_ok());
        ok.then_some(Publication(env.0))
    }

    /// This publication at `offset` of its topic's history `epoch`, in a new buffer (the one
    /// copy a history topic's publication costs, made once at its home core): the position in
    /// the header, and a JSON object payload with `,"<pos_key>":{"o":offset,"e":epoch}` added
    /// last, so that a key of that name the publisher sent is shadowed by it (`JSON.parse`
    /// keeps the last). A binary payload is kept as it is (its position is in the header only).
    pub(crate) fn sequenced(&self, offset: u64, epoch: u64, pos_key: &str) -> Publication {
        let (topic, event, payload) = self.parts();
        let kind = self.0.first().copied().unwrap_or(JSON) & !SEQ;
        let mut buf = Vec::with_capacity(SEQ_HEADER + self.len() + pos_key.len() + 48);
        buf.push(kind | SEQ);
        buf.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        buf.extend_from_slice(&(event.len() as u32).to_le_bytes());
        buf.extend_from_slice(&offset.to_le_bytes());
        buf.extend_from_slice(&epoch.to_le_bytes());
        buf.extend_from_slice(topic.as_bytes());
        buf.extend_from_slice(event.as_bytes());
        match payload {
            Payload::Json(text) => {
                let text = text.trim_end();
                // A relayable JSON payload is an object: it ends with its closing brace.
                match text.strip_suffix('}') {
                    Some(body) => {
                        buf.extend_from_slice(body.as_bytes());
                        if !body.trim_start().trim_start_matches('{').trim().is_empty() {
                            buf.push(b',');
                        }
                        let pos = format!(r#""{pos_key}":{{"o":{offset},"e":{epoch}}}}}"#);
                        buf.extend_from_slice(pos.as_bytes());
                    }
                    None => buf.extend_from_slice(text.as_bytes()),
                }
            }
            Payload::Binary(b) => buf.extend_from_slice(b),
        }
        Publication(Arc::from(buf))
    }

    /// Its position in its topic's history, `(offset, epoch)`, if it was sequenced.
    pub fn position(&self) -> Option<(u64, u64)> {
        if self.0.first()? & SEQ == 0 {
            return None;
        }
        let offset = u64::from_le_bytes(self.0.get(HEADER..HEADER + 8)?.try_into().ok()?);
        let epoch = u64::from_le_bytes(self.0.get(HEADER + 8..SEQ_HEADER)?.try_into().ok()?);
        Some((offset, epoch))
    }

    /// The bytes for the mesh (shared, not copied).
    pub fn into_envelope(self) -> Envelope {
        Envelope(self.0)
    }

    /// The same, keeping this handle.
    pub fn envelope(&self) -> Envelope {
        Envelope(self.0.clone())
    }

    fn lengths(b: &[u8]) -> Option<(usize, usize)> {
        let t = u32::from_le_bytes(b.get(1..5)?.try_into().ok()?) as usize;
        let e = u32::from_le_bytes(b.get(5..9)?.try_into().ok()?) as usize;
        Some((t, e))
    }

    /// Topic and event (the header's strings, not the payload), and where the payload starts.
    fn names(&self) -> (&str, &str, usize) {
        let (t, e) = Self::lengths(&self.0).unwrap_or((0, 0));
        let text = |r: std::ops::Range<usize>| {
            self.0
                .get(r)
                .and_then(|s| std::str::from_utf8(s).ok())
                .unwrap_or("")
        };
        let h = if self.0.first().is_some_and(|k| k & SEQ != 0) {
            SEQ_HEADER
        } else {
            HEADER
        };
        let body = h + t + e;
        (text(h..h + t), text(h + t..body), body)
    }

    /// Topic, event and payload, the header read once (what an encoder needs).
    pub fn parts(&self) -> (&str, &str, Payload<'_>) {
        let (topic, event, at) = self.names();
        let body = self.0.get(at..).unwrap_or(&[]);
        let payload = if self.0.first().map(|k| k & !SEQ) == Some(BINARY) {
            Payload::Binary(body)
        } else {
            Payload::Json(std::str::from_utf8(body).unwrap_or("{}"))
        };
        (topic, event, payload)
    }

    /// The topic.
    pub fn topic(&self) -> &str {
        self.names().0
    }

    /// The event.
    pub fn event(&self) -> &str {
        self.names().1
    }

    /// The payload, as it was given.
    pub fn payload(&self) -> Payload<'_> {
        self.parts().2
    }

    /// Bytes this publication holds (its one allocation's contents).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Never true: a publication has at least its header.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_through_an_envelope_without_copying() {
        let p = Publication::new("room:1", "new_msg", Payload::Json(r#"{"a":1}"#)).unwrap();
        assert_eq!(
            (p.topic(), p.event(), p.payload()),
            ("room:1", "new_msg", Payload::Json(r#"{"a":1}"#))
        );
        let env = p.envelope();
        assert!(Arc::ptr_eq(&env.0, &p.0), "shared, not copied");
        let q = Publication::from_envelope(env).unwrap();
        assert_eq!(q, p);
        let b = Publication::new("t", "bin", Payload::Binary(&[0, 255, 7])).unwrap();
        let b = Publication::from_envelope(b.into_envelope()).unwrap();
        assert_eq!(b.payload(), Payload::Binary(&[0, 255, 7]));
    }

    #[test]
    fn a_sequenced_publication_carries_its_position_in_header_and_payload() {
        let p =
            Publication::new("room:1", "m", Payload::Json(r#" {"a":1, "_pos":"fake"} "#)).unwrap();
        let s = p.sequenced(7, 42, "_pos");
        assert_eq!(s.position(), Some((7, 42)));
        assert_eq!(p.position(), None);
        assert_eq!((s.topic(), s.event()), ("room:1", "m"));
        let Payload::Json(text) = s.payload() else {
            panic!("JSON stays JSON")
        };
        assert_eq!(text, r#" {"a":1, "_pos":"fake","_pos":{"o":7,"e":42}}"#);
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(
            v["_pos"],
            serde_json::json!({"o": 7, "e": 42}),
            "the server's wins"
        );
        let empty = Publication::new("t", "m", Payload::Json("{ }")).unwrap();
        let empty = empty.sequenced(1, 2, "p");
        let Payload::Json(text) = empty.payload() else {
            panic!()
        };
        assert_eq!(text, r#"{ "p":{"o":1,"e":2}}"#);
        let bin = Publication::new("t", "b", Payload::Binary(&[1, 2])).unwrap();
        let s = Publication::from_envelope(bin.sequenced(3, 4, "p").into_envelope()).unwrap();
        assert_eq!(
            (s.payload(), s.position()),
            (Payload::Binary(&[1, 2]), Some((3, 4)))
        );
    }

    #[test]
    fn refuses_what_no_client_may_receive() {
        for e in [
            "phx_close",
            "phx_error",
            "phx_reply",
            "presence_diff",
            "presence_state",
        ] {
            assert_eq!(
                Publication::new("t", e, Payload::Json("{}")),
                Err(Refused::ReservedEvent)
            );
        }
        for p in ["null", "[]", "1", r#""s""#] {
            assert_eq!(
                Publication::new("t", "e", Payload::Json(p)),
                Err(Refused::NotAnObject)
            );
        }
        let long = "x".repeat(256);
        assert_eq!(
            Publication::new(&long, "e", Payload::Binary(b"")),
            Err(Refused::TooLong)
        );
        assert!(Publication::new(&long, "e", Payload::Json("{}")).is_ok());
    }

    #[test]
    fn foreign_bytes_are_not_taken_for_a_publication() {
        for bad in [
            &b""[..],
            &[0, 1],
            &[2, 0, 0, 0, 0, 0, 0, 0, 0],
            &[0, 9, 0, 0, 0, 0, 0, 0, 0],
        ] {
            assert!(Publication::from_envelope(Envelope(Arc::from(bad))).is_none());
        }
    }

    #[test]
    fn reasons_and_responses_agree() {
        for r in [
            Refused::ReservedEvent,
            Refused::NotAnObject,
            Refused::TooLong,
        ] {
            assert_eq!(r.response(), format!(r#"{{"reason":"{}"}}"#, r.reason()));
        }
    }
}

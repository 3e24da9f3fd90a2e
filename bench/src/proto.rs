//! Phoenix Channels V2 JSON as a client speaks it, and the benchmark's message payload.
//! Pure: strings in, strings out; no sockets, no clock.
//!
//! Frames are `[join_ref, ref, topic, event, payload]` text messages. A client sends joins,
//! heartbeats (`[null,"<ref>","phoenix","heartbeat",{}]`) and pushes; it reads replies
//! (`phx_reply` with `{"status":..,"response":..}`) and server pushes and broadcasts.

use std::borrow::Cow;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::value::RawValue;

/// The event publishers push and subscribers count.
pub const BENCH_EVENT: &str = "bench";

/// A JSON string literal for `s`.
fn lit(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_string())
}

/// `[join_ref, join_ref, topic, "phx_join", {}]`: phoenix.js uses the join's ref as its join_ref.
pub fn join(join_ref: u64, topic: &str) -> String {
    format!(
        r#"["{join_ref}","{join_ref}",{},"phx_join",{{}}]"#,
        lit(topic)
    )
}

/// `[null, ref, "phoenix", "heartbeat", {}]`.
pub fn heartbeat(msg_ref: u64) -> String {
    format!(r#"[null,"{msg_ref}","phoenix","heartbeat",{{}}]"#)
}

/// A push on a joined topic; `payload` must already be JSON.
pub fn push(join_ref: u64, msg_ref: u64, topic: &str, event: &str, payload: &str) -> String {
    format!(
        r#"["{join_ref}","{msg_ref}",{},{},{payload}]"#,
        lit(topic),
        lit(event)
    )
}

/// The JSON body of `POST /api/broadcast`.
pub fn api_broadcast(topic: &str, event: &str, payload: &str) -> String {
    format!(
        r#"{{"topic":{},"event":{},"payload":{payload}}}"#,
        lit(topic),
        lit(event)
    )
}

/// One message from the server, as far as a client needs to know.
#[derive(Debug)]
pub enum Incoming<'a> {
    /// `phx_reply`: the answer to the message with ref `msg_ref`.
    Reply {
        msg_ref: Option<Cow<'a, str>>,
        topic: Cow<'a, str>,
        ok: bool,
    },
    /// Anything else: a broadcast, a push, `phx_close`, `phx_error`.
    Event {
        topic: Cow<'a, str>,
        event: Cow<'a, str>,
        payload: &'a RawValue,
    },
}

#[derive(Deserialize)]
struct Wire<'a>(
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Option<Cow<'a, str>>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] Cow<'a, str>,
    #[serde(borrow)] &'a RawValue,
);

#[derive(Deserialize)]
struct ReplyPayload<'a> {
    #[serde(borrow)]
    status: Cow<'a, str>,
}

/// Decode one text frame from the server.
pub fn parse(text: &str) -> Result<Incoming<'_>, serde_json::Error> {
    let Wire(_join_ref, msg_ref, topic, event, payload) = serde_json::from_str(text)?;
    if event == "phx_reply" {
        let reply: ReplyPayload<'_> = serde_json::from_str(payload.get())?;
        return Ok(Incoming::Reply {
            msg_ref,
            topic,
            ok: reply.status == "ok",
        });
    }
    Ok(Incoming::Event {
        topic,
        event,
        payload,
    })
}

/// What every benchmark message carries: when it was sent, by whom, and where it sits in its
/// publisher's sequence for its topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Stamp {
    /// Send time, unix nanoseconds (CLOCK_REALTIME, so comparable across processes).
    pub ts: u64,
    /// Publisher id.
    pub p: u32,
    /// Topic index.
    pub t: u32,
    /// Sequence number of this publisher on this topic, from 0.
    pub s: u64,
    /// 1 when sent inside the measurement window, 0 during warm-up.
    pub m: u8,
    /// The server core that owns the publisher's socket, when known.
    #[serde(default)]
    pub c: Option<u32>,
}

impl Stamp {
    /// The payload object, with `pad` filler bytes in field `x` when asked.
    pub fn encode(&self, pad: usize) -> String {
        let Stamp { ts, p, t, s, m, c } = *self;
        let mut out = format!(r#"{{"ts":{ts},"p":{p},"t":{t},"s":{s},"m":{m}"#);
        if let Some(c) = c {
            out.push_str(&format!(r#","c":{c}"#));
        }
        if pad > 0 {
            out.push_str(r#","x":""#);
            out.extend(std::iter::repeat_n('x', pad));
            out.push('"');
        }
        out.push('}');
        out
    }

    pub fn decode(payload: &RawValue) -> Result<Stamp, serde_json::Error> {
        serde_json::from_str(payload.get())
    }

    pub fn measured(&self) -> bool {
        self.m != 0
    }
}

/// Now, in unix nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_messages() {
        assert_eq!(join(1, "room:1"), r#"["1","1","room:1","phx_join",{}]"#);
        assert_eq!(heartbeat(7), r#"[null,"7","phoenix","heartbeat",{}]"#);
        assert_eq!(
            push(1, 9, "a\"b", "bench", "{}"),
            r#"["1","9","a\"b","bench",{}]"#
        );
        let body = api_broadcast("t", "bench", r#"{"a":1}"#);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["topic"], "t");
        assert_eq!(v["payload"]["a"], 1);
    }

    #[test]
    fn replies_and_events() {
        let r = parse(r#"["1","1","room:1","phx_reply",{"response":{},"status":"ok"}]"#).unwrap();
        let Incoming::Reply { msg_ref, topic, ok } = r else {
            panic!("not a reply")
        };
        assert_eq!(
            (msg_ref.as_deref(), &*topic, ok),
            (Some("1"), "room:1", true)
        );
        let r = parse(r#"[null,"2","x","phx_reply",{"response":{"reason":"unmatched topic"},"status":"error"}]"#)
            .unwrap();
        assert!(matches!(r, Incoming::Reply { ok: false, .. }));
        let e = parse(r#"[null,null,"room:1","bench",{"ts":1,"p":2,"t":3,"s":4,"m":1}]"#).unwrap();
        let Incoming::Event {
            topic,
            event,
            payload,
        } = e
        else {
            panic!("not an event")
        };
        assert_eq!((&*topic, &*event), ("room:1", "bench"));
        assert_eq!(Stamp::decode(payload).unwrap().s, 4);
        assert!(parse("{}").is_err());
        assert!(parse(r#"[null,null,"t","phx_reply",{}]"#).is_err());
        assert!(parse(r#"[null,null,"t"]"#).is_err());
    }

    #[test]
    fn stamp_round_trips() {
        let st = Stamp {
            ts: 1_763_900_000_123_456_789,
            p: 3,
            t: 9,
            s: 123_456,
            m: 1,
            c: None,
        };
        for st in [st, Stamp { c: Some(1), ..st }] {
            for pad in [0, 1, 100] {
                let text = st.encode(pad);
                let raw: Box<RawValue> = serde_json::from_str(&text).unwrap();
                assert_eq!(Stamp::decode(&raw).unwrap(), st);
                if pad > 0 {
                    assert!(text.len() > pad);
                }
            }
        }
        let raw: Box<RawValue> = serde_json::from_str(r#"{"ts":"x"}"#).unwrap();
        assert!(Stamp::decode(&raw).is_err());
        assert!(now_ns() > 1_600_000_000_000_000_000);
    }
}

//! Phoenix's long-poll transport on the wire (`/socket/longpoll`, phoenix.js `LongPoll`), pure:
//! the session token, the JSON bodies of the answers, the lines of a batch.
//!
//! What phoenix.js expects (`lib/phoenix/transports/long_poll.ex` answers the same way): every
//! answer is HTTP 200 with the outcome in the body, `{"status": N, ...}`:
//!
//! ```text
//! GET, no session      {"status":410,"token":"<session token>","messages":[]}   opened
//! GET, messages        {"status":200,"token":"<same>","messages":["<frame>", ...]}
//! GET, window passed   {"status":204,"token":"<same>","messages":[]}
//! GET, refused         {"status":403}                   (phoenix.js closes for good)
//! GET/POST, no such    {"status":410}                   (phoenix.js reconnects, rejoins)
//! POST, accepted       {"status":200}
//! ```
//!
//! Each message is one serialized Phoenix message as a WebSocket text frame would carry it (a V2
//! array or a V1 object), as a JSON string. A POST body is one message, or with
//! `Content-Type: application/x-ndjson` one per line; phoenix.js sends a binary push as a line
//! of standard base64 (text messages start with `[` or `{`).

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

/// How a session token begins (a socket's own token never does: see [`SessionToken::parse`]).
pub const TOKEN_PREFIX: &str = "lp1.";

/// The most messages one POST may carry (phoenix.js sends at most 100 per batch).
pub const MAX_BATCH: usize = 100;

/// What a long-poll session token names: the core that holds the session, its slot there, and
/// the session's 128-bit random secret (the token is the only credential for a session).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionToken {
    pub core: u16,
    pub key: u32,
    pub generation: u32,
    pub secret: [u8; 16],
}

const RAW: usize = 2 + 4 + 4 + 16;

impl SessionToken {
    /// `lp1.` + base64url(core, key, generation, secret).
    pub fn encode(&self) -> String {
        let mut raw = [0u8; RAW];
        raw[..2].copy_from_slice(&self.core.to_be_bytes());
        raw[2..6].copy_from_slice(&self.key.to_be_bytes());
        raw[6..10].copy_from_slice(&self.generation.to_be_bytes());
        raw[10..].copy_from_slice(&self.secret);
        format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(raw))
    }

    /// The token's fields, or `None` if it is not one this module wrote.
    pub fn parse(token: &str) -> Option<SessionToken> {
        let b64 = token.strip_prefix(TOKEN_PREFIX)?;
        let raw = URL_SAFE_NO_PAD.decode(b64).ok()?;
        let raw: [u8; RAW] = raw.try_into().ok()?;
        let u32_at = |i: usize| u32::from_be_bytes([raw[i], raw[i + 1], raw[i + 2], raw[i + 3]]);
        let mut secret = [0u8; 16];
        secret.copy_from_slice(&raw[10..]);
        Some(SessionToken {
            core: u16::from_be_bytes([raw[0], raw[1]]),
            key: u32_at(2),
            generation: u32_at(6),
            secret,
        })
    }
}

/// `{"status":N}`.
pub fn status_body(status: u16) -> Vec<u8> {
    format!("{{\"status\":{status}}}").into_bytes()
}

/// `{"status":N,"token":T,"messages":[...]}`: each message (one serialized Phoenix message, as
/// text) as a JSON string.
pub fn poll_body<'a>(status: u16, token: &str, messages: impl Iterator<Item = &'a str>) -> Vec<u8> {
    let mut out = format!("{{\"status\":{status},\"token\":").into_bytes();
    // Writing JSON strings into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, token);
    out.extend_from_slice(b",\"messages\":[");
    for (i, m) in messages.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut out, m);
    }
    out.extend_from_slice(b"]}");
    out
}

/// One message of a POST.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a str),
    Binary(Vec<u8>),
}

/// Why a POST body was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("a batch holds at most 100 messages")]
    TooMany,
    #[error("a text message is not UTF-8")]
    NotUtf8,
    #[error("a binary message is not base64")]
    NotBase64,
}

/// The messages of a POST body: the whole body as one text message, or (`ndjson`) one per
/// non-empty line (`\n` or `\r\n`), a line that does not start with `[` or `{` being a binary
/// message in standard base64 (phoenix.js's encoding). Checked whole before any is handled.
pub fn batch(body: &[u8], ndjson: bool) -> Result<Vec<Line<'_>>, BatchError> {
    if !ndjson {
        let text = std::str::from_utf8(body).map_err(|_| BatchError::NotUtf8)?;
        return Ok(vec![Line::Text(text)]);
    }
    let mut out = Vec::new();
    for line in body.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            continue;
        }
        if out.len() == MAX_BATCH {
            return Err(BatchError::TooMany);
        }
        out.push(match line[0] {
            b'[' | b'{' => Line::Text(std::str::from_utf8(line).map_err(|_| BatchError::NotUtf8)?),
            _ => Line::Binary(STANDARD.decode(line).map_err(|_| BatchError::NotBase64)?),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_round_trips_and_nothing_else_parses() {
        let t = SessionToken {
            core: 3,
            key: 70_001,
            generation: u32::MAX,
            secret: [7; 16],
        };
        let s = t.encode();
        assert!(s.starts_with(TOKEN_PREFIX) && s.len() == 4 + 35, "{s}");
        assert_eq!(SessionToken::parse(&s), Some(t));
        assert_eq!(SessionToken::parse(&s[..s.len() - 1]), None);
        assert_eq!(SessionToken::parse(&format!("{s}A")), None);
        assert_eq!(SessionToken::parse(&s[4..]), None, "no prefix");
        assert_eq!(SessionToken::parse("lp1.!!!"), None);
        assert_eq!(SessionToken::parse("eyJhbGciOiJIUzI1NiJ9.e30.x"), None);
    }

    #[test]
    fn bodies_are_what_phoenix_js_reads() {
        assert_eq!(status_body(410), br#"{"status":410}"#);
        let frames = [r#"[null,null,"room:1","new",{"a":"\"q\""}]"#, "x"];
        let body = poll_body(200, "lp1.T", frames.into_iter());
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], 200);
        assert_eq!(v["token"], "lp1.T");
        assert_eq!(v["messages"][0], frames[0]);
        assert_eq!(v["messages"][1], "x");
        let empty = poll_body(204, "t", std::iter::empty());
        assert_eq!(empty, br#"{"status":204,"token":"t","messages":[]}"#);
    }

    #[test]
    fn a_batch_is_lines_of_text_or_base64() {
        let body = b"[\"1\",\"1\",\"t\",\"phx_join\",{}]\r\n\nAAEC\n{\"topic\":\"t\"}\n";
        let lines = batch(body, true).unwrap();
        assert_eq!(
            lines,
            vec![
                Line::Text(r#"["1","1","t","phx_join",{}]"#),
                Line::Binary(vec![0, 1, 2]),
                Line::Text(r#"{"topic":"t"}"#),
            ]
        );
        // Not ndjson: the whole body is one message, newlines and all.
        assert_eq!(
            batch(b"[1,\n2]", false).unwrap(),
            vec![Line::Text("[1,\n2]")]
        );
        assert_eq!(batch(b"", true).unwrap(), vec![]);
        let many = "[]\n".repeat(101);
        assert_eq!(batch(many.as_bytes(), true), Err(BatchError::TooMany));
        assert_eq!(
            batch(&"[]\n".repeat(100).into_bytes(), true).unwrap().len(),
            100
        );
        assert_eq!(batch(b"[\xff]", true), Err(BatchError::NotUtf8));
        assert_eq!(batch(b"\xff", false), Err(BatchError::NotUtf8));
        assert_eq!(batch(b"not base64!", true), Err(BatchError::NotBase64));
    }
}

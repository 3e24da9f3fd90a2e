//! The messages: one topic, one event, a payload sized so that the broadcast frame every
//! subscriber receives is exactly [`FRAME_LEN`] bytes on the wire, and the client's own texts
//! (join, heartbeat, push, API body).

pub const TOPIC: &str = "room:cpu";
pub const EVENT: &str = "new_msg";
/// Bytes of one delivered WebSocket frame: 2 bytes of header + 75 of text.
pub const FRAME_LEN: usize = 77;
/// Every delivered broadcast starts with this (V2 JSON: no join_ref, no ref).
pub const BROADCAST_PREFIX: &[u8] = br#"[null,null,"room:cpu","new_msg","#;
/// Where the message id starts inside the payload (`{"id":"TTTKKK",...`).
const ID_KEY: &[u8] = br#"{"id":""#;
/// Digits of an id: a 3-digit measurement tag, then a 3-digit message index.
const ID_DIGITS: usize = 6;

/// Text bytes of the broadcast frame (a header of 2 bytes for texts under 126).
const TEXT_LEN: usize = FRAME_LEN - 2;

/// The payload object of message `k` of measurement `tag`: `{"id":"TTTKKK","pad":"xx..x"}`,
/// padded so that `[null,null,"room:cpu","new_msg",PAYLOAD]` is 75 bytes.
pub fn payload(tag: u32, k: usize) -> String {
    let id = format!("{:03}{:03}", tag % 1000, k % 1000);
    let bare = format!(r#"{{"id":"{id}","pad":""}}"#);
    let pad = TEXT_LEN - BROADCAST_PREFIX.len() - 1 - bare.len();
    format!(r#"{{"id":"{id}","pad":"{}"}}"#, "x".repeat(pad))
}

/// The text a subscriber receives for `payload`.
pub fn broadcast_text(payload: &str) -> String {
    format!("{}{payload}]", String::from_utf8_lossy(BROADCAST_PREFIX))
}

/// `(tag, k)` of a delivered broadcast text, None when it is not one of ours.
pub fn parse_id(text: &[u8]) -> Option<(u32, usize)> {
    let rest = text.strip_prefix(BROADCAST_PREFIX)?.strip_prefix(ID_KEY)?;
    let digits = rest.get(..ID_DIGITS)?;
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: usize = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(((n / 1000) as u32, n % 1000))
}

pub fn join() -> String {
    format!(r#"["1","1","{TOPIC}","phx_join",{{}}]"#)
}

/// Is `text` the ok reply to the join (or to push `msg_ref`) of [`join`]?
pub fn is_ok_reply(text: &[u8], msg_ref: &str) -> bool {
    let head = format!(r#"["1","{msg_ref}","{TOPIC}","phx_reply","#);
    text.starts_with(head.as_bytes()) && contains(text, br#""status":"ok""#)
}

pub fn heartbeat(msg_ref: u64) -> String {
    format!(r#"[null,"h{msg_ref}","phoenix","heartbeat",{{}}]"#)
}

pub fn is_heartbeat_reply(text: &[u8]) -> bool {
    text.starts_with(br#"[null,"h"#) && contains(text, br#""phoenix","phx_reply""#)
}

/// Push `k` of the publisher socket (joined with join_ref "1"; refs 2, 3, ...).
pub fn push(k: usize, payload: &str) -> String {
    format!(r#"["1","{}","{TOPIC}","{EVENT}",{payload}]"#, k + 2)
}

pub fn api_body(payload: &str) -> String {
    format!(r#"{{"topic":"{TOPIC}","event":"{EVENT}","payload":{payload}}}"#)
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_frame_is_77_bytes_and_its_id_round_trips() {
        for (tag, k) in [(0, 0), (7, 99), (999, 999)] {
            let text = broadcast_text(&payload(tag, k));
            assert_eq!(text.len() + 2, FRAME_LEN, "{text}");
            assert_eq!(parse_id(text.as_bytes()), Some((tag, k)));
            let v: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(v[2], TOPIC);
        }
        assert_eq!(
            parse_id(br#"[null,null,"room:cpu","new_msg",{"x":1}]"#),
            None
        );
    }

    #[test]
    fn replies() {
        let ok = br#"["1","1","room:cpu","phx_reply",{"response":{},"status":"ok"}]"#;
        assert!(is_ok_reply(ok, "1"));
        assert!(!is_ok_reply(ok, "2"));
        assert!(is_heartbeat_reply(
            br#"[null,"h3","phoenix","phx_reply",{"response":{},"status":"ok"}]"#
        ));
    }
}

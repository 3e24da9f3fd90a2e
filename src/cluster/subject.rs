//! Topic names as NATS subjects, reversibly, whatever characters a topic holds: `<prefix>.t.`
//! and the topic in unpadded base64url (letters, digits, `-`, `_`: one subject token, never a
//! `.`, `*`, `>` or space).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// The subject a topic's publications travel on.
pub fn of_topic(prefix: &str, topic: &str) -> String {
    format!("{prefix}.t.{}", URL_SAFE_NO_PAD.encode(topic))
}

/// The topic of a subject made by [`of_topic`] (`None` for any other subject).
pub fn topic_of(prefix: &str, subject: &str) -> Option<String> {
    let rest = subject.strip_prefix(prefix)?.strip_prefix(".t.")?;
    let bytes = URL_SAFE_NO_PAD.decode(rest).ok()?;
    String::from_utf8(bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_topic_round_trips_through_one_valid_token() {
        for topic in [
            "room:1",
            "a.b.c",
            "*",
            ">",
            "with space",
            "é🎉",
            "x/y\\z",
            "room:>",
        ] {
            let s = of_topic("corecast", topic);
            let token = s.strip_prefix("corecast.t.").unwrap();
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                "{s}"
            );
            assert_eq!(topic_of("corecast", &s).as_deref(), Some(topic));
        }
        assert_eq!(topic_of("corecast", "other.t.AAA"), None);
        assert_eq!(topic_of("corecast", "corecast.t.!!"), None);
    }
}

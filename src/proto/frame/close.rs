//! Close codes (RFC 6455 section 7.4) and Close frame bodies: the one list of the codes
//! corecast sends ([`code`], [`SENT`]), the rule for those a peer may send
//! ([`is_valid_close_code`]), and the code for each [`FrameError`].
//!
//! Every close corecast starts has a code of this list; the one other code it sends is a peer's
//! own, echoed in reply to the peer's Close frame (RFC 6455 section 5.5.1).

use std::str;

use super::{CloseFrame, FrameError};

/// The close codes corecast sends, each with when it sends it.
pub mod code {
    /// Normal closure: the reply to a peer's Close frame without a code (a Close frame with a
    /// code gets that code back).
    pub const NORMAL: u16 = 1000;
    /// Going away: the server is shutting down.
    pub const GOING_AWAY: u16 = 1001;
    /// Protocol error: the peer broke RFC 6455
    /// ([`FrameError::Protocol`](super::FrameError::Protocol)).
    pub const PROTOCOL: u16 = 1002;
    /// Unsupported data: a binary frame that is not a Phoenix message (a V2 client push, or on a
    /// V1 socket a V1 JSON object).
    pub const UNSUPPORTED: u16 = 1003;
    /// Invalid payload data: a text message or close reason that is not UTF-8
    /// ([`FrameError::InvalidUtf8`](super::FrameError::InvalidUtf8)), or a text frame that is
    /// not a Phoenix message (V1 or V2, as the socket speaks).
    pub const INVALID_DATA: u16 = 1007;
    /// Policy violation: the idle or message timeout, the frame rate limit, or a Phoenix ref
    /// longer than 64 bytes.
    pub const POLICY: u16 = 1008;
    /// Message too big: a frame over `max_frame` or a message over `max_message`
    /// ([`FrameError::TooBig`](super::FrameError::TooBig)).
    pub const TOO_BIG: u16 = 1009;
    /// Internal error: kept for a server fault; nothing sends it today (a panicking handler is
    /// caught and counted, and the socket stays open).
    pub const INTERNAL: u16 = 1011;
    /// Try again later (the server's limit, not the peer's fault): a partial message that would
    /// pass its core's `max_partial_bytes_per_core`
    /// ([`FrameError::OverBudget`](super::FrameError::OverBudget)), or a slow consumer whose
    /// outbound queue passed its bound.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Every code of [`code`], ascending: the codes the metrics count one by one (an echoed peer
/// code outside this list is counted as "other").
pub const SENT: [u16; 9] = [
    code::NORMAL,
    code::GOING_AWAY,
    code::PROTOCOL,
    code::UNSUPPORTED,
    code::INVALID_DATA,
    code::POLICY,
    code::TOO_BIG,
    code::INTERNAL,
    code::TRY_AGAIN_LATER,
];

/// True for the close codes a peer may send (RFC 6455 section 7.4): 1000-1003, 1007-1014,
/// 3000-4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl FrameError {
    /// The close code to send for this error: [`code::PROTOCOL`], [`code::INVALID_DATA`],
    /// [`code::TOO_BIG`] or [`code::TRY_AGAIN_LATER`].
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => code::PROTOCOL,
            FrameError::InvalidUtf8 => code::INVALID_DATA,
            FrameError::TooBig => code::TOO_BIG,
            FrameError::OverBudget => code::TRY_AGAIN_LATER,
        }
    }
}

/// Validate an unmasked close body (RFC 6455 section 5.5.1).
pub(super) fn parse_close(body: &[u8]) -> Result<Option<CloseFrame<'_>>, FrameError> {
    let Some((code, reason)) = body.split_first_chunk::<2>() else {
        return if body.is_empty() {
            Ok(None)
        } else {
            Err(FrameError::Protocol("close body of one byte"))
        };
    };
    let code = u16::from_be_bytes(*code);
    if !is_valid_close_code(code) {
        return Err(FrameError::Protocol("invalid close code"));
    }
    let reason = str::from_utf8(reason).map_err(|_| FrameError::InvalidUtf8)?;
    Ok(Some(CloseFrame { code, reason }))
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    use super::super::OpCode::Close;

    #[test]
    fn error_codes() {
        assert_eq!(FrameError::Protocol("x").close_code(), 1002);
        assert_eq!(FrameError::InvalidUtf8.close_code(), 1007);
        assert_eq!(FrameError::TooBig.close_code(), 1009);
    }

    #[test]
    fn close_body_rules() {
        fails(&frame(Close, &[0x03]), 1002);
        let invalid = [
            0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000,
        ];
        for code in invalid {
            fails(&frame(Close, &code.to_be_bytes()), 1002);
        }
        fails(
            &frame(Close, b"\x03\xe8\xce\xba\xe1\xbd\xb9\xed\xa0\x80"),
            1007,
        );
        for code in [1000u16, 1001, 1002, 1003, 1007, 1011, 1014, 3000, 4999] {
            let close = Owned::Close(Some((code, String::new())));
            assert_eq!(
                decode(&frame(Close, &code.to_be_bytes())),
                (vec![close], OK)
            );
        }
        let valid = (0..=u16::MAX).filter(|&c| is_valid_close_code(c));
        let expected = (1000..=1003).chain(1007..=1014).chain(3000..=4999);
        assert!(valid.eq(expected));
    }

    #[test]
    fn sent_is_every_named_code_and_each_is_valid() {
        // The constants of `code`, read from this file, so a code added there and not to
        // SENT fails here.
        let src = include_str!("close.rs");
        let start = src.find("pub mod code {").expect("mod code");
        let end = start + src[start..].find("\n}").expect("end of mod code");
        let named: Vec<u16> = src[start..end]
            .lines()
            .filter_map(|l| l.trim().strip_prefix("pub const ")?.split_once(": u16 = "))
            .map(|(_, v)| v.trim_end_matches(';').parse().expect("a u16 literal"))
            .collect();
        assert_eq!(named.len(), SENT.len(), "{named:?}");
        let mut sorted = named.clone();
        sorted.sort_unstable();
        assert_eq!(SENT, *sorted);
        assert!(SENT.windows(2).all(|w| w[0] < w[1]), "{SENT:?}");
        assert!(SENT.iter().all(|&c| is_valid_close_code(c)), "{SENT:?}");
        // The order the metrics have always used.
        assert_eq!(SENT, [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1013]);
        let errors = [
            FrameError::Protocol("x"),
            FrameError::InvalidUtf8,
            FrameError::TooBig,
            FrameError::OverBudget,
        ];
        assert!(errors.iter().all(|e| SENT.contains(&e.close_code())));
    }
}

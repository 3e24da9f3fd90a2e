//! Close codes (RFC 6455 section 7.4) and Close frame bodies.

use std::str;

use super::{CloseFrame, FrameError};

/// True for the close codes a peer may send (RFC 6455 section 7.4): 1000-1003, 1007-1014,
/// 3000-4999.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl FrameError {
    /// The close code to send for this error (1002, 1007, 1009 or 1013).
    pub fn close_code(&self) -> u16 {
        match self {
            FrameError::Protocol(_) => 1002,
            FrameError::InvalidUtf8 => 1007,
            FrameError::TooBig => 1009,
            FrameError::OverBudget => 1013,
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
}

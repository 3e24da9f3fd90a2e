//! Incremental UTF-8 validation, for text that arrives in pieces (fragments or partial
//! frames): fail as soon as an invalid byte is seen, not when the message is complete.

use std::str;

use super::FrameError;

/// Streaming UTF-8 validation state: the incomplete sequence (at most 3 bytes) that ends the
/// text validated so far.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Utf8Tail {
    bytes: [u8; 3],
    len: u8,
}

impl Utf8Tail {
    pub(super) const fn new() -> Self {
        Utf8Tail {
            bytes: [0; 3],
            len: 0,
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Validate the next `data` of the text. Fails as soon as an invalid sequence is present;
    /// an incomplete sequence at the end is kept for the next call.
    pub(super) fn push(&mut self, mut data: &[u8]) -> Result<(), FrameError> {
        let held = usize::from(self.len);
        if held > 0 {
            // Complete the held character with the bytes it still needs.
            let width: usize = match self.bytes[0] {
                0xF0.. => 4,
                0xE0.. => 3,
                _ => 2,
            };
            let take = width.saturating_sub(held).min(data.len());
            let mut ch = [0u8; 4];
            ch[..held].copy_from_slice(&self.bytes[..held]);
            ch[held..held + take].copy_from_slice(&data[..take]);
            match str::from_utf8(&ch[..held + take]) {
                Ok(_) => {
                    self.len = 0;
                    data = &data[take..];
                }
                Err(e) if e.error_len().is_some() => return Err(FrameError::InvalidUtf8),
                Err(_) => {
                    self.bytes[..held + take].copy_from_slice(&ch[..held + take]);
                    self.len += take as u8;
                    return Ok(());
                }
            }
        }
        if let Err(e) = str::from_utf8(data) {
            if e.error_len().is_some() {
                return Err(FrameError::InvalidUtf8);
            }
            let tail = &data[e.valid_up_to()..];
            self.bytes[..tail.len()].copy_from_slice(tail);
            self.len = tail.len() as u8;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_tail_streaming() {
        let text = "a€😀ñz".as_bytes();
        for cut in 0..=text.len() {
            let mut t = Utf8Tail::new();
            t.push(&text[..cut]).unwrap();
            t.push(&text[cut..]).unwrap();
            assert!(t.is_empty());
        }
        let mut t = Utf8Tail::new();
        for b in text.chunks(1) {
            t.push(b).unwrap();
        }
        assert!(t.is_empty());
        t.push(&[0xf0, 0x9f]).unwrap();
        assert_eq!(t.push(&[0x41]), Err(FrameError::InvalidUtf8));
    }
}

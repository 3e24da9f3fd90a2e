//! Payload masking (RFC 6455 section 5.3).

/// XOR `buf` with `mask`, where `buf[0]` is at position `offset` of the payload (`offset % 4`
/// picks the mask byte). Works a `u64` at a time.
pub fn apply_mask(buf: &mut [u8], mask: [u8; 4], offset: usize) {
    let mut m = mask;
    m.rotate_left(offset % 4);
    let word = u64::from_ne_bytes([m[0], m[1], m[2], m[3], m[0], m[1], m[2], m[3]]);
    let (words, tail) = buf.as_chunks_mut::<8>();
    for w in words {
        *w = (u64::from_ne_bytes(*w) ^ word).to_ne_bytes();
    }
    // Each word covers 8 bytes, a multiple of 4, so the tail starts at mask phase 0 again.
    for (b, k) in tail.iter_mut().zip(m.iter().cycle()) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_mask_matches_naive() {
        let mask = [0x12, 0x34, 0x56, 0x78];
        for offset in 0..40 {
            for len in 0..40 {
                let data: Vec<u8> = (0..len).map(|i| (i * 31 + 7) as u8).collect();
                let mut naive = data.clone();
                for (i, b) in naive.iter_mut().enumerate() {
                    *b ^= mask[(offset + i) % 4];
                }
                let mut fast = data;
                apply_mask(&mut fast, mask, offset);
                assert_eq!(fast, naive, "offset {offset} len {len}");
            }
        }
    }
}

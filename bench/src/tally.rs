//! Loss and duplicate accounting. Pure.
//!
//! Every message carries (publisher, topic, sequence). A subscriber remembers which sequence
//! numbers it has seen of each (publisher, topic) stream in a bit set, so a second copy is a
//! duplicate whatever order it comes in. The parent knows how many measured messages went to
//! each topic and how many subscribers each topic has, so expected deliveries are exact and
//! lost = expected - unique deliveries.

/// Sequence numbers above this are treated as malformed (bounds a bit set at 2 MiB).
pub const MAX_SEQ: u64 = 1 << 24;

/// What a sequence number was, seen against the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// First copy, in order (above every earlier one).
    New,
    /// First copy, but below one seen before: delivered out of order.
    Reordered,
    /// A copy already seen.
    Dup,
    /// Over [`MAX_SEQ`]: not tracked.
    OutOfRange,
}

/// The sequence numbers seen of one stream.
#[derive(Debug, Default, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    max: Option<u64>,
}

impl SeqSet {
    pub fn insert(&mut self, seq: u64) -> Seen {
        if seq >= MAX_SEQ {
            return Seen::OutOfRange;
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if word >= self.bits.len() {
            self.bits.resize(word + 1, 0);
        }
        if self.bits[word] & bit != 0 {
            return Seen::Dup;
        }
        self.bits[word] |= bit;
        match self.max {
            Some(m) if seq < m => Seen::Reordered,
            _ => {
                self.max = Some(seq);
                Seen::New
            }
        }
    }
}

/// The streams one subscriber receives, keyed by (publisher, topic). Few per subscriber.
#[derive(Debug, Default)]
pub struct Streams {
    streams: Vec<((u32, u32), SeqSet)>,
}

impl Streams {
    pub fn insert(&mut self, publisher: u32, topic: u32, seq: u64) -> Seen {
        let key = (publisher, topic);
        let i = match self.streams.iter().position(|(k, _)| *k == key) {
            Some(i) => i,
            None => {
                self.streams.push((key, SeqSet::default()));
                self.streams.len() - 1
            }
        };
        self.streams[i].1.insert(seq)
    }
}

/// Deliveries expected: each measured message once per subscriber of its topic.
pub fn expected_deliveries(sent_per_topic: &[u64], subscribers_per_topic: &[u64]) -> u64 {
    sent_per_topic
        .iter()
        .zip(subscribers_per_topic)
        .map(|(m, s)| m.saturating_mul(*s))
        .sum()
}

/// The loss/duplicate verdict of one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Accounting {
    pub expected: u64,
    /// Distinct (subscriber, message) pairs received.
    pub delivered: u64,
    /// Expected deliveries never received.
    pub lost: u64,
    /// Second and later copies of a message at one subscriber.
    pub duplicated: u64,
    /// Distinct deliveries beyond the expected count (should be 0: a counting error if not).
    pub unexpected: u64,
}

pub fn account(expected: u64, unique: u64, duplicated: u64) -> Accounting {
    Accounting {
        expected,
        delivered: unique,
        lost: expected.saturating_sub(unique),
        duplicated,
        unexpected: unique.saturating_sub(expected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_set_sees_dups_and_reorders() {
        let mut s = SeqSet::default();
        assert_eq!(s.insert(0), Seen::New);
        assert_eq!(s.insert(1), Seen::New);
        assert_eq!(s.insert(1), Seen::Dup);
        assert_eq!(s.insert(200), Seen::New);
        assert_eq!(s.insert(100), Seen::Reordered);
        assert_eq!(s.insert(100), Seen::Dup);
        assert_eq!(s.insert(0), Seen::Dup);
        assert_eq!(s.insert(MAX_SEQ), Seen::OutOfRange);
    }

    #[test]
    fn streams_are_independent() {
        let mut st = Streams::default();
        assert_eq!(st.insert(0, 0, 5), Seen::New);
        assert_eq!(st.insert(1, 0, 5), Seen::New);
        assert_eq!(st.insert(0, 1, 5), Seen::New);
        assert_eq!(st.insert(0, 0, 5), Seen::Dup);
    }

    #[test]
    fn expected_and_lost() {
        // 10 messages on topic 0 (3 subscribers), 4 on topic 1 (2 subscribers).
        let expected = expected_deliveries(&[10, 4], &[3, 2]);
        assert_eq!(expected, 38);
        let a = account(expected, 38, 0);
        assert_eq!((a.lost, a.duplicated, a.unexpected), (0, 0, 0));
        let a = account(expected, 35, 2);
        assert_eq!((a.lost, a.duplicated, a.unexpected), (3, 2, 0));
        let a = account(expected, 40, 0);
        assert_eq!((a.lost, a.unexpected), (0, 2));
        // Topics without subscribers expect nothing.
        assert_eq!(expected_deliveries(&[5, 5], &[0, 1]), 5);
    }

    #[test]
    fn a_simulated_run_balances() {
        // Two subscribers of one topic; publisher 0 sends seqs 0..100, subscriber B gets 7 twice
        // and misses 50.
        let (mut a, mut b) = (Streams::default(), Streams::default());
        let (mut unique, mut dups) = (0, 0);
        let mut count = |st: &mut Streams, s| match st.insert(0, 0, s) {
            Seen::New | Seen::Reordered => unique += 1,
            Seen::Dup => dups += 1,
            Seen::OutOfRange => {}
        };
        for s in 0..100 {
            count(&mut a, s);
            if s != 50 {
                count(&mut b, s);
            }
            if s == 7 {
                count(&mut b, s);
            }
        }
        let acc = account(expected_deliveries(&[100], &[2]), unique, dups);
        assert_eq!((acc.lost, acc.duplicated), (1, 1));
    }
}

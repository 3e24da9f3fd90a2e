//! One hashed timer wheel per core, instead of one timer per connection.
//!
//! Time is counted in ticks of [`TICK`] since the core started. A connection that needs a
//! deadline (handshake, close, idle) puts an 8-byte [`Entry`] in the bucket of its deadline tick.
//! Entries are never removed on cancel: when a bucket fires, the owner looks the entry's slot up
//! and checks the generation and the slot's *current* deadline, so a stale entry is skipped and an
//! entry whose deadline moved later (activity pushed the idle deadline) is simply scheduled again.
//! This keeps "message arrived" O(1): it only stores the new deadline in the slot. The price: a
//! closed connection's entry stays until its tick (8 bytes x close rate x the longest timeout,
//! e.g. 4.5 MB for 9,300 closes/s with the 60 s idle timeout), then goes.

use std::time::Duration;

/// Length of one tick.
pub const TICK: Duration = Duration::from_millis(100);

/// Default number of buckets: 1024 ticks of 100 ms cover 102.4 s; later deadlines fire early and
/// are rescheduled.
pub const DEFAULT_BUCKETS: usize = 1024;

/// Entries of capacity an emptied bucket keeps (512 B); a bigger one is freed and regrown
/// (amortised doubling) the next time it fills.
const KEEP_CAPACITY: usize = 64;

/// What the wheel stores per scheduled deadline: a slab key and the slot generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub key: u32,
    pub generation: u32,
}

/// The wheel. Owned by one core; not thread-safe by design.
pub struct Wheel {
    buckets: Vec<Vec<Entry>>,
    now: u64,
}

impl Wheel {
    /// A wheel with `n` buckets (at least 2) whose current tick is 0.
    pub fn new(n: usize) -> Wheel {
        Wheel {
            buckets: (0..n.max(2)).map(|_| Vec::new()).collect(),
            now: 0,
        }
    }

    /// The current tick (the last tick passed to [`Wheel::advance`]).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Schedule `e` to fire at tick `at`. Deadlines in the past fire at the next advance;
    /// deadlines beyond the wheel's horizon fire at the horizon (the owner reschedules them).
    pub fn schedule(&mut self, at: u64, e: Entry) {
        let n = self.buckets.len() as u64;
        let at = at.clamp(self.now + 1, self.now + n - 1);
        self.buckets[(at % n) as usize].push(e);
    }

    /// Move time forward to `to` and append every entry whose bucket was passed to `fired`.
    pub fn advance(&mut self, to: u64, fired: &mut Vec<Entry>) {
        if to <= self.now {
            return;
        }
        let n = self.buckets.len() as u64;
        // After a long stall every bucket is due; visiting each once is enough.
        let first = self.now + 1;
        let last = to.min(self.now + n);
        for t in first..=last {
            let bucket = &mut self.buckets[(t % n) as usize];
            fired.append(bucket);
            if bucket.capacity() > KEEP_CAPACITY {
                // Give back memory after a burst (e.g. a mass handshake timeout). Keeping every
                // bucket at its largest size ever would let idle memory creep up to
                // buckets x peak over a long run.
                *bucket = Vec::new();
            }
        }
        self.now = to;
    }

    /// Entries currently scheduled (for metrics and tests).
    pub fn len(&self) -> usize {
        self.buckets.iter().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the buckets have room for (memory held, for tests).
    pub fn capacity(&self) -> usize {
        self.buckets.iter().map(Vec::capacity).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(key: u32) -> Entry {
        Entry { key, generation: 0 }
    }

    #[test]
    fn entry_fires_at_its_tick_not_before() {
        let mut w = Wheel::new(16);
        w.schedule(5, e(1));
        let mut out = Vec::new();
        w.advance(4, &mut out);
        assert!(out.is_empty());
        w.advance(5, &mut out);
        assert_eq!(out, vec![e(1)]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_deadline_fires_on_next_advance() {
        let mut w = Wheel::new(16);
        w.advance(10, &mut Vec::new());
        w.schedule(3, e(7));
        let mut out = Vec::new();
        w.advance(11, &mut out);
        assert_eq!(out, vec![e(7)]);
    }

    #[test]
    fn far_deadline_fires_early_at_horizon() {
        let mut w = Wheel::new(8);
        w.schedule(100, e(2));
        let mut out = Vec::new();
        w.advance(6, &mut out);
        assert!(out.is_empty());
        w.advance(7, &mut out);
        assert_eq!(
            out,
            vec![e(2)],
            "fires at now + n - 1 so the owner can reschedule"
        );
    }

    #[test]
    fn long_stall_fires_everything_once() {
        let mut w = Wheel::new(8);
        for k in 1..8 {
            w.schedule(k as u64, e(k));
        }
        let mut out = Vec::new();
        w.advance(1000, &mut out);
        out.sort_by_key(|x| x.key);
        assert_eq!(out.len(), 7);
        assert!(w.is_empty());
        assert_eq!(w.now(), 1000);
    }

    #[test]
    fn entry_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Entry>(), 8);
    }

    #[test]
    fn emptied_buckets_give_their_memory_back() {
        // Churn: 100 ticks x 1,000 entries each, all fired. What stays is at most KEEP_CAPACITY
        // per bucket, not each bucket's peak.
        let mut w = Wheel::new(128);
        let mut out = Vec::new();
        for t in 1..=100u64 {
            for k in 0..1000 {
                w.schedule(t, e(k));
            }
        }
        assert!(w.capacity() >= 100_000);
        w.advance(101, &mut out);
        assert_eq!(out.len(), 100_000);
        assert!(w.is_empty());
        assert!(
            w.capacity() <= 128 * KEEP_CAPACITY,
            "{} entries kept",
            w.capacity()
        );
    }
}

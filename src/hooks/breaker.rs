//! The circuit breaker of one hook URL (pure: the caller passes the time). Closed, it lets every
//! request through and counts consecutive failures; at `threshold` it opens for `open_for`, when
//! every request fails at once without reaching the backend; then one trial request goes
//! through (half open): its success closes the circuit, its failure opens it again.

use std::time::{Duration, Instant};

#[derive(Debug, Default)]
pub struct Breaker {
    failures: u32,
    open_until: Option<Instant>,
    trial: bool,
}

/// What a request's outcome did to the circuit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    Opened,
    Closed,
}

impl Breaker {
    /// May a request go to the backend now?
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.open_until {
            None => true,
            Some(t) if now >= t && !self.trial => {
                self.trial = true;
                true
            }
            Some(_) => false,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.is_some()
    }

    pub fn success(&mut self) -> Change {
        let was_open = self.open_until.is_some();
        *self = Breaker::default();
        if was_open {
            Change::Closed
        } else {
            Change::None
        }
    }

    pub fn failure(&mut self, now: Instant, threshold: u32, open_for: Duration) -> Change {
        self.failures = self.failures.saturating_add(1);
        if self.trial {
            self.trial = false;
            self.open_until = Some(now + open_for);
            return Change::None; // still open
        }
        if self.open_until.is_none() && self.failures >= threshold {
            self.open_until = Some(now + open_for);
            return Change::Opened;
        }
        Change::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_threshold_then_one_trial() {
        let mut b = Breaker::default();
        let t0 = Instant::now();
        let open = Duration::from_secs(5);
        for _ in 0..2 {
            assert!(b.allow(t0));
            assert_eq!(b.failure(t0, 3, open), Change::None);
        }
        assert_eq!(b.success(), Change::None, "a success resets the count");
        for i in 0..3 {
            assert!(b.allow(t0));
            let c = b.failure(t0, 3, open);
            assert_eq!(c, if i == 2 { Change::Opened } else { Change::None });
        }
        assert!(!b.allow(t0 + Duration::from_secs(1)), "open: fails at once");
        let later = t0 + open;
        assert!(b.allow(later), "one trial");
        assert!(!b.allow(later), "only one");
        assert_eq!(
            b.failure(later, 3, open),
            Change::None,
            "trial failed: open again"
        );
        assert!(!b.allow(later + Duration::from_secs(1)));
        assert!(b.allow(later + open));
        assert_eq!(b.success(), Change::Closed);
        assert!(b.allow(later + open));
    }
}

//! What one core keeps for the live dashboard (`GET /dashboard/live`, issue 14): the dashboard
//! sockets it serves, its clock of seconds, the counters it sampled at its last second (for the
//! rates it sends), and the merge of every core's top topics. The page, the access rule and the
//! frame itself are `crate::http::dashboard`'s; this is the state the core keeps between its
//! ticks, next to its hub. Nothing here exists per connection but a dashboard socket's 8-byte
//! entry in `watchers`.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::time::Instant;

/// Topics each core lists for the dashboard, and the dashboard shows.
pub const TOP_TOPICS: usize = 10;

/// One core's dashboard state (not shared: the core's own).
#[derive(Default)]
pub struct Live {
    /// The dashboard sockets of this core, as (key, generation): each gets the core's frame
    /// every second.
    watchers: RefCell<Vec<(u32, u32)>>,
    /// The second (of the core's ticks) the core last did its dashboard work in.
    second: Cell<u64>,
    /// When, and what, the core last sampled: per core, the counters it sends rates of.
    sample: RefCell<Option<(Instant, Vec<Sample>)>>,
}

/// Counters of one core whose rates the dashboard shows.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sample {
    pub deliveries: u64,
    pub broadcasts: u64,
    pub joins: u64,
}

/// Per second, over the time between two samples.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Rates {
    pub deliveries: f64,
    pub broadcasts: f64,
    pub joins: f64,
}

impl Live {
    /// A dashboard socket opened on this core.
    pub fn watch(&self, key: usize, generation: u32) {
        self.watchers.borrow_mut().push((key as u32, generation));
    }

    /// A dashboard socket of this core left (closing, or gone); true if it was listed.
    pub fn unwatch(&self, key: usize, generation: u32) -> bool {
        let mut w = self.watchers.borrow_mut();
        let before = w.len();
        w.retain(|&e| e != (key as u32, generation));
        if w.is_empty() && w.capacity() > 64 {
            *w = Vec::new();
        }
        w.len() != before
    }

    /// The dashboard sockets of this core right now.
    pub fn watchers(&self) -> Vec<(u32, u32)> {
        self.watchers.borrow().clone()
    }

    pub fn has_watchers(&self) -> bool {
        !self.watchers.borrow().is_empty()
    }

    /// True once per second of the core's clock (`tick`: the wheel's tick, 10 a second): the
    /// first call at or after each second's first tick.
    pub fn new_second(&self, tick: u64) -> bool {
        let second = tick / 10;
        let new = second > self.second.get();
        if new {
            self.second.set(second);
        }
        new
    }

    /// Take a new sample (`now`, every core's counters) and the rates since the last one
    /// (zero on the first, or for a core the last sample did not have).
    pub fn rates(&self, now: Instant, samples: Vec<Sample>) -> Vec<Rates> {
        let mut last = self.sample.borrow_mut();
        let rates = match last.as_ref() {
            Some((then, before)) if now > *then => {
                let secs = now.duration_since(*then).as_secs_f64();
                let per = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
                samples
                    .iter()
                    .enumerate()
                    .map(|(i, s)| {
                        let b = before.get(i).copied().unwrap_or(*s);
                        Rates {
                            deliveries: per(s.deliveries, b.deliveries),
                            broadcasts: per(s.broadcasts, b.broadcasts),
                            joins: per(s.joins, b.joins),
                        }
                    })
                    .collect()
            }
            _ => vec![Rates::default(); samples.len()],
        };
        *last = Some((now, samples));
        rates
    }
}

/// Merge every core's top topics (each core's own list of its biggest topics, by subscribers
/// on that core) into the node's `n` biggest: a topic's count is the sum over the cores that
/// list it, so a topic outside some core's list is undercounted by that core's share (never by
/// more than that core's smallest listed count).
pub fn merge_top<'a>(
    lists: impl IntoIterator<Item = &'a [(Box<str>, u32)]>,
    n: usize,
) -> Vec<(String, u64)> {
    let mut sum: HashMap<&str, u64> = HashMap::new();
    for list in lists {
        for (topic, count) in list {
            *sum.entry(topic).or_default() += u64::from(*count);
        }
    }
    let mut all: Vec<(String, u64)> = sum.into_iter().map(|(t, c)| (t.to_owned(), c)).collect();
    all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    all.truncate(n);
    all
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn watchers_come_and_go() {
        let live = Live::default();
        live.watch(3, 1);
        live.watch(4, 7);
        assert!(!live.unwatch(3, 2), "another generation of the slot");
        assert!(live.unwatch(3, 1));
        assert_eq!(live.watchers(), [(4, 7)]);
        assert!(live.unwatch(4, 7) && !live.has_watchers());
    }

    #[test]
    fn a_second_is_new_once() {
        let live = Live::default();
        assert!(!live.new_second(3), "still second 0");
        assert!(live.new_second(10));
        assert!(!live.new_second(11) && !live.new_second(19));
        assert!(live.new_second(35), "ticks may be skipped");
        assert!(!live.new_second(39));
    }

    #[test]
    fn rates_are_per_second_between_samples() {
        let live = Live::default();
        let t0 = Instant::now();
        let s = |d, b, j| Sample {
            deliveries: d,
            broadcasts: b,
            joins: j,
        };
        assert_eq!(live.rates(t0, vec![s(5, 1, 1)]), [Rates::default()]);
        let r = live.rates(
            t0 + Duration::from_millis(500),
            vec![s(105, 2, 1), s(7, 7, 7)],
        );
        assert_eq!(
            r,
            [
                Rates {
                    deliveries: 200.0,
                    broadcasts: 2.0,
                    joins: 0.0
                },
                Rates::default()
            ]
        );
    }

    #[test]
    fn top_topics_are_summed_over_cores() {
        let a: Vec<(Box<str>, u32)> = vec![("room:1".into(), 5), ("room:2".into(), 4)];
        let b: Vec<(Box<str>, u32)> = vec![("room:2".into(), 3), ("room:3".into(), 1)];
        let merged = merge_top([&a[..], &b[..]], 2);
        assert_eq!(
            merged,
            [("room:2".to_string(), 7), ("room:1".to_string(), 5)]
        );
    }
}

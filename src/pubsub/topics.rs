//! The per-core topic table: topic -> this core's subscribers. Owned by one core; no locks.
//!
//! Each topic keeps its subscribers in a `Slab`, so joining and leaving are O(1) whatever the
//! topic's size (a subscriber remembers its index), and a fan-out walks one dense array.
//! A subscriber entry is 8 bytes: the connection's slab key, its wire format and generation.

use std::collections::HashMap;
use std::rc::Rc;

use slab::Slab;

/// A subscriber: a connection slot on this core and the wire format it speaks, in 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sub {
    /// Slab key (low 30 bits, as in the reactor's tags) and wire format (top 2 bits).
    slot: u32,
    pub generation: u32,
}

const KEY_BITS: u32 = 30;
const KEY_MASK: u32 = (1 << KEY_BITS) - 1;

impl Sub {
    /// Slot `key` (below 2^30: the reactor's tags hold 30 bits of key) of `generation`, speaking
    /// wire format number `wire` (below 4).
    pub fn new(key: usize, generation: u32, wire: u8) -> Sub {
        debug_assert!(key as u32 <= KEY_MASK && wire < 4);
        Sub {
            slot: (key as u32 & KEY_MASK) | (u32::from(wire & 3) << KEY_BITS),
            generation,
        }
    }

    /// The slot's key.
    pub fn key(self) -> usize {
        (self.slot & KEY_MASK) as usize
    }

    /// The wire format number.
    pub fn wire(self) -> u8 {
        (self.slot >> KEY_BITS) as u8
    }
}

/// Where a subscription sits, kept by the connection to leave in O(1).
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The topic's name, shared with the table (one allocation per topic per core).
    pub topic: Rc<str>,
    pub index: u32,
}

/// Topic table of one core.
#[derive(Default)]
pub struct Topics {
    map: HashMap<Rc<str>, Slab<Sub>>,
}

impl Topics {
    pub fn new() -> Topics {
        Topics::default()
    }

    /// Add `sub` to `topic`.
    pub fn subscribe(&mut self, topic: &str, sub: Sub) -> Subscription {
        let name = match self.map.get_key_value(topic) {
            Some((name, _)) => name.clone(),
            None => Rc::from(topic),
        };
        let index = self.map.entry(name.clone()).or_default().insert(sub) as u32;
        Subscription { topic: name, index }
    }

    /// Remove a subscription; the topic disappears with its last subscriber.
    pub fn unsubscribe(&mut self, s: &Subscription) {
        let Some(subs) = self.map.get_mut(&*s.topic) else {
            return;
        };
        subs.try_remove(s.index as usize);
        if subs.is_empty() {
            self.map.remove(&*s.topic);
        }
    }

    /// Visit every subscriber of `topic` on this core.
    pub fn for_each_subscriber(&self, topic: &str, mut f: impl FnMut(Sub)) {
        if let Some(subs) = self.map.get(topic) {
            for (_, s) in subs.iter() {
                f(*s);
            }
        }
    }

    /// Subscribers of `topic` on this core.
    pub fn count(&self, topic: &str) -> usize {
        self.map.get(topic).map_or(0, Slab::len)
    }

    /// Number of topics with at least one subscriber on this core.
    pub fn topics(&self) -> usize {
        self.map.len()
    }

    /// The `n` topics with the most subscribers on this core, most first (ties by name), with
    /// their counts. O(topics x log n), no allocation beyond the `n` kept.
    pub fn top(&self, n: usize) -> Vec<(Rc<str>, usize)> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if n == 0 {
            return Vec::new();
        }
        // Bigger first, then the name first in order.
        type Rank<'a> = (usize, Reverse<&'a Rc<str>>);
        // A min-heap of the best `n` so far: its top is the one to beat.
        let mut best: BinaryHeap<Reverse<Rank>> = BinaryHeap::new();
        for (name, subs) in &self.map {
            let entry = Reverse((subs.len(), Reverse(name)));
            if best.len() < n {
                best.push(entry);
            } else if best.peek().is_some_and(|worst| entry < *worst) {
                best.pop();
                best.push(entry);
            }
        }
        best.into_sorted_vec()
            .into_iter()
            .map(|Reverse((count, Reverse(name)))| (name.clone(), count))
            .collect()
    }

    /// Total subscriptions on this core.
    pub fn subscriptions(&self) -> usize {
        self.map.values().map(Slab::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(k: usize) -> Sub {
        Sub::new(k, 1, 0)
    }

    #[test]
    fn subscribe_visit_unsubscribe() {
        let mut t = Topics::new();
        let a = t.subscribe("room:1", sub(1));
        let b = t.subscribe("room:1", sub(2));
        let c = t.subscribe("room:2", sub(1));
        assert!(Rc::ptr_eq(&a.topic, &b.topic), "one name per topic");
        let mut seen = Vec::new();
        t.for_each_subscriber("room:1", |s| seen.push(s.key()));
        seen.sort();
        assert_eq!(seen, vec![1, 2]);
        t.unsubscribe(&a);
        assert_eq!(t.count("room:1"), 1);
        t.unsubscribe(&b);
        assert_eq!(t.count("room:1"), 0);
        assert_eq!(t.topics(), 1, "empty topics are removed");
        t.unsubscribe(&c);
        assert_eq!(t.topics(), 0);
        // Leaving twice is harmless.
        t.unsubscribe(&c);
    }

    #[test]
    fn indexes_are_reused_after_leave() {
        let mut t = Topics::new();
        let keep = t.subscribe("t", sub(0));
        let a = t.subscribe("t", sub(1));
        t.unsubscribe(&a);
        let b = t.subscribe("t", sub(2));
        assert_eq!(a.index, b.index);
        assert_eq!(t.subscriptions(), 2);
        let _ = keep;
    }

    #[test]
    fn top_lists_the_biggest_topics_first() {
        let mut t = Topics::new();
        for (topic, n) in [("a", 1), ("b", 5), ("c", 3), ("d", 5), ("e", 2)] {
            for k in 0..n {
                t.subscribe(topic, sub(k));
            }
        }
        let names = |v: Vec<(Rc<str>, usize)>| {
            v.into_iter()
                .map(|(name, n)| format!("{name}={n}"))
                .collect::<Vec<_>>()
        };
        assert_eq!(names(t.top(3)), ["b=5", "d=5", "c=3"]);
        assert_eq!(names(t.top(10)), ["b=5", "d=5", "c=3", "e=2", "a=1"]);
        assert!(t.top(0).is_empty());
        assert!(Topics::new().top(10).is_empty());
    }

    #[test]
    fn sub_packs_key_and_wire() {
        let s = Sub::new((1 << 30) - 1, 7, 3);
        assert_eq!((s.key(), s.generation, s.wire()), ((1 << 30) - 1, 7, 3));
        let s = Sub::new(12, 1, 0);
        assert_eq!((s.key(), s.wire()), (12, 0));
    }

    #[test]
    fn sub_is_eight_bytes() {
        assert_eq!(std::mem::size_of::<Sub>(), 8);
        assert_eq!(std::mem::size_of::<Subscription>(), 24);
    }
}

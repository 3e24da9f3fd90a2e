//! History topics (`[[history]]`): one order per topic, and its last publications kept for the
//! clients that come back. Pure: no I/O, the clock handed in.
//!
//! One sequencer per topic, its home core (`presence::home_of`, as presence): every publication
//! of a history topic goes there first, gets the next offset of the topic's current epoch
//! ([`History::next`]) and goes out from there to every core, the home included. Mesh links are
//! FIFO and one core sends them all, so every core delivers a topic's publications in the same
//! order, and every core keeps the same ring of them ([`History::append`]): the entries hold the
//! publication's one buffer (an `Arc`, shared by every core's ring, the mesh and the frames), so
//! a core's copy of the ring costs [`Entry`]'s 24 bytes per publication, and a join anywhere is
//! answered from its own core's ring, at once ([`History::recover`]; see ARCHITECTURE.md
//! "History").
//!
//! A ring holds consecutive offsets `first..=last` of one epoch; a gap (an envelope a full mesh
//! outbox dropped) empties it, so a recovery across a gap says `recovered: false` instead of
//! skipping. Bounds: per topic its rule's `size` and `ttl_secs`; per core `history_max_bytes`
//! of entries ([`entry_cost`]) and rings ([`RING_COST`] + the topic's name), past which the
//! topic being appended to gives up its oldest entries (others keep theirs until their ttl).

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::HistoryRule;
use crate::pubsub::publication::Publication;

/// One kept publication: its shared buffer (which holds its offset) and when it came, in
/// seconds since the history's start.
pub struct Entry {
    publication: Publication,
    at: u32,
}

/// What one entry costs its core, counted against `history_max_bytes`: the entry and, whole,
/// the buffer it shares (its contents and the `Arc`'s two counts).
pub fn entry_cost(p: &Publication) -> usize {
    size_of::<Entry>() + 2 * size_of::<usize>() + p.len()
}

/// What a ring costs besides its entries and its topic's name (the ring, the map's slot, the
/// name's box).
pub const RING_COST: usize = size_of::<Ring>() + size_of::<Box<str>>() + 16;

/// One topic's kept publications on this core.
struct Ring {
    epoch: u64,
    /// The offset of the last publication of the epoch delivered here (0: none yet).
    last: u64,
    entries: VecDeque<Entry>,
    /// Bytes of the entries ([`entry_cost`]).
    bytes: usize,
    /// When the last publication came (seconds since the start): an idle ring is dropped.
    touched: u32,
}

impl Ring {
    /// The offset of the oldest entry (`last + 1` when there is none).
    fn first(&self) -> u64 {
        self.last + 1 - self.entries.len() as u64
    }

    fn pop(&mut self) -> Option<Entry> {
        let e = self.entries.pop_front()?;
        self.bytes -= entry_cost(&e.publication);
        Some(e)
    }
}

/// A topic's position: the epoch of its history and the offset of its last publication. `(0,
/// 0)`: no history here (nothing published within its ttl).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    pub epoch: u64,
    pub offset: u64,
}

/// What a join on a history topic gets: the position, whether it recovered (when it asked),
/// and the publications to push after its reply, in order.
#[derive(Debug)]
pub struct Recovery {
    pub position: Position,
    pub recovered: Option<bool>,
    pub replay: Vec<Publication>,
}

impl Recovery {
    /// The join reply's response: `{"epoch":E,"offset":N}` (and `"recovered":bool` when asked)
    /// first, then the handler's fields (a response that is not an object is left as it is).
    pub fn response(&self, handler: &str) -> String {
        let Position { epoch, offset } = self.position;
        let mut out = format!(r#"{{"epoch":{epoch},"offset":{offset}"#);
        if let Some(r) = self.recovered {
            out.push_str(&format!(r#","recovered":{r}"#));
        }
        let Some(rest) = handler.trim_start().strip_prefix('{') else {
            return handler.to_string();
        };
        if !rest.trim_start().starts_with('}') {
            out.push(',');
        }
        out.push_str(rest);
        out
    }
}

/// The `recover` of a join's params, `{"recover": {"epoch": E, "offset": N}}`: `None` when the
/// join did not ask, `Some(None)` when it asked in a form that does not parse (it is told
/// `recovered: false`).
/// What a join's payload asks to recover (see [`recover_param`]); a binary payload asks nothing.
pub fn recover_of(payload: crate::proto::phoenix::Payload<'_>) -> Option<Option<Position>> {
    match payload {
        crate::proto::phoenix::Payload::Json(text) => recover_param(text),
        crate::proto::phoenix::Payload::Binary(_) => None,
    }
}

pub fn recover_param(payload: &str) -> Option<Option<Position>> {
    #[derive(Deserialize)]
    struct Params<'a> {
        #[serde(borrow)]
        recover: Option<&'a RawValue>,
    }
    #[derive(Deserialize)]
    struct Since {
        epoch: u64,
        offset: u64,
    }
    let raw = serde_json::from_str::<Params<'_>>(payload).ok()?.recover?;
    Some(
        serde_json::from_str::<Since>(raw.get())
            .ok()
            .map(|s| Position {
                epoch: s.epoch,
                offset: s.offset,
            }),
    )
}

/// The bounds of one recovery: publications, and bytes of them (half the socket's queue).
#[derive(Debug, Clone, Copy)]
pub struct ReplayLimits {
    pub publications: usize,
    pub bytes: usize,
}

/// One core's history: every history topic's ring, whichever core is its home.
pub struct History {
    rings: HashMap<Box<str>, Ring>,
    bytes: usize,
    max_bytes: usize,
    start: Instant,
    /// The state of the epochs' generator (splitmix64), seeded at random per core.
    seed: u64,
}

impl History {
    pub fn new(max_bytes: usize, seed: u64, start: Instant) -> History {
        History {
            rings: HashMap::new(),
            bytes: 0,
            max_bytes,
            start,
            seed,
        }
    }

    fn secs(&self, now: Instant) -> u32 {
        now.saturating_duration_since(self.start).as_secs() as u32
    }

    /// As the topic's home: the position its next publication takes. A topic with no ring gets
    /// a fresh epoch (random, under 2^53 so JavaScript reads it exactly, never 0).
    pub fn next(&mut self, topic: &str, rule: &HistoryRule, now: Instant) -> Position {
        self.trim(topic, rule, now);
        if let Some(r) = self.rings.get(topic) {
            return Position {
                epoch: r.epoch,
                offset: r.last + 1,
            };
        }
        let epoch = loop {
            self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.seed;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            let e = (z ^ (z >> 31)) & ((1 << 53) - 1);
            if e != 0 {
                break e;
            }
        };
        Position { epoch, offset: 1 }
    }

    /// Keep a sequenced publication (every core, as it delivers it). Another epoch, or a gap
    /// after the last offset, starts the ring again from it; an offset already seen is ignored.
    pub fn append(&mut self, p: &Publication, rule: &HistoryRule, now: Instant) {
        let Some((offset, epoch)) = p.position() else {
            return;
        };
        let at = self.secs(now);
        let topic = p.topic();
        if !self.rings.contains_key(topic) {
            if self.bytes + RING_COST + topic.len() > self.max_bytes {
                return; // full: no new ring until the ttl frees some (recovery says false)
            }
            self.bytes += RING_COST + topic.len();
            self.rings.insert(
                topic.into(),
                Ring {
                    epoch,
                    last: offset.saturating_sub(1),
                    entries: VecDeque::new(),
                    bytes: 0,
                    touched: at,
                },
            );
        }
        let Some(ring) = self.rings.get_mut(topic) else {
            return;
        };
        if ring.epoch == epoch && offset <= ring.last {
            return;
        }
        if ring.epoch != epoch || offset != ring.last + 1 {
            self.bytes -= ring.bytes;
            ring.entries.clear();
            ring.bytes = 0;
            ring.epoch = epoch;
        }
        ring.last = offset;
        ring.touched = at;
        let cost = entry_cost(p);
        ring.entries.push_back(Entry {
            publication: p.clone(),
            at,
        });
        ring.bytes += cost;
        self.bytes += cost;
        while ring.entries.len() > rule.size || self.bytes > self.max_bytes {
            let Some(e) = ring.pop() else { break };
            self.bytes -= entry_cost(&e.publication);
        }
        self.trim(topic, rule, now);
    }

    /// Drop `topic`'s entries older than its ttl, and its ring once it has been idle that long.
    fn trim(&mut self, topic: &str, rule: &HistoryRule, now: Instant) {
        let now = self.secs(now);
        let ttl = rule.ttl_secs.min(u64::from(u32::MAX)) as u32;
        let Some(ring) = self.rings.get_mut(topic) else {
            return;
        };
        while ring
            .entries
            .front()
            .is_some_and(|e| now.saturating_sub(e.at) >= ttl)
        {
            if let Some(e) = ring.pop() {
                self.bytes -= entry_cost(&e.publication);
            }
        }
        if ring.entries.is_empty() && now.saturating_sub(ring.touched) >= ttl {
            self.bytes -= RING_COST + topic.len();
            self.rings.remove(topic);
        }
    }

    /// Trim every ring (from the tick, once a second): what has outlived its ttl is freed even
    /// on topics nobody publishes to any more. `rule_of` gives each topic's rule.
    pub fn sweep<'a>(&mut self, now: Instant, rule_of: impl Fn(&str) -> Option<&'a HistoryRule>) {
        let topics: Vec<Box<str>> = self.rings.keys().cloned().collect();
        let fallback = HistoryRule {
            pattern: String::new(),
            size: 0,
            ttl_secs: 0,
        };
        for t in topics {
            let rule = rule_of(&t).unwrap_or(&fallback);
            self.trim(&t, rule, now);
        }
    }

    /// The topic's position on this core.
    pub fn position(&mut self, topic: &str, rule: &HistoryRule, now: Instant) -> Position {
        self.trim(topic, rule, now);
        self.rings
            .get(topic)
            .map(|r| Position {
                epoch: r.epoch,
                offset: r.last,
            })
            .unwrap_or_default()
    }

    /// A join on `topic`: its position and, if it asked to recover from `since`, whether it
    /// can, and what it missed. It can when `since` is of the current epoch (or `(0, 0)`, a
    /// client that saw no history: then only if the epoch's first publication is still kept),
    /// every publication after it is still kept, and they fit `limits`.
    pub fn recover(
        &mut self,
        topic: &str,
        rule: &HistoryRule,
        since: Option<Option<Position>>,
        limits: ReplayLimits,
        now: Instant,
    ) -> Recovery {
        let position = self.position(topic, rule, now);
        let mut out = Recovery {
            position,
            recovered: None,
            replay: Vec::new(),
        };
        let Some(since) = since else {
            return out;
        };
        out.recovered = Some(false);
        let Some(since) = since else {
            return out;
        };
        let Some(ring) = self.rings.get(topic) else {
            // Nothing kept here: only a client that saw nothing either has missed nothing.
            out.recovered = Some(since == Position::default());
            return out;
        };
        let from = match since {
            Position { epoch, offset } if epoch == ring.epoch && offset <= ring.last => offset,
            Position {
                epoch: 0,
                offset: 0,
            } => 0,
            _ => return out,
        };
        if from + 1 < ring.first() || (ring.last - from) as usize > limits.publications {
            return out;
        }
        let skip = (from + 1 - ring.first()) as usize;
        let mut bytes = 0;
        for e in ring.entries.iter().skip(skip) {
            bytes += e.publication.len();
            if bytes > limits.bytes {
                out.replay.clear();
                return out;
            }
            out.replay.push(e.publication.clone());
        }
        out.recovered = Some(true);
        out
    }

    /// `GET /api/history`: the position, the oldest offset kept, and at most `limit`
    /// publications after `since`, oldest first.
    pub fn since(
        &mut self,
        topic: &str,
        rule: &HistoryRule,
        since: u64,
        limit: usize,
        now: Instant,
    ) -> (Position, u64, Vec<Publication>) {
        let position = self.position(topic, rule, now);
        let Some(ring) = self.rings.get(topic) else {
            return (position, 1, Vec::new());
        };
        let first = ring.first();
        let skip = since.saturating_add(1).saturating_sub(first) as usize;
        let list = ring
            .entries
            .iter()
            .skip(skip)
            .take(limit)
            .map(|e| e.publication.clone())
            .collect();
        (position, first, list)
    }

    /// Topics with a ring on this core, entries and bytes (gauges).
    pub fn totals(&self) -> (usize, usize, usize) {
        let entries = self.rings.values().map(|r| r.entries.len()).sum();
        (self.rings.len(), entries, self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::proto::phoenix::Payload;

    fn rule(size: usize, ttl_secs: u64) -> HistoryRule {
        HistoryRule {
            pattern: "room:*".into(),
            size,
            ttl_secs,
        }
    }

    /// Publish `body` on `topic` as its home would: next position, sequenced, appended.
    fn publish(
        h: &mut History,
        topic: &str,
        r: &HistoryRule,
        now: Instant,
        body: &str,
    ) -> Position {
        let raw = Publication::new(topic, "m", Payload::Json(body)).unwrap();
        let pos = h.next(topic, r, now);
        let p = raw.sequenced(pos.offset, pos.epoch, "_pos");
        h.append(&p, r, now);
        pos
    }

    fn offsets(list: &[Publication]) -> Vec<u64> {
        list.iter().map(|p| p.position().unwrap().0).collect()
    }

    const LIMITS: ReplayLimits = ReplayLimits {
        publications: 1000,
        bytes: 1 << 20,
    };

    #[test]
    fn an_entry_is_24_bytes() {
        assert_eq!(size_of::<Entry>(), 24);
        let p = Publication::new("room:1", "m", Payload::Json("{}")).unwrap();
        assert_eq!(entry_cost(&p), 24 + 16 + p.len());
    }

    #[test]
    fn keeps_the_last_size_publications_in_order_and_recovers_what_was_missed() {
        let t0 = Instant::now();
        let r = rule(5, 300);
        let mut h = History::new(1 << 20, 1, t0);
        let first = publish(&mut h, "room:1", &r, t0, "{}");
        assert_eq!(first.offset, 1);
        assert_ne!(first.epoch, 0);
        assert!(first.epoch < 1 << 53);
        for _ in 2..=8 {
            publish(&mut h, "room:1", &r, t0, r#"{"x":1}"#);
        }
        let pos = h.position("room:1", &r, t0);
        assert_eq!(
            pos,
            Position {
                epoch: first.epoch,
                offset: 8
            }
        );
        let (_, oldest, list) = h.since("room:1", &r, 0, 100, t0);
        assert_eq!((oldest, offsets(&list)), (4, vec![4, 5, 6, 7, 8]));
        // Recoverable: from 3 (the next, 4, is kept) up; not from 2.
        let back = |h: &mut History, epoch, offset| {
            h.recover(
                "room:1",
                &r,
                Some(Some(Position { epoch, offset })),
                LIMITS,
                t0,
            )
        };
        let ok = back(&mut h, first.epoch, 3);
        assert_eq!(
            (ok.recovered, offsets(&ok.replay)),
            (Some(true), vec![4, 5, 6, 7, 8])
        );
        let none = back(&mut h, first.epoch, 8);
        assert_eq!((none.recovered, none.replay.len()), (Some(true), 0));
        assert_eq!(back(&mut h, first.epoch, 2).recovered, Some(false));
        assert_eq!(
            back(&mut h, first.epoch, 9).recovered,
            Some(false),
            "the future"
        );
        assert_eq!(
            back(&mut h, first.epoch + 1, 5).recovered,
            Some(false),
            "another epoch"
        );
        assert_eq!(
            back(&mut h, 0, 0).recovered,
            Some(false),
            "the first is gone"
        );
        let plain = h.recover("room:1", &r, None, LIMITS, t0);
        assert_eq!((plain.recovered, plain.position.offset), (None, 8));
        let bad = h.recover("room:1", &r, Some(None), LIMITS, t0);
        assert_eq!(bad.recovered, Some(false));
    }

    #[test]
    fn replay_is_bounded_in_count_and_bytes() {
        let t0 = Instant::now();
        let r = rule(100, 300);
        let mut h = History::new(1 << 20, 1, t0);
        let e = publish(&mut h, "room:1", &r, t0, "{}").epoch;
        for _ in 0..49 {
            publish(&mut h, "room:1", &r, t0, r#"{"pad":"0123456789"}"#);
        }
        let since = Some(Some(Position {
            epoch: e,
            offset: 0,
        }));
        let few = ReplayLimits {
            publications: 10,
            bytes: 1 << 20,
        };
        assert_eq!(
            h.recover("room:1", &r, since, few, t0).recovered,
            Some(false)
        );
        let small = ReplayLimits {
            publications: 100,
            bytes: 500,
        };
        let got = h.recover("room:1", &r, since, small, t0);
        assert_eq!((got.recovered, got.replay.len()), (Some(false), 0));
        assert_eq!(h.recover("room:1", &r, since, LIMITS, t0).replay.len(), 50);
    }

    #[test]
    fn ttl_drops_old_entries_then_the_idle_ring_and_a_new_epoch_starts() {
        let t0 = Instant::now();
        let r = rule(100, 10);
        let mut h = History::new(1 << 20, 7, t0);
        let e1 = publish(&mut h, "room:1", &r, t0, "{}").epoch;
        publish(&mut h, "room:1", &r, t0 + Duration::from_secs(6), "{}");
        let at = |s| t0 + Duration::from_secs(s);
        let (_, oldest, list) = h.since("room:1", &r, 0, 100, at(11));
        assert_eq!(
            (oldest, offsets(&list)),
            (2, vec![2]),
            "the first has outlived its ttl"
        );
        h.sweep(at(17), |_| Some(&r));
        assert_eq!(h.totals(), (0, 0, 0), "all freed, the ring too");
        let again = publish(&mut h, "room:1", &r, at(18), "{}");
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, e1);
    }

    #[test]
    fn bytes_are_bounded_per_core_and_given_back() {
        let t0 = Instant::now();
        let r = rule(1000, 300);
        let body = format!(r#"{{"b":"{}"}}"#, "x".repeat(1000));
        let mut h = History::new(20_000, 1, t0);
        for i in 0..100 {
            publish(&mut h, &format!("room:{}", i % 3), &r, t0, &body);
            assert!(h.totals().2 <= 20_000, "after {i}: {:?}", h.totals());
        }
        let (topics, entries, bytes) = h.totals();
        assert_eq!(topics, 3);
        // Full: a new topic gets no ring (its publications go out, unkept).
        for i in 0..50 {
            publish(&mut h, &format!("other:{i}"), &r, t0, &body);
        }
        assert!(h.totals().2 <= 20_000, "{:?}", h.totals());
        assert!(entries >= 15, "most of the budget is used: {entries}");
        let per = bytes / entries;
        assert!(per > 1000 && per < 1200, "{per} B per entry of a 1 KB body");
        h.sweep(t0 + Duration::from_secs(600), |_| Some(&r));
        assert_eq!(h.totals(), (0, 0, 0));
    }

    #[test]
    fn a_gap_or_another_epoch_starts_the_ring_again() {
        let t0 = Instant::now();
        let r = rule(100, 300);
        let mut h = History::new(1 << 20, 1, t0);
        let raw = Publication::new("room:1", "m", Payload::Json("{}")).unwrap();
        for o in [1, 2, 3, 2, 5, 6] {
            h.append(&raw.sequenced(o, 9, "_pos"), &r, t0);
        }
        let (_, oldest, list) = h.since("room:1", &r, 0, 100, t0);
        assert_eq!(
            (oldest, offsets(&list)),
            (5, vec![5, 6]),
            "4 never came: no 1..3"
        );
        let from3 = Some(Some(Position {
            epoch: 9,
            offset: 3,
        }));
        assert_eq!(
            h.recover("room:1", &r, from3, LIMITS, t0).recovered,
            Some(false)
        );
        h.append(&raw.sequenced(1, 10, "_pos"), &r, t0);
        assert_eq!(
            h.position("room:1", &r, t0),
            Position {
                epoch: 10,
                offset: 1
            }
        );
        assert_eq!(h.totals().1, 1);
    }

    #[test]
    fn join_params_and_the_reply() {
        assert_eq!(recover_param("{}"), None);
        assert_eq!(recover_param("not json"), None);
        assert_eq!(
            recover_param(r#"{"x":1,"recover":{"epoch":5,"offset":7}}"#),
            Some(Some(Position {
                epoch: 5,
                offset: 7
            }))
        );
        for bad in [r#"{"recover":1}"#, r#"{"recover":{"epoch":-1,"offset":0}}"#] {
            assert_eq!(recover_param(bad), Some(None), "{bad}");
        }
        let r = Recovery {
            position: Position {
                epoch: 3,
                offset: 4,
            },
            recovered: Some(true),
            replay: Vec::new(),
        };
        assert_eq!(
            r.response("{}"),
            r#"{"epoch":3,"offset":4,"recovered":true}"#
        );
        assert_eq!(
            r.response(r#" {"a":1}"#),
            r#"{"epoch":3,"offset":4,"recovered":true,"a":1}"#
        );
        assert_eq!(r.response("[1]"), "[1]");
    }
}

//! Presence as phoenix.js's `Presence` reads it (issue 12), in memory, without I/O: one topic's
//! state, the diff gathered over a window, the home core's and the other cores' views, and the
//! ops cores send a topic's home.
//!
//! Wire shapes (Phoenix's `presence_state` / `presence_diff`):
//!
//! ```text
//! state: {"alice": {"metas": [{"status":"away","phx_ref":"..."}, ...]}, ...}
//! diff:  {"joins": {key: {"metas": [...]}}, "leaves": {key: {"metas": [...]}}}
//! ```
//!
//! One topic's presence has one owner, its home core (`home_of`): every track and untrack goes
//! there, in order, and only the home changes the topic's [`Home`] state and gathers its
//! [`Diff`]. Once per window the home publishes the diff as an ordinary publication (event
//! `presence_diff`, which no client or API caller may publish); every core, the home too,
//! applies it to its [`Replica`] as it delivers it, so a joiner anywhere gets the state as of
//! the last diff its core delivered, then every later diff: the same sequence everywhere.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use serde::Deserialize;
use serde_json::value::RawValue;

/// A `phx_ref`: 16 url-safe characters, kept inline (no allocation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Ref([u8; 16]);

impl Ref {
    /// A ref from its text; `None` unless it is 16 url-safe characters.
    pub fn parse(s: &str) -> Option<Ref> {
        let b: [u8; 16] = s.as_bytes().try_into().ok()?;
        b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
            .then_some(Ref(b))
    }

    pub fn as_str(&self) -> &str {
        // Only url-safe ASCII is ever stored (see `parse` and `Refs`).
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

/// What one entry of a key's metas is written as.
pub trait Entry: Clone + std::fmt::Debug + PartialEq {
    fn phx_ref(&self) -> Ref;
    fn write_json(&self, out: &mut String);
}

/// One meta as the home keeps it: its refs inline, and the client's (or handler's) fields as
/// the inside of a JSON object (`"status":"away"`), empty (no allocation) when there are none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub phx_ref: Ref,
    pub prev: Option<Ref>,
    pub fields: Box<str>,
}

impl Entry for Meta {
    fn phx_ref(&self) -> Ref {
        self.phx_ref
    }

    /// `{fields,"phx_ref":"...","phx_ref_prev":"..."}`.
    fn write_json(&self, out: &mut String) {
        out.push('{');
        out.push_str(&self.fields);
        if !self.fields.is_empty() {
            out.push(',');
        }
        out.push_str("\"phx_ref\":\"");
        out.push_str(self.phx_ref.as_str());
        out.push('"');
        if let Some(prev) = self.prev {
            out.push_str(",\"phx_ref_prev\":\"");
            out.push_str(prev.as_str());
            out.push('"');
        }
        out.push('}');
    }
}

impl Meta {
    /// The whole meta object as JSON.
    pub fn json(&self) -> String {
        let mut s = String::new();
        self.write_json(&mut s);
        s
    }
}

/// One meta as a replica keeps it: read from a published diff, its JSON text as it came.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub phx_ref: Ref,
    pub json: Box<str>,
    /// The node it came from ([`Tracker`]'s index of it; 0: this node).
    pub origin: u16,
}

impl Entry for Seen {
    fn phx_ref(&self) -> Ref {
        self.phx_ref
    }

    fn write_json(&self, out: &mut String) {
        out.push_str(&self.json);
    }
}

/// A key's metas in the order they joined: one inline (the usual case: one tab), more in a
/// vector.
#[derive(Debug, Clone, PartialEq)]
enum List<M> {
    One(M),
    Many(Vec<M>),
}

impl<M> List<M> {
    fn as_slice(&self) -> &[M] {
        match self {
            List::One(m) => std::slice::from_ref(m),
            List::Many(v) => v,
        }
    }

    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn push(&mut self, meta: M) {
        match self {
            List::Many(v) => v.push(meta),
            List::One(_) => {
                if let List::One(first) = std::mem::replace(self, List::Many(Vec::new())) {
                    *self = List::Many(vec![first, meta]);
                }
            }
        }
    }

    /// Take out the first meta `f` picks; true in the second place if none is left.
    fn take(&mut self, f: impl Fn(&M) -> bool) -> Option<(M, bool)> {
        let i = self.as_slice().iter().position(f)?;
        match self {
            List::Many(v) => {
                let m = v.remove(i);
                Some((m, v.is_empty()))
            }
            List::One(_) => match std::mem::replace(self, List::Many(Vec::new())) {
                List::One(m) => Some((m, true)),
                List::Many(_) => None,
            },
        }
    }
}

/// Presences by key, each key's metas in the order they joined.
#[derive(Debug, Clone, PartialEq)]
pub struct Metas<M: Entry> {
    keys: BTreeMap<Box<str>, List<M>>,
    entries: usize,
}

impl<M: Entry> Default for Metas<M> {
    fn default() -> Self {
        Metas {
            keys: BTreeMap::new(),
            entries: 0,
        }
    }
}

impl<M: Entry> Metas<M> {
    pub fn add(&mut self, key: &str, meta: M) {
        match self.keys.get_mut(key) {
            Some(v) => v.push(meta),
            None => {
                self.keys.insert(Box::from(key), List::One(meta));
            }
        }
        self.entries += 1;
    }

    /// Remove the meta `phx_ref` of `key`, if there.
    pub fn remove(&mut self, key: &str, phx_ref: Ref) -> Option<M> {
        let metas = self.keys.get_mut(key)?;
        let (meta, empty) = metas.take(|m| m.phx_ref() == phx_ref)?;
        if empty {
            self.keys.remove(key);
        }
        self.entries -= 1;
        Some(meta)
    }

    pub fn has(&self, key: &str, phx_ref: Ref) -> bool {
        self.keys
            .get(key)
            .is_some_and(|v| v.as_slice().iter().any(|m| m.phx_ref() == phx_ref))
    }

    /// Metas (entries), over all keys.
    pub fn entries(&self) -> usize {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// Keys and their metas, in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[M])> {
        self.keys.iter().map(|(k, v)| (&**k, v.as_slice()))
    }

    /// `{key: {"metas": [...]}, ...}`.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(2 + self.entries * 64);
        write_metas(self.iter(), &mut out);
        out
    }
}

/// `{key: {"metas": [...]}, ...}` of some keys.
fn write_metas<'a, M: Entry + 'a>(
    keys: impl Iterator<Item = (&'a str, &'a [M])>,
    out: &mut String,
) {
    out.push('{');
    for (i, (key, metas)) in keys.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&serde_json::to_string(key).unwrap_or_default());
        out.push_str(":{\"metas\":[");
        for (j, m) in metas.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            m.write_json(out);
        }
        out.push_str("]}");
    }
    out.push('}');
}

/// Bytes a key's entry takes in a diff's JSON, near enough to cut diffs by size.
fn json_cost<M: Entry>(key: &str, metas: &[M]) -> usize {
    let mut s = String::new();
    for m in metas {
        m.write_json(&mut s);
    }
    key.len() + 16 + s.len() + metas.len()
}

/// A key and its metas, borrowed.
type KeyMetas<'a, M> = (&'a str, &'a [M]);

/// The changes of one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Diff<M: Entry> {
    pub joins: Metas<M>,
    pub leaves: Metas<M>,
}

impl<M: Entry> Default for Diff<M> {
    fn default() -> Self {
        Diff {
            joins: Metas::default(),
            leaves: Metas::default(),
        }
    }
}

impl<M: Entry> Diff<M> {
    pub fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty()
    }

    /// `{"joins": {...}, "leaves": {...}}` (both always there).
    pub fn to_json(&self) -> String {
        let mut out = String::from("{\"joins\":");
        write_metas(self.joins.iter(), &mut out);
        out.push_str(",\"leaves\":");
        write_metas(self.leaves.iter(), &mut out);
        out.push('}');
        out
    }

    /// The diff as JSON texts of at most about `max_bytes` each (a key's metas are never
    /// split; joins before leaves): a big storm's diff stays well under every subscriber's
    /// `out_queue_max_bytes`. Applied in order, they leave every view where the one diff would.
    pub fn to_json_chunks(&self, max_bytes: usize) -> Vec<String> {
        let mut chunks = Vec::new();
        let mut joins: Vec<KeyMetas<'_, M>> = Vec::new();
        let mut leaves: Vec<KeyMetas<'_, M>> = Vec::new();
        let mut size = 0;
        let flush = |joins: &mut Vec<_>, leaves: &mut Vec<_>, chunks: &mut Vec<String>| {
            let mut out = String::from("{\"joins\":");
            write_metas(joins.drain(..), &mut out);
            out.push_str(",\"leaves\":");
            write_metas(leaves.drain(..), &mut out);
            out.push('}');
            chunks.push(out);
        };
        for (leave, metas) in [(false, &self.joins), (true, &self.leaves)] {
            for (key, list) in metas.iter() {
                let cost = json_cost(key, list);
                if size > 0 && size + cost > max_bytes {
                    flush(&mut joins, &mut leaves, &mut chunks);
                    size = 0;
                }
                if leave {
                    leaves.push((key, list));
                } else {
                    joins.push((key, list));
                }
                size += cost;
            }
        }
        if size > 0 || chunks.is_empty() {
            flush(&mut joins, &mut leaves, &mut chunks);
        }
        chunks
    }
}

impl Diff<Seen> {
    /// Read a diff this module wrote (`None` if it is not one).
    pub fn from_json(text: &str) -> Option<Diff<Seen>> {
        #[derive(Deserialize)]
        struct Item<'a> {
            #[serde(borrow)]
            metas: Vec<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Shape<'a> {
            #[serde(borrow)]
            joins: BTreeMap<String, Item<'a>>,
            #[serde(borrow)]
            leaves: BTreeMap<String, Item<'a>>,
        }
        #[derive(Deserialize)]
        struct R<'a> {
            #[serde(borrow)]
            phx_ref: &'a str,
        }
        let shape: Shape<'_> = serde_json::from_str(text).ok()?;
        let read = |map: BTreeMap<String, Item<'_>>| -> Option<Metas<Seen>> {
            let mut out = Metas::default();
            for (key, entry) in map {
                for raw in entry.metas {
                    let r: R<'_> = serde_json::from_str(raw.get()).ok()?;
                    let seen = Seen {
                        phx_ref: Ref::parse(r.phx_ref)?,
                        json: raw.get().into(),
                        origin: 0,
                    };
                    out.add(&key, seen);
                }
            }
            Some(out)
        };
        Some(Diff {
            joins: read(shape.joins)?,
            leaves: read(shape.leaves)?,
        })
    }
}

/// The home core's view of one topic: the state with every change it has taken, and the
/// changes not yet published.
#[derive(Debug, Default)]
pub struct Home {
    pub state: Metas<Meta>,
    pub pending: Diff<Meta>,
}

impl Home {
    /// Add a presence; false (nothing changes) if the topic holds `max` already or the ref is
    /// there already.
    pub fn track(&mut self, key: &str, meta: Meta, max: usize) -> bool {
        if self.state.entries() >= max || self.state.has(key, meta.phx_ref) {
            return false;
        }
        self.state.add(key, meta.clone());
        self.pending.joins.add(key, meta);
        true
    }

    /// Remove a presence. A meta whose join is still pending is taken out of the diff: the two
    /// cancel, nobody ever sees either. False if there was no such meta.
    pub fn untrack(&mut self, key: &str, phx_ref: Ref) -> bool {
        let Some(meta) = self.state.remove(key, phx_ref) else {
            return false;
        };
        if self.pending.joins.remove(key, phx_ref).is_none() {
            self.pending.leaves.add(key, meta);
        }
        true
    }

    /// The window's diff, if anything changed, leaving the pending diff empty.
    pub fn take_diff(&mut self) -> Option<Diff<Meta>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }

    /// The first keys of the pending diff (joins before leaves), about `budget` bytes of JSON
    /// of them (at least one key), leaving the rest pending: what one tick publishes.
    pub fn take_diff_upto(&mut self, budget: usize) -> Option<Diff<Meta>> {
        if self.pending.is_empty() {
            return None;
        }
        let mut total = 0;
        let mut cut = None;
        'scan: for (leave, metas) in [(false, &self.pending.joins), (true, &self.pending.leaves)] {
            for (key, list) in metas.iter() {
                total += json_cost(key, list);
                if total > budget {
                    cut = Some((leave, Box::<str>::from(key)));
                    break 'scan;
                }
            }
        }
        let Some((leave, key)) = cut else {
            return self.take_diff(); // all of it fits
        };
        let mut taken = Diff::default();
        let split = |m: &mut Metas<Meta>, at: &str| {
            let rest = m.keys.split_off(at);
            let head = std::mem::replace(&mut m.keys, rest);
            let n: usize = head.values().map(List::len).sum();
            m.entries -= n;
            Metas {
                keys: head,
                entries: n,
            }
        };
        if leave {
            taken.joins = std::mem::take(&mut self.pending.joins);
            taken.leaves = split(&mut self.pending.leaves, &key);
        } else {
            taken.joins = split(&mut self.pending.joins, &key);
        }
        if taken.is_empty() {
            // The first key alone is over the budget: it goes on its own.
            let from = if leave {
                &mut self.pending.leaves
            } else {
                &mut self.pending.joins
            };
            if let Some((k, list)) = from.keys.pop_first() {
                from.entries -= list.len();
                let to = if leave {
                    &mut taken.leaves
                } else {
                    &mut taken.joins
                };
                to.entries += list.len();
                to.keys.insert(k, list);
            }
        }
        Some(taken)
    }

    /// Nothing to keep: no presences, nothing to publish.
    pub fn is_idle(&self) -> bool {
        self.state.is_empty() && self.pending.is_empty()
    }
}

/// A core's copy of one topic's state, as of the last diff it delivered, and that state's JSON,
/// built once and shared by every joiner until the next diff.
#[derive(Debug, Default)]
pub struct Replica {
    pub state: Metas<Seen>,
    json: Option<Arc<str>>,
}

impl Replica {
    /// Apply a published diff: joins, then leaves (phoenix.js's `syncDiff` order).
    pub fn apply(&mut self, diff: Diff<Seen>) {
        self.apply_from(diff, 0);
    }

    /// The same, for a diff of node `origin` (its joins are marked as that node's).
    pub fn apply_from(&mut self, diff: Diff<Seen>, origin: u16) {
        let Diff { joins, leaves } = diff;
        for (key, metas) in joins.keys {
            let metas = match metas {
                List::One(m) => vec![m],
                List::Many(v) => v,
            };
            for mut m in metas {
                m.origin = origin;
                self.state.remove(&key, m.phx_ref); // a repeated join replaces its meta
                self.state.add(&key, m);
            }
        }
        for (key, metas) in leaves.iter() {
            for m in metas {
                self.state.remove(key, m.phx_ref);
            }
        }
        self.json = None;
    }

    /// The state as `presence_state`'s payload (built on first need after a change).
    pub fn state_json(&mut self) -> Arc<str> {
        self.json
            .get_or_insert_with(|| Arc::from(self.state.to_json()))
            .clone()
    }
}

/// Why a client's meta was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetaError {
    NotAnObject,
    TooLarge,
}

impl MetaError {
    /// The `phx_reply` error response.
    pub fn response(self) -> &'static str {
        match self {
            MetaError::NotAnObject => r#"{"reason":"presence meta must be an object"}"#,
            MetaError::TooLarge => r#"{"reason":"presence meta too large"}"#,
        }
    }
}

/// The `meta` object of a join or `presence_update` payload (`{"meta": {...}}`), as the meta to
/// track (see [`meta_from_object`]). No `meta`, or `null`: `{}`.
pub fn meta_from_payload(
    payload: &str,
    max_bytes: usize,
    phx_ref: Ref,
    prev: Option<Ref>,
) -> Result<Meta, MetaError> {
    #[derive(Deserialize)]
    struct Outer<'a> {
        #[serde(borrow, default)]
        meta: Option<&'a RawValue>,
    }
    let raw = serde_json::from_str::<Outer<'_>>(payload)
        .ok()
        .and_then(|o| o.meta);
    meta_from_object(raw.map_or("{}", |r| r.get()), max_bytes, phx_ref, prev)
}

/// A meta object (JSON text) as the meta to track: its fields, bounded by `max_bytes`, without
/// any `phx_ref` / `phx_ref_prev` it had; the server's refs go with it. `null` counts as `{}`.
pub fn meta_from_object(
    json: &str,
    max_bytes: usize,
    phx_ref: Ref,
    prev: Option<Ref>,
) -> Result<Meta, MetaError> {
    if json.len() > max_bytes {
        return Err(MetaError::TooLarge);
    }
    let mut fields = match serde_json::from_str::<serde_json::Value>(json) {
        Ok(serde_json::Value::Object(m)) => m,
        Ok(serde_json::Value::Null) => serde_json::Map::new(),
        _ => return Err(MetaError::NotAnObject),
    };
    fields.remove("phx_ref");
    fields.remove("phx_ref_prev");
    let fields: Box<str> = if fields.is_empty() {
        Box::from("")
    } else {
        let text = serde_json::Value::Object(fields).to_string();
        Box::from(&text[1..text.len() - 1]) // the inside of `{...}`
    };
    Ok(Meta {
        phx_ref,
        prev,
        fields,
    })
}

/// Unique `phx_ref`s (16 url-safe characters, like Phoenix's): a random per-core prefix and a
/// counter.
pub struct Refs {
    seed: [u8; 4],
    mix: u64,
    n: u64,
}

impl Refs {
    /// `random` seeds it (12 bytes from the kernel); `core` makes two cores' refs differ even
    /// with equal seeds.
    pub fn new(random: [u8; 12], core: usize) -> Refs {
        let mut seed = [random[0], random[1], random[2], random[3]];
        seed[0] ^= core as u8;
        Refs {
            seed,
            mix: u64::from_le_bytes(random[4..12].try_into().unwrap_or_default()),
            n: 0,
        }
    }

    fn encode(&self, x: u64) -> Ref {
        use base64::Engine;
        let mut b = [0u8; 12];
        b[..4].copy_from_slice(&self.seed);
        b[4..].copy_from_slice(&x.to_le_bytes());
        let mut out = [0u8; 16];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode_slice(b, &mut out)
            .unwrap_or(0);
        debug_assert_eq!(n, 16);
        Ref(out)
    }

    /// The next ref.
    pub fn fresh(&mut self) -> Ref {
        self.n += 1;
        // An odd multiplier is a bijection on u64: distinct counters give distinct refs.
        self.encode(self.n.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ self.mix)
    }

    /// The presence key of a socket without a token (with `presence_anonymous`): its own id,
    /// stable for the socket's life, unique per core (slot key and generation) and between
    /// cores (the seed), never chosen by the client.
    pub fn socket_id(&self, key: usize, generation: u32) -> Box<str> {
        let x = ((key as u64) << 32 | u64::from(generation)) ^ self.mix.rotate_left(17);
        Box::from(self.encode(x).as_str())
    }
}

/// The home core of `topic` among `cores` (FNV-1a: the same on every core, every run).
pub fn home_of(topic: &str, cores: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in topic.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    (h % cores.max(1) as u64) as usize
}

/// What a core asks a topic's home, as mesh envelope bytes (first byte [`OP_KIND`]):
///
/// ```text
/// OP_KIND u8 | op u8 (0 track, 1 untrack) | topic len u32 LE | key len u32 LE | phx_ref 16
/// | phx_ref_prev 16 (zeros: none) | topic | key | the meta's fields (track only)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Track {
        topic: Box<str>,
        key: Box<str>,
        meta: Meta,
    },
    Untrack {
        topic: Box<str>,
        key: Box<str>,
        phx_ref: Ref,
    },
}

/// The first byte of an op envelope (publications use 0 and 1).
pub const OP_KIND: u8 = 2;
const OP_HEADER: usize = 10 + 32;

impl Op {
    pub fn topic(&self) -> &str {
        match self {
            Op::Track { topic, .. } | Op::Untrack { topic, .. } => topic,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let (op, topic, key, phx_ref, prev, fields) = match self {
            Op::Track { topic, key, meta } => {
                (0u8, topic, key, meta.phx_ref, meta.prev, &*meta.fields)
            }
            Op::Untrack {
                topic,
                key,
                phx_ref,
            } => (1u8, topic, key, *phx_ref, None, ""),
        };
        let mut b = Vec::with_capacity(OP_HEADER + topic.len() + key.len() + fields.len());
        b.push(OP_KIND);
        b.push(op);
        b.extend_from_slice(&(topic.len() as u32).to_le_bytes());
        b.extend_from_slice(&(key.len() as u32).to_le_bytes());
        b.extend_from_slice(&phx_ref.0);
        b.extend_from_slice(&prev.map_or([0; 16], |r| r.0));
        b.extend_from_slice(topic.as_bytes());
        b.extend_from_slice(key.as_bytes());
        b.extend_from_slice(fields.as_bytes());
        b
    }

    /// Read an op envelope (`None` if it is not one).
    pub fn decode(b: &[u8]) -> Option<Op> {
        if b.len() < OP_HEADER || b[0] != OP_KIND {
            return None;
        }
        let len = |at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize;
        let (t, k) = (len(2), len(6));
        let text = |from: usize, n: usize| -> Option<Box<str>> {
            let s = b.get(from..from.checked_add(n)?)?;
            std::str::from_utf8(s).ok().map(Box::from)
        };
        let r = |at: usize| Ref::parse(std::str::from_utf8(&b[at..at + 16]).ok()?);
        let phx_ref = r(10)?;
        let prev = if b[26..42] == [0; 16] {
            None
        } else {
            Some(r(26)?)
        };
        let topic = text(OP_HEADER, t)?;
        let key = text(OP_HEADER.checked_add(t)?, k)?;
        let rest = OP_HEADER + t + k;
        match b[1] {
            0 => Some(Op::Track {
                topic,
                key,
                meta: Meta {
                    phx_ref,
                    prev,
                    fields: text(rest, b.len().checked_sub(rest)?)?,
                },
            }),
            1 => Some(Op::Untrack {
                topic,
                key,
                phx_ref,
            }),
            _ => None,
        }
    }
}

/// One core's presence: the homes of the topics this core owns, its replicas of every presence
/// topic it has subscribers for, the topics with changes not yet published (oldest first), and
/// its ref generator.
pub struct Tracker {
    /// Other cluster nodes seen in diffs (index + 1 = a `Seen`'s origin).
    origins: Vec<Box<str>>,
    homes: HashMap<Box<str>, Home>,
    replicas: HashMap<Box<str>, Replica>,
    dirty: VecDeque<(Box<str>, Instant)>,
    pub refs: Refs,
}

impl Tracker {
    pub fn new(refs: Refs) -> Tracker {
        Tracker {
            origins: Vec::new(),
            homes: HashMap::new(),
            replicas: HashMap::new(),
            dirty: VecDeque::new(),
            refs,
        }
    }

    /// Take an op at the topic's home. False if it changed nothing (over `max`, unknown ref).
    pub fn on_op(&mut self, op: Op, max: usize, now: Instant) -> bool {
        let topic = op.topic();
        let home = match self.homes.get_mut(topic) {
            Some(h) => h,
            None => self.homes.entry(Box::from(topic)).or_default(),
        };
        let was_clean = home.pending.is_empty();
        let changed = match &op {
            Op::Track { key, meta, .. } => home.track(key, meta.clone(), max),
            Op::Untrack { key, phx_ref, .. } => home.untrack(key, *phx_ref),
        };
        if changed && was_clean && !home.pending.is_empty() {
            self.dirty.push_back((Box::from(topic), now));
        }
        if home.is_idle() {
            self.homes.remove(topic);
        }
        changed
    }

    /// The diffs whose window (from their first change) has passed by `now`, as (topic, diff
    /// JSON), in the order their changes began: at most about `budget` bytes of JSON per topic
    /// (the rest goes at the next call: a storm bigger than that is paced, so its members'
    /// queues drain between ticks), cut into frames of about `frame_bytes`.
    pub fn due(
        &mut self,
        now: Instant,
        window: std::time::Duration,
        budget: usize,
        frame_bytes: usize,
    ) -> Vec<(Box<str>, String)> {
        let mut out = Vec::new();
        let mut again = Vec::new();
        while let Some((_, since)) = self.dirty.front() {
            if now.duration_since(*since) < window {
                break;
            }
            let Some((topic, since)) = self.dirty.pop_front() else {
                break;
            };
            let Some(home) = self.homes.get_mut(&topic) else {
                continue;
            };
            if let Some(diff) = home.take_diff_upto(budget) {
                for chunk in diff.to_json_chunks(frame_bytes) {
                    out.push((topic.clone(), chunk));
                }
            }
            if home.is_idle() {
                self.homes.remove(&topic);
            } else if !home.pending.is_empty() {
                again.push((topic, since)); // more of this window: next call
            }
        }
        for entry in again.into_iter().rev() {
            self.dirty.push_front(entry);
        }
        out
    }

    /// Changes not yet published, on any topic this core is home of.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// A published diff reached this core: its replica of the topic takes it.
    pub fn apply_published(&mut self, topic: &str, diff_json: &str) {
        self.apply_from(topic, diff_json, 0);
    }

    /// The same for a diff node `origin` published (a cluster node's index from [`Tracker::origin`]).
    pub fn apply_from(&mut self, topic: &str, diff_json: &str, origin: u16) {
        let Some(diff) = Diff::from_json(diff_json) else {
            return;
        };
        let replica = match self.replicas.get_mut(topic) {
            Some(r) => r,
            None => self.replicas.entry(Box::from(topic)).or_default(),
        };
        replica.apply_from(diff, origin);
        if replica.state.is_empty() {
            self.replicas.remove(topic);
        }
    }

    /// The index of cluster node `name` (an instance: name and incarnation), given on first
    /// sight; 0 is this node.
    pub fn origin(&mut self, name: &str) -> u16 {
        if let Some(i) = self.origins.iter().position(|o| &**o == name) {
            return i as u16 + 1;
        }
        self.origins.push(name.into());
        self.origins.len().min(u16::MAX as usize) as u16
    }

    /// Node `origin`'s whole state of `topic` (a diff of joins) arrived, as asked: it replaces
    /// what this core held of that node's metas of the topic. The change (joins of metas this
    /// core did not know, leaves of those of that node it knew and the node no longer has) is
    /// the diff to deliver to this core's members (`None`: nothing changed). So a node that
    /// joins, or fell behind (reconnected, or NATS dropped messages for it), catches up.
    pub fn seed(&mut self, topic: &str, diff_json: &str, origin: u16) -> Option<String> {
        let diff = Diff::from_json(diff_json)?;
        let known = self.replicas.get(topic);
        let mut change: Diff<Seen> = Diff::default();
        for (key, metas) in diff.joins.iter() {
            for m in metas {
                if !known.is_some_and(|r| r.state.has(key, m.phx_ref)) {
                    change.joins.add(key, m.clone());
                }
            }
        }
        if let Some(r) = known {
            for (key, metas) in r.state.iter() {
                for m in metas.iter().filter(|m| m.origin == origin) {
                    if !diff.joins.has(key, m.phx_ref) {
                        change.leaves.add(key, m.clone());
                    }
                }
            }
        }
        if change.is_empty() {
            return None;
        }
        let json = change.to_json();
        let replica = self.replicas.entry(Box::from(topic)).or_default();
        replica.apply_from(change, origin);
        if replica.state.is_empty() {
            self.replicas.remove(topic);
        }
        Some(json)
    }

    /// Node `name` is gone (silent for the down period, or restarted): its metas leave every
    /// replica of this core; the leave diffs to deliver to this core's members, per topic.
    pub fn drop_origin(&mut self, name: &str) -> Vec<(Box<str>, String)> {
        let Some(i) = self.origins.iter().position(|o| &**o == name) else {
            return Vec::new();
        };
        let origin = i as u16 + 1;
        let mut out = Vec::new();
        for (topic, replica) in self.replicas.iter_mut() {
            let mut gone: Diff<Seen> = Diff::default();
            for (key, metas) in replica.state.iter() {
                for m in metas.iter().filter(|m| m.origin == origin) {
                    gone.leaves.add(key, m.clone());
                }
            }
            if gone.is_empty() {
                continue;
            }
            let json = gone.to_json();
            replica.apply(gone);
            out.push((topic.clone(), json));
        }
        self.replicas.retain(|_, r| !r.state.is_empty());
        out
    }

    /// As the topic's home: its state as the others know it (as of the last diff published),
    /// as a diff of joins, for a node that asks (no joins when it holds none).
    pub fn published_state(&self, topic: &str) -> String {
        let mut shown: Diff<Meta> = Diff::default();
        let Some(home) = self.homes.get(topic) else {
            return shown.to_json();
        };
        for (key, metas) in home.state.iter() {
            for m in metas {
                if !home.pending.joins.has(key, m.phx_ref) {
                    shown.joins.add(key, m.clone());
                }
            }
        }
        for (key, metas) in home.pending.leaves.iter() {
            for m in metas {
                shown.joins.add(key, m.clone());
            }
        }
        shown.to_json()
    }

    /// This core's view of `topic`'s state (`presence_state`'s payload).
    pub fn state_json(&mut self, topic: &str) -> Arc<str> {
        match self.replicas.get_mut(topic) {
            Some(r) => r.state_json(),
            None => Arc::from("{}"),
        }
    }

    /// Entries in this core's view of `topic`.
    pub fn entries(&self, topic: &str) -> usize {
        self.replicas.get(topic).map_or(0, |r| r.state.entries())
    }

    /// Topics this core is home of, and their entries.
    pub fn home_totals(&self) -> (usize, usize) {
        let entries = self.homes.values().map(|h| h.state.entries()).sum();
        (self.homes.len(), entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// A ref from a short name (padded to 16 characters).
    fn r(name: &str) -> Ref {
        Ref::parse(&p(name)).unwrap()
    }

    fn p(name: &str) -> String {
        format!("{name:_<16}")
    }

    fn meta(name: &str, extra: &str) -> Meta {
        meta_from_payload(&format!(r#"{{"meta":{{{extra}}}}}"#), 1024, r(name), None).unwrap()
    }

    fn v(s: &str) -> Value {
        serde_json::from_str(s).unwrap()
    }

    #[test]
    fn state_and_diff_have_phoenixs_shape() {
        let mut home = Home::default();
        assert!(home.track("alice", meta("r1", r#""s":"a""#), 10));
        assert!(home.track("alice", meta("r2", ""), 10)); // a second tab
        assert!(home.track("bob", meta("r3", ""), 10));
        assert_eq!(
            v(&home.state.to_json()),
            json!({"alice": {"metas": [{"s": "a", "phx_ref": p("r1")}, {"phx_ref": p("r2")}]},
                   "bob": {"metas": [{"phx_ref": p("r3")}]}})
        );
        let diff = home.take_diff().unwrap();
        assert_eq!(
            v(&diff.to_json()),
            json!({"joins": {"alice": {"metas": [{"s": "a", "phx_ref": p("r1")}, {"phx_ref": p("r2")}]},
                             "bob": {"metas": [{"phx_ref": p("r3")}]}},
                   "leaves": {}})
        );
        assert!(home.take_diff().is_none(), "nothing new");
        assert!(home.untrack("bob", r("r3")));
        assert_eq!(
            v(&home.take_diff().unwrap().to_json()),
            json!({"joins": {}, "leaves": {"bob": {"metas": [{"phx_ref": p("r3")}]}}})
        );
    }

    #[test]
    fn a_join_and_leave_inside_one_window_cancel_out() {
        let mut home = Home::default();
        home.track("a", meta("r1", ""), 10);
        home.take_diff();
        home.track("b", meta("r2", ""), 10);
        assert!(home.untrack("b", r("r2")));
        assert!(home.take_diff().is_none(), "b came and went unseen");
        // An update inside the window of its own join: only the new meta is ever seen.
        home.track("c", meta("r3", ""), 10);
        home.untrack("c", r("r3"));
        let updated =
            meta_from_payload(r#"{"meta":{"s":"away"}}"#, 1024, r("r4"), Some(r("r3"))).unwrap();
        home.track("c", updated, 10);
        assert_eq!(
            v(&home.take_diff().unwrap().to_json()),
            json!({"joins": {"c": {"metas": [{"s": "away", "phx_ref": p("r4"), "phx_ref_prev": p("r3")}]}},
                   "leaves": {}})
        );
        // An update of a meta already published: a leave of the old and a join of the new.
        home.untrack("a", r("r1"));
        home.track(
            "a",
            meta_from_payload("{}", 1024, r("r5"), Some(r("r1"))).unwrap(),
            10,
        );
        assert_eq!(
            v(&home.take_diff().unwrap().to_json()),
            json!({"joins": {"a": {"metas": [{"phx_ref": p("r5"), "phx_ref_prev": p("r1")}]}},
                   "leaves": {"a": {"metas": [{"phx_ref": p("r1")}]}}})
        );
    }

    #[test]
    fn a_storm_of_joins_is_one_diff_per_window() {
        let mut home = Home::default();
        for i in 0..10_000 {
            assert!(home.track(&format!("u{i}"), meta(&format!("r{i}"), ""), 100_000));
        }
        let diff = home.take_diff().unwrap();
        assert_eq!(diff.joins.entries(), 10_000);
        assert!(home.take_diff().is_none());
        // Every replica fed the diff holds the home's state.
        let mut replica = Replica::default();
        replica.apply(Diff::from_json(&diff.to_json()).unwrap());
        assert_eq!(replica.state.to_json(), home.state.to_json());
        let a = replica.state_json();
        assert!(Arc::ptr_eq(&a, &replica.state_json()), "built once, shared");
        // The same diff cut to 64 KiB frames: each under the bound (plus one key), together
        // the same state.
        let chunks = diff.to_json_chunks(64 << 10);
        assert!(chunks.len() > 1, "{} bytes in one", chunks[0].len());
        let mut cut = Replica::default();
        for c in &chunks {
            assert!(c.len() <= (64 << 10) + 200, "{}", c.len());
            cut.apply(Diff::from_json(c).unwrap());
        }
        assert_eq!(cut.state.to_json(), home.state.to_json());
        // Paced: a tick publishes about its budget and leaves the rest for the next ones.
        let mut paced = Home::default();
        for i in 0..1000 {
            paced.track(&format!("u{i:04}"), meta(&format!("r{i}"), ""), 100_000);
        }
        for i in 0..10 {
            paced.untrack(&format!("u{i:04}"), r(&format!("r{i}"))); // cancelled before out
        }
        let mut view = Replica::default();
        let mut ticks = 0;
        while let Some(d) = paced.take_diff_upto(8 << 10) {
            assert!(d.to_json().len() <= (8 << 10) + 200);
            view.apply(Diff::from_json(&d.to_json()).unwrap());
            ticks += 1;
        }
        assert!(ticks > 3, "{ticks} ticks");
        assert_eq!(view.state.to_json(), paced.state.to_json());
        assert_eq!(view.state.entries(), 990);
    }

    #[test]
    fn bounds_refuse_and_change_nothing() {
        let mut home = Home::default();
        assert!(home.track("a", meta("r1", ""), 2));
        assert!(home.track("b", meta("r2", ""), 2));
        assert!(
            !home.track("c", meta("r3", ""), 2),
            "over max_presences_per_topic"
        );
        assert!(!home.track("a", meta("r1", ""), 9), "the same ref twice");
        assert!(!home.untrack("a", r("nope")));
        assert_eq!(home.state.entries(), 2);
        let big = format!(r#"{{"meta":{{"x":"{}"}}}}"#, "y".repeat(2000));
        assert_eq!(
            meta_from_payload(&big, 1024, r("r"), None),
            Err(MetaError::TooLarge)
        );
        assert_eq!(
            meta_from_payload(r#"{"meta":[1]}"#, 1024, r("r"), None),
            Err(MetaError::NotAnObject)
        );
        // A client never chooses its refs.
        let m = meta_from_payload(
            r#"{"meta":{"phx_ref":"mine","phx_ref_prev":"x","k":1}}"#,
            1024,
            r("srv"),
            None,
        )
        .unwrap();
        assert_eq!(v(&m.json()), json!({"k": 1, "phx_ref": p("srv")}));
    }

    #[test]
    fn replicas_apply_diffs_in_order_to_the_same_state() {
        let mut home = Home::default();
        let (mut r1, mut r2) = (Replica::default(), Replica::default());
        let mut diffs = Vec::new();
        for round in 0..20 {
            for i in 0..5 {
                home.track(
                    &format!("k{}", (round + i) % 7),
                    meta(&format!("{round}-{i}"), ""),
                    1000,
                );
            }
            if round > 2 {
                let old = format!("{}-0", round - 2);
                home.untrack(&format!("k{}", (round - 2) % 7), r(&old));
            }
            diffs.push(home.take_diff().unwrap().to_json());
        }
        for d in &diffs {
            r1.apply(Diff::from_json(d).unwrap());
        }
        for d in &diffs {
            r2.apply(Diff::from_json(d).unwrap());
        }
        assert_eq!(r1.state.to_json(), home.state.to_json());
        assert_eq!(r2.state.to_json(), home.state.to_json());
    }

    #[test]
    fn ops_round_trip_and_garbage_is_refused() {
        for op in [
            Op::Track {
                topic: "room:é".into(),
                key: "alice".into(),
                meta: meta("abc", r#""s":1"#),
            },
            Op::Untrack {
                topic: "t".into(),
                key: "".into(),
                phx_ref: r("r"),
            },
        ] {
            assert_eq!(Op::decode(&op.encode()), Some(op));
        }
        assert_eq!(Op::decode(&[OP_KIND, 0, 255, 255, 255, 255]), None);
        let mut b = Op::Untrack {
            topic: "t".into(),
            key: "k".into(),
            phx_ref: r("r"),
        }
        .encode();
        b[2] = 200; // topic length past the end
        assert_eq!(Op::decode(&b), None);
    }

    #[test]
    fn refs_are_16_url_safe_characters_and_unique() {
        let mut a = Refs::new([7; 12], 0);
        let mut b = Refs::new([7; 12], 1);
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            for x in [a.fresh(), b.fresh()] {
                assert_eq!(Ref::parse(x.as_str()), Some(x), "16 url-safe characters");
                assert!(seen.insert(x));
            }
        }
    }

    #[test]
    fn the_tracker_publishes_once_per_window_and_forgets_empty_topics() {
        let t0 = Instant::now();
        let w = std::time::Duration::from_millis(100);
        let mut t = Tracker::new(Refs::new([1; 12], 0));
        let track = |k: &str, name: &str| Op::Track {
            topic: "room:1".into(),
            key: k.into(),
            meta: meta(name, ""),
        };
        assert!(t.on_op(track("a", "r1"), 10, t0));
        assert!(t.on_op(track("b", "r2"), 10, t0 + w / 2));
        assert!(
            t.due(t0 + w / 2, w, 1 << 20, 1 << 20).is_empty(),
            "the window is still open"
        );
        let due = t.due(t0 + w, w, 1 << 20, 1 << 20);
        assert_eq!(due.len(), 1, "one diff for both joins");
        t.apply_published("room:1", &due[0].1);
        assert_eq!(t.entries("room:1"), 2);
        assert_eq!(t.home_totals(), (1, 2));
        for (k, name) in [("a", "r1"), ("b", "r2")] {
            let op = Op::Untrack {
                topic: "room:1".into(),
                key: k.into(),
                phx_ref: r(name),
            };
            assert!(t.on_op(op, 10, t0 + 2 * w));
        }
        let due = t.due(t0 + 3 * w, w, 1 << 20, 1 << 20);
        t.apply_published("room:1", &due[0].1);
        assert_eq!(t.entries("room:1"), 0);
        assert_eq!(t.home_totals(), (0, 0), "nothing kept for an empty topic");
        assert_eq!(&*t.state_json("room:1"), "{}");
    }

    #[test]
    fn a_nodes_state_replaces_what_a_core_held_of_it() {
        let mut t = Tracker::new(Refs::new([2; 12], 0));
        let other = t.origin("b#1");
        let state = |names: &[&str]| {
            let mut d: Diff<Meta> = Diff::default();
            for n in names {
                d.joins.add(n, meta(n, ""));
            }
            d.to_json()
        };
        // First sight: all joins.
        let d = t.seed("room:1", &state(&["x", "y"]), other).unwrap();
        assert_eq!(Diff::from_json(&d).unwrap().joins.entries(), 2);
        // The same again: nothing to tell the members.
        assert!(t.seed("room:1", &state(&["x", "y"]), other).is_none());
        // Fell behind: y left and z joined meanwhile.
        let d = Diff::from_json(&t.seed("room:1", &state(&["x", "z"]), other).unwrap()).unwrap();
        assert_eq!((d.joins.entries(), d.leaves.entries()), (1, 1));
        assert!(d.joins.has("z", r("z")) && d.leaves.has("y", r("y")));
        // This node's own metas (origin 0) are never taken away by another node's state.
        t.apply_published("room:1", &state(&["mine"]));
        let d = Diff::from_json(&t.seed("room:1", &state(&[]), other).unwrap()).unwrap();
        assert_eq!(d.leaves.entries(), 2, "x and z, not mine");
        assert_eq!(t.entries("room:1"), 1);
    }

    #[test]
    fn every_topic_has_one_home() {
        let homes: Vec<usize> = (0..1000)
            .map(|i| home_of(&format!("room:{i}"), 2))
            .collect();
        assert!(homes.iter().all(|&h| h < 2));
        assert!(homes.iter().filter(|&&h| h == 0).count() > 400, "spread");
        assert_eq!(home_of("room:1", 2), home_of("room:1", 2));
        assert_eq!(home_of("x", 1), 0);
    }
}

//! The `presence` scenario: one process's share of a presence join storm.
//!
//! Every socket connects (no token: a server with `presence_anonymous = true` tracks it under
//! its own random id, so every socket is one presence key), joins the topic as soon as it can
//! (no rate, at most `--max-inflight` opening at once), and then keeps the presence state it is
//! sent, like phoenix.js's `Presence`: `presence_state` replaces the view, every
//! `presence_diff` adds its joins' metas and removes its leaves' metas by `phx_ref`; diffs that
//! come before the state wait for it. A socket's view is full when it holds `--expect-keys`
//! keys; the time it first is, from the storm's common start (`--start-at-ns`, CLOCK_REALTIME,
//! so every process on the machine measures from the same instant), is what the run is about.
//!
//! The process prints two JSON lines on stdout: `ready` once every socket has joined and has a
//! full view (or failed, or `--agree-timeout-secs` is over), with its counts and the sorted
//! per-socket times; then, after stdin has a line or closes (the parent has sampled the server),
//! it closes its sockets and prints `done`. Progress goes to stderr.
//!
//! A view is cheap: keys and `phx_ref`s are interned once per process to u32 ids, and a view is
//! one u32 per key (the key's only `phx_ref`), with a side map for the rare key with several
//! metas. By default each distinct payload text is parsed once per process (keyed by its
//! length and a 128-bit hash) and the parsed payload is applied to every socket's own view:
//! every member is sent the same diff bytes, and the joiners a core answers between two diffs
//! the same state bytes. `--no-parse-cache` parses every payload on its socket.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::io::Write;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use futures_util::{SinkExt, StreamExt};
use serde::de::{Deserializer, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::time::{Instant, interval_at, sleep, sleep_until};
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{PresenceArgs, Target, parse_source_ips};
use crate::client::{self, Opened};
use crate::proto::{self, Incoming};
use crate::session::lock;

/// How long a closing socket waits for the server's close frame and FIN.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------------
// One socket's view of the topic's presences.

/// A slot holding this value has several metas, kept in `View::multi`.
const MULTI: u32 = u32::MAX;

/// The presences one socket knows: for each key id, the `phx_ref` ids of its metas.
#[derive(Default, Debug)]
pub struct View {
    /// By key id: 0 when absent, the ref id of its one meta, or [`MULTI`].
    slots: Vec<u32>,
    /// Keys with two or more metas: their ref ids (no duplicates).
    multi: HashMap<u32, Vec<u32>>,
    present: usize,
}

impl View {
    /// Keys with at least one meta.
    pub fn len(&self) -> usize {
        self.present
    }

    /// The ref ids of `key`'s metas (empty when absent).
    #[cfg(test)]
    pub fn refs(&self, key: u32) -> Vec<u32> {
        match self.slots.get(key as usize).copied().unwrap_or(0) {
            0 => Vec::new(),
            MULTI => self.multi[&key].clone(),
            r => vec![r],
        }
    }

    fn add(&mut self, key: u32, r: u32) {
        debug_assert!(r != 0 && r != MULTI);
        let k = key as usize;
        if k >= self.slots.len() {
            self.slots.resize(k + 1, 0);
        }
        match self.slots[k] {
            0 => {
                self.slots[k] = r;
                self.present += 1;
            }
            MULTI => {
                let v = self.multi.entry(key).or_default();
                if !v.contains(&r) {
                    v.push(r);
                }
            }
            x if x == r => {}
            x => {
                self.slots[k] = MULTI;
                self.multi.insert(key, vec![x, r]);
            }
        }
    }

    fn remove(&mut self, key: u32, r: u32) {
        let k = key as usize;
        match self.slots.get(k).copied().unwrap_or(0) {
            0 => {}
            MULTI => {
                let v = self.multi.entry(key).or_default();
                v.retain(|&x| x != r);
                match v.len() {
                    0 => {
                        self.multi.remove(&key);
                        self.slots[k] = 0;
                        self.present -= 1;
                    }
                    1 => {
                        self.slots[k] = v[0];
                        self.multi.remove(&key);
                    }
                    _ => {}
                }
            }
            x if x == r => {
                self.slots[k] = 0;
                self.present -= 1;
            }
            _ => {}
        }
    }

    /// `presence_diff`: joins first (their metas are added to the key's), then leaves (their
    /// metas are removed; a key with none left is gone), as phoenix.js's `syncDiff`.
    pub fn apply_diff(&mut self, d: &Parsed) {
        for &(k, r) in &d.joins {
            self.add(k, r);
        }
        for &(k, r) in &d.leaves {
            self.remove(k, r);
        }
    }

    /// `presence_state`: the view becomes exactly this state.
    pub fn set_state(&mut self, s: &Parsed) {
        self.slots.fill(0);
        self.multi.clear();
        self.present = 0;
        self.apply_diff(s);
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing presence payloads into (key id, ref id) pairs.

/// Key and `phx_ref` strings to small ids (from 1), one table each, shared by a process.
#[derive(Default)]
pub struct Interner {
    keys: HashMap<Box<str>, u32, FxBuild>,
    refs: HashMap<Box<str>, u32, FxBuild>,
}

fn intern(map: &mut HashMap<Box<str>, u32, FxBuild>, s: &str) -> u32 {
    if let Some(&id) = map.get(s) {
        return id;
    }
    let id = map.len() as u32 + 1;
    map.insert(s.into(), id);
    id
}

impl Interner {
    pub fn keys(&self) -> usize {
        self.keys.len()
    }
}

/// A state or a diff: one (key id, ref id) pair per meta. A state has no leaves.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub joins: Vec<(u32, u32)>,
    pub leaves: Vec<(u32, u32)>,
}

#[derive(Deserialize)]
struct Key<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow)]
    phx_ref: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow)]
    metas: Vec<Meta<'a>>,
}

/// `{key: {"metas": [{"phx_ref": ..}, ..]}, ..}` as (key, phx_ref) pairs, in order.
struct Pairs<'a>(Vec<(Cow<'a, str>, Cow<'a, str>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Pairs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = Pairs<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a presence map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Pairs<'a>, A::Error> {
                let mut out = Vec::with_capacity(m.size_hint().unwrap_or(0));
                while let Some(Key(k)) = m.next_key::<Key<'de>>()? {
                    let e: Entry<'de> = m.next_value()?;
                    for meta in e.metas {
                        out.push((k.clone(), meta.phx_ref));
                    }
                }
                Ok(Pairs(out))
            }
        }
        d.deserialize_map(V(PhantomData))
    }
}

#[derive(Deserialize)]
struct DiffWire<'a> {
    #[serde(borrow)]
    joins: Pairs<'a>,
    #[serde(borrow)]
    leaves: Pairs<'a>,
}

fn ids(pairs: Pairs<'_>, it: &mut Interner) -> Vec<(u32, u32)> {
    pairs
        .0
        .iter()
        .map(|(k, r)| (intern(&mut it.keys, k), intern(&mut it.refs, r)))
        .collect()
}

/// The payload of `presence_state`.
pub fn parse_state(payload: &str, it: &Mutex<Interner>) -> Result<Parsed, serde_json::Error> {
    let pairs: Pairs<'_> = serde_json::from_str(payload)?;
    Ok(Parsed {
        joins: ids(pairs, &mut lock(it)),
        leaves: Vec::new(),
    })
}

/// The payload of `presence_diff`.
pub fn parse_diff(payload: &str, it: &Mutex<Interner>) -> Result<Parsed, serde_json::Error> {
    let w: DiffWire<'_> = serde_json::from_str(payload)?;
    let mut it = lock(it);
    Ok(Parsed {
        joins: ids(w.joins, &mut it),
        leaves: ids(w.leaves, &mut it),
    })
}

/// Two 64-bit hashes of a text in one pass, with its length: the parse cache's key (a collision
/// among the few hundred texts of a storm is out of reach; the text itself is not kept).
fn text_key(s: &str) -> (usize, u64, u64) {
    const K1: u64 = 0x517c_c1b7_2722_0a95;
    const K2: u64 = 0x9e37_79b9_7f4a_7c15;
    let b = s.as_bytes();
    let (mut h1, mut h2) = (b.len() as u64, !(b.len() as u64));
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h1 = (h1.rotate_left(5) ^ w).wrapping_mul(K1);
        h2 = (h2 ^ w).wrapping_mul(K2).rotate_left(29);
    }
    for &x in chunks.remainder() {
        h1 = (h1.rotate_left(5) ^ u64::from(x)).wrapping_mul(K1);
        h2 = (h2 ^ u64::from(x)).wrapping_mul(K2).rotate_left(29);
    }
    (b.len(), h1, h2 ^ (h2 >> 31))
}

/// A fast hasher for the interner's short keys and the cache's already-hashed keys.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl std::hash::Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &x in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(x)).wrapping_mul(0x517c_c1b7_2722_0a95);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
}

pub type FxBuild = std::hash::BuildHasherDefault<Fx>;

/// Parsed payloads by their text's key. Every member of a topic is sent the same diff bytes,
/// and the joiners a core answers between two diffs are sent the same state bytes, so a storm
/// has a few hundred distinct texts for millions of receipts.
#[derive(Default)]
pub struct ParseCache {
    map: HashMap<(usize, u64, u64), Arc<Parsed>, FxBuild>,
    pub hits: u64,
    pub misses: u64,
}

/// Entries kept before a cache starts over.
const CACHE_MAX: usize = 4096;

impl ParseCache {
    pub fn get_or_parse(
        cache: &Mutex<ParseCache>,
        payload: &str,
        parse: impl FnOnce(&str) -> Result<Parsed, serde_json::Error>,
    ) -> Result<Arc<Parsed>, serde_json::Error> {
        let key = text_key(payload);
        {
            let mut c = lock(cache);
            if let Some(p) = c.map.get(&key).cloned() {
                c.hits += 1;
                return Ok(p);
            }
        }
        let p = Arc::new(parse(payload)?);
        let mut c = lock(cache);
        c.misses += 1;
        if c.map.len() >= CACHE_MAX {
            c.map.clear();
        }
        c.map.insert(key, p.clone());
        Ok(p)
    }
}

// ---------------------------------------------------------------------------------------------
// The process: its sockets and what they count.

#[derive(Default)]
struct Counters {
    attempted: AtomicU64,
    joined: AtomicU64,
    failed: AtomicU64,
    settled: AtomicU64,
    open: AtomicU64,
    alive: AtomicU64,
    /// Sockets whose view has been full at least once.
    full: AtomicU64,
    /// Joined sockets that ended before their view was full.
    ended_unfull: AtomicU64,
    diffs: AtomicU64,
    states: AtomicU64,
    diff_bytes: AtomicU64,
    state_bytes: AtomicU64,
    /// Every text message's length (replies and heartbeats too).
    bytes: AtomicU64,
    frames: AtomicU64,
    diffs_before_state: AtomicU64,
    malformed: AtomicU64,
    other: AtomicU64,
    heartbeats_ok: AtomicU64,
    /// The largest view any socket held.
    max_keys: AtomicU64,
    /// Sockets whose view held more than `expect` keys at some point.
    over_full: AtomicU64,
}

struct Shared {
    args: PresenceArgs,
    target: Target,
    ips: Vec<std::net::Ipv4Addr>,
    start_ns: u64,
    expect: usize,
    intern: Mutex<Interner>,
    diff_cache: Mutex<ParseCache>,
    state_cache: Mutex<ParseCache>,
    c: Counters,
    failures: Mutex<BTreeMap<String, u64>>,
    drops: Mutex<BTreeMap<String, u64>>,
    /// Join reply times, microseconds from the start.
    join_us: Mutex<Vec<u64>>,
    /// First full view times, microseconds from the start.
    full_us: Mutex<Vec<u64>>,
    stop: watch::Receiver<bool>,
    ready: AtomicBool,
}

fn bump(map: &Mutex<BTreeMap<String, u64>>, key: String) {
    *lock(map).entry(key).or_insert(0) += 1;
}

impl Shared {
    fn since_start_us(&self) -> u64 {
        proto::now_ns().saturating_sub(self.start_ns) / 1000
    }

    fn fail(&self, kind: String) {
        bump(&self.failures, kind);
        self.c.failed.fetch_add(1, Relaxed);
        self.c.settled.fetch_add(1, Relaxed);
    }
}

/// The `reason` of an error reply, for counting refusals by kind.
fn reply_reason(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|w| w[4]["response"]["reason"].as_str().map(str::to_string))
        .unwrap_or_else(|| "unknown".to_string())
}

/// One socket's life as far as its messages go.
struct Sock {
    view: View,
    have_state: bool,
    pending: Vec<Arc<Parsed>>,
    full: bool,
    over: bool,
}

enum Next {
    Continue,
    Joined,
    Refused(String),
    Closed(String),
}

impl Sock {
    fn check(&mut self, sh: &Shared) {
        let n = self.view.len();
        sh.c.max_keys.fetch_max(n as u64, Relaxed);
        if !self.full && n >= sh.expect {
            self.full = true;
            lock(&sh.full_us).push(sh.since_start_us());
            sh.c.full.fetch_add(1, Relaxed);
        }
        if !self.over && n > sh.expect {
            self.over = true;
            sh.c.over_full.fetch_add(1, Relaxed);
        }
    }

    fn on_text(&mut self, sh: &Shared, text: &str) -> Next {
        let c = &sh.c;
        c.frames.fetch_add(1, Relaxed);
        c.bytes.fetch_add(text.len() as u64, Relaxed);
        let (topic, event, payload): (Cow<'_, str>, Cow<'_, str>, &RawValue) =
            match proto::parse(text) {
                Ok(Incoming::Reply { msg_ref, topic, ok }) => {
                    if topic == sh.args.topic && msg_ref.as_deref() == Some("1") {
                        return if ok {
                            Next::Joined
                        } else {
                            Next::Refused(reply_reason(text))
                        };
                    }
                    if topic == "phoenix" && ok {
                        c.heartbeats_ok.fetch_add(1, Relaxed);
                    } else {
                        c.other.fetch_add(1, Relaxed);
                    }
                    return Next::Continue;
                }
                Ok(Incoming::Event {
                    topic,
                    event,
                    payload,
                }) => (topic, event, payload),
                Err(_) => {
                    c.malformed.fetch_add(1, Relaxed);
                    return Next::Continue;
                }
            };
        if topic != sh.args.topic {
            c.other.fetch_add(1, Relaxed);
            return Next::Continue;
        }
        match &*event {
            "presence_state" => {
                c.states.fetch_add(1, Relaxed);
                c.state_bytes.fetch_add(text.len() as u64, Relaxed);
                let parsed = if sh.args.no_parse_cache {
                    parse_state(payload.get(), &sh.intern).map(Arc::new)
                } else {
                    ParseCache::get_or_parse(&sh.state_cache, payload.get(), |t| {
                        parse_state(t, &sh.intern)
                    })
                };
                let Ok(p) = parsed else {
                    c.malformed.fetch_add(1, Relaxed);
                    return Next::Continue;
                };
                self.view.set_state(&p);
                self.have_state = true;
                for d in std::mem::take(&mut self.pending) {
                    self.view.apply_diff(&d);
                }
                self.check(sh);
            }
            "presence_diff" => {
                c.diffs.fetch_add(1, Relaxed);
                c.diff_bytes.fetch_add(text.len() as u64, Relaxed);
                let parsed = if sh.args.no_parse_cache {
                    parse_diff(payload.get(), &sh.intern).map(Arc::new)
                } else {
                    ParseCache::get_or_parse(&sh.diff_cache, payload.get(), |t| {
                        parse_diff(t, &sh.intern)
                    })
                };
                let Ok(d) = parsed else {
                    c.malformed.fetch_add(1, Relaxed);
                    return Next::Continue;
                };
                if self.have_state {
                    self.view.apply_diff(&d);
                    self.check(sh);
                } else {
                    c.diffs_before_state.fetch_add(1, Relaxed);
                    self.pending.push(d);
                }
            }
            "phx_close" | "phx_error" => return Next::Closed(event.into_owned()),
            _ => {
                c.other.fetch_add(1, Relaxed);
            }
        }
        Next::Continue
    }
}

/// Socket `k` of this process: open, join, keep its view until told to stop.
async fn socket(sh: Arc<Shared>, k: usize, permit: OwnedSemaphorePermit) {
    run_socket(&sh, k, permit).await;
    sh.c.alive.fetch_sub(1, Relaxed);
}

async fn run_socket(sh: &Shared, k: usize, permit: OwnedSemaphorePermit) {
    let a = &sh.args;
    let i = a.first + k;
    let source = Some(sh.ips[i % sh.ips.len()]);
    let limit = Duration::from_millis(a.connect_timeout_ms);
    let join_by = Instant::now() + limit;
    let mut ws = match tokio::time::timeout(limit, client::upgrade(&sh.target, source)).await {
        Ok(Ok(Opened { ws, .. })) => ws,
        Ok(Err(e)) => return sh.fail(e.kind),
        Err(_) => return sh.fail("timeout".to_string()),
    };
    if ws
        .send(Message::text(proto::join(1, &a.topic)))
        .await
        .is_err()
    {
        return sh.fail("join_send".to_string());
    }
    let mut permit = Some(permit);
    let mut stop = sh.stop.clone();
    let every = Duration::from_secs(a.heartbeat_secs.max(1));
    let mut beat = interval_at(Instant::now() + every, every);
    let mut next_ref = 2u64;
    let mut s = Sock {
        view: View::default(),
        have_state: false,
        pending: Vec::new(),
        full: false,
        over: false,
    };
    let ended = |label: String, joined: bool, full: bool| {
        if joined {
            bump(&sh.drops, label);
            sh.c.open.fetch_sub(1, Relaxed);
            if !full && !sh.args.plain {
                sh.c.ended_unfull.fetch_add(1, Relaxed);
            }
        } else {
            sh.fail(format!("join_{label}"));
        }
    };
    loop {
        let joined = permit.is_none();
        if *stop.borrow_and_update() {
            if !joined {
                sh.fail("stopped".to_string());
            }
            client::close_politely(&mut ws, CLOSE_WAIT).await;
            return;
        }
        tokio::select! {
            biased;
            _ = stop.changed() => {}
            _ = sleep_until(join_by), if !joined => {
                return sh.fail("timeout".to_string());
            }
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => match s.on_text(sh, t.as_str()) {
                    Next::Continue => {}
                    Next::Joined if !joined => {
                        permit = None;
                        lock(&sh.join_us).push(sh.since_start_us());
                        sh.c.joined.fetch_add(1, Relaxed);
                        sh.c.open.fetch_add(1, Relaxed);
                        sh.c.settled.fetch_add(1, Relaxed);
                    }
                    Next::Joined => {
                        sh.c.other.fetch_add(1, Relaxed);
                    }
                    Next::Refused(reason) => {
                        sh.fail(format!("join_refused: {reason}"));
                        client::close_politely(&mut ws, CLOSE_WAIT).await;
                        return;
                    }
                    Next::Closed(ev) => return ended(ev, joined, s.full),
                },
                Some(Ok(Message::Close(f))) => {
                    return ended(client::close_label(f.as_ref()), joined, s.full);
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return ended(client::read_error_label(&e), joined, s.full),
                None => return ended("eof".to_string(), joined, s.full),
            },
            _ = beat.tick() => {
                let hb = proto::heartbeat(next_ref);
                next_ref += 1;
                if ws.send(Message::text(hb)).await.is_err() {
                    return ended("heartbeat_send".to_string(), joined, s.full);
                }
            }
        }
    }
}

/// Nearest-rank percentile of a sorted slice.
fn pct(sorted: &[u64], q: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

#[derive(Serialize)]
struct Times {
    count: usize,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

fn times(sorted: &[u64]) -> Times {
    let ms = |v: Option<u64>| v.map(|us| us as f64 / 1000.0);
    Times {
        count: sorted.len(),
        p50_ms: ms(pct(sorted, 0.5)),
        p90_ms: ms(pct(sorted, 0.9)),
        p99_ms: ms(pct(sorted, 0.99)),
        max_ms: ms(sorted.last().copied()),
    }
}

fn emit(v: &Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn counts(sh: &Shared) -> Value {
    let c = &sh.c;
    let l = |a: &AtomicU64| a.load(Relaxed);
    let (dc, sc) = (lock(&sh.diff_cache), lock(&sh.state_cache));
    serde_json::json!({
        "attempted": l(&c.attempted),
        "joined": l(&c.joined),
        "failed": l(&c.failed),
        "open": l(&c.open),
        "full_views": l(&c.full),
        "ended_before_full": l(&c.ended_unfull),
        "diffs_received": l(&c.diffs),
        "diff_bytes_received": l(&c.diff_bytes),
        "states_received": l(&c.states),
        "state_bytes_received": l(&c.state_bytes),
        "bytes_received": l(&c.bytes),
        "frames_received": l(&c.frames),
        "diffs_before_state": l(&c.diffs_before_state),
        "malformed": l(&c.malformed),
        "other": l(&c.other),
        "heartbeats_ok": l(&c.heartbeats_ok),
        "max_keys_seen": l(&c.max_keys),
        "views_over_expected": l(&c.over_full),
        "distinct_keys_seen": lock(&sh.intern).keys(),
        "parse_cache": {"enabled": !sh.args.no_parse_cache},
        "diff_cache": {"hits": dc.hits, "misses": dc.misses},
        "state_cache": {"hits": sc.hits, "misses": sc.misses},
        "failures": lock(&sh.failures).clone(),
        "drops": lock(&sh.drops).clone(),
    })
}

pub async fn run(args: PresenceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sockets > 0, "--sockets must be > 0");
    let target = Target::from_url(&args.url)?;
    let ips = parse_source_ips(&args.source_ips)?;
    let expect = args.expect_keys.unwrap_or(args.sockets);
    let now = proto::now_ns();
    let start_ns = if args.start_at_ns == 0 {
        now
    } else {
        args.start_at_ns
    };
    anyhow::ensure!(
        start_ns <= now + 120_000_000_000,
        "--start-at-ns is more than 2 minutes away"
    );
    let (stop_tx, stop_rx) = watch::channel(false);
    let sh = Arc::new(Shared {
        target,
        ips,
        start_ns,
        expect,
        intern: Mutex::default(),
        diff_cache: Mutex::default(),
        state_cache: Mutex::default(),
        c: Counters::default(),
        failures: Mutex::default(),
        drops: Mutex::default(),
        join_us: Mutex::new(Vec::with_capacity(args.sockets)),
        full_us: Mutex::new(Vec::with_capacity(args.sockets)),
        stop: stop_rx,
        ready: AtomicBool::new(false),
        args,
    });

    // The parent's word (a line, or EOF) releases the sockets.
    let (release_tx, mut release) = watch::channel(false);
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        let _ = lines.next_line().await;
        release_tx.send_replace(true);
    });

    if start_ns > now {
        sleep(Duration::from_nanos(start_ns - now)).await;
    }
    let n = sh.args.sockets;
    let ramp = {
        let sh = sh.clone();
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(sh.args.max_inflight.max(1)));
            for k in 0..n {
                let Ok(p) = permits.clone().acquire_owned().await else {
                    break;
                };
                if *sh.stop.borrow() {
                    break;
                }
                sh.c.attempted.fetch_add(1, Relaxed);
                sh.c.alive.fetch_add(1, Relaxed);
                tokio::spawn(socket(sh.clone(), k, p));
            }
        })
    };

    let tag = format!("[presence {}]", sh.args.index);
    let agree_by = Instant::now()
        + Duration::from_secs(sh.args.agree_timeout_secs).saturating_sub(Duration::from_nanos(
            proto::now_ns().saturating_sub(start_ns),
        ));
    let mut last_print = Instant::now();
    let mut timed_out = false;
    let mut released_early = false;
    loop {
        let c = &sh.c;
        let (settled, joined, failed, full, unfull) = (
            c.settled.load(Relaxed),
            c.joined.load(Relaxed),
            c.failed.load(Relaxed),
            c.full.load(Relaxed),
            c.ended_unfull.load(Relaxed),
        );
        let all_settled = settled >= n as u64;
        let done = all_settled && (sh.args.plain || full + unfull >= joined);
        if last_print.elapsed() >= Duration::from_secs(2) || done {
            last_print = Instant::now();
            eprintln!(
                "{tag} {:6.1}s joined {joined} failed {failed} full {full} of {n}, diffs {}, {:.1} MB",
                sh.since_start_us() as f64 / 1e6,
                c.diffs.load(Relaxed),
                c.bytes.load(Relaxed) as f64 / 1e6
            );
        }
        if done {
            break;
        }
        if Instant::now() >= agree_by {
            timed_out = true;
            eprintln!("{tag} agreement wait over: {full} of {joined} joined sockets full");
            break;
        }
        if *release.borrow() {
            released_early = true;
            break;
        }
        sleep(Duration::from_millis(20)).await;
    }
    sh.ready.store(true, Relaxed);
    let ready_us = sh.since_start_us();
    let mut join_us = lock(&sh.join_us).clone();
    let mut full_us = lock(&sh.full_us).clone();
    join_us.sort_unstable();
    full_us.sort_unstable();
    let mut ready = serde_json::json!({
        "event": "ready",
        "index": sh.args.index,
        "topic": sh.args.topic,
        "plain": sh.args.plain,
        "sockets": n,
        "expect_keys": expect,
        "start_at_ns": start_ns,
        "ready_after_ms": ready_us as f64 / 1000.0,
        "timed_out": timed_out,
        "released_early": released_early,
        "join": times(&join_us),
        "full_view": times(&full_us),
        "client_rss_bytes": crate::probe::self_rss(),
        "join_us": join_us,
        "full_view_us": full_us,
    });
    if let (Value::Object(r), Value::Object(c)) = (&mut ready, counts(&sh)) {
        r.extend(c);
    }
    emit(&ready);
    let diffs_at_ready = sh.c.diffs.load(Relaxed);

    // Hold until the parent has sampled the server, bounded.
    let hold_until = Instant::now() + Duration::from_secs(sh.args.hold_secs);
    while !*release.borrow() && Instant::now() < hold_until {
        tokio::select! {
            _ = release.changed() => {}
            _ = sleep_until(hold_until) => {}
        }
    }
    let open_at_stop = sh.c.open.load(Relaxed);
    let diffs_at_stop = sh.c.diffs.load(Relaxed);
    stop_tx.send_replace(true);
    ramp.abort();
    let close_by = Instant::now() + CLOSE_WAIT + Duration::from_secs(5);
    while sh.c.alive.load(Relaxed) > 0 && Instant::now() < close_by {
        sleep(Duration::from_millis(20)).await;
    }
    let mut done = serde_json::json!({
        "event": "done",
        "index": sh.args.index,
        "open_at_stop": open_at_stop,
        "diffs_between_ready_and_stop": diffs_at_stop - diffs_at_ready,
        "still_alive": sh.c.alive.load(Relaxed),
    });
    if let (Value::Object(r), Value::Object(c)) = (&mut done, counts(&sh)) {
        r.extend(c);
    }
    emit(&done);
    std::io::stdout().flush().context("stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn it() -> Mutex<Interner> {
        Mutex::default()
    }

    fn key(it: &Mutex<Interner>, k: &str) -> u32 {
        intern(&mut lock(it).keys, k)
    }

    fn meta(r: &str) -> String {
        format!(r#"{{"metas":[{{"phx_ref":"{r}","online_at":"1"}}]}}"#)
    }

    #[test]
    fn state_then_diffs_by_phx_ref() {
        let it = it();
        let mut v = View::default();
        let state = format!(r#"{{"a":{},"b":{}}}"#, meta("ra"), meta("rb"));
        v.set_state(&parse_state(&state, &it).unwrap());
        assert_eq!(v.len(), 2);
        // c joins; a's own join repeated (the joiner sees its own join in a diff too): no double.
        let d = format!(
            r#"{{"joins":{{"c":{},"a":{}}},"leaves":{{}}}}"#,
            meta("rc"),
            meta("ra")
        );
        v.apply_diff(&parse_diff(&d, &it).unwrap());
        assert_eq!(v.len(), 3);
        assert_eq!(v.refs(key(&it, "a")).len(), 1);
        // b leaves.
        let d = format!(r#"{{"joins":{{}},"leaves":{{"b":{}}}}}"#, meta("rb"));
        v.apply_diff(&parse_diff(&d, &it).unwrap());
        assert_eq!(v.len(), 2);
        assert!(v.refs(key(&it, "b")).is_empty());
        // A leave of a ref the key does not have leaves it alone.
        let d = format!(r#"{{"joins":{{}},"leaves":{{"a":{}}}}}"#, meta("zz"));
        v.apply_diff(&parse_diff(&d, &it).unwrap());
        assert_eq!(v.len(), 2);
        // A leave of an unknown key is ignored.
        let d = format!(r#"{{"joins":{{}},"leaves":{{"q":{}}}}}"#, meta("rq"));
        v.apply_diff(&parse_diff(&d, &it).unwrap());
        assert_eq!(v.len(), 2);
        // A new state replaces the view.
        let state = format!(r#"{{"z":{}}}"#, meta("rz"));
        v.set_state(&parse_state(&state, &it).unwrap());
        assert_eq!(v.len(), 1);
        assert!(v.refs(key(&it, "a")).is_empty());
    }

    #[test]
    fn several_metas_per_key_and_updates() {
        let it = it();
        let mut v = View::default();
        let two = r#"{"u":{"metas":[{"phx_ref":"r1"},{"phx_ref":"r2"}]}}"#;
        v.set_state(&parse_state(two, &it).unwrap());
        let u = key(&it, "u");
        assert_eq!((v.len(), v.refs(u).len()), (1, 2));
        // An update: join of the new meta (phx_ref_prev the old), leave of the old.
        let d = r#"{"joins":{"u":{"metas":[{"phx_ref":"r3","phx_ref_prev":"r1","s":1}]}},"leaves":{"u":{"metas":[{"phx_ref":"r1"}]}}}"#;
        v.apply_diff(&parse_diff(d, &it).unwrap());
        assert_eq!((v.len(), v.refs(u).len()), (1, 2));
        let d = r#"{"joins":{},"leaves":{"u":{"metas":[{"phx_ref":"r2"}]}}}"#;
        v.apply_diff(&parse_diff(d, &it).unwrap());
        assert_eq!(v.refs(u), vec![lock(&it).refs["r3"]]);
        let d = r#"{"joins":{},"leaves":{"u":{"metas":[{"phx_ref":"r3"}]}}}"#;
        v.apply_diff(&parse_diff(d, &it).unwrap());
        assert_eq!(v.len(), 0);
        // Join and leave of the same ref in one diff: joins first, so it is gone.
        let d = r#"{"joins":{"w":{"metas":[{"phx_ref":"x"}]}},"leaves":{"w":{"metas":[{"phx_ref":"x"}]}}}"#;
        v.apply_diff(&parse_diff(d, &it).unwrap());
        assert_eq!(v.len(), 0);
    }

    #[test]
    fn malformed_payloads_are_errors() {
        let it = it();
        assert!(parse_diff(r#"{"joins":{}}"#, &it).is_err());
        assert!(parse_diff(r#"{"joins":{"a":{"metas":[{}]}},"leaves":{}}"#, &it).is_err());
        assert!(parse_state(r#"[1]"#, &it).is_err());
        assert!(parse_state(r#"{"a":{"metas":{}}}"#, &it).is_err());
        // Escaped keys still parse (owned, not borrowed).
        let p = parse_state(r#"{"a\"b":{"metas":[{"phx_ref":"r\u0041"}]}}"#, &it).unwrap();
        assert_eq!(p.joins.len(), 1);
        assert!(lock(&it).refs.contains_key("rA"));
        assert_eq!(parse_state("{}", &it).unwrap(), Parsed::default());
    }

    #[test]
    fn the_cache_parses_a_text_once() {
        let it = it();
        let cache = Mutex::<ParseCache>::default();
        let d1 = format!(r#"{{"joins":{{"a":{}}},"leaves":{{}}}}"#, meta("r1"));
        let d2 = format!(r#"{{"joins":{{"b":{}}},"leaves":{{}}}}"#, meta("r2"));
        let get = |d: &str| ParseCache::get_or_parse(&cache, d, |t| parse_diff(t, &it)).unwrap();
        let p1 = get(&d1);
        let p1b = get(&d1);
        let p2 = get(&d2);
        assert!(Arc::ptr_eq(&p1, &p1b));
        assert_ne!(*p1, *p2);
        let c = lock(&cache);
        assert_eq!((c.hits, c.misses), (1, 2));
        assert_ne!(text_key("abcdefgh1"), text_key("abcdefgh2"));
        assert_ne!(text_key("abcdefgh"), text_key("abcdefgh\0"));
        assert_ne!(text_key("ab"), text_key("ba"));
    }

    #[test]
    fn a_storm_of_many_sockets_converges() {
        // 50 keys joining in coalesced diffs of 7, each member joining at some point: every
        // view ends with all 50 keys, whatever it saw in its state.
        let it = it();
        let n = 50;
        let keys: Vec<String> = (0..n).map(|i| format!("k{i:02}")).collect();
        let entry = |i: usize| format!(r#""{}":{}"#, keys[i], meta(&format!("r{i}")));
        let diffs: Vec<String> = (0..n)
            .step_by(7)
            .map(|s| {
                let joins: Vec<String> = (s..(s + 7).min(n)).map(entry).collect();
                format!(r#"{{"joins":{{{}}},"leaves":{{}}}}"#, joins.join(","))
            })
            .collect();
        for joiner in 0..n {
            let batch = joiner / 7;
            // The state the joiner gets may already hold its whole batch (the server's live
            // state); the batch's diff then repeats them.
            let state_keys: Vec<String> = (0..((batch + 1) * 7).min(n)).map(entry).collect();
            let mut v = View::default();
            v.set_state(&parse_state(&format!("{{{}}}", state_keys.join(",")), &it).unwrap());
            for d in &diffs[batch..] {
                v.apply_diff(&parse_diff(d, &it).unwrap());
            }
            assert_eq!(v.len(), n, "joiner {joiner}");
        }
        assert_eq!(pct(&[1, 2, 3, 4], 0.5), Some(2));
        assert_eq!(pct(&[1, 2, 3, 4], 1.0), Some(4));
        assert_eq!(pct(&[], 0.5), None);
    }
}

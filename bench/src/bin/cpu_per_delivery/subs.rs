//! The subscribers: each one connects, upgrades, joins `room:cpu`, then counts the broadcasts
//! of the current measurement (by the tag in their id), once each, until told to stop. They
//! send a heartbeat only when the coordinator asks (between measurements, never inside one).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, watch};

use crate::msg::{self, FRAME_LEN};
use crate::ws::{self, OP_CLOSE, OP_TEXT};

/// What the subscribers share with the coordinator (one thread: atomics never contend).
#[derive(Default)]
pub struct Shared {
    pub joined: AtomicU64,
    pub failed: AtomicU64,
    /// The measurement whose broadcasts count, and how many each subscriber expects.
    pub tag: AtomicU32,
    pub messages: AtomicU64,
    /// Distinct (subscriber, message) pairs of the current measurement.
    pub delivered: AtomicU64,
    pub target: AtomicU64,
    pub done: Notify,
    pub counts: Counts,
}

/// Counters a measurement reports (reset at its start, except `drops` and `heartbeat_ok`).
#[derive(Default)]
pub struct Counts {
    pub duplicated: AtomicU64,
    /// Broadcasts of an earlier measurement that arrived during this one.
    pub stale: AtomicU64,
    /// Broadcast frames not FRAME_LEN bytes on the wire.
    pub wrong_size: AtomicU64,
    pub other: AtomicU64,
    pub heartbeat_ok: AtomicU64,
    /// Subscribers the server closed or that failed.
    pub drops: AtomicU64,
}

#[derive(Debug, Clone, Serialize)]
pub struct CountsReport {
    pub duplicated: u64,
    pub stale: u64,
    pub wrong_size: u64,
    pub other: u64,
    pub drops: u64,
}

impl Shared {
    /// Start counting measurement `tag` of `messages` broadcasts to every joined subscriber.
    pub fn begin(&self, tag: u32, messages: usize) {
        let c = &self.counts;
        for a in [&c.duplicated, &c.stale, &c.wrong_size, &c.other] {
            a.store(0, Relaxed);
        }
        self.delivered.store(0, Relaxed);
        self.messages.store(messages as u64, Relaxed);
        self.target
            .store(self.joined.load(Relaxed) * messages as u64, Relaxed);
        self.tag.store(tag, Relaxed);
    }

    pub fn report(&self) -> CountsReport {
        let c = &self.counts;
        CountsReport {
            duplicated: c.duplicated.load(Relaxed),
            stale: c.stale.load(Relaxed),
            wrong_size: c.wrong_size.load(Relaxed),
            other: c.other.load(Relaxed),
            drops: c.drops.load(Relaxed),
        }
    }
}

/// Subscriber `i`: open and join (holding `permit` meanwhile), then count until `stop`.
pub async fn run(
    i: usize,
    addr: SocketAddr,
    path: String,
    sh: Arc<Shared>,
    permit: OwnedSemaphorePermit,
    mut beat: watch::Receiver<u64>,
    mut stop: watch::Receiver<bool>,
) {
    let opened = tokio::time::timeout(std::time::Duration::from_secs(20), open(i, addr, &path))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("timeout")));
    drop(permit);
    let (mut stream, mut buf) = match opened {
        Ok(s) => s,
        Err(e) => {
            if sh.failed.fetch_add(1, Relaxed) < 3 {
                eprintln!("cpu_per_delivery: subscriber {i}: {e:#}");
            }
            return;
        }
    };
    sh.joined.fetch_add(1, Relaxed);
    let (mut rd, mut wr) = stream.split();
    let mut tally = Tally::default();
    let mut mask = [0u8; 4];
    mask.copy_from_slice(&(i as u32).to_le_bytes());
    loop {
        if buf.capacity() - buf.len() < 4096 {
            buf.reserve(8192);
        }
        tokio::select! {
            biased;
            _ = stop.changed() => return,
            _ = beat.changed() => {
                let n = *beat.borrow_and_update();
                let mut out = Vec::new();
                ws::masked_text(&mut out, &msg::heartbeat(n), mask);
                if wr.write_all(&out).await.is_err() {
                    sh.counts.drops.fetch_add(1, Relaxed);
                    return;
                }
            }
            r = rd.read_buf(&mut buf) => {
                match r {
                    Ok(0) | Err(_) => {
                        sh.counts.drops.fetch_add(1, Relaxed);
                        return;
                    }
                    Ok(_) => {}
                }
                match tally.frames(&sh, &buf) {
                    Ok((used, closed)) => {
                        buf.drain(..used);
                        if closed {
                            sh.counts.drops.fetch_add(1, Relaxed);
                            return;
                        }
                    }
                    Err(e) => {
                        eprintln!("cpu_per_delivery: subscriber {i}: {e:#}");
                        sh.counts.drops.fetch_add(1, Relaxed);
                        return;
                    }
                }
            }
        }
    }
}

async fn open(
    i: usize,
    addr: SocketAddr,
    path: &str,
) -> anyhow::Result<(tokio::net::TcpStream, Vec<u8>)> {
    let (mut stream, mut buf) = ws::open(addr, path, i as u64).await?;
    let mut out = Vec::new();
    ws::masked_text(&mut out, &msg::join(), [7, 7, 7, 7]);
    stream.write_all(&out).await?;
    loop {
        if let Some((op, range, len)) = ws::parse(&buf)? {
            anyhow::ensure!(op == OP_TEXT, "frame of opcode {op} before the join reply");
            anyhow::ensure!(msg::is_ok_reply(&buf[range], "1"), "join refused");
            buf.drain(..len);
            buf.reserve(16 * 1024);
            return Ok((stream, buf));
        }
        buf.reserve(4096);
        anyhow::ensure!(
            stream.read_buf(&mut buf).await? > 0,
            "EOF before the join reply"
        );
    }
}

/// One subscriber's view of the current measurement: which of its messages it has seen.
#[derive(Default)]
struct Tally {
    tag: u32,
    seen: Vec<u64>,
}

impl Tally {
    /// Account every whole frame in `buf`; returns the bytes used and whether a close came.
    fn frames(&mut self, sh: &Shared, buf: &[u8]) -> anyhow::Result<(usize, bool)> {
        let mut at = 0;
        while let Some((op, range, len)) = ws::parse(&buf[at..])? {
            let payload = &buf[at + range.start..at + range.end];
            match op {
                OP_TEXT => self.text(sh, payload, len),
                OP_CLOSE => return Ok((at + len, true)),
                _ => {
                    sh.counts.other.fetch_add(1, Relaxed);
                }
            }
            at += len;
        }
        Ok((at, false))
    }

    fn text(&mut self, sh: &Shared, text: &[u8], wire_len: usize) {
        let c = &sh.counts;
        let Some((tag, k)) = msg::parse_id(text) else {
            let hb = msg::is_heartbeat_reply(text);
            (if hb { &c.heartbeat_ok } else { &c.other }).fetch_add(1, Relaxed);
            return;
        };
        if wire_len != FRAME_LEN {
            c.wrong_size.fetch_add(1, Relaxed);
        }
        let current = sh.tag.load(Relaxed);
        if tag != current {
            c.stale.fetch_add(1, Relaxed);
            return;
        }
        if self.tag != current || self.seen.is_empty() {
            self.tag = current;
            let words = (sh.messages.load(Relaxed) as usize).div_ceil(64).max(1);
            self.seen.clear();
            self.seen.resize(words, 0);
        }
        let (w, bit) = (k / 64, 1u64 << (k % 64));
        match self.seen.get_mut(w) {
            Some(word) if *word & bit == 0 => {
                *word |= bit;
                if sh.delivered.fetch_add(1, Relaxed) + 1 == sh.target.load(Relaxed) {
                    sh.done.notify_one();
                }
            }
            Some(_) => {
                c.duplicated.fetch_add(1, Relaxed);
            }
            None => {
                c.other.fetch_add(1, Relaxed);
            }
        }
    }
}

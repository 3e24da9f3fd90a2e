//! One core's world: its listener, its connection slots, its timer wheel, its scratch buffers.
//!
//! Everything here is owned by one glommio executor pinned to one CPU: `Rc`/`RefCell`, no locks.
//! A connection's socket and protocol state live in its own task ([`crate::conn`]); the shard
//! keeps only what other parts of the core must reach: the outbound queue, the waker, the deadline.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Waker;
use std::time::Instant;

use glommio::net::TcpListener;
use slab::Slab;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::wheel::{Entry, TICK, Wheel};

/// Size of the per-core read scratch buffer every connection reads into.
pub const READ_CHUNK: usize = 64 * 1024;
/// Small frames are copied into one per-core buffer of this size and sent with one syscall.
pub const WRITE_COALESCE: usize = 64 * 1024;

/// Signals set on a slot by the core, consumed by the connection task.
pub mod signal {
    /// The slot's deadline passed (the wheel fired).
    pub const TIMER: u8 = 1;
    /// The server is draining: close with 1001.
    pub const DRAIN: u8 = 2;
}

/// What the core keeps per connection (besides the connection task itself).
///
/// Layout (x86_64): waker 16 + queue 32 + out_bytes 4 + generation 4 + deadline 4 + signals 1,
/// padded to 64 bytes. Checked by `slot_is_small` below.
pub struct Slot {
    /// Wakes the connection task when something is queued or a signal is set.
    pub waker: Option<Waker>,
    /// Frames waiting to be written, shared (broadcasts are encoded once for everybody).
    pub outq: VecDeque<Arc<[u8]>>,
    /// Bytes in `outq` not yet written.
    pub out_bytes: u32,
    /// Distinguishes this connection from earlier users of the same slab key.
    pub generation: u32,
    /// Wheel tick at which the connection's current deadline passes; 0 = none.
    pub deadline: u32,
    /// Bit set of [`signal`] values.
    pub signals: u8,
}

impl Slot {
    /// Wake the task, if it is waiting.
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Counters of one core (read by `/health` and, later, `/metrics`).
#[derive(Default)]
pub struct Stats {
    pub accepted: Cell<u64>,
    pub upgraded: Cell<u64>,
    pub http_requests: Cell<u64>,
    pub accept_errors: Cell<u64>,
    pub handshake_timeouts: Cell<u64>,
    pub frames_in: Cell<u64>,
    pub frames_out: Cell<u64>,
}

impl Stats {
    pub fn bump(c: &Cell<u64>) {
        c.set(c.get() + 1);
    }
}

/// One core's state.
pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub slots: RefCell<Slab<Slot>>,
    pub wheel: RefCell<Wheel>,
    /// Every connection of this core reads into this buffer and parses it before yielding, so
    /// an idle connection holds no read buffer.
    pub scratch: RefCell<Box<[u8]>>,
    /// Coalescing buffer for small outbound frames.
    pub wbuf: RefCell<Vec<u8>>,
    pub stats: Stats,
    draining: Cell<bool>,
    next_generation: Cell<u32>,
    started: Instant,
}

impl Shard {
    pub fn new(id: usize, cfg: Arc<Config>) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            cfg,
            slots: RefCell::new(Slab::new()),
            wheel: RefCell::new(Wheel::new(crate::wheel::DEFAULT_BUCKETS)),
            scratch: RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice()),
            wbuf: RefCell::new(Vec::with_capacity(WRITE_COALESCE)),
            stats: Stats::default(),
            draining: Cell::new(false),
            next_generation: Cell::new(1),
            started: Instant::now(),
        })
    }

    /// True once the core has started draining (no new connections).
    pub fn is_draining(&self) -> bool {
        self.draining.get()
    }

    /// Number of connections (including those still in their HTTP phase).
    pub fn connections(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Allocate a slot for a new connection; returns (key, generation).
    pub fn open_slot(&self) -> (usize, u32) {
        let generation = self.next_generation.get();
        self.next_generation.set(generation.wrapping_add(1).max(1));
        let key = self.slots.borrow_mut().insert(Slot {
            waker: None,
            outq: VecDeque::new(),
            out_bytes: 0,
            generation,
            deadline: 0,
            signals: 0,
        });
        (key, generation)
    }

    /// Free a connection's slot (its queued frames are dropped with it).
    pub fn close_slot(&self, key: usize) {
        self.slots.borrow_mut().try_remove(key);
    }

    /// Set (or with `None` clear) a connection's deadline, `after` from now.
    pub fn set_deadline(&self, key: usize, after: Option<std::time::Duration>) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        match after {
            None => slot.deadline = 0,
            Some(d) => {
                let mut wheel = self.wheel.borrow_mut();
                let at = wheel.deadline_after(d);
                slot.deadline = at.min(u32::MAX as u64) as u32;
                wheel.schedule(
                    at,
                    Entry {
                        key: key as u32,
                        generation: slot.generation,
                    },
                );
            }
        }
    }

    /// Whether the slot's deadline has passed.
    pub fn deadline_passed(&self, key: usize) -> bool {
        let slots = self.slots.borrow();
        let now = self.wheel.borrow().now();
        slots
            .get(key)
            .is_some_and(|s| s.deadline != 0 && u64::from(s.deadline) <= now)
    }

    /// Take the pending signals of a slot.
    pub fn take_signals(&self, key: usize) -> u8 {
        let mut slots = self.slots.borrow_mut();
        slots
            .get_mut(key)
            .map_or(0, |s| std::mem::take(&mut s.signals))
    }

    /// Move the wheel to the current time and signal every connection whose deadline passed.
    fn tick(&self) {
        let now = (self.started.elapsed().as_nanos() / TICK.as_nanos()) as u64;
        let mut fired = Vec::new();
        self.wheel.borrow_mut().advance(now, &mut fired);
        if fired.is_empty() {
            return;
        }
        let mut slots = self.slots.borrow_mut();
        let mut wheel = self.wheel.borrow_mut();
        for e in fired {
            let Some(slot) = slots.get_mut(e.key as usize) else {
                continue;
            };
            if slot.generation != e.generation || slot.deadline == 0 {
                continue; // stale entry: the slot was reused or the deadline cleared
            }
            if u64::from(slot.deadline) <= now {
                slot.signals |= signal::TIMER;
                slot.wake();
            } else {
                wheel.schedule(u64::from(slot.deadline), e); // moved later, or past the horizon
            }
        }
    }

    /// Tell every connection to close with 1001.
    fn signal_drain(&self) {
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            slot.signals |= signal::DRAIN;
            slot.wake();
        }
    }

    /// Run this core until `shutdown` is set and the drain has finished (or timed out).
    pub async fn run(self: Rc<Self>, listener: TcpListener, shutdown: Arc<AtomicBool>) {
        let acceptor = glommio::spawn_local(accept_loop(self.clone(), listener));
        while !shutdown.load(Ordering::Relaxed) {
            glommio::timer::sleep(TICK).await;
            self.tick();
        }
        // Drain: stop accepting, ask every connection to close, wait for them (bounded).
        self.draining.set(true);
        acceptor.cancel().await;
        let open = self.connections();
        info!(core = self.id, open, "draining");
        self.signal_drain();
        let deadline = Instant::now() + self.cfg.shutdown_timeout();
        while self.connections() > 0 && Instant::now() < deadline {
            glommio::timer::sleep(TICK).await;
            self.tick();
        }
        let left = self.connections();
        if left > 0 {
            warn!(
                core = self.id,
                left, "shutdown timeout: dropping connections"
            );
        }
    }
}

async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok(stream) => {
                Stats::bump(&shard.stats.accepted);
                glommio::spawn_local(crate::conn::serve(shard.clone(), stream)).detach();
            }
            Err(e) => {
                // EMFILE/ENFILE/ENOBUFS: back off instead of spinning on the error.
                Stats::bump(&shard.stats.accept_errors);
                debug!(core = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(TICK).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_is_small() {
        // 16 (waker) + 32 (VecDeque) + 4 + 4 + 4 + 1, padded to 8.
        assert_eq!(std::mem::size_of::<Slot>(), 64);
        // A slab entry adds its discriminant in the padding.
        assert!(std::mem::size_of::<slab::Slab<Slot>>() <= 40);
    }
}

//! One core's world: its listener, its connection slots, its timer wheel, its scratch buffers.
//!
//! Everything here is owned by one glommio executor pinned to one CPU: `Rc`/`RefCell`, no locks.
//! A connection's socket and protocol state live in its own task ([`crate::transport::conn`]); the shard
//! keeps only what other parts of the core must reach: the outbound queue, the waker, the deadline.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::Waker;
use std::time::Instant;

use slab::Slab;
use tracing::{debug, info, warn};

use crate::app::handler::Handler;
use crate::config::Config;
use crate::proto::frame::{self, OpCode};
use crate::pubsub::topics::Topics;
use crate::runtime::mesh::{self, Bus, Envelope};
use crate::runtime::reactor::{self, Reactor, ready};
use crate::runtime::wheel::{Entry, TICK, Wheel};

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
    /// The outbound queue passed its bound during a fan-out: close with 1013.
    pub const OVERFLOW: u8 = 4;
}

/// What the core keeps per connection (besides the connection task itself).
///
/// Layout (x86_64): waker 16 + queue 32 + out_bytes 4 + generation 4 + deadline 4 + signals 1 +
/// io 1, padded to 64 bytes. Checked by `slot_is_small` below.
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
    /// Bit set of [`reactor::ready`] values: socket readiness, kept by the core's reactor (and
    /// `PARKED`, kept by the shard).
    pub io: u8,
}

impl Slot {
    /// Append a frame to the outbound queue, keeping `out_bytes` in step.
    pub fn push(&mut self, frame: Arc<[u8]>) {
        self.out_bytes = self.out_bytes.saturating_add(frame.len() as u32);
        self.outq.push_back(frame);
    }

    /// Wake the task, if it is waiting.
    pub fn wake(&mut self) {
        if let Some(w) = self.waker.take() {
            w.wake();
        }
    }
}

/// Counters and gauges of one core. Written only by that core (relaxed atomics on a cache line
/// nobody else writes), read by whichever core renders `/metrics`.
#[derive(Default)]
pub struct Stats {
    pub connections: AtomicU64,
    pub websockets: AtomicU64,
    pub channels: AtomicU64,
    pub accepted: AtomicU64,
    pub upgraded: AtomicU64,
    pub http_requests: AtomicU64,
    /// Request-body bytes reserved on this core right now (see `crate::http::BodyReservation`).
    pub http_body_bytes: AtomicU64,
    /// Requests answered 503 because their body would pass `max_body_bytes_in_flight`.
    pub http_body_busy: AtomicU64,
    pub accept_errors: AtomicU64,
    /// Multishot polls the kernel ended (e.g. a burst past `ring_entries`) and the connection
    /// re-armed.
    pub poll_rearms: AtomicU64,
    pub handshake_timeouts: AtomicU64,
    pub idle_timeouts: AtomicU64,
    /// Sockets closed (1008) because a data message was still incomplete at `message_timeout_ms`.
    pub message_timeouts: AtomicU64,
    /// Sockets closed (1013) because their partial message would pass the core's
    /// `max_partial_bytes_per_core`.
    pub partial_budget_closes: AtomicU64,
    /// Bytes this core's sockets hold for partial frames and fragmented messages (gauge).
    pub partial_bytes: AtomicU64,
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub bytes_out: AtomicU64,
    pub joins: AtomicU64,
    pub join_errors: AtomicU64,
    pub broadcasts: AtomicU64,
    pub deliveries: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub handler_panics: AtomicU64,
    /// Client pushes and broadcasts refused for a reserved event name.
    pub refused_events: AtomicU64,
    /// Broadcasts refused for a JSON payload that is not an object.
    pub refused_payloads: AtomicU64,
    pub mesh_sent: AtomicU64,
    pub mesh_received: AtomicU64,
    pub mesh_dropped: AtomicU64,
    pub mesh_backlog: AtomicU64,
    /// Bytes ([`Envelope::cost`]) queued for other cores, in outboxes or on rings.
    pub mesh_backlog_bytes: AtomicU64,
    /// Times this core began to hold its connections back (a peer outbox over its high mark).
    pub mesh_pauses: AtomicU64,
    /// Connections that stopped reading during such a hold (each counted once per hold).
    pub mesh_parked: AtomicU64,
    /// Close frames sent, by code: see [`CLOSE_CODES`]; the last slot counts any other code.
    pub closes: [AtomicU64; CLOSE_CODES.len() + 1],
}

/// Close codes counted one by one in [`Stats::closes`].
pub const CLOSE_CODES: [u16; 9] = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1011, 1013];

impl Stats {
    pub fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }

    pub fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Ordering::Relaxed);
    }

    pub fn sub(c: &AtomicU64, n: u64) {
        c.fetch_sub(n, Ordering::Relaxed);
    }

    pub fn close_sent(&self, code: u16) {
        let i = CLOSE_CODES
            .iter()
            .position(|&c| c == code)
            .unwrap_or(CLOSE_CODES.len());
        Stats::bump(&self.closes[i]);
    }
}

/// What every core shares (read-only or atomics): config, handler, every core's counters.
pub struct Shared {
    pub cfg: Arc<Config>,
    pub handler: Arc<dyn Handler>,
    /// One `Stats` per core, each its own allocation; index = core id.
    pub stats: Vec<Arc<Stats>>,
    pub started: Instant,
}

impl Shared {
    /// One counter summed over every core.
    pub fn total(&self, counter: fn(&Stats) -> &AtomicU64) -> u64 {
        self.stats
            .iter()
            .map(|s| counter(s).load(Ordering::Relaxed))
            .sum()
    }
}

/// One core's state.
pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub shared: Arc<Shared>,
    pub slots: RefCell<Slab<Slot>>,
    pub wheel: RefCell<Wheel>,
    pub topics: RefCell<Topics>,
    /// This core's end of the cross-core mesh (None with one core).
    pub bus: RefCell<Option<Bus>>,
    /// Connections that stopped reading while the mesh holds (see [`Shard::reads_held`]), as
    /// (key, generation); woken and emptied when the hold ends. Costs nothing per connection
    /// otherwise: 8 bytes per parked connection, only during a hold.
    parked: RefCell<Vec<(u32, u32)>>,
    /// Every connection of this core reads into this buffer and parses it before yielding, so
    /// an idle connection holds no read buffer.
    pub scratch: RefCell<Box<[u8]>>,
    /// Coalescing buffer for small outbound frames.
    pub wbuf: RefCell<Vec<u8>>,
    /// Where outgoing frames are built before their one copy into a shared buffer.
    fbuf: RefCell<Vec<u8>>,
    pub stats: Arc<Stats>,
    /// The core's readiness reactor (set when the core starts serving; the simulation has none).
    io: OnceCell<Reactor>,
    draining: Cell<bool>,
    next_generation: Cell<u32>,
    /// Most connections seen since memory was last given back (see `maybe_release_memory`).
    peak_connections: Cell<usize>,
    /// Heap bytes all of this core's frame decoders hold (partial frames and fragmented
    /// messages), bounded by `max_partial_bytes_per_core`.
    partial_bytes: Cell<usize>,
    /// Most of `partial_bytes` since memory was last given back.
    partial_peak: Cell<usize>,
    started: Instant,
}

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            cfg: shared.cfg.clone(),
            stats: shared.stats[id].clone(),
            shared,
            slots: RefCell::new(Slab::new()),
            wheel: RefCell::new(Wheel::new(crate::runtime::wheel::DEFAULT_BUCKETS)),
            topics: RefCell::new(Topics::new()),
            bus: RefCell::new(None),
            parked: RefCell::new(Vec::new()),
            scratch: RefCell::new(vec![0u8; READ_CHUNK].into_boxed_slice()),
            wbuf: RefCell::new(Vec::with_capacity(WRITE_COALESCE)),
            fbuf: RefCell::new(Vec::with_capacity(4096)),
            io: OnceCell::new(),
            draining: Cell::new(false),
            next_generation: Cell::new(1),
            peak_connections: Cell::new(0),
            partial_bytes: Cell::new(0),
            partial_peak: Cell::new(0),
            started: Instant::now(),
        })
    }

    /// The core's reactor, once the core serves sockets.
    pub fn io(&self) -> Option<&Reactor> {
        self.io.get()
    }

    /// The channel handler.
    pub fn handler(&self) -> &dyn Handler {
        &*self.shared.handler
    }

    /// Build one complete WebSocket frame: `body` appends the payload, the header is put in front
    /// of it in place, and the result is copied once into a shared buffer. Must not be called
    /// from inside `body`.
    pub fn build_frame<E>(
        &self,
        op: OpCode,
        body: impl FnOnce(&mut Vec<u8>) -> Result<(), E>,
    ) -> Result<Arc<[u8]>, E> {
        const ROOM: usize = 10; // the longest server frame header
        let mut buf = self.fbuf.borrow_mut();
        buf.clear();
        buf.resize(ROOM, 0);
        body(&mut buf)?;
        let (header, h) = frame::frame_header(op, true, buf.len() - ROOM);
        buf[ROOM - h..ROOM].copy_from_slice(&header[..h]);
        let out = Arc::from(&buf[ROOM - h..]);
        if buf.capacity() > 256 * 1024 {
            *buf = Vec::with_capacity(4096); // do not keep a big message's buffer
        }
        Ok(out)
    }

    /// Queue bytes on a connection from inside that connection's own poll (its replies, echoes,
    /// close frame, HTTP response). No wake: the connection flushes before it waits again.
    /// Replies are not bounded here: the connection stops reading while its queue is over the
    /// bound, so the peer cannot make it grow. Returns false if the connection is gone.
    pub fn queue_own(&self, key: usize, bytes: Arc<[u8]>) -> bool {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return false;
        };
        slot.push(bytes);
        true
    }

    /// Queue one WebSocket frame on a connection from inside its own poll, counted in
    /// `frames_out`; see [`Shard::queue_own`].
    pub fn enqueue(&self, key: usize, frame: Arc<[u8]>) -> bool {
        let queued = self.queue_own(key, frame);
        if queued {
            Stats::bump(&self.stats.frames_out);
        }
        queued
    }

    /// Publish a framed broadcast on `topic`: this core's subscribers now, every other core's
    /// through the mesh. The frame is shared, never copied.
    pub fn broadcast(&self, topic: &str, frame: Arc<[u8]>) {
        Stats::bump(&self.stats.broadcasts);
        if let Some(bus) = self.bus.borrow().as_ref() {
            bus.publish(&Envelope {
                topic: Arc::from(topic),
                frame: frame.clone(),
            });
        }
        self.fanout_local(topic, &frame);
    }

    /// Queue `frame` on every local subscriber of `topic`. A subscriber whose queue is over its
    /// bound gets nothing more and is told to close with 1013 (slow consumer).
    pub fn fanout_local(&self, topic: &str, frame: &Arc<[u8]>) {
        let max_bytes = self.cfg.out_queue_max_bytes;
        let max_frames = self.cfg.out_queue_max_frames;
        let topics = self.topics.borrow();
        let mut slots = self.slots.borrow_mut();
        let mut delivered = 0u64;
        topics.for_each_subscriber(topic, |sub| {
            let Some(slot) = slots.get_mut(sub.key as usize) else {
                return;
            };
            if slot.generation != sub.generation || slot.signals & signal::OVERFLOW != 0 {
                return;
            }
            if slot.out_bytes as usize + frame.len() > max_bytes || slot.outq.len() >= max_frames {
                slot.signals |= signal::OVERFLOW;
                slot.wake();
                return;
            }
            slot.push(frame.clone());
            delivered += 1;
            slot.wake();
        });
        Stats::add(&self.stats.deliveries, delivered);
        Stats::add(&self.stats.frames_out, delivered);
    }

    /// True while this core's cross-core outboxes are over their high mark: connections must not
    /// read (what they read could be a broadcast) and park with [`Shard::park`] until the outboxes
    /// are down to their low mark. `POST /api/broadcast` answers 503 meanwhile.
    pub fn reads_held(&self) -> bool {
        self.bus.borrow().as_ref().is_some_and(Bus::holding)
    }

    /// Put a connection on the parked list (once per hold) before it waits: the end of the hold
    /// wakes it.
    pub fn park(&self, key: usize) {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return;
        };
        if slot.io & ready::PARKED == 0 {
            slot.io |= ready::PARKED;
            self.parked.borrow_mut().push((key as u32, slot.generation));
            Stats::bump(&self.stats.mesh_parked);
        }
    }

    /// The hold has ended: wake every parked connection still there.
    fn wake_parked(&self) {
        let mut parked = std::mem::take(&mut *self.parked.borrow_mut());
        debug!(core = self.id, parked = parked.len(), "mesh hold over");
        let mut slots = self.slots.borrow_mut();
        for &(key, generation) in &parked {
            if let Some(slot) = slots.get_mut(key as usize)
                && slot.generation == generation
            {
                slot.io &= !ready::PARKED;
                slot.wake(); // schedules the task; it runs after this returns
            }
        }
        parked.clear();
        let mut list = self.parked.borrow_mut();
        if list.is_empty() && parked.capacity() <= 1024 {
            *list = parked; // a small list keeps its memory for the next hold, a big one is freed
        }
    }

    /// Take every queued frame of a connection without a socket (the simulation's null sink).
    pub fn drain_queue(&self, key: usize, mut sink: impl FnMut(&[u8])) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            for f in slot.outq.drain(..) {
                sink(&f);
            }
            slot.out_bytes = 0;
            slot.outq = VecDeque::new();
        }
    }

    /// Current wheel tick.
    pub fn now_tick(&self) -> u64 {
        self.wheel.borrow().now()
    }

    /// Push a connection's deadline later without touching the wheel: its entry is rescheduled
    /// when it fires. O(1); used on every message for the idle timeout.
    pub fn extend_deadline(&self, key: usize, after: std::time::Duration) {
        let at = self.deadline_tick(after);
        if let Some(slot) = self.slots.borrow_mut().get_mut(key) {
            slot.deadline = at.min(u32::MAX as u64) as u32;
        }
    }

    /// Heap bytes this core's sockets hold for partial messages (see `hold_partial`).
    pub fn partial_bytes(&self) -> usize {
        self.partial_bytes.get()
    }

    /// A socket's decoder went from holding `before` to `after` heap bytes: keep the core's
    /// total (and its gauge) in step. Every socket reports each change and, when it leaves the
    /// WebSocket phase, that it holds nothing.
    pub fn hold_partial(&self, before: usize, after: usize) {
        if before == after {
            return;
        }
        let total = (self.partial_bytes.get() + after).saturating_sub(before);
        self.partial_bytes.set(total);
        self.partial_peak.set(self.partial_peak.get().max(total));
        self.stats
            .partial_bytes
            .store(total as u64, Ordering::Relaxed);
    }

    /// The tick at which `after` from now has surely passed. Counted from the real clock (the
    /// wheel may lag by up to a tick), rounded up, plus one tick for the partial current one:
    /// never early, at most two ticks late.
    pub fn deadline_tick(&self, after: std::time::Duration) -> u64 {
        let now = (self.started.elapsed().as_nanos() / TICK.as_nanos()) as u64;
        now + (after.as_nanos().div_ceil(TICK.as_nanos()) as u64) + 1
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
            // Optimistic: the first read finds out (a request often arrives with the connection).
            io: ready::READABLE,
        });
        Stats::bump(&self.stats.connections);
        (key, generation)
    }

    /// Free a connection's slot (its queued frames are dropped with it).
    pub fn close_slot(&self, key: usize) {
        if self.slots.borrow_mut().try_remove(key).is_some() {
            Stats::sub(&self.stats.connections, 1);
        }
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
                let at = self.deadline_tick(d);
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

    /// After a big drop in connections (at least 1,000 and half of the peak), shrink this core's
    /// tables and hand freed heap back to the kernel, so RSS follows the load down. The same
    /// after a big drop in partial-message bytes (at least 8 MiB and half of the peak): the
    /// allocator would keep a partial-message flood's buffers in its arenas.
    fn maybe_release_memory(&self) {
        let now = self.connections();
        let peak = self.peak_connections.get().max(now);
        let partial = self.partial_bytes.get();
        let partial_peak = self.partial_peak.get();
        if peak - now >= 1000 && now <= peak / 2 {
            self.slots.borrow_mut().shrink_to_fit();
            crate::runtime::sys::release_free_memory();
            self.peak_connections.set(now);
            self.partial_peak.set(partial);
        } else if partial_peak - partial >= 8 << 20 && partial <= partial_peak / 2 {
            crate::runtime::sys::release_free_memory();
            self.partial_peak.set(partial);
            self.peak_connections.set(peak);
        } else {
            self.peak_connections.set(peak);
        }
    }

    fn publish_mesh_stats(&self) {
        if let Some(bus) = self.bus.borrow().as_ref() {
            let st = &self.stats;
            st.mesh_sent.store(bus.sent(), Ordering::Relaxed);
            st.mesh_received.store(bus.received(), Ordering::Relaxed);
            st.mesh_dropped.store(bus.dropped(), Ordering::Relaxed);
            st.mesh_backlog
                .store(bus.backlog() as u64, Ordering::Relaxed);
            st.mesh_backlog_bytes
                .store(bus.backlog_bytes(), Ordering::Relaxed);
            st.mesh_pauses.store(bus.pauses(), Ordering::Relaxed);
        }
    }

    /// Before closing sockets, let broadcasts already on their way between cores arrive, so they
    /// are queued ahead of the close frames: wait (at most one second) until, over all cores,
    /// every envelope sent has been received and no outbox holds any.
    async fn settle_mesh(&self) {
        if self.bus.borrow().is_none() {
            return;
        }
        let settled = || {
            let total = |f| self.shared.total(f);
            total(|s| &s.mesh_backlog) == 0
                && total(|s| &s.mesh_sent) == total(|s| &s.mesh_received)
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        let mut calm = 0;
        while calm < 2 && Instant::now() < deadline {
            glommio::timer::sleep(TICK).await;
            self.tick();
            self.publish_mesh_stats();
            calm = if settled() { calm + 1 } else { 0 };
        }
    }

    /// Tell every connection to close with 1001.
    fn signal_drain(&self) {
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            slot.signals |= signal::DRAIN;
            slot.wake();
        }
    }

    /// Join the cross-core mesh: envelopes from other cores go to the local fan-out, and the end
    /// of each hold wakes the parked connections.
    async fn join_mesh(self: &Rc<Self>, mesh: mesh::Mesh) {
        let me = Rc::downgrade(self);
        let deliver = move |env: Envelope| {
            if let Some(shard) = me.upgrade() {
                shard.fanout_local(&env.topic, &env.frame);
            }
        };
        let me = Rc::downgrade(self);
        let resume = move || {
            if let Some(shard) = me.upgrade() {
                shard.wake_parked();
            }
        };
        match Bus::join(mesh, deliver, resume).await {
            Ok(bus) => *self.bus.borrow_mut() = Some(bus),
            Err(e) => warn!(core = self.id, error = %e, "cannot join the core mesh"),
        }
    }

    /// Run this core until `shutdown` is set and the drain has finished (or timed out).
    pub async fn run(
        self: Rc<Self>,
        listener: std::net::TcpListener,
        mesh: Option<mesh::Mesh>,
        shutdown: Arc<AtomicBool>,
        ready: std::sync::mpsc::Sender<Result<usize, String>>,
    ) {
        if let Some(mesh) = mesh {
            self.join_mesh(mesh).await;
        }
        let io = match Reactor::new(self.id, self.cfg.ring_entries) {
            Ok(io) => self.io.get_or_init(|| io),
            Err(e) => {
                warn!(core = self.id, error = %e, "cannot create the core's io_uring");
                let _ = ready.send(Err(format!(
                    "core {}: cannot create its io_uring: {e}",
                    self.id
                )));
                return;
            }
        };
        let driver = glommio::spawn_local(reactor::drive(self.clone()));
        io.listen(listener);
        let _ = ready.send(Ok(self.id));
        drop(ready);
        while !shutdown.load(Ordering::Relaxed) {
            glommio::timer::sleep(TICK).await;
            self.tick();
            io.on_tick();
            self.publish_mesh_stats();
            self.maybe_release_memory();
        }
        // Drain: stop accepting, ask every connection to close, wait for them (bounded).
        self.draining.set(true);
        io.stop_listening();
        let open = self.connections();
        info!(core = self.id, open, "draining");
        self.settle_mesh().await;
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
        driver.cancel().await;
        io.shutdown();
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

    /// Counts its wakes.
    struct CountingWaker(AtomicU64);

    impl std::task::Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_mesh_hold_parks_connections_refuses_the_api_and_wakes_them_when_drained() {
        let shared = Arc::new(Shared {
            cfg: Arc::new(Config::default()),
            handler: Arc::new(crate::app::handler::DefaultHandler),
            stats: (0..2).map(|_| Arc::new(Stats::default())).collect(),
            started: Instant::now(),
        });
        let limits = mesh::Limits {
            envelopes: 65_536,
            bytes: 1 << 20,
        };
        let m = mesh::mesh(2, limits);
        // `release`: the peer core blocks (takes nothing off its ring) until it is set.
        let (release, done) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(false)),
        );
        let handles: Vec<_> = (0..2)
            .map(|core| {
                let (shared, m) = (shared.clone(), m.clone());
                let (release, done) = (release.clone(), done.clone());
                glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
                    .spawn(move || async move {
                        let shard = Shard::new(core, shared);
                        shard.join_mesh(m).await;
                        if shard.bus.borrow().as_ref().map(Bus::peer_id) == Some(0) {
                            holds_and_wakes(&shard, &release).await;
                            done.store(true, Ordering::SeqCst);
                        }
                        while !release.load(Ordering::SeqCst) {
                            std::thread::sleep(std::time::Duration::from_millis(1));
                        }
                        while !done.load(Ordering::SeqCst) {
                            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
                        }
                    })
                    .unwrap()
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    async fn holds_and_wakes(shard: &Rc<Shard>, release: &AtomicBool) {
        let api = |shard: &Shard| {
            let body = br#"{"topic":"t","event":"e","payload":{}}"#;
            crate::http::api::broadcast(shard, body, crate::http::Format::Json)
        };
        let (key, generation) = shard.open_slot();
        let woken = Arc::new(CountingWaker(AtomicU64::new(0)));
        shard.slots.borrow_mut()[key].waker = Some(Waker::from(woken.clone()));
        // Past half of the 1 MiB bound.
        assert!(!shard.reads_held());
        for _ in 0..2 {
            shard.broadcast("t", Arc::from(vec![b'x'; 300_000]));
        }
        assert!(shard.reads_held(), "over the high mark: hold");
        let busy = api(shard);
        assert_eq!(busy.status, 503);
        assert_eq!(busy.headers, &[("Retry-After", "1")]);
        shard.park(key);
        shard.park(key); // polled again while parked: listed once
        assert_eq!(*shard.parked.borrow(), vec![(key as u32, generation)]);
        assert_eq!(shard.stats.mesh_parked.load(Ordering::SeqCst), 1);
        // A real connection whose upgrade request comes with frames behind it (a join and a
        // push): the request waits whole, nothing is answered or published during the hold.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        let mut out =
            b"GET /socket/websocket?vsn=2.0.0 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\
            Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n"
                .to_vec();
        for msg in [
            r#"["1","1","room:1","phx_join",{}]"#,
            r#"["1","2","room:1","new_msg",{}]"#,
        ] {
            frame::encode_masked(&mut out, OpCode::Text, true, msg.as_bytes(), [1, 2, 3, 4]);
        }
        std::io::Write::write_all(&mut client, &out).unwrap();
        let deadline = Instant::now() + std::time::Duration::from_secs(10);
        let wait = |what: &str| assert!(Instant::now() < deadline, "{what}");
        // There is no reactor here to say when the bytes arrive: let them arrive first.
        let mut peeked = vec![0u8; out.len()];
        while server.peek(&mut peeked).map_or(true, |n| n < out.len()) {
            wait("the request never arrived");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        let (ckey, cgen) = shard.open_slot();
        glommio::spawn_local(crate::transport::conn::serve(
            shard.clone(),
            server,
            ckey,
            cgen,
        ))
        .detach();
        while shard.slots.borrow()[ckey].io & ready::PARKED == 0 {
            wait("the connection never parked");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        client.set_nonblocking(true).unwrap();
        let mut got = Vec::new();
        let mut read = |got: &mut Vec<u8>| {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut client, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        };
        read(&mut got);
        assert!(got.is_empty(), "answered during the hold");
        let broadcasts = shard.stats.broadcasts.load(Ordering::SeqCst);
        assert!(
            shard.reads_held(),
            "the envelopes are on the ring: still held"
        );
        release.store(true, Ordering::SeqCst);
        // The peer takes the envelopes; the hold ends and wakes the parked connections.
        while shard.reads_held() {
            wait("the hold never ended");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert_eq!(woken.0.load(Ordering::SeqCst), 1, "woken once");
        assert_eq!(shard.slots.borrow()[key].io & ready::PARKED, 0);
        assert!(shard.parked.borrow().is_empty());
        // The connection was woken too: upgraded, joined, pushed.
        let text = loop {
            read(&mut got);
            let text = String::from_utf8_lossy(&got).into_owned();
            if text.matches("phx_reply").count() == 2 {
                break text;
            }
            wait("no replies");
            glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
        };
        assert!(text.starts_with("HTTP/1.1 101"), "{text}");
        assert_eq!(text.matches(r#""status":"ok""#).count(), 2, "{text}");
        assert_eq!(
            shard.stats.broadcasts.load(Ordering::SeqCst),
            broadcasts + 1
        );
        assert_eq!(api(shard).status, 202, "accepted again");
        shard.publish_mesh_stats();
        assert_eq!(shard.stats.mesh_pauses.load(Ordering::SeqCst), 1);
        assert_eq!(shard.stats.mesh_dropped.load(Ordering::SeqCst), 0);
        shard.close_slot(key);
    }
}

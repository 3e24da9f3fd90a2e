//! One core's world: its listener, its connection slots, its timer wheel, its scratch buffers.
//!
//! Everything here is owned by one glommio executor pinned to one CPU: `Rc`/`RefCell`, no locks.
//! A connection's socket and protocol state live in its own task (spawned by the layer above
//! for each accepted socket); the shard keeps only what other parts of the core must reach:
//! the slot (outbound queue, waker, deadline), the wheel, the mesh, shared buffers.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Poll, Waker};
use std::time::Instant;

use slab::Slab;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::proto::frame::{self, OpCode};
use crate::runtime::mesh::{self, Bus, Envelope};
use crate::runtime::reactor::{self, Accept, Host, Reactor, ready};
pub use crate::runtime::slot::{Slot, signal};
pub use crate::runtime::stats::{Shared, Stats};
use crate::runtime::stop::Stop;
use crate::runtime::wheel::{Entry, TICK, Wheel};

/// Size of the per-core read scratch buffer every connection reads into.
pub const READ_CHUNK: usize = 64 * 1024;
/// Small frames are copied into one per-core buffer of this size and sent with one syscall.
pub const WRITE_COALESCE: usize = 64 * 1024;

/// One core's state.
pub struct Shard {
    pub id: usize,
    pub cfg: Arc<Config>,
    pub shared: Arc<Shared>,
    pub slots: RefCell<Slab<Slot>>,
    pub wheel: RefCell<Wheel>,
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
    /// Tasks a fan-out queued frames for, not woken yet (see [`Shard::wake_deferred`]): per
    /// core, 16 bytes per listed waker, only while listed.
    deferred: RefCell<VecDeque<Waker>>,
    /// The flusher task's waker while it waits for `deferred` to fill.
    flusher: RefCell<Option<Waker>>,
    /// Wakes are deferred only while a flusher runs (not in the simulation).
    defer: Cell<bool>,
    /// Fault injection for tests ([`LOSE_GLOMMIO_TIMERS`]): behave as if glommio's timers never
    /// woke an idle executor.
    lose_glommio_timers: bool,
}

/// Environment variable that, set to `1`, makes a core behave as if glommio's timers never woke
/// its idle executor (the failure of issue 17): each wait on a glommio timer lasts until the
/// core's next tick, which is when a real lost timer is noticed (the tick wakes the executor,
/// which then fires the timers whose time has passed). For tests; costs one lookup per core.
pub const LOSE_GLOMMIO_TIMERS: &str = "CORECAST_FAULT_LOSE_GLOMMIO_TIMERS";

/// What the layer above does for a core (wired by `crate::server`: the runtime does not know
/// what envelopes carry or what a tick does up there).
pub struct Wiring {
    /// Takes every envelope another core sent.
    pub deliver: Box<dyn Fn(Envelope)>,
    /// Takes every accepted socket, in its slot.
    pub accept: Accept,
    /// Runs every tick, after the wheel has moved; true while it has work that should be done
    /// before the core stops (the drain waits for it, within its bound).
    pub on_tick: Box<dyn Fn() -> bool>,
}

/// How many deferred subscriber tasks the flusher wakes before it lets the rest of the core's
/// queue (the reactor's driver, a publisher) run again.
pub const FLUSH_CHUNK: usize = 4;
/// How long the flusher lets the core's queue run without an idle point (I/O, other threads).
pub const FLUSH_IO_EVERY: std::time::Duration = std::time::Duration::from_micros(50);
/// The flusher's timer at such a point (the woken tasks' writes usually take longer).
pub const FLUSH_GAP: std::time::Duration = std::time::Duration::from_micros(10);

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            cfg: shared.cfg.clone(),
            stats: shared.stats[id].clone(),
            shared,
            slots: RefCell::new(Slab::new()),
            wheel: RefCell::new(Wheel::new(crate::runtime::wheel::DEFAULT_BUCKETS)),
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
            deferred: RefCell::new(VecDeque::new()),
            flusher: RefCell::new(None),
            defer: Cell::new(false),
            lose_glommio_timers: std::env::var_os(LOSE_GLOMMIO_TIMERS).is_some_and(|v| v == "1"),
        })
    }

    /// The core's reactor, once the core serves sockets.
    pub fn io(&self) -> Option<&Reactor> {
        self.io.get()
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

    /// Put a publication's envelope on the way to every other core (nothing with one core).
    /// Never waits: see [`crate::runtime::mesh`] for the bounds and the pushback.
    pub fn send_to_peers(&self, env: &Envelope) {
        if let Some(bus) = self.bus.borrow().as_ref() {
            bus.publish(env);
        }
    }

    /// Put an envelope on the way to core `peer` of the mesh only (nothing with one core or for
    /// this core itself). Never waits, bounded like [`Shard::send_to_peers`].
    pub fn send_to_core(&self, peer: usize, env: Envelope) {
        if let Some(bus) = self.bus.borrow().as_ref() {
            bus.send_to(peer, env);
        }
    }

    /// Cores in the process (the mesh's size).
    pub fn cores(&self) -> usize {
        self.shared.stats.len()
    }

    /// True while this core's cross-core outboxes are over their high mark: connections must not
    /// read (what they read could be a broadcast) and park with [`Shard::park`] until the outboxes
    /// are down to their low mark. `POST /api/broadcast` answers 503 meanwhile.
    pub fn reads_held(&self) -> bool {
        self.bus.borrow().as_ref().is_some_and(Bus::holding)
    }

    /// Put a connection on the parked list (once per hold) before it waits: the end of the hold
    /// wakes it. It is marked [`ready::HELD`] until its socket reads dry; true if it was not
    /// already (its time held starts now).
    pub fn park(&self, key: usize) -> bool {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(key) else {
            return false;
        };
        if slot.io & ready::PARKED == 0 {
            slot.io |= ready::PARKED;
            self.parked.borrow_mut().push((key as u32, slot.generation));
            Stats::bump(&self.stats.mesh_parked);
        }
        let newly = slot.io & ready::HELD == 0;
        slot.io |= ready::HELD;
        newly
    }

    /// Whether a connection has been parked since its socket last read dry ([`ready::HELD`]).
    pub fn held(&self, key: usize) -> bool {
        self.slots
            .borrow()
            .get(key)
            .is_some_and(|s| s.io & ready::HELD != 0)
    }

    /// Wake the task of a slot a fan-out just queued a frame on: deferred to the core's flusher
    /// task when it runs, at once otherwise. Deferred, the task is listed once (its waker moves
    /// to the list) and woken in list order, [`FLUSH_CHUNK`] at a time with the rest of the
    /// core's ready tasks in between: the publisher and the reactor go on while a fan-out is
    /// written, and whatever they publish meanwhile joins the frames still queued (one write
    /// for several broadcasts). A listed task waits at most one pass over the list.
    pub fn wake_deferred(&self, slot: &mut Slot) {
        if !self.defer.get() {
            slot.wake();
            return;
        }
        if let Some(w) = slot.waker.take() {
            self.deferred.borrow_mut().push_back(w);
            if let Some(f) = self.flusher.borrow_mut().take() {
                f.wake();
            }
        }
    }

    /// The flusher: wakes the listed tasks, a chunk per turn. It runs in the core's one task
    /// queue, so after each chunk it goes to the back of the queue, behind the tasks it woke and
    /// the driver (poked first when readiness waits in the ring). Every [`FLUSH_IO_EVERY`] it
    /// waits for a timer instead, so the queue empties and the executor looks at its I/O and at
    /// wake-ups from other threads (the mesh, the bell), which it does only when idle. (That
    /// timer is glommio's: should glommio fail to wake an idle executor for it (issue 17), the
    /// core's next tick, on its own ring, wakes the executor and with it the flusher.)
    async fn flush_deferred(self: Rc<Self>) {
        loop {
            std::future::poll_fn(|cx| {
                if self.deferred.borrow().is_empty() {
                    *self.flusher.borrow_mut() = Some(cx.waker().clone());
                    Poll::Pending
                } else {
                    Poll::Ready(())
                }
            })
            .await;
            let mut since = Instant::now();
            loop {
                if let Some(io) = self.io() {
                    io.wake_if_ready();
                }
                let chunk: Vec<Waker> = {
                    let mut d = self.deferred.borrow_mut();
                    let n = d.len().min(FLUSH_CHUNK);
                    d.drain(..n).collect()
                };
                for w in chunk {
                    w.wake();
                }
                if self.deferred.borrow().is_empty() {
                    break;
                }
                if since.elapsed() >= FLUSH_IO_EVERY {
                    if self.lose_glommio_timers {
                        self.tick_wait().await;
                    } else {
                        glommio::timer::sleep(FLUSH_GAP).await;
                    }
                    since = Instant::now();
                } else {
                    let mut again = false;
                    std::future::poll_fn(|cx| {
                        if std::mem::replace(&mut again, true) {
                            Poll::Ready(())
                        } else {
                            cx.waker().wake_by_ref();
                            Poll::Pending
                        }
                    })
                    .await;
                }
            }
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

    /// The connections parked right now, as (key, generation).
    pub fn parked(&self) -> Vec<(u32, u32)> {
        self.parked.borrow().clone()
    }

    /// This core's index in the mesh (None without a mesh).
    pub fn mesh_peer_id(&self) -> Option<usize> {
        self.bus.borrow().as_ref().map(Bus::peer_id)
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

    /// Copy the mesh's figures into this core's counters (every tick).
    pub fn publish_mesh_stats(&self) {
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
            self.tick_wait().await;
            self.tick();
            self.publish_mesh_stats();
            calm = if settled() { calm + 1 } else { 0 };
        }
    }

    /// Wait for the next tick of the core's clock (at once without a reactor: the simulation).
    async fn tick_wait(&self) {
        if let Some(io) = self.io() {
            io.tick().await;
        }
    }

    /// Tell every connection to close with 1001.
    fn signal_drain(&self) {
        for (_, slot) in self.slots.borrow_mut().iter_mut() {
            slot.signals |= signal::DRAIN;
            slot.wake();
        }
    }

    /// Join the cross-core mesh: envelopes from other cores go to `deliver` (the layer above's
    /// fan-out), and the end of each hold wakes the parked connections.
    pub async fn join_mesh(
        self: &Rc<Self>,
        mesh: mesh::Mesh,
        deliver: impl Fn(Envelope) + 'static,
    ) {
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

    /// Run this core until `stop` is requested and the drain has finished (or timed out), with
    /// the layer above's callbacks (`wiring`).
    pub async fn run(
        self: Rc<Self>,
        listener: std::net::TcpListener,
        mesh: Option<mesh::Mesh>,
        wiring: Wiring,
        stop: Arc<Stop>,
        ready: std::sync::mpsc::Sender<Result<usize, String>>,
    ) {
        let Wiring {
            deliver,
            accept,
            on_tick,
        } = wiring;
        if let Some(mesh) = mesh {
            self.join_mesh(mesh, deliver).await;
        }
        let io = match Reactor::new(self.id, self.cfg.ring_entries, TICK) {
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
        let flusher = Some(glommio::spawn_local(self.clone().flush_deferred()));
        self.defer.set(flusher.is_some());
        io.listen(listener, accept);
        let _ = ready.send(Ok(self.id));
        drop(ready);
        while !stop.requested() {
            // The next tick of the core's own clock, or a stop request, whichever comes first.
            std::future::poll_fn(|cx| {
                if io.poll_tick(cx).is_ready() {
                    return Poll::Ready(());
                }
                stop.watch(self.id, cx.waker());
                if stop.requested() {
                    Poll::Ready(())
                } else {
                    Poll::Pending
                }
            })
            .await;
            self.tick();
            on_tick();
            io.retry_accept();
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
        // Until every connection is gone and what closing them set off (presence leaves) has
        // gone out, within the bound.
        let mut busy = true;
        while (self.connections() > 0 || busy) && Instant::now() < deadline {
            self.tick_wait().await;
            self.tick();
            busy = on_tick();
        }
        let left = self.connections();
        if left > 0 {
            warn!(
                core = self.id,
                left, "shutdown timeout: dropping connections"
            );
        }
        driver.cancel().await;
        self.defer.set(false);
        for w in self.deferred.borrow_mut().drain(..) {
            w.wake();
        }
        if let Some(f) = flusher {
            f.cancel().await;
        }
        io.shutdown();
    }
}

impl Host for Shard {
    fn io(&self) -> Option<&Reactor> {
        Shard::io(self)
    }

    fn slots(&self) -> &RefCell<Slab<Slot>> {
        &self.slots
    }

    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn open_slot(&self) -> (usize, u32) {
        Shard::open_slot(self)
    }

    fn close_slot(&self, key: usize) {
        Shard::close_slot(self, key)
    }

    fn core(&self) -> usize {
        self.id
    }
}

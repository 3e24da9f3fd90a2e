//! A core's readiness reactor: one io_uring of our own per core, a multishot poll per socket.
//!
//! Why not glommio's own sockets: a glommio `TcpStream` waiting for input holds an armed reactor
//! `Source` (a few hundred bytes) besides its 120-byte handle, which made glommio's share the
//! larger part of an idle connection's memory (issue 5; `make uring-compare` measured 95 B for
//! this design against 1,420 B). Here a connection is a plain non-blocking `std::net::TcpStream`
//! (4 bytes) and waiting costs one kernel poll request tagged with the slot's key and generation:
//! no allocation of ours.
//!
//! How it joins glommio: the ring's completions signal an eventfd; a small "bell" thread per core
//! blocks on that eventfd and wakes the core's driver task, which reaps the completions on the
//! core's own thread, sets readiness bits on the slots and wakes their tasks. The driver turns
//! the eventfd off while it runs and back on before it waits, so under load the bell stays quiet
//! and completions are reaped in batches.
//!
//! The core's clock is on this ring too: a multishot timeout completes every tick (a one-shot
//! one re-armed after each completion on kernels before 6.4), and the driver hands it to the
//! core's tick loop ([`Reactor::poll_tick`]). So a quiet core wakes every tick through the same
//! eventfd, bell and waker as its I/O, whatever glommio's own timers do (issue 17: an idle
//! executor could sleep through them, and with them through SIGTERM and every deadline).
//!
//! Readiness is edge-like (a multishot poll posts on each wake-up of the socket), so a connection
//! keeps its `READABLE` bit until a `recv` says `WouldBlock`. Writes go straight to the socket;
//! only when it is full is a one-shot `POLLOUT` armed.

use std::cell::{Cell, RefCell};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;

use slab::Slab;
use tracing::{debug, warn};

use crate::runtime::slot::Slot;
use crate::runtime::stats::Stats;
use crate::runtime::sys::{Completion, Ring};

/// Readiness bits kept in [`Slot::io`].
pub mod ready {
    /// Input (or EOF, or an error) may be waiting: `recv` until `WouldBlock`.
    pub const READABLE: u8 = 1;
    /// A one-shot `POLLOUT` is armed for the slot.
    pub const WRITE_ARMED: u8 = 2;
    /// The kernel ended the slot's multishot poll: the connection must arm a new one.
    pub const REARM: u8 = 4;
    /// Not readiness: the connection is on its core's parked list (it stopped reading while the
    /// core's mesh holds publishers back). Set and cleared by the shard, never by the reactor.
    pub const PARKED: u8 = 8;
    /// Not readiness: the connection has been parked since its socket last read dry, so what
    /// waits in the socket may have piled up while the core was not reading it, not been sent
    /// in a burst (the rate limit credits that time). Set by the shard with `PARKED`, cleared by
    /// the connection when a `recv` says `WouldBlock`.
    pub const HELD: u8 = 16;
    /// Not readiness: the connection waits for the answer to its HTTP request from another task
    /// (a long-poll session, maybe on another core). Set by the connection; an answer is queued
    /// only while it is set, and clears it (a late one, after the connection gave up, is
    /// dropped).
    pub const AWAITING: u8 = 32;
}

/// Takes an accepted socket (non-blocking, watched for input, in slot `key` of generation
/// `generation`) and starts serving it: the layer above's connection task.
pub type Accept = Box<dyn Fn(TcpStream, usize, u32)>;

/// Submission queue entries (polls are armed in batches of at most one accept round).
const SQ_ENTRIES: u32 = 1024;
/// Completions handled per driver turn before it yields to the connection tasks.
const REAP_BUDGET: usize = 4096;
/// Connections accepted per round before the driver lets others run.
const ACCEPT_BATCH: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read = 0,
    Write = 1,
    /// The core's own requests: the listener's poll (key 0) and the clock's timeout (key 1).
    Core = 2,
    /// Completions of poll removals: nothing to do.
    Removal = 3,
}

/// A request's tag: generation (32 bits), slab key (30 bits), kind (2 bits).
const fn tag(kind: Kind, key: usize, generation: u32) -> u64 {
    ((generation as u64) << 32) | ((key as u64 & 0x3fff_ffff) << 2) | kind as u64
}

/// The listener's poll (one per core).
const LISTEN_TAG: u64 = tag(Kind::Core, 0, 0);
/// The clock's timeout (one per core).
const TICK_TAG: u64 = tag(Kind::Core, 1, 0);

fn untag(t: u64) -> (Kind, usize, u32) {
    let kind = match t & 3 {
        0 => Kind::Read,
        1 => Kind::Write,
        2 => Kind::Core,
        _ => Kind::Removal,
    };
    (kind, ((t >> 2) & 0x3fff_ffff) as usize, (t >> 32) as u32)
}

/// What the bell thread shares with the core.
struct Bell {
    eventfd: File,
    /// The driver's waker while it waits for completions.
    waker: Mutex<Option<Waker>>,
    stop: AtomicBool,
}

/// What the reactor needs from the core it serves: its slots, counters and reactor (implemented
/// by `runtime::shard::Shard`, which owns the reactor; a trait, so that the two files do not
/// import each other).
pub trait Host: 'static {
    /// The core's reactor, once it serves sockets.
    fn io(&self) -> Option<&Reactor>;
    /// The connection slots, where readiness bits are set and tasks woken.
    fn slots(&self) -> &RefCell<Slab<Slot>>;
    /// The core's counters.
    fn stats(&self) -> &Stats;
    /// A slot for a newly accepted connection: (key, generation).
    fn open_slot(&self) -> (usize, u32);
    /// Give back a slot nobody will serve.
    fn close_slot(&self, key: usize);
    /// The core's index, for logs.
    fn core(&self) -> usize;
}

/// One core's reactor. Lives in its shard; every method runs on that core.
pub struct Reactor {
    ring: RefCell<Ring>,
    bell: Arc<Bell>,
    bell_thread: RefCell<Option<JoinHandle<()>>>,
    /// The driver's waker, for work queued from the core itself (a poll to submit).
    driver: RefCell<Option<Waker>>,
    listener: RefCell<Option<TcpListener>>,
    /// Who takes accepted sockets (see [`Reactor::listen`]).
    accept: RefCell<Option<Accept>>,
    /// An accept failed (e.g. out of descriptors): wait for the next tick before trying again.
    accept_paused: Cell<bool>,
    /// The last accept round stopped at its batch limit: more connections are waiting.
    accept_more: Cell<bool>,
    reaped: RefCell<Vec<Completion>>,
    /// The clock's period.
    tick: std::time::Duration,
    /// Whether the kernel takes multishot timeouts (until it says `-EINVAL`).
    tick_multishot: Cell<bool>,
    /// A tick completed since the tick loop last looked.
    tick_due: Cell<bool>,
    /// Ticks completed since the start.
    ticks: Cell<u64>,
    /// The tick loop's waker while it waits.
    clock: RefCell<Option<Waker>>,
}

impl Reactor {
    /// A ring with `cq_entries` completion entries (the `ring_entries` setting: a readiness burst
    /// of that many sockets is reaped without the kernel holding any back; past it the kernel
    /// keeps the overflow and ends the affected multishot polls, which connections re-arm, so a
    /// bigger burst costs time, never messages) and its bell thread, for core `core`, with a
    /// clock that ticks every `tick`.
    pub fn new(
        core: usize,
        cq_entries: u32,
        tick: std::time::Duration,
    ) -> std::io::Result<Reactor> {
        let mut ring = Ring::new(SQ_ENTRIES.min(cq_entries), cq_entries)?;
        ring.timeout(tick, true, TICK_TAG); // submitted by the driver's first turn
        let eventfd = crate::runtime::sys::eventfd()?;
        ring.register_eventfd(&eventfd)?;
        let bell = Arc::new(Bell {
            eventfd,
            waker: Mutex::new(None),
            stop: AtomicBool::new(false),
        });
        let b = bell.clone();
        let thread = std::thread::Builder::new()
            .name(format!("corecast-bell-{core}"))
            .stack_size(64 * 1024)
            .spawn(move || ring_bell(&b))?;
        Ok(Reactor {
            ring: RefCell::new(ring),
            bell,
            bell_thread: RefCell::new(Some(thread)),
            driver: RefCell::new(None),
            listener: RefCell::new(None),
            accept: RefCell::new(None),
            accept_paused: Cell::new(false),
            accept_more: Cell::new(false),
            reaped: RefCell::new(Vec::with_capacity(REAP_BUDGET)),
            tick,
            tick_multishot: Cell::new(true),
            tick_due: Cell::new(false),
            ticks: Cell::new(0),
            clock: RefCell::new(None),
        })
    }

    /// Ready once a tick has completed since the last `Ready` (ticks missed meanwhile are not
    /// counted twice: the loop reads the real clock). The waker is kept for the driver, which
    /// wakes it when the ring's timeout completes.
    pub fn poll_tick(&self, cx: &Context<'_>) -> Poll<()> {
        if self.tick_due.replace(false) {
            return Poll::Ready(());
        }
        let mut clock = self.clock.borrow_mut();
        if !clock.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *clock = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Wait for the next tick.
    pub async fn tick(&self) {
        std::future::poll_fn(|cx| self.poll_tick(cx)).await
    }

    /// Ticks completed since the start.
    pub fn ticks(&self) -> u64 {
        self.ticks.get()
    }

    /// The clock's timeout completed (or ended): count the tick, wake the tick loop, re-arm a
    /// timeout the kernel ended.
    fn on_tick(&self, c: &Completion) {
        if c.result == -libc::ECANCELED {
            return; // the ring is going away
        }
        if c.result == -libc::EINVAL && self.tick_multishot.replace(false) {
            debug!("no multishot timeouts on this kernel: one-shot ticks");
        } else {
            self.ticks.set(self.ticks.get() + 1);
            self.tick_due.set(true);
            if let Some(w) = self.clock.borrow_mut().take() {
                w.wake();
            }
        }
        if !c.more {
            let multishot = self.tick_multishot.get();
            self.ring
                .borrow_mut()
                .timeout(self.tick, multishot, TICK_TAG);
            self.poke();
        }
    }

    /// Start watching a connection's socket for input. Submitted by the driver's next turn.
    pub fn watch(&self, stream: &TcpStream, key: usize, generation: u32) {
        self.ring.borrow_mut().poll_multishot(
            stream.as_fd(),
            libc::POLLIN,
            tag(Kind::Read, key, generation),
        );
        self.poke();
    }

    /// Wait for room to write on a connection's socket (one-shot).
    pub fn want_write(&self, stream: &TcpStream, key: usize, generation: u32) {
        self.ring.borrow_mut().poll_once(
            stream.as_fd(),
            libc::POLLOUT,
            tag(Kind::Write, key, generation),
        );
        self.poke();
    }

    /// Stop watching a connection about to close its socket: removals are queued and everything
    /// queued is submitted now, so no poll for this descriptor number is left unsubmitted when
    /// it is closed (and reused).
    pub fn forget(&self, key: usize, generation: u32, write_armed: bool) {
        let mut ring = self.ring.borrow_mut();
        let removal = tag(Kind::Removal, key, generation);
        ring.poll_remove(tag(Kind::Read, key, generation), removal);
        if write_armed {
            ring.poll_remove(tag(Kind::Write, key, generation), removal);
        }
        if let Err(e) = ring.submit() {
            debug!(error = %e, "submit failed; the driver retries");
            drop(ring);
            self.poke();
        }
    }

    /// Accept connections on `listener` (non-blocking) from now on; each accepted socket, already
    /// in its slot and watched, goes to `accept` (which starts its connection task).
    pub fn listen(&self, listener: TcpListener, accept: Accept) {
        *self.listener.borrow_mut() = Some(listener);
        *self.accept.borrow_mut() = Some(accept);
        self.watch_listener();
        self.accept_more.set(true); // connections may be waiting already
    }

    /// Arm the listener's multishot poll (at start, and again if the kernel ended it).
    fn watch_listener(&self) {
        if let Some(l) = self.listener.borrow().as_ref() {
            self.ring
                .borrow_mut()
                .poll_multishot(l.as_fd(), libc::POLLIN, LISTEN_TAG);
            self.poke();
        }
    }

    /// Stop accepting and close the listener.
    pub fn stop_listening(&self) {
        if let Some(l) = self.listener.borrow_mut().take() {
            let mut ring = self.ring.borrow_mut();
            ring.poll_remove(LISTEN_TAG, tag(Kind::Removal, 0, 0));
            let _ = ring.submit();
            drop(l);
        }
    }

    /// Called every tick: retry accepting after a failure.
    pub fn retry_accept(&self) {
        if self.accept_paused.replace(false) {
            self.accept_more.set(true);
            self.poke();
        }
    }

    /// Stop the bell thread (at the end of the core's run).
    pub fn shutdown(&self) {
        self.stop_listening();
        self.bell.stop.store(true, Ordering::SeqCst);
        let _ = (&self.bell.eventfd).write(&1u64.to_ne_bytes());
        if let Some(t) = self.bell_thread.borrow_mut().take() {
            let _ = t.join();
        }
    }

    /// Wake the driver if completions wait in the ring, without waiting for the bell: for a
    /// core that is busy (its executor looks at wake-ups from other threads only when idle).
    pub fn wake_if_ready(&self) {
        if self.ring.borrow_mut().has_completions() {
            self.poke();
        }
    }

    /// Wake the driver so it submits what was queued (or accepts more).
    fn poke(&self) {
        if let Some(w) = self.driver.borrow_mut().take() {
            w.wake();
        }
    }

    /// Store the driver's waker in both places it can be woken from.
    fn park(&self, cx: &Context<'_>) {
        let mut local = self.driver.borrow_mut();
        if !local.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *local = Some(cx.waker().clone());
        }
        let mut remote = self.bell.waker.lock().unwrap_or_else(|p| p.into_inner());
        if !remote.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            *remote = Some(cx.waker().clone());
        }
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// The bell thread: each eventfd signal wakes the driver, if it waits.
fn ring_bell(bell: &Bell) {
    let mut buf = [0u8; 8];
    loop {
        match (&bell.eventfd).read(&mut buf) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => {
                warn!(error = %e, "reactor bell failed");
                return;
            }
        }
        if bell.stop.load(Ordering::SeqCst) {
            return;
        }
        let waker = bell.waker.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The core's driver task: submit, reap, dispatch; runs until the core stops.
pub async fn drive<H: Host>(shard: Rc<H>) {
    std::future::poll_fn(|cx| poll_drive(&shard, cx)).await
}

fn poll_drive<H: Host>(shard: &Rc<H>, cx: &mut Context<'_>) -> Poll<()> {
    let Some(io) = shard.io() else {
        return Poll::Ready(());
    };
    let mut handled = 0;
    loop {
        {
            let mut ring = io.ring.borrow_mut();
            ring.set_eventfd_enabled(false);
            if ring.needs_enter()
                && let Err(e) = ring.submit()
            {
                debug!(error = %e, "submit failed; retrying after reaping");
            }
        }
        if io.accept_more.replace(false) {
            accept_round(shard, io);
        }
        let mut reaped = io.reaped.borrow_mut();
        reaped.clear();
        let n = io.ring.borrow_mut().reap(REAP_BUDGET, &mut reaped);
        for c in reaped.drain(..) {
            dispatch(shard, io, c);
        }
        drop(reaped);
        handled += n;
        if n == 0 && !io.accept_more.get() {
            // Nothing left: wait. Enable the bell first, then look once more, so a completion
            // posted in between is not missed.
            io.park(cx);
            let mut ring = io.ring.borrow_mut();
            ring.set_eventfd_enabled(true);
            if !ring.has_completions() && !ring.needs_enter() {
                return Poll::Pending;
            }
            continue;
        }
        if handled >= REAP_BUDGET || io.accept_more.get() {
            // Let the connection tasks run; come back for the rest.
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
    }
}

/// Act on one completion.
fn dispatch<H: Host>(shard: &Rc<H>, io: &Reactor, c: Completion) {
    let (kind, key, generation) = untag(c.tag);
    match kind {
        Kind::Removal => {}
        Kind::Core if key == 1 => io.on_tick(&c),
        Kind::Core => {
            if c.result == -libc::ECANCELED {
                return; // removed: we stopped listening
            }
            if !c.more {
                io.watch_listener();
            }
            io.accept_more.set(true);
        }
        Kind::Read | Kind::Write => {
            if c.result == -libc::ECANCELED {
                return; // removed because the connection closed
            }
            let mut slots = shard.slots().borrow_mut();
            let Some(slot) = slots.get_mut(key) else {
                return;
            };
            if slot.generation != generation {
                return; // an earlier connection on the same key
            }
            if kind == Kind::Read {
                slot.io |= ready::READABLE;
                if !c.more {
                    slot.io |= ready::REARM;
                    Stats::bump(&shard.stats().poll_rearms);
                }
            } else {
                slot.io &= !ready::WRITE_ARMED;
            }
            slot.wake();
        }
    }
}

/// Accept up to a batch of connections, arm their polls, submit, and start their tasks.
fn accept_round<H: Host>(shard: &Rc<H>, io: &Reactor) {
    let mut accepted = Vec::new();
    {
        let listener = io.listener.borrow();
        let Some(l) = listener.as_ref() else {
            return;
        };
        while accepted.len() < ACCEPT_BATCH {
            match l.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let _ = stream.set_nodelay(true);
                    Stats::bump(&shard.stats().accepted);
                    let (key, generation) = shard.open_slot();
                    io.watch(&stream, key, generation);
                    accepted.push((stream, key, generation));
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS: back off until the next tick instead of spinning.
                    Stats::bump(&shard.stats().accept_errors);
                    debug!(core = shard.core(), error = %e, "accept failed");
                    io.accept_paused.set(true);
                    break;
                }
            }
        }
        if accepted.len() == ACCEPT_BATCH {
            io.accept_more.set(true);
        }
    }
    if accepted.is_empty() {
        return;
    }
    // Polls must reach the kernel before any of these sockets can be closed.
    let _ = io.ring.borrow_mut().submit();
    let accept = io.accept.borrow();
    for (stream, key, generation) in accepted {
        match accept.as_ref() {
            Some(accept) => accept(stream, key, generation),
            None => shard.close_slot(key), // nobody to serve it (not listening any more)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_round_trip() {
        for (kind, key, generation) in [
            (Kind::Read, 0, 1),
            (Kind::Write, 0x3fff_ffff, u32::MAX),
            (Kind::Core, 0, 0),
            (Kind::Core, 1, 0),
            (Kind::Removal, 12345, 7),
        ] {
            assert_eq!(untag(tag(kind, key, generation)), (kind, key, generation));
        }
    }
}
